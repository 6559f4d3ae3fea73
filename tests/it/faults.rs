//! Faults: 529s, 500s, connections dropped after the request was processed, and answers slower
//! than the client's timeout. The job completes, nothing is lost, and every retried unknown
//! outcome is recorded as such.

use std::time::Duration;

use crate::common::*;
use nightshift::fake_api::{FakeConfig, Faults};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_survives_every_kind_of_fault() {
    let env = TestEnv::new(
        FakeConfig {
            faults: Faults {
                overloaded_529: 0.08,
                server_error_500: 0.08,
                drop_after_processing: 0.08,
                slow: 0.04,
                slow_latency: Duration::from_millis(1500),
                ..Faults::default()
            },
            seed: 5,
            ..FakeConfig::default()
        },
        "[realtime]\nconcurrency = 16\nmax_attempts = 30\nbackoff_min_ms = 10\nbackoff_max_ms = 100\n",
    )
    .await;
    // A 1 s client timeout turns the slow answers into unknown outcomes too.
    env.set_api("timeout_secs = 1");

    let (ids, body) = job_of("faulty", 300);
    env.write_job("faulty", &body);
    let daemon = env.start_daemon();
    let job = env.wait_done("faulty", Duration::from_secs(180)).await;
    daemon.stop().await;

    assert_eq!(job.counts.succeeded, 300, "{:?}", job.counts);
    let results = env.results("faulty");
    assert_eq!(results.len(), 300);
    assert_each_once(&results, &ids);

    let stats = env.fake.stats();
    assert_eq!(
        stats.messages_accepted, 300,
        "one answered success per item"
    );
    assert!(
        stats.overloaded_529 > 0 && stats.server_error_500 > 0 && stats.messages_dropped > 0,
        "{stats:?}"
    );

    let report = env.job_json("faulty");
    let calls = &report["calls"];
    let unknown = calls["unknown"].as_u64().expect("calls.unknown");
    // Each dropped connection is an unknown outcome on record (slow answers past the timeout add more).
    assert!(
        unknown > stats.messages_dropped,
        "unknown {unknown}, dropped {}: timeouts count too",
        stats.messages_dropped
    );
    assert_eq!(
        calls["retryable"].as_u64(),
        Some(stats.overloaded_529 + stats.server_error_500),
        "every 529 and 500 was retried"
    );
    let recorded = report["unknown_outcomes"]
        .as_array()
        .expect("unknown_outcomes");
    assert_eq!(recorded.len() as u64, unknown);
    assert!(recorded.iter().all(|u| {
        u["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no answer")
    }));

    // The evidence a support ticket needs: last success beside the first and latest failure.
    let out = env.cli(&["diagnose", "--json"]);
    assert!(out.status.success());
    let diagnosis: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("diagnose --json");
    let row = &diagnosis["rows"][0];
    assert_eq!(row["model"], "claude-haiku-5-5");
    assert_eq!(row["last_success"]["status"], 200);
    assert!(
        row["last_success"]["request_id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("req_"),
        "{row}"
    );
    for failure in ["first_failure", "latest_failure"] {
        assert_eq!(row[failure]["status"], 529, "{row}");
        assert!(
            row[failure]["request_id"]
                .as_str()
                .unwrap_or_default()
                .starts_with("req_"),
            "{row}"
        );
        assert!(
            row[failure]["concurrency"].as_i64().unwrap_or(0) >= 1,
            "{row}"
        );
        assert_eq!(row[failure]["output_limit"], 64);
    }
    let text = String::from_utf8_lossy(&env.cli(&["diagnose"]).stdout).into_owned();
    assert!(
        text.contains("LAST SUCCESS") && text.contains("LATEST FAILURE"),
        "{text}"
    );
}
