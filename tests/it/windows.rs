//! Time windows per priority class: nightly work outside its hours waits in both lanes while other
//! classes run; a reload that opens the window lets it go; `when_idle` lets it run outside its
//! hours while the org's quota is idle.

use std::time::Duration;

use crate::common::*;
use nightshift::fake_api::{BatchSettings, FakeConfig, FakeLimits};

/// `"HH:00-HH:00"` (UTC) starting `from` hours after the current hour, `len` hours long.
fn hours_from_now(from: i64, len: i64) -> String {
    let hour = jiff::Timestamp::now().as_second().div_euclid(3600);
    let h = |n: i64| (hour + n).rem_euclid(24);
    format!("{:02}:00-{:02}:00", h(from), h(from + len))
}

fn body() -> Vec<u8> {
    let mut body = String::new();
    for i in 0..4 {
        for (class, mode) in [
            ("high", "realtime"),
            ("nightly", "realtime"),
            ("nightly", "batch"),
        ] {
            body.push_str(&planned_request(
                &format!("{class}-{mode}-{i}"),
                &format!(r#""priority":"{class}","mode":"{mode}","#),
            ));
            body.push('\n');
        }
    }
    body.into_bytes()
}

/// A fake reporting `rpm` (and ample token limits) in its headers, and nightly work whose window
/// is closed now but may run while the quota is idle.
async fn when_idle_env(rpm: u64) -> TestEnv {
    let config = format!(
        "[windows.nightly]\nhours = \"{}\"\ntimezone = \"UTC\"\nwhen_idle = true\n",
        hours_from_now(2, 2)
    );
    TestEnv::new(
        FakeConfig {
            limits: Some(FakeLimits {
                rpm,
                itpm: 1_000_000,
                otpm: 1_000_000,
                burst_seconds: 60.0,
            }),
            ..FakeConfig::default()
        },
        &config,
    )
    .await
}

/// `n` nightly real-time requests, ids `{prefix}-{i}`.
fn nightly_job(prefix: &str, n: usize) -> (Vec<String>, Vec<u8>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let body: String = ids
        .iter()
        .map(|id| planned_request(id, r#""priority":"nightly","mode":"realtime","#) + "\n")
        .collect();
    (ids, body.into_bytes())
}

fn fast_batches() -> BatchSettings {
    BatchSettings {
        processing_time: Duration::from_millis(200),
        ..BatchSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nightly_work_waits_for_its_window_and_goes_when_it_opens() {
    let closed = format!(
        "[batch]\npoll_min_ms = 100\npoll_max_ms = 300\n\n[windows.nightly]\nhours = \"{}\"\ntimezone = \"UTC\"\n",
        hours_from_now(2, 2)
    );
    let env = TestEnv::new(
        FakeConfig {
            batch: fast_batches(),
            ..FakeConfig::default()
        },
        &closed,
    )
    .await;
    env.write_job("mixed", &body());
    let daemon = env.start_daemon();
    env.wait_succeeded("mixed", 4, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = env.fake.stats();
    assert_eq!(
        stats.messages_accepted, 4,
        "only the high-priority calls went"
    );
    assert_eq!(
        stats.batches_created, 0,
        "nightly batch items are not packed either"
    );
    let status = env.status_json();
    assert_eq!(status["windows"][0]["class"], "nightly");
    assert_eq!(status["windows"][0]["open"], false, "{status}");
    assert_eq!(status["jobs"][0]["counts"]["pending"], 8, "{status}");

    // Open the window and reload: the nightly work goes through both lanes.
    env.edit_config(&hours_from_now(2, 2), &hours_from_now(-1, 3));
    daemon.reload();
    env.wait_done("mixed", Duration::from_secs(60)).await;
    daemon.stop().await;
    let stats = env.fake.stats();
    assert_eq!(stats.messages_accepted, 8);
    assert_eq!(stats.batch_succeeded, 4);
    assert_eq!(env.results("mixed").len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_idle_runs_outside_the_window_while_the_quota_is_idle() {
    // The fake reports its (large, unused) limits in headers: the org's quota is idle.
    let env = when_idle_env(1_000).await;
    let (ids, body) = nightly_job("idle", 10);
    env.write_job("idle", &body);
    let daemon = env.start_daemon();
    env.wait_done("idle", Duration::from_secs(60)).await;
    daemon.stop().await;
    assert_each_once(&env.results("idle"), &ids);
    assert_eq!(env.fake.stats().messages_accepted, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_idle_waits_while_someone_else_uses_the_quota() {
    let env = when_idle_env(60).await;
    // Another client (the customer-facing chat, say) draws on the same requests bucket.
    let stop_load = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn(nightshift::fake_api::run_load(
        nightshift::fake_api::LoadSpec {
            base_url: env.fake.base_url(),
            api_key: "sk-other-client".into(),
            model: "claude-haiku-5-5".into(),
            rpm: 600.0,
            duration: Duration::from_secs(5),
            max_tokens: 16,
            prompt_chars: 40,
        },
        stop_load.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, body) = nightly_job("busy", 10);
    env.write_job("busy", &body);
    let daemon = env.start_daemon();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let job = env.job_json("busy");
    stop_load.cancel();
    let _ = load.await;
    daemon.stop().await;
    assert!(
        job["counts"]["succeeded"].as_u64() <= Some(1),
        "one probe call at most while the quota is busy: {job}"
    );
}
