//! SQL for result lines (`results`): each item's line, appended once in the transaction that
//! makes the item final, and the job's cursor (`jobs.results_seq`) up to which its results file
//! holds them. The results writer (`lanes::results`) reads past the cursor and moves it.

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
/// past its cursor, never a scan of every line ever written. `{join}` is [`join_in_order`].
const UNWRITTEN: &str = "SELECT r.job_id, j.name, r.seq, r.line, j.results_bytes, j.results_epoch
     FROM jobs j {join} results r ON r.job_id = j.id AND r.seq > j.results_seq
     WHERE j.finished_at IS NULL
     ORDER BY j.id, r.seq LIMIT ?1";

/// SQLite's `CROSS JOIN ... ON` (a join in the order written); PostgreSQL plans its own.
fn join_in_order(conn: &Conn) -> &'static str {
    match conn.dialect() {
        crate::store::sql::Dialect::Sqlite => "CROSS JOIN",
        crate::store::sql::Dialect::Postgres => "JOIN",
    }
}

/// Lines past their job's cursor, in job and file order: at most `max_lines`, and no more than
/// `max_bytes` of them (but always at least one).
pub fn unwritten(conn: &Conn, max_lines: i64, max_bytes: usize) -> Result<Vec<Unwritten>> {
    let mut stmt = conn.prepare_cached(&UNWRITTEN.replace("{join}", join_in_order(conn)))?;
    let rows = stmt.query_map([max_lines], |r| {
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

/// The job's file now holds its lines up to `seq`: `lines` more lines, `bytes` more bytes than
/// the `committed` bytes they were appended after, in results `epoch`. Recorded only if the job's
/// file is still at that length and epoch in the store: a reset meanwhile (a retry) wins, and the
/// next round cuts the file back and writes it again. Returns whether it was recorded.
pub fn mark_written(
    conn: &Conn,
    job_id: i64,
    seq: i64,
    (committed, epoch): (i64, i64),
    bytes: i64,
    lines: i64,
) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "UPDATE jobs SET results_seq = ?2, results_bytes = results_bytes + ?3, results_lines = results_lines + ?4
             WHERE id = ?1 AND results_bytes = ?5 AND results_epoch = ?6",
        )?
        .execute(params![job_id, seq, bytes, lines, committed, epoch])?
        == 1)
}

/// The results file is not what was recorded (a crash left it short, or it was deleted,
/// truncated or replaced), or a retry changed its lines: every line is to be written again, from
/// the start, in a new epoch (what a writer appended from the old one is not recorded).
pub fn reset(conn: &Conn, job_id: i64) -> Result<()> {
    conn.execute(
        "UPDATE jobs SET results_seq = 0, results_bytes = 0, results_lines = 0,
                results_epoch = results_epoch + 1
         WHERE id = ?1",
        [job_id],
    )?;
    Ok(())
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
        let read = unwritten(&conn, 10, 1 << 20).expect("unwritten");
        let (seq, committed, epoch) = (read[0].seq, read[0].committed_bytes, read[0].epoch);
        assert_eq!((committed, epoch), (0, 0));
        // A retry resets the file while the writer holds those lines: the length is still 0, but
        // the epoch moved, so what the writer appended is not recorded (it is cut and written
        // again).
        reset(&conn, job).expect("reset");
        assert!(!mark_written(&conn, job, seq, (committed, epoch), 12, 1).expect("mark"));
        let read = unwritten(&conn, 10, 1 << 20).expect("unwritten");
        assert_eq!(read[0].epoch, 1);
        assert!(mark_written(&conn, job, seq, (0, 1), 12, 1).expect("mark"));
    }

    #[test]
    fn the_writer_reads_each_job_past_its_cursor_not_every_line_ever_written() {
        let conn = crate::store::test_connection();
        let plan =
            crate::store::test_plan(&conn, &UNWRITTEN.replace("{join}", join_in_order(&conn)));
        assert!(
            plan.iter()
                .any(|step| step.contains("SEARCH r USING INDEX results_job (job_id=? AND seq>?)")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "{plan:?}"
        );
    }
}
