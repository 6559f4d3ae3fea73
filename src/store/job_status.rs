//! A job's standing as `status`, `job`, `status --watch` and the daemon's status page show it:
//! state, counts, lanes, batches and its use of the prompt cache. Here, below the daemon and the
//! CLI, so the page and `status` read the same facts the same way (`status --json` serialises
//! these structs: their shape is stable).

use std::path::Path;

use rusqlite::Connection;
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
    /// Billed tokens read from and written to the cache (`job` shows them).
    #[serde(skip)]
    pub cache_read_tokens: i64,
    #[serde(skip)]
    pub cache_written_tokens: i64,
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
}

fn job_state(conn: &Connection, job: &JobRow, counts: &Counts) -> Result<&'static str> {
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
pub fn job_status(
    conn: &Connection,
    job: &JobRow,
    results_dir: &Path,
    now: i64,
) -> Result<JobStatus> {
    let counts = super::items::counts(conn, job.id)?;
    let (batch, realtime) = super::batches::lanes(conn, job.id)?;
    let batches = super::batches::by_job(conn, job.id)?
        .into_iter()
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
            }
        })
        .collect();
    let cache = super::ledger::job_cache_use(conn, job.id)?;
    Ok(JobStatus {
        cache_hit_rate: crate::policy::prices::cache_hit_ratio(
            cache.read_tokens,
            cache.written_tokens,
        ),
        cache_saved_usd: cache.saved_micro_usd as f64 / 1e6,
        cache_read_tokens: cache.read_tokens,
        cache_written_tokens: cache.written_tokens,
        name: job.name.clone(),
        state: job_state(conn, job, &counts)?,
        counts,
        lanes: Lanes { batch, realtime },
        batches,
        results_file: results_path(results_dir, &job.name).display().to_string(),
    })
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
