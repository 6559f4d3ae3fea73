//! The ledger: one row per billed call, its totals equal to the fake API's own accounting of tokens
//! for a job mixing batch and real-time items and two tenants.

use std::time::Duration;

use crate::common::*;
use nightshift::fake_api::{BatchSettings, FakeConfig};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_totals_equal_the_fakes_accounting_for_a_mixed_job() {
    let env = TestEnv::new(
        FakeConfig {
            batch: BatchSettings {
                processing_time: Duration::from_millis(300),
                ..BatchSettings::default()
            },
            ..FakeConfig::default()
        },
        "[batch]\npoll_min_ms = 100\npoll_max_ms = 500\nrpm = 6000\n",
    )
    .await;
    let mut body = String::new();
    let mut ids = Vec::new();
    for i in 0..40 {
        let id = format!("led-{i:03}");
        let tenant = if i % 4 == 0 { "acme" } else { "globex" };
        let priority = if i % 2 == 0 { "high" } else { "nightly" };
        body.push_str(&planned_request(
            &id,
            &format!(r#""tenant":"{tenant}","priority":"{priority}","#),
        ));
        body.push('\n');
        ids.push(id);
    }
    env.write_job("mixed", body.as_bytes());
    let daemon = env.start_daemon();
    env.wait_done("mixed", Duration::from_secs(60)).await;
    daemon.stop().await;
    assert_each_once(&env.results("mixed"), &ids);

    let stats = env.fake.stats();
    assert_eq!(stats.messages_accepted, 20, "high priority went real time");
    assert_eq!(stats.batch_succeeded, 20, "nightly went through a batch");
    let out = env.cli(&["ledger", "--json", "--by", "tenant"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ledger: Value = serde_json::from_slice(&out.stdout).expect("ledger --json");
    let total = &ledger["total"];
    assert_eq!(total["requests"], 40);
    assert_eq!(
        total["input_tokens"].as_u64(),
        Some(stats.input_tokens + stats.batch_input_tokens)
    );
    assert_eq!(
        total["output_tokens"].as_u64(),
        Some(stats.output_tokens + stats.batch_output_tokens)
    );

    let groups = ledger["groups"].as_array().expect("groups");
    let keys: Vec<&str> = groups
        .iter()
        .map(|g| g["key"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(keys, vec!["acme", "globex"]);
    assert_eq!(groups[0]["requests"], 10);
    assert_eq!(groups[1]["requests"], 30);
    // Groups add up to the total exactly (the ledger keeps millionths of a dollar).
    let micros = |v: &Value| (v["cost_usd"].as_f64().unwrap_or(-1.0) * 1_000_000.0).round() as i64;
    assert!(micros(total) > 0, "{total}");
    assert_eq!(micros(&groups[0]) + micros(&groups[1]), micros(total));
    // And to the price table: Haiku 5.5 at $0.10 / $0.50 per MTok, batches at half.
    let realtime_share =
        (stats.input_tokens as f64 * 0.10 + stats.output_tokens as f64 * 0.50).round() as i64;
    let batch_share =
        ((stats.batch_input_tokens as f64 * 0.10 + stats.batch_output_tokens as f64 * 0.50) / 2.0)
            .round() as i64;
    assert!(
        (micros(total) - realtime_share - batch_share).abs() <= 40,
        "{total}: rounding is per row"
    );

    let csv =
        String::from_utf8(env.cli(&["ledger", "--csv", "--by", "job"]).stdout).expect("utf-8");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("key,requests,"), "{csv}");
    assert!(lines[1].starts_with("mixed,40,"), "{csv}");
    assert!(lines[2].starts_with("TOTAL,40,"), "{csv}");
    let only_acme: Value =
        serde_json::from_slice(&env.cli(&["ledger", "--json", "--tenant", "acme"]).stdout)
            .expect("json");
    assert_eq!(only_acme["total"]["requests"], 10);
}
