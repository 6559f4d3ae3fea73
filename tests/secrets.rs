//! The API key appears nowhere: not in the data directory (database, WAL, results), not in the
//! logs (at debug level), not in any CLI output, also when the API rejects it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
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
    // SAFETY: kill(2) with a pid we own.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().expect("reaped").success());
    assert_each_once(&env.results("secret"), &ids);
    assert_eq!(env.fake.stats().messages_accepted, 20);

    // A second job run with a wrong key: the 401s are reported, the key still nowhere.
    let wrong = "sk-ant-api03-WRONGkeyAlsoSecret987654321";
    let (_, body) = job_of("rejected", 3);
    env.write_job("rejected", &body);
    let mut daemon = env.spawn_binary_daemon(wrong, "daemon2.log");
    let job = env.wait_done("rejected", Duration::from_secs(60)).await;
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().expect("reaped").success());
    assert_eq!(job.counts.errored, 3, "401 is not retried");

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
    assert!(
        report["errored_lines"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("401"),
        "{report}"
    );
}
