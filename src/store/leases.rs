//! SQL for leases and the daemons that hold them. Several daemons may share one store
//! (PostgreSQL): an item in flight or a batch belongs to one daemon at a time, until its lease
//! expires. Each daemon renews its leases at every heartbeat; a daemon that dies (or is paused,
//! or cut off) stops renewing them, and any other takes its work back once they expire. Each claim
//! and each takeover raises the row's fencing token, and an outcome is recorded only with the
//! current token, so a daemon that comes back after losing a lease cannot record twice.
//!
//! Lease times are the hosts' clocks (Unix milliseconds): hosts sharing a store keep their clocks
//! in step (NTP), as the README says.

use crate::store::sql::{Conn, params};

use super::Result;

/// This daemon as a lease holder: its id, and how long a lease runs unless renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `host:data_dir`: the same across restarts, so a restarted daemon takes its own leases back
    /// at once, and unique among running daemons (one daemon per data directory).
    pub id: String,
    pub ttl_ms: i64,
}

/// The id of the daemon of `data_dir` on `host`: what its leases and facts name it by. The
/// folder's canonical path (when it exists), so a relative `data_dir` names the same daemon
/// whatever the working directory of the daemon or the CLI.
pub fn daemon_id(host: &str, data_dir: &std::path::Path) -> String {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    format!("{host}:{}", dir.display())
}

/// This machine's name, as leases and `status` name a daemon's host.
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The id of the daemon of `data_dir` on this host (what the CLI asks the store about).
pub fn local_daemon_id(data_dir: &std::path::Path) -> String {
    daemon_id(&this_host(), data_dir)
}

impl Holder {
    pub fn new(host: &str, data_dir: &std::path::Path, ttl: std::time::Duration) -> Holder {
        Holder {
            id: daemon_id(host, data_dir),
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// When a lease taken or renewed `now` expires.
    pub fn expiry(&self, now: i64) -> i64 {
        now.saturating_add(self.ttl_ms)
    }
}

/// The holder unit tests claim with.
#[cfg(test)]
pub fn test_holder() -> Holder {
    Holder {
        id: "test".into(),
        ttl_ms: 30_000,
    }
}

/// A daemon as it says who it is at each heartbeat.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub started_at: i64,
}

/// Beats: records the daemon as alive `now`, reaching the organizations `reach` names (see
/// `policy::routing::Routing::reach`), and renews every lease it holds.
pub fn beat(
    conn: &Conn,
    holder: &Holder,
    daemon: &Daemon,
    reach: &[String],
    now: i64,
) -> Result<()> {
    let reach = serde_json::to_string(reach).unwrap_or_else(|_| "[]".into());
    conn.prepare_cached(
        "INSERT INTO daemons (id, host, pid, version, started_at, heartbeat_at, reach)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,
             version = excluded.version, started_at = excluded.started_at,
             heartbeat_at = excluded.heartbeat_at, reach = excluded.reach",
    )?
    .execute(params![
        holder.id,
        daemon.host,
        daemon.pid,
        daemon.version,
        daemon.started_at,
        now,
        reach
    ])?;
    let expiry = holder.expiry(now);
    conn.prepare_cached(
        "UPDATE items SET lease_expires_at = ?2 WHERE lease_owner = ?1 AND state = 'in_flight'",
    )?
    .execute(params![holder.id, expiry])?;
    conn.prepare_cached("UPDATE batches SET lease_expires_at = ?2 WHERE lease_owner = ?1")?
        .execute(params![holder.id, expiry])?;
    Ok(())
}

/// What the other live daemons (beaten within a lease) reach: each one's keys.
pub fn others_reach(conn: &Conn, holder: &Holder, now: i64) -> Result<Vec<Vec<String>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT reach FROM daemons WHERE id <> ?1 AND heartbeat_at >= ?2 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![holder.id, now - holder.ttl_ms], |r| {
        r.get::<_, String>(0)
    })?;
    let mut out = Vec::new();
    for reach in rows {
        // A row another version wrote oddly counts as reaching nothing.
        out.push(serde_json::from_str(&reach?).unwrap_or_default());
    }
    Ok(out)
}

/// A daemon stopping in order: it is no longer listed. (What it still holds expires as usual; a
/// restart on the same data directory takes it back at once.)
pub fn leave(conn: &Conn, holder: &Holder) -> Result<()> {
    conn.execute("DELETE FROM daemons WHERE id = ?1", [&holder.id])?;
    Ok(())
}

/// What a sweep took back from daemons whose leases expired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Real-time items sent again (their outcome is unknown).
    pub items: usize,
    /// Batches free for another daemon to follow.
    pub batches: usize,
}

/// Takes back what expired leases held: real-time items go back to pending with their attempts
/// unknown; batches are freed for any daemon to claim. Run by every daemon at each heartbeat.
pub fn sweep(conn: &Conn, now: i64) -> Result<Swept> {
    let items = super::items::requeue_in_flight(conn, super::items::Requeue::Expired, now)?;
    let batches = conn
        .prepare_cached(
            "UPDATE batches SET lease_owner = NULL, lease_expires_at = NULL,
                    lease_token = lease_token + 1
             WHERE lease_owner IS NOT NULL AND lease_expires_at < ?1",
        )?
        .execute([now])?;
    Ok(Swept { items, batches })
}

/// A daemon working on the store, as `status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DaemonRow {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    /// Real-time items it holds in flight.
    pub items_held: i64,
    /// Batches it follows.
    pub batches_held: i64,
}

/// The daemons that beat on the store, most recent heartbeat first.
pub fn daemons(conn: &Conn) -> Result<Vec<DaemonRow>> {
    let mut stmt = conn.prepare(
        "SELECT d.id, d.host, d.pid, d.version, d.started_at, d.heartbeat_at,
                (SELECT COUNT(*) FROM items i WHERE i.lease_owner = d.id AND i.state = 'in_flight'),
                (SELECT COUNT(*) FROM batches b WHERE b.lease_owner = d.id)
         FROM daemons d ORDER BY d.heartbeat_at DESC, d.id",
    )?;
    let rows = stmt.query_map((), |r| {
        Ok(DaemonRow {
            id: r.get(0)?,
            host: r.get(1)?,
            pid: r.get(2)?,
            version: r.get(3)?,
            started_at: r.get(4)?,
            heartbeat_at: r.get(5)?,
            items_held: r.get(6)?,
            batches_held: r.get(7)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::Lane;
    use crate::store::items::{self, Requeue};

    fn holder(id: &str) -> Holder {
        Holder {
            id: id.into(),
            ttl_ms: 1_000,
        }
    }

    fn daemon() -> Daemon {
        Daemon {
            host: "h".into(),
            pid: 1,
            version: "v".into(),
            started_at: 0,
        }
    }

    #[test]
    fn a_daemon_is_named_by_its_host_and_its_data_folders_canonical_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data");
        let canonical = std::fs::canonicalize(&data).expect("canonical");
        let roundabout = data.join("..").join("data");
        assert_eq!(
            daemon_id("h", &roundabout),
            format!("h:{}", canonical.display())
        );
        assert_eq!(daemon_id("h", &data), daemon_id("h", &roundabout));
    }

    #[test]
    fn an_expired_lease_is_taken_back_and_its_holder_cannot_record() {
        let conn = crate::store::test_connection();
        let job_id = crate::store::test_empty_job(&conn);
        let line = |id: &str| {
            format!(
                r#"{{"custom_id":"{id}","mode":"realtime","params":{{"model":"m","max_tokens":5,"messages":[{{"role":"user","content":"q"}}]}}}}"#
            )
        };
        let (x, y) = (line("x"), line("y"));
        crate::store::test_insert(&conn, job_id, &[x.as_str(), y.as_str()]);
        let (a, b) = (holder("a"), holder("b"));
        let ready = items::ready_realtime(&conn, 0, 10, &[], &[], &[]).expect("ready");
        let first = items::mark_in_flight(&conn, ready[0].id, Lane::Realtime, (1, 1), None, &a, 0)
            .expect("claim");
        let second = items::mark_in_flight(&conn, ready[1].id, Lane::Realtime, (1, 1), None, &b, 0)
            .expect("claim");
        // b beats, a does not: at 1.5 s only a's lease has expired.
        beat(&conn, &b, &daemon(), &["org-1".into()], 900).expect("beat");
        beat(&conn, &a, &daemon(), &["org-2".into()], 100).expect("beat");
        // a's beat is more than a lease old at 1.5 s: only b counts.
        assert_eq!(
            others_reach(&conn, &holder("c"), 1_500).expect("wants"),
            vec![vec!["org-1".to_owned()]]
        );
        let swept = sweep(&conn, 1_500).expect("sweep");
        assert_eq!(
            swept,
            Swept {
                items: 1,
                batches: 0
            }
        );
        assert!(items::claimable(&conn, first.item_id).expect("state"));
        assert!(!items::claimable(&conn, second.item_id).expect("state"));
        let listed = daemons(&conn).expect("daemons");
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[0].id.as_str(), listed[0].items_held), ("b", 1));
        assert_eq!((listed[1].id.as_str(), listed[1].items_held), ("a", 0));
        // a comes back with its answer: refused, the item stays pending for whoever claims it.
        let lost = items::check_lease(&conn, &first.claim());
        assert!(
            matches!(lost, Err(crate::store::StoreError::LeaseLost)),
            "{lost:?}"
        );
        // A start of b takes its own back at once, before expiry.
        assert_eq!(
            items::requeue_in_flight(&conn, Requeue::StartOf("b"), 1_600).expect("requeue"),
            1
        );
        assert!(items::check_lease(&conn, &second.claim()).is_err());
    }
}
