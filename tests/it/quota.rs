//! The quota controller against the fake API: it follows limits lowered mid-run, and nightly work
//! yields to an outside client consuming the same org's quota.

use std::time::Duration;

use crate::common::*;
use nightshift::fake_api::{FakeConfig, FakeLimits, LoadSpec, run_load};
use tokio_util::sync::CancellationToken;

fn limits(rpm: u64) -> FakeLimits {
    FakeLimits {
        rpm,
        itpm: 10_000_000,
        otpm: 10_000_000,
        burst_seconds: 2.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_limits_are_followed_with_no_more_than_a_handful_of_429s() {
    let env = TestEnv::new(
        FakeConfig {
            limits: Some(limits(1200)),
            latency: Duration::from_millis(50),
            ..FakeConfig::default()
        },
        // No limits configured: everything is learned from the answers' headers.
        "[realtime]\nconcurrency = 16\nbackoff_min_ms = 50\nbackoff_max_ms = 1000\n",
    )
    .await;
    let (ids, body) = job_of("lowered", 250);
    env.write_job("lowered", &body);
    let daemon = env.start_daemon();
    env.wait_succeeded("lowered", 50, Duration::from_secs(60))
        .await;
    let before = env.fake.stats().rate_limited_429;
    env.fake.set_limits(Some(limits(600)));
    let job = env.wait_done("lowered", Duration::from_secs(120)).await;
    daemon.stop().await;

    assert_eq!(job.counts.succeeded, 250);
    assert_each_once(&env.results("lowered"), &ids);
    let after = env.fake.stats().rate_limited_429 - before;
    assert!(after <= 5, "{after} 429s after the limit was halved");
    let limits = env.cli(&["limits", "--json"]);
    let limits: serde_json::Value = serde_json::from_slice(&limits.stdout).expect("limits --json");
    assert_eq!(
        limits["classes"][0]["dims"][0]["limit_per_minute"], 600.0,
        "{limits}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nightly_work_yields_to_an_outside_client_on_the_same_org() {
    let env = TestEnv::new(
        FakeConfig {
            limits: Some(limits(600)),
            latency: Duration::from_millis(50),
            ..FakeConfig::default()
        },
        "[realtime]\nconcurrency = 16\n\n[limits.default]\nrpm = 600\n",
    )
    .await;
    let (ids, body) = job_of("nightly", 150);
    env.write_job("nightly", &body);
    let daemon = env.start_daemon();
    // An interactive app on the same org, at 20% of the RPM, that nightshift never sees.
    let load = tokio::spawn(run_load(
        LoadSpec {
            base_url: env.fake.base_url(),
            api_key: "sk-interactive-app".into(),
            model: "claude-haiku-5-5".into(),
            rpm: 120.0,
            duration: Duration::from_secs(10),
            max_tokens: 32,
            prompt_chars: 200,
        },
        CancellationToken::new(),
    ));
    let job = env.wait_done("nightly", Duration::from_secs(120)).await;
    let interactive = load.await.expect("load");
    daemon.stop().await;

    assert_eq!(job.counts.succeeded, 150);
    assert_each_once(&env.results("nightly"), &ids);
    assert!(interactive.sent >= 15, "{interactive:?}");
    assert_eq!(
        interactive.rate_limited_429, 0,
        "the interactive app never saw a 429: {interactive:?}"
    );
}
