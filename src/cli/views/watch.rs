//! `nightshift status --watch`: live progress per job and quota use per model class, redrawn in
//! place on a terminal (cursor home, each line cleared to its end: no flicker), restored on
//! Ctrl-C; on a pipe or file, plain lines, printed only when something changed.
//!
//! The frames are built by pure functions ([`frame`], [`plain_lines`]) from the same reports
//! `status` and `limits` print, so they are unit-tested without a terminal.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use super::limits::LimitsReport;
use super::status::StatusReport;
use super::{finished, format_age, format_time, progress_bar, truncate};

/// The lines of one terminal frame, none wider than `width`.
pub fn frame(status: &StatusReport, limits: &LimitsReport, now: &str, width: usize) -> Vec<String> {
    let mut lines = vec![
        format!("nightshift — {now} — Ctrl-C to quit"),
        String::new(),
    ];
    if status.jobs.is_empty() {
        lines.push("no jobs yet".into());
    } else {
        lines.extend(
            super::jobs_table::jobs_table(&status.jobs, Some(width))
                .lines()
                .map(str::to_owned),
        );
    }
    if !limits.classes.is_empty() {
        lines.push(String::new());
        lines.push("quota use over the last minute (share of the limit):".into());
        for class in &limits.classes {
            // Bars when they fit the width, else the shares alone: never a cut line.
            let line = |bars: bool| {
                let dims: Vec<String> = class
                    .dims
                    .iter()
                    .map(|d| match d.utilisation {
                        Some(u) if bars => format!(
                            "{} {}",
                            short_dim(&d.dim),
                            progress_bar((u.min(1.0) * 1000.0) as u64, 1000, 10)
                        ),
                        Some(u) => format!("{} {:.0}%", short_dim(&d.dim), u * 100.0),
                        None => format!("{} (no limit known)", short_dim(&d.dim)),
                    })
                    .collect();
                format!(
                    "{}  {}  {}/{} in flight",
                    limits.class_label(class),
                    dims.join("  "),
                    class.in_flight,
                    class.concurrency
                )
            };
            let with_bars = line(true);
            lines.push(if with_bars.chars().count() <= width {
                with_bars
            } else {
                line(false)
            });
        }
    }
    if !status.budgets.is_empty() {
        lines.push(String::new());
        lines.push("spend today (UTC) against each tenant's daily cap:".into());
        for b in &status.budgets {
            lines.push(match b.daily_cap_usd {
                Some(cap) if cap > 0.0 => format!(
                    "{}  {} ${:.4} of ${cap:.2}",
                    b.tenant,
                    progress_bar(
                        (b.daily_spent_usd / cap * 1000.0).clamp(0.0, 1000.0) as u64,
                        1000,
                        10
                    ),
                    b.daily_spent_usd
                ),
                _ => format!("{}  ${:.4} (no daily cap)", b.tenant, b.daily_spent_usd),
            });
        }
    }
    for p in &limits.pauses {
        lines.push(format!(
            "PAUSED {}: {} (until {})",
            p.lane, p.reason, p.until
        ));
    }
    lines.extend(status.holds.iter().map(|h| h.to_text()));
    lines.into_iter().map(|l| truncate(&l, width)).collect()
}

/// Plain progress lines (no escapes), one per job and one per model class.
pub fn plain_lines(status: &StatusReport, limits: &LimitsReport) -> Vec<String> {
    let mut lines = Vec::new();
    for job in &status.jobs {
        let c = &job.counts;
        let done = finished(c);
        let percent = (done * 100).checked_div(c.total).unwrap_or(100);
        let cache = job
            .cache_summary()
            .map(|c| format!(", cache {c}"))
            .unwrap_or_default();
        let pace = match (job.items_per_sec, job.eta_secs) {
            (Some(rate), Some(eta)) if done < c.total => {
                format!(", {rate:.1} items/s, about {} left", format_age(eta))
            }
            (Some(rate), _) if done < c.total => format!(", {rate:.1} items/s"),
            _ => String::new(),
        };
        lines.push(format!(
            "job {}: {} {done}/{} ({percent}%), {} in flight, {} succeeded, {} errored{pace}{cache}",
            job.name, job.state, c.total, c.in_flight, c.succeeded, c.errored
        ));
    }
    for class in &limits.classes {
        let dims: Vec<String> = class
            .dims
            .iter()
            .filter_map(|d| {
                d.utilisation
                    .map(|u| format!("{} {:.0}%", short_dim(&d.dim), u * 100.0))
            })
            .collect();
        lines.push(format!(
            "quota {}: {} in flight{}{}",
            limits.class_label(class),
            class.in_flight,
            if dims.is_empty() { "" } else { ", " },
            dims.join(", ")
        ));
    }
    lines
}

fn short_dim(dim: &str) -> &str {
    match dim {
        "requests" => "RPM",
        "input_tokens" => "ITPM",
        "output_tokens" => "OTPM",
        other => other,
    }
}

/// Restores the terminal (cursor shown, main screen back) however the watch ends.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> TerminalGuard {
        // Alternate screen, cursor hidden.
        print!("\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        TerminalGuard
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
    }
}

/// The terminal's width in columns, when stdout is a terminal.
pub fn terminal_width() -> Option<usize> {
    std::io::stdout().is_terminal().then(terminal_columns)
}

/// The terminal's width in columns (80 when it cannot be told).
#[allow(unsafe_code)] // one libc call; std has no way to ask the terminal its size
fn terminal_columns() -> usize {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the valid pointer given; stdout's fd is open.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    if rc == 0 && size.ws_col > 0 {
        size.ws_col as usize
    } else {
        80
    }
}

/// Runs the watch until Ctrl-C (or SIGTERM); `read` gathers the reports each `every`.
pub async fn run(
    at: &crate::store::Location,
    every: Duration,
    read: impl Fn(&crate::store::Location) -> anyhow::Result<(StatusReport, LimitsReport)>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered before the first frame, so a Ctrl-C at any moment ends the watch cleanly.
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let tty = std::io::stdout().is_terminal();
    let guard = tty.then(TerminalGuard::enter);
    let mut last_plain: Vec<String> = Vec::new();
    let mut last_frame: Vec<String> = Vec::new();
    loop {
        let now = format_time(crate::store::now_ms());
        let mut out = std::io::stdout().lock();
        // Blocking reads (PostgreSQL's client runs a runtime of its own) off the async workers.
        match tokio::task::block_in_place(|| read(at)) {
            Ok((status, limits)) if tty => {
                last_frame = frame(&status, &limits, &now, terminal_columns());
                // Home, then each line cleared to its end, then the rest of the screen: the old
                // frame is overwritten in place, never blanked first.
                let mut text = String::from("\x1b[H");
                for line in &last_frame {
                    text.push_str(line);
                    text.push_str("\x1b[K\n");
                }
                text.push_str("\x1b[J");
                out.write_all(text.as_bytes())?;
            }
            Ok((status, limits)) => {
                let lines = plain_lines(&status, &limits);
                if lines != last_plain {
                    for line in &lines {
                        writeln!(out, "{now} {line}")?;
                    }
                    last_plain = lines;
                }
            }
            Err(e) if tty => {
                write!(out, "\x1b[H{now}: {e:#}\x1b[K\n\x1b[J")?;
            }
            Err(e) => writeln!(out, "{now} {e:#}")?,
        }
        out.flush()?;
        drop(out);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = interrupt.recv() => break,
            _ = term.recv() => break,
        }
    }
    drop(guard);
    // Leave the last frame on the main screen, so what was seen stays in the scrollback.
    if tty {
        let mut out = std::io::stdout().lock();
        for line in &last_frame {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::views::limits::{ClassLimits, DimLimits};
    use crate::cli::views::status::{JobStatus, Lanes};
    use crate::store::items::Counts;

    fn status() -> StatusReport {
        StatusReport {
            daemon: crate::cli::views::daemon::DaemonStatus {
                running: true,
                pid: Some(1),
                since: None,
                version: None,
                last_heartbeat: None,
                heartbeat_age_secs: Some(1),
                problem: None,
                health: None,
            },
            jobs: vec![JobStatus {
                name: "backfill".into(),
                state: "running",
                counts: Counts {
                    total: 200,
                    pending: 100,
                    in_flight: 10,
                    succeeded: 88,
                    errored: 2,
                    ..Default::default()
                },
                lanes: Lanes::default(),
                batches: vec![],
                per_lane: Default::default(),
                items_per_sec: Some(2.5),
                eta_secs: Some(90),
                results_file: String::new(),
                cache_hit_rate: Some(0.99),
                cache_saved_usd: 1.5,
                cache_read_tokens: 99,
                cache_written_tokens: 1,
            }],
            rejected_files: vec![],
            not_taken: vec![],
            paused: vec![],
            holds: vec![],
            budgets: vec![],
            metrics_url: None,
            config: "/etc/nightshift/nightshift.toml".into(),
            daemon_config: None,
            schedules: vec![],
            windows: vec![],
            daemons: vec![],
        }
    }

    fn limits() -> LimitsReport {
        LimitsReport {
            organizations: vec![],
            routes: vec![],
            classes: vec![ClassLimits {
                organization: "org-1".into(),
                class: "claude-haiku-5-5".into(),
                updated_at: String::new(),
                concurrency: 16,
                in_flight: 10,
                input_ratio: 1.0,
                input_error: None,
                dims: vec![DimLimits {
                    dim: "requests".into(),
                    limit_per_minute: Some(1000.0),
                    capacity: 1000.0,
                    level: 100.0,
                    last_remaining: None,
                    used_last_minute: 900,
                    utilisation: Some(0.9),
                }],
                last_throttle: None,
            }],
            pauses: vec![],
        }
    }

    #[test]
    fn a_frame_shows_job_progress_and_quota_use_within_the_width() {
        // A wide terminal: every column, the cache's among them.
        let lines = frame(&status(), &limits(), "2026-11-23T12:00:00Z", 200);
        let text = lines.join("\n");
        assert!(text.contains("backfill  running"), "{text}");
        assert!(text.contains("45%") && text.contains("90/200"), "{text}");
        assert!(text.contains("cache 99.0 % hit, $1.5000 saved"), "{text}");
        assert!(text.contains("RPM [#########.]  90%"), "{text}");
        assert!(text.contains("10/16 in flight"), "{text}");
        // 80 columns: labelled columns that fit, the counts, the pace and the ETA kept.
        let eighty = frame(&status(), &limits(), "2026-11-23T12:00:00Z", 80);
        assert!(
            eighty.iter().all(|l| l.chars().count() <= 80),
            "{eighty:#?}"
        );
        let text = eighty.join("\n");
        let header = eighty
            .iter()
            .find(|l| l.starts_with("JOB"))
            .expect("a header");
        for label in [
            "STATE",
            "DONE/TOTAL",
            "PENDING",
            "IN FLIGHT",
            "ERRORED",
            "ITEMS/S",
            "ETA",
        ] {
            assert!(header.contains(label), "{header}");
        }
        assert!(
            text.contains("90/200") && text.contains("2.5") && text.contains("90s"),
            "{text}"
        );
        // The quota line gives its bars up before it would be cut.
        assert!(
            text.contains("claude-haiku-5-5  RPM [#########.]  90%  10/16 in flight"),
            "{text}"
        );
        let fifty = frame(&status(), &limits(), "now", 50).join("\n");
        assert!(
            fifty.contains("claude-haiku-5-5  RPM 90%  10/16 in flight"),
            "{fifty}"
        );
        let narrow = frame(&status(), &limits(), "now", 30);
        assert!(narrow.iter().all(|l| l.chars().count() <= 30), "{narrow:?}");
    }

    #[test]
    fn plain_lines_have_no_escapes() {
        let lines = plain_lines(&status(), &limits());
        assert_eq!(
            lines,
            vec![
                "job backfill: running 90/200 (45%), 10 in flight, 88 succeeded, 2 errored, 2.5 items/s, about 90s left, cache 99.0 % hit, $1.5000 saved",
                "quota claude-haiku-5-5: 10 in flight, RPM 90%",
            ]
        );
    }
}
