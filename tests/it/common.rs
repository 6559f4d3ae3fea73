//! Shared test fixtures: a temp dir with a config, the built-in fake API on 127.0.0.1:0, and
//! ways to run the daemon (in-process or as the real binary) and read what it produced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nightshift::api::{ApiKey, RouteKeys};
use nightshift::cli::views::status::JobStatus;
use nightshift::config::Config;
use nightshift::fake_api::{FakeApi, FakeConfig};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_nightshift");

/// Fast polling and a generous batch RPM, so tests take seconds.
pub const FAST_BATCHES: &str = "[batch]\npoll_min_ms = 100\npoll_max_ms = 500\nrpm = 6000\n";

/// A fake whose batches end after `processing_ms`.
pub fn fast_batch_fake(processing_ms: u64) -> FakeConfig {
    FakeConfig {
        batch: nightshift::fake_api::BatchSettings {
            processing_time: Duration::from_millis(processing_ms),
            ..Default::default()
        },
        ..FakeConfig::default()
    }
}

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub fake: FakeApi,
    pub config_path: PathBuf,
    /// The PostgreSQL the config's `[store] url` names, when the store is PostgreSQL; kept for
    /// as long as the env (dropping it stops the server).
    pg: Option<crate::pg::TestPg>,
}

/// Which store a [`TestEnv`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestStore {
    Sqlite,
    Postgres,
}

impl TestStore {
    /// `NIGHTSHIFT_TEST_STORE=postgres` runs every test that does not choose on PostgreSQL.
    #[allow(clippy::disallowed_methods)] // the test harness is an edge too
    pub fn from_env() -> TestStore {
        match std::env::var("NIGHTSHIFT_TEST_STORE").as_deref() {
            Ok("postgres") => TestStore::Postgres,
            _ => TestStore::Sqlite,
        }
    }
}

impl TestEnv {
    /// A fake API with `fake` settings, and a config pointing at it; `extra` is appended to the
    /// config (tables such as `[realtime]` or `[limits.default]`).
    pub async fn new(fake: FakeConfig, extra: &str) -> TestEnv {
        TestEnv::on(TestStore::from_env(), fake, extra).await
    }

    /// [`TestEnv::new`] on the store `store`: for PostgreSQL, a server of its own.
    #[allow(clippy::disallowed_methods)] // the test harness is an edge too
    pub async fn on(store: TestStore, fake: FakeConfig, extra: &str) -> TestEnv {
        // NIGHTSHIFT_TEST_LOG=debug (a filter) shows what in-process daemons log.
        if let Ok(filter) = std::env::var("NIGHTSHIFT_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let pg = match store {
            TestStore::Sqlite => None,
            TestStore::Postgres => Some(
                tokio::task::spawn_blocking(crate::pg::TestPg::start)
                    .await
                    .expect("TestPg::start"),
            ),
        };
        let store_table = pg.as_ref().map_or(String::new(), |pg| {
            format!("[store]\nurl = \"{}\"\n", pg.url())
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = FakeApi::start(fake, ([127, 0, 0, 1], 0).into())
            .await
            .expect("fake API starts");
        let config_path = dir.path().join("nightshift.toml");
        let text = format!(
            "jobs_dir = \"jobs\"\ndata_dir = \"data\"\n\n[api]\nbase_url = \"{}\"\n\n[daemon]\nscan_interval_ms = 50\nshutdown_grace_secs = 5\n\n{store_table}{extra}\n",
            fake.base_url()
        );
        std::fs::write(&config_path, text).expect("write config");
        std::fs::create_dir_all(dir.path().join("jobs")).expect("jobs dir");
        TestEnv {
            dir,
            fake,
            config_path,
            pg,
        }
    }

    /// Adds a setting to the config's `[api]` table.
    pub fn set_api(&self, line: &str) {
        self.edit_config("[api]\n", &format!("[api]\n{line}\n"));
    }

    /// Replaces `from` (which must be there) with `to` in the config file.
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config_path).expect("config");
        assert!(
            text.contains(from),
            "{from:?} is not in the config:\n{text}"
        );
        std::fs::write(&self.config_path, text.replace(from, to)).expect("config");
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path, &Default::default()).expect("config loads")
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.dir.path().join("jobs")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn results_file(&self, job: &str) -> PathBuf {
        self.data_dir().join("results").join(format!("{job}.jsonl"))
    }

    /// Puts a job file in place the way users are told to: write elsewhere, rename in.
    pub fn write_job(&self, name: &str, content: &[u8]) {
        let staging = self.dir.path().join(format!("{name}.staging"));
        std::fs::write(&staging, content).expect("write job");
        std::fs::rename(&staging, self.jobs_dir().join(format!("{name}.jsonl")))
            .expect("rename job in");
    }

    /// Runs the daemon in this process until the returned handle is stopped.
    pub fn start_daemon(&self) -> InProcessDaemon {
        InProcessDaemon(nightshift::daemon::spawn(
            self.config(),
            ApiKey::new("sk-test-key").into(),
        ))
    }

    /// Runs the daemon in this process with a key per route (`[routes]` in the config) until the
    /// returned handle is stopped.
    pub fn start_daemon_with_keys(&self, keys: RouteKeys) -> InProcessDaemon {
        InProcessDaemon(nightshift::daemon::spawn(self.config(), keys))
    }

    /// Starts the real binary's daemon (`nightshift run`), logs to files in the temp dir.
    pub fn spawn_binary_daemon(&self, key: &str, log_name: &str) -> Child {
        self.spawn_binary_daemon_with(key, log_name, &[])
    }

    /// [`TestEnv::spawn_binary_daemon`] with extra environment variables.
    pub fn spawn_binary_daemon_with(
        &self,
        key: &str,
        log_name: &str,
        env: &[(&str, &str)],
    ) -> Child {
        spawn_daemon(&self.config_path, &self.dir.path().join(log_name), key, env)
    }

    /// Another host sharing this env's store (PostgreSQL) and fake API: a config of its own,
    /// the same but for its jobs and data folders (under `<name>/`).
    pub fn host(&self, name: &str) -> Host {
        let text = std::fs::read_to_string(&self.config_path).expect("config");
        let root = self.dir.path().join(name);
        std::fs::create_dir_all(root.join("jobs")).expect("the host's jobs dir");
        let config_path = self.dir.path().join(format!("{name}.toml"));
        let text = text.replace(
            "jobs_dir = \"jobs\"\ndata_dir = \"data\"",
            &format!("jobs_dir = \"{name}/jobs\"\ndata_dir = \"{name}/data\""),
        );
        std::fs::write(&config_path, text).expect("the host's config");
        Host {
            name: name.to_owned(),
            root,
            config_path,
        }
    }

    /// The health trouble of `part` that `status --json` shows, once it shows one (Null if none
    /// within 10 s).
    pub async fn wait_trouble(&self, part: &str) -> Value {
        for _ in 0..100 {
            let trouble = self.status_json()["daemon"]["health"]["troubles"][part].clone();
            if !trouble.is_null() {
                return trouble;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Value::Null
    }

    /// Runs a CLI command against this env's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_with(&self.config_path, args)
    }

    /// `status --json`, or Null while the daemon has not created its database yet.
    pub fn try_status_json(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    pub fn status_json(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    pub fn job_json(&self, job: &str) -> Value {
        let out = self.cli(&["job", job, "--json"]);
        assert!(
            out.status.success(),
            "job failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("job --json is JSON")
    }

    /// The job as `status` shows it, if the database and the job exist yet.
    pub fn job_status(&self, job: &str) -> Option<JobStatus> {
        let config = self.config();
        let (data_dir, results_dir) = (config.data_dir.clone(), config.results_dir());
        let status = self
            .read_store(|conn| {
                nightshift::cli::views::status::status(
                    conn,
                    &data_dir,
                    &results_dir,
                    &Default::default(),
                    nightshift::store::now_ms(),
                )
                .map_err(|e| nightshift::store::StoreError::Invalid(e.to_string()))
            })
            .ok()?;
        status.jobs.into_iter().find(|j| j.name == job)
    }

    /// The PostgreSQL server of a test on that store.
    pub fn pg(&self) -> &crate::pg::TestPg {
        self.pg.as_ref().expect("a test on the PostgreSQL store")
    }

    /// Where the config's store is.
    pub fn store_location(&self) -> nightshift::store::Location {
        nightshift::lanes::store_location(&self.config())
    }

    /// `f` over a read-only connection to the store, on a thread of its own (PostgreSQL's
    /// client blocks on a runtime of its own, which a test's runtime thread may not do).
    pub fn read_store<T: Send>(
        &self,
        f: impl FnOnce(&nightshift::store::Conn) -> nightshift::store::Result<T> + Send,
    ) -> nightshift::store::Result<T> {
        let at = self.store_location();
        std::thread::scope(|s| {
            s.spawn(move || f(&nightshift::store::open_read_only(&at)?))
                .join()
                .expect("the store was read")
        })
    }

    /// Waits until the job is done (every item final, results complete), or canceled and so.
    pub async fn wait_done(&self, job: &str, timeout: Duration) -> JobStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.job_status(job)
                && (status.state == "done" || status.state == "canceled")
            {
                return status;
            }
            if started.elapsed() >= timeout {
                let details = self.cli(&["job", job, "--json"]);
                panic!(
                    "job {job} not done after {timeout:?}: {}",
                    String::from_utf8_lossy(&details.stdout)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until at least `n` items of the job have succeeded.
    pub async fn wait_succeeded(&self, job: &str, n: u64, timeout: Duration) {
        let started = Instant::now();
        while self.job_status(job).is_none_or(|j| j.counts.succeeded < n) {
            assert!(
                started.elapsed() < timeout,
                "{job}: fewer than {n} succeeded after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The job's results file, parsed line by line.
    pub fn results(&self, job: &str) -> Vec<Value> {
        read_results(&self.results_file(job))
    }
}

/// A CLI command with `config`, without the API key.
fn cli_with(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .expect("nightshift runs")
}

/// Starts the real binary's daemon (`nightshift run`) with `config`, logging to `log`.
fn spawn_daemon(config: &Path, log: &Path, key: &str, env: &[(&str, &str)]) -> Child {
    let stderr = std::fs::File::create(log).expect("log file");
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("ANTHROPIC_API_KEY", key)
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("nightshift run starts")
}

/// A host of [`TestEnv::host`]: its own jobs and data folders, the env's store and fake API.
pub struct Host {
    pub name: String,
    pub root: PathBuf,
    pub config_path: PathBuf,
}

impl Host {
    pub fn jobs_dir(&self) -> PathBuf {
        self.root.join("jobs")
    }

    pub fn results_file(&self, job: &str) -> PathBuf {
        self.root.join("data/results").join(format!("{job}.jsonl"))
    }

    /// As [`TestEnv::write_job`], into this host's jobs folder.
    pub fn write_job(&self, name: &str, content: &[u8]) {
        let staging = self.root.join(format!("{name}.staging"));
        std::fs::write(&staging, content).expect("write job");
        std::fs::rename(&staging, self.jobs_dir().join(format!("{name}.jsonl")))
            .expect("rename job in");
    }

    /// Its daemon, the real binary, logging to `<name>.log` beside its folders.
    pub fn spawn(&self) -> Child {
        spawn_daemon(&self.config_path, &self.log_path(), "sk-test", &[])
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.with_file_name(format!("{}.log", self.name))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A CLI command with this host's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_with(&self.config_path, args)
    }
}

pub struct InProcessDaemon(nightshift::daemon::Handle);

impl InProcessDaemon {
    /// Reloads the config file, as SIGHUP does.
    pub fn reload(&self) {
        self.0.reload();
    }

    pub async fn stop(self) {
        self.0.stop().await.expect("daemon stops cleanly");
    }
}

/// Sends `signal` to a child process: the tests' one unsafe call.
#[allow(unsafe_code)]
pub fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) with the pid of a child we own and a valid signal number.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// A results file, line by line; every line must be one the official SDK reads
/// (`crate::sdk`).
pub fn read_results(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("results file exists");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("results line is not JSON ({e}): {l}"))
        })
        .collect();
    crate::sdk::assert_sdk_readable(&lines);
    lines
}

/// A valid request line for the real-time lane.
pub fn request(custom_id: &str, text: &str) -> String {
    format!(
        r#"{{"custom_id":"{custom_id}","mode":"realtime","params":{{"model":"claude-haiku-5-5","max_tokens":64,"messages":[{{"role":"user","content":"{text}"}}]}}}}"#
    )
}

/// A valid request line with extra top-level fields (e.g. `"priority":"nightly"`); the planner
/// decides its lane.
pub fn planned_request(custom_id: &str, extra: &str) -> String {
    format!(
        r#"{{"custom_id":"{custom_id}",{extra}"params":{{"model":"claude-haiku-5-5","max_tokens":64,"messages":[{{"role":"user","content":"Classify ticket {custom_id}: my parcel is late."}}]}}}}"#
    )
}

/// A job of `n` valid requests, ids `{prefix}-0000`..
pub fn job_of(prefix: &str, n: usize) -> (Vec<String>, Vec<u8>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:04}")).collect();
    let mut body = String::new();
    for (i, id) in ids.iter().enumerate() {
        body.push_str(&request(
            id,
            &format!("Summarise ticket {i}: the parcel arrived late."),
        ));
        body.push('\n');
    }
    (ids, body.into_bytes())
}

/// Asserts that each expected custom_id is in the results exactly once, and no other non-null one.
/// Returns the results by custom_id.
pub fn assert_each_once<'a>(
    results: &'a [Value],
    expected: &[String],
) -> HashMap<String, &'a Value> {
    let mut seen: HashMap<String, &Value> = HashMap::new();
    for line in results {
        if let Some(id) = line["custom_id"].as_str() {
            assert!(
                seen.insert(id.to_owned(), line).is_none(),
                "custom_id {id} appears twice"
            );
        }
    }
    for id in expected {
        assert!(
            seen.contains_key(id),
            "custom_id {id} missing from the results"
        );
    }
    assert_eq!(
        seen.len(),
        expected.len(),
        "unexpected custom_ids in the results"
    );
    seen
}

/// The route named `name` in `limits --json`.
pub fn route_in(limits: &Value, name: &str) -> Value {
    limits["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("route {name} in {limits}"))
}

pub fn succeeded(results: &[Value]) -> usize {
    results
        .iter()
        .filter(|r| r["result"]["type"] == "succeeded")
        .count()
}
