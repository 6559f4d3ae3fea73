//! The batch lane's work inside the store's transactions: read, decide, write in one
//! `Store::call`. Packing checks each item's budget as it is taken; each result line is judged
//! (`policy::batch`) and applied with its ledger row; an item that comes back without a final
//! outcome ends, or goes back to the planner.

use crate::store::sql::Conn;

use crate::lanes::admission::{self, Admission, Rules};
use crate::model::results::{BatchResultLine, ResultHead};
use crate::model::state::{AttemptOutcome, ItemState, Lane};
use crate::policy::batch::{Returning, Verdict, ending, judge};
use crate::policy::outcome::AttemptRecord;
use crate::policy::planner;
use crate::policy::window::open_ranks;
use crate::store::{self, batches, items, ledger};

/// Items a budget may stop in one [`pack`] call before it returns what it has.
const MAX_STOPPED_PER_PACK: usize = 2_000;

/// What sending an item back to the planner needs.
pub struct Replan<'a> {
    pub now: i64,
    pub max_attempts: i64,
    pub rpm_for: &'a (dyn Fn(&str) -> Option<u64> + Send + Sync),
    /// Budgets and prices: what packing admits, and what the ledger charges.
    pub rules: &'a Rules,
}

/// Packs up to `max_requests` waiting items of a job (and no more than `max_bytes` of request
/// bodies), held by `holder`, into a new batch in state `submitting` on `route`, of the tenants it allows: the
/// intent, recorded before the create call.
/// Each item is first checked against its tenant's budget (which reserves its worst case, or
/// rejects, downgrades or defers it; see [`admission`]).
/// The items go in flight, each with an open attempt. Returns the batch's local id.
pub fn pack(
    conn: &Conn,
    job_id: i64,
    route: &batches::PackRoute<'_>,
    (max_requests, max_bytes): (i64, i64),
    rules: &Rules,
    holder: &store::leases::Holder,
    now: i64,
) -> store::Result<Option<i64>> {
    let closed = rules.windows.closed_ranks(now);
    let mut chosen = Vec::new();
    let mut bytes = 0i64;
    let mut stopped_total = 0;
    // Class by class (those whose window is open), highest first; within a class, the items
    // sharing a cached prefix together, in line order.
    // Items the budget stops leave the candidates; look further until a batch fills or none are
    // left, but stop a long run of them early: the store's writer must not be held for long (the
    // lane packs again within a second, and the stopped items are no longer candidates).
    'fill: for rank in open_ranks(&closed) {
        let mut after = batches::PACK_START;
        loop {
            let limit = max_requests - chosen.len() as i64;
            if limit <= 0 {
                break 'fill;
            }
            let candidates =
                batches::pack_candidates(conn, job_id, route, rank, after, limit, now)?;
            let mut stopped = 0;
            for batches::PackCandidate { id, size, cursor } in candidates {
                if !chosen.is_empty() && bytes + size > max_bytes {
                    break 'fill;
                }
                after = cursor;
                let mut admitted = admission::admit(conn, id, Lane::Batch, rules, now)?;
                if admitted == Admission::Downgraded {
                    admitted = admission::admit(conn, id, Lane::Batch, rules, now)?;
                }
                if admitted != Admission::Admitted {
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
    batches::create_intent(conn, job_id, route.name, &chosen, bytes, holder, now).map(Some)
}

/// Judges result lines of a batch (`lines`: each with the item its custom_id names, see
/// [`batches::in_flight_ids`]). Pure, and done before the store's writer takes them: it then
/// only writes.
pub fn judge_lines(api_id: &str, lines: Vec<(i64, String)>) -> Vec<(i64, Verdict)> {
    lines
        .into_iter()
        .filter_map(|(item_id, line)| {
            let Some(parsed) = BatchResultLine::read(&line) else {
                tracing::warn!(
                    batch = api_id,
                    "a results line that is not a result; skipped"
                );
                return None;
            };
            let head = ResultHead::read(parsed.result);
            Some((item_id, judge(&parsed.custom_id, &line, head, api_id)))
        })
        .collect()
}

/// Applies judged result lines of a batch; in item order they touch each page of the items once.
/// Idempotent: a line whose item is no longer in flight in this batch (applied before a crash,
/// say) changes nothing. The lines that end their items are written a group of rows per
/// statement. Returns how many lines changed an item.
pub fn apply_results(
    conn: &Conn,
    batch_id: i64,
    api_id: &str,
    judged: &[(i64, Verdict)],
    replan: &Replan<'_>,
) -> store::Result<usize> {
    // (item, state, error), its attempt's record and what it is billed.
    let mut ends = Vec::with_capacity(judged.len());
    let mut records = Vec::with_capacity(judged.len());
    let mut sent_back = 0;
    for (item_id, verdict) in judged {
        let item_id = *item_id;
        match verdict {
            Verdict::Succeeded { usage, line } => {
                let record = AttemptRecord {
                    outcome: AttemptOutcome::Succeeded,
                    input_tokens: Some(usage.input_tokens),
                    output_tokens: Some(usage.output_tokens),
                    ..Default::default()
                };
                ends.push((item_id, ItemState::Succeeded, None));
                records.push((record, line, Some(usage)));
            }
            Verdict::Fatal {
                record,
                line,
                error,
            } => {
                ends.push((item_id, ItemState::Errored, Some(error.as_str())));
                records.push((record.clone(), line, None));
            }
            Verdict::SendBack { outcome, why } => {
                if batches::is_in_flight(conn, batch_id, item_id)? {
                    // A canceled batch is an operator's doing (a cancel, a pause with
                    // --cancel-batches), not the request's: it uses up no attempt.
                    let counts = *outcome != AttemptOutcome::Canceled;
                    send_back(conn, item_id, *outcome, why, replan, counts)?;
                    sent_back += 1;
                }
            }
        }
    }
    // The items end (those still in flight here) in the statements that read whose they are.
    // Taken out of `whose` as each is met: a line repeated in the file ends its item once.
    let mut whose = batches::end_in_flight(conn, batch_id, &ends, replan.now)?;
    let ended: Vec<_> = ends
        .iter()
        .zip(&records)
        .filter_map(|((item_id, ..), (record, line, usage))| {
            let w = whose.remove(item_id)?;
            Some((*item_id, w, record, line.as_str(), *usage))
        })
        .collect();
    let closing: Vec<_> = ended
        .iter()
        .map(|(item_id, _, record, ..)| (*item_id, *record))
        .collect();
    batches::close_attempts(conn, &closing, replan.now)?;
    let charges: Vec<_> = ended
        .iter()
        .filter_map(|(item_id, whose, _, _, usage)| {
            Some(ledger::Charge {
                item_id: *item_id,
                whose,
                usage: (*usage)?,
            })
        })
        .collect();
    ledger::record_all(
        conn,
        &replan.rules.prices,
        Lane::Batch,
        Some(api_id),
        &charges,
        replan.now,
    )?;
    let lines: Vec<_> = ended
        .iter()
        .map(|(item_id, whose, _, line, _)| (whose.job_id, *item_id, *line))
        .collect();
    store::results::append_all(conn, &lines)?;
    Ok(ended.len() + sent_back)
}

/// After all result lines are applied: items of the batch still in flight had no line (which the
/// API should never do) and go back to the planner; the batch is done.
pub fn finish_results(conn: &Conn, batch_id: i64, replan: &Replan<'_>) -> store::Result<usize> {
    let leftovers = batches::in_flight_items(conn, batch_id)?;
    for item_id in &leftovers {
        send_back(
            conn,
            *item_id,
            AttemptOutcome::Unknown,
            "its batch ended without a result for it",
            replan,
            true,
        )?;
    }
    batches::mark_results_applied(conn, batch_id, replan.now)?;
    Ok(leftovers.len())
}

/// A batch that was never created (no id, and no unknown create call) is simply dropped on
/// cancel: its items end canceled.
pub fn drop_uncreated(conn: &Conn, batch_id: i64, now: i64) -> store::Result<()> {
    batches::mark_failed(conn, batch_id, "canceled before it was sent", now)?;
    for item_id in batches::in_flight_items(conn, batch_id)? {
        let item = items::item(conn, item_id)?;
        let record = AttemptRecord {
            outcome: AttemptOutcome::Canceled,
            error: Some("canceled before the batch was sent".into()),
            ..Default::default()
        };
        batches::close_attempt(conn, item_id, &record, now)?;
        batches::end_item(
            conn,
            item_id,
            ItemState::Canceled,
            &crate::model::results::canceled_line(item.custom_id.as_deref()),
            Some("canceled by nightshift cancel"),
            now,
        )?;
    }
    Ok(())
}

/// Moves items between the lanes as time passes (see [`batches::reroute`]), by the planner's
/// deadline rule. Returns (to real time, to batch).
pub fn reroute(conn: &Conn, now: i64) -> store::Result<(usize, usize)> {
    let turnaround = batches::turnaround_ms(conn)?;
    let horizon = planner::batch_horizon(now, turnaround);
    let nightly = crate::model::job::Priority::Nightly.rank();
    batches::reroute(conn, now, horizon, turnaround, nightly)
}

/// Why a whole batch is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The API keeps refusing to show it or its results: each item used up an attempt.
    Unreadable,
    /// The API refused to create it (a 4xx other than 429). `counts`: whether that uses up an
    /// attempt of each (not when the batch was too large).
    Refused { counts: bool },
    /// It was not created: its route refuses the account or key, or is paused. Its items go
    /// back to be packed for another route; no attempt is used up.
    RouteBlocked,
}

/// Marks a batch failed and sends its items in flight back to the planner, each recorded with
/// why (and `error`).
pub fn fail_batch(
    conn: &Conn,
    batch_id: i64,
    error: &str,
    failure: Failure,
    replan: &Replan<'_>,
) -> store::Result<()> {
    let (outcome, why, counts) = match failure {
        Failure::Unreadable => (AttemptOutcome::Unknown, "its batch could not be read", true),
        Failure::Refused { counts } => (AttemptOutcome::Fatal, "the batch was refused", counts),
        Failure::RouteBlocked => (
            AttemptOutcome::Blocked,
            "the batch was not created on its route",
            false,
        ),
    };
    batches::mark_failed(conn, batch_id, error, replan.now)?;
    for item_id in batches::in_flight_items(conn, batch_id)? {
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

/// What became of a batch whose create call the API refused as an invalid request.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// Split in two, this batch and the one given, each to be created afresh: the culprit is in
    /// one of them.
    Split(i64),
    /// It held one request, the culprit: errored, naming its file and line.
    Errored { file: String, line: i64 },
    /// Nothing was left in flight in it (canceled meanwhile): it is failed, nothing is errored.
    Empty,
}

/// The API refused to create a batch as an invalid request (a body its parser cannot read, say):
/// the refused body is never sent again. A batch of several requests is split in two; a batch of
/// one request errors it, with the API's message and where it came from.
pub fn refuse_batch(conn: &Conn, batch_id: i64, error: &str, now: i64) -> store::Result<Refused> {
    if let Some(half) = batches::split(conn, batch_id, error, now)? {
        return Ok(Refused::Split(half));
    }
    batches::mark_failed(conn, batch_id, error, now)?;
    let Some((item_id, file, line)) = batches::lone_item(conn, batch_id)? else {
        return Ok(Refused::Empty);
    };
    let message =
        format!("the API refused this request in a batch ({error}); it is line {line} of {file}");
    error_refused(conn, item_id, "invalid_request_error", &message, now)?;
    Ok(Refused::Errored { file, line })
}

/// The batch preflight found requests of a batch not yet created that the API refuses (`refused`:
/// custom_id, the API's error type and its answer): each is errored, naming its file and line and quoting the
/// API, and leaves the batch. Returns how many requests the batch still has; with none left it
/// is failed (nothing to create).
pub fn refuse_requests(
    conn: &Conn,
    batch_id: i64,
    refused: &[(String, String, String)],
    now: i64,
) -> store::Result<i64> {
    for (custom_id, kind, answer) in refused {
        let Some((item_id, file, line)) =
            batches::in_flight_by_custom_id(conn, batch_id, custom_id)?
        else {
            continue; // canceled meanwhile
        };
        let message = format!(
            "the API refuses this request ({answer}; found by counting its tokens before the batch was created); it is line {line} of {file}"
        );
        error_refused(conn, item_id, kind, &message, now)?;
    }
    let left = batches::recount(conn, batch_id)?;
    if left == 0 {
        batches::mark_failed(
            conn,
            batch_id,
            "the API refuses every request of this batch",
            now,
        )?;
    }
    Ok(left)
}

/// An item of a batch the API refuses ends errored (with the API's error type), its attempt
/// closed.
fn error_refused(
    conn: &Conn,
    item_id: i64,
    kind: &str,
    message: &str,
    now: i64,
) -> store::Result<()> {
    let record = AttemptRecord {
        outcome: AttemptOutcome::Fatal,
        error: Some(message.to_owned()),
        ..Default::default()
    };
    batches::close_attempt(conn, item_id, &record, now)?;
    let custom_id = items::item(conn, item_id)?.custom_id;
    let result = crate::model::results::errored_line(custom_id.as_deref(), kind, message, None);
    batches::end_item(
        conn,
        item_id,
        ItemState::Errored,
        &result,
        Some(message),
        now,
    )
}

/// The planner's lane for an item going back to it (from a batch, or a retry), with the batch
/// turnaround `turnaround_ms`.
pub(super) fn decide_again(
    item: &items::ItemRow,
    replan: &Replan<'_>,
    turnaround_ms: i64,
) -> planner::Plan {
    let facts = planner::ItemFacts {
        mode: item.mode,
        priority: item.priority,
        deadline_at: item.deadline_at,
        params: &item.params,
    };
    let lanes = planner::LaneFacts {
        now: replan.now,
        batch_turnaround_ms: turnaround_ms,
        job_items: item.job_lines.max(1) as u64,
        realtime_rpm: (replan.rpm_for)(&item.model),
    };
    planner::decide(&facts, &lanes)
}

/// An item of a batch comes back without a final outcome (expired, a retryable error, a canceled
/// batch, a refused create call): it ends if `policy::batch::ending` says so, else the planner
/// decides its lane again. `counts`: whether this uses up one of the item's attempts (not when
/// the whole batch was refused for its size, say).
fn send_back(
    conn: &Conn,
    item_id: i64,
    outcome: AttemptOutcome,
    why: &str,
    replan: &Replan<'_>,
    counts: bool,
) -> store::Result<()> {
    let item = items::item(conn, item_id)?;
    let record = AttemptRecord {
        outcome,
        error: Some(why.to_owned()),
        ..Default::default()
    };
    batches::close_attempt(conn, item_id, &record, replan.now)?;
    let custom_id = item.custom_id.as_deref().unwrap_or_default();
    let returning = Returning {
        custom_id,
        failures: if counts {
            item.failures
        } else {
            item.failures - 1
        },
        job_canceled: item.job_canceled,
        max_attempts: replan.max_attempts,
    };
    if let Some(end) = ending(&returning, outcome, why) {
        return batches::end_item(
            conn,
            item_id,
            end.state,
            &end.line,
            Some(&end.error),
            replan.now,
        );
    }
    let plan = decide_again(&item, replan, batches::turnaround_ms(conn)?);
    batches::replan_item(
        conn,
        item_id,
        plan.lane,
        &format!("back from a batch ({why}); {}", plan.reason),
        counts,
        replan.now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{test_connection, test_job};

    /// The one route of a config without `[routes]`, which every tenant may use.
    const EVERYONE: batches::PackRoute<'static> = batches::PackRoute {
        name: "default",
        tenants: None,
    };

    const BATCH_LINE: &str = r#"{"custom_id":"a","deadline":"2026-11-24T06:00:00Z","params":{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"q"}]}}"#;

    /// [`pack`] on the route for everyone, without budgets, as the test daemon.
    fn pack_all(
        conn: &Conn,
        job_id: i64,
        size: (i64, i64),
        now: i64,
    ) -> store::Result<Option<i64>> {
        let holder = store::leases::test_holder();
        pack(
            conn,
            job_id,
            &EVERYONE,
            size,
            &Rules::default(),
            &holder,
            now,
        )
    }

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
            batches::waiting_jobs(&conn, 5, &closed, 100).expect("waiting")[0].waiting,
            2
        );
        assert_eq!(
            batches::waiting_jobs(&conn, 5, &[], 100).expect("waiting")[0].waiting,
            4
        );
        assert_eq!(
            batches::waiting_jobs(&conn, 5, &[], 3).expect("waiting")[0].waiting,
            3,
            "capped"
        );
        let batch = pack(
            &conn,
            job_id,
            &EVERYONE,
            (100, 1 << 20),
            &rules,
            &store::leases::test_holder(),
            5,
        )
        .expect("pack")
        .expect("a batch");
        let ids: Vec<String> = batches::requests(&conn, batch)
            .expect("requests")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            ids,
            vec!["h1", "h2"],
            "the nightly items wait for their window"
        );
        let batch = pack_all(&conn, job_id, (100, 1 << 20), 5)
            .expect("pack")
            .expect("a batch");
        assert_eq!(batches::requests(&conn, batch).expect("requests").len(), 2);
    }

    #[test]
    fn items_sharing_a_cached_prefix_are_packed_into_the_same_batch() {
        // Two rubrics marked for the cache, alternating line by line, and four plain lines.
        let line = |i: usize, rubric: Option<&str>| {
            let system = match rubric {
                Some(r) => format!(
                    r#","system":[{{"type":"text","text":"{r}","cache_control":{{"type":"ephemeral","ttl":"1h"}}}}]"#
                ),
                None => String::new(),
            };
            format!(
                r#"{{"custom_id":"i{i}","mode":"batch","params":{{"model":"m","max_tokens":5{system},"messages":[{{"role":"user","content":"q{i}"}}]}}}}"#
            )
        };
        let lines: Vec<String> = (0..8)
            .map(|i| line(i, Some(if i % 2 == 0 { "rubric A" } else { "rubric B" })))
            .chain((8..12).map(|i| line(i, None)))
            .collect();
        let conn = test_connection();
        let job_id = test_job(&conn, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        let mut packed: Vec<Vec<String>> = Vec::new();
        while let Some(batch) = pack_all(&conn, job_id, (4, 1 << 20), i64::MAX).expect("pack") {
            packed.push(
                batches::requests(&conn, batch)
                    .expect("requests")
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect(),
            );
        }
        let mut groups: Vec<Vec<&str>> = packed
            .iter()
            .map(|b| b.iter().map(String::as_str).collect())
            .collect();
        groups.sort();
        assert_eq!(
            groups,
            vec![
                vec!["i0", "i2", "i4", "i6"],
                vec!["i1", "i3", "i5", "i7"],
                vec!["i8", "i9", "i10", "i11"]
            ],
            "one batch per prefix, in line order within it"
        );
        // The packing query seeks its index at the cursor's prefix and walks it in order: no
        // walk from the start of the class, no sort of the job's items.
        let plan: Vec<String> = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT id FROM items
                 WHERE job_id = 1 AND priority = 2 AND state = 'pending' AND lane = 'batch'
                   AND parked = 0 AND not_before <= 5 AND (pack_key, id) > (0, 0)
                 ORDER BY pack_key, id LIMIT 10",
            )
            .expect("explain")
            .query_map((), |r| r.get::<_, String>(3))
            .expect("rows")
            .collect::<crate::store::Result<_>>()
            .expect("plan");
        let plan = plan.join("; ");
        assert!(
            plan.contains("items_waiting_batch_prefix (job_id=? AND priority=? AND pack_key>?)"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    #[test]
    fn packing_records_the_intent_and_puts_items_in_flight() {
        let conn = test_connection();
        let job_id = test_job(&conn, &[BATCH_LINE]);
        assert_eq!(
            batches::waiting_jobs(&conn, i64::MAX, &[], 100_000).expect("waiting")[0].waiting,
            1
        );
        let batch_id = pack_all(&conn, job_id, (100, 1 << 20), 5)
            .expect("pack")
            .expect("a batch");
        let open = batches::open(&conn).expect("open");
        assert_eq!(open.len(), 1);
        assert_eq!(
            (open[0].id, open[0].state, open[0].request_count),
            (batch_id, crate::model::state::BatchState::Submitting, 1)
        );
        assert!(open[0].api_id.is_none());
        assert_eq!(
            batches::requests(&conn, batch_id).expect("requests").len(),
            1
        );
        assert!(
            pack_all(&conn, job_id, (100, 1 << 20), 5)
                .expect("pack")
                .is_none(),
            "nothing left"
        );
    }

    fn line_with_id(id: &str) -> String {
        BATCH_LINE.replace("\"a\"", &format!("\"{id}\""))
    }

    fn state_of(conn: &Conn, batch: i64) -> (String, i64, bool) {
        conn.query_row(
            "SELECT state, request_count, cancel_requested FROM batches WHERE id = ?1",
            [batch],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("batch")
    }

    #[test]
    fn a_refused_batch_splits_by_halves_down_to_its_culprit_and_a_cancel_holds_for_both() {
        let conn = test_connection();
        let lines: Vec<String> = (0..4).map(|i| line_with_id(&format!("r{i}"))).collect();
        let (_, batch) = packed_batch(&conn, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        // A cancel came while the create call was under way.
        conn.execute(
            "UPDATE batches SET cancel_requested = 1 WHERE id = ?1",
            [batch],
        )
        .expect("cancel");
        let Refused::Split(half) = refuse_batch(&conn, batch, "HTTP 400: x", 9).expect("refuse")
        else {
            panic!("split expected")
        };
        assert_eq!(state_of(&conn, batch), ("submitting".into(), 2, true));
        assert_eq!(state_of(&conn, half), ("submitting".into(), 2, true));
        // One request left: it is the culprit, errored naming its line.
        let Refused::Split(quarter) = refuse_batch(&conn, half, "HTTP 400: x", 9).expect("refuse")
        else {
            panic!("split expected")
        };
        match refuse_batch(&conn, quarter, "HTTP 400: x", 9).expect("refuse") {
            Refused::Errored { file, line } => assert_eq!((file.as_str(), line), ("j.jsonl", 4)),
            other => panic!("{other:?}"),
        }
        assert_eq!(state_of(&conn, quarter).0, "failed");
        // A batch whose requests were all canceled meanwhile errors nothing.
        conn.execute(
            "UPDATE items SET state = 'canceled' WHERE batch_id = ?1",
            [half],
        )
        .expect("cancel items");
        assert_eq!(
            refuse_batch(&conn, half, "HTTP 400: x", 9).expect("refuse"),
            Refused::Empty
        );
    }

    #[test]
    fn requests_the_preflight_refuses_leave_the_batch_errored() {
        let conn = test_connection();
        let (_, batch) = packed_batch(&conn, &[&line_with_id("p0"), &line_with_id("p1")]);
        let refused = [(
            "p1".to_owned(),
            "not_found_error".to_owned(),
            "HTTP 404: model: x".to_owned(),
        )];
        assert_eq!(
            refuse_requests(&conn, batch, &refused, 9).expect("refuse"),
            1
        );
        assert_eq!(state_of(&conn, batch), ("submitting".into(), 1, false));
        let (state, error): (String, String) = conn
            .query_row(
                "SELECT state, error FROM items WHERE custom_id = 'p1'",
                (),
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("item");
        assert_eq!(state, "errored");
        assert!(
            error.contains("HTTP 404") && error.contains("line 2 of j.jsonl"),
            "{error}"
        );
        let rest = [(
            "p0".to_owned(),
            "invalid_request_error".to_owned(),
            "HTTP 400: y".to_owned(),
        )];
        assert_eq!(refuse_requests(&conn, batch, &rest, 9).expect("refuse"), 0);
        assert_eq!(state_of(&conn, batch).0, "failed", "nothing left to create");
    }

    /// A job of `lines`, all packed into one batch: (job, batch).
    fn packed_batch(conn: &Conn, lines: &[&str]) -> (i64, i64) {
        let job_id = test_job(conn, lines);
        let batch_id = pack_all(conn, job_id, (1000, 1 << 30), 5)
            .expect("pack")
            .expect("a batch");
        (job_id, batch_id)
    }

    #[test]
    fn results_apply_once_and_expired_items_go_back_to_the_planner() {
        let conn = test_connection();
        let (job_id, batch_id) =
            packed_batch(&conn, &[BATCH_LINE, &BATCH_LINE.replace("\"a\"", "\"b\"")]);
        let replan = Replan {
            now: 10,
            max_attempts: 8,
            rpm_for: &|_| None,
            rules: &Rules::default(),
        };
        let ids = batches::in_flight_ids(&conn, batch_id).expect("ids");
        let lines = vec![
            (ids["a"], r#"{"custom_id":"a","result":{"type":"succeeded","message":{"type":"message","usage":{"input_tokens":3,"output_tokens":4}}}}"#.to_owned()),
            (ids["b"], r#"{"custom_id":"b","result":{"type":"expired"}}"#.to_owned()),
        ];
        let judged = judge_lines("msgbatch_1", lines);
        assert_eq!(
            apply_results(&conn, batch_id, "msgbatch_1", &judged, &replan).expect("apply"),
            2
        );
        assert_eq!(
            apply_results(&conn, batch_id, "msgbatch_1", &judged, &replan).expect("again"),
            0,
            "idempotent"
        );
        let c = items::counts(&conn, job_id).expect("counts");
        assert_eq!((c.succeeded, c.pending, c.in_flight), (1, 1, 0));
        assert_eq!(finish_results(&conn, batch_id, &replan).expect("finish"), 0);
    }

    #[test]
    fn a_chunk_of_many_groups_ends_each_item_once_with_its_ledger_row_and_line() {
        let lines: Vec<String> = (0..250)
            .map(|i| BATCH_LINE.replace("\"a\"", &format!("\"r{i}\"")))
            .collect();
        let conn = test_connection();
        let (job_id, batch_id) =
            packed_batch(&conn, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        let replan = Replan {
            now: 10,
            max_attempts: 8,
            rpm_for: &|_| None,
            rules: &Rules::default(),
        };
        let ids = batches::in_flight_ids(&conn, batch_id).expect("ids");
        let result = |i: usize| {
            let result = if i.is_multiple_of(10) {
                r#"{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}}"#
            } else {
                r#"{"type":"succeeded","message":{"type":"message","usage":{"input_tokens":3,"output_tokens":4}}}"#
            };
            let id = format!("r{i}");
            (
                ids[&id],
                format!(r#"{{"custom_id":"{id}","result":{result}}}"#),
            )
        };
        // In item order, as staged; item 120's line twice (which the API should never send).
        let mut lines: Vec<_> = (0..250).map(result).collect();
        lines.insert(121, result(120));
        let judged = judge_lines("msgbatch_1", lines);
        assert_eq!(
            apply_results(&conn, batch_id, "msgbatch_1", &judged, &replan).expect("apply"),
            250
        );
        let c = items::counts(&conn, job_id).expect("counts");
        assert_eq!((c.succeeded, c.errored, c.in_flight), (225, 25, 0));
        let count = |sql: &str| -> i64 { conn.query_row(sql, (), |r| r.get(0)).expect(sql) };
        assert_eq!(count("SELECT count(*) FROM results"), 250);
        assert_eq!(count("SELECT count(DISTINCT item_id) FROM results"), 250);
        assert_eq!(
            count("SELECT count(*) FROM ledger"),
            225,
            "the errored are not billed"
        );
        assert_eq!(count("SELECT sum(input_tokens) FROM ledger"), 225 * 3);
        assert_eq!(
            count("SELECT count(*) FROM attempts WHERE outcome IS NULL"),
            0
        );
        assert_eq!(
            count(
                "SELECT count(*) FROM attempts WHERE outcome = 'succeeded' AND output_tokens = 4"
            ),
            225
        );
        assert_eq!(
            apply_results(&conn, batch_id, "msgbatch_1", &judged, &replan).expect("again"),
            0,
            "idempotent"
        );
        assert_eq!(count("SELECT count(*) FROM ledger"), 225);
    }

    #[test]
    fn items_whose_deadline_nears_are_pulled_to_real_time() {
        let conn = test_connection();
        let job_id = test_job(&conn, &[BATCH_LINE]);
        assert_eq!(
            batches::lanes(&conn, job_id).expect("lanes"),
            (1, 0),
            "a day away: batch"
        );
        // Six hours before the deadline, with 24 h assumed for a batch: real time.
        let (to_realtime, to_batch) =
            reroute(&conn, 1_795_500_000_000 - 6 * 3_600_000).expect("reroute");
        assert_eq!((to_realtime, to_batch), (1, 0));
        assert_eq!(batches::lanes(&conn, job_id).expect("lanes"), (0, 1));
    }
}
