//! Crash safety: the real daemon binary is killed with SIGKILL mid-job and started again; the job
//! completes with each custom_id once, and the calls cut off by the crash are on record as unknown
//! outcomes. SIGTERM then stops it cleanly with exit code 0.

use std::time::Duration;

use crate::common::*;
use nightshift::fake_api::{FakeConfig, FakeLimits, Faults};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_job_then_restart_completes_each_item_once() {
    // Slow answers and a small concurrency: calls are always in flight when the kill comes.
    let env = TestEnv::new(
        FakeConfig {
            latency: Duration::from_millis(150),
            ..FakeConfig::default()
        },
        "[realtime]\nconcurrency = 8\n",
    )
    .await;
    let (ids, body) = job_of("crash", 300);
    env.write_job("crash", &body);

    let mut first = env.spawn_binary_daemon("sk-test", "run1.log");
    env.wait_succeeded("crash", 60, Duration::from_secs(60))
        .await;
    // From here every answer hangs, so calls are surely in flight when the kill comes, however
    // late this test looks (a loaded machine polls slowly; the job could otherwise end first).
    env.fake.set_faults(Faults {
        slow: 1.0,
        slow_latency: Duration::from_secs(20),
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    while env
        .job_status("crash")
        .is_none_or(|j| j.counts.in_flight == 0)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing in flight"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    env.fake.set_faults(Faults::default());

    let mut second = env.spawn_binary_daemon("sk-test", "run2.log");
    // One daemon per data directory: a second one is refused while this one runs.
    env.wait_succeeded("crash", 70, Duration::from_secs(60))
        .await;
    let mut third = env.spawn_binary_daemon("sk-test", "run3.log");
    let refused = third.wait().expect("reaped");
    assert!(
        !refused.success(),
        "a second daemon on the same data dir must not run"
    );
    let log3 = std::fs::read_to_string(env.dir.path().join("run3.log")).expect("log");
    assert!(
        log3.contains("another nightshift daemon is running"),
        "{log3}"
    );
    let job = env.wait_done("crash", Duration::from_secs(120)).await;
    // SIGTERM: stop admitting, finish, exit 0.
    signal(&second, libc::SIGTERM);
    let status = second.wait().expect("reaped");
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM stops the daemon with exit code 0"
    );

    assert_eq!(job.counts.succeeded, 300);
    let results = env.results("crash");
    assert_eq!(results.len(), 300, "no line written twice across the crash");
    assert_each_once(&results, &ids);

    // The calls in flight at the kill are recorded as unknown outcomes and were sent again; the
    // fake may have run them twice, never more often than recorded.
    let report = env.job_json("crash");
    let unknown = report["calls"]["unknown"].as_u64().expect("calls.unknown");
    assert!(
        unknown >= 1,
        "calls cut off by SIGKILL are on record: {report}"
    );
    assert_eq!(
        report["unknown_outcomes"].as_array().map(Vec::len),
        Some(unknown as usize)
    );
    let accepted = env.fake.stats().messages_accepted;
    assert!(
        accepted >= 300 && accepted <= 300 + unknown,
        "accepted {accepted}, unknown {unknown}"
    );

    let log = std::fs::read_to_string(env.dir.path().join("run2.log")).expect("log");
    assert!(
        log.contains("their outcome is unknown"),
        "the restart says what it recovered"
    );
}

/// The quota state `limits --json` shows, once the running daemon has published it after
/// `since_ms`.
async fn published_limits(env: &TestEnv, since_ms: i64) -> serde_json::Value {
    for _ in 0..100 {
        let fresh = env
            .read_store(nightshift::store::quota::states)
            .is_ok_and(|states| states.iter().any(|s| s.updated_at > since_ms));
        if fresh {
            let out = env.cli(&["limits", "--json"]);
            return serde_json::from_slice(&out.stdout).expect("limits --json");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no quota state published after {since_ms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_at_the_learned_limits_and_concurrency() {
    let env = TestEnv::new(
        FakeConfig {
            limits: Some(FakeLimits {
                rpm: 3_000,
                itpm: 10_000_000,
                otpm: 10_000_000,
                burst_seconds: 2.0,
            }),
            latency: Duration::from_millis(100),
            ..FakeConfig::default()
        },
        // Nothing configured: a tier preset is the first guess, the headers say the rest.
        "[realtime]\nconcurrency = 24\n",
    )
    .await;
    let (ids, body) = job_of("learn", 300);
    env.write_job("learn", &body);
    let daemon = env.start_daemon();
    env.wait_done("learn", Duration::from_secs(120)).await;
    assert_each_once(&env.results("learn"), &ids);
    let learned = published_limits(&env, nightshift::store::now_ms()).await;
    daemon.stop().await;
    let class = &learned["classes"][0];
    let concurrency = class["concurrency"].as_u64().expect("concurrency");
    assert!(concurrency > 4, "it grew past the first 4: {learned}");
    assert_eq!(class["dims"][0]["limit_per_minute"], 3000.0, "{learned}");

    // The next start, with nothing to send: what it shows is what it restored, not a probe.
    let restarted_at = nightshift::store::now_ms();
    let daemon = env.start_daemon();
    let restored = published_limits(&env, restarted_at).await;
    daemon.stop().await;
    let class = &restored["classes"][0];
    assert_eq!(
        class["concurrency"].as_u64(),
        Some(concurrency),
        "{restored}"
    );
    assert_eq!(class["dims"][0]["limit_per_minute"], 3000.0, "{restored}");
    assert!(
        class["dims"][0]["capacity"].as_f64().expect("capacity") > 50.0,
        "the bucket size learned (2 s of 3,000 RPM), not a probe of 1 s: {restored}"
    );
}
