//! The daemon as systemd runs it: readiness only after migrations and intake are up (a fake
//! notify socket), watchdog pings, SIGHUP reloading the limits in force, and SIGTERM in the middle
//! of a job losing nothing.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::common::*;
use nightshift::fake_api::FakeConfig;
use serde_json::Value;

/// The next datagram on the fake notify socket, within `timeout`.
fn next_message(socket: &UnixDatagram, timeout: Duration) -> Option<String> {
    socket.set_read_timeout(Some(timeout)).expect("timeout");
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_after_migrations_and_intake_then_watchdog_and_stopping() {
    // The schema is read from SQLite's file (`PRAGMA user_version`).
    let env = TestEnv::on(TestStore::Sqlite, FakeConfig::default(), "").await;
    let (ids, body) = job_of("rdy", 5);
    env.write_job("early", &body);
    let socket_path = env.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let mut daemon = env.spawn_binary_daemon_with(
        "sk-test",
        "notify.log",
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().expect("utf-8")),
            ("WATCHDOG_USEC", "400000"),
        ],
    );

    let started = Instant::now();
    let mut seen = Vec::new();
    let ready = loop {
        let message = next_message(&socket, Duration::from_secs(30)).expect("a notification");
        if message.contains("READY=1") {
            break message;
        }
        seen.push(message);
        assert!(started.elapsed() < Duration::from_secs(30), "{seen:?}");
    };
    assert!(ready.contains("STATUS=running"), "{ready}");
    // At READY=1 the schema is current and the job file that was waiting has been taken in.
    let conn = nightshift::store::open_read_only(env.config().db_path())
        .expect("the database exists when READY=1 arrives");
    let version: i64 = conn
        .query_row("PRAGMA user_version", (), |r| r.get(0))
        .expect("version");
    assert_eq!(version as usize, nightshift::store::schema_version());
    assert!(
        nightshift::store::jobs::find_by_name(&conn, "early")
            .expect("query")
            .is_some(),
        "intake ran before readiness"
    );

    let watchdog = next_message(&socket, Duration::from_secs(5)).expect("a ping");
    assert_eq!(watchdog, "WATCHDOG=1");

    env.wait_done("early", Duration::from_secs(30)).await;
    assert_each_once(&env.results("early"), &ids);

    // An online backup while the daemon runs: a consistent database with the finished job.
    let backup = env.dir.path().join("backup.db");
    let backup_arg = backup.to_str().expect("utf-8");
    let out = env.cli(&["backup", backup_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy = rusqlite::Connection::open(&backup).expect("the backup opens");
    let succeeded: i64 = copy
        .query_row(
            "SELECT COUNT(*) FROM items WHERE state = 'succeeded'",
            (),
            |r| r.get(0),
        )
        .expect("items");
    assert_eq!(succeeded, 5);
    let again = env.cli(&["backup", backup_arg]);
    assert_eq!(again.status.code(), Some(1), "a backup never overwrites");

    signal(&daemon, libc::SIGTERM);
    let mut stopping = false;
    while let Some(message) = next_message(&socket, Duration::from_secs(10)) {
        if message.contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 is sent on SIGTERM");
    assert_eq!(daemon.wait().expect("reaped").code(), Some(0));
}

/// `limits --json` until `check` holds for it.
async fn wait_limits(env: &TestEnv, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let out = env.cli(&["limits", "--json"]);
        let limits: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if check(&limits) {
            return limits;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: {limits}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn rpm_limit(limits: &Value) -> Option<f64> {
    limits["classes"][0]["dims"]
        .as_array()?
        .iter()
        .find(|d| d["dim"] == "requests")?["limit_per_minute"]
        .as_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_puts_new_limits_in_force_without_a_restart() {
    let env = TestEnv::new(
        FakeConfig::default(),
        "[limits.default]\nrpm = 6000\nitpm = 10000000\notpm = 10000000\n",
    )
    .await;
    let (_, body) = job_of("hup", 3);
    env.write_job("first", &body);
    let mut daemon = env.spawn_binary_daemon("sk-test", "hup.log");
    env.wait_done("first", Duration::from_secs(30)).await;
    wait_limits(&env, "the class is published", |l| {
        rpm_limit(l) == Some(6000.0)
    })
    .await;

    env.edit_config("rpm = 6000", "rpm = 7");
    signal(&daemon, libc::SIGHUP);
    wait_limits(&env, "the new limit is in force", |l| {
        rpm_limit(l) == Some(7.0)
    })
    .await;

    // A broken file on the next SIGHUP changes nothing, and the daemon keeps running.
    std::fs::write(&env.config_path, "this is = not [toml").expect("config");
    signal(&daemon, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(daemon.try_wait().expect("wait").is_none(), "still running");
    let log = std::fs::read_to_string(env.dir.path().join("hup.log")).expect("log");
    assert!(log.contains("configuration reloaded"), "{log}");
    signal(&daemon, libc::SIGTERM);
    assert_eq!(daemon.wait().expect("reaped").code(), Some(0));
    let log = std::fs::read_to_string(env.dir.path().join("hup.log")).expect("log");
    assert!(
        log.contains("reload refused; the running configuration stays in force"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_loses_nothing() {
    // Slow answers: calls are in flight when SIGTERM comes; the grace period lets them finish.
    let env = TestEnv::new(
        FakeConfig {
            latency: Duration::from_millis(300),
            ..FakeConfig::default()
        },
        "[realtime]\nconcurrency = 8\n",
    )
    .await;
    let (ids, body) = job_of("term", 120);
    env.write_job("term", &body);
    let mut first = env.spawn_binary_daemon("sk-test", "term1.log");
    env.wait_succeeded("term", 16, Duration::from_secs(30))
        .await;
    signal(&first, libc::SIGTERM);
    assert_eq!(first.wait().expect("reaped").code(), Some(0));
    let report = env.job_json("term");
    assert_eq!(
        report["counts"]["in_flight"], 0,
        "every call in flight finished: {report}"
    );
    assert!(
        report["counts"]["pending"].as_u64() > Some(0),
        "stopped mid-job: {report}"
    );

    let mut second = env.spawn_binary_daemon("sk-test", "term2.log");
    env.wait_done("term", Duration::from_secs(60)).await;
    signal(&second, libc::SIGTERM);
    assert_eq!(second.wait().expect("reaped").code(), Some(0));
    let results = env.results("term");
    assert_eq!(results.len(), 120);
    assert_each_once(&results, &ids);
    let report = env.job_json("term");
    assert_eq!(
        report["calls"]["unknown"], 0,
        "no outcome was lost: {report}"
    );
    assert_eq!(
        env.fake.stats().messages_accepted,
        120,
        "nothing was sent twice"
    );
}

/// Under journald (`$JOURNAL_STREAM` names stderr's device and inode) each log line starts with
/// its syslog priority, so `journalctl -p warning` finds warnings; the journal's own timestamp is
/// the only one. Before, every line was stored at priority 6 and carried a second timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_levels_reach_the_journal_as_priorities() {
    use std::os::unix::fs::MetadataExt;
    let env = TestEnv::new(FakeConfig::default(), "").await;
    let log = env.jobs_dir().join("../journal.log");
    let meta = std::fs::File::create(&log)
        .expect("log")
        .metadata()
        .expect("meta");
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let (_, body) = job_of("journal", 2);
    env.write_job("journal", &body);
    let mut daemon = env.spawn_binary_daemon_with(
        "sk-test",
        "journal.log",
        &[("JOURNAL_STREAM", &stream), ("RUST_LOG", "info")],
    );
    env.wait_done("journal", Duration::from_secs(60)).await;
    // A second file of the same name is rejected, an error.
    env.write_job("journal", b"{}\n");
    let rejected = env.jobs_dir().join("rejected").join("journal.jsonl");
    let started = Instant::now();
    while !rejected.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never rejected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait().expect("reaped").success());
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for line in &lines {
        assert!(
            ["<3>", "<4>", "<6>"].iter().any(|p| line.starts_with(p)),
            "no priority: {line}"
        );
        assert!(
            !line[3..].starts_with("20"),
            "a timestamp of its own: {line}"
        );
    }
    assert!(lines.iter().any(|l| l.starts_with("<6>")), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("<3>")), "{text}");
}
