//! The status page: `GET /` (and `/status`) on the metrics listener, behind the same optional
//! bearer token. The facts of `nightshift status` (the daemon's health, each job, route pauses,
//! budgets) and the last hour per minute, as charts: each model class's real-time use against its
//! limits, and each tenant's spend.
//!
//! One self-contained HTML document: inline CSS, inline SVG, no script, no fonts, nothing fetched
//! (the response's Content-Security-Policy forbids loading anything, so a string that escaped
//! [`escape`] still could not run). It refreshes itself every 10 s. [`read`] gathers the store's
//! part through the scrape's read-only connection, with the time passed in; [`render`] is pure.

use std::fmt::Write as _;
use std::path::Path;

use crate::store::sql::Conn;

use crate::lanes::health::Health;
use crate::model::time::format_time;
use crate::policy::budget::Budgets;
use crate::policy::prices::format_usd;
use crate::policy::quota::ClassSnapshot;
use crate::store::budget::TenantBudget;
use crate::store::job_status::{JobStatus, batch_summary};
use crate::store::ledger::ModelMinute;

/// The charts' span: this many one-minute buckets, the last one the minute now under way.
pub const MINUTES: usize = 60;
/// Seconds between the page's own reloads.
pub const REFRESH_SECS: u32 = 10;

/// What the charts measure per class, in the order of the quota controller's dimensions.
const DIMS: [(&str, &str); 3] = [
    ("requests", "requests / min"),
    ("input_tokens", "input tokens / min (with cache writes)"),
    ("output_tokens", "output tokens / min"),
];

/// Series colours, taken in turn (dark enough on white for thin lines).
const PALETTE: [&str; 8] = [
    "#1f5fa8", "#b5461b", "#2a7a3f", "#6b3fa8", "#a8326e", "#1f7a7a", "#8a6413", "#4a5568",
];

/// Everything one page shows.
#[derive(Debug)]
pub struct PageFacts {
    /// When the page was made (Unix ms).
    pub now: i64,
    /// This process: the daemon serving the page.
    pub pid: u32,
    pub version: &'static str,
    /// From the daemon's memory: told whatever the store's state.
    pub health: Health,
    /// The store's part, or why it cannot be read now (a locked database).
    pub stored: Result<Stored, String>,
}

/// What the page reads from the store.
#[derive(Debug, Default)]
pub struct Stored {
    /// When the daemon started and last beat (Unix ms), as it published them.
    pub since: Option<i64>,
    pub heartbeat_at: Option<i64>,
    pub jobs: Vec<JobStatus>,
    /// Every route: its organization and state.
    pub routes: Vec<crate::store::routes::RouteRow>,
    pub budgets: Vec<TenantBudget>,
    /// The start of the charts' first minute (Unix ms).
    pub window_start: i64,
    pub classes: Vec<ClassUse>,
    pub tenants: Vec<TenantSpend>,
}

/// A model class's real-time use per minute, per dimension of [`DIMS`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClassUse {
    pub class: String,
    /// Requests, input tokens (with cache writes), output tokens: [`MINUTES`] values each.
    pub per_minute: [Vec<f64>; 3],
    /// The per-minute limits the quota controller knows (configured or learned).
    pub limits: [Option<f64>; 3],
}

/// A tenant's spend per minute, USD ([`MINUTES`] values).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSpend {
    pub tenant: String,
    pub per_minute: Vec<f64>,
}

/// The start (Unix ms) of the first of the [`MINUTES`] whole minutes ending with the one `now` is in.
pub fn window_start(now: i64) -> i64 {
    (now.div_euclid(60_000) + 1 - MINUTES as i64) * 60_000
}

/// Reads the store's part of the page at `now`: the jobs (results files named under
/// `results_dir`), pauses, where the tenants of `budgets` stand, and the last hour per minute.
/// `limits` is the quota controller's snapshot, for the limits the charts are drawn against.
/// `daemon`: its id (`leases`), whose facts it reads.
pub fn read(
    conn: &Conn,
    daemon: &str,
    results_dir: &Path,
    budgets: &Budgets,
    limits: &[ClassSnapshot],
    now: i64,
) -> crate::store::Result<Stored> {
    use crate::store::{facts, jobs, ledger};
    let fact = |name: &str| facts::get(conn, daemon, name);
    let since = fact(super::DAEMON_FACT)?
        .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
        .and_then(|who| who["since"].as_i64());
    let heartbeat_at = fact(super::HEARTBEAT_FACT)?.and_then(|t| t.parse().ok());
    let mut job_rows = Vec::new();
    for job in jobs::list(conn)? {
        job_rows.push(crate::store::job_status::job_status(
            conn,
            &job,
            results_dir,
            now,
        )?);
    }
    let start = window_start(now);
    let minutes = MINUTES as i64;
    Ok(Stored {
        since,
        heartbeat_at,
        jobs: job_rows,
        routes: crate::store::routes::all(conn)?,
        budgets: crate::store::budget::standing(conn, budgets, now)?,
        window_start: start,
        classes: per_class(&ledger::realtime_per_minute(conn, start, minutes)?, limits),
        tenants: per_tenant(&ledger::spend_per_minute(conn, start, minutes)?),
    })
}

/// Folds the ledger's minutes of each model into its class (the unit the API limits), beside
/// the classes the controller knows with no use this hour, each with its limits.
pub fn per_class(rows: &[ModelMinute], limits: &[ClassSnapshot]) -> Vec<ClassUse> {
    let mut classes: Vec<ClassUse> = Vec::new();
    for r in rows {
        let Some(minute) = usize::try_from(r.minute).ok().filter(|m| *m < MINUTES) else {
            continue;
        };
        let class = crate::policy::quota::limit_class(&r.model);
        let i = class_index(&mut classes, class, limits);
        let values = [r.requests, r.input_tokens, r.output_tokens];
        for (series, v) in classes[i].per_minute.iter_mut().zip(values) {
            series[minute] += v as f64;
        }
    }
    for s in limits {
        class_index(&mut classes, s.class.clone(), limits);
    }
    classes.sort_by(|a, b| a.class.cmp(&b.class));
    classes
}

/// Where `class` is in `classes`, added (with its limits, where known) if it is not yet.
fn class_index(classes: &mut Vec<ClassUse>, class: String, limits: &[ClassSnapshot]) -> usize {
    if let Some(i) = classes.iter().position(|c| c.class == class) {
        return i;
    }
    let known = limits.iter().find(|s| s.class == class);
    classes.push(ClassUse {
        class,
        per_minute: std::array::from_fn(|_| vec![0.0; MINUTES]),
        limits: DIMS.map(|(dim, _)| {
            known
                .and_then(|s| s.dims.iter().find(|d| d.dim == dim))
                .and_then(|d| d.limit_per_minute)
        }),
    });
    classes.len() - 1
}

/// Each tenant's spend per minute, from (minute, tenant, millionths of a dollar) rows.
pub fn per_tenant(rows: &[(i64, String, i64)]) -> Vec<TenantSpend> {
    let mut tenants: Vec<TenantSpend> = Vec::new();
    for (minute, tenant, micro_usd) in rows {
        let Some(minute) = usize::try_from(*minute).ok().filter(|m| *m < MINUTES) else {
            continue;
        };
        let i = match tenants.iter().position(|t| &t.tenant == tenant) {
            Some(i) => i,
            None => {
                tenants.push(TenantSpend {
                    tenant: tenant.clone(),
                    per_minute: vec![0.0; MINUTES],
                });
                tenants.len() - 1
            }
        };
        tenants[i].per_minute[minute] += *micro_usd as f64 / 1e6;
    }
    tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    tenants
}

/// `s` safe as HTML text and as a double- or single-quoted attribute value. Every string that
/// comes from the store or the API (job names, tenants, reasons, errors, models) goes through it.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto;
  max-width: 72rem; padding: 0.5rem 1rem 2rem; color: #1a202c; background: #fff; line-height: 1.4; }
h1 { font-size: 1.4rem; margin: 0.5rem 0 0; }
h2 { font-size: 1.15rem; margin: 1.5rem 0 0.5rem; border-bottom: 1px solid #cbd5e0; }
h3 { font-size: 1rem; margin: 1rem 0 0.25rem; }
.muted { color: #4a5568; font-size: 0.9rem; }
.ok { color: #22543d; }
.bad { color: #9b2c2c; font-weight: 600; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; border-bottom: 1px solid #e2e8f0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.jobs th[scope=row], table.jobs td:nth-child(3) { white-space: nowrap; }
progress, meter { width: 6rem; vertical-align: middle; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(17rem, 1fr)); gap: 0.5rem 1rem; }
figure { margin: 0; }
figcaption { font-size: 0.85rem; }
svg { width: 100%; height: auto; display: block; background: #f7fafc; }
svg text { font-size: 10px; fill: #4a5568; }
.legend { list-style: none; padding: 0; margin: 0.25rem 0; font-size: 0.85rem; }
.legend li { display: inline-block; margin-right: 1rem; }
.swatch { display: inline-block; width: 0.8rem; height: 0.8rem; margin-right: 0.3rem; vertical-align: -0.1rem; }
@media (max-width: 40rem) {
  table.jobs thead { display: none; }
  table.jobs tr { display: block; border-bottom: 2px solid #cbd5e0; padding: 0.25rem 0; }
  table.jobs th, table.jobs td { display: flex; justify-content: space-between; gap: 1rem; border: 0; text-align: right; }
  table.jobs td::before { content: attr(data-label); text-align: left; color: #4a5568; }
}
";

/// The page: a whole HTML document.
pub fn render(f: &PageFacts) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>nightshift status</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>nightshift</h1>\n<p class=\"muted\">{} (UTC) · this page reloads every {REFRESH_SECS} s · \
         <a href=\"/metrics\">Prometheus metrics</a></p>\n",
        format_time(f.now)
    );
    daemon_section(&mut out, f);
    match &f.stored {
        Err(why) => {
            let _ = writeln!(
                out,
                "<p class=\"bad\">The database cannot be read now: {}. Jobs, budgets and charts \
                 come back when it can.</p>",
                escape(why)
            );
        }
        Ok(s) => {
            for r in s.routes.iter().filter(|r| {
                matches!(r.state.as_str(), "paused" | "unreachable")
                    && r.until.is_none_or(|until| until > f.now)
            }) {
                let _ = writeln!(
                    out,
                    "<p class=\"bad\">PAUSED: route {} until {}: {}</p>",
                    escape(&r.name),
                    r.until
                        .map_or_else(|| "its next answer".into(), format_time),
                    escape(r.reason.as_deref().unwrap_or(""))
                );
            }
            jobs_section(&mut out, &s.jobs);
            routes_section(&mut out, &s.routes);
            budgets_section(&mut out, &s.budgets);
            quota_section(&mut out, s);
            spend_section(&mut out, s);
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// Three heartbeats missed: the store is not taking the daemon's writes (as `status` judges).
const STALE_MS: i64 = 3 * super::HEARTBEAT_EVERY.as_millis() as i64;

fn daemon_section(out: &mut String, f: &PageFacts) {
    out.push_str("<h2>Daemon</h2>\n");
    let since = f
        .stored
        .as_ref()
        .ok()
        .and_then(|s| s.since)
        .map_or(String::new(), |t| format!(", since {}", format_time(t)));
    let _ = writeln!(
        out,
        "<p>running: pid {}, nightshift {}{since}</p>",
        f.pid,
        escape(f.version)
    );
    let mut problems = Vec::new();
    if let Ok(s) = &f.stored {
        match s.heartbeat_at {
            Some(at) if f.now - at <= STALE_MS => {}
            Some(at) => problems.push(format!(
                "its last heartbeat is {} s old: the database may be locked or the disk full \
                 (see the journal)",
                (f.now - at) / 1000
            )),
            None => problems.push(
                "no heartbeat yet: it is starting, or the database takes no writes".to_owned(),
            ),
        }
    }
    let h = &f.health;
    let mib = |b: u64| b / (1 << 20);
    if h.disk_low {
        problems.push(format!(
            "disk low: {} MiB free on the data dir (under {} MiB); free space before it fills",
            h.disk_free_bytes.map_or(0, mib),
            mib(h.disk_low_bytes)
        ));
    }
    for (part, t) in &h.troubles {
        let mut line = format!(
            "{}: {} since {} ({})",
            escape(part),
            escape(&t.what),
            format_time(t.since),
            escape(&t.error)
        );
        if let Some(next) = t.next_try_at {
            let _ = write!(line, "; next try {}", format_time(next));
        }
        problems.push(line);
    }
    if problems.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"ok\">health: well ({} MiB free on the data dir)</p>",
            h.disk_free_bytes.map_or(0, mib)
        );
    } else {
        out.push_str("<ul>\n");
        for p in problems {
            let _ = writeln!(out, "<li class=\"bad\">{p}</li>");
        }
        out.push_str("</ul>\n");
    }
}

/// "90.0 % hit, $0.0012 saved" for a job that used the prompt cache, else "-".
fn cache_cell(job: &JobStatus) -> String {
    job.cache_summary().unwrap_or_else(|| "-".into())
}

fn jobs_section(out: &mut String, jobs: &[JobStatus]) {
    out.push_str("<h2>Jobs</h2>\n");
    if jobs.is_empty() {
        out.push_str(
            "<p>no jobs yet: put a .jsonl file in the jobs folder (or use \
             <code>nightshift submit FILE</code>)</p>\n",
        );
        return;
    }
    out.push_str(
        "<div class=\"scroll\"><table class=\"jobs\">\n<thead><tr><th>job</th><th>state</th>\
         <th>progress</th><th>pending</th><th>in flight</th><th>succeeded</th><th>errored</th>\
         <th>expired / canceled</th><th>lanes</th><th>batches</th><th>prompt cache</th></tr></thead>\n<tbody>\n",
    );
    for job in jobs {
        let c = &job.counts;
        let done = c.succeeded + c.errored + c.expired + c.canceled;
        let cell = |label: &str, value: u64| {
            format!("<td class=\"n\" data-label=\"{label}\">{value}</td>")
        };
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\">{name}</th><td data-label=\"state\">{state}</td>\
             <td data-label=\"progress\"><progress value=\"{done}\" max=\"{max}\"></progress> {done}/{total}</td>\
             {pending}{in_flight}{succeeded}{errored}\
             <td class=\"n\" data-label=\"expired / canceled\">{expired} / {canceled}</td>\
             <td data-label=\"lanes\">{batch} batch / {realtime} real time</td>\
             <td data-label=\"batches\">{batches}</td><td data-label=\"prompt cache\">{cache}</td></tr>",
            name = escape(&job.name),
            state = escape(job.state),
            max = c.total.max(1),
            total = c.total,
            pending = cell("pending", c.pending),
            in_flight = cell("in flight", c.in_flight),
            succeeded = cell("succeeded", c.succeeded),
            errored = cell("errored", c.errored),
            expired = c.expired,
            canceled = c.canceled,
            batch = job.lanes.batch,
            realtime = job.lanes.realtime,
            batches = escape(&batch_summary(&job.batches)),
            cache = cache_cell(job),
        );
    }
    out.push_str("</tbody>\n</table></div>\n");
}

/// The routes, when there are several or one is not taking calls: the organization each
/// answers for, its state and why.
fn routes_section(out: &mut String, routes: &[crate::store::routes::RouteRow]) {
    if routes.len() < 2 && routes.iter().all(|r| r.state == "active") {
        return;
    }
    out.push_str(
        "<h2>Routes</h2>\n<div class=\"scroll\"><table>\n<thead><tr><th>route</th><th>host</th>\
         <th>key</th><th>organization</th><th>state</th><th>why</th><th>until</th></tr></thead>\n<tbody>\n",
    );
    for r in routes {
        let class = match r.state.as_str() {
            "paused" | "unreachable" => " class=\"bad\"",
            _ => "",
        };
        let _ = writeln!(
            out,
            "<tr{class}><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.name),
            escape(&r.host),
            escape(&r.key_id),
            escape(&match (&r.organization_id, &r.workspace_id) {
                (Some(o), Some(w)) => format!("{o} / {w}"),
                (Some(o), None) => o.clone(),
                _ => "not known yet".into(),
            }),
            escape(&r.state),
            escape(r.reason.as_deref().unwrap_or("")),
            r.until.map_or(String::new(), format_time),
        );
    }
    out.push_str("</tbody>\n</table></div>\n");
}

fn budgets_section(out: &mut String, budgets: &[TenantBudget]) {
    if budgets.is_empty() {
        return;
    }
    out.push_str(
        "<h2>Budgets <span class=\"muted\">(UTC day and month)</span></h2>\n<div class=\"scroll\"><table>\n\
         <thead><tr><th>tenant</th><th>today</th><th>daily cap</th><th></th><th>this month</th>\
         <th>monthly cap</th><th>reserved</th></tr></thead>\n<tbody>\n",
    );
    let cap = |c: Option<f64>| c.map_or("-".into(), |c| format!("${c:.2}"));
    for b in budgets {
        let meter = b.daily_cap_usd.map_or(String::new(), |c| {
            format!(
                "<meter min=\"0\" max=\"{c}\" high=\"{}\" value=\"{}\"></meter>",
                c * 0.9,
                b.daily_spent_usd.min(c)
            )
        });
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\">{}</th><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{meter}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&b.tenant),
            format_usd(b.daily_spent_usd),
            cap(b.daily_cap_usd),
            format_usd(b.monthly_spent_usd),
            cap(b.monthly_cap_usd),
            format_usd(b.reserved_usd),
        );
    }
    out.push_str("</tbody>\n</table></div>\n");
}

fn window_note(s: &Stored) -> String {
    format!(
        "per minute from {} to now; the last minute is still running",
        format_time(s.window_start)
    )
}

fn quota_section(out: &mut String, s: &Stored) {
    out.push_str("<h2>Quota use, last hour</h2>\n");
    if s.classes.is_empty() {
        out.push_str("<p>no real-time calls in the last hour</p>\n");
        return;
    }
    let _ = writeln!(
        out,
        "<p class=\"muted\">Billed real-time calls per model class, {}; the dashed line is the \
         limit the quota controller knows. Batches do not count toward these limits.</p>",
        window_note(s)
    );
    for c in &s.classes {
        let _ = writeln!(out, "<h3>{}</h3>\n<div class=\"charts\">", escape(&c.class));
        for (i, (_, title)) in DIMS.iter().enumerate() {
            let series = [Series {
                label: &c.class,
                values: &c.per_minute[i],
                color: PALETTE[0],
            }];
            out.push_str(&chart(title, &series, c.limits[i], &count));
        }
        out.push_str("</div>\n");
    }
}

fn spend_section(out: &mut String, s: &Stored) {
    out.push_str("<h2>Spend per tenant, last hour</h2>\n");
    if s.tenants.is_empty() {
        out.push_str("<p>no spend in the last hour</p>\n");
        return;
    }
    let _ = writeln!(
        out,
        "<p class=\"muted\">Billed cost of both lanes, USD {} (a batch's cost lands in the minute \
         its results were read).</p>",
        window_note(s)
    );
    let series: Vec<Series<'_>> = s
        .tenants
        .iter()
        .enumerate()
        .map(|(i, t)| Series {
            label: &t.tenant,
            values: &t.per_minute,
            color: PALETTE[i % PALETTE.len()],
        })
        .collect();
    out.push_str("<ul class=\"legend\">\n");
    for (t, s) in s.tenants.iter().zip(&series) {
        let _ = writeln!(
            out,
            "<li><span class=\"swatch\" style=\"background:{}\"></span>{}: {} this hour</li>",
            s.color,
            escape(&t.tenant),
            format_usd(t.per_minute.iter().sum())
        );
    }
    out.push_str("</ul>\n<div class=\"charts\">\n");
    out.push_str(&chart("USD / min", &series, None, &usd_short));
    out.push_str("</div>\n");
}

/// One line of a chart.
struct Series<'a> {
    label: &'a str,
    values: &'a [f64],
    color: &'static str,
}

/// "$0.05", "$0.0604", "$0.00002": dollars short enough for an axis, small sums still told.
fn usd_short(v: f64) -> String {
    let digits = if v.abs() >= 0.01 || v == 0.0 { 4 } else { 6 };
    let text = format!("{:.digits$}", v.abs());
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{}${text}", if v < 0.0 { "-" } else { "" })
}

/// "950", "1.25k", "12.5k", "3.2M": a count short enough for an axis.
fn count(v: f64) -> String {
    let (scaled, unit) = match v.abs() {
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let digits = if scaled.abs() >= 100.0 || unit.is_empty() {
        0
    } else {
        2
    };
    let text = format!("{scaled:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{unit}")
}

/// The smallest of 1, 2, 2.5, 5 × 10ⁿ at or above `v` (an axis top that reads well).
fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|top| *top >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}

// The chart's geometry, in the SVG's own units (it scales to its column's width).
const W: f64 = 320.0;
const H: f64 = 130.0;
const LEFT: f64 = 46.0;
const RIGHT: f64 = 6.0;
const TOP: f64 = 8.0;
const BOTTOM: f64 = 16.0;

/// A figure: a caption saying the figures in words (for text browsers and screen readers too),
/// and an SVG with one polyline per series, a step per minute of [`MINUTES`], and the limit as a
/// dashed line when there is one.
fn chart(
    title: &str,
    series: &[Series<'_>],
    limit: Option<f64>,
    fmt: &dyn Fn(f64) -> String,
) -> String {
    let limit = limit.filter(|l| l.is_finite() && *l > 0.0);
    let peak = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0, f64::max);
    let top = nice_ceiling(peak.max(limit.unwrap_or(0.0) * 1.05));
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    // Minute i spans x(i) to x(i + 1): drawn as steps, a lone busy minute reads as a bar.
    let x = |i: usize| LEFT + pw * i as f64 / MINUTES as f64;
    let y = |v: f64| TOP + ph * (1.0 - (v / top).clamp(0.0, 1.0));

    let mut words = format!("{title}: peak {}", fmt(peak));
    if let [one] = series {
        let _ = write!(
            words,
            ", this minute {}",
            fmt(one.values.last().copied().unwrap_or(0.0))
        );
    }
    if let Some(l) = limit {
        let _ = write!(words, "; limit {}", fmt(l));
    }
    let mut svg = format!(
        "<figure>\n<figcaption>{}</figcaption>\n<svg viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">\n",
        escape(&words),
        escape(&words)
    );
    // Axes and gridlines at 0, half and the top.
    for frac in [0.0, 0.5, 1.0] {
        let gy = y(top * frac);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{gy:.1}\" y2=\"{gy:.1}\" stroke=\"#e2e8f0\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 3.0,
            gy + 3.5,
            escape(&fmt(top * frac))
        );
    }
    for (i, label) in [
        (0, "-60 min"),
        (MINUTES / 2, "-30 min"),
        (MINUTES - 1, "now"),
    ] {
        let anchor = match i {
            0 => "start",
            i if i == MINUTES - 1 => "end",
            _ => "middle",
        };
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{label}</text>",
            x(i),
            H - 4.0
        );
    }
    if let Some(l) = limit {
        let ly = y(l);
        let _ = writeln!(
            svg,
            "<line class=\"limit\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" \
             stroke=\"#c53030\" stroke-dasharray=\"5 3\"/>",
            W - RIGHT
        );
    }
    // A lone series is filled down to zero (an area reads at a glance); several are lines only,
    // so none hides another.
    let fill = if series.len() == 1 { "0.15" } else { "0" };
    let base = y(0.0);
    for s in series {
        let mut points = vec![format!("{:.1},{base:.1}", x(0))];
        for (i, v) in s.values.iter().take(MINUTES).enumerate() {
            let vy = y(*v);
            points.push(format!("{:.1},{vy:.1} {:.1},{vy:.1}", x(i), x(i + 1)));
        }
        points.push(format!("{:.1},{base:.1}", x(s.values.len().min(MINUTES))));
        let _ = writeln!(
            svg,
            "<polyline fill=\"{}\" fill-opacity=\"{fill}\" stroke=\"{}\" stroke-width=\"1.5\" \
             stroke-linejoin=\"round\" points=\"{}\"><title>{}</title></polyline>",
            s.color,
            s.color,
            points.join(" "),
            escape(s.label)
        );
    }
    svg.push_str("</svg>\n</figure>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::quota::DimSnapshot;
    use crate::store::items::Counts;
    use crate::store::job_status::{BatchStatus, Lanes};

    const NOW: i64 = 1_800_000_000_000 + 30_000;

    fn facts(stored: Stored) -> PageFacts {
        PageFacts {
            now: NOW,
            pid: 42,
            version: "0.1.0",
            health: Health::default(),
            stored: Ok(stored),
        }
    }

    fn job(name: &str) -> JobStatus {
        JobStatus {
            name: name.into(),
            state: "running",
            counts: Counts {
                total: 25,
                pending: 3,
                in_flight: 2,
                succeeded: 19,
                errored: 1,
                ..Counts::default()
            },
            lanes: Lanes {
                batch: 5,
                realtime: 20,
            },
            per_lane: Default::default(),
            items_per_sec: Some(2.5),
            eta_secs: Some(90),
            batches: vec![BatchStatus {
                id: Some("msgbatch_1".into()),
                state: "ended".into(),
                counts: Default::default(),
                age_secs: 30,
                route: "default".into(),
            }],
            results_file: "r.jsonl".into(),
            cache_hit_rate: Some(0.9),
            cache_saved_usd: 0.0123,
            cache_read_tokens: 900,
            cache_written_tokens: 100,
        }
    }

    #[test]
    fn escape_makes_markup_text() {
        assert_eq!(
            escape("<script>alert(1)</script>"),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(
            escape(r#"a & "b" 'c'"#),
            "a &amp; &quot;b&quot; &#39;c&#39;"
        );
        assert_eq!(escape("plain-job_01 é"), "plain-job_01 é");
    }

    #[test]
    fn a_hostile_job_name_and_tenant_are_shown_as_text() {
        let hostile = "<script>alert(1)</script>";
        let page = render(&facts(Stored {
            jobs: vec![job(hostile)],
            routes: vec![crate::store::routes::RouteRow {
                name: "<i>gw</i>".into(),
                state: "paused".into(),
                reason: Some("<b>key</b> refused".into()),
                until: Some(NOW + 60_000),
                ..Default::default()
            }],
            tenants: vec![TenantSpend {
                tenant: "\"><img src=x onerror=alert(2)>".into(),
                per_minute: vec![0.5; MINUTES],
            }],
            ..Stored::default()
        }));
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>key"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(page.contains("&lt;b&gt;key&lt;/b&gt; refused"), "{page}");
        assert!(page.contains("<h2>Routes</h2>"), "a paused route is shown");
        assert!(page.contains("&lt;i&gt;gw&lt;/i&gt;"), "{page}");
    }

    #[test]
    fn a_job_row_has_its_counts_lanes_batches_and_cache() {
        let page = render(&facts(Stored {
            jobs: vec![job("nightly-tickets")],
            ..Stored::default()
        }));
        let row = page
            .lines()
            .find(|l| l.contains("nightly-tickets"))
            .expect("a row for the job");
        for part in [
            "<th scope=\"row\">nightly-tickets</th>",
            ">running<",
            "<progress value=\"20\" max=\"25\"></progress> 20/25",
            "data-label=\"pending\">3<",
            "data-label=\"in flight\">2<",
            "data-label=\"succeeded\">19<",
            "data-label=\"errored\">1<",
            "5 batch / 20 real time",
            "1 (1 ended)",
            "90.0 % hit, $0.0123 saved",
        ] {
            assert!(row.contains(part), "{part:?} missing from {row}");
        }
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
        assert!(!page.contains("<script"), "no script");
        assert!(!page.contains("src="), "nothing fetched");
    }

    #[test]
    fn an_empty_store_says_no_jobs_yet() {
        let page = render(&facts(Stored::default()));
        assert!(page.contains("no jobs yet"), "{page}");
        assert!(
            page.contains("no real-time calls in the last hour"),
            "{page}"
        );
        assert!(page.contains("no spend in the last hour"), "{page}");
        assert!(page.ends_with("</html>\n"));
        let locked = render(&PageFacts {
            stored: Err("database is locked".into()),
            ..facts(Stored::default())
        });
        assert!(
            locked.contains("cannot be read now: database is locked"),
            "{locked}"
        );
    }

    #[test]
    fn each_series_is_one_polyline_and_a_known_limit_a_dashed_line() {
        let ramp: Vec<f64> = (0..MINUTES).map(|i| i as f64).collect();
        let flat = vec![10.0; MINUTES];
        let series = [
            Series {
                label: "a",
                values: &ramp,
                color: PALETTE[0],
            },
            Series {
                label: "b",
                values: &flat,
                color: PALETTE[1],
            },
        ];
        let svg = chart("t", &series, Some(50.0), &count);
        assert_eq!(svg.matches("<svg").count(), 1, "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert_eq!(svg.matches("class=\"limit\"").count(), 1, "{svg}");
        let first = svg.split("points=\"").nth(1).expect("points");
        let points = first.split('"').next().expect("closing quote");
        assert_eq!(
            points.split(' ').count(),
            2 * MINUTES + 2,
            "a step per minute, from and to zero"
        );
        // The top reads well and holds both the peak (59) and the limit: 100.
        assert!(svg.contains(">100</text>"), "{svg}");
        assert!(svg.contains("peak 59; limit 50"), "{svg}");
        let no_limit = chart("t", &series[..1], None, &count);
        assert!(!no_limit.contains("class=\"limit\""));
        assert_eq!(no_limit.matches("<polyline").count(), 1);
    }

    #[test]
    fn minutes_fold_into_classes_with_their_limits() {
        let rows = vec![
            ModelMinute {
                minute: 0,
                model: "claude-sonnet-4-5-20250929".into(),
                requests: 2,
                input_tokens: 300,
                output_tokens: 40,
            },
            ModelMinute {
                minute: 59,
                model: "claude-sonnet-4-6".into(),
                requests: 1,
                input_tokens: 100,
                output_tokens: 10,
            },
            ModelMinute {
                minute: 60, // outside the window: left out
                model: "claude-sonnet-4-6".into(),
                requests: 9,
                input_tokens: 9,
                output_tokens: 9,
            },
        ];
        let known = vec![
            ClassSnapshot {
                class: "claude-sonnet-4.x".into(),
                concurrency: 4,
                in_flight: 0,
                paused_for_secs: None,
                input_ratio: 1.0,
                input_error: None,
                dims: vec![DimSnapshot {
                    dim: "requests",
                    limit_per_minute: Some(50.0),
                    capacity: 50.0,
                    level: 50.0,
                    last_remaining: None,
                }],
            },
            ClassSnapshot {
                class: "claude-haiku-5-5".into(),
                concurrency: 4,
                in_flight: 0,
                paused_for_secs: None,
                input_ratio: 1.0,
                input_error: None,
                dims: vec![],
            },
        ];
        let classes = per_class(&rows, &known);
        assert_eq!(classes.len(), 2, "{classes:?}");
        assert_eq!(classes[0].class, "claude-haiku-5-5");
        assert!(classes[0].per_minute[0].iter().all(|v| *v == 0.0));
        let sonnet = &classes[1];
        assert_eq!(sonnet.class, "claude-sonnet-4.x");
        assert_eq!(sonnet.limits, [Some(50.0), None, None]);
        assert_eq!(sonnet.per_minute[0][0], 2.0);
        assert_eq!(sonnet.per_minute[1][0], 300.0);
        assert_eq!(sonnet.per_minute[2][59], 10.0);
        assert_eq!(sonnet.per_minute[0].iter().sum::<f64>(), 3.0);

        let tenants = per_tenant(&[
            (3, "b".into(), 1_500_000),
            (3, "a".into(), 10),
            (99, "a".into(), 1),
        ]);
        assert_eq!(tenants.len(), 2);
        assert_eq!(tenants[0].tenant, "a");
        assert_eq!(tenants[0].per_minute.iter().sum::<f64>(), 0.00001);
        assert_eq!(tenants[1].per_minute[3], 1.5);
    }

    #[test]
    fn the_window_ends_with_the_minute_under_way() {
        let start = window_start(NOW);
        assert_eq!(start % 60_000, 0);
        assert!(start + (MINUTES as i64 - 1) * 60_000 <= NOW);
        assert!(NOW < start + MINUTES as i64 * 60_000);
    }

    #[test]
    fn axis_tops_read_well() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(59.0), 100.0);
        assert_eq!(nice_ceiling(50.0), 50.0);
        assert_eq!(nice_ceiling(52.5), 100.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
        assert!((nice_ceiling(0.0012) - 0.002).abs() < 1e-12);
        assert_eq!(count(950.0), "950");
        assert_eq!(count(1_250.0), "1.25k");
        assert_eq!(count(12_500.0), "12.5k");
        assert_eq!(count(2_000_000.0), "2M");
        assert_eq!(count(0.0), "0");
        assert_eq!(usd_short(0.05), "$0.05");
        assert_eq!(usd_short(0.0604), "$0.0604");
        assert_eq!(usd_short(0.00002), "$0.00002");
        assert_eq!(usd_short(0.0), "$0");
        assert_eq!(usd_short(-0.5), "-$0.5");
    }
}
