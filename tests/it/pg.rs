//! A real PostgreSQL for the tests of the PostgreSQL store: `TestPg::start()` makes a cluster in
//! a temp dir (`initdb`) and runs it (`pg_ctl`) on a free port of 127.0.0.1, its unix socket in
//! the same dir; dropping it stops the server. As root the server runs as `nobody` (PostgreSQL
//! refuses to run as root). Without PostgreSQL's server binaries the tests fail saying to install
//! Debian's `postgresql` package (`.ci/run` does): they are never skipped.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The uid and gid of `nobody` (and Debian's `nogroup`), who runs the server when the tests run
/// as root.
const NOBODY: u32 = 65_534;

pub struct TestPg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_nobody: bool,
}

impl TestPg {
    /// A new cluster, started; panics with what to do when PostgreSQL is not installed.
    pub fn start() -> TestPg {
        let started = Instant::now();
        let bin = server_bindir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL's server programs (initdb, pg_ctl) are not installed: the PostgreSQL \
                 store's tests need them. Install Debian's `postgresql` package \
                 (`apt-get install postgresql`), as .ci/run does."
            )
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let as_nobody = rustix::process::geteuid().is_root();
        if as_nobody {
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY))
                .expect("chown the cluster's dir to nobody");
        }
        let mut pg = TestPg {
            dir,
            bin,
            port: 0,
            as_nobody,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data().to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "nightshift",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        // A free port can be taken by someone else before the server binds it: try a few.
        for _ in 0..5 {
            pg.port = free_port();
            let options = format!(
                "-p {} -h 127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off",
                pg.port,
                pg.dir.path().display()
            );
            let log = pg.dir.path().join("server.log");
            let out = pg.command(
                "pg_ctl",
                &[
                    "start",
                    "-w",
                    "-D",
                    &pg.data().to_string_lossy(),
                    "-l",
                    &log.to_string_lossy(),
                    "-o",
                    &options,
                ],
            );
            if out.status.success() {
                assert!(
                    TcpStream::connect((Ipv4Addr::LOCALHOST, pg.port)).is_ok(),
                    "PostgreSQL started but does not listen on 127.0.0.1:{}",
                    pg.port
                );
                eprintln!(
                    "PostgreSQL on 127.0.0.1:{} in {:?}, started in {:?}",
                    pg.port,
                    pg.dir.path(),
                    started.elapsed()
                );
                return pg;
            }
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            if !log.contains("Address already in use") {
                panic!(
                    "pg_ctl start failed: {}\n{}\nserver log:\n{log}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        panic!("PostgreSQL found no free port in five tries");
    }

    /// Restarts the server (`pg_ctl restart -m fast`, with the options it was started with):
    /// every connection to it is closed. Its output goes to the log, as at start (else the
    /// server would hold this process's pipe open).
    pub fn restart(&self) {
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "restart",
                "-w",
                "-m",
                "fast",
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
            ],
        );
    }

    /// `postgres://nightshift@127.0.0.1:PORT/postgres`: the superuser, no password (trust).
    pub fn url(&self) -> String {
        format!("postgres://nightshift@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of the server's programs, as nobody when we are root, and panics if it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program, args);
        assert!(
            out.status.success(),
            "{program} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn command(&self, program: &str, args: &[&str]) -> std::process::Output {
        let path = self.bin.join(program);
        let mut command = if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        command
            .args(args)
            // nobody may not enter the test's working directory; the server needs none of it.
            .current_dir(self.dir.path())
            .env_remove("PGDATA")
            .env("LC_ALL", "C")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        if self.port == 0 {
            return; // never started
        }
        let data = self.data();
        let out = self.command(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-m",
                "immediate",
                "-D",
                &data.to_string_lossy(),
            ],
        );
        if !out.status.success() {
            eprintln!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Where `initdb` and `pg_ctl` are: `pg_config --bindir`, else the highest version's
/// `/usr/lib/postgresql/*/bin` (Debian puts the server there, off the PATH).
fn server_bindir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The harness itself: a cluster starts, listens where its URL says, and is gone once dropped.
#[test]
fn a_test_cluster_starts_and_stops() {
    let pg = TestPg::start();
    let port = pg.port();
    assert_eq!(
        pg.url(),
        format!("postgres://nightshift@127.0.0.1:{port}/postgres")
    );
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok());
    let dir = pg.dir.path().to_owned();
    drop(pg);
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "the server still listens after drop"
    );
    assert!(!dir.exists(), "the cluster's dir is removed");
}

/// The schema on a fresh database: the version, the tables, one row per version.
#[test]
fn migrate_makes_the_schema_once() {
    use nightshift::store::pg;
    let started = Instant::now();
    let server = TestPg::start();
    let mut client = pg::connect(&server.url(), None).expect("connects");
    let version = pg::migrate(&mut client).expect("migrates");
    assert_eq!(version, pg::schema_version());
    assert!(version >= 1);

    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .expect("tables")
        .iter()
        .map(|row| row.get(0))
        .collect();
    for table in [
        "jobs",
        "items",
        "attempts",
        "batches",
        "results",
        "ledger",
        "tenant_days",
        "quota_state",
        "routes",
        "holds",
        "daemons",
        "schema_migrations",
    ] {
        assert!(
            tables.iter().any(|t| t == table),
            "no table {table} in {tables:?}"
        );
    }
    let lease_columns: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns
             WHERE table_name = 'items'
               AND column_name IN ('lease_owner', 'lease_expires_at', 'lease_token')",
            &[],
        )
        .expect("columns")
        .get(0);
    assert_eq!(lease_columns, 3);

    // Again: nothing to do, nothing recorded twice.
    assert_eq!(pg::migrate(&mut client).expect("again"), version);
    let rows: Vec<(i32, i64)> = client
        .query(
            "SELECT version, count(*) FROM schema_migrations GROUP BY 1 ORDER BY 1",
            &[],
        )
        .expect("schema_migrations")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let expected: Vec<(i32, i64)> = (1..=version as i32).map(|v| (v, 1)).collect();
    assert_eq!(rows, expected);
    eprintln!("migrate_makes_the_schema_once: {:?}", started.elapsed());
}

/// Two daemons starting together (two pools) both migrate without error, and each migration is
/// applied once: the advisory lock lets one in, the other finds the work done.
#[test]
fn two_daemons_migrating_at_once_apply_each_migration_once() {
    use nightshift::store::pg;
    let started = Instant::now();
    let server = TestPg::start();
    let url = server.url();
    let both: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut client = pg::connect(&url, None).expect("connects");
                pg::migrate(&mut client).expect("migrates")
            })
        })
        .collect();
    let versions: Vec<usize> = both
        .into_iter()
        .map(|t| t.join().expect("migrated"))
        .collect();
    let (va, vb) = (versions[0], versions[1]);
    assert_eq!(va, pg::schema_version());
    assert_eq!(vb, pg::schema_version());
    let mut client = pg::connect(&url, None).expect("connects");
    let (rows, versions): (i64, i64) = client
        .query_one(
            "SELECT count(*), count(DISTINCT version) FROM schema_migrations",
            &[],
        )
        .map(|row| (row.get(0), row.get(1)))
        .expect("schema_migrations");
    assert_eq!(rows, pg::schema_version() as i64);
    assert_eq!(versions, rows);
    eprintln!(
        "two_daemons_migrating_at_once_apply_each_migration_once: {:?}",
        started.elapsed()
    );
}

/// The triggers kept from SQLite: a ledger row rolls up into its tenant's day and its job's cache
/// use; leaving in_flight settles an item's reservation, and the tenant's sum follows.
#[test]
fn the_triggers_keep_the_sums() {
    use nightshift::store::pg;
    let server = TestPg::start();
    let mut client = pg::connect(&server.url(), None).expect("connects");
    pg::migrate(&mut client).expect("migrates");
    client
        .batch_execute(
            "INSERT INTO jobs (id, name, source_path, tenant, priority, mode, created_at)
                 VALUES (1, 'j', '/j.jsonl', 't', 'normal', 'auto', 0);
             INSERT INTO items (id, job_id, line_no, tenant, priority, mode, state, updated_at)
                 VALUES (1, 1, 1, 't', 2, 'auto', 'in_flight', 0);
             UPDATE items SET reserved_micro_usd = 500 WHERE id = 1;
             INSERT INTO ledger (at, tenant, job_id, item_id, model, lane, input_tokens,
                                 output_tokens, cache_creation_input_tokens,
                                 cache_read_input_tokens, cost_micro_usd, retry_of_unknown,
                                 cache_saved_micro_usd)
                 VALUES (86400000 * 2 + 5, 't', 1, 1, 'm', 'realtime', 10, 20, 3, 4, 100, 0, 7),
                        (86400000 * 2 + 9, 't', 1, 1, 'm', 'realtime', 1, 2, 0, 0, NULL, 0, 0);",
        )
        .expect("rows");
    let reserved: i64 = client
        .query_one(
            "SELECT reserved_micro_usd FROM tenant_reserved WHERE tenant = 't'",
            &[],
        )
        .expect("reserved")
        .get(0);
    assert_eq!(reserved, 500);
    client
        .batch_execute("UPDATE items SET state = 'succeeded' WHERE id = 1")
        .expect("final");
    let row = client
        .query_one(
            "SELECT i.reserved_micro_usd, r.reserved_micro_usd FROM items i, tenant_reserved r
             WHERE i.id = 1 AND r.tenant = 't'",
            &[],
        )
        .expect("settled");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 0));
    let day = client
        .query_one(
            "SELECT day, spent_micro_usd, requests, input_tokens, cache_saved_micro_usd
             FROM tenant_days WHERE tenant = 't'",
            &[],
        )
        .expect("tenant_days");
    assert_eq!(day.get::<_, String>(0), "1970-01-03");
    assert_eq!(
        (
            day.get::<_, i64>(1),
            day.get::<_, i64>(2),
            day.get::<_, i64>(3),
            day.get::<_, i64>(4)
        ),
        (100, 2, 11, 7)
    );
    let cache = client
        .query_one(
            "SELECT read_tokens, written_tokens, saved_micro_usd FROM job_cache_use WHERE job_id = 1",
            &[],
        )
        .expect("job_cache_use");
    assert_eq!(
        (
            cache.get::<_, i64>(0),
            cache.get::<_, i64>(1),
            cache.get::<_, i64>(2)
        ),
        (4, 3, 7)
    );
}

/// A job through the daemon on the PostgreSQL store, 429s and 529s injected: each item once in
/// the results, one call per success, and the CLI (status, job) reads it from PostgreSQL.
/// `NIGHTSHIFT_TEST_STORE=postgres cargo test --test it` runs every other test there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_on_the_postgres_store_each_item_once() {
    use crate::common::*;
    use nightshift::fake_api::{FakeConfig, Faults};
    let env = TestEnv::on(
        TestStore::Postgres,
        FakeConfig {
            faults: Faults {
                rate_limited_429: 0.05,
                overloaded_529: 0.05,
                ..Faults::default()
            },
            seed: 17,
            ..FakeConfig::default()
        },
        "[realtime]\nconcurrency = 8\nmax_attempts = 20\nbackoff_min_ms = 10\nbackoff_max_ms = 200\n",
    )
    .await;
    assert!(
        !env.config().db_path().exists(),
        "no SQLite file before the daemon runs"
    );
    let (ids, body) = job_of("pgjob", 120);
    env.write_job("pgjob", &body);
    let daemon = env.start_daemon();
    let job = env
        .wait_done("pgjob", std::time::Duration::from_secs(60))
        .await;
    daemon.stop().await;
    assert_eq!(job.counts.succeeded, 120);
    assert_each_once(&env.results("pgjob"), &ids);
    assert_eq!(env.fake.stats().messages_accepted, 120);
    assert!(
        !env.config().db_path().exists(),
        "the daemon kept nothing in SQLite"
    );
    let status = env.status_json();
    assert_eq!(status["jobs"][0]["name"], "pgjob");
    assert_eq!(status["jobs"][0]["counts"]["succeeded"], 120);
    assert_eq!(env.job_json("pgjob")["counts"]["succeeded"], 120);
    // `nightshift results` writes the same lines from the store.
    let out = env.cli(&["results", "pgjob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_each_once(&lines, &ids);
    // `nightshift backup` is pg_dump's custom format on PostgreSQL, and never overwrites.
    let dump = env.dir.path().join("store.dump");
    let out = env.cli(&["backup", &dump.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read(&dump).expect("the dump");
    assert!(head.starts_with(b"PGDMP"), "a pg_dump archive");
    assert!(
        !env.cli(&["backup", &dump.to_string_lossy()])
            .status
            .success()
    );
}

/// Values cross the seam both ways on PostgreSQL as on SQLite: integers bound where the server
/// wants NUMERIC, INT4 or FLOAT8, sums of BIGINT (NUMERIC) read back as integers, NULLs, text.
#[test]
fn values_cross_the_seam_as_on_sqlite() {
    use nightshift::store::sql::{Conn, params};
    let server = TestPg::start();
    let conn = Conn::from(nightshift::store::pg::connect(&server.url(), None).expect("connects"));
    for n in [0i64, 7, -12_345, 10_000, 123_456_789_012, i64::MIN + 1] {
        let back: i64 = conn
            .query_row("SELECT CAST(CAST(?1 AS NUMERIC) AS BIGINT)", [n], |r| {
                r.get(0)
            })
            .expect("numeric");
        assert_eq!(back, n, "an integer bound as NUMERIC");
    }
    let (sum, half, none, text): (i64, f64, Option<i64>, String) = conn
        .query_row(
            "SELECT SUM(x), CAST(?1 AS FLOAT8) / 2, CAST(?2 AS INT4), CAST(?3 AS TEXT)
             FROM (VALUES (CAST(4000000000 AS BIGINT)), (CAST(5 AS BIGINT))) AS t(x)",
            params![3i64, None::<i64>, "ok"],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .expect("row");
    assert_eq!(
        (sum, half, none, text.as_str()),
        (4_000_000_005, 1.5, None, "ok")
    );
}

/// The PostgreSQL server restarts mid-job (every connection closed): the daemon's writer
/// connects again and the job completes, each item once in the results and one accepted call
/// per success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_job_loses_and_repeats_nothing() {
    use crate::common::*;
    use nightshift::fake_api::FakeConfig;
    let env = TestEnv::on(
        TestStore::Postgres,
        FakeConfig {
            latency: std::time::Duration::from_millis(40),
            ..FakeConfig::default()
        },
        "[realtime]\nconcurrency = 2\n",
    )
    .await;
    let (ids, body) = job_of("bounce", 200);
    env.write_job("bounce", &body);
    let daemon = env.start_daemon();
    env.wait_succeeded("bounce", 15, std::time::Duration::from_secs(60))
        .await;
    // Answers are slow until the restart is over, so it surely comes mid-job however late this
    // test looks (a loaded machine polls slowly).
    env.fake.set_faults(nightshift::fake_api::Faults {
        slow: 1.0,
        slow_latency: std::time::Duration::from_secs(3),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    std::thread::scope(|s| s.spawn(|| env.pg().restart()).join().expect("restarted"));
    eprintln!("restarted in {:?}", started.elapsed());
    let after = env.job_status("bounce").expect("the job is in the store");
    env.fake.set_faults(Default::default());
    assert!(
        after.counts.succeeded < 200,
        "the restart came mid-job: {:?}",
        after.counts
    );
    let job = env
        .wait_done("bounce", std::time::Duration::from_secs(90))
        .await;
    daemon.stop().await;
    assert_eq!(job.counts.succeeded, 200);
    assert_each_once(&env.results("bounce"), &ids);
    assert_eq!(
        env.fake.stats().messages_accepted,
        200,
        "no answered call was sent again"
    );
}
