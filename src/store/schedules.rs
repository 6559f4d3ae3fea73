//! SQL for recurring jobs (`schedules`; see `crate::policy::cron`).

use crate::store::sql::{Conn, Row, params};

use super::Result;

/// A registered schedule.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScheduleRow {
    pub name: String,
    pub expr: String,
    pub timezone: Option<String>,
    pub template_path: String,
    #[serde(skip)]
    pub defaults_toml: String,
    /// Unix ms; None: never fires again.
    pub next_run_at: Option<i64>,
    pub last_run_at: Option<i64>,
    pub last_job: Option<String>,
    pub runs: i64,
}

const COLUMNS: &str =
    "name, expr, timezone, template_path, defaults_toml, next_run_at, last_run_at, last_job, runs";

fn row(r: &Row<'_>) -> crate::store::Result<ScheduleRow> {
    Ok(ScheduleRow {
        name: r.get(0)?,
        expr: r.get(1)?,
        timezone: r.get(2)?,
        template_path: r.get(3)?,
        defaults_toml: r.get(4)?,
        next_run_at: r.get(5)?,
        last_run_at: r.get(6)?,
        last_job: r.get(7)?,
        runs: r.get(8)?,
    })
}

/// Registers a schedule, or replaces the one of that name (a new template, a new expression).
pub fn upsert(conn: &Conn, s: &ScheduleRow, now: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO schedules (name, expr, timezone, template_path, defaults_toml, next_run_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
         ON CONFLICT (name) DO UPDATE SET expr = excluded.expr, timezone = excluded.timezone,
             template_path = excluded.template_path, defaults_toml = excluded.defaults_toml,
             next_run_at = excluded.next_run_at, updated_at = excluded.updated_at",
        params![s.name, s.expr, s.timezone, s.template_path, s.defaults_toml, s.next_run_at, now],
    )?;
    Ok(())
}

/// Schedules whose next fire time has come.
pub fn due(conn: &Conn, now: i64) -> Result<Vec<ScheduleRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE next_run_at IS NOT NULL AND next_run_at <= ?1 ORDER BY next_run_at, name"
    ))?;
    let rows = stmt.query_map([now], row)?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

pub fn list(conn: &Conn) -> Result<Vec<ScheduleRow>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM schedules ORDER BY name"))?;
    let rows = stmt.query_map((), row)?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// Records a run and the next fire time.
pub fn record_run(conn: &Conn, name: &str, job: &str, now: i64, next: Option<i64>) -> Result<()> {
    conn.execute(
        "UPDATE schedules SET last_run_at = ?3, last_job = ?2, runs = runs + 1, next_run_at = ?4,
                updated_at = ?3
         WHERE name = ?1",
        params![name, job, now, next],
    )?;
    Ok(())
}

/// Removes a schedule (its runs already taken in stay jobs). Returns whether there was one.
pub fn remove(conn: &Conn, name: &str) -> Result<bool> {
    Ok(conn.execute("DELETE FROM schedules WHERE name = ?1", [name])? > 0)
}
