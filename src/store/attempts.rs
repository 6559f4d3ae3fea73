//! Read queries over the `attempts` table (one row per call sent).

use crate::store::sql::Conn;

use super::Result;

/// What the calls of one job came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AttemptSummary {
    /// Calls sent (or about to be).
    pub calls: u64,
    /// Answers 429 (rate limited).
    pub rate_limited: u64,
    /// Answers 5xx/529 and connection errors before sending.
    pub retryable: u64,
    /// Calls whose outcome was unknown (no answer after sending; a crash mid-call). Their items were
    /// sent again, so the API may have run them twice.
    pub unknown: u64,
    /// Calls refused because the account is blocked (key refused, spend cap, usage limit).
    pub blocked: u64,
    /// Batch items that came back expired.
    pub expired: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

pub fn summary(conn: &Conn, job_id: i64) -> Result<AttemptSummary> {
    conn.query_row(
        "SELECT COUNT(*),
                COALESCE(SUM(CASE WHEN a.outcome = 'rate_limited' THEN 1 ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN a.outcome IN ('retryable', 'not_sent') THEN 1 ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN a.outcome = 'unknown' THEN 1 ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN a.outcome = 'blocked' THEN 1 ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN a.outcome = 'expired' THEN 1 ELSE 0 END), 0),
                COALESCE(SUM(a.input_tokens), 0),
                COALESCE(SUM(a.output_tokens), 0)
         FROM attempts a JOIN items i ON i.id = a.item_id WHERE i.job_id = ?1",
        [job_id],
        |r| {
            Ok(AttemptSummary {
                calls: r.get::<_, i64>(0)? as u64,
                rate_limited: r.get::<_, i64>(1)? as u64,
                retryable: r.get::<_, i64>(2)? as u64,
                unknown: r.get::<_, i64>(3)? as u64,
                blocked: r.get::<_, i64>(4)? as u64,
                expired: r.get::<_, i64>(5)? as u64,
                input_tokens: r.get::<_, i64>(6)? as u64,
                output_tokens: r.get::<_, i64>(7)? as u64,
            })
        },
    )
}

/// Calls of a job whose outcome was unknown: (custom_id, attempt, error).
pub fn unknown_outcomes(
    conn: &Conn,
    job_id: i64,
    limit: i64,
) -> Result<Vec<(String, i64, String)>> {
    let mut stmt = conn.prepare(
        "SELECT COALESCE(i.custom_id, ''), a.attempt, COALESCE(a.error, '')
         FROM attempts a JOIN items i ON i.id = a.item_id
         WHERE i.job_id = ?1 AND a.outcome = 'unknown' ORDER BY a.id LIMIT ?2",
    )?;
    let rows = stmt.query_map(crate::store::sql::params![job_id, limit], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// Cost of a job's billed calls in USD: (as run, had every call gone real time, unpriced calls).
/// Batch results are billed at half price; errored, expired and canceled batch items not at all.
pub fn cost(
    conn: &Conn,
    prices: &crate::policy::prices::PriceTable,
    job_id: i64,
) -> Result<(f64, f64, u64)> {
    let mut stmt = conn.prepare(
        "SELECT a.model, a.lane, COALESCE(a.input_tokens, 0), COALESCE(a.output_tokens, 0)
         FROM attempts a JOIN items i ON i.id = a.item_id
         WHERE i.job_id = ?1 AND a.outcome = 'succeeded'",
    )?;
    let rows = stmt.query_map([job_id], |r| {
        Ok((
            r.get::<_, Option<String>>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let (mut actual, mut realtime, mut unpriced) = (0.0, 0.0, 0u64);
    for row in rows {
        let (model, lane, input, output) = row?;
        let model = model.unwrap_or_default();
        let (input, output) = (input as u64, output as u64);
        match (
            prices.cost(&model, input, output, lane == "batch"),
            prices.cost(&model, input, output, false),
        ) {
            (Some(a), Some(r)) => {
                actual += a;
                realtime += r;
            }
            _ => unpriced += 1,
        }
    }
    Ok((actual, realtime, unpriced))
}

/// One call of an item, as `nightshift item` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Call {
    pub attempt: i64,
    pub lane: String,
    /// The route it went on (a batch item's: its batch's route).
    pub route: Option<String>,
    pub model: Option<String>,
    /// Unix ms.
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// succeeded, rate_limited, retryable, fatal, unknown, not_sent, blocked, expired, canceled…;
    /// null while in flight.
    pub outcome: Option<String>,
    pub http_status: Option<i64>,
    /// The API's request-id (for a batch: the batch's id).
    pub request_id: Option<String>,
    pub retry_after_ms: Option<i64>,
    pub error: Option<String>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
}

/// Every call of an item, first first.
pub fn of_item(conn: &Conn, item_id: i64) -> Result<Vec<Call>> {
    let mut stmt = conn.prepare(
        "SELECT a.attempt, a.lane, a.model, a.started_at, a.finished_at, a.outcome, a.http_status,
                a.request_id, a.retry_after_ms, a.error, a.input_tokens, a.output_tokens,
                COALESCE(a.route, (SELECT b.route FROM batches b WHERE b.api_id = a.request_id))
         FROM attempts a WHERE a.item_id = ?1 ORDER BY a.id",
    )?;
    let rows = stmt.query_map([item_id], |r| {
        Ok(Call {
            attempt: r.get(0)?,
            lane: r.get(1)?,
            model: r.get(2)?,
            started_at: r.get(3)?,
            finished_at: r.get(4)?,
            outcome: r.get(5)?,
            http_status: r.get(6)?,
            request_id: r.get(7)?,
            retry_after_ms: r.get(8)?,
            error: r.get(9)?,
            input_tokens: r.get(10)?,
            output_tokens: r.get(11)?,
            route: r.get(12)?,
        })
    })?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}
