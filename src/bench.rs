//! `nightshift bench`: measurements that are not tests (speed is never asserted in tests).
//!
//! - `ingest`: intake of a generated N-line job file: lines/s and the process's peak memory.
//! - `realtime`: the real-time lane against the in-process fake API with no limits and no latency:
//!   items/s, i.e. nightshift's own overhead per call (the fake shares the same two cores).

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::ApiKey;
use crate::config::Config;
use crate::fake_api::{FakeApi, FakeConfig};
use crate::intake::{Intake, IntakeOutcome};
use crate::store::Store;
use crate::{daemon, demo};

/// Writes an `n`-line job file of realistic requests (about 300 bytes a line), for `mode`.
pub fn write_job_file(path: &Path, n: u64, mode: &str) -> std::io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for i in 0..n {
        writeln!(
            out,
            r#"{{"custom_id":"req-{i:08}","mode":"{mode}","params":{{"model":"claude-haiku-5-5","max_tokens":128,"system":"Classify the ticket as billing, shipping, account, bug or other.","messages":[{{"role":"user","content":"Ticket {i}: my order arrived late and the box was damaged; please advise what to do next."}}]}}}}"#
        )?;
    }
    out.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

/// Peak resident memory of this process so far, in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub async fn ingest(lines: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let jobs_dir = dir.path().join("jobs");
    std::fs::create_dir_all(&jobs_dir)?;
    let file = dir.path().join("bench.jsonl");
    println!("writing a {lines}-line job file ...");
    let bytes = write_job_file(&file, lines, "auto")?;
    std::fs::rename(&file, jobs_dir.join("bench.jsonl"))?;
    let rss_before = peak_rss_bytes();

    let db = dir.path().join("nightshift.db");
    let store = Store::open(&db)?;
    let intake = Intake {
        store: store.clone(),
        jobs_dir,
        wakes: vec![Arc::new(Notify::new())],
        cancel: CancellationToken::new(),
        rpm_for: Arc::new(|_| None),
        failures: Default::default(),
    };
    let started = Instant::now();
    let outcomes = tokio::task::spawn_blocking(move || intake.scan()).await??;
    let elapsed = started.elapsed();
    store.close().await;
    let taken = match outcomes.as_slice() {
        [IntakeOutcome::Ingested { lines, .. }] => *lines,
        other => anyhow::bail!("unexpected intake outcome: {other:?}"),
    };
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "ingested {taken} lines ({:.0} MiB) in {:.2} s",
        mb(bytes),
        elapsed.as_secs_f64()
    );
    println!(
        "  throughput      {:.0} lines/s, {:.0} MiB/s",
        taken as f64 / elapsed.as_secs_f64(),
        mb(bytes) / elapsed.as_secs_f64()
    );
    if let (Some(before), Some(after)) = (rss_before, peak_rss_bytes()) {
        println!(
            "  peak RSS        {:.1} MiB (before intake: {:.1} MiB)",
            mb(after),
            mb(before)
        );
    }
    println!(
        "  database size   {:.0} MiB",
        mb(std::fs::metadata(&db)?.len())
    );
    Ok(())
}

pub async fn realtime(items: u64, concurrency: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fake = FakeApi::start(FakeConfig::default(), ([127, 0, 0, 1], 0).into()).await?;
    let config_path = dir.path().join("nightshift.toml");
    std::fs::write(
        &config_path,
        format!(
            "jobs_dir = \"jobs\"\ndata_dir = \"data\"\n[api]\nbase_url = \"{}\"\n[realtime]\nconcurrency = {concurrency}\n[daemon]\nscan_interval_ms = 50\n",
            fake.base_url()
        ),
    )?;
    let config = Config::load(&config_path)?;
    std::fs::create_dir_all(&config.jobs_dir)?;
    let file = dir.path().join("bench.jsonl");
    write_job_file(&file, items, "realtime")?;

    let daemon = daemon::spawn(config.clone(), ApiKey::new("sk-bench"));
    let started = Instant::now();
    std::fs::rename(&file, config.jobs_dir.join("bench.jsonl"))?;
    let job = demo::wait_until_done(
        &config.db_path(),
        &config.results_dir(),
        "bench",
        Duration::from_secs(3600),
        |_| {},
    )
    .await?;
    let elapsed = started.elapsed();
    daemon.stop().await?;
    let stats = fake.stats();
    fake.shutdown().await;
    println!(
        "{} items through the real-time lane in {:.2} s: {:.0} items/s (concurrency {concurrency}, fake API in the same process, no limits, no latency)",
        job.counts.total,
        elapsed.as_secs_f64(),
        job.counts.total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  succeeded {}, errored {}; the fake accepted {} calls",
        job.counts.succeeded, job.counts.errored, stats.messages_accepted
    );
    Ok(())
}
