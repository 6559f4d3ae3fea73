//! The daemon section of `nightshift status`: whether a daemon runs on this data dir (it holds a
//! lock on the directory while it lives, however it ends), and whether it is well, from what it
//! publishes in the store (who it is; a heartbeat every 5 s while the store takes its writes). A
//! daemon that stopped in order says so; one that was killed leaves facts no process holds the
//! lock for; one whose database is locked or disk full leaves a heartbeat that goes stale.

use crate::store::sql::Conn;
use serde::Serialize;

use super::format_time;
use crate::daemon::{DAEMON_FACT, HEARTBEAT_EVERY, HEARTBEAT_FACT};
use crate::lanes::health::{self, Health};
use crate::store::facts;

/// A heartbeat older than this many beats says something is wrong.
const STALE_BEATS: i64 = 3;

/// `status --json` → `daemon`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonStatus {
    /// A daemon process runs on this data dir.
    pub running: bool,
    pub pid: Option<u32>,
    pub since: Option<String>,
    pub version: Option<String>,
    pub last_heartbeat: Option<String>,
    pub heartbeat_age_secs: Option<i64>,
    /// What needs a person, if anything: a stale heartbeat, a daemon gone without a word.
    pub problem: Option<String>,
    /// What the running daemon says is wrong now (kept beside the store, so it is told while the
    /// database is locked or the disk full). None: no daemon runs, or it has not said yet.
    pub health: Option<Health>,
}

#[derive(serde::Deserialize)]
struct Who {
    pid: u32,
    since: i64,
    version: String,
}

/// What the store says of the daemon, checked against the running processes and the health file
/// in `data_dir` (this host's).
pub fn daemon_status(
    conn: &Conn,
    data_dir: &std::path::Path,
    now: i64,
) -> anyhow::Result<DaemonStatus> {
    // This host's daemon of `data_dir` (daemons sharing a store keep their own facts).
    let id = crate::store::leases::local_daemon_id(data_dir);
    let fact = |name: &str| facts::get(conn, &id, name);
    let who: Option<Who> = fact(DAEMON_FACT)?.and_then(|j| serde_json::from_str(&j).ok());
    let beat: Option<i64> = fact(HEARTBEAT_FACT)?.and_then(|t| t.parse().ok());
    let alive = lock_held(data_dir)
        // Where the lock cannot be asked, the process the daemon named.
        .unwrap_or_else(|| {
            who.as_ref()
                .is_some_and(|w| std::path::Path::new(&format!("/proc/{}", w.pid)).exists())
        });
    let age = beat.map(|at| (now - at).max(0) / 1000);
    let (running, problem) = judge(who.as_ref().map(|w| w.pid), alive, age);
    let health = alive
        .then(|| health::read(&data_dir.join(health::FILE)))
        .flatten()
        .filter(|h| h.at > 0);
    Ok(DaemonStatus {
        running,
        pid: who.as_ref().map(|w| w.pid),
        since: who.as_ref().map(|w| format_time(w.since)),
        version: who.map(|w| w.version),
        last_heartbeat: beat.map(format_time),
        heartbeat_age_secs: age,
        problem,
        health,
    })
}

/// Whether a daemon holds the data directory's lock: asked with a shared lock for an instant (a
/// daemon starting meanwhile tries again). None: it cannot be asked.
/// Whether a daemon holds `data_dir` (None: the lock cannot be asked).
pub fn lock_held(data_dir: &std::path::Path) -> Option<bool> {
    let dir = std::fs::File::open(data_dir).ok()?;
    match dir.try_lock_shared() {
        Ok(()) => Some(false),
        Err(std::fs::TryLockError::WouldBlock) => Some(true),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// Whether a daemon runs, and what is wrong if anything: `pid` is what it said, `alive` whether
/// a daemon holds the data dir, `age` the heartbeat's age in seconds.
fn judge(pid: Option<u32>, alive: bool, age: Option<i64>) -> (bool, Option<String>) {
    let stale = STALE_BEATS * HEARTBEAT_EVERY.as_secs() as i64;
    match pid {
        None if !alive => (false, None),
        None => (
            true,
            Some(
                "a daemon holds this data dir but has not said who it is yet: it is starting, or its database is locked or its disk full (see the journal)".into(),
            ),
        ),
        Some(pid) if !alive => (
            false,
            Some(format!(
                "the daemon (pid {pid}) stopped without saying so (a crash or a kill -9); start it again: nothing is lost"
            )),
        ),
        Some(_) => match age {
            Some(age) if age <= stale => (true, None),
            age => (
                true,
                Some(format!(
                    "its last heartbeat is {} old: the database may be locked or the disk full (see the journal)",
                    age.map_or("missing".into(), |a| format!("{a} s"))
                )),
            ),
        },
    }
}

impl DaemonStatus {
    pub fn to_text(&self) -> String {
        let mut out = if self.running {
            format!(
                "daemon: running (pid {}, since {}, nightshift {}, heartbeat {} s ago)\n",
                self.pid.unwrap_or_default(),
                self.since.as_deref().unwrap_or("?"),
                self.version.as_deref().unwrap_or("?"),
                self.heartbeat_age_secs
                    .map_or("?".into(), |a| a.to_string())
            )
        } else {
            "daemon: not running on this data dir (start it: `nightshift run`, or the service)\n"
                .to_owned()
        };
        if let Some(problem) = &self.problem {
            out.push_str(&format!("  {problem}\n"));
        }
        if let Some(h) = &self.health {
            out.push_str(&health_text(h));
        }
        out
    }
}

/// The health lines: what is wrong, since when, what was said; the disk when it is low.
fn health_text(h: &Health) -> String {
    let mut out = String::new();
    let mib = |b: u64| b / (1 << 20);
    if h.disk_low {
        out.push_str(&format!(
            "  disk low: {} MiB free on the data dir (under {} MiB); free space before it fills\n",
            h.disk_free_bytes.map_or(0, mib),
            mib(h.disk_low_bytes)
        ));
    }
    for (part, t) in &h.troubles {
        out.push_str(&format!(
            "  {part}: {} since {} ({})",
            t.what,
            format_time(t.since),
            t.error
        ));
        if let Some(next) = t.next_try_at {
            out.push_str(&format!("; next try {}", format_time(next)));
        }
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str(&format!(
            "  health: well ({} MiB free on the data dir)\n",
            h.disk_free_bytes.map_or(0, mib)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_runs_when_its_process_lives_and_is_well_while_it_beats() {
        assert_eq!(judge(None, false, None), (false, None));
        let (running, problem) = judge(None, true, None);
        assert!(running && problem.is_some_and(|p| p.contains("not said who")));
        assert_eq!(judge(Some(7), true, Some(2)), (true, None));
        let (running, problem) = judge(Some(7), true, Some(40));
        assert!(running);
        assert!(problem.expect("stale").contains("40 s old"));
        let (running, problem) = judge(Some(7), false, Some(2));
        assert!(!running);
        assert!(problem.expect("gone").contains("without saying so"));
    }
}
