//! The planner: for each item, the Message Batches API (half the price, up to 24 h) or real-time
//! calls (fast), with the reason stored on the item and shown by `nightshift job NAME`.
//!
//! A pure function of the item and what is known of the lanes; nothing here reads a clock or the
//! database.

use crate::model::job::{Mode, Priority};
use crate::model::line::ValidLine;
use crate::model::state::Lane;

/// The real-time lane's requests per minute for a model, if known (configured or learned).
pub type RpmFor = std::sync::Arc<dyn Fn(&str) -> Option<u64> + Send + Sync>;

/// Request fields the batch endpoint does not serve (`../shared/anthropic-api.md` §5.2).
/// `stream` is not here: nightshift collects whole messages and drops it before sending.
const NOT_IN_BATCHES: [&str; 6] = [
    "speed",
    "store",
    "previous_thread_event_id",
    "cache_hint",
    "context_hint",
    "research_preview_2026_02",
];

/// Before this many batches have ended, their turnaround is assumed to be the API's promise.
pub const MIN_BATCHES_FOR_P95: usize = 5;
/// What the API promises: results within 24 h.
pub const PROMISED_TURNAROUND_MS: i64 = 24 * 3_600_000;

/// What the planner knows of one item.
#[derive(Debug, Clone)]
pub struct ItemFacts<'a> {
    pub mode: Mode,
    pub priority: Priority,
    /// Unix ms.
    pub deadline_at: Option<i64>,
    /// The request body, to spot fields batches do not serve.
    pub params: &'a str,
}

/// What the planner knows of the lanes and the job.
#[derive(Debug, Clone, Copy)]
pub struct LaneFacts {
    pub now: i64,
    /// p95 of recent batches' turnaround (creation to end), or the API's 24 h before there is
    /// enough history.
    pub batch_turnaround_ms: i64,
    /// Items of the job planned so far (a stand-in for job size while intake streams).
    pub job_items: u64,
    /// How fast the real-time lane can drain this job's model, in requests per minute (the
    /// configured or learned RPM; None when unknown).
    pub realtime_rpm: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub lane: Lane,
    pub reason: String,
}

fn plan(lane: Lane, reason: impl Into<String>) -> Plan {
    Plan {
        lane,
        reason: reason.into(),
    }
}

/// Decides the lane of one item.
pub fn decide(item: &ItemFacts<'_>, lanes: &LaneFacts) -> Plan {
    let unsupported = batch_unsupported_field(item.params);
    match item.mode {
        Mode::Realtime => return plan(Lane::Realtime, "mode realtime"),
        Mode::Batch => {
            return match unsupported {
                Some(field) => plan(
                    Lane::Realtime,
                    format!("mode batch, but the batch endpoint does not serve `{field}`"),
                ),
                None => plan(Lane::Batch, "mode batch"),
            };
        }
        Mode::Auto => {}
    }
    if let Some(field) = unsupported {
        return plan(
            Lane::Realtime,
            format!("the batch endpoint does not serve `{field}`"),
        );
    }
    let turnaround = lanes.batch_turnaround_ms.max(1);
    let hours = |ms: i64| format!("{:.1} h", ms as f64 / 3_600_000.0);
    let batch_meets_deadline = item
        .deadline_at
        .map(|d| batch_meets(d, lanes.now, turnaround));
    match item.priority {
        Priority::Interactive | Priority::High => plan(
            Lane::Realtime,
            format!("priority {}", item.priority.as_str()),
        ),
        Priority::Nightly => match batch_meets_deadline {
            Some(false) => plan(
                Lane::Realtime,
                format!(
                    "nightly, but the deadline is nearer than the batch turnaround ({})",
                    hours(turnaround)
                ),
            ),
            _ => plan(
                Lane::Batch,
                "nightly work without a near deadline: half the price",
            ),
        },
        Priority::Normal => {
            if batch_meets_deadline == Some(false) {
                return plan(
                    Lane::Realtime,
                    format!(
                        "the deadline is nearer than the batch turnaround ({})",
                        hours(turnaround)
                    ),
                );
            }
            // A small job the real-time lane drains well within the batch turnaround is worth
            // the full price; a large one goes to batches.
            let drain_ms = lanes
                .realtime_rpm
                .map(|rpm| (lanes.job_items as i64).saturating_mul(60_000) / rpm.max(1) as i64);
            match drain_ms {
                Some(drain) if drain * 4 <= turnaround => plan(
                    Lane::Realtime,
                    format!(
                        "normal priority, small job: real time drains it in about {} s, batches take about {}",
                        drain / 1000,
                        hours(turnaround)
                    ),
                ),
                _ => plan(
                    Lane::Batch,
                    "normal priority, and the deadline allows a batch: half the price",
                ),
            }
        }
    }
}

/// The lane of a job file's line.
pub fn decide_line(line: &ValidLine, lanes: &LaneFacts) -> Plan {
    let facts = ItemFacts {
        mode: line.mode,
        priority: line.priority,
        deadline_at: line.deadline_at,
        params: &line.params,
    };
    decide(&facts, lanes)
}

/// The one deadline rule: a batch sent at `now` is safe for results by this time. A batch may take
/// `turnaround_ms` (see [`turnaround_p95`]); a quarter more is allowed for packing, polling and a
/// retry.
pub fn batch_horizon(now: i64, turnaround_ms: i64) -> i64 {
    let turnaround = turnaround_ms.max(1);
    now.saturating_add(turnaround + turnaround / 4)
}

/// Whether a batch sent at `now` meets `deadline_at` (see [`batch_horizon`]).
pub fn batch_meets(deadline_at: i64, now: i64, turnaround_ms: i64) -> bool {
    deadline_at >= batch_horizon(now, turnaround_ms)
}

/// The first top-level request field the batch endpoint does not serve, if any.
pub fn batch_unsupported_field(params: &str) -> Option<&'static str> {
    // Cheap check first: most bodies contain none of these words.
    let candidates: Vec<&'static str> = NOT_IN_BATCHES
        .into_iter()
        .filter(|f| params.contains(&format!("\"{f}\"")))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(params).ok()?;
    candidates.into_iter().find(|f| map.contains_key(*f))
}

/// p95 of batch turnarounds (ms), or the API's promise with too little history.
pub fn turnaround_p95(mut turnarounds: Vec<i64>) -> i64 {
    if turnarounds.len() < MIN_BATCHES_FOR_P95 {
        return PROMISED_TURNAROUND_MS;
    }
    turnarounds.sort_unstable();
    let rank = ((turnarounds.len() as f64) * 0.95).ceil() as usize;
    turnarounds[rank.clamp(1, turnarounds.len()) - 1].max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const BODY: &str = r#"{"model":"m","max_tokens":5,"messages":[]}"#;

    fn item(mode: Mode, priority: Priority, deadline_in: Option<i64>) -> ItemFacts<'static> {
        ItemFacts {
            mode,
            priority,
            deadline_at: deadline_in.map(|d| 1_000 + d),
            params: BODY,
        }
    }

    fn lanes(turnaround: i64) -> LaneFacts {
        LaneFacts {
            now: 1_000,
            batch_turnaround_ms: turnaround,
            job_items: 100_000,
            realtime_rpm: Some(50),
        }
    }

    #[test]
    fn explicit_mode_wins() {
        let p = decide(&item(Mode::Realtime, Priority::Nightly, None), &lanes(HOUR));
        assert_eq!(p.lane, Lane::Realtime);
        let p = decide(
            &item(Mode::Batch, Priority::Interactive, Some(60_000)),
            &lanes(HOUR),
        );
        assert_eq!(p, plan(Lane::Batch, "mode batch"));
    }

    #[test]
    fn nightly_goes_to_batches_unless_the_deadline_is_near() {
        let p = decide(&item(Mode::Auto, Priority::Nightly, None), &lanes(HOUR));
        assert_eq!(p.lane, Lane::Batch);
        let p = decide(
            &item(Mode::Auto, Priority::Nightly, Some(8 * HOUR)),
            &lanes(HOUR),
        );
        assert_eq!(p.lane, Lane::Batch);
        let p = decide(
            &item(Mode::Auto, Priority::Nightly, Some(HOUR)),
            &lanes(HOUR),
        );
        assert_eq!(p.lane, Lane::Realtime);
        assert!(p.reason.contains("deadline"), "{}", p.reason);
    }

    #[test]
    fn urgent_priorities_go_real_time() {
        for priority in [Priority::Interactive, Priority::High] {
            let p = decide(&item(Mode::Auto, priority, None), &lanes(HOUR));
            assert_eq!(p.lane, Lane::Realtime);
        }
    }

    #[test]
    fn normal_weighs_job_size_against_the_turnaround() {
        let big = decide(&item(Mode::Auto, Priority::Normal, None), &lanes(HOUR));
        assert_eq!(big.lane, Lane::Batch, "100,000 items at 50 RPM take days");
        let small = LaneFacts {
            job_items: 10,
            ..lanes(HOUR)
        };
        let p = decide(&item(Mode::Auto, Priority::Normal, None), &small);
        assert_eq!(p.lane, Lane::Realtime, "{}", p.reason);
        let p = decide(
            &item(Mode::Auto, Priority::Normal, Some(HOUR / 2)),
            &lanes(HOUR),
        );
        assert_eq!(p.lane, Lane::Realtime);
    }

    #[test]
    fn fields_batches_do_not_serve_force_real_time() {
        let body = r#"{"model":"m","speed":"fast","max_tokens":5,"messages":[]}"#;
        let facts = ItemFacts {
            mode: Mode::Batch,
            priority: Priority::Nightly,
            deadline_at: None,
            params: body,
        };
        let p = decide(&facts, &lanes(HOUR));
        assert_eq!(p.lane, Lane::Realtime);
        assert!(p.reason.contains("`speed`"));
        // The word inside a message is not the field.
        let body =
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"\"speed\""}]}"#;
        assert_eq!(batch_unsupported_field(body), None);
    }

    #[test]
    fn p95_needs_history() {
        assert_eq!(turnaround_p95(vec![1, 2, 3]), PROMISED_TURNAROUND_MS);
        let samples: Vec<i64> = (1..=100).collect();
        assert_eq!(turnaround_p95(samples), 95);
    }
}
