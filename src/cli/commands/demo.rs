//! `nightshift demo`: the built-in fake API and the daemon, in one process, on the shipped
//! `jobs/example.jsonl`, with live progress and a summary at the end.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::api::ApiKey;
use crate::cli::args::FakeApiArgs;
use crate::cli::views::status::{self, JobStatus};
use crate::cli::views::{job, progress_bar};
use crate::config::Config;
use crate::fake_api::{FakeApi, FakeConfig, FakeLimits, FakeStats, Faults};
use crate::lanes::intake;
use crate::{daemon, store};

/// The example job shipped in the repository (embedded, so the demo runs from anywhere).
const EXAMPLE_JOB: &str = include_str!("../../../jobs/example.jsonl");
const EXAMPLE_SIDECAR: &str = include_str!("../../../jobs/example.toml");
/// Marks a folder made by the demo, so it is only ever removed when it is ours.
const MARKER: &str = ".nightshift-demo";

/// The fake's settings from `nightshift fake-api` flags.
pub fn fake_config_from_args(args: &FakeApiArgs) -> FakeConfig {
    // The Start tier's limits for most model classes (fact sheet §2.4), each unless given.
    let limits = (!args.no_limits).then(|| FakeLimits {
        rpm: args.rpm.unwrap_or(1_000),
        itpm: args.itpm.unwrap_or(2_000_000),
        otpm: args.otpm.unwrap_or(400_000),
        burst_seconds: args.burst_secs,
    });
    FakeConfig {
        limits,
        latency: Duration::from_millis(args.latency_ms),
        faults: Faults {
            overloaded_529: args.fail_529,
            server_error_500: args.fail_500,
            drop_after_processing: args.drop,
            ..Faults::default()
        },
        batch: crate::fake_api::BatchSettings {
            processing_time: args.batch_secs,
            ..Default::default()
        },
        seed: args.seed,
        orgs: args.orgs.clone(),
        ..FakeConfig::default()
    }
}

/// Polls the database until job `name` is done, calling `tick` with its status on the way.
pub async fn wait_until_done(
    config: &crate::config::Config,
    name: &str,
    timeout: Duration,
    mut tick: impl FnMut(&JobStatus),
) -> anyhow::Result<JobStatus> {
    let started = Instant::now();
    loop {
        if let Ok(conn) = store::open_read_only(crate::lanes::store_location(config)) {
            let status = status::status(
                &conn,
                &config.data_dir,
                &config.results_dir(),
                &Default::default(),
                store::now_ms(),
            )?;
            if let Some(job) = status.jobs.into_iter().find(|j| j.name == name) {
                tick(&job);
                if job.state == "done" {
                    return Ok(job);
                }
            }
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "job {name} not done after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes a config for a daemon talking to the fake at `base_url`, and loads it.
fn write_config(
    dir: &Path,
    base_url: &str,
    limits: &FakeLimits,
    concurrency: usize,
) -> anyhow::Result<Config> {
    let path = dir.join("nightshift.toml");
    let text = format!(
        r#"# Written by `nightshift demo`: a daemon talking to the built-in fake API.
jobs_dir = "jobs"
data_dir = "data"

[api]
base_url = "{base_url}"

[realtime]
concurrency = {concurrency}
backoff_min_ms = 200
backoff_max_ms = 5000

[daemon]
scan_interval_ms = 200
shutdown_grace_secs = 10

[batch]
poll_min_ms = 500
poll_max_ms = 5000
rpm = 1000

[limits.default]
rpm = {rpm}
itpm = {itpm}
otpm = {otpm}
"#,
        rpm = limits.rpm,
        itpm = limits.itpm,
        otpm = limits.otpm,
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(Config::load(&path, &Default::default())?)
}

/// Makes `dir` afresh, refusing to empty a folder the demo did not make.
fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let ours = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)?.next().is_none();
        anyhow::ensure!(
            ours || empty,
            "{} exists and was not made by the demo; choose another with --dir",
            dir.display()
        );
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by `nightshift demo`; removed by the next demo run\n",
    )?;
    Ok(())
}

pub async fn run(dir: &Path) -> anyhow::Result<()> {
    fresh_dir(dir)?;
    let dir = dir.canonicalize()?;
    let limits = FakeLimits {
        rpm: 1200,
        itpm: 400_000,
        otpm: 100_000,
        burst_seconds: 10.0,
    };
    let fake = FakeApi::start(
        FakeConfig {
            limits: Some(limits),
            latency: Duration::from_millis(150),
            faults: Faults {
                overloaded_529: 0.03,
                server_error_500: 0.02,
                slow: 0.02,
                slow_latency: Duration::from_secs(1),
                ..Faults::default()
            },
            ..FakeConfig::default()
        },
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .context("starting the fake API")?;
    let config = write_config(&dir, &fake.base_url(), &limits, 16)?;
    outln!("nightshift demo");
    outln!(
        "  fake Claude API  {}  (limits per model: {} RPM, {} ITPM, {} OTPM; 3% 529s, 2% 500s injected)",
        fake.base_url(),
        limits.rpm,
        limits.itpm,
        limits.otpm
    );
    outln!(
        "  config           {}",
        dir.join("nightshift.toml").display()
    );

    let source = dir.join("example.jsonl");
    std::fs::write(&source, EXAMPLE_JOB)?;
    std::fs::write(dir.join("example.toml"), EXAMPLE_SIDECAR)?;
    intake::submit(&config, &source, None)?;
    outln!(
        "  job              example.jsonl ({} lines) submitted to {}\n",
        EXAMPLE_JOB.lines().count(),
        config.jobs_dir.display()
    );

    let daemon = daemon::spawn(
        config.clone(),
        ApiKey::new("sk-ant-demo-key-not-real").into(),
    );

    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut last_print = Instant::now() - Duration::from_secs(10);
    let wait = wait_until_done(&config, "example", Duration::from_secs(600), |job| {
        if !tty && last_print.elapsed() < Duration::from_secs(2) && job.state != "done" {
            return;
        }
        last_print = Instant::now();
        let line = progress_line(job, &fake.stats(), started.elapsed());
        if tty {
            out!("\r{line}\x1b[K");
            let _ = std::io::stdout().flush();
        } else {
            outln!("{line}");
        }
    });
    let outcome = tokio::select! {
        r = wait => r.map(Some),
        _ = tokio::signal::ctrl_c() => Ok(None),
    };
    if tty {
        outln!();
    }
    let elapsed = started.elapsed();
    daemon.stop().await?;
    let stats = fake.stats();
    fake.shutdown().await;
    let Some(_) = outcome? else {
        outln!("interrupted; the state is kept in {}", dir.display());
        return Ok(());
    };
    print_summary(&config, &stats, elapsed)?;
    Ok(())
}

fn progress_line(job: &JobStatus, stats: &FakeStats, elapsed: Duration) -> String {
    let c = &job.counts;
    let done = c.succeeded + c.errored + c.expired + c.canceled;
    let batches: Vec<String> = job
        .batches
        .iter()
        .map(|b| {
            format!(
                "{} {}/{}",
                b.state,
                b.counts.succeeded + b.counts.errored + b.counts.expired + b.counts.canceled,
                b.counts.total()
            )
        })
        .collect();
    format!(
        "{:>5.1}s  {} {}  {}/{} done, {} in flight  | lanes: {} batch, {} real time  | batches: {}  | API: 429 x{}, 529 x{}, 500 x{}",
        elapsed.as_secs_f64(),
        job.name,
        progress_bar(done, c.total, 24),
        done,
        c.total,
        c.in_flight,
        job.lanes.batch,
        job.lanes.realtime,
        if batches.is_empty() {
            "-".to_owned()
        } else {
            batches.join(", ")
        },
        stats.rate_limited_429,
        stats.overloaded_529,
        stats.server_error_500,
    )
}

fn print_summary(config: &Config, stats: &FakeStats, elapsed: Duration) -> anyhow::Result<()> {
    let conn = store::open_read_only(crate::lanes::store_location(config))?;
    let job = job::job(&conn, &config.results_dir(), "example", store::now_ms())?
        .context("the example job")?;
    let job_id = crate::store::jobs::find_by_name(&conn, "example")?
        .context("the example job")?
        .id;
    let c = &job.status.counts;
    let calls = &job.calls;
    outln!(
        "\ndone in {:.1} s: {} lines -> {} succeeded, {} errored",
        elapsed.as_secs_f64(),
        c.total,
        c.succeeded,
        c.errored
    );
    outln!(
        "  {:.1} items/s; {} calls sent: {} rate-limited (429, waited out), {} failed and retried (529/500), {} unknown outcomes",
        c.total as f64 / elapsed.as_secs_f64(),
        calls.calls,
        calls.rate_limited,
        calls.retryable,
        calls.unknown
    );
    outln!(
        "  lanes: {} items through {} batch(es), {} real time",
        job.status.lanes.batch,
        job.status.batches.len(),
        job.status.lanes.realtime
    );
    outln!(
        "  tokens: {} in, {} out (the fake API counted {} in, {} out: {} real-time calls, {} batch requests)",
        calls.input_tokens,
        calls.output_tokens,
        stats.input_tokens + stats.batch_input_tokens,
        stats.output_tokens + stats.batch_output_tokens,
        stats.messages_accepted,
        stats.batch_succeeded
    );
    let (actual, realtime, _) = crate::store::attempts::cost(&conn, &config.prices, job_id)?;
    if realtime > 0.0 {
        outln!(
            "  cost: ${actual:.4} as run, ${realtime:.4} had it all gone real time: {:.0}% saved (list prices of {})",
            (1.0 - actual / realtime) * 100.0,
            crate::policy::prices::PRICES_AS_OF
        );
    }
    if !job.errored_lines.is_empty() {
        outln!("\nerrored lines (bad input is reported, the rest of the job runs):");
        for e in &job.errored_lines {
            outln!("  {}", e.error);
        }
    }
    let results: PathBuf = PathBuf::from(&job.status.results_file);
    outln!(
        "\nresults: {} ({} lines)",
        results.display(),
        job.results_lines_written
    );
    let config_path = config.source.clone().unwrap_or_default();
    let me = how_to_run_me(std::env::current_exe().ok().as_deref());
    outln!("look closer:");
    outln!("  {me} --config {} status", config_path.display());
    outln!("  {me} --config {} job example", config_path.display());
    Ok(())
}

/// How the user runs this binary again: `cargo run --release --` when it is a build in a cargo
/// `target/` folder (the README's demo command), else `nightshift` (installed).
fn how_to_run_me(exe: Option<&Path>) -> &'static str {
    let in_target = exe.and_then(Path::parent).is_some_and(|dir| {
        dir.file_name()
            .is_some_and(|n| n == "release" || n == "debug")
            && dir
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "target")
    });
    if in_target {
        "cargo run --release --"
    } else {
        "nightshift"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hints_name_the_command_the_user_has() {
        let built = Path::new("/home/a/nightshift/target/release/nightshift");
        assert_eq!(how_to_run_me(Some(built)), "cargo run --release --");
        let installed = Path::new("/usr/local/bin/nightshift");
        assert_eq!(how_to_run_me(Some(installed)), "nightshift");
        assert_eq!(how_to_run_me(None), "nightshift");
    }
}
