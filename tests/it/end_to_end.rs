//! A 500-item job through the daemon against the fake API, with limits low enough that pacing
//! matters and 429s and 529s injected.

use std::time::Duration;

use crate::common::*;
use nightshift::fake_api::{FakeConfig, FakeLimits, Faults};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_items_each_once_with_the_fakes_count_equal_to_successes() {
    let limits = FakeLimits {
        rpm: 6000,
        itpm: 600_000,
        otpm: 300_000,
        burst_seconds: 1.0,
    };
    let env = TestEnv::new(
        FakeConfig {
            limits: Some(limits),
            latency: Duration::from_millis(5),
            faults: Faults { rate_limited_429: 0.03, overloaded_529: 0.03, ..Faults::default() },
            seed: 11,
            ..FakeConfig::default()
        },
        "[realtime]\nconcurrency = 16\nmax_attempts = 20\nbackoff_min_ms = 10\nbackoff_max_ms = 200\n\n\
         [limits.default]\nrpm = 6000\nitpm = 600000\notpm = 300000\n",
    )
    .await;
    let (ids, body) = job_of("e2e", 500);
    env.write_job("e2e", &body);
    let daemon = env.start_daemon();
    let job = env.wait_done("e2e", Duration::from_secs(120)).await;
    daemon.stop().await;

    assert_eq!(job.counts.total, 500);
    assert_eq!(job.counts.succeeded, 500);
    let results = env.results("e2e");
    assert_eq!(results.len(), 500, "one line per input line");
    assert_each_once(&results, &ids);
    assert_eq!(succeeded(&results), 500);

    let stats = env.fake.stats();
    assert_eq!(
        stats.messages_accepted, 500,
        "the fake accepted exactly one call per item"
    );
    assert!(
        stats.rate_limited_429 > 0 && stats.overloaded_529 > 0,
        "faults were injected: {stats:?}"
    );

    // Every result carries the message the API returned, usage included.
    let message = &results[0]["result"]["message"];
    assert_eq!(message["type"], "message");
    assert!(message["usage"]["output_tokens"].as_u64().unwrap_or(0) > 0);

    // The CLI agrees, in the documented shape.
    let status = env.status_json();
    let jobs = status["jobs"].as_array().expect("jobs array");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["name"], "e2e");
    assert_eq!(jobs[0]["state"], "done");
    for (key, want) in [
        ("total", 500),
        ("pending", 0),
        ("in_flight", 0),
        ("succeeded", 500),
        ("errored", 0),
        ("expired", 0),
        ("canceled", 0),
    ] {
        assert_eq!(jobs[0]["counts"][key], want, "counts.{key}");
    }
    let calls = &env.job_json("e2e")["calls"];
    assert_eq!(
        calls["rate_limited"].as_u64(),
        Some(stats.rate_limited_429),
        "every 429 is on record"
    );
    // The job file was moved out of the way, so a restart does not take it again.
    assert!(!env.jobs_dir().join("e2e.jsonl").exists());
    assert!(env.jobs_dir().join("ingested").join("e2e.jsonl").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_keeps_a_small_rpm_limit_without_429s() {
    // 600 RPM = 10/s with a 1-second bucket at the fake; nightshift is told the same limit.
    let env = TestEnv::new(
        FakeConfig {
            limits: Some(FakeLimits {
                rpm: 600,
                itpm: 1_000_000,
                otpm: 1_000_000,
                burst_seconds: 1.0,
            }),
            ..FakeConfig::default()
        },
        "[realtime]\nconcurrency = 32\n\n[limits.default]\nrpm = 60\n",
    )
    .await;
    let (ids, body) = job_of("paced", 12);
    env.write_job("paced", &body);
    let daemon = env.start_daemon();
    env.wait_done("paced", Duration::from_secs(60)).await;
    daemon.stop().await;
    assert_each_once(&env.results("paced"), &ids);
    assert_eq!(
        env.fake.stats().rate_limited_429,
        0,
        "paced under the limit: no 429"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_holds_for_real_time_items_being_retried() {
    // Every call fails with 529, so items keep coming back for another attempt.
    let env = TestEnv::new(
        FakeConfig {
            latency: Duration::from_millis(20),
            faults: Faults { overloaded_529: 1.0, ..Faults::default() },
            ..FakeConfig::default()
        },
        "[realtime]\nconcurrency = 4\nmax_attempts = 1000\nbackoff_min_ms = 10\nbackoff_max_ms = 50\n",
    )
    .await;
    let (ids, body) = job_of("doomed", 20);
    env.write_job("doomed", &body);
    let daemon = env.start_daemon();
    let started = std::time::Instant::now();
    while env.fake.stats().overloaded_529 < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "calls are being made"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = env.cli(&["cancel", "doomed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = env.wait_done("doomed", Duration::from_secs(30)).await;
    let calls_at_done = env.fake.stats().overloaded_529;
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.stop().await;

    assert_eq!(job.counts.canceled, 20, "{:?}", job.counts);
    let results = env.results("doomed");
    let by_id = assert_each_once(&results, &ids);
    assert!(by_id.values().all(|r| r["result"]["type"] == "canceled"));
    assert_eq!(
        env.fake.stats().overloaded_529,
        calls_at_done,
        "nothing is sent after the job is done"
    );
}
