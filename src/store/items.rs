//! SQL for items: intake, the real-time lane's transitions, results bookkeeping, counts.

use crate::store::sql::{Conn, Dialect, OptionalExtension, params};
use serde_json::json;

use super::Result;
use super::holds::PARK_IF_HELD;
use crate::model::job::{Mode, Priority};
use crate::model::job_file::repeated_custom_id;
use crate::model::line::{ParsedLine, ValidLine};
use crate::model::results;
use crate::model::state::{ItemState, Lane};
use crate::policy::outcome::{AttemptRecord, ItemUpdate};
use crate::policy::planner::{Plan, batch_unsupported_field};
use crate::policy::prices::PriceTable;

/// Inserts one chunk of parsed lines, each valid one in the lane `plan` chooses for it. A custom_id
/// seen earlier in the job makes the line an errored item with no custom_id, naming the line it
/// repeats.
pub fn insert_chunk(
    conn: &Conn,
    job_id: i64,
    file: &str,
    lines: &[(u64, ParsedLine)],
    now: i64,
    plan: &dyn Fn(&ValidLine) -> Plan,
) -> Result<()> {
    let (tenant, priority, canceled): (String, String, bool) = conn.query_row(
        "SELECT tenant, priority, canceled_at IS NOT NULL FROM jobs WHERE id = ?1",
        [job_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let default_rank = priority.parse::<Priority>().map(|p| p.rank()).unwrap_or(3);
    let mut insert_valid = conn.prepare_cached(
        "INSERT INTO items (job_id, line_no, custom_id, params, model, max_tokens, input_estimate,
                            tenant, priority, mode, deadline_at, lane, lane_reason, state, updated_at, batch_ok,
                            cache_key, cache_tokens, cache_ttl_ms, cache_added, parked)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'pending', ?14, ?15, ?16, ?17, ?18, ?19, ?20)
         ON CONFLICT DO NOTHING",
    )?;
    // A paused job or tenant: its new items wait with the rest.
    let held = super::holds::Held::of_job(conn, job_id)?;
    let mut insert_errored = conn.prepare_cached(
        "INSERT INTO items (job_id, line_no, custom_id, tenant, priority, mode, state, error, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'auto', 'errored', ?6, ?7)",
    )?;
    let mut first_line =
        conn.prepare_cached("SELECT line_no FROM items WHERE job_id = ?1 AND custom_id = ?2")?;
    for (line_no, parsed) in lines {
        let line_no = *line_no as i64;
        let (custom_id, error) = match parsed {
            ParsedLine::Valid(v) => {
                let lane = plan(v);
                let inserted = insert_valid.execute(params![
                    job_id,
                    line_no,
                    v.custom_id,
                    v.params,
                    v.model,
                    v.max_tokens as i64,
                    v.input_estimate as i64,
                    v.tenant,
                    v.priority.rank(),
                    v.mode.as_str(),
                    v.deadline_at,
                    lane.lane.as_str(),
                    lane.reason,
                    now,
                    batch_unsupported_field(&v.params).is_none(),
                    v.cache.map(|c| c.key),
                    v.cache.map(|c| c.tokens as i64),
                    v.cache.map(|c| c.ttl_ms as i64),
                    v.cache_added,
                    held.parked(&v.tenant),
                ]);
                // Nothing inserted: the custom_id is the job's already (a failed statement
                // would end a PostgreSQL transaction, so the conflict is asked to do nothing).
                match inserted? {
                    0 => (Some(v.custom_id.as_str()), None),
                    _ => continue,
                }
            }
            ParsedLine::Invalid { custom_id, error } => (custom_id.as_deref(), Some(error)),
        };
        // An invalid line, or a valid one whose custom_id repeats an earlier line.
        let repeats: Option<i64> = match custom_id {
            Some(id) => first_line
                .query_row(params![job_id, id], |r| r.get(0))
                .optional()?,
            None => None,
        };
        let repeated;
        let (error, kept_id) = match (repeats, error) {
            (Some(first), _) => {
                repeated =
                    repeated_custom_id(line_no as u64, custom_id.unwrap_or_default(), first as u64);
                (&repeated, None)
            }
            (None, Some(error)) => (error, custom_id),
            (None, None) => unreachable!("a valid line is only here when its custom_id repeats"),
        };
        let field = error.field.clone();
        let message = error.message(file);
        let line_id = results::line_custom_id(line_no as u64);
        let result = results::errored_line(
            Some(kept_id.unwrap_or(&line_id)),
            "invalid_request_error",
            &message,
            Some(json!({"file": file, "line": line_no, "field": field})),
        );
        insert_errored.execute(params![
            job_id,
            line_no,
            kept_id,
            tenant,
            default_rank,
            message,
            now
        ])?;
        super::results::append_to(conn, job_id, conn.last_insert_rowid()?, &result)?;
    }
    if canceled {
        // `nightshift cancel` came while the file was still being read.
        cancel_pending(conn, job_id, now)?;
    }
    Ok(())
}

/// Ends every pending item of a job `canceled` (with its results line). Returns how many.
pub fn cancel_pending(conn: &Conn, job_id: i64, now: i64) -> Result<usize> {
    let mut select = conn.prepare_cached(
        "SELECT id, custom_id FROM items WHERE job_id = ?1 AND state = 'pending'",
    )?;
    let ids: Vec<(i64, Option<String>)> = select
        .query_map([job_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<crate::store::Result<_>>()?;
    let mut update = conn.prepare_cached(
        "UPDATE items SET state = 'canceled', error = 'canceled by nightshift cancel', updated_at = ?2
         WHERE id = ?1 AND state = 'pending'",
    )?;
    for (id, custom_id) in &ids {
        if update.execute(params![id, now])? == 1 {
            let line = results::canceled_line(custom_id.as_deref());
            super::results::append_to(conn, job_id, *id, &line)?;
        }
    }
    Ok(ids.len())
}

/// An item waiting for the real-time lane (without its body, which is read when it is sent).
#[derive(Debug, Clone)]
pub struct ReadyItem {
    pub id: i64,
    pub tenant: String,
    pub model: String,
    pub max_tokens: u64,
    pub input_estimate: u64,
    pub priority: i64,
    pub cache: Option<crate::model::prompt_cache::CachePrefix>,
}

/// Pending real-time items whose backoff has passed, highest priority first, then in line order,
/// leaving out (tenant, model) pairs in `skip` (no route of the tenant can take the model now),
/// so they cannot starve the others, priority classes in `closed_ranks` (outside their time
/// window), and items marking a cached prefix in `waiting_prefixes` (another call is writing it).
pub fn ready_realtime(
    conn: &Conn,
    now: i64,
    limit: i64,
    skip: &[(String, String)],
    closed_ranks: &[i64],
    waiting_prefixes: &[i64],
) -> Result<Vec<ReadyItem>> {
    let sql = format!(
        "SELECT id, model, max_tokens, input_estimate, priority, cache_key, cache_tokens, cache_ttl_ms, tenant
         FROM items
         WHERE state = 'pending' AND lane = 'realtime' AND parked = 0 AND not_before <= ?1
           AND priority IN (SELECT CAST(value AS BIGINT) FROM {})
           AND (cache_key IS NULL OR cache_key NOT IN (SELECT CAST(value AS BIGINT) FROM {})) {}
         ORDER BY priority, id LIMIT ?2",
        conn.json_each(3),
        conn.json_each(4),
        match (skip.is_empty(), conn.dialect()) {
            (true, _) => "",
            (false, Dialect::Sqlite) => {
                "AND (tenant, model) NOT IN (SELECT value ->> 0, value ->> 1 FROM json_each(?5))"
            }
            (false, Dialect::Postgres) => {
                "AND (tenant, model) NOT IN (SELECT value ->> 0, value ->> 1
                                             FROM json_array_elements(CAST(?5 AS TEXT)::json) AS e(value))"
            }
        }
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    // The open classes, as `IN`: SQLite then seeks each class in the index instead of walking
    // past every item of a closed one (0.1 ms instead of 90 ms with a million held nightly items).
    let open = crate::policy::window::open_ranks(closed_ranks);
    let open = serde_json::to_string(&open).unwrap_or_else(|_| "[]".into());
    let waiting = serde_json::to_string(waiting_prefixes).unwrap_or_else(|_| "[]".into());
    let skip = serde_json::to_string(skip).unwrap_or_else(|_| "[]".into());
    let mut values: Vec<&dyn crate::store::sql::ToValue> = vec![&now, &limit, &open, &waiting];
    if skip != "[]" {
        values.push(&skip);
    }
    let rows = stmt.query_map(values.as_slice(), |r| {
        Ok(ReadyItem {
            id: r.get(0)?,
            tenant: r.get(8)?,
            model: r.get(1)?,
            max_tokens: r.get::<_, i64>(2)? as u64,
            input_estimate: r.get::<_, i64>(3)? as u64,
            priority: r.get(4)?,
            cache: match (r.get::<_, Option<i64>>(5)?, r.get::<_, Option<i64>>(6)?) {
                (Some(key), Some(tokens)) => Some(crate::model::prompt_cache::CachePrefix {
                    key,
                    tokens: tokens as u64,
                    ttl_ms: r.get::<_, Option<i64>>(7)?.unwrap_or(300_000) as u64,
                }),
                _ => None,
            },
        })
    })?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

/// The earliest `not_before` among pending real-time items still backing off, and parked items
/// (which the lane unparks when their time comes).
pub fn next_ready_at(conn: &Conn, now: i64) -> Result<Option<i64>> {
    conn.query_row(
        "SELECT MIN(at) FROM (
             SELECT MIN(not_before) AS at FROM items
             WHERE state = 'pending' AND lane = 'realtime' AND parked = 0 AND not_before > ?1
             UNION ALL
             SELECT MIN(not_before) FROM items WHERE parked = 1) AS soonest",
        [now],
        |r| r.get(0),
    )
}

/// What the lane needs to send an item it has marked in flight.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub item_id: i64,
    pub attempt_id: i64,
    /// The fencing token of its lease: its outcome is recorded only while the lease is this one.
    pub lease_token: i64,
    pub attempt: i64,
    pub failures: i64,
    pub job_name: String,
    pub custom_id: String,
    pub params: String,
    /// Calls of this item whose outcome is unknown: sending again may run it twice.
    pub unknown_before: i64,
    pub model: String,
    pub max_tokens: i64,
}

/// An item with the facts of its job, as the lanes' decisions read it.
#[derive(Debug, Clone)]
pub struct ItemRow {
    pub id: i64,
    pub job_id: i64,
    pub job_name: String,
    /// None only on an invalid line's item, which is never sent.
    pub custom_id: Option<String>,
    pub params: String,
    pub model: String,
    pub max_tokens: i64,
    pub input_estimate: i64,
    pub tenant: String,
    pub priority: Priority,
    pub mode: Mode,
    pub deadline_at: Option<i64>,
    pub attempts: i64,
    pub failures: i64,
    /// No field of its request is one the batch endpoint refuses.
    pub batch_ok: bool,
    pub job_canceled: bool,
    /// Lines of its job read so far (a stand-in for the job's size while it is read).
    pub job_lines: i64,
}

/// One item, for a lane's decision about it.
pub fn item(conn: &Conn, item_id: i64) -> Result<ItemRow> {
    conn.prepare_cached(
        "SELECT i.id, i.job_id, j.name, i.custom_id, i.params, i.model, i.max_tokens,
                    i.input_estimate, i.tenant, i.priority, i.mode, i.deadline_at, i.attempts,
                    i.failures, i.batch_ok, j.canceled_at IS NOT NULL, j.ingest_lines
             FROM items i JOIN jobs j ON j.id = i.job_id WHERE i.id = ?1",
    )?
    .query_row([item_id], |r| {
        Ok(ItemRow {
            id: r.get(0)?,
            job_id: r.get(1)?,
            job_name: r.get(2)?,
            custom_id: r.get(3)?,
            params: r.get(4)?,
            model: r.get(5)?,
            max_tokens: r.get(6)?,
            input_estimate: r.get(7)?,
            tenant: r.get(8)?,
            priority: Priority::from_rank(r.get(9)?),
            mode: r.get::<_, String>(10)?.parse().unwrap_or(Mode::Auto),
            deadline_at: r.get(11)?,
            attempts: r.get(12)?,
            failures: r.get(13)?,
            batch_ok: r.get(14)?,
            job_canceled: r.get(15)?,
            job_lines: r.get(16)?,
        })
    })
}

/// The item of job `job_id` named `custom_id`: its own custom_id, or `nightshift:line:N` (the
/// name a line without a usable custom_id has in the results).
pub fn find(conn: &Conn, job_id: i64, custom_id: &str) -> Result<Option<i64>> {
    let by_line = custom_id
        .strip_prefix(results::LINE_ID_PREFIX)
        .and_then(|n| n.parse::<i64>().ok());
    let found = match by_line {
        Some(line_no) => conn
            .query_row(
                "SELECT id FROM items WHERE job_id = ?1 AND line_no = ?2",
                params![job_id, line_no],
                |r| r.get(0),
            )
            .optional()?,
        None => conn
            .query_row(
                "SELECT id FROM items WHERE job_id = ?1 AND custom_id = ?2",
                params![job_id, custom_id],
                |r| r.get(0),
            )
            .optional()?,
    };
    Ok(found)
}

/// What `nightshift item` shows of the item row itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ItemDetail {
    /// Its line in the job file (from 1).
    pub line: i64,
    pub custom_id: Option<String>,
    pub state: String,
    /// `realtime` or `batch` (null for a line errored at intake).
    pub lane: Option<String>,
    /// Why the planner chose the lane (or what moved it since).
    pub lane_reason: Option<String>,
    pub tenant: String,
    pub model: Option<String>,
    /// The model the request asked for, when a budget cap downgraded it.
    pub downgraded_from: Option<String>,
    pub priority: &'static str,
    pub mode: String,
    /// Calls sent, and those that failed in a way that counts toward `max_attempts`.
    pub attempts: i64,
    pub failures: i64,
    /// Why it errored, for people.
    pub error: Option<String>,
    /// Held: `paused` (nightshift pause) or `budget` (until its cap's next period); null if not.
    pub held: Option<&'static str>,
    /// The earliest it may be sent again (backoff, retry-after, a budget), Unix ms; 0: now.
    pub not_before: i64,
    /// The batch it is (or was last) in: the local id.
    pub batch_id: Option<i64>,
    /// The prefix it marks for the prompt cache, in estimated tokens, and whether
    /// `cache = "auto"` added the breakpoint.
    pub cache_prefix_tokens: Option<i64>,
    pub cache_added: bool,
    pub updated_at: i64,
}

pub fn detail(conn: &Conn, item_id: i64) -> Result<ItemDetail> {
    conn.query_row(
        "SELECT line_no, custom_id, state, lane, lane_reason, tenant, model, downgraded_from,
                priority, mode, attempts, failures, error, parked, not_before, batch_id,
                cache_tokens, cache_added, updated_at
         FROM items WHERE id = ?1",
        [item_id],
        |r| {
            Ok(ItemDetail {
                line: r.get(0)?,
                custom_id: r.get(1)?,
                state: r.get(2)?,
                lane: r.get(3)?,
                lane_reason: r.get(4)?,
                tenant: r.get(5)?,
                model: r.get(6)?,
                downgraded_from: r.get(7)?,
                priority: Priority::from_rank(r.get(8)?).as_str(),
                mode: r.get(9)?,
                attempts: r.get(10)?,
                failures: r.get(11)?,
                error: r.get(12)?,
                held: match r.get::<_, i64>(13)? {
                    1 => Some("budget"),
                    2 => Some("paused"),
                    _ => None,
                },
                not_before: r.get(14)?,
                batch_id: r.get(15)?,
                cache_prefix_tokens: r.get(16)?,
                cache_added: r.get(17)?,
                updated_at: r.get(18)?,
            })
        },
    )
}

/// Whether an item is still pending (not canceled, sent or ended meanwhile) and this transaction
/// may claim it. On PostgreSQL the row is locked until the transaction ends, and an item another
/// daemon is claiming at this moment is skipped (`FOR UPDATE SKIP LOCKED`): two daemons never
/// both admit it.
pub fn claimable(conn: &Conn, item_id: i64) -> Result<bool> {
    let sql = format!(
        "SELECT state = 'pending' AND parked = 0 FROM items WHERE id = ?1{}",
        conn.dialect().skip_locked()
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([item_id], |r| r.get::<_, bool>(0))
        .optional()?
        .unwrap_or(false))
}

/// Marks a pending item in flight in `lane` and opens its attempt row, before anything is sent
/// (its budget is checked first, by the lane). `sent_with`: the class's concurrency and the
/// input estimate at admission, kept for diagnosis. The item is leased to `holder`, under a new
/// fencing token; only a pending item is (else [`super::StoreError::NotPending`]).
pub fn mark_in_flight(
    conn: &Conn,
    item_id: i64,
    lane: Lane,
    sent_with: (i64, i64),
    route: Option<&str>,
    holder: &super::leases::Holder,
    now: i64,
) -> Result<Dispatch> {
    let lease_token: i64 = conn
        .prepare_cached(
            "UPDATE items SET state = 'in_flight', attempts = attempts + 1, updated_at = ?2,
                    lease_owner = ?3, lease_expires_at = ?4, lease_token = lease_token + 1
             WHERE id = ?1 AND state = 'pending'
             RETURNING lease_token",
        )?
        .query_row(params![item_id, now, holder.id, holder.expiry(now)], |r| {
            r.get(0)
        })
        .optional()?
        .ok_or(super::StoreError::NotPending(item_id))?;
    let item = item(conn, item_id)?;
    conn.execute(
        "INSERT INTO attempts (item_id, attempt, lane, model, started_at, concurrency, input_estimate, route)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![item_id, item.attempts, lane.as_str(), item.model, now, sent_with.0, sent_with.1, route],
    )?;
    let attempt_id = conn.last_insert_rowid()?;
    let unknown_before: i64 = conn.query_row(
        "SELECT COUNT(*) FROM attempts WHERE item_id = ?1 AND outcome = 'unknown'",
        [item_id],
        |r| r.get(0),
    )?;
    Ok(Dispatch {
        item_id,
        attempt_id,
        lease_token,
        attempt: item.attempts,
        failures: item.failures,
        job_name: item.job_name,
        custom_id: item.custom_id.unwrap_or_default(),
        params: item.params,
        unknown_before,
        model: item.model,
        max_tokens: item.max_tokens,
    })
}

/// What a daemon holds while an item is in flight: its attempt, under the lease's fencing token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub item_id: i64,
    pub attempt_id: i64,
    pub lease_token: i64,
}

impl Dispatch {
    pub fn claim(&self) -> Claim {
        Claim {
            item_id: self.item_id,
            attempt_id: self.attempt_id,
            lease_token: self.lease_token,
        }
    }
}

/// Fails with [`StoreError::LeaseLost`] unless the item is still in flight under the claim's
/// lease: a daemon whose lease expired (another took the item back) records nothing. Ends the
/// lease (and, on PostgreSQL, locks the row until the transaction ends).
pub fn check_lease(conn: &Conn, claim: &Claim) -> Result<()> {
    let held = conn
        .prepare_cached(
            "UPDATE items SET lease_owner = NULL, lease_expires_at = NULL
             WHERE id = ?1 AND lease_token = ?2 AND state = 'in_flight'",
        )?
        .execute(params![claim.item_id, claim.lease_token])?;
    if held == 0 {
        return Err(super::StoreError::LeaseLost);
    }
    Ok(())
}

/// Closes an attempt and moves its item on, in one transaction; a billed call gets its ledger row
/// (which settles the item's budget reservation with the real cost).
pub fn record_outcome(
    conn: &Conn,
    prices: &PriceTable,
    claim: &Claim,
    record: &AttemptRecord,
    update: &ItemUpdate,
    now: i64,
) -> Result<()> {
    let Claim {
        item_id,
        attempt_id,
        ..
    } = *claim;
    check_lease(conn, claim)?;
    conn.execute(
        "UPDATE attempts SET finished_at = ?2, outcome = ?3, http_status = ?4, request_id = ?5,
                retry_after_ms = ?6, error = ?7, input_tokens = ?8, output_tokens = ?9
         WHERE id = ?1",
        params![
            attempt_id,
            now,
            record.outcome.as_str(),
            record.http_status,
            record.request_id,
            record.retry_after_ms,
            record.error,
            record.input_tokens.map(|n| n as i64),
            record.output_tokens.map(|n| n as i64),
        ],
    )?;
    if let Some(usage) = &record.usage {
        super::ledger::record(
            conn,
            prices,
            item_id,
            Lane::Realtime,
            usage,
            record.request_id.as_deref(),
            now,
        )?;
    }
    match update {
        ItemUpdate::Final {
            state,
            result_line,
            error,
        } => {
            let ended = conn.execute(
                "UPDATE items SET state = ?2, error = ?3, updated_at = ?4
                 WHERE id = ?1 AND state = 'in_flight'",
                params![item_id, state.as_str(), error, now],
            )?;
            if ended == 1 {
                super::results::append(conn, item_id, result_line)?;
            }
        }
        ItemUpdate::Retry { not_before, failed } => {
            conn.execute(
                &format!(
                    "UPDATE items SET state = 'pending', not_before = ?2, failures = failures + ?3, updated_at = ?4,
                            {PARK_IF_HELD}
                     WHERE id = ?1 AND state = 'in_flight'"
                ),
                params![item_id, not_before, i64::from(*failed), now],
            )?;
            // A job canceled while the call was out: no retry, the item ends canceled.
            let job_id: i64 = conn
                .query_row(
                    "SELECT i.job_id FROM items i JOIN jobs j ON j.id = i.job_id
                 WHERE i.id = ?1 AND j.canceled_at IS NOT NULL",
                    [item_id],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            if job_id != 0 {
                cancel_pending(conn, job_id, now)?;
            }
        }
    }
    Ok(())
}

/// Whose in-flight real-time items [`requeue_in_flight`] takes back.
#[derive(Debug, Clone, Copy)]
pub enum Requeue<'a> {
    /// At a daemon's start: its own (it was killed, or stopped before their answers), those held
    /// by no one (made before leases) and those whose lease expired.
    StartOf(&'a str),
    /// Those whose lease expired: their daemon died, or stopped beating (paused, cut off).
    Expired,
}

/// Real-time items left in flight by a daemon that stopped go back to pending, and their open
/// attempts are recorded as `unknown` (the request may have reached the API); like any unknown
/// outcome this counts toward `max_attempts`. Their fencing token is raised, so the daemon that
/// held them can no longer record an outcome. Batch items stay in flight: their batch is polled
/// again. Returns how many items.
pub fn requeue_in_flight(conn: &Conn, whose: Requeue<'_>, now: i64) -> Result<usize> {
    // The items first, as recording an outcome does: each waits on the other's row locks in the
    // same order.
    let (whose_sql, owner) = match whose {
        Requeue::StartOf(owner) => (
            "(lease_owner IS NULL OR lease_owner = ?2 OR lease_expires_at < ?1)",
            Some(owner),
        ),
        // (`lease_owner IS NOT NULL`: the partial index `items_lease` holds just those rows.)
        Requeue::Expired => ("lease_owner IS NOT NULL AND lease_expires_at < ?1", None),
    };
    let mut values: Vec<&dyn crate::store::sql::ToValue> = vec![&now];
    if let Some(owner) = &owner {
        values.push(owner);
    }
    let ids: Vec<i64> = conn
        .prepare(&format!(
            "UPDATE items SET state = 'pending', failures = failures + 1, updated_at = ?1,
                    lease_owner = NULL, lease_expires_at = NULL, lease_token = lease_token + 1,
                    {PARK_IF_HELD}
             WHERE state = 'in_flight' AND batch_id IS NULL AND {whose_sql}
             RETURNING id"
        ))?
        .query_map(crate::store::sql::params_from_iter(values), |r| r.get(0))?
        .collect::<Result<_>>()?;
    let mut unknown = conn.prepare_cached(
        "UPDATE attempts SET outcome = 'unknown', finished_at = ?1,
                error = 'nightshift stopped while this call was in flight; its outcome is unknown, so the item is sent again'
         WHERE item_id = ?2 AND outcome IS NULL AND lane = 'realtime'",
    )?;
    for id in &ids {
        unknown.execute(params![now, id])?;
    }
    // Jobs canceled meanwhile: what went back to pending ends canceled.
    let mut canceled =
        conn.prepare("SELECT id FROM jobs WHERE canceled_at IS NOT NULL AND finished_at IS NULL")?;
    let jobs = canceled
        .query_map((), |r| r.get::<_, i64>(0))?
        .collect::<crate::store::Result<Vec<_>>>()?;
    for job_id in jobs {
        cancel_pending(conn, job_id, now)?;
    }
    Ok(ids.len())
}

/// Items of a job by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub total: u64,
    pub pending: u64,
    pub in_flight: u64,
    pub succeeded: u64,
    pub errored: u64,
    pub expired: u64,
    pub canceled: u64,
}

pub fn counts(conn: &Conn, job_id: i64) -> Result<Counts> {
    let mut stmt =
        conn.prepare_cached("SELECT state, COUNT(*) FROM items WHERE job_id = ?1 GROUP BY state")?;
    let mut counts = Counts::default();
    let rows = stmt.query_map([job_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    for row in rows {
        let (state, n) = row?;
        counts.add(&state, n);
    }
    Ok(counts)
}

impl Counts {
    /// Counts `n` more items in `state` (as the `items.state` column has it).
    pub fn add(&mut self, state: &str, n: u64) {
        self.total += n;
        match state.parse::<ItemState>() {
            Ok(ItemState::Pending) => self.pending += n,
            Ok(ItemState::InFlight) => self.in_flight += n,
            Ok(ItemState::Succeeded) => self.succeeded += n,
            Ok(ItemState::Errored) => self.errored += n,
            Ok(ItemState::Expired) => self.expired += n,
            Ok(ItemState::Canceled) => self.canceled += n,
            Err(_) => {}
        }
    }
}

/// Errored items of a job, in line order: (line, custom_id, error).
pub fn errored(conn: &Conn, job_id: i64, limit: i64) -> Result<Vec<(i64, Option<String>, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT line_no, custom_id, COALESCE(error, '') FROM items
         WHERE job_id = ?1 AND state = 'errored' ORDER BY line_no LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![job_id, limit], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    rows.collect::<crate::store::Result<Vec<_>>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::leases::test_holder;
    use crate::store::{test_connection, test_empty_job, test_insert};

    fn line(id: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","mode":"realtime","params":{{"model":"m","max_tokens":5,"messages":[{{"role":"user","content":"q"}}]}}}}"#
        )
    }

    /// Claims `item_id` for the real-time lane at `now`, as the test daemon.
    fn claim(conn: &Conn, item_id: i64, now: i64) -> Result<Dispatch> {
        mark_in_flight(
            conn,
            item_id,
            Lane::Realtime,
            (1, 1),
            None,
            &test_holder(),
            now,
        )
    }

    fn insert(conn: &Conn, job_id: i64, lines: &[String]) {
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        test_insert(conn, job_id, &lines);
    }

    #[test]
    fn duplicates_become_errored_items_without_custom_id() {
        let conn = test_connection();
        let job_id = test_empty_job(&conn);
        insert(
            &conn,
            job_id,
            &[line("a"), line("b"), line("a"), "{".into()],
        );
        let c = counts(&conn, job_id).expect("counts");
        assert_eq!((c.total, c.pending, c.errored), (4, 2, 2));
        let errors = errored(&conn, job_id, 10).expect("errored");
        assert_eq!(errors[0].0, 3);
        assert_eq!(errors[0].1, None);
        assert!(errors[0].2.contains("repeats line 1"), "{}", errors[0].2);
        assert!(errors[1].2.starts_with("j.jsonl line 4"), "{}", errors[1].2);
        let unwritten =
            super::super::results::unwritten(&conn, "test", 10, 1 << 20).expect("unwritten");
        assert_eq!(unwritten.len(), 2);
        assert!(
            unwritten[0]
                .line
                .contains("\"custom_id\":\"nightshift:line:3\""),
            "the repeat's line is named by its file line: {}",
            unwritten[0].line
        );
    }

    #[test]
    fn a_tenants_held_model_does_not_hold_back_another_tenants_items() {
        let conn = test_connection();
        let line = |id: &str, tenant: &str| {
            format!(
                r#"{{"custom_id":"{id}","tenant":"{tenant}","mode":"realtime","params":{{"model":"claude-haiku-5-5","max_tokens":5,"messages":[{{"role":"user","content":"q"}}]}}}}"#
            )
        };
        let lines = [line("a", "acme"), line("b", "beta"), line("c", "acme")];
        crate::store::test_job(&conn, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        let held = [("acme".to_owned(), "claude-haiku-5-5".to_owned())];
        let ready = ready_realtime(&conn, i64::MAX, 10, &held, &[], &[]).expect("ready");
        let tenants: Vec<&str> = ready.iter().map(|r| r.tenant.as_str()).collect();
        assert_eq!(tenants, ["beta"]);
        let all = ready_realtime(&conn, i64::MAX, 10, &[], &[], &[]).expect("ready");
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn in_flight_then_retry_then_final() {
        let conn = test_connection();
        let job_id = test_empty_job(&conn);
        insert(&conn, job_id, &[line("a")]);
        let ready = ready_realtime(&conn, 10, 10, &[], &[], &[]).expect("ready");
        assert_eq!(ready.len(), 1);
        let d = claim(&conn, ready[0].id, 10).expect("mark");
        assert_eq!((d.attempt, d.custom_id.as_str()), (1, "a"));
        assert!(
            !claimable(&conn, d.item_id).expect("pending"),
            "in flight, not pending"
        );
        let record = AttemptRecord {
            outcome: crate::model::state::AttemptOutcome::Retryable,
            http_status: Some(529),
            ..Default::default()
        };
        record_outcome(
            &conn,
            &PriceTable::default(),
            &d.claim(),
            &record,
            &ItemUpdate::Retry {
                not_before: 50,
                failed: true,
            },
            11,
        )
        .expect("record");
        assert!(
            ready_realtime(&conn, 20, 10, &[], &[], &[])
                .expect("ready")
                .is_empty()
        );
        assert_eq!(next_ready_at(&conn, 20).expect("next"), Some(50));
        let d = claim(&conn, d.item_id, 60).expect("mark");
        assert_eq!((d.attempt, d.failures), (2, 1));
        let update = ItemUpdate::Final {
            state: ItemState::Succeeded,
            result_line: "{}".into(),
            error: None,
        };
        record_outcome(
            &conn,
            &PriceTable::default(),
            &d.claim(),
            &AttemptRecord {
                outcome: crate::model::state::AttemptOutcome::Succeeded,
                ..Default::default()
            },
            &update,
            61,
        )
        .expect("record");
        assert_eq!(counts(&conn, job_id).expect("counts").succeeded, 1);
    }

    #[test]
    fn higher_classes_are_admitted_first() {
        let conn = test_connection();
        let job_id = test_empty_job(&conn);
        let with = |id: &str, priority: &str| {
            line(id).replace("\"mode\"", &format!("\"priority\":\"{priority}\",\"mode\""))
        };
        insert(
            &conn,
            job_id,
            &[
                with("n", "nightly"),
                with("o", "normal"),
                with("i", "interactive"),
                with("h", "high"),
            ],
        );
        let ready = ready_realtime(&conn, 10, 10, &[], &[], &[]).expect("ready");
        let order: Vec<i64> = ready.iter().map(|r| r.priority).collect();
        assert_eq!(
            order,
            vec![0, 1, 2, 3],
            "interactive, high, normal, nightly"
        );
    }

    #[test]
    fn requeue_records_unknown_outcomes() {
        let conn = test_connection();
        let job_id = test_empty_job(&conn);
        insert(&conn, job_id, &[line("a"), line("b")]);
        let ready = ready_realtime(&conn, 10, 10, &[], &[], &[]).expect("ready");
        claim(&conn, ready[0].id, 10).expect("mark");
        assert_eq!(
            requeue_in_flight(&conn, Requeue::StartOf("test"), 20).expect("requeue"),
            1
        );
        let d = claim(&conn, ready[0].id, 30).expect("mark");
        assert_eq!(d.unknown_before, 1);
        assert_eq!(d.attempt, 2);
    }
}
