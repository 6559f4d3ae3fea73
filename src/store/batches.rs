//! SQL for the batch lane: waiting items, the create intent and its id, polling, applying results.

use crate::store::sql::{Conn, OptionalExtension, Row, params};

use super::Result;
use crate::model::batch::{ApiState, BatchCounts};
use crate::model::state::{BatchState, ItemState, Lane};
use crate::policy::outcome::AttemptRecord;
use crate::policy::planner;

/// Batch turnarounds (creation to end, ms) of the most recent ended batches.
pub fn turnaround_ms(conn: &Conn) -> Result<i64> {
    let mut stmt = conn.prepare_cached(
        "SELECT ended_at - api_created_at FROM batches
         WHERE ended_at IS NOT NULL AND api_created_at IS NOT NULL AND cancel_requested = 0
         ORDER BY id DESC LIMIT 100",
    )?;
    let samples = stmt
        .query_map((), |r| r.get::<_, i64>(0))?
        .collect::<crate::store::Result<Vec<_>>>()?;
    Ok(planner::turnaround_p95(samples))
}

/// A job with items waiting to be packed into a batch.
#[derive(Debug, Clone)]
pub struct WaitingJob {
    pub job_id: i64,
    pub name: String,
    /// Its file is fully read: no more items will come.
    pub ingested: bool,
    pub waiting: i64,
    /// When the longest-waiting item became ready (ms).
    pub oldest_at: i64,
}

/// Jobs with batch items ready to pack (not held back until `not_before`, nor of a priority class
/// whose time window is closed: `closed_ranks`). `waiting` is counted up to `cap` (a full batch
/// is all the lane needs to know), so each round costs index seeks, not a pass over a large
/// backlog. `oldest_at` is when the first waiting item of each class (in line order) was last
/// changed.
pub fn waiting_jobs(
    conn: &Conn,
    now: i64,
    closed_ranks: &[i64],
    cap: i64,
) -> Result<Vec<WaitingJob>> {
    let mut jobs = conn.prepare_cached(
        "SELECT id, name, ingested_at IS NOT NULL FROM jobs
         WHERE canceled_at IS NULL AND finished_at IS NULL ORDER BY id",
    )?;
    let jobs = jobs
        .query_map((), |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get(2)?))
        })?
        .collect::<crate::store::Result<Vec<_>>>()?;
    const READY: &str = "job_id = ?1 AND priority = ?2 AND state = 'pending' AND lane = 'batch'
                         AND parked = 0 AND not_before <= ?3";
    let mut count = conn.prepare_cached(&format!(
        "SELECT COUNT(*) FROM (SELECT 1 FROM items WHERE {READY} LIMIT ?4) AS ready"
    ))?;
    let mut first = conn.prepare_cached(&format!(
        "SELECT updated_at FROM items WHERE {READY} ORDER BY id LIMIT 1"
    ))?;
    let mut out = Vec::new();
    for (job_id, name, ingested) in jobs {
        let (mut waiting, mut oldest_at) = (0i64, i64::MAX);
        for rank in crate::policy::window::open_ranks(closed_ranks) {
            let n: i64 = count.query_row(params![job_id, rank, now, cap], |r| r.get(0))?;
            if n > 0 {
                waiting += n;
                let at: i64 = first.query_row(params![job_id, rank, now], |r| r.get(0))?;
                oldest_at = oldest_at.min(at);
            }
        }
        if waiting > 0 {
            out.push(WaitingJob {
                job_id,
                name,
                ingested,
                waiting: waiting.min(cap),
                oldest_at,
            });
        }
    }
    Ok(out)
}

/// The requests of a batch, for the create call: (custom_id, params).
pub fn requests(conn: &Conn, batch_id: i64) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT custom_id, params FROM items WHERE batch_id = ?1 AND state = 'in_flight' ORDER BY id",
    )?;
    let rows = stmt.query_map([batch_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// A batch as stored.
#[derive(Debug, Clone)]
pub struct BatchRow {
    pub id: i64,
    pub job_id: i64,
    pub job_name: String,
    pub api_id: Option<String>,
    pub state: BatchState,
    pub request_count: i64,
    pub intent_at: i64,
    pub api_created_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub counts: BatchCounts,
    pub create_unknown: bool,
    pub create_sent_at: Option<i64>,
    pub refusals: i64,
    pub next_action_at: i64,
    pub poll_interval_ms: i64,
    pub results_applied_at: Option<i64>,
    pub cancel_requested: bool,
    pub error: Option<String>,
    /// The route it was packed for and is created on: every later call for it (poll, results,
    /// cancel, the list searched to reconcile it) goes with that route's key.
    pub route: String,
}

const COLUMNS: &str = "b.id, b.job_id, j.name, b.api_id, b.state, b.request_count, b.intent_at, b.api_created_at, \
     b.ended_at, b.processing, b.succeeded, b.errored, b.canceled, b.expired, b.create_unknown, \
     b.next_action_at, b.poll_interval_ms, b.results_applied_at, b.cancel_requested, b.error, \
     b.create_sent_at, b.refusals, b.route";

fn from_row(r: &Row<'_>) -> crate::store::Result<BatchRow> {
    Ok(BatchRow {
        id: r.get(0)?,
        job_id: r.get(1)?,
        job_name: r.get(2)?,
        api_id: r.get(3)?,
        state: BatchState::parse(&r.get::<_, String>(4)?),
        request_count: r.get(5)?,
        intent_at: r.get(6)?,
        api_created_at: r.get(7)?,
        ended_at: r.get(8)?,
        counts: BatchCounts {
            processing: r.get(9)?,
            succeeded: r.get(10)?,
            errored: r.get(11)?,
            canceled: r.get(12)?,
            expired: r.get(13)?,
        },
        create_unknown: r.get(14)?,
        next_action_at: r.get(15)?,
        poll_interval_ms: r.get(16)?,
        results_applied_at: r.get(17)?,
        cancel_requested: r.get(18)?,
        error: r.get(19)?,
        create_sent_at: r.get(20)?,
        refusals: r.get(21)?,
        route: r.get(22)?,
    })
}

/// Batches with something to do (create, reconcile, poll, apply results).
pub fn open(conn: &Conn) -> Result<Vec<BatchRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM batches b JOIN jobs j ON j.id = b.job_id
         WHERE b.results_applied_at IS NULL AND b.state <> 'failed' ORDER BY b.next_action_at, b.id"
    ))?;
    let rows = stmt.query_map((), from_row)?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// The open batches `holder` follows, after claiming those no daemon holds: batches whose
/// daemon's lease expired (freed by a sweep) or made before leases. A batch taken over is due
/// now: nobody knows what happened while its daemon was away (a create whose answer was lost is
/// reconciled, never sent again).
pub fn claim_open(conn: &Conn, holder: &super::leases::Holder, now: i64) -> Result<Vec<BatchRow>> {
    let taken = conn
        .prepare_cached(
            "UPDATE batches SET lease_owner = ?1, lease_expires_at = ?2, lease_token = lease_token + 1,
                    next_action_at = CASE WHEN next_action_at > ?3 THEN ?3 ELSE next_action_at END
             WHERE lease_owner IS NULL AND results_applied_at IS NULL AND state <> 'failed'",
        )?
        .execute(params![holder.id, holder.expiry(now), now])?;
    if taken > 0 {
        tracing::info!(batches = taken, "took over batches no daemon holds");
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM batches b JOIN jobs j ON j.id = b.job_id
         WHERE b.results_applied_at IS NULL AND b.state <> 'failed' AND b.lease_owner = ?1
         ORDER BY b.next_action_at, b.id"
    ))?;
    let rows = stmt.query_map([&holder.id], from_row)?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

pub fn by_job(conn: &Conn, job_id: i64) -> Result<Vec<BatchRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM batches b JOIN jobs j ON j.id = b.job_id WHERE b.job_id = ?1 ORDER BY b.id"
    ))?;
    let rows = stmt.query_map([job_id], from_row)?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// The routes of batches whose create call's outcome is unknown, of every daemon sharing the
/// store.
pub fn unresolved_routes(conn: &Conn) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT route FROM batches
         WHERE api_id IS NULL AND create_unknown = 1 AND results_applied_at IS NULL
           AND state <> 'failed'
         ORDER BY route",
    )?;
    let rows = stmt.query_map((), |r| r.get(0))?;
    rows.collect()
}

/// Makes every created batch still under way due now: after a start nobody knows what happened
/// while the daemon was away, and results may be waiting. Returns how many.
pub fn poll_all_now(conn: &Conn, now: i64) -> Result<usize> {
    conn.execute(
        "UPDATE batches SET next_action_at = ?1
         WHERE api_id IS NOT NULL AND results_applied_at IS NULL AND state <> 'failed' AND next_action_at > ?1",
        [now],
    )
}

/// API ids already recorded, so reconciliation never adopts one batch twice.
pub fn known_api_ids(conn: &Conn) -> Result<std::collections::HashSet<String>> {
    let mut stmt = conn.prepare_cached("SELECT api_id FROM batches WHERE api_id IS NOT NULL")?;
    let rows = stmt.query_map((), |r| r.get::<_, String>(0))?;
    rows.collect::<crate::store::Result<_>>()
}

/// Records the API's id (right after the create call, or found by reconciliation) and state.
/// The tenants of a job's items waiting for a batch.
pub fn waiting_tenants(conn: &Conn, job_id: i64) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT tenant FROM items WHERE job_id = ?1 AND state = 'pending' AND lane = 'batch'",
    )?;
    let rows = stmt.query_map([job_id], |r| r.get(0))?;
    rows.collect::<crate::store::Result<Vec<String>>>()
}

/// Gives a batch to another route (one whose key finds it at the API).
pub fn set_route(conn: &Conn, batch_id: i64, route: &str) -> Result<()> {
    conn.execute(
        "UPDATE batches SET route = ?2 WHERE id = ?1",
        crate::store::sql::params![batch_id, route],
    )?;
    Ok(())
}

pub fn record_created(
    conn: &Conn,
    batch_id: i64,
    api: &ApiState,
    now: i64,
    next_poll_at: i64,
    interval_ms: i64,
) -> Result<()> {
    conn.execute(
        "UPDATE batches SET api_id = ?2, submitted_at = ?3, api_created_at = ?4, create_unknown = 0
         WHERE id = ?1",
        params![batch_id, api.api_id, now, api.created_at],
    )?;
    record_poll(conn, batch_id, api, next_poll_at, interval_ms)?;
    conn.execute(
        "UPDATE attempts SET request_id = ?2 WHERE outcome IS NULL AND item_id IN (SELECT id FROM items WHERE batch_id = ?1)",
        params![batch_id, api.api_id],
    )?;
    Ok(())
}

/// Just before a create call: from here on the call may reach the API, so a crash or a lost answer
/// leads to a search (around `now`) rather than a second call.
pub fn record_create_sending(conn: &Conn, batch_id: i64, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE batches SET create_unknown = 1, create_sent_at = ?2, next_action_at = ?2 WHERE id = ?1",
        params![batch_id, now],
    )?;
    Ok(())
}

/// The create call is to be tried (again) at `next_at`. `unknown`: a call may have reached the API
/// (it is set before each create call and cleared when an answer says nothing was created), so
/// the list endpoint is searched before another is sent.
pub fn record_create_retry(
    conn: &Conn,
    batch_id: i64,
    next_at: i64,
    unknown: bool,
    error: &str,
) -> Result<()> {
    conn.execute(
        "UPDATE batches SET next_action_at = ?2, create_unknown = ?3, error = ?4 WHERE id = ?1",
        params![batch_id, next_at, unknown, error],
    )?;
    Ok(())
}

pub fn record_poll(
    conn: &Conn,
    batch_id: i64,
    api: &ApiState,
    next_at: i64,
    interval_ms: i64,
) -> Result<()> {
    conn.execute(
        "UPDATE batches SET state = ?2, processing = ?3, succeeded = ?4, errored = ?5, canceled = ?6, expired = ?7,
                ended_at = ?8, next_action_at = ?9, poll_interval_ms = ?10, error = NULL, refusals = 0
         WHERE id = ?1",
        params![
            batch_id,
            api.status,
            api.counts.processing,
            api.counts.succeeded,
            api.counts.errored,
            api.counts.canceled,
            api.counts.expired,
            api.ended_at,
            next_at,
            interval_ms
        ],
    )?;
    Ok(())
}

pub fn set_next_action(
    conn: &Conn,
    batch_id: i64,
    next_at: i64,
    error: Option<&str>,
) -> Result<()> {
    conn.execute(
        "UPDATE batches SET next_action_at = ?2, error = ?3 WHERE id = ?1",
        params![batch_id, next_at, error],
    )?;
    Ok(())
}

/// The API refused a poll or a download (say, 404 for a deleted batch). Returns the refusals in a row.
pub fn record_refusal(conn: &Conn, batch_id: i64, next_at: i64, error: &str) -> Result<i64> {
    conn.execute(
        "UPDATE batches SET refusals = refusals + 1, next_action_at = ?2, error = ?3 WHERE id = ?1",
        params![batch_id, next_at, error],
    )?;
    conn.query_row(
        "SELECT refusals FROM batches WHERE id = ?1",
        [batch_id],
        |r| r.get(0),
    )
}

/// Where [`pack_candidates`] goes on from: the prefix key (0 for none) and id of the last item
/// looked at.
pub type PackCursor = (i64, i64);

/// The cursor before every item.
pub const PACK_START: PackCursor = (i64::MIN, i64::MIN);

/// The route a batch is packed for: its name, and the tenants whose items it may take (`None`:
/// everyone's).
#[derive(Debug, Clone, Copy)]
pub struct PackRoute<'a> {
    pub name: &'a str,
    pub tenants: Option<&'a [String]>,
}

impl PackRoute<'_> {
    /// The tenants as the packing query takes them: a JSON array, or NULL for everyone.
    fn tenants_json(&self) -> Option<String> {
        self.tenants
            .map(|t| serde_json::to_string(t).unwrap_or_else(|_| "[]".into()))
    }
}

/// A waiting batch item, for packing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackCandidate {
    pub id: i64,
    /// Bytes in a create call's body.
    pub size: i64,
    pub cursor: PackCursor,
}

/// Waiting batch items of a job in one priority class after `after`, at most `limit`, of the
/// tenants `route` allows: in prefix order (the items sharing a cached prefix side by side, so
/// they go in the same batch and read what the first of them wrote), then line order.
pub fn pack_candidates(
    conn: &Conn,
    job_id: i64,
    route: &PackRoute<'_>,
    rank: i64,
    after: PackCursor,
    limit: i64,
    now: i64,
) -> Result<Vec<PackCandidate>> {
    // Locked until the packing transaction ends (PostgreSQL): another daemon packing the same
    // job skips these items rather than putting them in a second batch.
    let sql =
        PACK_CANDIDATES.replace("{json_each}", &conn.json_each(7)) + conn.dialect().skip_locked();
    let mut stmt = conn.prepare_cached(&sql)?;
    let tenants = route.tenants_json();
    let rows = stmt.query_map(
        params![job_id, limit, now, after.0, rank, after.1, tenants],
        |r| {
            let id = r.get(0)?;
            Ok(PackCandidate {
                id,
                size: r.get(1)?,
                cursor: (r.get(2)?, id),
            })
        },
    )?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// [`pack_candidates`]' statement: the job, the limit, now, the cursor's prefix key, the class,
/// the cursor's id, the tenants (a JSON array, NULL for everyone); `{json_each}` is
/// [`Conn::json_each`] of `?7`.
const PACK_CANDIDATES: &str = "SELECT id, octet_length(params) + length(custom_id) + 40, pack_key
     FROM items
     WHERE job_id = ?1 AND priority = ?5 AND state = 'pending' AND lane = 'batch'
       AND parked = 0 AND not_before <= ?3 AND (pack_key, id) > (?4, ?6)
       AND (CAST(?7 AS TEXT) IS NULL OR tenant IN (SELECT value FROM {json_each}))
     ORDER BY pack_key, id LIMIT ?2";

/// Records a new batch of `items` in state `submitting` (the intent, before the create call); the
/// items go in flight, each with an open attempt. Returns the batch's local id.
pub fn create_intent(
    conn: &Conn,
    job_id: i64,
    route: &str,
    items: &[i64],
    bytes: i64,
    holder: &super::leases::Holder,
    now: i64,
) -> Result<i64> {
    conn.execute(
        "INSERT INTO batches (job_id, state, request_count, bytes, intent_at, next_action_at, route,
                              lease_owner, lease_expires_at, lease_token)
         VALUES (?1, 'submitting', ?2, ?3, ?4, ?4, ?5, ?6, ?7, 1)",
        params![
            job_id,
            items.len() as i64,
            bytes,
            now,
            route,
            holder.id,
            holder.expiry(now)
        ],
    )?;
    let batch_id = conn.last_insert_rowid()?;
    // Pending items only (packing locked them, see `pack_candidates`; this holds regardless).
    let mut mark = conn.prepare_cached(
        "UPDATE items SET state = 'in_flight', batch_id = ?2, attempts = attempts + 1, updated_at = ?3
         WHERE id = ?1 AND state = 'pending'",
    )?;
    let mut attempt = conn.prepare_cached(
        "INSERT INTO attempts (item_id, attempt, lane, model, started_at, route)
         SELECT id, attempts, 'batch', model, ?2, ?3 FROM items WHERE id = ?1",
    )?;
    let mut marked = 0;
    for id in items {
        if mark.execute(params![id, batch_id, now])? == 1 {
            attempt.execute(params![id, now, route])?;
            marked += 1;
        }
    }
    if marked < items.len() {
        recount(conn, batch_id)?;
    }
    Ok(batch_id)
}

/// Splits a batch not yet created in two: the later half of its items (in line order) moves to a
/// new batch, also waiting to be created; both are created afresh (never the refused body again).
/// Returns the new batch, or None when the batch holds fewer than two items.
pub fn split(conn: &Conn, batch_id: i64, why: &str, now: i64) -> Result<Option<i64>> {
    let items = in_flight_items(conn, batch_id)?;
    if items.len() < 2 {
        return Ok(None);
    }
    let moved = &items[items.len() / 2..];
    let job_id: i64 = conn
        .prepare_cached("SELECT job_id FROM batches WHERE id = ?1")?
        .query_row([batch_id], |r| r.get(0))?;
    // A cancel that came while the refused create was under way holds for both halves; both
    // stay on the batch's route.
    conn.execute(
        "INSERT INTO batches (job_id, state, request_count, bytes, intent_at, next_action_at, error,
                              cancel_requested, route)
         SELECT ?1, 'submitting', ?2, 0, ?3, ?3, ?4, cancel_requested, route
         FROM batches WHERE id = ?5",
        params![job_id, moved.len() as i64, now, why, batch_id],
    )?;
    let half = conn.last_insert_rowid()?;
    conn.execute(
        "UPDATE items SET batch_id = ?2, updated_at = ?4
         WHERE batch_id = ?1 AND state = 'in_flight' AND id >= ?3",
        params![batch_id, half, moved[0], now],
    )?;
    for id in [batch_id, half] {
        conn.execute(
            "UPDATE batches SET state = 'submitting', create_unknown = 0, create_sent_at = NULL,
                    next_action_at = ?2, error = ?3 WHERE id = ?1",
            params![id, now, why],
        )?;
        recount(conn, id)?;
    }
    Ok(Some(half))
}

/// Sets a batch not yet created to the requests still in flight in it; returns how many.
pub fn recount(conn: &Conn, batch_id: i64) -> Result<i64> {
    conn.execute(
        "UPDATE batches SET
                request_count = (SELECT count(*) FROM items WHERE batch_id = ?1 AND state = 'in_flight'),
                bytes = (SELECT COALESCE(sum(octet_length(params) + length(custom_id) + 40), 0)
                         FROM items WHERE batch_id = ?1 AND state = 'in_flight')
         WHERE id = ?1",
        [batch_id],
    )?;
    conn.prepare_cached("SELECT request_count FROM batches WHERE id = ?1")?
        .query_row([batch_id], |r| r.get(0))
}

/// The item of a batch in flight under `custom_id`, with the job file and line it came from:
/// (item, file, line).
pub fn in_flight_by_custom_id(
    conn: &Conn,
    batch_id: i64,
    custom_id: &str,
) -> Result<Option<(i64, String, i64)>> {
    conn.prepare_cached(
        "SELECT i.id, j.source_path, i.line_no FROM items i JOIN jobs j ON j.id = i.job_id
             WHERE i.batch_id = ?1 AND i.custom_id = ?2 AND i.state = 'in_flight'",
    )?
    .query_row(params![batch_id, custom_id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .optional()
}

/// The one item of a batch, with the job file and line it came from: (item, file, line).
pub fn lone_item(conn: &Conn, batch_id: i64) -> Result<Option<(i64, String, i64)>> {
    conn.prepare_cached(
        "SELECT i.id, j.source_path, i.line_no FROM items i JOIN jobs j ON j.id = i.job_id
             WHERE i.batch_id = ?1 AND i.state = 'in_flight'",
    )?
    .query_row([batch_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    .optional()
}

/// The batch is failed (refused, abandoned, dropped): nothing more is done with it.
pub fn mark_failed(conn: &Conn, batch_id: i64, error: &str, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE batches SET state = 'failed', error = ?2, results_applied_at = ?3, create_unknown = 0 WHERE id = ?1",
        params![batch_id, error, now],
    )?;
    Ok(())
}

/// Every result of the batch is applied.
pub fn mark_results_applied(conn: &Conn, batch_id: i64, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE batches SET results_applied_at = ?2 WHERE id = ?1",
        params![batch_id, now],
    )?;
    Ok(())
}

/// The items of a batch still in flight in it.
pub fn in_flight_items(conn: &Conn, batch_id: i64) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM items WHERE batch_id = ?1 AND state = 'in_flight' ORDER BY id",
    )?;
    let rows = stmt.query_map([batch_id], |r| r.get(0))?;
    rows.collect::<crate::store::Result<Vec<i64>>>()
}

/// The items still in flight in the batch, by custom_id (those applied before a crash are not).
pub fn in_flight_ids(conn: &Conn, batch_id: i64) -> Result<std::collections::HashMap<String, i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT custom_id, id FROM items WHERE batch_id = ?1 AND state = 'in_flight'",
    )?;
    let rows = stmt.query_map([batch_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect::<crate::store::Result<_>>()
}

/// Whether the item is still in flight in the batch (not: applied already, say).
pub fn is_in_flight(conn: &Conn, batch_id: i64, item_id: i64) -> Result<bool> {
    conn.prepare_cached(
        "SELECT 1 FROM items WHERE id = ?1 AND batch_id = ?2 AND state = 'in_flight'",
    )?
    .exists(params![item_id, batch_id])
}

/// Items of the batch end, each with its final state and error for people: those still in
/// flight there. Returns whose each one that ended is; the others (applied already, say) are left
/// as they are.
pub fn end_in_flight(
    conn: &Conn,
    batch_id: i64,
    ends: &[(i64, ItemState, Option<&str>)],
    now: i64,
) -> Result<std::collections::HashMap<i64, super::ledger::Whose>> {
    let mut whose = std::collections::HashMap::with_capacity(ends.len());
    super::in_groups(ends, end_in_flight_sql, |sql, group| {
        let states: Vec<&str> = group.iter().map(|(_, state, _)| state.as_str()).collect();
        let mut values: Vec<&dyn crate::store::sql::ToValue> = vec![&now, &batch_id];
        for ((item_id, _, error), state) in group.iter().zip(&states) {
            values.extend([item_id as &dyn crate::store::sql::ToValue, state, error]);
        }
        let mut stmt = conn.prepare_cached(sql)?;
        // The item's id follows the columns `Whose::from_row` reads.
        let rows = stmt.query_map(crate::store::sql::params_from_iter(values), |r| {
            Ok((r.get(4)?, super::ledger::Whose::from_row(r)?))
        })?;
        for row in rows {
            let (item_id, item_whose) = row?;
            whose.insert(item_id, item_whose);
        }
        Ok(())
    })?;
    Ok(whose)
}

/// [`end_in_flight`] for `rows` items: `now`, the batch, then (item, state, error) each.
/// (`+items.batch_id`: no index on it, so each row is looked up by its id; with a full group of
/// rows SQLite would otherwise walk every item of the batch for each statement.)
fn end_in_flight_sql(rows: usize) -> String {
    format!(
        "UPDATE items SET state = v.column2, error = v.column3, updated_at = ?1
         FROM (VALUES {}) AS v
         WHERE items.id = v.column1 AND +items.batch_id = ?2 AND items.state = 'in_flight'
         RETURNING {}, items.id",
        super::value_rows_as(rows, &["BIGINT", "TEXT", "TEXT"], 2),
        super::ledger::WHOSE
    )
}

/// Closes an item's open batch attempt.
pub fn close_attempt(conn: &Conn, item_id: i64, record: &AttemptRecord, now: i64) -> Result<()> {
    close_attempts(conn, &[(item_id, record)], now)
}

/// As [`close_attempt`], for many items at once.
pub fn close_attempts(conn: &Conn, closing: &[(i64, &AttemptRecord)], now: i64) -> Result<()> {
    super::in_groups(closing, close_attempts_sql, |sql, group| {
        let rows: Vec<_> = group
            .iter()
            .map(|(_, r)| {
                (
                    r.outcome.as_str(),
                    r.input_tokens.map(|n| n as i64),
                    r.output_tokens.map(|n| n as i64),
                )
            })
            .collect();
        let mut values: Vec<&dyn crate::store::sql::ToValue> = vec![&now];
        for ((item_id, record), (outcome, input, output)) in group.iter().zip(&rows) {
            values.extend([
                item_id as &dyn crate::store::sql::ToValue,
                outcome,
                &record.error,
                input,
                output,
            ]);
        }
        conn.prepare_cached(sql)?
            .execute(crate::store::sql::params_from_iter(values))?;
        Ok(())
    })
}

/// [`close_attempts`] for `rows` items: `now`, then (item, outcome, error, input tokens,
/// output tokens) each.
fn close_attempts_sql(rows: usize) -> String {
    format!(
        "UPDATE attempts SET finished_at = ?1, outcome = v.column2, error = v.column3,
                input_tokens = v.column4, output_tokens = v.column5
         FROM (VALUES {}) AS v
         WHERE attempts.item_id = v.column1 AND attempts.outcome IS NULL
           AND attempts.lane = 'batch'",
        super::value_rows_as(rows, &["BIGINT", "TEXT", "TEXT", "BIGINT", "BIGINT"], 1)
    )
}

/// An item of a batch ends: its final state, result line and error for people.
pub fn end_item(
    conn: &Conn,
    item_id: i64,
    state: ItemState,
    line: &str,
    error: Option<&str>,
    now: i64,
) -> Result<()> {
    let job_id: i64 = conn
        .prepare_cached("SELECT job_id FROM items WHERE id = ?1")?
        .query_row([item_id], |r| r.get(0))?;
    end_item_of(conn, job_id, item_id, state, line, error, now)
}

/// As [`end_item`], for a caller that knows the item's job.
pub fn end_item_of(
    conn: &Conn,
    job_id: i64,
    item_id: i64,
    state: ItemState,
    line: &str,
    error: Option<&str>,
    now: i64,
) -> Result<()> {
    conn.prepare_cached("UPDATE items SET state = ?2, error = ?3, updated_at = ?4 WHERE id = ?1")?
        .execute(params![item_id, state.as_str(), error, now])?;
    super::results::append_to(conn, job_id, item_id, line)
}

/// An item of a batch goes back to pending in `lane` (the planner's new choice); `counts`:
/// whether the attempt it came back from is a failure.
pub fn replan_item(
    conn: &Conn,
    item_id: i64,
    lane: Lane,
    reason: &str,
    counts: bool,
    now: i64,
) -> Result<()> {
    conn.prepare_cached(
        &format!(
            "UPDATE items SET state = 'pending', batch_id = NULL, failures = failures + ?5, not_before = 0,
                    lane = ?2, lane_reason = ?3, updated_at = ?4, {}
             WHERE id = ?1",
            super::holds::PARK_IF_HELD
        ),
    )?
    .execute(params![
        item_id,
        lane.as_str(),
        reason,
        now,
        i64::from(counts)
    ])?;
    Ok(())
}

/// Takes pending cancel requests: marks their jobs canceled, ends their pending items canceled,
/// and flags their open batches for cancellation. Returns the names of the jobs canceled.
pub fn take_cancel_requests(conn: &Conn, now: i64) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, job_name FROM cancel_requests WHERE done_at IS NULL ORDER BY id",
    )?;
    let requests = stmt
        .query_map((), |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
        .collect::<crate::store::Result<Vec<_>>>()?;
    let mut canceled = Vec::new();
    for (request_id, name) in requests {
        conn.execute(
            "UPDATE cancel_requests SET done_at = ?2 WHERE id = ?1",
            params![request_id, now],
        )?;
        let Some(job_id) = conn
            .query_row("SELECT id FROM jobs WHERE name = ?1", [&name], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
        else {
            continue;
        };
        conn.execute(
            "UPDATE jobs SET canceled_at = COALESCE(canceled_at, ?2) WHERE id = ?1",
            params![job_id, now],
        )?;
        super::items::cancel_pending(conn, job_id, now)?;
        conn.execute(
            "UPDATE batches SET cancel_requested = 1, next_action_at = ?2
             WHERE job_id = ?1 AND results_applied_at IS NULL AND state <> 'failed'",
            params![job_id, now],
        )?;
        canceled.push(name);
    }
    Ok(canceled)
}

/// Moves items between the lanes as time passes: batch items still waiting to be packed whose
/// deadline a batch can no longer meet go real time; nightly real-time items held back by a
/// throttled lane (waiting on a `retry-after` or backoff) go to the next batch when their deadline
/// allows it. Returns (to real time, to batch).
/// `horizon`: when a batch sent now is safe for results (`planner::batch_horizon`); `turnaround_ms`
/// is said in the reason; `nightly` is the rank of the class that may move to batches.
pub fn reroute(
    conn: &Conn,
    now: i64,
    horizon: i64,
    turnaround_ms: i64,
    nightly: i64,
) -> Result<(usize, usize)> {
    let reason = format!(
        "re-routed: the deadline came nearer than the batch turnaround ({:.1} h)",
        turnaround_ms as f64 / 3_600_000.0
    );
    let to_realtime = conn.execute(
        "UPDATE items SET lane = 'realtime', not_before = 0, updated_at = ?2, lane_reason = ?3
         WHERE state = 'pending' AND lane = 'batch' AND parked = 0 AND mode = 'auto'
           AND deadline_at IS NOT NULL AND deadline_at < ?1",
        params![horizon, now, reason],
    )?;
    let to_batch = conn.execute(
        "UPDATE items SET lane = 'batch', updated_at = ?2,
                lane_reason = 're-routed: nightly work held back by a throttled real-time lane goes to the next batch'
         WHERE id IN (SELECT id FROM items
                      WHERE state = 'pending' AND lane = 'realtime' AND parked = 0
                        AND mode = 'auto' AND priority = ?3
                        AND batch_ok = 1 AND not_before > CAST(?2 AS BIGINT) + 30000
                        AND (deadline_at IS NULL OR deadline_at >= ?1)
                      LIMIT 10000)",
        params![horizon, now, nightly],
    )?;
    Ok((to_realtime, to_batch))
}

/// Items of a job by the lane that produced their final outcome or is working on them (tests read
/// it; `status` counts lanes in `job_status`, in its one pass over the job's items).
#[cfg(test)]
pub fn lanes(conn: &Conn, job_id: i64) -> Result<(i64, i64)> {
    conn.query_row(
        "SELECT COALESCE(SUM(CASE WHEN lane = 'batch' THEN 1 ELSE 0 END), 0), COALESCE(SUM(CASE WHEN lane = 'realtime' THEN 1 ELSE 0 END), 0) FROM items WHERE job_id = ?1",
        [job_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_plan as plan;

    fn line(id: &str, tenant: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","tenant":"{tenant}","mode":"batch","params":{{"model":"m","max_tokens":5,"messages":[{{"role":"user","content":"q"}}]}}}}"#
        )
    }

    #[test]
    fn a_route_packs_only_the_tenants_it_allows_and_its_batch_and_attempts_name_it() {
        let conn = crate::store::test_connection();
        let lines = [
            line("a1", "acme"),
            line("b1", "beta"),
            line("a2", "acme"),
            line("g1", "gamma"),
        ];
        let job =
            crate::store::test_job(&conn, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        let rank: i64 = conn
            .query_row("SELECT priority FROM items LIMIT 1", (), |r| r.get(0))
            .expect("rank");
        let ids = |route: &PackRoute<'_>| -> Vec<String> {
            pack_candidates(&conn, job, route, rank, PACK_START, 10, i64::MAX)
                .expect("candidates")
                .into_iter()
                .map(|c| {
                    conn.query_row("SELECT custom_id FROM items WHERE id = ?1", [c.id], |r| {
                        r.get(0)
                    })
                    .expect("custom_id")
                })
                .collect()
        };
        let everyone = PackRoute {
            name: "a",
            tenants: None,
        };
        assert_eq!(ids(&everyone), ["a1", "b1", "a2", "g1"]);
        let some = ["acme".to_owned(), "gamma".to_owned()];
        let acme_gamma = PackRoute {
            name: "b",
            tenants: Some(&some),
        };
        assert_eq!(ids(&acme_gamma), ["a1", "a2", "g1"]);
        let nobody = PackRoute {
            name: "c",
            tenants: Some(&[]),
        };
        assert!(ids(&nobody).is_empty());
        // The intent names its route, and so does each item's attempt.
        let items: Vec<i64> = pack_candidates(&conn, job, &acme_gamma, rank, PACK_START, 10, 0)
            .expect("candidates")
            .iter()
            .map(|c| c.id)
            .collect();
        let batch = create_intent(
            &conn,
            job,
            "b",
            &items,
            100,
            &crate::store::leases::test_holder(),
            5,
        )
        .expect("intent");
        let row = open(&conn)
            .expect("open")
            .into_iter()
            .find(|b| b.id == batch);
        assert_eq!(row.expect("the batch").route, "b");
        let routes: Vec<Option<String>> = conn
            .prepare("SELECT route FROM attempts ORDER BY id")
            .expect("attempts")
            .query_map((), |r| r.get(0))
            .expect("rows")
            .collect::<crate::store::Result<_>>()
            .expect("routes");
        assert_eq!(routes, vec![Some("b".to_owned()); 3]);
        // Its halves stay on its route.
        let half = split(&conn, batch, "HTTP 400", 6)
            .expect("split")
            .expect("a half");
        let halves: Vec<String> = open(&conn)
            .expect("open")
            .into_iter()
            .filter(|b| b.id == batch || b.id == half)
            .map(|b| b.route)
            .collect();
        assert_eq!(halves, ["b", "b"]);
    }

    #[test]
    fn packing_for_some_tenants_seeks_the_waiting_items_index() {
        let conn = crate::store::test_connection();
        let steps = plan(
            &conn,
            &PACK_CANDIDATES.replace("{json_each}", &conn.json_each(7)),
        )
        .join("; ");
        assert!(
            steps.contains("items_waiting_batch_prefix (job_id=? AND priority=? AND pack_key>?)"),
            "{steps}"
        );
        assert!(!steps.contains("TEMP B-TREE"), "{steps}");
    }

    #[test]
    fn a_group_of_results_looks_each_item_and_attempt_up_never_scans_them() {
        let conn = crate::store::test_connection();
        // A full group: the planner's choice changes with the number of rows.
        let rows = crate::store::ROWS_PER_STATEMENT;
        let items = plan(&conn, &end_in_flight_sql(rows));
        assert!(
            items
                .iter()
                .any(|s| s.contains("SEARCH items USING INTEGER PRIMARY KEY")),
            "{items:?}"
        );
        let attempts = plan(&conn, &close_attempts_sql(rows));
        assert!(
            attempts
                .iter()
                .any(|s| s.contains("SEARCH attempts USING INDEX attempts_open")),
            "{attempts:?}"
        );
        for step in items.iter().chain(&attempts) {
            assert!(
                !step.starts_with("SCAN items") && !step.starts_with("SCAN attempts"),
                "{step}"
            );
        }
    }
}
