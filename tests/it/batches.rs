//! The Message Batches lane against the fake API with short processing times: packing, results
//! (in any order), the planner's split, retries of expired and errored items, crash safety around
//! the create call, resumed polling after a restart, and cancel.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use nightshift::fake_api::count_input_tokens;
use serde_json::Value;

/// `n` nightly lines of different lengths, so each custom_id's answer can be told apart.
fn nightly_job(prefix: &str, n: usize) -> (Vec<String>, Vec<u8>, HashMap<String, u64>) {
    let mut ids = Vec::new();
    let mut body = String::new();
    let mut expected_input = HashMap::new();
    for i in 0..n {
        let id = format!("{prefix}-{i:05}");
        let text = format!(
            "Summarise ticket {i}: {}",
            "late parcel ".repeat(i % 37 + 1)
        );
        let params = format!(
            r#"{{"model":"claude-haiku-5-5","max_tokens":32,"messages":[{{"role":"user","content":"{text}"}}]}}"#
        );
        let parsed: Value = serde_json::from_str(&params).expect("params");
        expected_input.insert(id.clone(), count_input_tokens(&parsed));
        body.push_str(&format!(r#"{{"custom_id":"{id}","params":{params}}}"#));
        body.push('\n');
        ids.push(id);
    }
    (ids, body.into_bytes(), expected_input)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2000_item_nightly_job_completes_through_batches() {
    let env = TestEnv::new(
        fast_batch_fake(300),
        &format!("{FAST_BATCHES}max_requests = 600\n"),
    )
    .await;
    let (ids, body, expected_input) = nightly_job("night", 2000);
    env.write_job("night", &body);
    let daemon = env.start_daemon();
    let job = env.wait_done("night", Duration::from_secs(120)).await;
    daemon.stop().await;

    assert_eq!(job.counts.succeeded, 2000);
    let results = env.results("night");
    assert_eq!(results.len(), 2000);
    let by_id = assert_each_once(&results, &ids);
    // The fake answers in shuffled order; each result must still belong to its own request.
    for (id, line) in &by_id {
        let message = &line["result"]["message"];
        assert_eq!(message["usage"]["service_tier"], "batch");
        assert_eq!(
            message["usage"]["input_tokens"].as_u64(),
            Some(expected_input[id]),
            "{id}"
        );
    }
    let stats = env.fake.stats();
    assert_eq!(stats.messages_accepted, 0, "nothing went real time");
    assert_eq!(stats.batch_requests, 2000, "each item sent once");
    assert_eq!(stats.batches_created, 4, "packed 600 + 600 + 600 + 200");

    let status = env.status_json();
    let jobs = status["jobs"].as_array().expect("jobs");
    assert_eq!(jobs[0]["lanes"]["batch"], 2000);
    assert_eq!(jobs[0]["lanes"]["realtime"], 0);
    let batches = jobs[0]["batches"].as_array().expect("batches");
    assert_eq!(batches.len(), 4);
    for b in batches {
        assert!(
            b["id"]
                .as_str()
                .unwrap_or_default()
                .starts_with("msgbatch_"),
            "{b}"
        );
        assert_eq!(b["state"], "ended");
        let total: i64 = ["processing", "succeeded", "errored", "canceled", "expired"]
            .iter()
            .map(|k| b["counts"][k].as_i64().unwrap_or(0))
            .sum();
        assert!(total == 600 || total == 200, "{b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_mixing_deadlines_splits_between_the_lanes_as_the_planner_says() {
    let env = TestEnv::new(fast_batch_fake(300), FAST_BATCHES).await;
    let mut body = String::new();
    let mut ids = Vec::new();
    for i in 0..30 {
        let id = format!("mix-{i:03}");
        let extra = match i % 3 {
            0 => r#""deadline":"10m","#,  // nearer than any batch promise: real time
            1 => r#""priority":"high","#, // urgent: real time
            _ => "",                      // nightly, no deadline: batch
        };
        body.push_str(&planned_request(&id, extra));
        body.push('\n');
        ids.push(id);
    }
    env.write_job("mix", body.as_bytes());
    let daemon = env.start_daemon();
    env.wait_done("mix", Duration::from_secs(60)).await;
    daemon.stop().await;

    assert_each_once(&env.results("mix"), &ids);
    let stats = env.fake.stats();
    assert_eq!(
        stats.messages_accepted, 20,
        "deadline and high-priority items went real time"
    );
    assert_eq!(stats.batch_requests, 10, "the rest went through a batch");
    let job = env.job_json("mix");
    assert_eq!(job["lanes"]["realtime"], 20);
    assert_eq!(job["lanes"]["batch"], 10);
    let out = env.cli(&["job", "mix"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("msgbatch_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_errored_batch_items_are_retried_and_invalid_ones_are_not() {
    let mut config = fast_batch_fake(200);
    config.batch.expire_fraction = 0.25;
    config.batch.error_fraction = 0.25;
    config.seed = 3;
    let env = TestEnv::new(
        config,
        &format!("{FAST_BATCHES}\n[realtime]\nmax_attempts = 30\n"),
    )
    .await;
    let (mut ids, mut body, _) = nightly_job("retry", 200);
    // One request the API refuses (an unknown model): errored, never retried.
    body.extend_from_slice(
        br#"{"custom_id":"bad-model","params":{"model":"claude-nonexistent-1","max_tokens":5,"messages":[{"role":"user","content":"x"}]}}"#,
    );
    body.push(b'\n');
    ids.push("bad-model".into());
    env.write_job("retry", &body);
    let daemon = env.start_daemon();
    let job = env.wait_done("retry", Duration::from_secs(120)).await;
    daemon.stop().await;

    let results = env.results("retry");
    let by_id = assert_each_once(&results, &ids);
    assert_eq!(job.counts.succeeded, 200, "{:?}", job.counts);
    assert_eq!(job.counts.errored, 1);
    let bad = &by_id["bad-model"]["result"];
    assert_eq!(bad["type"], "errored");
    assert_eq!(bad["error"]["error"]["type"], "not_found_error", "{bad}");

    let stats = env.fake.stats();
    assert!(
        stats.batch_expired > 0 && stats.batch_errored > 1,
        "{stats:?}"
    );
    assert!(stats.batches_created > 1, "retries went into later batches");
    let calls = &env.job_json("retry")["calls"];
    assert_eq!(
        calls["expired"].as_u64(),
        Some(stats.batch_expired),
        "every expiry on record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_create_and_recording_the_id_makes_no_duplicate_batch() {
    let mut config = fast_batch_fake(300);
    // The fake creates the batch, then holds its answer: the daemon dies while waiting.
    config.batch.create_latency = Duration::from_secs(5);
    let env = TestEnv::new(config, FAST_BATCHES).await;
    let (ids, body, _) = nightly_job("crash", 50);
    env.write_job("crash", &body);

    let mut first = env.spawn_binary_daemon("sk-test", "run1.log");
    let started = std::time::Instant::now();
    while env.fake.stats().batches_created == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no batch created"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    // The fake should answer the rest quickly now.
    let mut second = env.spawn_binary_daemon("sk-test", "run2.log");
    let job = env.wait_done("crash", Duration::from_secs(60)).await;
    signal(&second, libc::SIGTERM);
    assert!(second.wait().expect("reaped").success());

    assert_eq!(job.counts.succeeded, 50);
    assert_each_once(&env.results("crash"), &ids);
    assert_eq!(
        env.fake.stats().batches_created,
        1,
        "the batch was found, not created again"
    );
    let log = std::fs::read_to_string(env.dir.path().join("run2.log")).expect("log");
    assert!(
        log.contains("adopting its batch"),
        "the reconciliation is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_batches_are_in_progress_resumes_polling() {
    let env = TestEnv::new(fast_batch_fake(3000), FAST_BATCHES).await;
    let (ids, body, _) = nightly_job("resume", 100);
    env.write_job("resume", &body);

    let mut first = env.spawn_binary_daemon("sk-test", "run1.log");
    let started = std::time::Instant::now();
    loop {
        let status = env.try_status_json();
        let batches = &status["jobs"][0]["batches"];
        if batches[0]["state"] == "in_progress" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no batch in progress: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");

    let mut second = env.spawn_binary_daemon("sk-test", "run2.log");
    let job = env.wait_done("resume", Duration::from_secs(60)).await;
    signal(&second, libc::SIGTERM);
    assert!(second.wait().expect("reaped").success());

    assert_eq!(job.counts.succeeded, 100);
    assert_each_once(&env.results("resume"), &ids);
    assert_eq!(
        env.fake.stats().batches_created,
        1,
        "the same batch was polled again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_pending_items_and_cancels_the_batches() {
    let env = TestEnv::new(fast_batch_fake(60_000), FAST_BATCHES).await;
    let (ids, body, _) = nightly_job("stop", 40);
    env.write_job("stop", &body);
    let daemon = env.start_daemon();
    let started = std::time::Instant::now();
    while env.try_status_json()["jobs"][0]["batches"][0]["state"] != "in_progress" {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no batch in progress"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = env.cli(&["cancel", "stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = env.wait_done("stop", Duration::from_secs(30)).await;
    daemon.stop().await;

    assert_eq!(job.counts.canceled, 40, "{:?}", job.counts);
    let results = env.results("stop");
    let by_id = assert_each_once(&results, &ids);
    assert!(by_id.values().all(|r| r["result"]["type"] == "canceled"));
    assert_eq!(env.fake.stats().batch_canceled, 40);
    assert_eq!(env.cli(&["cancel", "no-such-job"]).status.code(), Some(3));
}
