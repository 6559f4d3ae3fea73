//! SQL for result lines (`results`): each item's line, appended once in the transaction that
//! makes the item final, and which of them the job's results file holds (`written`). The results
//! writer (`lanes::results`) of the daemon that keeps the job's file reads the lines not written
//! yet and marks them written with the file's new length. (A flag, not a cursor: several daemons
//! sharing a store commit lines out of `seq` order.)

use crate::store::sql::{Conn, OptionalExtension, params};

use super::Result;

/// The result line of an item that just became final. The item may have only one: a second is a
/// constraint error (the caller's transition ran twice), never a second line in the file.
pub fn append(conn: &Conn, item_id: i64, line: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO results (job_id, item_id, line) SELECT job_id, id, ?2 FROM items WHERE id = ?1",
    )?
    .execute(params![item_id, line])?;
    Ok(())
}

/// As [`append`], for a caller that knows the item's job.
pub fn append_to(conn: &Conn, job_id: i64, item_id: i64, line: &str) -> Result<()> {
    append_all(conn, &[(job_id, item_id, line)])
}

/// As [`append_to`], for many items at once (a chunk of a batch's results), in the order given:
/// (job, item, line) each.
pub fn append_all(conn: &Conn, lines: &[(i64, i64, &str)]) -> Result<()> {
    let sql = |rows| {
        let values = super::value_rows(rows, 3, 0);
        format!("INSERT INTO results (job_id, item_id, line) VALUES {values}")
    };
    super::in_groups(lines, sql, |sql, group| {
        let mut values: Vec<&dyn crate::store::sql::ToValue> = Vec::with_capacity(group.len() * 3);
        for (job_id, item_id, line) in group {
            values.extend([job_id as &dyn crate::store::sql::ToValue, item_id, line]);
        }
        conn.prepare_cached(sql)?
            .execute(crate::store::sql::params_from_iter(values))?;
        Ok(())
    })
}

/// The result line of an item, if it has one.
pub fn line_of(conn: &Conn, item_id: i64) -> Result<Option<String>> {
    conn.prepare_cached("SELECT line FROM results WHERE item_id = ?1")?
        .query_row([item_id], |r| r.get(0))
        .optional()
}

/// The result lines an item had before it was retried, oldest first: (line, retired at).
pub fn retired_of(conn: &Conn, item_id: i64) -> Result<Vec<(String, i64)>> {
    let mut stmt = conn
        .prepare("SELECT line, retired_at FROM retired_results WHERE item_id = ?1 ORDER BY id")?;
    let rows = stmt.query_map([item_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// A job's result lines in `seq` order after `after`, at most `limit`: (seq, line) each. What
/// `nightshift results` writes, page by page, from any host.
pub fn page(conn: &Conn, job_id: i64, after: i64, limit: i64) -> Result<Vec<(i64, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, line FROM results WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![job_id, after, limit], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    rows.collect()
}

/// A result line waiting to be appended to its job's file.
#[derive(Debug, Clone)]
pub struct Unwritten {
    pub job_id: i64,
    pub job_name: String,
    /// The bytes of the job's results file committed as of this read.
    pub committed_bytes: i64,
    /// The job's results epoch as of this read (see [`reset`]).
    pub epoch: i64,
    pub seq: i64,
    pub line: String,
}

/// CROSS JOIN keeps the jobs outside in SQLite: each job's lines are then a range of the index
/// of unwritten lines, never a scan of every line ever written. `{join}` is [`join_in_order`].
/// The jobs whose file `?2` keeps (or no daemon: made before leases).
const UNWRITTEN: &str = "SELECT r.job_id, j.name, r.seq, r.line, j.results_bytes, j.results_epoch
     FROM jobs j {join} results r ON r.job_id = j.id AND r.written = 0
     WHERE j.finished_at IS NULL AND (j.taken_in_by IS NULL OR j.taken_in_by = ?2)
     ORDER BY j.id, r.seq LIMIT ?1";

/// SQLite's `CROSS JOIN ... ON` (a join in the order written); PostgreSQL plans its own.
fn join_in_order(conn: &Conn) -> &'static str {
    match conn.dialect() {
        crate::store::sql::Dialect::Sqlite => "CROSS JOIN",
        crate::store::sql::Dialect::Postgres => "JOIN",
    }
}

/// Lines not in their job's file yet, of the jobs whose file `keeper` keeps, in job and `seq`
/// order: at most `max_lines`, and no more than `max_bytes` of them (but always at least one).
pub fn unwritten(
    conn: &Conn,
    keeper: &str,
    max_lines: i64,
    max_bytes: usize,
) -> Result<Vec<Unwritten>> {
    let mut stmt = conn.prepare_cached(&UNWRITTEN.replace("{join}", join_in_order(conn)))?;
    let rows = stmt.query_map(params![max_lines, keeper], |r| {
        Ok(Unwritten {
            job_id: r.get(0)?,
            job_name: r.get(1)?,
            seq: r.get(2)?,
            line: r.get(3)?,
            committed_bytes: r.get(4)?,
            epoch: r.get(5)?,
        })
    })?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let row = row?;
        if !out.is_empty() && bytes + row.line.len() > max_bytes {
            break;
        }
        bytes += row.line.len();
        out.push(row);
    }
    Ok(out)
}

/// The job's file now holds the lines `seqs` too: `bytes` more bytes than the `committed` bytes
/// they were appended after, in results `epoch`. Recorded only if the job's file is still at that
/// length and epoch in the store: a reset meanwhile (a retry, or another daemon adopting the
/// file) wins, and the next round cuts the file back and writes it again. Returns whether it was
/// recorded.
pub fn mark_written(
    conn: &Conn,
    job_id: i64,
    seqs: &[i64],
    (committed, epoch): (i64, i64),
    bytes: i64,
) -> Result<bool> {
    let moved = conn
        .prepare_cached(
            "UPDATE jobs SET results_bytes = results_bytes + ?2, results_lines = results_lines + ?3
             WHERE id = ?1 AND results_bytes = ?4 AND results_epoch = ?5",
        )?
        .execute(params![job_id, bytes, seqs.len() as i64, committed, epoch])?;
    if moved != 1 {
        return Ok(false);
    }
    let sql = |n| {
        let list = (0..n)
            .map(|i| format!("?{}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        format!("UPDATE results SET written = 1 WHERE job_id = ?1 AND seq IN ({list})")
    };
    super::in_groups(seqs, sql, |sql, group| {
        let mut values: Vec<&dyn crate::store::sql::ToValue> = vec![&job_id];
        values.extend(group.iter().map(|s| s as &dyn crate::store::sql::ToValue));
        conn.prepare_cached(sql)?
            .execute(crate::store::sql::params_from_iter(values))?;
        Ok(())
    })?;
    Ok(true)
}

/// The results file is not what was recorded (a crash left it short, or it was deleted,
/// truncated or replaced), or a retry changed its lines: every line is to be written again, from
/// the start, in a new epoch (what a writer appended from the old one is not recorded).
pub fn reset(conn: &Conn, job_id: i64) -> Result<()> {
    conn.execute(
        "UPDATE jobs SET results_bytes = 0, results_lines = 0, results_epoch = results_epoch + 1
         WHERE id = ?1",
        [job_id],
    )?;
    conn.execute(
        "UPDATE results SET written = 0 WHERE job_id = ?1 AND written = 1",
        [job_id],
    )?;
    Ok(())
}

/// Jobs taken in (and their files kept) by daemons that stopped beating a lease's length ago
/// become `holder`'s: their results files are written again, in full, under this daemon's
/// `data_dir`. Returns their names.
pub fn adopt_orphans(conn: &Conn, holder: &super::leases::Holder, now: i64) -> Result<Vec<String>> {
    let adopted: Vec<(i64, String)> = conn
        .prepare_cached(
            "UPDATE jobs SET taken_in_by = ?1
             WHERE finished_at IS NULL AND ingested_at IS NOT NULL
               AND taken_in_by IS NOT NULL AND taken_in_by <> ?1
               AND NOT EXISTS (SELECT 1 FROM daemons d
                               WHERE d.id = jobs.taken_in_by AND d.heartbeat_at >= ?2)
             RETURNING id, name",
        )?
        .query_map(params![holder.id, now - holder.ttl_ms], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_>>()?;
    for (id, _) in &adopted {
        reset(conn, *id)?;
    }
    Ok(adopted.into_iter().map(|(_, name)| name).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_before_a_reset_are_not_recorded_written_after_it() {
        let conn = crate::store::test_connection();
        let job = crate::store::test_job(
            &conn,
            &[
                r#"{"custom_id":"a","params":{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"q"}]}}"#,
            ],
        );
        let item: i64 = conn
            .query_row("SELECT id FROM items", (), |r| r.get(0))
            .expect("item");
        append_to(&conn, job, item, "{\"line\":1}").expect("append");
        let read = unwritten(&conn, "test", 10, 1 << 20).expect("unwritten");
        let (seq, committed, epoch) = (read[0].seq, read[0].committed_bytes, read[0].epoch);
        assert_eq!((committed, epoch), (0, 0));
        // A retry resets the file while the writer holds those lines: the length is still 0, but
        // the epoch moved, so what the writer appended is not recorded (it is cut and written
        // again).
        reset(&conn, job).expect("reset");
        assert!(!mark_written(&conn, job, &[seq], (committed, epoch), 12).expect("mark"));
        let read = unwritten(&conn, "test", 10, 1 << 20).expect("unwritten");
        assert_eq!(read[0].epoch, 1);
        assert!(mark_written(&conn, job, &[seq], (0, 1), 12).expect("mark"));
        assert!(
            unwritten(&conn, "test", 10, 1 << 20)
                .expect("unwritten")
                .is_empty()
        );
        // Another daemon's job is not this writer's to write.
        assert!(
            unwritten(&conn, "other", 10, 1 << 20)
                .expect("unwritten")
                .is_empty()
        );
        reset(&conn, job).expect("reset");
        assert_eq!(
            unwritten(&conn, "test", 10, 1 << 20)
                .expect("unwritten")
                .len(),
            1
        );
        assert!(
            unwritten(&conn, "other", 10, 1 << 20)
                .expect("unwritten")
                .is_empty()
        );
    }

    #[test]
    fn the_writer_reads_each_job_past_its_cursor_not_every_line_ever_written() {
        let conn = crate::store::test_connection();
        let plan =
            crate::store::test_plan(&conn, &UNWRITTEN.replace("{join}", join_in_order(&conn)));
        assert!(
            plan.iter()
                .any(|step| step.contains("SEARCH r USING INDEX results_unwritten (job_id=?)")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "{plan:?}"
        );
    }
}
