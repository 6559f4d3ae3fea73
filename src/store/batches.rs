//! SQL for the batch lane: packing, the create intent and its id, polling, applying results.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::Result;
use super::budget::{Admission, Rules};
use super::items::AttemptRecord;
use crate::model::batch::{ApiState, BatchCounts};
use crate::model::job::{Mode, Priority};
use crate::model::results;
use crate::model::state::{ItemState, Lane};
use crate::policy::planner;

/// Batch turnarounds (creation to end, ms) of the most recent ended batches.
pub fn turnaround_ms(conn: &Connection) -> Result<i64> {
    let mut stmt = conn.prepare_cached(
        "SELECT ended_at - api_created_at FROM batches
         WHERE ended_at IS NOT NULL AND api_created_at IS NOT NULL AND cancel_requested = 0
         ORDER BY id DESC LIMIT 100",
    )?;
    let samples = stmt
        .query_map([], |r| r.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
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
    conn: &Connection,
    now: i64,
    closed_ranks: &[i64],
    cap: i64,
) -> Result<Vec<WaitingJob>> {
    let mut jobs = conn.prepare_cached(
        "SELECT id, name, ingested_at IS NOT NULL FROM jobs
         WHERE canceled_at IS NULL AND finished_at IS NULL ORDER BY id",
    )?;
    let jobs = jobs
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    const READY: &str = "job_id = ?1 AND priority = ?2 AND state = 'pending' AND lane = 'batch'
                         AND parked = 0 AND not_before <= ?3";
    let mut count = conn.prepare_cached(&format!(
        "SELECT COUNT(*) FROM (SELECT 1 FROM items WHERE {READY} LIMIT ?4)"
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

/// Items a budget may stop in one [`pack`] call before it returns what it has.
const MAX_STOPPED_PER_PACK: usize = 2_000;

/// Packs up to `max_requests` waiting items of a job (and no more than `max_bytes` of request
/// bodies) into a new batch in state `submitting`: the intent, recorded before the create call.
/// Each item is first checked against its tenant's budget (which reserves its worst case, or
/// rejects, downgrades or defers it; see `store::budget`).
/// The items go in flight, each with an open attempt. Returns the batch's local id.
pub fn pack(
    conn: &Connection,
    job_id: i64,
    max_requests: i64,
    max_bytes: i64,
    rules: &Rules,
    now: i64,
) -> Result<Option<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, length(CAST(params AS BLOB)) + length(custom_id) + 40 FROM items
         WHERE job_id = ?1 AND priority = ?5 AND state = 'pending' AND lane = 'batch'
           AND parked = 0 AND not_before <= ?3 AND id > ?4
         ORDER BY id LIMIT ?2",
    )?;
    let closed = rules.windows.closed_ranks(now);
    let mut chosen = Vec::new();
    let mut bytes = 0i64;
    let mut stopped_total = 0;
    // Class by class (those whose window is open), highest first, in line order within a class.
    // Items the budget stops leave the candidates; look further until a batch fills or none are
    // left, but stop a long run of them early: the store's writer must not be held for long (the
    // lane packs again within a second, and the stopped items are no longer candidates).
    'fill: for rank in crate::policy::window::open_ranks(&closed) {
        let mut after = 0i64;
        loop {
            let limit = max_requests - chosen.len() as i64;
            if limit <= 0 {
                break 'fill;
            }
            let candidates = stmt
                .query_map(params![job_id, limit, now, after, rank], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut stopped = 0;
            for (id, size) in candidates {
                if !chosen.is_empty() && bytes + size > max_bytes {
                    break 'fill;
                }
                after = id;
                let mut admission = super::budget::admit(conn, id, Lane::Batch, rules, now)?;
                if admission == Admission::Downgraded {
                    admission = super::budget::admit(conn, id, Lane::Batch, rules, now)?;
                }
                if admission != Admission::Admitted {
                    stopped += 1;
                    stopped_total += 1;
                    if stopped_total >= MAX_STOPPED_PER_PACK {
                        break 'fill;
                    }
                    continue;
                }
                bytes += size;
                chosen.push(id);
            }
            if stopped == 0 {
                break; // this class has nothing more (or the batch is full)
            }
        }
    }
    if chosen.is_empty() {
        return Ok(None);
    }
    conn.execute(
        "INSERT INTO batches (job_id, state, request_count, bytes, intent_at, next_action_at)
         VALUES (?1, 'submitting', ?2, ?3, ?4, ?4)",
        params![job_id, chosen.len() as i64, bytes, now],
    )?;
    let batch_id = conn.last_insert_rowid();
    let mut mark = conn.prepare_cached(
        "UPDATE items SET state = 'in_flight', batch_id = ?2, attempts = attempts + 1, updated_at = ?3
         WHERE id = ?1",
    )?;
    let mut attempt = conn.prepare_cached(
        "INSERT INTO attempts (item_id, attempt, lane, model, started_at)
         SELECT id, attempts, 'batch', model, ?2 FROM items WHERE id = ?1",
    )?;
    for id in &chosen {
        mark.execute(params![id, batch_id, now])?;
        attempt.execute(params![id, now])?;
    }
    Ok(Some(batch_id))
}

/// The requests of a batch, for the create call: (custom_id, params).
pub fn requests(conn: &Connection, batch_id: i64) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT custom_id, params FROM items WHERE batch_id = ?1 AND state = 'in_flight' ORDER BY id",
    )?;
    let rows = stmt.query_map([batch_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// A batch as stored.
#[derive(Debug, Clone)]
pub struct BatchRow {
    pub id: i64,
    pub job_id: i64,
    pub job_name: String,
    pub api_id: Option<String>,
    pub state: String,
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
}

const COLUMNS: &str = "b.id, b.job_id, j.name, b.api_id, b.state, b.request_count, b.intent_at, b.api_created_at, \
     b.ended_at, b.processing, b.succeeded, b.errored, b.canceled, b.expired, b.create_unknown, \
     b.next_action_at, b.poll_interval_ms, b.results_applied_at, b.cancel_requested, b.error, \
     b.create_sent_at, b.refusals";

fn from_row(r: &Row<'_>) -> rusqlite::Result<BatchRow> {
    Ok(BatchRow {
        id: r.get(0)?,
        job_id: r.get(1)?,
        job_name: r.get(2)?,
        api_id: r.get(3)?,
        state: r.get(4)?,
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
    })
}

/// Batches with something to do (create, reconcile, poll, apply results).
pub fn open(conn: &Connection) -> Result<Vec<BatchRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM batches b JOIN jobs j ON j.id = b.job_id
         WHERE b.results_applied_at IS NULL AND b.state <> 'failed' ORDER BY b.next_action_at, b.id"
    ))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub fn by_job(conn: &Connection, job_id: i64) -> Result<Vec<BatchRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM batches b JOIN jobs j ON j.id = b.job_id WHERE b.job_id = ?1 ORDER BY b.id"
    ))?;
    let rows = stmt.query_map([job_id], from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// API ids already recorded, so reconciliation never adopts one batch twice.
pub fn known_api_ids(conn: &Connection) -> Result<std::collections::HashSet<String>> {
    let mut stmt = conn.prepare_cached("SELECT api_id FROM batches WHERE api_id IS NOT NULL")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Records the API's id (right after the create call, or found by reconciliation) and state.
pub fn record_created(
    conn: &Connection,
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
pub fn record_create_sending(conn: &Connection, batch_id: i64, now: i64) -> Result<()> {
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
    conn: &Connection,
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
    conn: &Connection,
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
    conn: &Connection,
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
pub fn record_refusal(conn: &Connection, batch_id: i64, next_at: i64, error: &str) -> Result<i64> {
    conn.execute(
        "UPDATE batches SET refusals = refusals + 1, next_action_at = ?2, error = ?3 WHERE id = ?1",
        params![batch_id, next_at, error],
    )?;
    Ok(conn.query_row(
        "SELECT refusals FROM batches WHERE id = ?1",
        [batch_id],
        |r| r.get(0),
    )?)
}

/// Gives up on a batch the API keeps refusing to show: its items go back to the planner.
pub fn abandon(conn: &Connection, batch_id: i64, error: &str, replan: &Replan<'_>) -> Result<()> {
    fail_batch(
        conn,
        batch_id,
        error,
        ("unknown", "its batch could not be read"),
        true,
        replan,
    )
}

/// Marks a batch failed and sends its items in flight back to the planner, each recorded with
/// `outcome` and `why: error`; `counts`: whether that uses up an attempt of each.
fn fail_batch(
    conn: &Connection,
    batch_id: i64,
    error: &str,
    (outcome, why): (&'static str, &str),
    counts: bool,
    replan: &Replan<'_>,
) -> Result<()> {
    conn.execute(
        "UPDATE batches SET state = 'failed', error = ?2, results_applied_at = ?3, create_unknown = 0 WHERE id = ?1",
        params![batch_id, error, replan.now],
    )?;
    for item_id in in_flight_items(conn, batch_id)? {
        send_back(
            conn,
            item_id,
            outcome,
            &format!("{why}: {error}"),
            replan,
            counts,
        )?;
    }
    Ok(())
}

/// What sending an item back to the planner needs.
pub struct Replan<'a> {
    pub now: i64,
    pub max_attempts: i64,
    pub rpm_for: &'a (dyn Fn(&str) -> Option<u64> + Send + Sync),
    /// Budgets and prices: what packing admits, and what the ledger charges.
    pub rules: &'a Rules,
}

/// An item of a batch comes back without a final outcome (expired, a retryable error, a canceled
/// batch, a refused create call): the planner decides its lane again, unless it has used up its
/// attempts, in which case it ends `expired` (if it expired) or `errored`.
/// `counts`: whether this uses up one of the item's attempts (not when the whole batch was refused
/// for its size, say).
fn send_back(
    conn: &Connection,
    item_id: i64,
    outcome: &'static str,
    why: &str,
    replan: &Replan<'_>,
    counts: bool,
) -> Result<()> {
    type Facts = (
        String,
        String,
        i64,
        Option<i64>,
        String,
        i64,
        String,
        bool,
        i64,
    );
    let (custom_id, mode, priority, deadline_at, params, failures, model, job_canceled, job_items): Facts =
        conn.query_row(
            "SELECT i.custom_id, i.mode, i.priority, i.deadline_at, i.params, i.failures, i.model,
                    j.canceled_at IS NOT NULL, j.ingest_lines
             FROM items i JOIN jobs j ON j.id = i.job_id WHERE i.id = ?1",
            [item_id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            },
        )?;
    let failures = if counts { failures } else { failures - 1 };
    let record = AttemptRecord {
        outcome,
        error: Some(why.to_owned()),
        ..Default::default()
    };
    close_attempt(conn, item_id, &record, replan.now)?;
    if job_canceled {
        return finish(
            conn,
            item_id,
            ItemState::Canceled,
            &results::canceled_line(Some(&custom_id)),
            Some("canceled by nightshift cancel"),
            replan.now,
        );
    }
    if failures + 1 >= replan.max_attempts {
        let message = format!(
            "gave up after {} attempts; the last came back from a batch: {why}",
            failures + 1
        );
        return if outcome == "expired" {
            finish(
                conn,
                item_id,
                ItemState::Expired,
                &results::expired_line(Some(&custom_id)),
                Some(&message),
                replan.now,
            )
        } else {
            let line = results::errored_line(Some(&custom_id), "api_error", &message, None);
            finish(
                conn,
                item_id,
                ItemState::Errored,
                &line,
                Some(&message),
                replan.now,
            )
        };
    }
    let facts = planner::ItemFacts {
        mode: mode.parse().unwrap_or(Mode::Auto),
        priority: Priority::from_rank(priority),
        deadline_at,
        params: &params,
    };
    let lanes = planner::LaneFacts {
        now: replan.now,
        batch_turnaround_ms: turnaround_ms(conn)?,
        job_items: job_items.max(1) as u64,
        realtime_rpm: (replan.rpm_for)(&model),
    };
    let plan = planner::decide(&facts, &lanes);
    conn.execute(
        "UPDATE items SET state = 'pending', batch_id = NULL, failures = failures + ?5, not_before = 0,
                lane = ?2, lane_reason = ?3, updated_at = ?4
         WHERE id = ?1",
        params![
            item_id,
            plan.lane.as_str(),
            format!("back from a batch ({why}); {}", plan.reason),
            replan.now,
            i64::from(counts)
        ],
    )?;
    Ok(())
}

fn close_attempt(conn: &Connection, item_id: i64, record: &AttemptRecord, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE attempts SET finished_at = ?2, outcome = ?3, error = ?4, input_tokens = ?5, output_tokens = ?6
         WHERE item_id = ?1 AND outcome IS NULL AND lane = 'batch'",
        params![
            item_id,
            now,
            record.outcome,
            record.error,
            record.input_tokens.map(|n| n as i64),
            record.output_tokens.map(|n| n as i64)
        ],
    )?;
    Ok(())
}

fn finish(
    conn: &Connection,
    item_id: i64,
    state: ItemState,
    line: &str,
    error: Option<&str>,
    now: i64,
) -> Result<()> {
    conn.execute(
        "UPDATE items SET state = ?2, result = ?3, error = ?4, updated_at = ?5 WHERE id = ?1",
        params![item_id, state.as_str(), line, error, now],
    )?;
    Ok(())
}

/// The API refused the batch (a 4xx other than 429): its items go back to the planner. `counts`:
/// whether that uses up an attempt of each (not when the batch was too large).
pub fn record_create_refused(
    conn: &Connection,
    batch_id: i64,
    error: &str,
    counts: bool,
    replan: &Replan<'_>,
) -> Result<()> {
    fail_batch(
        conn,
        batch_id,
        error,
        ("fatal", "the batch was refused"),
        counts,
        replan,
    )
}

fn in_flight_items(conn: &Connection, batch_id: i64) -> Result<Vec<i64>> {
    let mut stmt =
        conn.prepare_cached("SELECT id FROM items WHERE batch_id = ?1 AND state = 'in_flight'")?;
    let rows = stmt.query_map([batch_id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<i64>>>()?)
}

#[derive(serde::Deserialize)]
struct ResultLine<'a> {
    custom_id: String,
    #[serde(borrow)]
    result: &'a serde_json::value::RawValue,
}

#[derive(serde::Deserialize)]
struct ResultHead {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<MessageUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct MessageUsage {
    usage: crate::model::answer::Usage,
}

/// Applies result lines of a batch. Idempotent: a line whose item is no longer in flight in this
/// batch (applied before a crash, say) changes nothing. Returns how many lines changed an item.
pub fn apply_results(
    conn: &Connection,
    batch_id: i64,
    api_id: &str,
    lines: &[String],
    replan: &Replan<'_>,
) -> Result<usize> {
    let mut find = conn.prepare_cached(
        "SELECT id FROM items WHERE batch_id = ?1 AND custom_id = ?2 AND state = 'in_flight'",
    )?;
    let mut applied = 0;
    for line in lines {
        let Ok(parsed) = serde_json::from_str::<ResultLine<'_>>(line) else {
            tracing::warn!(
                batch = api_id,
                "a results line that is not a result; skipped"
            );
            continue;
        };
        let Some(item_id) = find
            .query_row(params![batch_id, parsed.custom_id], |r| r.get::<_, i64>(0))
            .optional()?
        else {
            continue;
        };
        let head: ResultHead = match serde_json::from_str(parsed.result.get()) {
            Ok(head) => head,
            Err(_) => {
                send_back(
                    conn,
                    item_id,
                    "unknown",
                    "its result line could not be read",
                    replan,
                    true,
                )?;
                applied += 1;
                continue;
            }
        };
        match head.kind.as_str() {
            "succeeded" => {
                let usage = head.message.map(|m| m.usage).unwrap_or_default();
                let record = AttemptRecord {
                    outcome: "succeeded",
                    request_id: Some(api_id.to_owned()),
                    input_tokens: Some(usage.input_tokens),
                    output_tokens: Some(usage.output_tokens),
                    ..Default::default()
                };
                close_attempt(conn, item_id, &record, replan.now)?;
                super::ledger::record(
                    conn,
                    &replan.rules.prices,
                    item_id,
                    Lane::Batch,
                    &usage,
                    Some(api_id),
                    replan.now,
                )?;
                // The batch's line is already in the results format, with the job's custom_id.
                let line = compact_line(line);
                finish(conn, item_id, ItemState::Succeeded, &line, None, replan.now)?;
            }
            "errored" => {
                let error = head.error.unwrap_or_default();
                let kind = error["error"]["type"]
                    .as_str()
                    .unwrap_or("api_error")
                    .to_owned();
                let message = error["error"]["message"]
                    .as_str()
                    .unwrap_or("errored in the batch")
                    .to_owned();
                // The request itself is at fault: sending it again as it is cannot help.
                if matches!(
                    kind.as_str(),
                    "invalid_request_error"
                        | "not_found_error"
                        | "permission_error"
                        | "authentication_error"
                        | "billing_error"
                ) {
                    let record = AttemptRecord {
                        outcome: "fatal",
                        request_id: Some(api_id.to_owned()),
                        error: Some(message.clone()),
                        ..Default::default()
                    };
                    close_attempt(conn, item_id, &record, replan.now)?;
                    let line = results::api_errored_line(Some(&parsed.custom_id), &error);
                    finish(
                        conn,
                        item_id,
                        ItemState::Errored,
                        &line,
                        Some(&format!("{kind}: {message}")),
                        replan.now,
                    )?;
                } else {
                    send_back(
                        conn,
                        item_id,
                        "retryable",
                        &format!("{kind}: {message}"),
                        replan,
                        true,
                    )?;
                }
            }
            "expired" => send_back(
                conn,
                item_id,
                "expired",
                "expired before the batch processed it",
                replan,
                true,
            )?,
            "canceled" => send_back(
                conn,
                item_id,
                "canceled",
                "its batch was canceled",
                replan,
                true,
            )?,
            other => send_back(
                conn,
                item_id,
                "unknown",
                &format!("unknown result type {other:?}"),
                replan,
                true,
            )?,
        }
        applied += 1;
    }
    Ok(applied)
}

fn compact_line(line: &str) -> String {
    if line.contains('\n') {
        serde_json::from_str::<serde_json::Value>(line)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| line.replace('\n', " "))
    } else {
        line.trim().to_owned()
    }
}

/// After all result lines are applied: items of the batch still in flight had no line (which the
/// API should never do) and go back to the planner; the batch is done.
pub fn finish_results(conn: &Connection, batch_id: i64, replan: &Replan<'_>) -> Result<usize> {
    let leftovers = in_flight_items(conn, batch_id)?;
    for item_id in &leftovers {
        send_back(
            conn,
            *item_id,
            "unknown",
            "its batch ended without a result for it",
            replan,
            true,
        )?;
    }
    conn.execute(
        "UPDATE batches SET results_applied_at = ?2 WHERE id = ?1",
        params![batch_id, replan.now],
    )?;
    Ok(leftovers.len())
}

/// Takes pending cancel requests: marks their jobs canceled, ends their pending items canceled,
/// and flags their open batches for cancellation. Returns the names of the jobs canceled.
pub fn take_cancel_requests(conn: &Connection, now: i64) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, job_name FROM cancel_requests WHERE done_at IS NULL ORDER BY id",
    )?;
    let requests = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
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

/// A batch that was never created (no id, and no unknown create call) is simply dropped on
/// cancel: its items end canceled.
pub fn drop_uncreated(conn: &Connection, batch_id: i64, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE batches SET state = 'failed', error = 'canceled before it was sent', results_applied_at = ?2 WHERE id = ?1",
        params![batch_id, now],
    )?;
    for item_id in in_flight_items(conn, batch_id)? {
        let custom_id: String = conn.query_row(
            "SELECT custom_id FROM items WHERE id = ?1",
            [item_id],
            |r| r.get(0),
        )?;
        let record = AttemptRecord {
            outcome: "canceled",
            error: Some("canceled before the batch was sent".into()),
            ..Default::default()
        };
        close_attempt(conn, item_id, &record, now)?;
        finish(
            conn,
            item_id,
            ItemState::Canceled,
            &results::canceled_line(Some(&custom_id)),
            Some("canceled by nightshift cancel"),
            now,
        )?;
    }
    Ok(())
}

/// Moves items between the lanes as time passes: batch items still waiting to be packed whose
/// deadline a batch can no longer meet go real time; nightly real-time items held back by a
/// throttled lane (waiting on a `retry-after` or backoff) go to the next batch when their deadline
/// allows it. Returns (to real time, to batch).
pub fn reroute(conn: &Connection, now: i64) -> Result<(usize, usize)> {
    let turnaround = turnaround_ms(conn)?;
    let horizon = now + turnaround + turnaround / 4;
    let hours = turnaround as f64 / 3_600_000.0;
    let to_realtime = conn.execute(
        "UPDATE items SET lane = 'realtime', not_before = 0, updated_at = ?2,
                lane_reason = printf('re-routed: the deadline came nearer than the batch turnaround (%.1f h)', ?3)
         WHERE state = 'pending' AND lane = 'batch' AND parked = 0 AND mode = 'auto'
           AND deadline_at IS NOT NULL AND deadline_at < ?1",
        params![horizon, now, hours],
    )?;
    let to_batch = conn.execute(
        "UPDATE items SET lane = 'batch', updated_at = ?2,
                lane_reason = 're-routed: nightly work held back by a throttled real-time lane goes to the next batch'
         WHERE id IN (SELECT id FROM items
                      WHERE state = 'pending' AND lane = 'realtime' AND parked = 0
                        AND mode = 'auto' AND priority = 3
                        AND batch_ok = 1 AND not_before > ?2 + 30000
                        AND (deadline_at IS NULL OR deadline_at >= ?1)
                      LIMIT 10000)",
        params![horizon, now],
    )?;
    Ok((to_realtime, to_batch))
}

/// Items of a job by the lane that produced their final outcome or is working on them.
pub fn lanes(conn: &Connection, job_id: i64) -> Result<(i64, i64)> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(lane = 'batch'), 0), COALESCE(SUM(lane = 'realtime'), 0) FROM items WHERE job_id = ?1",
        [job_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{items, test_connection, test_job};

    const BATCH_LINE: &str = r#"{"custom_id":"a","deadline":"2026-11-24T06:00:00Z","params":{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"q"}]}}"#;

    #[test]
    fn packing_goes_class_by_class_and_leaves_closed_classes_waiting() {
        let line = |id: &str, priority: &str| {
            BATCH_LINE.replace("\"a\"", &format!("\"{id}\"")).replace(
                "\"deadline\"",
                &format!("\"priority\":\"{priority}\",\"mode\":\"batch\",\"deadline\""),
            )
        };
        let lines = [
            line("n1", "nightly"),
            line("h1", "high"),
            line("n2", "nightly"),
            line("h2", "high"),
        ];
        let conn = test_connection();
        let job_id = test_job(&conn, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        // At 00:00 UTC (now = 5 ms after the epoch) a 01:00-02:00 window is closed.
        let mut rules = Rules::default();
        rules.windows.0.insert(
            crate::model::job::Priority::Nightly,
            crate::policy::window::Window::parse("01:00-02:00", Some("UTC"), false)
                .expect("window"),
        );
        let closed = rules.windows.closed_ranks(5);
        assert_eq!(closed, vec![3]);
        assert_eq!(
            waiting_jobs(&conn, 5, &closed, 100).expect("waiting")[0].waiting,
            2
        );
        assert_eq!(
            waiting_jobs(&conn, 5, &[], 100).expect("waiting")[0].waiting,
            4
        );
        assert_eq!(
            waiting_jobs(&conn, 5, &[], 3).expect("waiting")[0].waiting,
            3,
            "capped"
        );
        let batch = pack(&conn, job_id, 100, 1 << 20, &rules, 5)
            .expect("pack")
            .expect("a batch");
        let ids: Vec<String> = requests(&conn, batch)
            .expect("requests")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            ids,
            vec!["h1", "h2"],
            "the nightly items wait for their window"
        );
        let batch = pack(&conn, job_id, 100, 1 << 20, &Rules::default(), 5)
            .expect("pack")
            .expect("a batch");
        assert_eq!(requests(&conn, batch).expect("requests").len(), 2);
    }

    #[test]
    fn packing_records_the_intent_and_puts_items_in_flight() {
        let conn = test_connection();
        let job_id = test_job(&conn, &[BATCH_LINE]);
        assert_eq!(
            waiting_jobs(&conn, i64::MAX, &[], 100_000).expect("waiting")[0].waiting,
            1
        );
        let batch_id = pack(&conn, job_id, 100, 1 << 20, &Rules::default(), 5)
            .expect("pack")
            .expect("a batch");
        let open = open(&conn).expect("open");
        assert_eq!(open.len(), 1);
        assert_eq!(
            (open[0].id, open[0].state.as_str(), open[0].request_count),
            (batch_id, "submitting", 1)
        );
        assert!(open[0].api_id.is_none());
        assert_eq!(requests(&conn, batch_id).expect("requests").len(), 1);
        assert!(
            pack(&conn, job_id, 100, 1 << 20, &Rules::default(), 5)
                .expect("pack")
                .is_none(),
            "nothing left"
        );
    }

    #[test]
    fn results_apply_once_and_expired_items_go_back_to_the_planner() {
        let conn = test_connection();
        let job_id = test_job(&conn, &[BATCH_LINE, &BATCH_LINE.replace("\"a\"", "\"b\"")]);
        let batch_id = pack(&conn, job_id, 100, 1 << 20, &Rules::default(), 5)
            .expect("pack")
            .expect("a batch");
        let replan = Replan {
            now: 10,
            max_attempts: 8,
            rpm_for: &|_| None,
            rules: &Rules::default(),
        };
        let lines = vec![
            r#"{"custom_id":"a","result":{"type":"succeeded","message":{"type":"message","usage":{"input_tokens":3,"output_tokens":4}}}}"#.to_owned(),
            r#"{"custom_id":"b","result":{"type":"expired"}}"#.to_owned(),
        ];
        assert_eq!(
            apply_results(&conn, batch_id, "msgbatch_1", &lines, &replan).expect("apply"),
            2
        );
        assert_eq!(
            apply_results(&conn, batch_id, "msgbatch_1", &lines, &replan).expect("again"),
            0,
            "idempotent"
        );
        let c = items::counts(&conn, job_id).expect("counts");
        assert_eq!((c.succeeded, c.pending, c.in_flight), (1, 1, 0));
        assert_eq!(finish_results(&conn, batch_id, &replan).expect("finish"), 0);
    }

    #[test]
    fn items_whose_deadline_nears_are_pulled_to_real_time() {
        let conn = test_connection();
        let job_id = test_job(&conn, &[BATCH_LINE]);
        assert_eq!(
            lanes(&conn, job_id).expect("lanes"),
            (1, 0),
            "a day away: batch"
        );
        // Six hours before the deadline, with 24 h assumed for a batch: real time.
        let (to_realtime, to_batch) =
            reroute(&conn, 1_795_500_000_000 - 6 * 3_600_000).expect("reroute");
        assert_eq!((to_realtime, to_batch), (1, 0));
        assert_eq!(lanes(&conn, job_id).expect("lanes"), (0, 1));
    }
}
