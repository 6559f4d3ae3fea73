//! Recurring jobs: a template with a cron `schedule` in its sidecar is registered, not run; each
//! fire time drops a run into the jobs folder, which completes like any job; `status` shows the
//! next run; `unschedule` stops it.

use std::time::{Duration, Instant};

use crate::common::*;
use nightshift::fake_api::FakeConfig;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_runs_on_schedule_until_unscheduled() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    let (ids, body) = job_of("tick", 3);
    // Every two seconds (six fields: seconds first), in UTC.
    std::fs::write(
        env.jobs_dir().join("every2s.toml"),
        "schedule = \"*/2 * * * * *\"\ntimezone = \"UTC\"\ntenant = \"ops\"\n",
    )
    .expect("sidecar");
    env.write_job("every2s", &body);
    let daemon = env.start_daemon();

    // Two runs, each a complete job of its own, for tenant "ops".
    let started = Instant::now();
    let runs: Vec<Value> = loop {
        let status = env.try_status_json();
        let runs: Vec<Value> = status["jobs"]
            .as_array()
            .map(|jobs| {
                jobs.iter()
                    .filter(|j| {
                        j["name"]
                            .as_str()
                            .is_some_and(|n| n.starts_with("every2s-"))
                    })
                    .filter(|j| j["state"] == "done")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if runs.len() >= 2 {
            break runs;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for run in &runs {
        let name = run["name"].as_str().expect("name");
        assert!(
            name.ends_with('Z') && name.len() == "every2s-20261123T120000Z".len(),
            "{name}"
        );
        assert_each_once(&env.results(name), &ids);
        assert_eq!(env.job_json(name)["tenant"], "ops");
    }
    let status = env.status_json();
    assert!(
        status["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .all(|j| j["name"] != "every2s"),
        "the template itself is not run: {status}"
    );
    let schedule = &status["schedules"][0];
    assert_eq!(schedule["name"], "every2s");
    assert_eq!(schedule["schedule"], "*/2 * * * * *");
    assert!(schedule["runs"].as_i64() >= Some(2), "{schedule}");
    let next: jiff::Timestamp = schedule["next_run"]
        .as_str()
        .expect("next run")
        .parse()
        .expect("RFC 3339");
    assert_eq!(next.as_second() % 2, 0, "fires on even seconds: {next}");

    let out = env.cli(&["unschedule", "every2s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.cli(&["unschedule", "every2s"]).status.code(), Some(3));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = |s: &Value| {
        s["jobs"].as_array().map_or(0, |j| {
            j.iter()
                .filter(|j| {
                    j["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("every2s-"))
                })
                .count()
        })
    };
    let before = count(&env.status_json());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&env.status_json()), before, "no run after unschedule");
    assert!(
        env.status_json()["schedules"]
            .as_array()
            .expect("schedules")
            .is_empty()
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_schedule_rejects_the_file_naming_the_setting() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    std::fs::write(
        env.jobs_dir().join("bad.toml"),
        "schedule = \"at midnight\"\n",
    )
    .expect("sidecar");
    let (_, body) = job_of("bad", 1);
    env.write_job("bad", &body);
    let daemon = env.start_daemon();
    let started = Instant::now();
    let rejected = loop {
        let status = env.try_status_json();
        if let Some(r) = status["rejected_files"].as_array().and_then(|r| r.first()) {
            break r.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    daemon.stop().await;
    let reason = rejected["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("`schedule`") && reason.contains("bad.toml"),
        "{reason}"
    );
}
