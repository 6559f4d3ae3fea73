//! `nightshift plan FILE`: the binding limit of a known file, and input tokens counted by the
//! API's `count_tokens` endpoint (under its own RPM, 429s waited out) instead of estimated.

use std::process::Command;

use crate::common::*;
use nightshift::fake_api::{FakeConfig, FakeLimits};
use serde_json::Value;

fn plan(env: &TestEnv, file: &str, extra: &[&str]) -> Value {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&env.config_path)
        .args(["plan", file, "--json"])
        .args(extra)
        .env("ANTHROPIC_API_KEY", "sk-ant-test-plan-0000")
        .output()
        .expect("nightshift runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plan --json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_names_the_binding_limit_and_counts_tokens_with_the_api_when_asked() {
    // count_tokens allows 120 calls a minute with a 1 s burst: asking for 6,000 a minute meets
    // 429s, which are waited out.
    let env = TestEnv::new(
        FakeConfig {
            limits: Some(FakeLimits {
                rpm: 1_000,
                itpm: 1_000_000,
                otpm: 1_000_000,
                burst_seconds: 1.0,
            }),
            count_tokens_rpm: 120,
            ..FakeConfig::default()
        },
        // Many short answers under a low request limit: requests bind.
        "[limits.default]\nrpm = 10\nitpm = 1000000\notpm = 1000000\n",
    )
    .await;
    let (_, body) = job_of("pl", 12);
    let file = env.dir.path().join("known.jsonl");
    std::fs::write(&file, &body).expect("write");
    let file = file.to_str().expect("utf-8 path");

    let estimated = plan(&env, file, &[]);
    assert_eq!(estimated["items"], 12);
    assert_eq!(estimated["binding"], "rpm", "{estimated}");
    assert_eq!(
        estimated["drain_seconds_realtime"], 72.0,
        "12 requests at 10 a minute"
    );
    assert_eq!(estimated["counted_requests"], 0);
    assert_eq!(env.fake.stats().count_tokens_calls, 0, "nothing sent");

    let counted = plan(
        &env,
        file,
        &["--count-tokens", "--count-tokens-rpm", "6000"],
    );
    let stats = env.fake.stats();
    assert_eq!(counted["counted_requests"], 12, "{counted}");
    assert_eq!(stats.count_tokens_calls, 12);
    assert!(stats.rate_limited_429 > 0, "the endpoint's own RPM was met");
    assert_eq!(stats.messages_accepted, 0, "counting sends no message");
    // The fake bills exactly what it counts: send the same requests (without the low local
    // limit) and compare.
    env.edit_config("rpm = 10\n", "rpm = 10000\n");
    let daemon = env.start_daemon();
    env.write_job("known", &body);
    env.wait_done("known", std::time::Duration::from_secs(60))
        .await;
    daemon.stop().await;
    assert_eq!(
        counted["input_tokens"].as_u64(),
        Some(env.fake.stats().input_tokens)
    );
    assert!(
        estimated["input_tokens"].as_u64() > counted["input_tokens"].as_u64(),
        "the estimate errs high: {estimated} vs {counted}"
    );
}
