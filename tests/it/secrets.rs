//! The API key appears nowhere: not in the data directory (database, WAL, results), not in the
//! logs (at debug level), not in any CLI output, also when the API rejects it.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use nightshift::fake_api::FakeConfig;

const KEY: &str = "sk-ant-api03-SECRETkeyDoNotLeak0123456789";

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(path.display().to_string());
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_leaks_nowhere() {
    // The fake accepts only this key, so the calls really carried it.
    let env = TestEnv::new(
        FakeConfig {
            api_key: Some(KEY.to_owned()),
            ..FakeConfig::default()
        },
        "",
    )
    .await;
    let (ids, body) = job_of("secret", 20);
    env.write_job("secret", &body);
    let mut daemon = env.spawn_binary_daemon(KEY, "daemon.log");
    env.wait_done("secret", Duration::from_secs(60)).await;
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait().expect("reaped").success());
    assert_each_once(&env.results("secret"), &ids);
    assert_eq!(env.fake.stats().messages_accepted, 20);

    // A second job run with a wrong key: the 401 pauses the lane (it would fail every item
    // alike), the items wait; the key is still nowhere.
    let wrong = "sk-ant-api03-WRONGkeyAlsoSecret987654321";
    let (_, body) = job_of("rejected", 3);
    env.write_job("rejected", &body);
    let mut daemon = env.spawn_binary_daemon(wrong, "daemon2.log");
    let started = std::time::Instant::now();
    loop {
        let results_dir = env.config().results_dir();
        if let Ok(Some(job)) = env.read_store(|conn| {
            nightshift::cli::views::job::job(
                conn,
                &results_dir,
                "rejected",
                nightshift::store::now_ms(),
            )
            .map_err(|e| nightshift::store::StoreError::Invalid(e.to_string()))
        }) && job.calls.blocked >= 1
        {
            assert_eq!(
                job.status.counts.errored, 0,
                "a refused key does not fail the items"
            );
            assert_eq!(job.status.counts.pending, 3);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no blocked call recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait().expect("reaped").success());
    let log2 = std::fs::read_to_string(env.dir.path().join("daemon2.log")).expect("log");
    assert!(
        log2.contains("refuses these routes' real-time calls; both lanes pause them"),
        "the pause is logged"
    );

    let mut outputs = Vec::new();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["job", "secret"],
        vec!["job", "rejected", "--json"],
    ] {
        let out = env.cli(&args);
        assert!(out.status.success());
        outputs.push(out.stdout);
        outputs.push(out.stderr);
    }
    for key in [KEY, wrong] {
        let hits = files_containing(env.dir.path(), key.as_bytes());
        // The config file holds no key either: it came from the environment.
        assert!(hits.is_empty(), "the key was found in {hits:?}");
        for output in &outputs {
            assert!(
                !String::from_utf8_lossy(output).contains(key),
                "the key is in CLI output"
            );
        }
    }
    let log = std::fs::read_to_string(env.dir.path().join("daemon.log")).expect("log");
    assert!(
        log.contains("nightshift is running"),
        "the log is really there"
    );
    let report = env.job_json("rejected");
    // Only the calls already under way when the first 401 came; then the lane paused.
    assert_eq!(
        report["calls"]["blocked"], report["calls"]["calls"],
        "{report}"
    );
    assert!(
        report["calls"]["calls"].as_u64().unwrap_or(0) <= 3,
        "{report}"
    );
}

/// With `[routes]`: the route's key comes from its `key_env` (the fake takes only that key, and
/// `ANTHROPIC_API_KEY` holds another), and neither the key nor the route's header values appear
/// in the data directory, the log or CLI output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_key_and_headers_leak_nowhere() {
    const HEADER_VALUE: &str = "gw-SECRETheaderValue-5550123";
    let env = TestEnv::new(
        FakeConfig {
            api_key: Some(KEY.to_owned()),
            ..FakeConfig::default()
        },
        &format!(
            "[routes.main]\nkey_env = \"NIGHTSHIFT_TEST_KEY_MAIN\"\n\
             headers = {{ \"x-gateway-token\" = \"{HEADER_VALUE}\" }}\n"
        ),
    )
    .await;
    let (ids, body) = job_of("routed", 5);
    env.write_job("routed", &body);
    let other = "sk-ant-api03-NOTtheRoutesKey0123456789";
    let mut daemon =
        env.spawn_binary_daemon_with(other, "daemon.log", &[("NIGHTSHIFT_TEST_KEY_MAIN", KEY)]);
    env.wait_done("routed", Duration::from_secs(60)).await;
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait().expect("reaped").success());
    assert_each_once(&env.results("routed"), &ids);
    assert_eq!(
        env.fake.stats().messages_accepted,
        5,
        "sent with the route's key"
    );

    let log = std::fs::read_to_string(env.dir.path().join("daemon.log")).expect("log");
    assert!(log.contains("nightshift is running"), "{log}");
    assert!(log.contains("route=main"), "the log names the route: {log}");
    let mut outputs = vec![log];
    for args in [vec!["status", "--json"], vec!["job", "routed", "--json"]] {
        let out = env.cli(&args);
        assert!(out.status.success());
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    for secret in [KEY, other, HEADER_VALUE] {
        let hits = files_containing(&env.data_dir(), secret.as_bytes());
        assert!(hits.is_empty(), "{secret} was found in {hits:?}");
        for output in &outputs {
            assert!(
                !output.contains(secret),
                "{secret} is in the log or CLI output"
            );
        }
    }
}

/// Every file and folder in `path` (symlinks aside) whose mode lets the group or others in.
fn not_private(path: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut open = Vec::new();
    let meta = std::fs::symlink_metadata(path).expect("metadata");
    if meta.file_type().is_symlink() {
        return open;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        open.push(format!(
            "{} {:o}",
            path.display(),
            meta.permissions().mode() & 0o7777
        ));
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir") {
            open.extend(not_private(&entry.expect("entry").path()));
        }
    }
    open
}

/// Under umask 022, with a job file of mode 0644 and a results file an earlier version left
/// readable to all: the database and its WAL, the results, the copy of the job file and a backup
/// are all their owner's alone (0600, folders 0700).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_nightshift_keeps_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    #[allow(unsafe_code)]
    // SAFETY: sets this test process's file-creation mask (the daemon inherits it); other tests
    // only create files in their own temp dirs.
    unsafe {
        libc::umask(0o022);
    }
    // The modes of SQLite's file and folder (a PostgreSQL store keeps none here).
    let env = TestEnv::on(TestStore::Sqlite, FakeConfig::default(), "").await;
    let old_results = env.config().results_dir();
    std::fs::create_dir_all(&old_results).expect("results dir");
    std::fs::write(old_results.join("earlier.jsonl"), b"").expect("old results");
    std::fs::set_permissions(&old_results, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (ids, body) = job_of("modes", 3);
    env.write_job("modes", &body);
    let job_file = env.jobs_dir().join("modes.jsonl");
    std::fs::set_permissions(&job_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let mut daemon = env.spawn_binary_daemon(KEY, "daemon.log");
    env.wait_done("modes", Duration::from_secs(60)).await;
    assert!(
        env.data_dir().join("nightshift.db-wal").exists(),
        "checked while the WAL exists"
    );
    assert_eq!(not_private(&env.data_dir()), Vec::<String>::new());
    let ingested = env.jobs_dir().join("ingested");
    assert!(ingested.join("modes.jsonl").exists());
    assert_eq!(not_private(&ingested), Vec::<String>::new());
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait().expect("reaped").success());
    assert_each_once(&env.results("modes"), &ids);

    let backup = env.jobs_dir().join("backup.db");
    let out = env.cli(&["backup", backup.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(not_private(&backup), Vec::<String>::new());
}

/// Every kept file and folder under `path` that is not as `[daemon] readers_group` makes it:
/// files 0640 and folders 2750, in group `gid`.
fn not_shared(path: &Path, gid: u32) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).expect("metadata");
    let want = if meta.is_dir() { 0o2750 } else { 0o640 };
    let mut wrong = Vec::new();
    if meta.mode() & 0o7777 != want || meta.gid() != gid {
        wrong.push(format!(
            "{} {:o} gid {}",
            path.display(),
            meta.mode() & 0o7777,
            meta.gid()
        ));
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir") {
            wrong.extend(not_shared(&entry.expect("entry").path(), gid));
        }
    }
    wrong
}

/// `[daemon] readers_group`: what the daemon keeps is readable by that group (files 0640, folders
/// 2750 in it), so its members can use the CLI; other users still cannot. (As root the test reads
/// as another user, in the group and not; as another user it checks the modes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readers_group_may_read_what_nightshift_keeps() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let root = rustix::process::geteuid().is_root();
    let gid = if root {
        54_321
    } else {
        rustix::process::getegid().as_raw()
    };
    // The modes of SQLite's file and folder (a PostgreSQL store keeps none here).
    let env = TestEnv::on(TestStore::Sqlite, FakeConfig::default(), "").await;
    env.edit_config(
        "[daemon]\n",
        &format!("[daemon]\nreaders_group = \"{gid}\"\n"),
    );
    // The reader must reach the folders and read the config.
    for path in [env.dir.path(), env.config_path.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let (ids, body) = job_of("shared", 3);
    env.write_job("shared", &body);
    let mut daemon = env.spawn_binary_daemon(KEY, "daemon.log");
    env.wait_done("shared", Duration::from_secs(60)).await;
    assert_eq!(not_shared(&env.data_dir(), gid), Vec::<String>::new());
    assert_eq!(
        not_shared(&env.jobs_dir().join("ingested"), gid),
        Vec::<String>::new()
    );
    let read_as = |reader_gid: u32| {
        let mut command = std::process::Command::new(BIN);
        command
            .arg("--config")
            .arg(&env.config_path)
            .args(["job", "shared", "--json"])
            .uid(65_534)
            .gid(reader_gid);
        let out = command.output().expect("nightshift runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    if root {
        let (read, error) = read_as(gid);
        assert!(read, "{error}");
        assert!(!read_as(65_534).0, "a user outside the group reads nothing");
    }
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait().expect("reaped").success());
    if root {
        // With the daemon stopped (its WAL folded in and gone), members still read.
        let (read, error) = read_as(gid);
        assert!(read, "{error}");
    }
    assert_each_once(&env.results("shared"), &ids);
}
