//! A job's standing as `status`, `job`, `status --watch` and the daemon's status page show it:
//! state, counts, lanes, batches and its use of the prompt cache. Here, below the daemon and the
//! CLI, so the page and `status` read the same facts the same way (`status --json` serialises
//! these structs: their shape is stable).

use std::path::Path;

use crate::store::sql::Conn;
use serde::Serialize;

use super::Result;
use super::items::Counts;
use super::jobs::JobRow;
use crate::model::batch::BatchCounts;
use crate::model::results::results_path;
use crate::model::state::BatchState;

#[derive(Debug, Serialize)]
pub struct JobStatus {
    pub name: String,
    /// `queued` (nothing sent yet), `running`, `paused` (`nightshift pause` holds it or its
    /// tenant), `done` (every item final, results file complete), `canceling` (canceled, calls in
    /// flight finishing) or `canceled` (canceled and its results file complete).
    pub state: &'static str,
    pub counts: Counts,
    /// Items by the lane that produced their final outcome or is working on them now.
    pub lanes: Lanes,
    pub batches: Vec<BatchStatus>,
    pub results_file: String,
    /// The prompt cache's hit rate: the share of its tokens read rather than written (null when
    /// the job has not used the cache).
    pub cache_hit_rate: Option<f64>,
    /// What the cache saved the job so far, USD (see `nightshift ledger`'s `cache_saved_usd`).
    pub cache_saved_usd: f64,
    /// Per lane: items waiting, in flight and final (items errored at intake have no lane).
    pub per_lane: PerLane,
    /// Items that became final over the last minute (or since the job was taken in, if that is
    /// less), per second; null before any did.
    pub items_per_sec: Option<f64>,
    /// Seconds until every item is final, as far as can be told: the real-time items left at the
    /// real-time lane's pace over the last minute, and the batch items by the batch turnaround
    /// (the 95th percentile of the batches seen, or the planner's first guess); the later of the
    /// two. Null when done, or when real-time items wait and none went through in the last minute.
    pub eta_secs: Option<i64>,
    /// Billed tokens read from and written to the cache (`job` shows them).
    #[serde(skip)]
    pub cache_read_tokens: i64,
    #[serde(skip)]
    pub cache_written_tokens: i64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct PerLane {
    pub realtime: LaneCounts,
    pub batch: LaneCounts,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct LaneCounts {
    pub pending: u64,
    pub in_flight: u64,
    /// Final: succeeded, errored, expired or canceled.
    pub done: u64,
}

impl LaneCounts {
    fn left(&self) -> u64 {
        self.pending + self.in_flight
    }

    fn total(&self) -> u64 {
        self.left() + self.done
    }
}

/// Items of a job by state, and by lane and state (items errored at intake have no lane): one
/// pass over the job's items.
fn counts_and_lanes(conn: &Conn, job_id: i64) -> Result<(Counts, PerLane)> {
    let mut stmt = conn.prepare_cached(
        "SELECT lane, state, COUNT(*) FROM items WHERE job_id = ?1 GROUP BY lane, state",
    )?;
    let (mut counts, mut per_lane) = (Counts::default(), PerLane::default());
    let rows = stmt.query_map([job_id], |r| {
        Ok((
            r.get::<_, Option<String>>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)? as u64,
        ))
    })?;
    for row in rows {
        let (lane, state, n) = row?;
        counts.add(&state, n);
        let lane = match lane.as_deref() {
            Some("batch") => &mut per_lane.batch,
            Some(_) => &mut per_lane.realtime,
            None => continue,
        };
        match state.as_str() {
            "pending" => lane.pending += n,
            "in_flight" => lane.in_flight += n,
            _ => lane.done += n,
        }
    }
    Ok((counts, per_lane))
}

/// A range of `items_finished` (the terms of its WHERE spelled as it has them).
const FINISHED_SINCE: &str =
    "SELECT COUNT(*), COALESCE(SUM(CASE WHEN lane = 'realtime' THEN 1 ELSE 0 END), 0) FROM items
     WHERE job_id = ?1 AND updated_at >= ?2 AND state <> 'pending' AND state <> 'in_flight'";

/// Items of a job that became final since `since` (Unix ms): in all, and in the real-time lane.
fn finished_since(conn: &Conn, job_id: i64, since: i64) -> Result<(u64, u64)> {
    conn.prepare_cached(FINISHED_SINCE)?
        .query_row(crate::store::sql::params![job_id, since], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
}

/// The ETA (see [`JobStatus::eta_secs`]): `realtime_per_sec` is the real-time lane's pace over
/// the last minute; `batch_ends` when the job's open batches are expected to end and
/// `turnaround_ms` how long a batch takes. Pure.
pub fn eta_secs(
    per_lane: &PerLane,
    realtime_per_sec: f64,
    batch_ends: &[i64],
    turnaround_ms: i64,
    now: i64,
) -> Option<i64> {
    let realtime = match per_lane.realtime.left() {
        0 => 0.0,
        _ if realtime_per_sec <= 0.0 => return None,
        left => left as f64 / realtime_per_sec,
    };
    let mut batch_ms = 0i64;
    if per_lane.batch.pending > 0 {
        batch_ms = turnaround_ms;
    }
    if per_lane.batch.in_flight > 0 {
        for end in batch_ends {
            batch_ms = batch_ms.max(end - now);
        }
    }
    Some(realtime.max(batch_ms.max(0) as f64 / 1000.0).ceil() as i64)
}

#[derive(Debug, Default, Serialize)]
pub struct Lanes {
    pub batch: i64,
    pub realtime: i64,
}

#[derive(Debug, Serialize)]
pub struct BatchStatus {
    /// The API's id (`msgbatch_…`), or null while it is being created.
    pub id: Option<String>,
    /// The API's `processing_status`, `submitting` before the id is known, or `failed`.
    pub state: String,
    /// The API's `request_counts`.
    pub counts: BatchCounts,
    /// Seconds since the batch was packed.
    pub age_secs: i64,
    /// The route it belongs to (created, polled and fetched with that route's key).
    pub route: String,
}

fn job_state(conn: &Conn, job: &JobRow, counts: &Counts) -> Result<&'static str> {
    match (job.finished_at, job.canceled_at) {
        (Some(_), Some(_)) => return Ok("canceled"),
        (Some(_), None) => return Ok("done"),
        (None, Some(_)) => return Ok("canceling"),
        (None, None) => {}
    }
    if super::holds::of_job(conn, job.id, &job.defaults.tenant)?.is_some() {
        return Ok("paused");
    }
    if counts.in_flight > 0 || counts.succeeded > 0 {
        return Ok("running");
    }
    let sent: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM attempts a JOIN items i ON i.id = a.item_id WHERE i.job_id = ?1)",
        [job.id],
        |r| r.get(0),
    )?;
    Ok(if sent { "running" } else { "queued" })
}

/// Where `job` stands at `now` (Unix ms); its results file is named under `results_dir`.
pub fn job_status(conn: &Conn, job: &JobRow, results_dir: &Path, now: i64) -> Result<JobStatus> {
    let (counts, per_lane) = counts_and_lanes(conn, job.id)?;
    let batches_rows = super::batches::by_job(conn, job.id)?;
    let batches = batches_rows
        .iter()
        .cloned()
        .map(|b| {
            let counts = if b.state == BatchState::Submitting {
                BatchCounts {
                    processing: b.request_count,
                    ..Default::default()
                }
            } else {
                b.counts
            };
            BatchStatus {
                id: b.api_id,
                state: b.state.as_str().to_owned(),
                counts,
                age_secs: (now - b.intent_at) / 1000,
                route: b.route,
            }
        })
        .collect();
    let cache = super::ledger::job_cache_use(conn, job.id)?;
    let state = job_state(conn, job, &counts)?;
    // A finished job has no pace and no ETA: the last minute's items are not looked up. The
    // pace is over the last minute, or since the job was taken in if that is less (a job 10 s
    // old that finished 50 items goes at 5 a second, not 50 a minute).
    let since = (now - 60_000).max(job.created_at);
    let window_secs = ((now - since).max(1_000)) as f64 / 1000.0;
    let (finished, realtime_finished) = match job.finished_at {
        Some(_) => (0, 0),
        None => finished_since(conn, job.id, since)?,
    };
    let eta = if job.finished_at.is_some() {
        None
    } else {
        let turnaround = super::batches::turnaround_ms(conn)?;
        let ends: Vec<i64> = batches_rows
            .iter()
            .filter(|b| b.ended_at.is_none())
            .map(|b| b.api_created_at.unwrap_or(b.intent_at) + turnaround)
            .collect();
        eta_secs(
            &per_lane,
            realtime_finished as f64 / window_secs,
            &ends,
            turnaround,
            now,
        )
    };
    Ok(JobStatus {
        per_lane,
        items_per_sec: (finished > 0).then(|| finished as f64 / window_secs),
        eta_secs: eta,
        cache_hit_rate: crate::policy::prices::cache_hit_ratio(
            cache.read_tokens,
            cache.written_tokens,
        ),
        cache_saved_usd: cache.saved_micro_usd as f64 / 1e6,
        cache_read_tokens: cache.read_tokens,
        cache_written_tokens: cache.written_tokens,
        name: job.name.clone(),
        state,
        counts,
        lanes: Lanes {
            batch: per_lane.batch.total() as i64,
            realtime: per_lane.realtime.total() as i64,
        },
        batches,
        results_file: results_path(results_dir, &job.name).display().to_string(),
    })
}

impl JobStatus {
    /// "99.0 % hit, $1.2345 saved" when the job used the prompt cache, else None.
    pub fn cache_summary(&self) -> Option<String> {
        let hit = self.cache_hit_rate?;
        Some(format!(
            "{:.1} % hit, {} saved",
            hit * 100.0,
            crate::policy::prices::format_usd(self.cache_saved_usd)
        ))
    }
}

/// "2 (1 in_progress, 1 ended)" or "-".
pub fn batch_summary(batches: &[BatchStatus]) -> String {
    if batches.is_empty() {
        return "-".into();
    }
    let mut by_state: Vec<(&str, usize)> = Vec::new();
    for b in batches {
        match by_state.iter_mut().find(|(s, _)| *s == b.state) {
            Some((_, n)) => *n += 1,
            None => by_state.push((&b.state, 1)),
        }
    }
    let parts: Vec<String> = by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
    format!("{} ({})", batches.len(), parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(rt: (u64, u64), batch: (u64, u64)) -> PerLane {
        PerLane {
            realtime: LaneCounts {
                pending: rt.0,
                in_flight: rt.1,
                done: 0,
            },
            batch: LaneCounts {
                pending: batch.0,
                in_flight: batch.1,
                done: 0,
            },
        }
    }

    #[test]
    fn the_last_minutes_items_are_a_range_of_their_index() {
        let conn = crate::store::test_connection();
        let plan = crate::store::test_plan(&conn, FINISHED_SINCE).join("; ");
        assert!(
            plan.contains("USING INDEX items_finished (job_id=? AND updated_at>?)"),
            "{plan}"
        );
    }

    #[test]
    fn the_eta_is_the_later_of_the_real_time_pace_and_the_batch_turnaround() {
        // 90 real-time items left at 3 a second: 30 s.
        assert_eq!(
            eta_secs(&lanes((80, 10), (0, 0)), 3.0, &[], 3_600_000, 0),
            Some(30)
        );
        // Nothing went through yet: unknown.
        assert_eq!(
            eta_secs(&lanes((80, 10), (0, 0)), 0.0, &[], 3_600_000, 0),
            None
        );
        // A batch under way, expected to end in 20 minutes, beside those 30 s.
        assert_eq!(
            eta_secs(&lanes((80, 10), (0, 5)), 3.0, &[1_200_000], 3_600_000, 0),
            Some(1_200)
        );
        // Items waiting to be packed take a whole turnaround.
        assert_eq!(
            eta_secs(&lanes((0, 0), (5, 0)), 0.0, &[], 3_600_000, 0),
            Some(3_600)
        );
        // A batch past its expected end: due any moment.
        assert_eq!(
            eta_secs(&lanes((0, 0), (0, 5)), 0.0, &[1_000], 3_600_000, 5_000),
            Some(0)
        );
        assert_eq!(
            eta_secs(&lanes((0, 0), (0, 0)), 0.0, &[], 3_600_000, 0),
            Some(0)
        );
    }
}
