//! The operator's chores: retry, pause and resume, clean, one item in full, the job-done hook.

use std::time::Duration;

use crate::common::*;
use nightshift::fake_api::{FakeConfig, Faults};
use serde_json::Value;

fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_sends_errored_items_again_and_the_results_hold_each_id_once_with_the_latest() {
    // Half the calls fail with a 500 and one attempt is all an item gets: many end errored.
    let env = TestEnv::new(
        FakeConfig {
            faults: Faults {
                server_error_500: 0.5,
                ..Faults::default()
            },
            seed: 11,
            ..FakeConfig::default()
        },
        "[realtime]\nmax_attempts = 1\nbackoff_min_ms = 10\nbackoff_max_ms = 20\n",
    )
    .await;
    let (ids, body) = job_of("r", 40);
    env.write_job("flaky", &body);
    let daemon = env.start_daemon();
    let first = env.wait_done("flaky", Duration::from_secs(60)).await;
    let errored = first.counts.errored;
    assert!(errored >= 5, "{:?}", first.counts);
    let before = env.results("flaky");
    let failed: Vec<String> = before
        .iter()
        .filter(|r| r["result"]["type"] == "errored")
        .map(|r| r["custom_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(failed.len() as u64, errored);

    // The API is well again; the errored items go back.
    env.fake.set_faults(Faults::default());
    let out = env.cli(&["retry", "flaky", "--errored"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text(&out).starts_with(&format!(
            "{errored} items of job flaky went back to the planner"
        )),
        "{}",
        text(&out)
    );
    let again = env.wait_done("flaky", Duration::from_secs(60)).await;
    // Nothing left to retry: zero items, and the job stays done.
    let out = env.cli(&["retry", "flaky"]);
    assert!(
        text(&out).starts_with("0 items of job flaky"),
        "{}",
        text(&out)
    );
    assert_eq!(env.job_status("flaky").expect("job").state, "done");
    daemon.stop().await;
    assert_eq!((again.counts.succeeded, again.counts.errored), (40, 0));
    let results = env.results("flaky");
    assert_eq!(results.len(), 40, "each custom_id once");
    assert_each_once(&results, &ids);
    assert_eq!(succeeded(&results), 40, "with the latest outcome");

    // The item shows every call, and the line it had before.
    let item = json(&env.cli(&["item", "flaky", &failed[0], "--json"]));
    assert_eq!(item["state"], "succeeded");
    assert_eq!(item["result"]["result"]["type"], "succeeded");
    let earlier = item["earlier_results"].as_array().expect("earlier");
    assert_eq!(earlier.len(), 1);
    assert_eq!(earlier[0]["result"]["result"]["type"], "errored");
    let calls = item["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 2, "{item}");
    assert_eq!(calls[0]["http_status"], 500);
    assert_eq!(calls[1]["outcome"], "succeeded");
    assert!(
        calls[1]["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    assert_eq!(item["billed_calls"], 1);
    assert!(item["cost_usd"].as_f64().expect("cost") > 0.0);
    let shown = text(&env.cli(&["item", "flaky", &failed[0]]));
    assert!(shown.contains("state      succeeded"), "{shown}");
    assert!(shown.contains("before     {"), "{shown}");
    // Unknown names say which.
    assert_eq!(env.cli(&["item", "flaky", "nope"]).status.code(), Some(3));
    assert_eq!(env.cli(&["item", "nope", "r-0000"]).status.code(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_tenant_or_job_waits_across_a_restart_until_resumed() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    // The database is the daemon's to make.
    let daemon = env.start_daemon();
    while env.try_status_json().is_null() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = env.cli(&["pause", "--tenant", "acme"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text(&out).contains("tenant acme paused"), "{}", text(&out));
    let (ids, body) = job_of("p", 20);
    std::fs::write(env.jobs_dir().join("held.toml"), "tenant = \"acme\"\n").expect("sidecar");
    env.write_job("held", &body);
    // Taken in, but nothing is sent.
    let started = std::time::Instant::now();
    while env.job_status("held").is_none_or(|j| j.counts.total < 20) {
        assert!(started.elapsed() < Duration::from_secs(30), "not taken in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The job is held by its own pause too; `status` says by whom.
    assert!(env.cli(&["pause", "held"]).status.success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.fake.stats().messages_accepted, 0);
    let status = env.status_json();
    assert_eq!(status["jobs"][0]["state"], "paused");
    assert_eq!(status["holds"].as_array().expect("holds").len(), 2);
    assert!(
        status["holds"][0]["by"]
            .as_str()
            .expect("by")
            .contains("uid")
    );
    let shown = text(&env.cli(&["status"]));
    assert!(shown.contains("PAUSED tenant acme by "), "{shown}");
    // The config in use is named, the daemon's too when it differs.
    assert!(
        shown.contains(&format!("\nconfig: {}\n", env.config_path.display())),
        "{shown}"
    );
    daemon.stop().await;

    // Across a restart: still held.
    let daemon = env.start_daemon();
    let resumed = env.cli(&["resume", "--tenant", "acme"]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        env.fake.stats().messages_accepted,
        0,
        "the job's own pause still holds it"
    );
    assert_eq!(env.status_json()["jobs"][0]["state"], "paused");
    let out = env.cli(&["resume", "held"]);
    assert!(text(&out).contains("job held resumed"), "{}", text(&out));
    env.wait_done("held", Duration::from_secs(30)).await;
    daemon.stop().await;
    assert_each_once(&env.results("held"), &ids);
    assert_eq!(succeeded(&env.results("held")), 20);
    assert!(text(&env.cli(&["resume", "held"])).contains("was not paused"));
    assert_eq!(env.cli(&["pause", "nope"]).status.code(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_clears_finished_jobs_from_status_and_keeps_the_ledger_and_purge_asks_first() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    let (_, body) = job_of("c", 5);
    env.write_job("old", &body);
    let daemon = env.start_daemon();
    env.wait_done("old", Duration::from_secs(30)).await;
    daemon.stop().await;
    let ledger_before = json(&env.cli(&["ledger", "--json"]))["total"].clone();
    assert_eq!(ledger_before["requests"], 5);

    // Finished too recently for --older-than 1d: nothing.
    assert!(text(&env.cli(&["clean", "--older-than", "1d"])).contains("no finished job"));
    let out = env.cli(&["clean"]);
    assert!(
        text(&out).contains("1 finished jobs cleared from status"),
        "{}",
        text(&out)
    );
    assert!(
        env.status_json()["jobs"]
            .as_array()
            .expect("jobs")
            .is_empty()
    );
    assert_eq!(json(&env.cli(&["job", "old", "--json"]))["state"], "done");
    assert_eq!(
        json(&env.cli(&["ledger", "--json"]))["total"],
        ledger_before
    );
    assert_eq!(
        json(&env.cli(&["item", "old", "c-0001", "--json"]))["state"],
        "succeeded"
    );

    // --purge deletes for good, so it asks for --yes.
    assert_eq!(env.cli(&["clean", "--purge"]).status.code(), Some(65));
    assert!(env.results_file("old").exists());
    let out = env.cli(&["clean", "--purge", "--yes"]);
    assert!(
        text(&out).contains("1 finished jobs purged"),
        "{}",
        text(&out)
    );
    assert_eq!(env.cli(&["job", "old"]).status.code(), Some(3));
    assert!(!env.results_file("old").exists());
    assert!(!env.jobs_dir().join("ingested/old.jsonl").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_done_hook_gets_the_jobs_facts_and_no_secret_and_a_failing_one_is_harmless() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    let out_file = env.dir.path().join("hook.env");
    std::fs::write(
        &env.config_path,
        std::fs::read_to_string(&env.config_path).expect("config")
            + &format!(
                "[hooks]\non_job_done = [\"/bin/sh\", \"-c\", \"env > {0}.tmp && mv {0}.tmp {0}\"]\n",
                out_file.display()
            ),
    )
    .expect("config");
    let (_, body) = job_of("h", 7);
    env.write_job("hooked", &body);
    let mut daemon = env.spawn_binary_daemon("sk-ant-secret-hook-test", "hook.log");
    env.wait_done("hooked", Duration::from_secs(30)).await;
    let started = std::time::Instant::now();
    while !out_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the hook did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = std::fs::read_to_string(&out_file).expect("hook env");
    for expected in [
        "NIGHTSHIFT_JOB=hooked",
        "NIGHTSHIFT_JOB_STATE=done",
        "NIGHTSHIFT_ITEMS=7",
        "NIGHTSHIFT_SUCCEEDED=7",
        "NIGHTSHIFT_ERRORED=0",
        &format!(
            "NIGHTSHIFT_RESULTS={}",
            env.results_file("hooked").display()
        ),
    ] {
        assert!(
            seen.lines().any(|l| l == expected),
            "{expected} not in:\n{seen}"
        );
    }
    assert!(seen.contains("NIGHTSHIFT_COST_USD=0.0"), "{seen}");
    assert!(
        !seen.contains("sk-ant-secret"),
        "the key stays with the daemon:\n{seen}"
    );
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait().expect("daemon exits").success());

    // A hook that cannot run is logged; the daemon and the next job go on.
    env.edit_config(
        "on_job_done = [\"/bin/sh\"",
        "on_job_done = [\"/nonexistent/hook\"",
    );
    let (ids, body) = job_of("n", 3);
    env.write_job("next", &body);
    let mut daemon = env.spawn_binary_daemon("sk-ant-secret-hook-test", "hook2.log");
    env.wait_done("next", Duration::from_secs(30)).await;
    assert_each_once(&env.results("next"), &ids);
    let started = std::time::Instant::now();
    loop {
        let log = std::fs::read_to_string(env.dir.path().join("hook2.log")).unwrap_or_default();
        if log.contains("the on_job_done hook could not start") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not logged:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait().expect("daemon exits").success());
}
