//! SQL for what the daemon publishes to the CLI (`daemon_facts`) and the sums the metrics
//! endpoint shows.

use crate::store::sql::{Conn, OptionalExtension, params};

use super::Result;
use super::ledger::Sums;

/// The key of fact `name` of the daemon `daemon` (its `leases` id): daemons sharing a store
/// each keep their own.
fn scoped(daemon: &str, name: &str) -> String {
    format!("{name}@{daemon}")
}

/// Records fact `name` of the running daemon `daemon` (e.g. `metrics_url`).
pub fn set(conn: &Conn, daemon: &str, name: &str, value: &str, now: i64) -> Result<()> {
    let key = scoped(daemon, name);
    conn.execute(
        "INSERT INTO daemon_facts (key, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        params![key, value, now],
    )?;
    Ok(())
}

pub fn clear(conn: &Conn, daemon: &str, name: &str) -> Result<()> {
    conn.execute(
        "DELETE FROM daemon_facts WHERE key = ?1",
        [scoped(daemon, name)],
    )?;
    Ok(())
}

pub fn get(conn: &Conn, daemon: &str, name: &str) -> Result<Option<String>> {
    conn.query_row(
        "SELECT value FROM daemon_facts WHERE key = ?1",
        [scoped(daemon, name)],
        |r| r.get(0),
    )
    .optional()
}

/// (label, count) rows of a `GROUP BY` query.
fn counted(conn: &Conn, sql: &str) -> Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map((), |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// Items by state, over all jobs.
pub fn items_by_state(conn: &Conn) -> Result<Vec<(String, i64)>> {
    counted(
        conn,
        "SELECT state, COUNT(*) FROM items GROUP BY state ORDER BY state",
    )
}

/// Batches by state (`submitting`, the API's `in_progress` / `canceling` / `ended`, `failed`).
pub fn batches_by_state(conn: &Conn) -> Result<Vec<(String, i64)>> {
    counted(
        conn,
        "SELECT state, COUNT(*) FROM batches GROUP BY state ORDER BY state",
    )
}

/// A tenant's billed totals over the whole ledger, from the daily rollups (cheap however long the
/// ledger). The rollups do not keep unpriced calls and retries of unknown outcomes apart: those
/// two sums stay 0 here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantTotals {
    pub tenant: String,
    pub totals: Sums,
}

/// Per tenant, from the daily rollups.
pub fn tenant_totals(conn: &Conn) -> Result<Vec<TenantTotals>> {
    let mut stmt = conn.prepare(
        "SELECT tenant, SUM(requests), SUM(input_tokens), SUM(output_tokens),
                SUM(cache_creation_input_tokens), SUM(cache_read_input_tokens), SUM(spent_micro_usd),
                SUM(cache_saved_micro_usd)
         FROM tenant_days GROUP BY tenant ORDER BY tenant",
    )?;
    let rows = stmt.query_map((), |r| {
        Ok(TenantTotals {
            tenant: r.get(0)?,
            totals: Sums::billed_columns(r, 1)?,
        })
    })?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}
