//! The CLI's promises: clear errors at start naming the setting, plain words when there is no
//! database yet, meaningful exit codes, and `submit`'s atomic rename-in.

use std::process::Command;

use crate::common::BIN;

fn nightshift(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("NIGHTSHIFT_CONFIG")
        .output()
        .expect("runs")
}

#[test]
fn a_missing_key_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("c.toml"), "data_dir = \"d\"\n").expect("config");
    let out = nightshift(dir.path(), &["--config", "c.toml", "run"]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ANTHROPIC_API_KEY"), "{err}");
}

#[test]
fn a_routes_missing_key_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("c.toml"),
        "data_dir = \"d\"\n[routes.main]\nkey_env = \"ANTHROPIC_API_KEY\"\n\
         [routes.overflow]\nkey_env = \"NIGHTSHIFT_KEY_OVERFLOW\"\ntenants = [\"support-team\"]\n",
    )
    .expect("config");
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--config", "c.toml", "run"])
        .env("ANTHROPIC_API_KEY", "sk-ant-api03-mainKeyOfTheTest-0123")
        .env_remove("NIGHTSHIFT_KEY_OVERFLOW")
        .env_remove("NIGHTSHIFT_CONFIG")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("route `overflow`: set NIGHTSHIFT_KEY_OVERFLOW (its key_env)"),
        "{err}"
    );
    assert!(err.contains("routes.overflow.key_env"), "{err}");
    assert!(!err.contains("mainKeyOfTheTest"), "{err}");
}

#[test]
fn unknown_config_keys_and_bad_values_are_errors_naming_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("c.toml"),
        "data_dir = \"d\"\n[limits.\"claude-haiku-5-5\"]\nrpm = 50\nrmp = 3\n",
    )
    .expect("config");
    let out = nightshift(dir.path(), &["--config", "c.toml", "status"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rmp"));

    std::fs::write(
        dir.path().join("c.toml"),
        "[api]\nanthropic_version = \"2099-01-01\"\n",
    )
    .expect("config");
    let out = nightshift(dir.path(), &["--config", "c.toml", "status"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("api.anthropic_version"));

    let out = nightshift(dir.path(), &["--config", "missing.toml", "status"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn commands_before_the_daemon_ran_say_so_plainly() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("c.toml"), "data_dir = \"d\"\n").expect("config");
    for args in [&["status"][..], &["job", "x"][..]] {
        let mut all = vec!["--config", "c.toml"];
        all.extend_from_slice(args);
        let out = nightshift(dir.path(), &all);
        assert_eq!(out.status.code(), Some(69), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("does not exist yet") && err.contains("nightshift run"),
            "{err}"
        );
    }
}

#[test]
fn submit_renames_the_file_in_with_its_sidecar() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("c.toml"),
        "jobs_dir = \"jobs\"\ndata_dir = \"d\"\n",
    )
    .expect("config");
    std::fs::write(
        dir.path().join("nightly.jsonl"),
        crate::common::request("a", "x") + "\n",
    )
    .expect("job");
    std::fs::write(dir.path().join("nightly.toml"), "tenant = \"acme\"\n").expect("sidecar");
    let out = nightshift(
        dir.path(),
        &["--config", "c.toml", "submit", "nightly.jsonl"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs = dir.path().join("jobs");
    assert!(jobs.join("nightly.jsonl").exists() && jobs.join("nightly.toml").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&jobs)
        .expect("jobs dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no partial files left behind");
    // Twice is refused: the name is taken.
    let out = nightshift(
        dir.path(),
        &["--config", "c.toml", "submit", "nightly.jsonl"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already waiting"));
    // A bad sidecar is refused before anything is copied.
    std::fs::write(
        dir.path().join("other.jsonl"),
        crate::common::request("a", "x") + "\n",
    )
    .expect("job");
    std::fs::write(dir.path().join("other.toml"), "priority = \"urgent\"\n").expect("sidecar");
    let out = nightshift(dir.path(), &["--config", "c.toml", "submit", "other.jsonl"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("priority"));
    assert!(!jobs.join("other.jsonl").exists());
}

/// Every subcommand's name, from the clap types themselves (a new one is covered at once).
fn subcommands() -> Vec<String> {
    let cli = <nightshift::cli::args::Cli as clap::CommandFactory>::command();
    let names: Vec<String> = cli
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    assert!(names.len() > 20, "{names:?}");
    names
}

#[test]
fn completions_name_every_subcommand_for_each_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = |shell: &str| {
        let out = nightshift(dir.path(), &["completions", shell]);
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let bash = script("bash");
    assert!(bash.contains("_nightshift()"), "{bash}");
    assert!(bash.contains("complete -F _nightshift"), "{bash}");
    for name in subcommands() {
        assert!(
            bash.contains(&format!("nightshift,{name})")),
            "bash: {name}"
        );
    }
    assert!(script("zsh").starts_with("#compdef nightshift"));
    let fish = script("fish");
    for name in subcommands() {
        assert!(fish.contains(&format!("-a \"{name}\"")), "fish: {name}");
    }
    let out = nightshift(dir.path(), &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is bad usage");
}

#[test]
fn the_man_page_is_roff_and_names_every_subcommand() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = nightshift(dir.path(), &["man"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(page.starts_with('.'), "roff requests first: {page}");
    assert!(page.contains("\n.TH nightshift 1 "), "{page}");
    assert!(page.contains("\n.SH SYNOPSIS\n"), "{page}");
    for name in subcommands() {
        // roff escapes the hyphen.
        assert!(
            page.contains(&format!("nightshift\\-{}(1)", name.replace('-', "\\-"))),
            "{name} is not in the man page"
        );
    }
    // --dir: a page per subcommand, readable by everyone despite nightshift's umask of 077.
    let pages = dir.path().join("man1");
    std::fs::create_dir(&pages).expect("dir");
    let out = nightshift(dir.path(), &["man", "--dir", "man1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["nightshift".to_owned()]
        .into_iter()
        .chain(subcommands().iter().map(|s| format!("nightshift-{s}")))
        .chain(["nightshift-bench-quota".to_owned()])
    {
        let path = pages.join(format!("{name}.1"));
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(meta.permissions().mode() & 0o777, 0o644, "{name}");
        let text = std::fs::read_to_string(&path).expect("page");
        assert!(text.contains(&format!(".TH {name} 1 ")), "{text}");
    }
}

/// `--version` names the commit the binary was built from (build.rs): this checkout's HEAD when
/// the tests run in a git checkout, `unknown` only where the build had no git.
#[test]
fn version_names_the_commit_it_was_built_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = nightshift(dir.path(), &["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let commit = text
        .strip_prefix(concat!(
            "nightshift ",
            env!("CARGO_PKG_VERSION"),
            " (commit "
        ))
        .and_then(|rest| rest.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("not `nightshift VERSION (commit C)`: {text:?}"));
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    // As build.rs does: only a repository whose top is the package tells its commit.
    let own_repository = git(&["rev-parse", "--show-toplevel"]).is_some_and(|top| {
        std::fs::canonicalize(top).ok() == std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).ok()
    });
    match own_repository
        .then(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .flatten()
    {
        Some(head) => assert_eq!(commit, head, "{text}"),
        None => assert!(
            commit == "unknown"
                || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
            "{text}"
        ),
    }
}

/// `nightshift demo | head -1` ends quietly (it panicked: "failed printing to stdout: Broken pipe",
/// exit 101), as the pipeline's reader expects.
#[test]
fn the_demo_piped_to_head_ends_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = dir.path().join("demo");
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" demo --dir "$1" | head -1"#)
        .arg(BIN)
        .arg(&demo)
        .env_remove("NIGHTSHIFT_CONFIG")
        .output()
        .expect("sh runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nightshift demo\n");
}

/// Every command whose standard output's reader has gone ends as SIGPIPE ends any Unix program:
/// silently, by the signal. Those that hold no sockets by SIGPIPE's default action; those that
/// keep it ignored for their sockets (demo, plan, bench, fake-api, the daemon) by noticing the
/// closed pipe. The reader is closed before the command starts, so its first write meets it.
#[tokio::test]
async fn a_closed_pipe_ends_every_kind_of_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("c.toml"), "data_dir = \"d\"\n").expect("config");
    std::fs::create_dir(dir.path().join("d")).expect("data dir");
    let store = nightshift::store::Store::open(dir.path().join("d").join("nightshift.db"))
        .expect("a database for status");
    store.close().await;
    let job = dir.path().join("job.jsonl");
    std::fs::write(&job, crate::common::request("a", "x") + "\n").expect("job");
    let job = job.to_string_lossy().into_owned();
    let closed_pipe = || {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        writer
    };
    // What clap prints itself it prints before any command runs, and it ignores the closed pipe.
    for args in ["--version", "--help"] {
        let out = Command::new(BIN)
            .arg(args)
            .stdout(closed_pipe())
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("runs");
        assert!(out.status.success() && out.stderr.is_empty(), "{args}");
    }
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["ledger"],
        &["completions", "bash"],
        &["man"],
        &["plan", &job],
        &["demo", "--dir", "demo"],
    ] {
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .args(["--config", "c.toml"])
            .args(args)
            .env_remove("ANTHROPIC_API_KEY")
            .stdout(closed_pipe())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("runs")
            .wait_with_output()
            .expect("ends");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err, "", "{args:?}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?}",
            out.status
        );
    }
}

/// The daemon keeps SIGPIPE ignored (only the commands without sockets take its default action):
/// a client that closes its connection must be an error on that connection, never its death.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keeps_sigpipe_ignored() {
    let env = crate::common::TestEnv::new(nightshift::fake_api::FakeConfig::default(), "").await;
    let mut daemon = env.spawn_binary_daemon("sk-test-key", "daemon.log");
    let started = std::time::Instant::now();
    while env.try_status_json()["daemon"]["pid"] != daemon.id() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the daemon did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let proc_status =
        std::fs::read_to_string(format!("/proc/{}/status", daemon.id())).expect("/proc");
    let ignored = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .expect("SigIgn");
    assert_ne!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "{proc_status}");
    crate::common::signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait().expect("reaped").success());
}

/// A database this user may not read says so, naming it, with exit 77 (sysexits' EX_NOPERM); it
/// said "does not exist yet: start the daemon" (69) when the folder was closed to the user, and
/// "unable to open database file" when the file was. One it may read but not change says so for a
/// command that writes. As root, the commands run as nobody (uid 65534) against root's 0700
/// folder and 0600 file, as a user who is not nightshift's meets them; as another user they run as
/// that user against modes that close them to their owner too.
#[tokio::test]
async fn a_database_this_user_may_not_read_says_so() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let root = rustix::process::geteuid().is_root();
    let dir = tempfile::tempdir().expect("tempdir");
    // The other user must reach the config.
    chmod(dir.path(), 0o755);
    std::fs::write(dir.path().join("c.toml"), "data_dir = \"d\"\n").expect("config");
    chmod(&dir.path().join("c.toml"), 0o644);
    let data = dir.path().join("d");
    std::fs::create_dir(&data).expect("data dir");
    let db = data.join("nightshift.db");
    nightshift::store::Store::open(&db)
        .expect("a database")
        .close()
        .await;
    let run = |args: &[&str]| {
        let mut command = Command::new(BIN);
        command
            .current_dir(dir.path())
            .args(["--config", "c.toml"])
            .args(args)
            .env_remove("NIGHTSHIFT_CONFIG");
        if root {
            command.uid(65_534).gid(65_534);
        }
        let out = command.output().expect("runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let names_the_file_and_the_fix = |err: &str, verb: &str| {
        // The path as the config gives it (relative to the config file's folder).
        err.contains(&format!(
            "cannot {verb} ./d/nightshift.db: permission denied"
        )) && err.contains("sudo -u nightshift")
            && err.contains("readers_group")
    };

    // A data folder the user may not enter.
    chmod(&data, if root { 0o700 } else { 0o000 });
    for args in [
        &["status"][..],
        &["job", "x"],
        &["ledger"],
        &["limits"],
        &["cancel", "x"],
    ] {
        let (code, err) = run(args);
        assert_eq!(code, Some(77), "{args:?}: {err}");
        assert!(names_the_file_and_the_fix(&err, "read"), "{args:?}: {err}");
        assert!(!err.contains("does not exist"), "{err}");
    }

    // A database file the user may not read, in a folder it may enter.
    chmod(&data, 0o755);
    chmod(&db, if root { 0o600 } else { 0o000 });
    let (code, err) = run(&["status"]);
    assert_eq!(code, Some(77), "{err}");
    assert!(names_the_file_and_the_fix(&err, "read"), "{err}");

    // One it may read but not change: reads work, a command that writes says why it cannot.
    chmod(&db, if root { 0o644 } else { 0o444 });
    let (code, err) = run(&["status"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run(&["cancel", "x"]);
    assert_eq!(code, Some(77), "{err}");
    assert!(names_the_file_and_the_fix(&err, "change"), "{err}");

    // Without the database, still the plain "start the daemon".
    chmod(&db, 0o600);
    std::fs::remove_file(&db).expect("remove");
    let (code, err) = run(&["status"]);
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("does not exist yet"), "{err}");
}
