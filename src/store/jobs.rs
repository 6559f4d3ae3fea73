//! SQL for jobs: creation, intake progress, results progress, listing.

use crate::store::sql::{Conn, OptionalExtension, Row, params};

use super::Result;
use crate::model::job::{Deadline, JobDefaults};

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: i64,
    pub name: String,
    pub source_path: String,
    pub defaults: JobDefaults,
    pub created_at: i64,
    pub ingest_lines: i64,
    pub ingested_at: Option<i64>,
    pub content_hash: Option<String>,
    pub note: Option<String>,
    pub results_bytes: i64,
    pub results_lines: i64,
    pub finished_at: Option<i64>,
    pub ingest_prefix_hash: Option<String>,
    pub canceled_at: Option<i64>,
    /// The daemon (`leases::Holder::id`) taking the file in, then keeping its results file.
    pub taken_in_by: Option<String>,
}

pub struct NewJob {
    pub name: String,
    pub source_path: String,
    pub defaults: JobDefaults,
    pub created_at: i64,
}

const COLUMNS: &str = "id, name, source_path, tenant, priority, mode, deadline, created_at, ingest_lines, \
     ingested_at, content_hash, note, results_bytes, results_lines, finished_at, ingest_prefix_hash, canceled_at, cache, taken_in_by";

fn from_row(row: &Row<'_>) -> crate::store::Result<JobRow> {
    let priority: String = row.get(4)?;
    let mode: String = row.get(5)?;
    let deadline: Option<String> = row.get(6)?;
    Ok(JobRow {
        id: row.get(0)?,
        name: row.get(1)?,
        source_path: row.get(2)?,
        defaults: JobDefaults {
            tenant: row.get(3)?,
            priority: priority
                .parse()
                .unwrap_or(crate::model::job::Priority::Nightly),
            mode: mode.parse().unwrap_or(crate::model::job::Mode::Auto),
            deadline: deadline.and_then(|text| {
                let parsed: Deadline = text.parse().ok()?;
                Some((text, parsed))
            }),
            cache: Some(
                row.get::<_, Option<String>>(17)?
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(crate::model::job::CacheMode::Off),
            ),
        },
        created_at: row.get(7)?,
        ingest_lines: row.get(8)?,
        ingested_at: row.get(9)?,
        content_hash: row.get(10)?,
        note: row.get(11)?,
        results_bytes: row.get(12)?,
        results_lines: row.get(13)?,
        finished_at: row.get(14)?,
        ingest_prefix_hash: row.get(15)?,
        canceled_at: row.get(16)?,
        taken_in_by: row.get(18)?,
    })
}

/// Creates the job, taken in by `taker`; None when a job of that name exists already (another
/// daemon sharing the store created it meanwhile, from its own jobs folder).
pub fn create(conn: &Conn, job: &NewJob, taker: &str) -> Result<Option<JobRow>> {
    let id: Option<i64> = conn
        .query_row(
            "INSERT INTO jobs (name, source_path, tenant, priority, mode, deadline, created_at, cache,
                               taken_in_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (name) DO NOTHING
             RETURNING id",
            params![
                job.name,
                job.source_path,
                job.defaults.tenant,
                job.defaults.priority.as_str(),
                job.defaults.mode.as_str(),
                job.defaults
                    .deadline
                    .as_ref()
                    .map(|(text, _)| text.as_str()),
                job.created_at,
                job.defaults.cache.map(|c| c.as_str()),
                taker,
            ],
            |r| r.get(0),
        )
        .optional()?;
    match id {
        None => Ok(None),
        Some(id) => get(conn, id),
    }
}

/// Takes over an unfinished intake for `holder`: its own, one made before leases, or one whose
/// daemon has not beaten for a lease's length (it died mid-file). False while a live daemon is
/// taking the file in (from its own jobs folder): this one leaves it alone.
pub fn take_intake(
    conn: &Conn,
    job_id: i64,
    holder: &super::leases::Holder,
    now: i64,
) -> Result<bool> {
    let taken = conn.execute(
        "UPDATE jobs SET taken_in_by = ?2
         WHERE id = ?1 AND ingested_at IS NULL
           AND (taken_in_by IS NULL OR taken_in_by = ?2
                OR NOT EXISTS (SELECT 1 FROM daemons d
                               WHERE d.id = jobs.taken_in_by AND d.heartbeat_at >= ?3))",
        params![job_id, holder.id, now - holder.ttl_ms],
    )?;
    Ok(taken == 1)
}

pub fn get(conn: &Conn, id: i64) -> Result<Option<JobRow>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()
}

pub fn find_by_name(conn: &Conn, name: &str) -> Result<Option<JobRow>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM jobs WHERE name = ?1"),
        [name],
        from_row,
    )
    .optional()
}

/// The jobs `status` lists: all but those `nightshift clean` cleared away.
pub fn list(conn: &Conn) -> Result<Vec<JobRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE cleaned_at IS NULL ORDER BY id"
    ))?;
    let rows = stmt.query_map((), from_row)?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// Jobs whose results file is not complete yet.
pub fn unfinished(conn: &Conn) -> Result<Vec<JobRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE finished_at IS NULL ORDER BY id"
    ))?;
    let rows = stmt.query_map((), from_row)?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// [`unfinished`] jobs whose results file `keeper` keeps (or no daemon: made before leases).
pub fn unfinished_kept_by(conn: &Conn, keeper: &str) -> Result<Vec<JobRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM jobs
         WHERE finished_at IS NULL AND (taken_in_by IS NULL OR taken_in_by = ?1) ORDER BY id"
    ))?;
    let rows = stmt.query_map([keeper], from_row)?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// Records how far `taker` has taken the file in; fails (and the chunk's items with it) when
/// another daemon has taken the intake over meanwhile.
pub fn record_intake_progress(
    conn: &Conn,
    job_id: i64,
    taker: &str,
    lines: i64,
    offset: i64,
    prefix_hash: &str,
) -> Result<()> {
    let recorded = conn.execute(
        "UPDATE jobs SET ingest_lines = ?2, ingest_offset = ?3, ingest_prefix_hash = ?4
         WHERE id = ?1 AND taken_in_by IS NOT DISTINCT FROM ?5",
        params![job_id, lines, offset, prefix_hash, taker],
    )?;
    if recorded == 0 {
        return Err(super::StoreError::Invalid(format!(
            "job {job_id}: another daemon took this file's intake over; this one stops taking it in"
        )));
    }
    Ok(())
}

/// Jobs whose intake has not finished.
pub fn ingesting(conn: &Conn) -> Result<Vec<JobRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE ingested_at IS NULL ORDER BY id"
    ))?;
    let rows = stmt.query_map((), from_row)?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// Ends an intake that cannot go on (the file vanished or changed): the lines taken in are the job.
pub fn close_partial_intake(conn: &Conn, name: &str, note: &str, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE jobs SET ingested_at = ?2, note = ?3 WHERE name = ?1 AND ingested_at IS NULL",
        params![name, now, note],
    )?;
    Ok(())
}

pub fn finish_intake(
    conn: &Conn,
    job_id: i64,
    lines: i64,
    hash: &str,
    note: Option<&str>,
    now: i64,
) -> Result<()> {
    conn.execute(
        "UPDATE jobs SET ingest_lines = ?2, ingested_at = ?3, content_hash = ?4, note = ?5 WHERE id = ?1",
        params![job_id, lines, now, hash, note],
    )?;
    Ok(())
}

pub fn record_rejection(conn: &Conn, file: &str, reason: &str, now: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO rejected_files (file_name, reason, at) VALUES (?1, ?2, ?3)",
        params![file, reason, now],
    )?;
    Ok(())
}

/// Files rejected by intake, newest first: (file name, reason, time).
pub fn rejections(conn: &Conn, limit: i64) -> Result<Vec<(String, String, i64)>> {
    let mut stmt =
        conn.prepare("SELECT file_name, reason, at FROM rejected_files ORDER BY id DESC LIMIT ?1")?;
    let rows = stmt.query_map([limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// Marks the job finished if it is fully taken in, every item is final and every result written.
pub fn finish_if_complete(conn: &Conn, job_id: i64, now: i64) -> Result<bool> {
    let changed = conn.execute(
        "UPDATE jobs SET finished_at = ?2
         WHERE id = ?1 AND finished_at IS NULL AND ingested_at IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM items WHERE job_id = ?1 AND state IN ('pending', 'in_flight'))
           AND NOT EXISTS (SELECT 1 FROM results r WHERE r.job_id = ?1 AND r.written = 0)",
        params![job_id, now],
    )?;
    Ok(changed > 0)
}

/// `nightshift clean`: jobs finished at or before `before` leave `status` (their rows stay, for
/// `job`, `item`, the ledger and the metrics). Returns their names.
pub fn clean(conn: &Conn, before: i64, now: i64) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "UPDATE jobs SET cleaned_at = ?2
         WHERE cleaned_at IS NULL AND finished_at IS NOT NULL AND finished_at <= ?1
         RETURNING name",
    )?;
    let rows = stmt.query_map(params![before, now], |r| r.get(0))?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// `nightshift clean --purge`: jobs finished at or before `before` are deleted with every row of
/// theirs (items, calls, batches, results, ledger rows; the tenants' daily spend stays, so
/// budgets are unchanged). Returns their names and source paths, for their files. The cascades
/// of the schema delete the rest: `conn` must have foreign keys on.
pub fn purge(conn: &Conn, before: i64) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at <= ?1
         RETURNING name, source_path",
    )?;
    let rows = stmt.query_map([before], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}
