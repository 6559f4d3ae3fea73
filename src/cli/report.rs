//! What `nightshift status` and `nightshift job` show: read queries into documented serde
//! structs, printed as JSON (`--json`, a stable shape) or as aligned text.

use std::fmt::Write as _;
use std::path::Path;

use rusqlite::Connection;
use serde::Serialize;

use crate::lanes::admission::Rules;
use crate::model::batch::BatchCounts;
use crate::model::results::results_path;
use crate::store::attempts::{self, AttemptSummary};
use crate::store::batches;
use crate::store::budget::TenantBudget;
use crate::store::items::{self, Counts};
use crate::store::jobs::{self, JobRow};

/// `nightshift status --json`.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub jobs: Vec<JobStatus>,
    /// Files intake could not take as jobs (newest first).
    pub rejected_files: Vec<RejectedFile>,
    /// Lanes paused because the API refuses the account (key, spend cap, usage limit).
    pub paused: Vec<Pause>,
    /// Tenants with budget caps in the config, and where they stand (UTC day and month).
    pub budgets: Vec<TenantBudget>,
    /// Where the running daemon serves Prometheus metrics, if it does.
    pub metrics_url: Option<String>,
    /// Recurring jobs and their next run.
    pub schedules: Vec<ScheduleStatus>,
    /// Time windows of priority classes, and whether each is open now.
    pub windows: Vec<WindowStatus>,
}

#[derive(Debug, Serialize)]
pub struct WindowStatus {
    pub class: &'static str,
    pub hours: String,
    pub timezone: Option<String>,
    pub open: bool,
    pub when_idle: bool,
}

#[derive(Debug, Serialize)]
pub struct ScheduleStatus {
    pub name: String,
    pub schedule: String,
    /// IANA name; null: the machine's zone.
    pub timezone: Option<String>,
    /// RFC 3339 (UTC); null: never again.
    pub next_run: Option<String>,
    pub last_run: Option<String>,
    pub last_job: Option<String>,
    pub runs: i64,
}

#[derive(Debug, Serialize)]
pub struct JobStatus {
    pub name: String,
    /// `queued` (nothing sent yet), `running`, or `done` (every item final, results file complete).
    pub state: &'static str,
    pub counts: Counts,
    /// Items by the lane that produced their final outcome or is working on them now.
    pub lanes: Lanes,
    pub batches: Vec<BatchStatus>,
    pub results_file: String,
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

#[derive(Debug, Serialize)]
pub struct RejectedFile {
    pub file: String,
    pub reason: String,
    pub at: String,
}

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

fn job_state(conn: &Connection, job: &JobRow, counts: &Counts) -> rusqlite::Result<&'static str> {
    if job.finished_at.is_some() {
        return Ok("done");
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

fn job_status(conn: &Connection, job: &JobRow, results_dir: &Path) -> anyhow::Result<JobStatus> {
    let counts = items::counts(conn, job.id)?;
    let (batch, realtime) = batches::lanes(conn, job.id)?;
    let now = crate::store::now_ms();
    let batches = batches::by_job(conn, job.id)?
        .into_iter()
        .map(|b| {
            let counts = if b.state == "submitting" {
                BatchCounts {
                    processing: b.request_count,
                    ..Default::default()
                }
            } else {
                b.counts
            };
            BatchStatus {
                id: b.api_id,
                state: b.state,
                counts,
                age_secs: (now - b.intent_at) / 1000,
            }
        })
        .collect();
    Ok(JobStatus {
        name: job.name.clone(),
        state: job_state(conn, job, &counts)?,
        counts,
        lanes: Lanes { batch, realtime },
        batches,
        results_file: results_path(results_dir, &job.name).display().to_string(),
    })
}

pub fn status(
    conn: &Connection,
    results_dir: &Path,
    rules: &Rules,
    now: i64,
) -> anyhow::Result<StatusReport> {
    let wall = jiff::Timestamp::from_millisecond(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let paused = pauses(conn)?;
    let mut report = StatusReport {
        jobs: Vec::new(),
        rejected_files: Vec::new(),
        paused,
        budgets: crate::store::budget::standing(conn, &rules.budgets, now)?,
        windows: rules
            .windows
            .0
            .iter()
            .map(|(class, w)| WindowStatus {
                class: class.as_str(),
                hours: w.hours.clone(),
                timezone: w.timezone.clone(),
                open: w.is_open(wall),
                when_idle: w.when_idle,
            })
            .collect(),
        metrics_url: crate::store::facts::get(conn, "metrics_url")?,
        schedules: crate::store::schedules::list(conn)?
            .into_iter()
            .map(|s| ScheduleStatus {
                name: s.name,
                schedule: s.expr,
                timezone: s.timezone,
                next_run: s.next_run_at.map(format_time),
                last_run: s.last_run_at.map(format_time),
                last_job: s.last_job,
                runs: s.runs,
            })
            .collect(),
    };
    for job in jobs::list(conn)? {
        report.jobs.push(job_status(conn, &job, results_dir)?);
    }
    for (file, reason, at) in jobs::rejections(conn, 20)? {
        report.rejected_files.push(RejectedFile {
            file,
            reason,
            at: format_time(at),
        });
    }
    Ok(report)
}

/// Errored lines shown at most.
const ERRORED_SHOWN: i64 = 200;

pub fn job(
    conn: &Connection,
    results_dir: &Path,
    name: &str,
    now: i64,
) -> anyhow::Result<Option<JobReport>> {
    let Some(job) = jobs::find_by_name(conn, name)? else {
        return Ok(None);
    };
    let status = job_status(conn, &job, results_dir)?;
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
    Ok(Some(JobReport {
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

pub use crate::model::time::format_time;

/// "42s", "7m", "3h".
pub fn format_age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// A progress bar of `width` cells for `done` of `total`.
pub fn progress_bar(done: u64, total: u64, width: usize) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let filled = ((fraction * width as f64).round() as usize).min(width);
    format!(
        "[{}{}] {:>3}%",
        "#".repeat(filled),
        ".".repeat(width - filled),
        (fraction * 100.0).floor() as u64
    )
}

/// Lays out rows as columns separated by two spaces; the first row is the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = widths[c] - cell.chars().count();
            // Numbers align right, words left.
            if c > 0 && cell.chars().all(|ch| ch.is_ascii_digit()) && !cell.is_empty() {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// "2 (1 in_progress, 1 ended)" or "-".
fn batch_summary(batches: &[BatchStatus]) -> String {
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

/// Items that reached a final state.
pub fn finished(c: &Counts) -> u64 {
    c.succeeded + c.errored + c.expired + c.canceled
}

impl StatusReport {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&pauses_text(&self.paused));
        if !self.paused.is_empty() {
            out.push('\n');
        }
        if self.jobs.is_empty() {
            out.push_str("no jobs yet: put a .jsonl file in the jobs folder (or use `nightshift submit FILE`)\n");
        } else {
            let mut rows = vec![
                [
                    "JOB",
                    "STATE",
                    "PROGRESS",
                    "TOTAL",
                    "PENDING",
                    "IN FLIGHT",
                    "SUCCEEDED",
                    "ERRORED",
                    "EXPIRED",
                    "CANCELED",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for job in &self.jobs {
                let c = &job.counts;
                rows.push(vec![
                    job.name.clone(),
                    job.state.to_owned(),
                    progress_bar(finished(c), c.total, 20),
                    c.total.to_string(),
                    c.pending.to_string(),
                    c.in_flight.to_string(),
                    c.succeeded.to_string(),
                    c.errored.to_string(),
                    c.expired.to_string(),
                    c.canceled.to_string(),
                    format!("{}b/{}rt", job.lanes.batch, job.lanes.realtime),
                    batch_summary(&job.batches),
                ]);
            }
            out.push_str(&table(&rows));
        }
        if !self.budgets.is_empty() {
            let mut rows = vec![
                [
                    "TENANT",
                    "TODAY",
                    "DAILY CAP",
                    "THIS MONTH",
                    "MONTHLY CAP",
                    "RESERVED",
                ]
                .map(String::from)
                .to_vec(),
            ];
            let cap = |c: Option<f64>| c.map_or("-".into(), |c| format!("${c:.2}"));
            for b in &self.budgets {
                rows.push(vec![
                    b.tenant.clone(),
                    format!("${:.4}", b.daily_spent_usd),
                    cap(b.daily_cap_usd),
                    format!("${:.4}", b.monthly_spent_usd),
                    cap(b.monthly_cap_usd),
                    format!("${:.4}", b.reserved_usd),
                ]);
            }
            out.push_str("\nbudgets (UTC day and month):\n");
            out.push_str(&table(&rows));
        }
        if !self.schedules.is_empty() {
            let mut rows = vec![
                [
                    "SCHEDULE", "CRON", "ZONE", "NEXT RUN", "LAST RUN", "LAST JOB", "RUNS",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for s in &self.schedules {
                rows.push(vec![
                    s.name.clone(),
                    s.schedule.clone(),
                    s.timezone.clone().unwrap_or_else(|| "local".into()),
                    s.next_run.clone().unwrap_or_else(|| "never".into()),
                    s.last_run.clone().unwrap_or_else(|| "-".into()),
                    s.last_job.clone().unwrap_or_else(|| "-".into()),
                    s.runs.to_string(),
                ]);
            }
            out.push_str("\nrecurring jobs:\n");
            out.push_str(&table(&rows));
        }
        for w in &self.windows {
            let _ = writeln!(
                out,
                "\nwindow: {} work runs {} ({}){}: {}",
                w.class,
                w.hours,
                w.timezone.as_deref().unwrap_or("local time"),
                if w.when_idle {
                    ", and outside it while the quota is idle"
                } else {
                    ""
                },
                if w.open { "open now" } else { "closed now" }
            );
        }
        if let Some(url) = &self.metrics_url {
            let _ = writeln!(out, "\nmetrics: {url}");
        }
        if !self.rejected_files.is_empty() {
            out.push_str("\nrejected files (moved to the jobs folder's rejected/):\n");
            for r in &self.rejected_files {
                let _ = writeln!(out, "  {}  {}: {}", r.at, r.file, r.reason);
            }
        }
        out
    }
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
            for b in &s.batches {
                rows.push(vec![
                    b.id.clone().unwrap_or_else(|| "(creating)".into()),
                    b.state.clone(),
                    b.counts.total().to_string(),
                    b.counts.processing.to_string(),
                    b.counts.succeeded.to_string(),
                    b.counts.errored.to_string(),
                    b.counts.expired.to_string(),
                    b.counts.canceled.to_string(),
                    format_age(b.age_secs),
                ]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_words_left_and_numbers_right() {
        let rows = vec![
            vec!["JOB".to_string(), "TOTAL".to_string()],
            vec!["a".to_string(), "5".to_string()],
            vec!["long-name".to_string(), "1234".to_string()],
        ];
        assert_eq!(
            table(&rows),
            "JOB        TOTAL\na              5\nlong-name   1234\n"
        );
    }

    #[test]
    fn progress_bar_fills_by_fraction() {
        assert_eq!(progress_bar(1, 4, 4), "[#...]  25%");
        assert_eq!(progress_bar(0, 0, 2), "[##] 100%");
    }
}

/// `nightshift limits --json`.
#[derive(Debug, Serialize)]
pub struct LimitsReport {
    pub classes: Vec<ClassLimits>,
    /// Lanes paused because the API refuses the account: (lane, reason, until).
    pub pauses: Vec<Pause>,
}

#[derive(Debug, Serialize)]
pub struct Pause {
    pub lane: String,
    pub reason: String,
    pub until: String,
}

#[derive(Debug, Serialize)]
pub struct ClassLimits {
    pub class: String,
    /// What the daemon last published (every 2 s while it runs).
    pub updated_at: String,
    pub concurrency: u64,
    pub in_flight: u64,
    /// The input estimate's calibration (actual / estimated) and its recent mean error.
    pub input_ratio: f64,
    pub input_error: Option<f64>,
    pub dims: Vec<DimLimits>,
    pub last_throttle: Option<crate::store::quota::ThrottleEvent>,
}

#[derive(Debug, Serialize)]
pub struct DimLimits {
    pub dim: String,
    pub limit_per_minute: Option<f64>,
    pub capacity: f64,
    pub level: f64,
    pub last_remaining: Option<u64>,
    pub used_last_minute: i64,
    /// `used_last_minute` as a fraction of the limit.
    pub utilisation: Option<f64>,
}

/// Lanes paused now because the API refuses the account.
fn pauses(conn: &Connection) -> anyhow::Result<Vec<Pause>> {
    Ok(crate::store::quota::pauses(conn, crate::store::now_ms())?
        .into_iter()
        .map(|(lane, reason, until)| Pause {
            lane,
            reason,
            until: format_time(until),
        })
        .collect())
}

/// The lines saying which lanes are paused and why.
fn pauses_text(pauses: &[Pause]) -> String {
    pauses
        .iter()
        .map(|p| {
            format!(
                "PAUSED: the {} lane until {}: {}\n",
                p.lane, p.until, p.reason
            )
        })
        .collect()
}

pub fn limits(conn: &Connection, now: i64) -> anyhow::Result<LimitsReport> {
    use crate::store::quota;
    let mut classes = Vec::new();
    for (class, snapshot, _key_id, updated_at) in quota::states(conn)? {
        let snap: serde_json::Value = serde_json::from_str(&snapshot).unwrap_or_default();
        let models = quota::models_of_class(conn, &class)?;
        let used = quota::last_minute_usage(conn, &models, now)?;
        let dims = snap["dims"]
            .as_array()
            .map(|dims| {
                dims.iter()
                    .enumerate()
                    .map(|(i, d)| {
                        let limit = d["limit_per_minute"].as_f64();
                        let used = used.get(i).copied().unwrap_or(0);
                        DimLimits {
                            dim: d["dim"].as_str().unwrap_or_default().to_owned(),
                            limit_per_minute: limit,
                            capacity: d["capacity"].as_f64().unwrap_or(0.0),
                            level: d["level"].as_f64().unwrap_or(0.0),
                            last_remaining: d["last_remaining"].as_u64(),
                            used_last_minute: used,
                            utilisation: limit.filter(|l| *l > 0.0).map(|l| used as f64 / l),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        classes.push(ClassLimits {
            last_throttle: quota::last_throttle_of_class(conn, &class)?,
            class,
            updated_at: format_time(updated_at),
            concurrency: snap["concurrency"].as_u64().unwrap_or(0),
            in_flight: snap["in_flight"].as_u64().unwrap_or(0),
            input_ratio: snap["input_ratio"].as_f64().unwrap_or(1.0),
            input_error: snap["input_error"].as_f64(),
            dims,
        });
    }
    Ok(LimitsReport {
        classes,
        pauses: pauses(conn)?,
    })
}

impl LimitsReport {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&pauses_text(&self.pauses));
        if self.classes.is_empty() {
            out.push_str("no limits known yet: the daemon publishes them once it has sent calls\n");
            return out;
        }
        let mut rows = vec![
            [
                "CLASS",
                "DIMENSION",
                "LIMIT/MIN",
                "CAPACITY",
                "LEVEL",
                "REMAINING",
                "USED LAST MIN",
                "UTILISATION",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for c in &self.classes {
            for (i, d) in c.dims.iter().enumerate() {
                rows.push(vec![
                    if i == 0 {
                        c.class.clone()
                    } else {
                        String::new()
                    },
                    d.dim.clone(),
                    d.limit_per_minute.map_or("-".into(), |l| format!("{l:.0}")),
                    format!("{:.0}", d.capacity),
                    format!("{:.0}", d.level),
                    d.last_remaining.map_or("-".into(), |r| r.to_string()),
                    d.used_last_minute.to_string(),
                    d.utilisation
                        .map_or("-".into(), |u| format!("{:.0}%", u * 100.0)),
                ]);
            }
        }
        out.push_str(&table(&rows));
        for c in &self.classes {
            let _ = write!(
                out,
                "\n{}: concurrency {} ({} in flight); input estimate x{:.2}",
                c.class, c.concurrency, c.in_flight, c.input_ratio
            );
            if let Some(e) = c.input_error {
                let _ = write!(out, " (mean error {:.0}%)", e * 100.0);
            }
            let _ = writeln!(out, "; published {}", c.updated_at);
            match &c.last_throttle {
                Some(t) => {
                    let _ = writeln!(
                        out,
                        "  last throttled {}: HTTP {} {} (request-id {}, retry-after {})",
                        format_time(t.at),
                        t.http_status,
                        t.message.as_deref().unwrap_or(""),
                        t.request_id.as_deref().unwrap_or("-"),
                        t.retry_after_ms
                            .map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0))
                    );
                }
                None => out.push_str("  never throttled\n"),
            }
        }
        out
    }
}

/// `nightshift diagnose --json`: per endpoint and model, the last success, the first failure and
/// the latest failure side by side.
#[derive(Debug, Serialize)]
pub struct DiagnoseReport {
    pub rows: Vec<Diagnosis>,
}

#[derive(Debug, Serialize)]
pub struct Diagnosis {
    pub endpoint: String,
    pub model: String,
    pub last_success: Option<CallFacts>,
    pub first_failure: Option<CallFacts>,
    pub latest_failure: Option<CallFacts>,
}

/// What a support ticket needs about one call.
#[derive(Debug, Serialize)]
pub struct CallFacts {
    pub at: String,
    pub route: String,
    pub key_id: String,
    pub model: String,
    pub status: Option<u16>,
    pub input_size: Option<i64>,
    pub output_limit: Option<i64>,
    pub concurrency: Option<i64>,
    pub retry_after_ms: Option<i64>,
    pub request_id: Option<String>,
    pub error: Option<String>,
    /// The `anthropic-ratelimit-*` headers of a failure.
    pub headers: Option<serde_json::Value>,
}

pub fn diagnose(conn: &Connection) -> anyhow::Result<DiagnoseReport> {
    use crate::store::quota;
    let key_id = quota::states(conn)?
        .first()
        .map(|s| s.2.clone())
        .unwrap_or_else(|| "-".into());
    let endpoint = "POST /v1/messages".to_owned();
    let failure = |e: quota::ThrottleEvent| CallFacts {
        at: format_time(e.at),
        route: e.endpoint,
        key_id: e.key_id,
        model: e.model,
        status: Some(e.http_status),
        input_size: e.input_estimate,
        output_limit: e.max_tokens,
        concurrency: e.concurrency,
        retry_after_ms: e.retry_after_ms,
        request_id: e.request_id,
        error: e.message,
        headers: serde_json::from_str(&e.headers).ok(),
    };
    let mut rows = Vec::new();
    for model in quota::models_seen(conn)? {
        let success = quota::last_success(conn, &model)?;
        // The first failure since the last success, or the first ever if none came after it.
        let first = match &success {
            Some(s) => quota::first_throttle_after(conn, &model, s.at)?,
            None => None,
        };
        let first = match first {
            Some(event) => Some(event),
            None => quota::throttle_event(conn, &model, true)?,
        };
        let last_success = success.map(|s| CallFacts {
            at: format_time(s.at),
            route: endpoint.clone(),
            key_id: key_id.clone(),
            model: model.clone(),
            status: Some(200),
            input_size: s.input_tokens.or(s.input_estimate),
            output_limit: s.max_tokens,
            concurrency: s.concurrency,
            retry_after_ms: None,
            request_id: s.request_id,
            error: None,
            headers: None,
        });
        rows.push(Diagnosis {
            endpoint: endpoint.clone(),
            model: model.clone(),
            last_success,
            first_failure: first.map(failure),
            latest_failure: quota::throttle_event(conn, &model, false)?.map(failure),
        });
    }
    Ok(DiagnoseReport { rows })
}

/// The cells of one call's column in `diagnose`, in the order of its rows.
fn facts_cells(c: Option<&CallFacts>) -> [String; 10] {
    let Some(c) = c else {
        return std::array::from_fn(|_| "-".to_owned());
    };
    let opt = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
    [
        c.at.clone(),
        c.route.clone(),
        c.key_id.clone(),
        c.status.map_or("-".into(), |s| s.to_string()),
        opt(c.input_size),
        opt(c.output_limit),
        opt(c.concurrency),
        c.retry_after_ms
            .map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
        c.request_id.clone().unwrap_or_else(|| "-".into()),
        c.error.clone().unwrap_or_else(|| "-".into()),
    ]
}

impl DiagnoseReport {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if self.rows.is_empty() {
            out.push_str("no real-time calls on record yet\n");
        }
        for d in &self.rows {
            let _ = writeln!(out, "{} — {}", d.endpoint, d.model);
            const NAMES: [&str; 10] = [
                "time",
                "route",
                "key id",
                "status",
                "input size",
                "output limit",
                "concurrency",
                "retry-after",
                "request-id",
                "error",
            ];
            let columns = [&d.last_success, &d.first_failure, &d.latest_failure]
                .map(|c| facts_cells(c.as_ref()));
            let mut rows = vec![vec![
                "".to_owned(),
                "LAST SUCCESS".into(),
                "FIRST FAILURE".into(),
                "LATEST FAILURE".into(),
            ]];
            for (i, name) in NAMES.iter().enumerate() {
                rows.push(vec![
                    (*name).to_owned(),
                    columns[0][i].clone(),
                    columns[1][i].clone(),
                    columns[2][i].clone(),
                ]);
            }
            for line in table(&rows).lines() {
                let _ = writeln!(out, "  {line}");
            }
            out.push('\n');
        }
        out
    }
}

/// `nightshift ledger --json`: `{"groups": [{"key", "requests", "input_tokens", "output_tokens",
/// "cache_creation_input_tokens", "cache_read_input_tokens", "cost_usd"}], "total": {…}}`.
#[derive(Debug, Serialize)]
pub struct LedgerReport {
    pub groups: Vec<LedgerGroup>,
    pub total: LedgerGroup,
}

#[derive(Debug, Serialize)]
pub struct LedgerGroup {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub cache_read_input_tokens: i64,
    /// USD, exact to the millionth (the ledger keeps millionths, so groups add up to the total).
    pub cost_usd: f64,
    /// Calls of models without a price: not in `cost_usd`.
    pub unpriced_requests: i64,
    pub retries_of_unknown: i64,
}

impl LedgerGroup {
    fn new(key: Option<String>, s: &crate::store::ledger::Sums) -> LedgerGroup {
        LedgerGroup {
            key,
            requests: s.requests,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            cache_creation_input_tokens: s.cache_creation_input_tokens,
            cache_read_input_tokens: s.cache_read_input_tokens,
            cost_usd: s.cost_micro_usd as f64 / 1_000_000.0,
            unpriced_requests: s.unpriced_requests,
            retries_of_unknown: s.retries_of_unknown,
        }
    }
}

pub fn ledger(
    conn: &Connection,
    by: crate::store::ledger::GroupBy,
    filter: &crate::store::ledger::Filter,
) -> anyhow::Result<LedgerReport> {
    let rows = crate::store::ledger::grouped(conn, by, filter)?;
    let mut total = crate::store::ledger::Sums::default();
    for (_, sums) in &rows {
        total.add(sums);
    }
    Ok(LedgerReport {
        groups: rows
            .iter()
            .map(|(k, s)| LedgerGroup::new(Some(k.clone()), s))
            .collect(),
        total: LedgerGroup::new(None, &total),
    })
}

impl LedgerReport {
    fn rows(&self) -> Vec<Vec<String>> {
        let line = |key: &str, g: &LedgerGroup| {
            vec![
                key.to_owned(),
                g.requests.to_string(),
                g.input_tokens.to_string(),
                g.output_tokens.to_string(),
                g.cache_creation_input_tokens.to_string(),
                g.cache_read_input_tokens.to_string(),
                format!("{:.6}", g.cost_usd),
                g.unpriced_requests.to_string(),
            ]
        };
        let mut rows: Vec<Vec<String>> = self
            .groups
            .iter()
            .map(|g| line(g.key.as_deref().unwrap_or_default(), g))
            .collect();
        rows.push(line("TOTAL", &self.total));
        rows
    }

    const HEADER: [&'static str; 8] = [
        "KEY",
        "REQUESTS",
        "INPUT",
        "OUTPUT",
        "CACHE WRITE",
        "CACHE READ",
        "COST USD",
        "UNPRICED",
    ];

    pub fn to_text(&self) -> String {
        let mut rows = vec![Self::HEADER.map(String::from).to_vec()];
        rows.extend(self.rows());
        let mut out = table(&rows);
        if self.total.unpriced_requests > 0 {
            out.push_str("some calls used models without a price: their cost is not counted (see src/prices.rs)\n");
        }
        if self.total.retries_of_unknown > 0 {
            let _ = writeln!(
                out,
                "{} billed calls retried an unknown outcome: the API may have run (and billed) those requests twice",
                self.total.retries_of_unknown
            );
        }
        out
    }

    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "key,requests,input_tokens,output_tokens,cache_creation_input_tokens,cache_read_input_tokens,cost_usd,unpriced_requests\n",
        );
        for row in self.rows() {
            let quoted: Vec<String> = row
                .iter()
                .map(|c| {
                    if c.contains([',', '"', '\n']) {
                        format!("\"{}\"", c.replace('"', "\"\""))
                    } else {
                        c.clone()
                    }
                })
                .collect();
            out.push_str(&quoted.join(","));
            out.push('\n');
        }
        out
    }
}
