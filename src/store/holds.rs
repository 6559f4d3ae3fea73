//! SQL for holds (`nightshift pause` / `resume`): a job or a tenant paused. Its pending items are
//! parked out of the lanes' ready indexes (`items.parked = 2`) — those pending now by `hold`, those
//! that become pending later by the statement that makes them so ([`PARK_IF_HELD`], [`Held`]) — so
//! a paused backlog costs the lanes nothing; calls in flight finish, and batches already sent run
//! on.

use std::collections::HashSet;

use crate::store::sql::{Conn, OptionalExtension, params};

use super::Result;

/// The `SET` term of every statement that makes an item pending: parked (2) when a hold covers
/// its job or its tenant, else ready (0).
pub const PARK_IF_HELD: &str = "parked = CASE WHEN EXISTS (SELECT 1 FROM holds h
     WHERE h.job_id = items.job_id OR h.tenant = items.tenant) THEN 2 ELSE 0 END";

/// The holds over a job's new items, read once per intake chunk (in its transaction).
#[derive(Debug, Default)]
pub struct Held {
    job: bool,
    tenants: HashSet<String>,
}

impl Held {
    pub fn of_job(conn: &Conn, job_id: i64) -> Result<Held> {
        let job = conn
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM holds WHERE job_id = ?1)")?
            .query_row([job_id], |r| r.get(0))?;
        let mut stmt = conn.prepare_cached("SELECT tenant FROM holds WHERE tenant IS NOT NULL")?;
        let tenants = stmt
            .query_map((), |r| r.get(0))?
            .collect::<crate::store::Result<HashSet<String>>>()?;
        Ok(Held { job, tenants })
    }

    /// `items.parked` for a new pending item of `tenant`.
    pub fn parked(&self, tenant: &str) -> i64 {
        if self.job || self.tenants.contains(tenant) {
            2
        } else {
            0
        }
    }
}

/// What a hold is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A job, by its id.
    Job(i64),
    Tenant(String),
}

/// A hold, as `status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hold {
    /// The job held, or null for a tenant's hold.
    pub job: Option<String>,
    /// The tenant held, or null for a job's hold.
    pub tenant: Option<String>,
    /// Who paused it.
    pub by: String,
    /// Unix ms.
    pub at: i64,
}

/// Holds `target` (if it is not already: then the first hold stays, and false is returned) and
/// parks its pending items. With `cancel_batches`, its batches under way are flagged for the batch
/// lane to cancel at the API (their requests come back pending, and wait too).
pub fn hold(
    conn: &Conn,
    target: &Target,
    by: &str,
    cancel_batches: bool,
    now: i64,
) -> Result<bool> {
    let (job_id, tenant) = columns(target);
    let inserted = conn.execute(
        "INSERT INTO holds (job_id, tenant, by, at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        params![job_id, tenant, by, now],
    )? == 1;
    // One statement per kind of target, so a job's goes through its index (a tenant has none:
    // that one reads the items once).
    match target {
        Target::Job(id) => conn.execute(
            "UPDATE items SET parked = 2 WHERE job_id = ?1 AND state = 'pending' AND parked = 0",
            [id],
        )?,
        Target::Tenant(t) => conn.execute(
            "UPDATE items SET parked = 2 WHERE tenant = ?1 AND state = 'pending' AND parked = 0",
            [t],
        )?,
    };
    if cancel_batches {
        // Batches the API is processing (one still being created is left to be created: it
        // cannot be canceled before it has an id). Their requests come back `canceled`, go back
        // to pending without using up an attempt, and wait with the rest. A tenant's batches are
        // those holding any of its items: a batch is one job's, and lines of other tenants in it
        // are canceled and sent again too.
        match target {
            Target::Job(id) => conn.execute(
                "UPDATE batches SET cancel_requested = 1, next_action_at = ?2
                 WHERE job_id = ?1 AND api_id IS NOT NULL AND state = 'in_progress'",
                params![id, now],
            )?,
            Target::Tenant(t) => conn.execute(
                "UPDATE batches SET cancel_requested = 1, next_action_at = ?2
                 WHERE api_id IS NOT NULL AND state = 'in_progress'
                   AND EXISTS (SELECT 1 FROM items i WHERE i.batch_id = batches.id AND i.tenant = ?1)",
                params![t, now],
            )?,
        };
    }
    Ok(inserted)
}

/// Lets `target` go: its hold is removed and its parked items are ready again, but for those
/// another hold still covers (the job's tenant, or the tenant's job). Returns false if it was not
/// held.
pub fn release(conn: &Conn, target: &Target) -> Result<bool> {
    let (job_id, tenant) = columns(target);
    let removed = conn.execute(
        "DELETE FROM holds WHERE job_id IS NOT DISTINCT FROM ?1 AND tenant IS NOT DISTINCT FROM ?2",
        params![job_id, tenant],
    )? == 1;
    // Held items are in `items_held`: the job's are a range of it, a tenant's a pass over it
    // (one statement each: an OR of the two would read every item).
    match target {
        Target::Job(id) => conn.execute(
            &format!("UPDATE items SET {PARK_IF_HELD} WHERE job_id = ?1 AND parked = 2"),
            [id],
        )?,
        Target::Tenant(t) => conn.execute(
            &format!("UPDATE items SET {PARK_IF_HELD} WHERE parked = 2 AND tenant = ?1"),
            [t],
        )?,
    };
    Ok(removed)
}

/// Every hold, oldest first.
pub fn list(conn: &Conn) -> Result<Vec<Hold>> {
    let mut stmt = conn.prepare(
        "SELECT j.name, h.tenant, h.by, h.at FROM holds h LEFT JOIN jobs j ON j.id = h.job_id
         ORDER BY h.id",
    )?;
    let rows = stmt.query_map((), |r| {
        Ok(Hold {
            job: r.get(0)?,
            tenant: r.get(1)?,
            by: r.get(2)?,
            at: r.get(3)?,
        })
    })?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// The hold that covers a job: its own, its default tenant's, or that of a tenant some of its
/// lines name and whose items are held now.
pub fn of_job(conn: &Conn, job_id: i64, tenant: &str) -> Result<Option<Hold>> {
    conn.query_row(
        "SELECT j.name, h.tenant, h.by, h.at FROM holds h LEFT JOIN jobs j ON j.id = h.job_id
             WHERE h.job_id = ?1 OR h.tenant = ?2
                OR h.tenant IN (SELECT tenant FROM items WHERE job_id = ?1 AND parked = 2)
             ORDER BY h.id LIMIT 1",
        params![job_id, tenant],
        |r| {
            Ok(Hold {
                job: r.get(0)?,
                tenant: r.get(1)?,
                by: r.get(2)?,
                at: r.get(3)?,
            })
        },
    )
    .optional()
}

fn columns(target: &Target) -> (Option<i64>, Option<&str>) {
    match target {
        Target::Job(id) => (Some(*id), None),
        Target::Tenant(t) => (None, Some(t.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{test_connection, test_job};

    const LINE: &str = r#"{"custom_id":"ID","mode":"realtime","params":{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"q"}]}}"#;

    fn parked(conn: &Conn) -> Vec<i64> {
        conn.prepare("SELECT parked FROM items ORDER BY id")
            .expect("prepare")
            .query_map((), |r| r.get(0))
            .expect("query")
            .collect::<crate::store::Result<_>>()
            .expect("rows")
    }

    #[test]
    fn letting_go_reads_only_held_items() {
        let conn = test_connection();
        for sql in [
            format!("UPDATE items SET {PARK_IF_HELD} WHERE job_id = ?1 AND parked = 2"),
            format!("UPDATE items SET {PARK_IF_HELD} WHERE parked = 2 AND tenant = ?1"),
        ] {
            let plan = crate::store::test_plan(&conn, &sql).join("; ");
            assert!(plan.contains("USING INDEX items_held"), "{sql}: {plan}");
        }
    }

    #[test]
    fn a_held_job_parks_its_pending_items_whatever_makes_them_pending() {
        let conn = test_connection();
        let job = test_job(&conn, &[&LINE.replace("ID", "a"), &LINE.replace("ID", "b")]);
        assert!(hold(&conn, &Target::Job(job), "alice", false, 5).expect("hold"));
        assert!(
            !hold(&conn, &Target::Job(job), "bob", false, 6).expect("hold"),
            "held already"
        );
        assert_eq!(parked(&conn), vec![2, 2]);
        // Items the job gains later (more lines read) are parked as they come.
        crate::store::test_insert(&conn, job, &[&LINE.replace("ID", "c")]);
        assert_eq!(parked(&conn), vec![2, 2, 2]);
        // Each path back to pending parks it again: a failed call, the start's requeue, a batch
        // sending it back, a budget's period rolling over, a retry.
        let a: i64 = conn
            .query_row("SELECT id FROM items WHERE custom_id = 'a'", (), |r| {
                r.get(0)
            })
            .expect("a");
        let send = |conn: &Conn| {
            conn.execute(
                "UPDATE items SET parked = 0, state = 'in_flight', lease_token = 7 WHERE id = ?1",
                [a],
            )
            .expect("send");
        };
        send(&conn);
        crate::store::items::record_outcome(
            &conn,
            &crate::policy::prices::PriceTable::default(),
            &crate::store::items::Claim {
                item_id: a,
                attempt_id: 0,
                lease_token: 7,
            },
            &crate::policy::outcome::AttemptRecord::default(),
            &crate::policy::outcome::ItemUpdate::Retry {
                not_before: 0,
                failed: true,
            },
            9,
        )
        .expect("retry");
        assert_eq!(parked(&conn)[0], 2, "a failed call");
        send(&conn);
        crate::store::items::requeue_in_flight(
            &conn,
            crate::store::items::Requeue::StartOf("test"),
            9,
        )
        .expect("requeue");
        assert_eq!(parked(&conn)[0], 2, "the start's requeue");
        send(&conn);
        crate::store::batches::replan_item(
            &conn,
            a,
            crate::model::state::Lane::Realtime,
            "back",
            true,
            9,
        )
        .expect("replan");
        assert_eq!(parked(&conn)[0], 2, "back from a batch");
        conn.execute(
            "UPDATE items SET parked = 1, not_before = 5 WHERE id = ?1",
            [a],
        )
        .expect("budget");
        crate::store::budget::unpark_due(&conn, 9).expect("unpark");
        assert_eq!(parked(&conn)[0], 2, "a budget's period");
        conn.execute("UPDATE items SET state = 'errored' WHERE id = ?1", [a])
            .expect("end");
        crate::store::retry::reopen_item(&conn, a, "realtime", "retried", 9).expect("reopen");
        assert_eq!(parked(&conn)[0], 2, "a retry");
        // The ready index leaves them out.
        assert!(
            crate::store::items::ready_realtime(&conn, i64::MAX, 10, &[], &[], &[])
                .expect("ready")
                .is_empty()
        );
        let holds = list(&conn).expect("list");
        assert_eq!(holds.len(), 1);
        assert_eq!((holds[0].by.as_str(), holds[0].at), ("alice", 5));
        // A tenant hold over the same items keeps them parked when the job's is let go.
        assert!(hold(&conn, &Target::Tenant("default".into()), "carol", false, 7).expect("hold"));
        assert!(release(&conn, &Target::Job(job)).expect("release"));
        assert_eq!(parked(&conn), vec![2, 2, 2]);
        assert!(release(&conn, &Target::Tenant("default".into())).expect("release"));
        assert_eq!(parked(&conn), vec![0, 0, 0]);
        assert!(
            !release(&conn, &Target::Job(job)).expect("release"),
            "not held"
        );
        assert_eq!(
            crate::store::items::ready_realtime(&conn, i64::MAX, 10, &[], &[], &[])
                .expect("ready")
                .len(),
            3
        );
    }
}
