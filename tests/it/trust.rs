//! Who may spend and read (issue 13, findings 2, 5 and 7): folders other users could change are
//! refused with the fix named, no symlink inside nightshift's folders is followed, every entry of
//! the jobs folder gets an answer, and a reload that is refused fails visibly.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use nightshift::fake_api::FakeConfig;

const KEY: &str = "sk-ant-test-trust-0000";

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Waits for a child to exit; its exit code and what it wrote to `log`.
fn exit_of(mut child: Child, log: &Path) -> (Option<i32>, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!(
                "the daemon did not exit: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.code(),
        std::fs::read_to_string(log).unwrap_or_default(),
    )
}

fn refused_start(env: &TestEnv, case: &str) -> String {
    let log = env.dir.path().join(format!("{case}.log"));
    let (code, text) = exit_of(env.spawn_binary_daemon(KEY, &format!("{case}.log")), &log);
    assert_eq!(code, Some(78), "{case}: a configuration error (78): {text}");
    text
}

/// Waits until `status --json` satisfies `ready`; returns it.
async fn status_until(
    env: &TestEnv,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let status = env.try_status_json();
        if ready(&status) {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn not_taken(status: &serde_json::Value) -> Vec<(String, String)> {
    status["not_taken"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    (
                        n["entry"].as_str().unwrap_or_default().to_owned(),
                        n["reason"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn reload(env: &TestEnv, extra: &[&str]) -> (Option<i32>, String) {
    let out = env.cli(&[&["reload", "--timeout-secs", "20"], extra].concat());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Before: a world-writable jobs_dir or data_dir was accepted silently, and anyone on the host
/// could drop a job on any tenant's bill. Now the daemon refuses to start (exit 78, which the unit
/// does not restart) naming the folder and the fix, for the folder, a parent, a foreign group,
/// and a symlink where results go; once fixed it starts, and a reload that is refused (a bad
/// config, a folder opened up meanwhile) exits non-zero saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_others_can_change_are_refused_and_a_refused_reload_fails() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    let jobs = env.jobs_dir();
    let real_jobs = std::fs::canonicalize(&jobs).expect("real path");

    chmod(&jobs, 0o777);
    let text = refused_start(&env, "world");
    assert!(
        text.contains(&format!(
            "jobs_dir {} is writable by every user",
            real_jobs.display()
        )) && text.contains(&format!("chmod o-w {}", real_jobs.display())),
        "{text}"
    );
    chmod(&jobs, 0o700);

    // A parent anyone may write (no sticky bit): the folder could be swapped for another.
    let open = env.dir.path().join("open");
    std::fs::create_dir_all(open.join("jobs")).expect("dirs");
    chmod(&open, 0o777);
    env.edit_config("jobs_dir = \"jobs\"", "jobs_dir = \"open/jobs\"");
    let text = refused_start(&env, "parent");
    let real_open = std::fs::canonicalize(&open).expect("real path");
    assert!(
        text.contains(&format!(
            "jobs_dir's parent folder {} is writable by every user",
            real_open.display()
        )),
        "{text}"
    );
    // With the sticky bit (as /tmp has) only owners may rename their entries: fine, it starts.
    chmod(&open, 0o1777);
    let sticky = env.spawn_binary_daemon(KEY, "sticky.log");
    let pid = sticky.id();
    status_until(&env, "a daemon under a sticky parent", |s| {
        s["daemon"]["running"] == true && s["daemon"]["pid"] == pid
    })
    .await;
    signal(&sticky, libc::SIGTERM);
    let (code, text) = exit_of(sticky, &env.dir.path().join("sticky.log"));
    assert_eq!(code, Some(0), "{text}");
    env.edit_config("jobs_dir = \"open/jobs\"", "jobs_dir = \"jobs\"");

    if rustix::process::geteuid().is_root() {
        // Group-writable by a group nightshift is not in (only root can hand a folder to it).
        let data = env.data_dir();
        std::fs::create_dir_all(&data).expect("data dir");
        std::os::unix::fs::chown(&data, None, Some(54_321)).expect("chgrp");
        chmod(&data, 0o770);
        let text = refused_start(&env, "group");
        assert!(
            text.contains("is writable by group 54321") && text.contains("chmod g-w"),
            "{text}"
        );
        std::os::unix::fs::chown(&data, None, Some(0)).expect("chgrp");
        chmod(&data, 0o700);
    }

    // Results written through a link would land wherever it points.
    let elsewhere = env.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    let _ = std::fs::remove_dir(env.data_dir().join("results"));
    symlink(&elsewhere, env.data_dir().join("results")).expect("link");
    let text = refused_start(&env, "results-link");
    assert!(
        text.contains("results is not a folder") && text.contains("never follows links"),
        "{text}"
    );
    std::fs::remove_file(env.data_dir().join("results")).expect("unlink");

    // Fixed: it starts and works; a good reload says what took effect.
    let mut daemon = env.spawn_binary_daemon(KEY, "daemon.log");
    let (ids, body) = job_of("trusted", 3);
    env.write_job("trusted", &body);
    env.wait_done("trusted", Duration::from_secs(60)).await;
    assert_each_once(&env.results("trusted"), &ids);
    let (code, text) = reload(&env, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("configuration reloaded"), "{text}");
    // A setting only a restart changes is named, never ignored without a word.
    std::fs::write(
        &env.config_path,
        std::fs::read_to_string(&env.config_path).expect("config") + "[metrics]\nport = 0\n",
    )
    .expect("config");
    let (code, text) = reload(&env, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("[metrics] changed and take effect at the next restart"),
        "{text}"
    );

    // A config that does not load: the reload fails (78) and says why; status shows it.
    env.edit_config("[daemon]\n", "[daemon]\nno_such_setting = 1\n");
    let pid = daemon.id().to_string();
    let (code, text) = reload(&env, &["--pid", &pid]);
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("refused") && text.contains("no_such_setting"),
        "{text}"
    );
    // The daemon was told (the CLI, which cannot read the config either, does not wait for it):
    // its log says so before the file is put right.
    let log = env.dir.path().join("daemon.log");
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("reload refused")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the daemon heard no reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (`status` needs a config that loads too.) Until a reload takes, status shows the refusal.
    env.edit_config("[daemon]\nno_such_setting = 1\n", "[daemon]\n");
    status_until(&env, "the refused config in status", |s| {
        s["daemon"]["health"]["troubles"]["config"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no_such_setting"))
    })
    .await;

    // The jobs folder opened to everyone while the daemon runs: nothing more is taken, status
    // says why, and a reload is refused naming the fix.
    chmod(&jobs, 0o777);
    let (code, text) = reload(&env, &[]);
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains(&format!("chmod o-w {}", real_jobs.display())),
        "{text}"
    );
    let (_, body) = job_of("spender", 2);
    env.write_job("spender", &body);
    let status = status_until(&env, "the open jobs folder in status", |s| {
        not_taken(s).iter().any(|(_, r)| r.contains("chmod o-w"))
    })
    .await;
    assert!(
        status["jobs"]
            .as_array()
            .is_some_and(|j| j.iter().all(|j| j["name"] != "spender")),
        "nothing is taken from a folder anyone can write: {status}"
    );
    chmod(&jobs, 0o700);
    env.wait_done("spender", Duration::from_secs(60)).await;
    let (code, text) = reload(&env, &[]);
    assert_eq!(code, Some(0), "{text}");
    status_until(&env, "the trouble passes", |s| {
        s["daemon"]["health"]["troubles"].get("config").is_none() && not_taken(s).is_empty()
    })
    .await;

    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait().expect("reaped").success());
    let (code, text) = reload(&env, &[]);
    assert_eq!(code, Some(69), "no daemon: {text}");
}

/// Runs the daemon binary as the user `uid` (when the tests run as root, so that a file can be
/// unreadable to it), else as this user.
fn spawn_daemon_as(env: &TestEnv, uid: Option<u32>, log: &Path) -> Child {
    let stderr = std::fs::File::create(log).expect("log file");
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(&env.config_path)
        .arg("run")
        .env("ANTHROPIC_API_KEY", KEY)
        .env("RUST_LOG", "nightshift=info")
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    command.spawn().expect("nightshift run starts")
}

/// Changes the owner of everything under `dir` (as root).
fn chown_tree(dir: &Path, uid: u32) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid)).expect("chown");
    if std::fs::symlink_metadata(dir).expect("stat").is_dir() {
        for entry in std::fs::read_dir(dir).expect("list") {
            chown_tree(&entry.expect("entry").path(), uid);
        }
    }
}

/// Before: a folder named `x.jsonl`, a symlink, a name that is not UTF-8 were ignored forever
/// without a word; a file the daemon could not read became a job `done` with 0 items, its name
/// used up; swapping `ingested/` for a symlink made the daemon move job files wherever it pointed.
/// Now each entry not taken is in `status` with why and logged once; the unreadable file makes no
/// job and is taken once readable; a linked `ingested/` stops intake until it is a folder again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_of_the_jobs_folder_gets_an_answer_and_no_link_is_followed() {
    let env = TestEnv::new(FakeConfig::default(), "").await;
    let jobs = env.jobs_dir();
    let other_team = env.dir.path().join("other-team");
    std::fs::create_dir_all(&other_team).expect("dir");
    let (_, confidential) = job_of("secret", 2);
    std::fs::write(other_team.join("confidential.jsonl"), &confidential).expect("write");

    std::fs::create_dir_all(jobs.join("folder.jsonl")).expect("dir");
    symlink(
        other_team.join("confidential.jsonl"),
        jobs.join("link.jsonl"),
    )
    .expect("link");
    std::fs::write(
        jobs.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"caf\xe9.jsonl")),
        b"",
    )
    .expect("write");
    std::fs::write(jobs.join("notes.txt"), b"to do").expect("write");
    let (locked_ids, locked_body) = job_of("locked", 2);
    std::fs::write(jobs.join("locked.jsonl"), &locked_body).expect("write");
    let (good_ids, good_body) = job_of("good", 2);
    env.write_job("good", &good_body);

    // Unreadable to the daemon: as root, run it as another user; else take the read bit away.
    let root = rustix::process::geteuid().is_root();
    let daemon_uid = root.then_some(65_534);
    if let Some(uid) = daemon_uid {
        chown_tree(env.dir.path(), uid);
        std::os::unix::fs::chown(jobs.join("locked.jsonl"), Some(0), Some(0)).expect("chown");
        chmod(&jobs.join("locked.jsonl"), 0o600);
    } else {
        chmod(&jobs.join("locked.jsonl"), 0o000);
    }
    let log = env.dir.path().join("daemon.log");
    let mut daemon = spawn_daemon_as(&env, daemon_uid, &log);
    env.wait_done("good", Duration::from_secs(60)).await;
    assert_each_once(&env.results("good"), &good_ids);

    let status = status_until(&env, "five entries not taken", |s| not_taken(s).len() == 5).await;
    let entries = not_taken(&status);
    let reason = |entry: &str| {
        entries
            .iter()
            .find(|(e, _)| e == entry)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{entry} not listed: {entries:?}"))
    };
    assert!(reason("folder.jsonl").contains("a folder"));
    assert!(reason("link.jsonl").contains("symlink"));
    assert!(reason("caf\u{fffd}.jsonl").contains("not UTF-8"));
    assert!(reason("notes.txt").contains("only NAME.jsonl"));
    assert!(
        reason("locked.jsonl").contains("cannot be read"),
        "{entries:?}"
    );
    let text = String::from_utf8_lossy(&env.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains("not taken from the jobs folder") && text.contains("locked.jsonl"),
        "{text}"
    );
    for name in ["locked", "link", "folder"] {
        assert_eq!(
            env.cli(&["job", name]).status.code(),
            Some(3),
            "no job {name}"
        );
    }
    assert!(
        !jobs.join("rejected").exists(),
        "nothing was rejected: each can still be fixed"
    );

    // Readable now: taken in, whole.
    chmod(&jobs.join("locked.jsonl"), 0o644);
    env.wait_done("locked", Duration::from_secs(60)).await;
    assert_each_once(&env.results("locked"), &locked_ids);

    // `ingested/` swapped for a link to another folder: nothing is moved there.
    let trap = env.dir.path().join("trap");
    std::fs::create_dir_all(&trap).expect("dir");
    std::fs::rename(jobs.join("ingested"), env.dir.path().join("ingested.old")).expect("rename");
    symlink(&trap, jobs.join("ingested")).expect("link");
    if let Some(uid) = daemon_uid {
        chown_tree(&trap, uid);
        std::os::unix::fs::lchown(jobs.join("ingested"), Some(uid), Some(uid)).expect("chown");
    }
    let (late_ids, late_body) = job_of("late", 2);
    env.write_job("late", &late_body);
    if let Some(uid) = daemon_uid {
        // A file of another user is taken once it can read it, whenever that is.
        std::os::unix::fs::chown(jobs.join("late.jsonl"), Some(uid), Some(uid)).expect("chown");
    }
    status_until(&env, "the linked ingested/ in status", |s| {
        not_taken(s)
            .iter()
            .any(|(_, r)| r.contains("ingested is not a folder"))
    })
    .await;
    assert_eq!(std::fs::read_dir(&trap).expect("list").count(), 0);
    assert!(jobs.join("late.jsonl").exists(), "left where it was");
    std::fs::remove_file(jobs.join("ingested")).expect("unlink");
    env.wait_done("late", Duration::from_secs(60)).await;
    assert_each_once(&env.results("late"), &late_ids);
    assert_eq!(std::fs::read_dir(&trap).expect("list").count(), 0);
    assert!(
        other_team.join("confidential.jsonl").exists(),
        "the linked file stays where it is"
    );

    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait().expect("reaped").success());
    // Each entry was logged once, however many scans saw it (a scan every 50 ms).
    let text = std::fs::read_to_string(&log).expect("log");
    let said = text
        .lines()
        .filter(|l| l.contains("is not taken") && l.contains("link.jsonl"))
        .count();
    assert_eq!(said, 1, "{text}");

    // `ingested/` now holds a file of another user (locked.jsonl, root's when the daemon runs as
    // another user), which the start's sweep cannot chmod: it starts all the same.
    let log = env.dir.path().join("again.log");
    let mut again = spawn_daemon_as(&env, daemon_uid, &log);
    let pid = again.id();
    status_until(&env, "the daemon runs again", |s| {
        s["daemon"]["running"] == true && s["daemon"]["pid"] == pid
    })
    .await;
    assert!(
        again.try_wait().expect("wait").is_none(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    signal(&again, libc::SIGTERM);
    assert!(again.wait().expect("reaped").success());
}
