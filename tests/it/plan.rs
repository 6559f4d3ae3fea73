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

/// Finding 6 of issue 13: `plan` counted a line past the size limit and a repeated custom_id as
/// requests, where intake errors them. Both now read with the same reader and judge with the same
/// checks, so on one corpus their counts agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_counts_what_intake_accepts() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    let mut body: Vec<u8> = b"\xEF\xBB\xBF".to_vec(); // a byte order mark costs no line
    let mut push = |line: &[u8], end: &[u8]| {
        body.extend_from_slice(line);
        body.extend_from_slice(end);
    };
    push(request("c-1", "one").as_bytes(), b"\r\n");
    push(request("c-2", "two").as_bytes(), b"\n");
    push(request("c-1", "a repeat").as_bytes(), b"\n"); // custom_id repeats line 1
    push(b"{\"custom_id\":\"c-7\",\"params\":", b"\n"); // cut short
    push(br#"{"custom_id":"c-3","params":{}}"#, b"\n"); // no model, but its custom_id is read
    // Past the API's 32 MiB request limit: neither reads it into memory.
    let huge = format!(
        r#"{{"custom_id":"c-4","params":{{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{{"role":"user","content":"{}"}}]}}}}"#,
        "y".repeat(33 << 20)
    );
    push(huge.as_bytes(), b"\n");
    push(
        br#"{"custom_id":"c-5","params":{"model":"claude-sonnet-4-6","max_tokens":5,"max_tokens":6,"messages":[]}}"#,
        b"\n",
    ); // a key written twice
    push(request("c-3", "three").as_bytes(), b"\n"); // c-3's first line was invalid: it owns the id
    push(request("c-6", "six").as_bytes(), b""); // no newline at the end
    let file = env.dir.path().join("corpus.jsonl");
    std::fs::write(&file, &body).expect("write");

    let planned = plan(&env, file.to_str().expect("utf-8 path"), &[]);
    let daemon = env.start_daemon();
    env.write_job("corpus", &body);
    let job = env
        .wait_done("corpus", std::time::Duration::from_secs(120))
        .await;
    daemon.stop().await;

    assert_eq!(job.counts.total, 9, "one item per line");
    assert_eq!(
        (planned["items"].as_u64(), planned["invalid_lines"].as_u64()),
        (Some(job.counts.succeeded), Some(job.counts.errored)),
        "plan: {planned}; intake: {:?}",
        job.counts
    );
    assert_eq!((job.counts.succeeded, job.counts.errored), (3, 6));
}
