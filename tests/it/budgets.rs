//! Budget caps against the fake API: each action (reject, downgrade, defer), with many calls
//! admitted at once against a nearly spent cap.

use std::time::{Duration, Instant};

use crate::common::*;
use nightshift::fake_api::{BatchSettings, FakeConfig};
use serde_json::Value;

/// A request line of `tenant` for `model`, 64 output tokens at most; `extra` adds fields.
fn line(id: &str, tenant: &str, model: &str, extra: &str) -> String {
    format!(
        r#"{{"custom_id":"{id}","tenant":"{tenant}",{extra}"params":{{"model":"{model}","max_tokens":64,"messages":[{{"role":"user","content":"Classify ticket {id}: my parcel is late."}}]}}}}"#
    )
}

fn job(prefix: &str, n: usize, make: impl Fn(&str) -> String) -> (Vec<String>, Vec<u8>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:03}")).collect();
    let body: String = ids.iter().map(|id| make(id) + "\n").collect();
    (ids, body.into_bytes())
}

fn ledger(env: &TestEnv, by: &str) -> Value {
    let out = env.cli(&["ledger", "--json", "--by", by]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ledger --json")
}

fn micros(v: &Value) -> i64 {
    (v["cost_usd"].as_f64().unwrap_or(-1.0) * 1e6).round() as i64
}

fn fast_batches() -> FakeConfig {
    FakeConfig {
        batch: BatchSettings {
            processing_time: Duration::from_millis(200),
            ..BatchSettings::default()
        },
        ..FakeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejecting_cap_holds_under_concurrent_admission() {
    // $0.002 is room for about 55 worst cases of these calls; 32 go out at once.
    let env = TestEnv::new(
        FakeConfig::default(),
        "[realtime]\nconcurrency = 32\n\n[budgets.acme]\ndaily_usd = 0.002\non_daily = \"reject\"\n",
    )
    .await;
    let (ids, body) = job("rej", 200, |id| {
        line(id, "acme", "claude-haiku-5-5", r#""mode":"realtime","#)
    });
    env.write_job("capped", &body);
    let daemon = env.start_daemon();
    env.wait_done("capped", Duration::from_secs(60)).await;
    daemon.stop().await;

    let results = env.results("capped");
    let by_id = assert_each_once(&results, &ids);
    let rejected: Vec<&&Value> = by_id
        .values()
        .filter(|r| r["result"]["type"] == "errored")
        .collect();
    let sent = succeeded(&results);
    assert!(
        sent > 0 && !rejected.is_empty(),
        "{sent} sent, {} rejected",
        rejected.len()
    );
    assert_eq!(sent + rejected.len(), 200);
    for r in &rejected {
        let error = &r["result"]["error"]["error"];
        assert_eq!(error["type"], "billing_error", "{r}");
        assert_eq!(error["details"]["reason"], "budget_exceeded", "{r}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("daily budget of $0.00"), "{message}");
    }
    assert_eq!(
        env.fake.stats().messages_accepted,
        sent as u64,
        "a rejected item is never sent"
    );

    // Haiku 5.5: $0.10 / $0.50 per million tokens; the estimate is a token per 4 bytes of params.
    let params_len = line("rej-000", "acme", "claude-haiku-5-5", "").len()
        - r#"{"custom_id":"rej-000","tenant":"acme","params":"#.len()
        - 1;
    let worst = (params_len.div_ceil(4) as f64 * 0.10 + 64.0 * 0.50).round() as i64;
    let spent = micros(&ledger(&env, "tenant")["total"]);
    assert!(
        spent <= 2_000 + worst,
        "spent {spent} millionths against a cap of 2,000: more than one call ({worst}) over"
    );
    assert!(
        spent > 2_000 - 2 * worst,
        "the cap was used up to its last calls ({spent})"
    );

    let status = env.status_json();
    let acme = &status["budgets"][0];
    assert_eq!(acme["tenant"], "acme");
    assert_eq!(acme["daily_cap_usd"], 0.002);
    assert_eq!(acme["reserved_usd"], 0.0, "every reservation settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrading_cap_moves_calls_to_the_cheaper_model() {
    // Sonnet 4.5 calls cost up to about $0.0011 each: a few fit in $0.005, the rest go to Haiku 5.5.
    let env = TestEnv::new(
        FakeConfig::default(),
        "[realtime]\nconcurrency = 4\n\n[budgets.beta]\ndaily_usd = 0.005\non_daily = \"downgrade\"\ndowngrade_to = \"claude-haiku-5-5\"\n",
    )
    .await;
    let (ids, body) = job("dg", 30, |id| {
        line(id, "beta", "claude-sonnet-4-6", r#""mode":"realtime","#)
    });
    env.write_job("cheaper", &body);
    let daemon = env.start_daemon();
    env.wait_done("cheaper", Duration::from_secs(60)).await;
    daemon.stop().await;

    let results = env.results("cheaper");
    let by_id = assert_each_once(&results, &ids);
    assert_eq!(
        succeeded(&results),
        30,
        "a downgrade still answers every item"
    );
    let models: Vec<&str> = by_id
        .values()
        .map(|r| r["result"]["message"]["model"].as_str().unwrap_or_default())
        .collect();
    let on_haiku = models.iter().filter(|m| **m == "claude-haiku-5-5").count();
    let on_sonnet = models.iter().filter(|m| **m == "claude-sonnet-4-6").count();
    assert!(
        (1..=5).contains(&on_sonnet) && on_haiku + on_sonnet == 30,
        "{on_sonnet} on Sonnet, {on_haiku} on Haiku"
    );

    let by_model = ledger(&env, "model");
    let groups = by_model["groups"].as_array().expect("groups");
    let requests = |model: &str| {
        groups
            .iter()
            .find(|g| g["key"] == model)
            .map_or(0, |g| g["requests"].as_u64().unwrap_or(0))
    };
    assert_eq!(requests("claude-haiku-5-5"), on_haiku as u64);
    assert_eq!(requests("claude-sonnet-4-6"), on_sonnet as u64);
    let job = env.job_json("cheaper");
    assert_eq!(job["budget"]["downgraded"], on_haiku, "{job}");
    let reason = job["budget"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("downgraded from claude-sonnet-4-6 to claude-haiku-5-5"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferring_cap_sends_work_to_batches_then_holds_it_for_the_next_day() {
    // A call costs up to about $0.000036 in real time and half that in a batch: with a cap of
    // $0.00003 none may go real time, and the cap holds one batch call at a time.
    let env = TestEnv::new(
        fast_batches(),
        "[batch]\npoll_min_ms = 100\npoll_max_ms = 300\nrpm = 6000\n\n[budgets.gamma]\ndaily_usd = 0.00003\non_daily = \"defer\"\n",
    )
    .await;
    let (_, body) = job("df", 10, |id| {
        line(id, "gamma", "claude-haiku-5-5", r#""priority":"high","#)
    });
    env.write_job("deferred", &body);
    let daemon = env.start_daemon();
    let started = Instant::now();
    let job = loop {
        let out = env.cli(&["job", "deferred", "--json"]);
        let job: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let counts = &job["counts"];
        let settled = counts["in_flight"] == 0
            && counts["succeeded"].as_u64() >= Some(1)
            && counts["succeeded"].as_u64().unwrap_or(0)
                + job["budget"]["held"].as_u64().unwrap_or(0)
                == 10;
        if settled {
            break job;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never settled: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    daemon.stop().await;

    assert_eq!(
        env.fake.stats().messages_accepted,
        0,
        "nothing went real time"
    );
    assert!(
        job["lanes"]["batch"].as_u64() >= Some(1),
        "items went to batches: {job}"
    );
    assert_ne!(job["state"], "done");
    let held_until = job["budget"]["held_until"].as_str().unwrap_or_default();
    assert!(
        held_until.ends_with("T00:00:00Z"),
        "held until the next UTC day: {job}"
    );
    let spent = micros(&ledger(&env, "tenant")["total"]);
    assert!(
        spent > 0 && spent <= 30,
        "spent {spent} millionths against 30"
    );
}
