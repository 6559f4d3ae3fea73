//! SQL for `nightshift retry`: the CLI's request (a row the daemon carries out), and the state
//! change it makes: the chosen final items go back to pending (their calls, ledger rows and
//! earlier result lines kept), and the job is open again with its results file to be written
//! anew, so it holds each custom_id once, with the latest outcome.

use crate::store::sql::{Conn, OptionalExtension, params};

use super::Result;

/// What to retry of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Choice {
    pub errored: bool,
    pub expired: bool,
    /// These custom_ids, whatever their final state.
    pub ids: Option<Vec<String>>,
}

/// A request not yet carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: i64,
    pub job_name: String,
    pub choice: Choice,
}

/// Records a request (`nightshift retry`). Returns its id.
pub fn request(conn: &Conn, job_name: &str, choice: &Choice, now: i64) -> Result<i64> {
    let ids = choice
        .ids
        .as_ref()
        .map(|ids| serde_json::to_string(ids).unwrap_or_else(|_| "[]".into()));
    conn.execute(
        "INSERT INTO retry_requests (job_name, errored, expired, ids, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![job_name, choice.errored, choice.expired, ids, now],
    )?;
    conn.last_insert_rowid()
}

/// What became of a request: None while the daemon has not carried it out.
pub fn outcome(conn: &Conn, request_id: i64) -> Result<Option<String>> {
    conn.query_row(
        "SELECT outcome FROM retry_requests WHERE id = ?1 AND done_at IS NOT NULL",
        [request_id],
        |r| r.get(0),
    )
    .optional()
}

/// Requests not yet carried out, oldest first.
pub fn pending(conn: &Conn) -> Result<Vec<Request>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, job_name, errored, expired, ids FROM retry_requests WHERE done_at IS NULL ORDER BY id",
    )?;
    let rows = stmt.query_map((), |r| {
        let ids: Option<String> = r.get(4)?;
        Ok(Request {
            id: r.get(0)?,
            job_name: r.get(1)?,
            choice: Choice {
                errored: r.get(2)?,
                expired: r.get(3)?,
                ids: ids.and_then(|ids| serde_json::from_str(&ids).ok()),
            },
        })
    })?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// Records what a request came to.
pub fn done(conn: &Conn, request_id: i64, outcome: &str, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE retry_requests SET done_at = ?2, outcome = ?3 WHERE id = ?1",
        params![request_id, now, outcome],
    )?;
    Ok(())
}

/// The job's final items `choice` names that can be sent again (a line errored at intake has no
/// request), and the ids it names that are not such an item of the job.
pub fn candidates(conn: &Conn, job_id: i64, choice: &Choice) -> Result<(Vec<i64>, Vec<String>)> {
    const FINAL: &str =
        "state IN ('succeeded', 'errored', 'expired', 'canceled') AND params IS NOT NULL";
    let mut chosen = Vec::new();
    let mut states = Vec::new();
    if choice.errored {
        states.push("errored");
    }
    if choice.expired {
        states.push("expired");
    }
    for state in states {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT id FROM items WHERE job_id = ?1 AND state = ?2 AND {FINAL} ORDER BY id"
        ))?;
        let ids = stmt.query_map(params![job_id, state], |r| r.get::<_, i64>(0))?;
        chosen.extend(ids.collect::<crate::store::Result<Vec<_>>>()?);
    }
    let mut unknown = Vec::new();
    for custom_id in choice.ids.iter().flatten() {
        let found: Option<i64> = conn
            .prepare_cached(&format!(
                "SELECT id FROM items WHERE job_id = ?1 AND custom_id = ?2 AND {FINAL}"
            ))?
            .query_row(params![job_id, custom_id], |r| r.get(0))
            .optional()?;
        match found {
            Some(id) if !chosen.contains(&id) => chosen.push(id),
            Some(_) => {}
            None => unknown.push(custom_id.clone()),
        }
    }
    Ok((chosen, unknown))
}

/// Sends a final item back to pending in `lane` (the planner's choice): its result line is
/// retired (kept for `nightshift item`), its failures start again; its calls and ledger rows stay.
pub fn reopen_item(conn: &Conn, item_id: i64, lane: &str, reason: &str, now: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO retired_results (item_id, line, retired_at)
         SELECT item_id, line, ?2 FROM results WHERE item_id = ?1",
    )?
    .execute(params![item_id, now])?;
    conn.prepare_cached("DELETE FROM results WHERE item_id = ?1")?
        .execute([item_id])?;
    conn.prepare_cached(&format!(
        "UPDATE items SET state = 'pending', batch_id = NULL, failures = 0, not_before = 0,
                error = NULL, lane = ?2, lane_reason = ?3, updated_at = ?4, {}
         WHERE id = ?1",
        super::holds::PARK_IF_HELD
    ))?
    .execute(params![item_id, lane, reason, now])?;
    Ok(())
}

/// The job is open again: not finished, and its results file to be written anew from the store
/// (the results writer cuts it back and writes each remaining line, then the new outcomes).
pub fn reopen_job(conn: &Conn, job_id: i64) -> Result<()> {
    // Running again: back in `status` if `clean` had cleared it.
    conn.execute(
        "UPDATE jobs SET finished_at = NULL, cleaned_at = NULL WHERE id = ?1",
        [job_id],
    )?;
    super::results::reset(conn, job_id)
}
