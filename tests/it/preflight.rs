//! Requests the API will refuse are not sent (issue 13, finding 4): what the model table knows is
//! errored at intake naming the field; what only the API knows is asked of its free
//! `count_tokens` endpoint, once per request shape, before a batch is created (and by
//! `plan --check`), so a refused shape errors its items in seconds, not when the batch ends.

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use nightshift::fake_api::FakeConfig;
use serde_json::Value;

fn line(id: &str, params: &str) -> String {
    format!(
        r#"{{"custom_id":"{id}","mode":"batch","params":{{{params},"messages":[{{"role":"user","content":"hi"}}]}}}}"#
    )
}

/// The errored results of a job by custom_id: (field, message).
fn errors(env: &TestEnv, job: &str) -> std::collections::HashMap<String, (Value, String)> {
    env.results(job)
        .into_iter()
        .filter(|r| r["result"]["type"] == "errored")
        .map(|r| {
            let error = &r["result"]["error"]["error"];
            (
                r["custom_id"].as_str().unwrap_or_default().to_owned(),
                (
                    error["details"]["field"].clone(),
                    error["message"].as_str().unwrap_or_default().to_owned(),
                ),
            )
        })
        .collect()
}

/// Before: a retired model, `max_tokens` of 10^12, a per-model rule broken, or a sampling
/// parameter on anthropic-version 2026-10-21 were all sent (in a batch, refused hours later).
/// Now intake errors each naming the field and what to do; a deprecated model runs, with a
/// warning in the job's note, the log and `plan`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_model_table_knows_is_errored_at_intake() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    env.set_api("anthropic_version = \"2026-10-21\"");
    let lines = [
        line("retired", r#""model":"claude-sonnet-4-5","max_tokens":16"#),
        line(
            "huge",
            r#""model":"claude-haiku-5-5","max_tokens":1000000000000"#,
        ),
        line(
            "ceiling",
            r#""model":"claude-haiku-4-5","max_tokens":64001"#,
        ),
        line(
            "thinking",
            r#""model":"claude-opus-5-5","max_tokens":16,"thinking":{"type":"disabled","budget_tokens":0}"#,
        ),
        line(
            "forced",
            r#""model":"claude-sonnet-5-5","max_tokens":16,"tools":[{"name":"t","input_schema":{"type":"object"}}],"tool_choice":{"type":"any"}"#,
        ),
        line(
            "sampling",
            r#""model":"claude-haiku-5-5","max_tokens":16,"temperature":1.0"#,
        ),
        line("deprecated", r#""model":"claude-opus-4-5","max_tokens":16"#),
        line("fine", r#""model":"claude-haiku-5-5","max_tokens":16"#),
    ];
    let body = lines.join("\n");
    let file = env.dir.path().join("rules.jsonl");
    std::fs::write(&file, &body).expect("write");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&env.config_path)
        .args(["plan", file.to_str().expect("utf-8"), "--json"])
        .output()
        .expect("plan runs");
    let planned: Value = serde_json::from_slice(&out.stdout).expect("plan --json");
    // claude-opus-4-5 retires on 2027-01-22: from that day on the table errors it too (the test
    // checks whichever holds on the day it runs).
    let today = nightshift::model::catalog::day_of(nightshift::store::now_ms());
    let still_deprecated =
        nightshift::model::catalog::deprecation("claude-opus-4-5", &today).is_some();
    let (ok, bad) = if still_deprecated { (2, 6) } else { (1, 7) };
    assert_eq!(
        (planned["items"].as_u64(), planned["invalid_lines"].as_u64()),
        (Some(ok), Some(bad)),
        "{planned}"
    );
    let deprecated = planned["deprecated_models"].to_string();
    assert_eq!(
        deprecated.contains("claude-opus-4-5 is deprecated")
            && deprecated.contains("claude-opus-5-5"),
        still_deprecated,
        "{planned}"
    );

    let daemon = env.start_daemon();
    env.write_job("rules", body.as_bytes());
    let job = env.wait_done("rules", Duration::from_secs(120)).await;
    daemon.stop().await;
    assert_eq!((job.counts.succeeded, job.counts.errored), (ok, bad));
    let errors = errors(&env, "rules");
    let expect = [
        (
            "retired",
            "params.model",
            "retired on 2026-11-30: the API no longer serves it; use claude-sonnet-5-5",
        ),
        (
            "huge",
            "params.max_tokens",
            "above the 300000 output tokens any model takes",
        ),
        (
            "ceiling",
            "params.max_tokens",
            "above the 64000 output tokens claude-haiku-4-5 takes",
        ),
        ("thinking", "params.thinking.type", "always on"),
        (
            "forced",
            "params.tool_choice.type",
            "refuses forced tool use",
        ),
        (
            "sampling",
            "params.temperature",
            "anthropic-version 2026-10-21",
        ),
    ];
    for (id, field, words) in expect {
        let (got_field, message) = errors
            .get(id)
            .unwrap_or_else(|| panic!("{id} not errored: {errors:?}"));
        assert_eq!(got_field, field, "{id}");
        assert!(
            message.contains(words) && message.contains("rules.jsonl line"),
            "{id}: {message}"
        );
    }
    assert_eq!(
        env.fake.stats().invalid_4xx,
        0,
        "nothing the API refuses was sent"
    );
    let note = env.job_json("rules")["note"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if still_deprecated {
        assert!(
            note.contains(
                "claude-opus-4-5 is deprecated since 2026-11-23 and retires on 2027-01-22"
            ),
            "{note}"
        );
    } else {
        let (field, message) = &errors["deprecated"];
        assert_eq!(field, "params.model");
        assert!(message.contains("retired on 2027-01-22"), "{message}");
    }
}

/// Shapes only the API can judge (a model id the table does not know, a system block it refuses)
/// and one request whose own conversation it refuses: before the batch is created, one
/// count_tokens call per shape finds them; their items are errored at once quoting the API, and
/// the batch carries only the rest. `plan --check` says the same, exit 65.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shape_the_api_refuses_is_errored_before_the_batch_is_created() {
    let env = TestEnv::new(fast_batch_fake(200), FAST_BATCHES).await;
    let good = r#""model":"claude-haiku-5-5","max_tokens":16"#;
    let mut lines = vec![
        // First of the good shape, counted for it: its own conversation is refused.
        format!(
            r#"{{"custom_id":"bad-role","mode":"batch","params":{{{good},"messages":[{{"role":"robot","content":"hi"}}]}}}}"#
        ),
    ];
    let mut good_ids = Vec::new();
    for i in 0..10 {
        good_ids.push(format!("good-{i}"));
        lines.push(line(&format!("good-{i}"), good));
        lines.push(line(
            &format!("model-{i}"),
            r#""model":"claude-opus-9-9","max_tokens":16"#,
        ));
        lines.push(line(
            &format!("system-{i}"),
            r#""model":"claude-haiku-5-5","max_tokens":16,"system":[{"type":"image"}]"#,
        ));
    }
    let body = lines.join("\n");
    let file = env.dir.path().join("shapes.jsonl");
    std::fs::write(&file, &body).expect("write");

    let out = Command::new(BIN)
        .arg("--config")
        .arg(&env.config_path)
        .args(["plan", file.to_str().expect("utf-8"), "--check", "--json"])
        .env("ANTHROPIC_API_KEY", "sk-ant-test-preflight-0000")
        .output()
        .expect("plan runs");
    assert_eq!(
        out.status.code(),
        Some(65),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planned: Value = serde_json::from_slice(&out.stdout).expect("plan --json");
    let check = &planned["check"];
    assert_eq!(check["shapes"], 3, "{planned}");
    let refused = check["refused"].as_array().expect("refused");
    let find = |words: &str| {
        refused
            .iter()
            .find(|r| r["error"].as_str().is_some_and(|e| e.contains(words)))
            .unwrap_or_else(|| panic!("no refusal with {words:?}: {planned}"))
    };
    assert_eq!(
        (
            find("messages.0.role")["requests"].as_u64(),
            find("messages.0.role")["lines"][0].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(find("HTTP 404")["requests"], 10);
    assert_eq!(find("HTTP 404")["lines"][0], 3);
    assert_eq!(find("system.0.type")["requests"], 10);
    // Each of the three shapes was asked once, and each refused (the fake counts those as 4xx);
    // the two whose refusal names no message were asked again with one short turn in place of
    // the conversation (refused too: it is the shape), the bad role not.
    let refused_by_plan = env.fake.stats().invalid_4xx;
    assert_eq!(
        refused_by_plan, 5,
        "one call per shape, and a probe for two"
    );

    let daemon = env.start_daemon();
    env.write_job("shapes", body.as_bytes());
    let job = env.wait_done("shapes", Duration::from_secs(120)).await;
    daemon.stop().await;
    let stats = env.fake.stats();
    assert_eq!((job.counts.succeeded, job.counts.errored), (10, 21));
    assert_eq!(
        stats.batch_requests, 10,
        "the batch carried only what the API takes"
    );
    assert_eq!(
        stats.invalid_4xx - refused_by_plan,
        5,
        "as plan: one call per shape and two probes, nothing else refused"
    );
    assert_eq!(
        stats.batch_errored, 0,
        "nothing came back errored from the batch"
    );
    let errors = errors(&env, "shapes");
    let (_, message) = &errors["model-0"];
    assert!(
        message.contains("HTTP 404")
            && message.contains("before the batch was created")
            && message.contains("line 3 of"),
        "{message}"
    );
    assert!(
        errors["system-9"].1.contains("system.0.type"),
        "{:?}",
        errors["system-9"]
    );
    assert!(
        errors["bad-role"].1.contains("messages.0.role"),
        "{:?}",
        errors["bad-role"]
    );
    let results = env.results("shapes");
    assert_eq!(succeeded(&results), 10);
    for id in &good_ids {
        assert!(
            results
                .iter()
                .any(|r| r["custom_id"] == id.as_str() && r["result"]["type"] == "succeeded"),
            "{id}"
        );
    }
}
