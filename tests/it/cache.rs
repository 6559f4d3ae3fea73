//! Prompt caching: what the fake's cache charged is what the ledger holds, to the micro-dollar.

use std::time::Duration;

use crate::common::*;
use nightshift::fake_api::FakeConfig;
use serde_json::Value;

/// A real-time request sharing a ~2,000-token rubric marked for the cache for an hour.
fn cached_request(custom_id: &str, mode: &str) -> String {
    let rubric = "Grade the answer against the rubric, point by point. ".repeat(160);
    format!(
        r#"{{"custom_id":"{custom_id}","mode":"{mode}","params":{{"model":"claude-sonnet-5-5","max_tokens":32,"system":[{{"type":"text","text":"{rubric}","cache_control":{{"type":"ephemeral","ttl":"1h"}}}}],"messages":[{{"role":"user","content":"Answer {custom_id}: the parcel arrived late."}}]}}}}"#
    )
}

/// Sonnet 5.5 per token, in millionths of a dollar: input 2, 1-hour write 4, read 0.10, output 10.
fn priced(usage: &Value, batch: bool) -> i64 {
    let n = |k: &str| usage[k].as_u64().unwrap_or(0) as f64;
    let one_hour = usage["cache_creation"]["ephemeral_1h_input_tokens"]
        .as_u64()
        .unwrap_or(0) as f64;
    let five_minutes = n("cache_creation_input_tokens") - one_hour;
    let full = n("input_tokens") * 2.0
        + five_minutes * 2.5
        + one_hour * 4.0
        + n("cache_read_input_tokens") * 0.10
        + n("output_tokens") * 10.0;
    (if batch { full / 2.0 } else { full }).round() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_holds_what_the_cache_charged_in_both_lanes() {
    let env = TestEnv::new(
        FakeConfig {
            latency: Duration::from_millis(50),
            ..fast_batch_fake(300)
        },
        FAST_BATCHES,
    )
    .await;
    let mut body = String::new();
    let mut ids = Vec::new();
    for i in 0..30 {
        let id = format!("c-{i:03}");
        body.push_str(&cached_request(
            &id,
            if i < 20 { "realtime" } else { "batch" },
        ));
        body.push('\n');
        ids.push(id);
    }
    env.write_job("graded", body.as_bytes());
    let daemon = env.start_daemon();
    env.wait_done("graded", Duration::from_secs(60)).await;
    daemon.stop().await;
    let results = env.results("graded");
    let by_id = assert_each_once(&results, &ids);
    assert_eq!(succeeded(&results), 30);

    let stats = env.fake.stats();
    let written = stats.cache_write_1h_tokens + stats.batch_cache_write_1h_tokens;
    let read = stats.cache_read_input_tokens + stats.batch_cache_read_input_tokens;
    assert!(
        written > 0 && read > written,
        "reads {read}, writes {written}"
    );
    let ledger: Value =
        serde_json::from_slice(&env.cli(&["ledger", "--json"]).stdout).expect("ledger --json");
    let total = &ledger["total"];
    assert_eq!(total["cache_creation_input_tokens"].as_u64(), Some(written));
    assert_eq!(total["cache_read_input_tokens"].as_u64(), Some(read));
    assert_eq!(
        total["input_tokens"].as_u64(),
        Some(stats.input_tokens + stats.batch_input_tokens)
    );
    // Each call priced from its own usage, as the results file has it, adds up to the ledger's
    // cost exactly (both round each call to the micro-dollar).
    let expected: i64 = ids
        .iter()
        .enumerate()
        .map(|(i, id)| priced(&by_id[id.as_str()]["result"]["message"]["usage"], i >= 20))
        .sum();
    let micros = (total["cost_usd"].as_f64().expect("cost") * 1e6).round() as i64;
    assert_eq!(micros, expected, "{total}");
    // What the cache saved: each call priced with its cache tokens as plain input, less its cost.
    let saved: i64 = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let usage = &by_id[id.as_str()]["result"]["message"]["usage"];
            let n = |k: &str| usage[k].as_u64().unwrap_or(0);
            let plain = serde_json::json!({
                "input_tokens": n("input_tokens") + n("cache_creation_input_tokens")
                    + n("cache_read_input_tokens"),
                "output_tokens": n("output_tokens"),
            });
            priced(&plain, i >= 20) - priced(usage, i >= 20)
        })
        .sum();
    assert!(
        saved > micros,
        "reads of a 2,000-token rubric save most of it"
    );
    let usd = |v: &Value| (v.as_f64().expect("usd") * 1e6).round() as i64;
    assert_eq!(usd(&total["cache_saved_usd"]), saved, "{total}");
    // `job` and `status` show the same hit rate and savings.
    let job: Value =
        serde_json::from_slice(&env.cli(&["job", "graded", "--json"]).stdout).expect("job --json");
    let hit = read as f64 / (read + written) as f64;
    assert!(
        (job["cache"]["hit_rate"].as_f64().expect("hit rate") - hit).abs() < 1e-9,
        "{job}"
    );
    assert_eq!(usd(&job["cache"]["saved_usd"]), saved);
    let text = String::from_utf8(env.cli(&["job", "graded"]).stdout).expect("utf-8");
    assert!(
        text.contains(&format!(
            "hit rate {:.1} %, ${:.4} saved",
            hit * 100.0,
            saved as f64 / 1e6
        )),
        "{text}"
    );
    let status: Value =
        serde_json::from_slice(&env.cli(&["status", "--json"]).stdout).expect("status --json");
    let graded = &status["jobs"][0];
    assert_eq!(graded["cache_hit_rate"], job["cache"]["hit_rate"]);
    assert_eq!(usd(&graded["cache_saved_usd"]), saved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_itpm_bound_job_whose_prefix_is_cached_is_charged_only_what_is_not_read() {
    // 20,000 ITPM: uncharged, the 40 prompts of ~2,100 tokens would take over four minutes.
    let env = TestEnv::new(
        FakeConfig {
            limits: Some(nightshift::fake_api::FakeLimits {
                rpm: 600,
                itpm: 20_000,
                otpm: 100_000,
                burst_seconds: 10.0,
            }),
            latency: Duration::from_millis(100),
            ..FakeConfig::default()
        },
        "",
    )
    .await;
    let mut body = String::new();
    let mut ids = Vec::new();
    for i in 0..40 {
        let id = format!("p-{i:03}");
        body.push_str(&cached_request(&id, "realtime"));
        body.push('\n');
        ids.push(id);
    }
    env.write_job("paced", body.as_bytes());
    let daemon = env.start_daemon();
    env.wait_done("paced", Duration::from_secs(90)).await;
    daemon.stop().await;
    let results = env.results("paced");
    assert_each_once(&results, &ids);
    assert_eq!(succeeded(&results), 40);
    let stats = env.fake.stats();
    assert_eq!(stats.rate_limited_429, 0, "{stats:?}");
    // Warm, then burst: one call wrote the prefix, the 39 others read it.
    let prefix = stats.cache_write_1h_tokens;
    assert!(prefix > 1_500, "{stats:?}");
    assert_eq!(stats.cache_read_input_tokens, 39 * prefix, "{stats:?}");
    // What each call reserved of ITPM: the writer all of its prompt, every reader only what
    // follows the prefix (an estimate learned from answers alone would charge the first
    // readers the whole prompt).
    let reserved: Vec<i64> = env
        .read_store(|conn| {
            conn.query_map(
                "SELECT input_estimate FROM attempts ORDER BY started_at, id",
                (),
                |r| r.get(0),
            )?
            .collect()
        })
        .expect("rows");
    assert_eq!(reserved.len(), 40);
    assert!(reserved[0] > 2_000, "{reserved:?}");
    assert!(reserved[1..].iter().all(|&r| r < 100), "{reserved:?}");
}

/// A real-time request with a ~2,000-token system prompt, as a plain string, marking nothing.
fn unmarked_request(custom_id: &str) -> String {
    let rubric = "Grade the answer against the rubric, point by point. ".repeat(160);
    format!(
        r#"{{"custom_id":"{custom_id}","mode":"realtime","params":{{"model":"claude-sonnet-5-5","max_tokens":32,"system":"{rubric}","messages":[{{"role":"user","content":"Answer {custom_id}: the parcel arrived late."}}]}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_auto_marks_a_shared_prefix_and_off_sends_the_bodies_as_written() {
    let env = TestEnv::new(
        FakeConfig {
            latency: Duration::from_millis(50),
            keep_bodies: true,
            ..FakeConfig::default()
        },
        "",
    )
    .await;
    let lines: Vec<String> = (0..20)
        .map(|i| unmarked_request(&format!("a-{i:03}")))
        .collect();
    env.write_job("auto", (lines.join("\n") + "\n").as_bytes());
    let daemon = env.start_daemon();
    env.wait_done("auto", Duration::from_secs(60)).await;
    let stats = env.fake.stats();
    // The default is auto: one call wrote the rubric, the others read it.
    assert!(stats.cache_write_5m_tokens > 1_500, "{stats:?}");
    assert_eq!(
        stats.cache_read_input_tokens,
        19 * stats.cache_write_5m_tokens
    );
    let job = env.job_json("auto");
    assert_eq!(job["cache"]["mode"], "auto");
    assert_eq!(job["cache"]["breakpoints_added"], 20);
    let ids: Vec<String> = (0..20).map(|i| format!("a-{i:03}")).collect();
    assert_each_once(&env.results("auto"), &ids);

    // The same requests with `cache = "off"`: sent byte for byte as the file has them.
    let sent_before = env.fake.message_bodies().len();
    std::fs::write(env.jobs_dir().join("off.toml"), "cache = \"off\"\n").expect("sidecar");
    let lines: Vec<String> = (0..5)
        .map(|i| unmarked_request(&format!("o-{i:03}")))
        .collect();
    env.write_job("off", (lines.join("\n") + "\n").as_bytes());
    env.wait_done("off", Duration::from_secs(60)).await;
    daemon.stop().await;
    let mut sent: Vec<String> = env.fake.message_bodies()[sent_before..]
        .iter()
        .map(|b| String::from_utf8(b.to_vec()).expect("utf-8"))
        .collect();
    sent.sort();
    let mut written: Vec<String> = lines
        .iter()
        .map(|l| {
            let start = l.find(r#""params":"#).expect("params") + r#""params":"#.len();
            l[start..l.len() - 1].to_owned()
        })
        .collect();
    written.sort();
    assert_eq!(sent, written);
    assert_eq!(env.job_json("off")["cache"]["breakpoints_added"], 0);
    assert_eq!(
        env.fake.stats().cache_write_5m_tokens,
        stats.cache_write_5m_tokens
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_job_with_cache_auto_costs_under_a_third_of_the_same_batch_uncached() {
    let env = TestEnv::new(fast_batch_fake(300), FAST_BATCHES).await;
    let lines: Vec<String> = (0..20)
        .map(|i| {
            unmarked_request(&format!("b-{i:03}"))
                .replace(r#""mode":"realtime""#, r#""mode":"batch""#)
        })
        .collect();
    env.write_job("nightly", (lines.join("\n") + "\n").as_bytes());
    let daemon = env.start_daemon();
    env.wait_done("nightly", Duration::from_secs(60)).await;
    daemon.stop().await;
    let results = env.results("nightly");
    assert_eq!(succeeded(&results), 20);
    let stats = env.fake.stats();
    // Marked for an hour in the batch lane: the first request wrote it, the others read it.
    assert!(stats.batch_cache_write_1h_tokens > 1_500, "{stats:?}");
    assert_eq!(stats.batch_cache_write_5m_tokens, 0);
    assert_eq!(
        stats.batch_cache_read_input_tokens,
        19 * stats.batch_cache_write_1h_tokens
    );
    let ledger: Value =
        serde_json::from_slice(&env.cli(&["ledger", "--json"]).stdout).expect("ledger --json");
    let cost = ledger["total"]["cost_usd"].as_f64().expect("cost");
    // The same calls uncached: every prompt token at the input price (batches at half).
    let prompt = stats.batch_input_tokens
        + stats.batch_cache_write_1h_tokens
        + stats.batch_cache_read_input_tokens;
    let uncached = (prompt as f64 * 2.0 + stats.batch_output_tokens as f64 * 10.0) / 2.0 / 1e6;
    assert!(cost < uncached * 0.3, "{cost} against {uncached} uncached");
}
