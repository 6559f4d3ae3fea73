//! Several daemons sharing one PostgreSQL store (each its own host: jobs and data folders, config),
//! against one fake API: a daemon killed mid-job is taken over once its leases expire; a paused
//! one that resumes cannot record; a file dropped on two hosts is taken in once; a budget cap
//! holds however many daemons admit at once.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::*;
use nightshift::fake_api::FakeConfig;
use serde_json::Value;

/// Leases this short, so takeovers come within seconds.
const LEASE: &str = "[store]\nlease_secs = 3\n";

/// A PostgreSQL env whose daemons lease for [`LEASE`].
async fn shared_env(fake: FakeConfig, extra: &str) -> TestEnv {
    let env = TestEnv::on(TestStore::Postgres, fake, extra).await;
    env.edit_config("[store]\n", LEASE);
    env
}

/// The daemons on the store, as `leases::daemons` lists them.
fn daemons(env: &TestEnv) -> Vec<nightshift::store::leases::DaemonRow> {
    env.read_store(nightshift::store::leases::daemons)
        .unwrap_or_default()
}

/// The daemon of `host` on the store, once it beats.
fn daemon_of(env: &TestEnv, host: &Host) -> Option<nightshift::store::leases::DaemonRow> {
    // Daemons are named by their data folder's canonical path.
    let data = std::fs::canonicalize(host.root.join("data")).ok()?;
    let data = data.display().to_string();
    daemons(env).into_iter().find(|d| d.id.ends_with(&data))
}

/// Waits until `what` holds, at most `secs`.
async fn wait_for(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `nightshift results JOB` from `host`: every line, parsed.
fn results_from(host: &Host, job: &str) -> Vec<Value> {
    let out = host.cli(&["results", job]);
    assert!(
        out.status.success(),
        "results {job}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a result line is JSON"))
        .collect()
}

/// The lines of the hosts' logs `keep` keeps, each named by its host and cut to 300 characters,
/// for a test's message.
fn log_lines(hosts: &[Host], keep: impl Fn(&str) -> bool) -> Vec<String> {
    hosts
        .iter()
        .flat_map(|h| {
            h.log()
                .lines()
                .filter(|l| keep(l))
                .map(|l| format!("{}: {}", h.name, l.chars().take(300).collect::<String>()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Waits (at most `secs`) until the job is done; else fails with each host's warnings and
/// errors, and the items by state and lease holder.
async fn wait_done_or_tell(env: &TestEnv, hosts: &[Host], job: &str, secs: u64) {
    let started = Instant::now();
    while env.job_status(job).is_none_or(|j| j.state != "done") {
        if started.elapsed() > Duration::from_secs(secs) {
            let logs = log_lines(hosts, |l| l.contains("WARN") || l.contains("ERROR"));
            let items = env.read_store(|c| {
                let mut stmt = c.prepare(
                    "SELECT state, lease_owner, COUNT(*) FROM items GROUP BY state, lease_owner",
                )?;
                let rows = stmt.query_map((), |r| {
                    Ok(format!(
                        "{} {:?} {}",
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, i64>(2)?
                    ))
                })?;
                rows.collect::<nightshift::store::Result<Vec<_>>>()
            });
            panic!(
                "{job} not done after {secs} s; items by state and holder: {items:?}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop(mut daemon: Child) {
    signal(&daemon, libc::SIGTERM);
    let status = daemon.wait().expect("reaped");
    assert_eq!(status.code(), Some(0), "SIGTERM ends a daemon with 0");
}

/// Calls whose outcome the store records as unknown.
fn unknown_calls(env: &TestEnv) -> i64 {
    count(
        env,
        "SELECT COUNT(*) FROM attempts WHERE outcome = 'unknown'",
    )
}

/// A `COUNT(*)` of the store.
fn count(env: &TestEnv, sql: &str) -> i64 {
    env.read_store(|c| c.query_row(sql, (), |r| r.get(0)))
        .expect(sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_one_killed_mid_job_the_others_take_over_each_item_once() {
    let env = shared_env(
        FakeConfig {
            latency: Duration::from_millis(150),
            ..fast_batch_fake(1500)
        },
        &format!("{FAST_BATCHES}max_requests = 20\n\n[realtime]\nconcurrency = 4\n"),
    )
    .await;
    let hosts = [env.host("a"), env.host("b"), env.host("c")];
    let mut running: Vec<Option<Child>> = hosts.iter().map(|h| Some(h.spawn())).collect();
    // 300 real-time items and 60 for batches, dropped on b: b takes the file in and keeps the
    // results file, until it dies.
    let mut ids = Vec::new();
    let mut body = String::new();
    for i in 0..360 {
        let id = format!("shared-{i:04}");
        let line = if i < 300 {
            request(&id, &format!("Summarise ticket {i}."))
        } else {
            planned_request(&id, r#""mode":"batch","#)
        };
        body.push_str(&line);
        body.push('\n');
        ids.push(id);
    }
    hosts[1].write_job("shared", body.as_bytes());
    wait_for(60, "b holds calls in flight after 30 successes", || {
        daemon_of(&env, &hosts[1]).is_some_and(|d| d.items_held > 0)
            && env
                .job_status("shared")
                .is_some_and(|j| j.counts.succeeded >= 30)
    })
    .await;
    let victim = running[1].take().expect("b runs");
    let mut victim = victim;
    victim.kill().expect("SIGKILL");
    let killed = Instant::now();
    victim.wait().expect("reaped");
    let held = daemon_of(&env, &hosts[1]).expect("b's row stays");
    assert!(held.items_held > 0, "b died holding calls: {held:?}");
    // Its leases expire (3 s) and the next sweep of another daemon takes its work back.
    wait_for(30, "b's calls taken back", || {
        daemon_of(&env, &hosts[1]).is_some_and(|d| d.items_held == 0 && d.batches_held == 0)
    })
    .await;
    let takeover = killed.elapsed();
    let job = env.wait_done("shared", Duration::from_secs(120)).await;
    eprintln!("takeover after SIGKILL: {takeover:?}");
    assert!(
        takeover >= Duration::from_secs(3),
        "nothing is taken back before the lease expires ({takeover:?})"
    );
    for daemon in running.into_iter().flatten() {
        stop(daemon);
    }

    assert_eq!(job.counts.succeeded, 360);
    // From any host, each custom_id once.
    for host in [&hosts[0], &hosts[2]] {
        assert_each_once(&results_from(host, "shared"), &ids);
    }
    // b's results file was adopted by a live daemon and written there in full.
    let adopted: Vec<&Host> = [&hosts[0], &hosts[2]]
        .into_iter()
        .filter(|h| h.results_file("shared").exists())
        .collect();
    assert_eq!(adopted.len(), 1, "one daemon keeps the results file");
    assert_each_once(&read_results(&adopted[0].results_file("shared")), &ids);
    let log = adopted[0].log();
    assert!(log.contains("this one writes it now"), "{log}");
    // At debug too (RUST_LOG=debug here), no prompt reaches a log: PostgreSQL's client would
    // log every statement's parameters.
    for host in &hosts {
        let log = host.log();
        assert!(log.contains("DEBUG"), "the daemons log at debug");
        assert!(
            !log.contains("Summarise ticket"),
            "a prompt in {}'s log",
            host.name
        );
    }
    // The calls b had in flight are on record as unknown, and were sent again at most once each.
    let unknown = unknown_calls(&env);
    assert!(unknown >= 1, "b's calls in flight are unknown outcomes");
    let stats = env.fake.stats();
    assert!(
        stats.messages_accepted >= 300 && stats.messages_accepted <= 300 + unknown as u64,
        "accepted {}, unknown {unknown}",
        stats.messages_accepted
    );
    // No batch created twice: every batch the fake made is one the store knows.
    let batches = count(
        &env,
        "SELECT COUNT(*) FROM batches WHERE api_id IS NOT NULL",
    );
    assert_eq!(
        stats.batches_created, batches as u64,
        "no batch created twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_daemon_that_resumes_past_its_lease_cannot_record() {
    let env = shared_env(
        FakeConfig {
            latency: Duration::from_millis(1500),
            ..FakeConfig::default()
        },
        "[realtime]\nconcurrency = 4\n",
    )
    .await;
    let (a, b) = (env.host("a"), env.host("b"));
    let first = a.spawn();
    let second = b.spawn();
    let (ids, body) = job_of("paused", 40);
    a.write_job("paused", &body);
    wait_for(60, "b holds calls in flight", || {
        daemon_of(&env, &b).is_some_and(|d| d.items_held > 0)
    })
    .await;
    signal(&second, libc::SIGSTOP);
    // a takes b's calls back once its lease (3 s) has expired; b's answers arrive meanwhile.
    wait_for(30, "b's calls taken back while it is stopped", || {
        daemon_of(&env, &b).is_some_and(|d| d.items_held == 0)
    })
    .await;
    signal(&second, libc::SIGCONT);
    let job = env.wait_done("paused", Duration::from_secs(120)).await;
    stop(first);
    stop(second);

    assert_eq!(job.counts.succeeded, 40);
    assert_each_once(&results_from(&a, "paused"), &ids);
    assert_each_once(&read_results(&a.results_file("paused")), &ids);
    let log = b.log();
    assert!(
        log.contains("another daemon took it back; its outcome is not recorded"),
        "b's answers after its lease are refused: {log}"
    );
    let unknown = unknown_calls(&env);
    assert!(unknown >= 1);
    let accepted = env.fake.stats().messages_accepted;
    assert!(
        accepted <= 40 + unknown as u64,
        "accepted {accepted}, unknown {unknown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_file_dropped_on_two_hosts_is_taken_in_once() {
    let env = shared_env(FakeConfig::default(), "").await;
    let (a, b) = (env.host("a"), env.host("b"));
    let first = a.spawn();
    let second = b.spawn();
    wait_for(30, "both daemons beat", || daemons(&env).len() == 2).await;
    let (ids, body) = job_of("twin", 200);
    a.write_job("twin", &body);
    b.write_job("twin", &body);
    let job = env.wait_done("twin", Duration::from_secs(60)).await;
    // The copy the other host took in last is moved aside once it is seen to be the same file.
    wait_for(30, "both copies moved aside", || {
        [&a, &b]
            .iter()
            .all(|h| h.jobs_dir().join("ingested/twin.jsonl").exists())
    })
    .await;
    let status = env.status_json();
    stop(first);
    stop(second);

    let twins = status["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|j| j["name"] == "twin")
        .count();
    assert_eq!(twins, 1, "one job: {status}");
    assert_eq!(job.counts.total, 200, "each line taken in once");
    assert_each_once(&results_from(&b, "twin"), &ids);
    assert_eq!(
        env.fake.stats().messages_accepted,
        200,
        "each request sent once"
    );
    assert_eq!(
        status["daemons"].as_array().map(Vec::len),
        Some(2),
        "status lists both daemons: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_cap_holds_with_three_daemons_admitting_at_once() {
    // $0.002 is room for about 55 worst cases of these calls; 3 × 8 go out at once, answered
    // in half a second: one daemon alone would take 3 s to spend it, so all three admit.
    let env = shared_env(
        FakeConfig {
            latency: Duration::from_millis(500),
            ..FakeConfig::default()
        },
        "[realtime]\nconcurrency = 8\n\n[budgets.acme]\ndaily_usd = 0.002\non_daily = \"reject\"\n",
    )
    .await;
    let hosts = [env.host("a"), env.host("b"), env.host("c")];
    let running: Vec<Child> = hosts.iter().map(Host::spawn).collect();
    wait_for(30, "three daemons beat", || daemons(&env).len() == 3).await;
    let line = |id: &str| {
        format!(
            r#"{{"custom_id":"{id}","tenant":"acme","mode":"realtime","params":{{"model":"claude-haiku-5-5","max_tokens":64,"messages":[{{"role":"user","content":"Classify ticket {id}: my parcel is late."}}]}}}}"#
        )
    };
    let ids: Vec<String> = (0..300).map(|i| format!("cap-{i:03}")).collect();
    let body: String = ids.iter().map(|id| line(id) + "\n").collect();
    hosts[0].write_job("capped", body.as_bytes());
    wait_done_or_tell(&env, &hosts, "capped", 90).await;
    for daemon in running {
        stop(daemon);
    }

    let results = results_from(&hosts[0], "capped");
    let by_id = assert_each_once(&results, &ids);
    let sent = succeeded(&results);
    let rejected = by_id
        .values()
        .filter(|r| r["result"]["error"]["error"]["details"]["reason"] == "budget_exceeded")
        .count();
    assert!(sent > 0 && rejected > 0, "{sent} sent, {rejected} rejected");
    assert_eq!(sent + rejected, 300);
    // Haiku 5.5: $0.10 / $0.50 per million tokens; the estimate is a token per 4 bytes of params.
    let params_len = line("cap-000").len()
        - r#"{"custom_id":"cap-000","tenant":"acme","mode":"realtime","params":"#.len()
        - 1;
    let worst = (params_len.div_ceil(4) as f64 * 0.10 + 64.0 * 0.50).round() as i64;
    let out = env.cli(&["ledger", "--json", "--by", "tenant"]);
    let ledger: Value = serde_json::from_slice(&out.stdout).expect("ledger --json");
    let spent = (ledger["total"]["cost_usd"].as_f64().unwrap_or(-1.0) * 1e6).round() as i64;
    assert!(
        spent <= 2_000 + worst,
        "spent {spent} millionths against a cap of 2,000: more than one call ({worst}) over"
    );
    // Up to 3 × 8 calls are in flight, each reserving its worst case until it is answered: the
    // cap is used but for what those held when the last items were refused.
    assert!(
        spent > 2_000 - 24 * worst,
        "the cap was used up to its last calls in flight ({spent})"
    );
    // Calls went out from more than one daemon at once (each logs its successes).
    let sending = hosts
        .iter()
        .filter(|h| h.log().contains("succeeded"))
        .count();
    assert!(sending >= 2, "{sending} daemons sent calls");
}

/// Items per second from the job's first success to its last result, and the 429s meanwhile.
async fn paced(env: &TestEnv, host: &Host, job: &str, n: usize) -> (f64, u64) {
    let (ids, body) = job_of(job, n);
    let before = env.fake.stats().rate_limited_429;
    host.write_job(job, &body);
    env.wait_succeeded(job, 1, Duration::from_secs(60)).await;
    let started = Instant::now();
    env.wait_done(job, Duration::from_secs(120)).await;
    let rate = (n - 1) as f64 / started.elapsed().as_secs_f64();
    assert_each_once(&results_from(host, job), &ids);
    (rate, env.fake.stats().rate_limited_429 - before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_on_one_organization_are_paced_as_one() {
    use nightshift::fake_api::FakeLimits;
    // 20 requests a second; nothing else binds. Learned from the answers' headers alone.
    let env = shared_env(
        FakeConfig {
            limits: Some(FakeLimits {
                rpm: 1200,
                itpm: 10_000_000,
                otpm: 10_000_000,
                burst_seconds: 2.0,
            }),
            latency: Duration::from_millis(50),
            ..FakeConfig::default()
        },
        "[realtime]\nconcurrency = 16\n",
    )
    .await;
    let hosts = [env.host("a"), env.host("b"), env.host("c")];
    let mut running = vec![hosts[0].spawn()];
    let (alone, alone_429) = paced(&env, &hosts[0], "alone", 300).await;
    running.push(hosts[1].spawn());
    running.push(hosts[2].spawn());
    // Each learns of the others at its next heartbeat (within a third of the lease here).
    wait_for(30, "each daemon paces itself to a third", || {
        hosts.iter().all(|h| {
            h.log()
                .contains("this one paces itself to 1/3 of its limits")
        })
    })
    .await;
    let (three, three_429) = paced(&env, &hosts[0], "three", 600).await;
    for daemon in running {
        stop(daemon);
    }
    eprintln!(
        "one daemon: {alone:.1} items/s, {alone_429} × 429; three: {three:.1} items/s, {three_429} × 429 (the org allows 20/s)"
    );
    let sending = hosts
        .iter()
        .filter(|h| h.log().contains("succeeded"))
        .count();
    assert_eq!(sending, 3, "all three daemons sent calls");
    let told = log_lines(&hosts, |l| {
        l.contains("paces itself") || l.contains("status=429")
    });
    assert_eq!(
        three_429,
        0,
        "three daemons overshot the organization's limit:\n{}",
        told.join("\n")
    );
    assert!(
        three >= 0.85 * alone,
        "three daemons used less of the limit ({three:.1}/s) than one ({alone:.1}/s)"
    );
}
