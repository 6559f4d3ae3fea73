//! `nightshift status`: every job with its progress and counts, windows, schedules, budgets.

use std::fmt::Write as _;
use std::path::Path;

use crate::store::sql::Conn;
use serde::Serialize;

use super::daemon::{DaemonStatus, daemon_status};
use super::limits::{Pause, pauses, pauses_text};
use super::{format_time, table};
use crate::lanes::admission::Rules;
use crate::lanes::intake::{NOT_TAKEN_FACT, NotTaken};
use crate::store::budget::TenantBudget;
use crate::store::jobs::{self, JobRow};
// Where a job stands lives in the store, so the daemon's status page shows the same facts.
pub use crate::store::job_status::{BatchStatus, JobStatus, Lanes};

/// `nightshift status --json`.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// Whether a daemon runs on this data dir, and whether it is well.
    pub daemon: DaemonStatus,
    pub jobs: Vec<JobStatus>,
    /// Files intake could not take as jobs (newest first).
    pub rejected_files: Vec<RejectedFile>,
    /// Entries of the jobs folder the daemon's last scan left where they are, and why: folders,
    /// symlinks, names that are not UTF-8, files it cannot read yet; or the folder itself, when
    /// other users could write it.
    pub not_taken: Vec<NotTakenEntry>,
    /// Lanes paused because the API refuses the account (key, spend cap, usage limit) or cannot
    /// be reached.
    pub paused: Vec<Pause>,
    /// Jobs and tenants an operator paused (`nightshift pause`), by whom and since when.
    pub holds: Vec<HoldStatus>,
    /// Tenants with budget caps in the config, and where they stand (UTC day and month).
    pub budgets: Vec<TenantBudget>,
    /// Where the running daemon serves Prometheus metrics, if it does.
    pub metrics_url: Option<String>,
    /// The config this command read (a path, or "built-in defaults"), and the one the daemon
    /// runs with (null before a daemon ran on this data dir).
    pub config: String,
    pub daemon_config: Option<String>,
    /// Recurring jobs and their next run.
    pub schedules: Vec<ScheduleStatus>,
    /// Time windows of priority classes, and whether each is open now.
    pub windows: Vec<WindowStatus>,
    /// The daemons working on the store (several share a PostgreSQL one), most recent heartbeat
    /// first, with what each holds.
    pub daemons: Vec<DaemonEntry>,
}

/// A daemon working on the store.
#[derive(Debug, Serialize)]
pub struct DaemonEntry {
    /// `host:data_dir`: what its leases name.
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub started: String,
    pub last_heartbeat: String,
    pub heartbeat_age_secs: i64,
    /// Real-time items it holds in flight, and batches it follows.
    pub items_held: i64,
    pub batches_held: i64,
}

/// A daemon silent for longer than this is called out (it beats every 5 s at most).
const DAEMON_SILENT_SECS: i64 = 15;

#[derive(Debug, Serialize)]
pub struct HoldStatus {
    /// The job paused, or null for a tenant.
    pub job: Option<String>,
    /// The tenant paused, or null for a job.
    pub tenant: Option<String>,
    pub by: String,
    /// RFC 3339.
    pub since: String,
}

impl HoldStatus {
    /// "PAUSED job nightly by alice (uid 1000) since 2026-12-06T01:00:00Z".
    pub fn to_text(&self) -> String {
        let what = match (&self.job, &self.tenant) {
            (Some(job), _) => format!("job {job}"),
            (None, Some(tenant)) => format!("tenant {tenant}"),
            (None, None) => "?".into(),
        };
        format!("PAUSED {what} by {} since {}", self.by, self.since)
    }
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
pub struct NotTakenEntry {
    pub entry: String,
    pub reason: String,
    pub since: String,
}

#[derive(Debug, Serialize)]
pub struct RejectedFile {
    pub file: String,
    pub reason: String,
    pub at: String,
}

/// The daemons sharing the store, one row each.
fn daemons_table(daemons: &[DaemonEntry]) -> String {
    let mut rows = vec![
        ["DAEMON", "PID", "VERSION", "HEARTBEAT", "ITEMS", "BATCHES"]
            .map(String::from)
            .to_vec(),
    ];
    for d in daemons {
        let beat = if d.heartbeat_age_secs > DAEMON_SILENT_SECS {
            format!("{} s ago: stopped or cut off?", d.heartbeat_age_secs)
        } else {
            format!("{} s ago", d.heartbeat_age_secs)
        };
        rows.push(vec![
            d.id.clone(),
            d.pid.to_string(),
            d.version.clone(),
            beat,
            d.items_held.to_string(),
            d.batches_held.to_string(),
        ]);
    }
    format!(
        "daemons sharing the store ({}):\n{}",
        daemons.len(),
        table(&rows)
    )
}

/// Where `job` stands now (see [`crate::store::job_status`]).
pub(super) fn job_status(
    conn: &Conn,
    job: &JobRow,
    results_dir: &Path,
    now: i64,
) -> anyhow::Result<JobStatus> {
    Ok(crate::store::job_status::job_status(
        conn,
        job,
        results_dir,
        now,
    )?)
}

pub fn status(
    conn: &Conn,
    data_dir: &Path,
    results_dir: &Path,
    rules: &Rules,
    now: i64,
) -> anyhow::Result<StatusReport> {
    let wall = jiff::Timestamp::from_millisecond(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let paused = pauses(conn)?;
    // What this host's daemon of `data_dir` published (daemons sharing a store keep their own).
    let id = crate::store::leases::local_daemon_id(data_dir);
    let fact = |name: &str| crate::store::facts::get(conn, &id, name);
    let mut report = StatusReport {
        daemon: daemon_status(conn, data_dir, now)?,
        jobs: Vec::new(),
        rejected_files: Vec::new(),
        not_taken: fact(NOT_TAKEN_FACT)?
            .and_then(|json| serde_json::from_str::<Vec<NotTaken>>(&json).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|n| NotTakenEntry {
                entry: n.entry,
                reason: n.reason,
                since: format_time(n.since),
            })
            .collect(),
        paused,
        holds: crate::store::holds::list(conn)?
            .into_iter()
            .map(|h| HoldStatus {
                job: h.job,
                tenant: h.tenant,
                by: h.by,
                since: format_time(h.at),
            })
            .collect(),
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
        metrics_url: fact(crate::daemon::METRICS_FACT)?,
        config: String::new(),
        daemon_config: fact(crate::daemon::CONFIG_FACT)?,
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
        daemons: crate::store::leases::daemons(conn)?
            .into_iter()
            .map(|d| DaemonEntry {
                heartbeat_age_secs: (now - d.heartbeat_at).max(0) / 1000,
                started: format_time(d.started_at),
                last_heartbeat: format_time(d.heartbeat_at),
                id: d.id,
                host: d.host,
                pid: d.pid,
                version: d.version,
                items_held: d.items_held,
                batches_held: d.batches_held,
            })
            .collect(),
    };
    for job in jobs::list(conn)? {
        report.jobs.push(job_status(conn, &job, results_dir, now)?);
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

impl StatusReport {
    pub fn to_text(&self) -> String {
        self.to_text_within(None)
    }

    /// The text, its jobs table fitted to `width` columns (None: every column).
    pub fn to_text_within(&self, width: Option<usize>) -> String {
        let mut out = self.daemon.to_text();
        out.push_str(&pauses_text(&self.paused));
        for h in &self.holds {
            out.push_str(&format!("{} (nightshift resume lets it go)\n", h.to_text()));
        }
        if !self.paused.is_empty() || !self.holds.is_empty() {
            out.push('\n');
        }
        // One daemon is the section above; several share a store (PostgreSQL): list them.
        if self.daemons.len() > 1 {
            out.push_str(&daemons_table(&self.daemons));
            out.push('\n');
        }
        if self.jobs.is_empty() {
            out.push_str("no jobs yet: put a .jsonl file in the jobs folder (or use `nightshift submit FILE`)\n");
        } else {
            out.push_str(&super::jobs_table::jobs_table(&self.jobs, width));
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
        let _ = write!(out, "\nconfig: {}", self.config);
        match &self.daemon_config {
            Some(daemon) if *daemon != self.config => {
                let _ = writeln!(out, " (the daemon runs with {daemon})");
            }
            _ => out.push('\n'),
        }
        if let Some(url) = &self.metrics_url {
            let _ = writeln!(out, "\nmetrics: {url}");
        }
        if !self.not_taken.is_empty() {
            out.push_str("\nnot taken from the jobs folder (left where they are):\n");
            for n in &self.not_taken {
                let _ = writeln!(out, "  {}  {}: {}", n.since, n.entry, n.reason);
            }
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
