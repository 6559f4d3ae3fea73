//! Ordinary failures of a real host, each with no restart: the API unreachable for longer than
//! every attempt would last; the results file deleted or truncated mid-job; another process
//! holding the database locked mid-job; a second daemon after the lock file is deleted. Each ends
//! with one valid results line per item, each custom_id once.

use std::time::{Duration, Instant};

use crate::common::*;
use nightshift::fake_api::FakeConfig;

/// A job of `n` real-time items answered slowly enough to be mid-job for a while.
async fn slow_job(name: &str, n: usize) -> (TestEnv, Vec<String>) {
    slow_job_on(TestStore::from_env(), name, n).await
}

/// [`slow_job`] on the store `store`.
async fn slow_job_on(store: TestStore, name: &str, n: usize) -> (TestEnv, Vec<String>) {
    let env = TestEnv::on(
        store,
        FakeConfig {
            latency: Duration::from_millis(40),
            ..FakeConfig::default()
        },
        "[realtime]\nconcurrency = 2\n",
    )
    .await;
    let (ids, body) = job_of(name, n);
    env.write_job(name, &body);
    (env, ids)
}

/// [`slow_job`] under an in-process daemon, once 15 of its results lines are written.
async fn mid_job(name: &str) -> (TestEnv, Vec<String>, InProcessDaemon) {
    mid_job_on(TestStore::from_env(), name).await
}

/// [`mid_job`] on the store `store`.
async fn mid_job_on(store: TestStore, name: &str) -> (TestEnv, Vec<String>, InProcessDaemon) {
    let (env, ids) = slow_job_on(store, name, 80).await;
    let daemon = env.start_daemon();
    wait_lines(&env, name, 15).await;
    (env, ids, daemon)
}

/// Another process's exclusive lock on the database, held until released (or for two minutes).
struct DbLock {
    release: std::sync::mpsc::Sender<()>,
    holder: std::thread::JoinHandle<()>,
}

impl DbLock {
    /// Returns once the lock is held.
    async fn take(db: std::path::PathBuf) -> DbLock {
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db).expect("open");
            conn.busy_timeout(Duration::from_secs(20))
                .expect("busy timeout");
            conn.execute_batch("BEGIN EXCLUSIVE")
                .expect("exclusive lock");
            locked_tx.send(()).expect("locked");
            let _ = release_rx.recv_timeout(Duration::from_secs(120));
            conn.execute_batch("COMMIT").expect("release");
        });
        tokio::task::spawn_blocking(move || locked_rx.recv().expect("lock taken"))
            .await
            .expect("joined");
        DbLock { release, holder }
    }

    async fn release(self) {
        let _ = self.release.send(());
        let holder = self.holder;
        tokio::task::spawn_blocking(move || holder.join().expect("lock holder"))
            .await
            .expect("joined");
    }
}

/// Waits until the job's results file holds at least `lines` lines.
async fn wait_lines(env: &TestEnv, job: &str, lines: usize) {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(env.results_file(job)).unwrap_or_default();
        if text.lines().count() >= lines {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{job}: fewer than {lines} results lines"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the job, then checks it came out whole: every item succeeded, one results line each
/// (every line JSON), each custom_id once.
async fn assert_whole(env: &TestEnv, job: &str, ids: &[String]) {
    let done = env.wait_done(job, Duration::from_secs(90)).await;
    assert_eq!(
        (done.counts.succeeded, done.counts.errored),
        (ids.len() as u64, 0),
        "{job}: every item succeeded"
    );
    let results = env.results(job);
    assert_eq!(
        results.len(),
        ids.len(),
        "{job}: one line per item, none twice"
    );
    assert_each_once(&results, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_deleted_mid_job_is_written_again_in_full() {
    let (env, ids, daemon) = mid_job("deleted").await;
    std::fs::remove_file(env.results_file("deleted")).expect("delete the results file");
    assert_whole(&env, "deleted", &ids).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_truncated_mid_line_is_written_again_in_full() {
    let (env, ids, daemon) = mid_job("truncated").await;
    let path = env.results_file("truncated");
    let len = std::fs::metadata(&path).expect("results file").len();
    // Cut in the middle of a line.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.set_len(len / 2 + 3).expect("truncate");
    drop(file);
    assert_whole(&env, "truncated", &ids).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_mid_job_loses_and_repeats_nothing() {
    // SQLite's file locked by another process (a PostgreSQL store has no file to lock).
    let (env, ids, daemon) = mid_job_on(TestStore::Sqlite, "locked").await;
    // Another process takes the database for 16 seconds: the daemon's writes wait, time out
    // and are tried again; answers received meanwhile are kept, appended lines not yet recorded
    // are cut back.
    let lock = DbLock::take(env.config().db_path()).await;
    let locked = Instant::now();
    // Status says so, though the daemon cannot write to its database.
    trouble_until(&env, "store", "what", "busy").await;
    let text = String::from_utf8_lossy(&env.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("store: the database is busy"), "{text}");
    tokio::time::sleep(Duration::from_secs(16).saturating_sub(locked.elapsed())).await;
    lock.release().await;
    assert_whole(&env, "locked", &ids).await;
    health_until(&env, Duration::from_secs(15), |h| {
        h["troubles"].as_object().is_some_and(|t| t.is_empty())
    })
    .await;
    daemon.stop().await;
}

/// Waits (15 s at most) until `status --json` shows a trouble of `part` whose `field` contains
/// `needle`, with the time it began.
async fn trouble_until(env: &TestEnv, part: &str, field: &str, needle: &str) {
    let health = health_until(env, Duration::from_secs(15), |h| {
        h["troubles"][part][field]
            .as_str()
            .is_some_and(|v| v.contains(needle))
    })
    .await;
    assert!(
        health["troubles"][part]["since"].as_i64().is_some(),
        "{health}"
    );
}

/// The daemon's health in `status --json` once `ok` holds of it (it is written every 2 s).
async fn health_until(
    env: &TestEnv,
    within: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let health = env.try_status_json()["daemon"]["health"].clone();
        if ok(&health) {
            return health;
        }
        assert!(
            started.elapsed() < within,
            "health not as expected after {within:?}: {health}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_say_when_the_disk_is_low() {
    // Any real disk is under 100 TB free.
    let env = TestEnv::new(FakeConfig::default(), "[metrics]\nport = 0\n").await;
    env.edit_config("[daemon]\n", "[daemon]\ndisk_low_mb = 100000000\n");
    let daemon = env.start_daemon();
    let health = health_until(&env, Duration::from_secs(10), |h| h["disk_low"] == true).await;
    assert!(
        health["disk_free_bytes"].as_u64().is_some_and(|b| b > 0),
        "{health}"
    );
    let text = String::from_utf8_lossy(&env.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("disk low:"), "{text}");
    let url = env.status_json()["metrics_url"]
        .as_str()
        .expect("metrics url")
        .to_owned();
    let metrics = reqwest::get(&url)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    assert!(metrics.contains("nightshift_disk_low 1"), "{metrics}");
    assert!(
        metrics.contains("nightshift_health_trouble{part=\"store\"} 0"),
        "{metrics}"
    );
    daemon.stop().await;
    let status = env.status_json();
    assert!(
        status["daemon"]["health"].is_null(),
        "a stopped daemon tells no health: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_database_is_locked_exits_in_time_and_a_restart_completes_the_job() {
    // shutdown_grace_secs = 5 in the test config: systemd would wait 60 s before a SIGKILL.
    // SQLite's file locked by another process (a PostgreSQL store has no file to lock).
    let (env, ids) = slow_job_on(TestStore::Sqlite, "stuck", 80).await;
    let mut daemon = env.spawn_binary_daemon("sk-test", "stuck1.log");
    wait_lines(&env, "stuck", 15).await;
    let lock = DbLock::take(env.config().db_path()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(&daemon, libc::SIGTERM);
    let asked = Instant::now();
    let exited = loop {
        if daemon.try_wait().expect("wait").is_some() {
            break asked.elapsed();
        }
        if asked.elapsed() > Duration::from_secs(30) {
            daemon.kill().expect("kill");
            break asked.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The grace period (5 s) plus at most 5 s: well inside systemd's stop timeout.
    assert!(
        exited <= Duration::from_secs(10) + Duration::from_millis(500),
        "SIGTERM under a lock took {exited:?}"
    );
    lock.release().await;
    // What could not be recorded is reconciled at the next start: nothing lost, nothing twice.
    let mut again = env.spawn_binary_daemon("sk-test", "stuck2.log");
    assert_whole(&env, "stuck", &ids).await;
    signal(&again, libc::SIGTERM);
    again.wait().expect("reaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_whether_a_daemon_runs_and_one_killed_is_told_apart_from_one_stopped() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    let daemon_section = |env: &TestEnv| env.try_status_json()["daemon"].clone();
    // Until status shows `running` as wanted (and, when running, the daemon of that pid).
    let wait_for = |env: &TestEnv, want: bool, pid: Option<u32>| {
        let started = Instant::now();
        loop {
            let d = daemon_section(env);
            if d["running"] == want && pid.is_none_or(|p| d["pid"] == p) {
                return d;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "daemon section: {d}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut first = env.spawn_binary_daemon("sk-test", "status1.log");
    let running = wait_for(&env, true, Some(first.id()));
    assert!(running["problem"].is_null(), "{running}");
    let text = String::from_utf8_lossy(&env.cli(&["status"]).stdout).into_owned();
    assert!(text.starts_with("daemon: running (pid"), "{text}");

    // Killed: the pid it gave is gone, and status says so.
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let gone = daemon_section(&env);
    assert_eq!(gone["running"], false, "{gone}");
    assert!(
        gone["problem"]
            .as_str()
            .is_some_and(|p| p.contains("without saying so")),
        "{gone}"
    );

    // Stopped in order: not running, and nothing to worry about.
    let second = env.spawn_binary_daemon("sk-test", "status2.log");
    wait_for(&env, true, Some(second.id()));
    signal(&second, libc::SIGTERM);
    let mut second = second;
    second.wait().expect("reaped");
    let stopped = daemon_section(&env);
    assert_eq!(stopped["running"], false, "{stopped}");
    assert!(stopped["problem"].is_null(), "{stopped}");
    let text = String::from_utf8_lossy(&env.cli(&["status"]).stdout).into_owned();
    assert!(text.starts_with("daemon: not running"), "{text}");
}

/// A small tmpfs mounted on a folder for the length of a test (unmounted on drop, also after a
/// failed assertion). None where the machine does not allow mounting (not root).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, bytes: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).expect("mount point");
        let mounted = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| SmallDisk(at.to_owned()))
    }

    /// Fills what is left of the disk; returns the filler, which frees the space when deleted.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 64 << 10];
        while file.write_all(&chunk).is_ok() {}
        // The last bytes a partial chunk could not take.
        while file.write_all(&[0u8; 512]).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_mid_job_and_frees_loses_tears_and_repeats_nothing() {
    let (env, ids) = slow_job("full", 80).await;
    // The data directory (database, its WAL, results) on a 24 MB disk of its own.
    let Some(disk) = SmallDisk::mount(&env.data_dir(), 24 << 20) else {
        eprintln!(
            "a_disk_that_fills_mid_job…: cannot mount a tmpfs here (not root); this test runs where it can (CI runs as root)"
        );
        return;
    };
    let daemon = env.start_daemon();
    wait_lines(&env, "full", 15).await;
    let filler = disk.fill();
    let filled = Instant::now();
    // Status tells it while it lasts: the disk low, and what cannot be written.
    let health = health_until(&env, Duration::from_secs(15), |h| {
        h["disk_low"] == true && h["troubles"].as_object().is_some_and(|t| !t.is_empty())
    })
    .await;
    assert!(
        health["disk_free_bytes"]
            .as_u64()
            .is_some_and(|b| b < 1 << 20),
        "{health}"
    );
    // Full for two seconds; then a few pages free, which a write of several lines overruns (a
    // torn line, were it kept), for 14 more: answers keep coming and cannot be recorded for longer
    // than any fixed number of tries would last. Then the space is back.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(filled.elapsed())).await;
    let len = std::fs::metadata(&filler).expect("filler").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .and_then(|f| f.set_len(len.saturating_sub(3 * 4096)))
        .expect("free a few pages");
    tokio::time::sleep(Duration::from_secs(14)).await;
    std::fs::remove_file(&filler).expect("free the disk");
    assert_whole(&env, "full", &ids).await;
    assert_eq!(
        env.fake.stats().messages_accepted,
        80,
        "no answered call was sent again"
    );
    daemon.stop().await;
    drop(disk);
}

/// How many attempts of the job's items ended with each outcome.
fn attempts_by_outcome(env: &TestEnv, outcome: &str) -> i64 {
    env.read_store(|conn| {
        conn.query_row(
            "SELECT COUNT(*) FROM attempts WHERE outcome = ?1",
            [outcome],
            |r| r.get(0),
        )
    })
    .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_every_attempt_uses_none_and_the_backlog_completes() {
    // Three attempts, 50-200 ms apart, would all be spent well within a second.
    let env = TestEnv::new(
        FakeConfig::default(),
        "[realtime]\nconcurrency = 4\nmax_attempts = 3\nbackoff_min_ms = 50\nbackoff_max_ms = 200\n",
    )
    .await;
    let (ids, body) = job_of("outage", 40);
    env.fake.set_reachable(false);
    env.write_job("outage", &body);
    let daemon = env.start_daemon();

    // Down for six seconds: the first item alone meets the outage three times (at the start, then
    // as the probes after 1 s and 3 s); counted as attempts, they would have ended it errored.
    // They are none, and the lane probes instead of spinning.
    let down = Instant::now();
    let mut paused_seen = false;
    while down.elapsed() < Duration::from_secs(6) {
        let status = env.try_status_json();
        if let Some(paused) = status["paused"].as_array() {
            paused_seen |= paused.iter().any(|p| {
                p["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("cannot be reached"))
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let job = env.job_json("outage");
    assert_eq!(
        job["counts"]["errored"], 0,
        "nothing errored for the outage: {job}"
    );
    assert_eq!(job["counts"]["succeeded"], 0, "the API was down");
    let not_sent = attempts_by_outcome(&env, "not_sent");
    assert!(not_sent >= 3, "the outage was met: {not_sent}");
    // The circuit opens after 3 in a row; then one probe at a time (1 s, 2 s, … apart): a handful,
    // not one per item per backoff.
    assert!(not_sent <= 12, "{not_sent} calls into the outage");
    assert!(paused_seen, "status says the API cannot be reached");
    let health = env.status_json()["daemon"]["health"].clone();
    let api = &health["troubles"]["api"];
    assert_eq!(api["what"], "the API cannot be reached", "{health}");
    assert!(
        api["next_try_at"].as_i64().is_some(),
        "the next probe: {health}"
    );

    env.fake.set_reachable(true);
    // The backlog is done once the API is back.
    assert_whole(&env, "outage", &ids).await;
    let status = env.status_json();
    let still_paused = status["paused"].as_array().is_some_and(|p| !p.is_empty());
    assert!(!still_paused, "the pause ends with the outage: {status}");
    health_until(&env, Duration::from_secs(10), |h| {
        h["troubles"].get("api").is_none()
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lock_file_does_not_let_a_second_daemon_in() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    let daemon = env.start_daemon();
    let lock_file = env.data_dir().join("nightshift.lock");
    let started = Instant::now();
    while !lock_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the daemon did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(&lock_file).expect("delete the lock file");

    let mut second = env.spawn_binary_daemon("sk-test", "second.log");
    let waited = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if waited.elapsed() > Duration::from_secs(20) {
            second.kill().expect("kill");
            panic!("a second daemon runs on the same data dir");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "the second daemon is refused");
    let log = std::fs::read_to_string(env.dir.path().join("second.log")).expect("log");
    assert!(
        log.contains("another nightshift daemon is running"),
        "{log}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_that_meet_a_full_disk_mid_write_are_cut_back_and_written_once() {
    // Everywhere (no root needed): the results writer's appends fail as on a disk that fills
    // mid-write, half a round's bytes in the file each time.
    let (env, ids, daemon) = mid_job("fullseam").await;
    let results_dir = env.config().results_dir();
    nightshift::lanes::results::seam::set_disk_full(&results_dir, true);
    trouble_until(&env, "results", "error", "No space left").await;
    // Answers keep coming meanwhile; none is lost, none written twice, no fragment stays.
    tokio::time::sleep(Duration::from_secs(2)).await;
    nightshift::lanes::results::seam::set_disk_full(&results_dir, false);
    assert_whole(&env, "fullseam", &ids).await;
    health_until(&env, Duration::from_secs(10), |h| {
        h["troubles"].get("results").is_none()
    })
    .await;
    daemon.stop().await;
}
