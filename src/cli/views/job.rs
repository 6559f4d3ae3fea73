//! `nightshift job NAME`: one job in detail, with its errored lines and why.

use std::fmt::Write as _;
use std::path::Path;

use crate::store::sql::Conn;
use serde::Serialize;

use super::status::{JobStatus, job_status};
use super::{finished, format_age, format_time, progress_bar, table};
use crate::store::attempts::{self, AttemptSummary};
use crate::store::items;
use crate::store::jobs;

/// `nightshift job NAME --json`.
#[derive(Debug, Serialize)]
pub struct JobReport {
    #[serde(flatten)]
    pub status: JobStatus,
    pub source: String,
    pub tenant: String,
    pub priority: &'static str,
    pub mode: &'static str,
    pub deadline: Option<String>,
    pub created_at: String,
    pub ingested_at: Option<String>,
    pub finished_at: Option<String>,
    pub note: Option<String>,
    pub results_lines_written: i64,
    pub calls: AttemptSummary,
    pub errored_lines: Vec<ErroredLine>,
    /// Calls whose outcome was unknown; their items were sent again.
    pub unknown_outcomes: Vec<UnknownOutcome>,
    /// What budget caps did to the job's items (rejections are among `errored_lines`).
    pub budget: JobBudget,
    /// The prompt cache: what `cache = "auto"` added and what the API read.
    pub cache: JobCache,
}

#[derive(Debug, Default, Serialize)]
pub struct JobCache {
    /// `auto` or `off`.
    pub mode: &'static str,
    /// Items whose request got a breakpoint from nightshift (its `params` as sent differ from
    /// the line as written by that `cache_control` alone).
    pub breakpoints_added: i64,
    /// Items that mark a prefix for the cache (added or their own).
    pub items_cached: i64,
    /// Billed tokens read from and written to the cache (the ledger's).
    pub read_tokens: i64,
    pub written_tokens: i64,
    /// `read_tokens` over both (null when the cache was not used).
    pub hit_rate: Option<f64>,
    /// What the cache saved, USD: the calls' cost had their cache tokens been plain input, less
    /// their cost (negative when writes cost more than reads saved).
    pub saved_usd: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct JobBudget {
    /// Items sent with a cheaper model than they asked for.
    pub downgraded: i64,
    /// Items held back until a budget period rolls over.
    pub held: i64,
    /// When the last of them may go (RFC 3339).
    pub held_until: Option<String>,
    /// Why, as the budget said it.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ErroredLine {
    pub line: i64,
    pub custom_id: Option<String>,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct UnknownOutcome {
    pub custom_id: String,
    pub attempt: i64,
    pub error: String,
}

/// Errored lines shown at most.
const ERRORED_SHOWN: i64 = 200;

pub fn job(
    conn: &Conn,
    results_dir: &Path,
    name: &str,
    now: i64,
) -> anyhow::Result<Option<JobReport>> {
    let Some(job) = jobs::find_by_name(conn, name)? else {
        return Ok(None);
    };
    let status = job_status(conn, &job, results_dir, now)?;
    let (downgraded, held, held_until, reason) =
        crate::store::budget::job_effects(conn, job.id, now)?;
    let errored_lines = items::errored(conn, job.id, ERRORED_SHOWN)?
        .into_iter()
        .map(|(line, custom_id, error)| ErroredLine {
            line,
            custom_id,
            error,
        })
        .collect();
    let unknown_outcomes = attempts::unknown_outcomes(conn, job.id, ERRORED_SHOWN)?
        .into_iter()
        .map(|(custom_id, attempt, error)| UnknownOutcome {
            custom_id,
            attempt,
            error,
        })
        .collect();
    let (breakpoints_added, items_cached) = conn.query_row(
        "SELECT (SELECT COALESCE(SUM(cache_added), 0) FROM items WHERE job_id = ?1),
                (SELECT COUNT(*) FROM items WHERE job_id = ?1 AND cache_key IS NOT NULL)",
        [job.id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let cache = JobCache {
        mode: job
            .defaults
            .cache
            .unwrap_or(crate::model::job::CacheMode::Off)
            .as_str(),
        breakpoints_added,
        items_cached,
        read_tokens: status.cache_read_tokens,
        written_tokens: status.cache_written_tokens,
        hit_rate: status.cache_hit_rate,
        saved_usd: status.cache_saved_usd,
    };
    Ok(Some(JobReport {
        cache,
        status,
        source: job.source_path.clone(),
        tenant: job.defaults.tenant.clone(),
        priority: job.defaults.priority.as_str(),
        mode: job.defaults.mode.as_str(),
        deadline: job.defaults.deadline.as_ref().map(|(text, _)| text.clone()),
        created_at: format_time(job.created_at),
        ingested_at: job.ingested_at.map(format_time),
        finished_at: job.finished_at.map(format_time),
        note: job.note.clone(),
        results_lines_written: job.results_lines,
        calls: attempts::summary(conn, job.id)?,
        errored_lines,
        unknown_outcomes,
        budget: JobBudget {
            downgraded,
            held,
            held_until: held_until.map(format_time),
            reason,
        },
    }))
}

impl JobReport {
    pub fn to_text(&self) -> String {
        let s = &self.status;
        let c = &s.counts;
        let mut out = String::new();
        let _ = writeln!(out, "job        {}", s.name);
        let _ = writeln!(
            out,
            "state      {}  {}",
            s.state,
            progress_bar(finished(c), c.total, 30)
        );
        let _ = writeln!(out, "source     {}", self.source);
        let _ = writeln!(
            out,
            "defaults   tenant {}, priority {}, mode {}, deadline {}",
            self.tenant,
            self.priority,
            self.mode,
            self.deadline.as_deref().unwrap_or("none")
        );
        let _ = writeln!(
            out,
            "times      created {}, taken in {}, done {}",
            self.created_at,
            self.ingested_at.as_deref().unwrap_or("(reading)"),
            self.finished_at.as_deref().unwrap_or("-")
        );
        let _ = writeln!(
            out,
            "results    {} ({} lines written)",
            s.results_file, self.results_lines_written
        );
        let _ = writeln!(
            out,
            "items      {} total: {} pending, {} in flight, {} succeeded, {} errored, {} expired, {} canceled",
            c.total, c.pending, c.in_flight, c.succeeded, c.errored, c.expired, c.canceled
        );
        let _ = writeln!(
            out,
            "lanes      {} items by batch, {} real time",
            s.lanes.batch, s.lanes.realtime
        );
        let k = &self.cache;
        let _ = writeln!(
            out,
            "cache      {}: {} items mark a prefix ({} breakpoints added by nightshift); {} tokens read, {} written{}",
            k.mode,
            k.items_cached,
            k.breakpoints_added,
            k.read_tokens,
            k.written_tokens,
            match k.hit_rate {
                Some(hit) => format!(
                    "; hit rate {:.1} %, {} saved",
                    hit * 100.0,
                    super::format_usd(k.saved_usd)
                ),
                None => String::new(),
            }
        );
        let b = &self.budget;
        if b.downgraded > 0 || b.held > 0 {
            let _ = writeln!(
                out,
                "budget     {} downgraded to a cheaper model, {} held until {}",
                b.downgraded,
                b.held,
                b.held_until.as_deref().unwrap_or("-")
            );
        }
        if let Some(reason) = &b.reason {
            let _ = writeln!(out, "           last: {reason}");
        }
        if !s.batches.is_empty() {
            let mut rows = vec![
                [
                    "BATCH",
                    "STATE",
                    "REQUESTS",
                    "PROCESSING",
                    "SUCCEEDED",
                    "ERRORED",
                    "EXPIRED",
                    "CANCELED",
                    "AGE",
                ]
                .map(String::from)
                .to_vec(),
            ];
            // With routes, the route each batch belongs to (a config without them has one).
            let routes = s
                .batches
                .iter()
                .any(|b| b.route != crate::config::DEFAULT_ROUTE);
            if routes {
                rows[0].push("ROUTE".into());
            }
            for b in &s.batches {
                let mut row = vec![
                    b.id.clone().unwrap_or_else(|| "(creating)".into()),
                    b.state.clone(),
                    b.counts.total().to_string(),
                    b.counts.processing.to_string(),
                    b.counts.succeeded.to_string(),
                    b.counts.errored.to_string(),
                    b.counts.expired.to_string(),
                    b.counts.canceled.to_string(),
                    format_age(b.age_secs),
                ];
                if routes {
                    row.push(b.route.clone());
                }
                rows.push(row);
            }
            for line in table(&rows).lines() {
                let _ = writeln!(out, "           {line}");
            }
        }
        let k = &self.calls;
        let _ = writeln!(
            out,
            "calls      {} sent: {} rate-limited (429), {} failed and retried, {} unknown outcomes, {} blocked, {} expired in a batch; tokens {} in, {} out",
            k.calls,
            k.rate_limited,
            k.retryable,
            k.unknown,
            k.blocked,
            k.expired,
            k.input_tokens,
            k.output_tokens
        );
        if let Some(note) = &self.note {
            let _ = writeln!(out, "note       {note}");
        }
        if !self.errored_lines.is_empty() {
            let _ = writeln!(out, "\nerrored lines:");
            for e in &self.errored_lines {
                let _ = writeln!(
                    out,
                    "  line {:>6}  {:<20}  {}",
                    e.line,
                    e.custom_id.as_deref().unwrap_or("(no custom_id)"),
                    e.error
                );
            }
            if c.errored > self.errored_lines.len() as u64 {
                let _ = writeln!(
                    out,
                    "  … and {} more (see the results file)",
                    c.errored - self.errored_lines.len() as u64
                );
            }
        }
        if !self.unknown_outcomes.is_empty() {
            let _ = writeln!(
                out,
                "\ncalls with an unknown outcome (sent again; the API may have run them twice):"
            );
            for u in &self.unknown_outcomes {
                let _ = writeln!(
                    out,
                    "  {:<20}  attempt {}  {}",
                    u.custom_id, u.attempt, u.error
                );
            }
        }
        out
    }
}
