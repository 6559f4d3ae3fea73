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
