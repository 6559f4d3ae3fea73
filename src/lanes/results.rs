//! The results writer: appends each job's result lines to `<data_dir>/results/<job>.jsonl` as
//! outcomes arrive (the lines themselves are made by `model::results`).
//!
//! Each final outcome's line is stored with the item (same transaction as the state change). The
//! [`ResultsWriter`] appends lines not yet written, syncs the file, and only then records the new
//! committed length in the job row. At start, anything past that length (appended just before a
//! crash, not yet recorded) is cut off and written again, so no line is ever in a file twice.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::model::results::results_path;
use crate::store::{Store, items, jobs, now_ms};

/// Appends written outcomes to the results files.
pub struct ResultsWriter {
    pub store: Store,
    pub results_dir: PathBuf,
    /// Poked whenever an outcome is recorded.
    pub wake: Arc<Notify>,
}

/// Lines fetched per round, at most.
const ROUND_LINES: i64 = 5_000;
/// Bytes of lines per round, at most (long answers make fewer lines per round).
const ROUND_BYTES: usize = 8 << 20;

impl ResultsWriter {
    /// Brings every unfinished job's results file to its committed length. Call before anything
    /// else writes results.
    pub async fn recover(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        std::fs::create_dir_all(&self.results_dir)
            .with_context(|| format!("creating {}", self.results_dir.display()))?;
        for job in self.store.call(jobs::unfinished).await? {
            let path = results_path(&self.results_dir, &job.name);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let recorded = job.results_bytes as u64;
            if len < recorded {
                tracing::warn!(job = %job.name, file_bytes = len, recorded_bytes = recorded,
                    "results file is shorter than recorded; writing it again from the database");
                let id = job.id;
                self.store.call(move |c| jobs::reset_results(c, id)).await?;
                truncate(&path, 0)?;
            } else if len > recorded {
                tracing::info!(job = %job.name, cut_bytes = len - recorded,
                    "cutting results appended before a crash; they will be written again");
                truncate(&path, recorded)?;
            } else if !path.exists() {
                truncate(&path, 0)?;
            }
        }
        Ok(())
    }

    /// Writes until `shutdown`, then writes what is left and returns.
    #[tracing::instrument(name = "results", skip_all)]
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            let wrote = match self.write_round().await {
                Ok(wrote) => wrote,
                Err(e) => {
                    // A full disk or a busy database: nothing is lost (the lines wait in the
                    // database); try again.
                    tracing::error!(
                        error = format!("{e:#}"),
                        "writing results failed; trying again in a second"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    0
                }
            };
            if wrote == 0 {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.cancelled() => {}
                }
                // Let a burst of outcomes gather into one write.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// One round: appends up to [`ROUND_LINES`] unwritten lines; returns how many.
    pub async fn write_round(&self) -> anyhow::Result<usize> {
        let lines = self
            .store
            .call(|c| items::unwritten_results(c, ROUND_LINES, ROUND_BYTES))
            .await?;
        let count = lines.len();
        let mut by_job: BTreeMap<(i64, String), Vec<(i64, String)>> = BTreeMap::new();
        for line in lines {
            by_job
                .entry((line.job_id, line.job_name))
                .or_default()
                .push((line.item_id, line.line));
        }
        for ((job_id, job_name), lines) in by_job {
            let span = tracing::info_span!("results", job = %job_name);
            self.append_job(job_id, job_name, lines)
                .instrument(span)
                .await?;
        }
        if count == 0 {
            // Jobs with nothing left to write may still need marking done (e.g. an empty file);
            // their results file exists, if empty, before they are.
            for job in self.store.call(jobs::unfinished).await? {
                if job.ingested_at.is_none() {
                    continue;
                }
                let path = results_path(&self.results_dir, &job.name);
                if !path.exists() {
                    tokio::task::spawn_blocking(move || append_lines(&path, &[])).await??;
                }
                let (id, name) = (job.id, job.name);
                self.store
                    .call(move |c| {
                        if jobs::finish_if_complete(c, id, now_ms())? {
                            tracing::info!(job = %name, "job done: every result is written");
                        }
                        Ok(())
                    })
                    .await?;
            }
        }
        Ok(count)
    }

    /// Appends one job's lines, then records them written (and the job done, if it is).
    async fn append_job(
        &self,
        job_id: i64,
        job_name: String,
        lines: Vec<(i64, String)>,
    ) -> anyhow::Result<()> {
        let path = results_path(&self.results_dir, &job_name);
        let ids: Vec<i64> = lines.iter().map(|(id, _)| *id).collect();
        let bytes = tokio::task::spawn_blocking(move || append_lines(&path, &lines)).await??;
        let n = ids.len() as i64;
        self.store
            .call(move |c| {
                items::mark_written(c, &ids)?;
                jobs::advance_results(c, job_id, bytes as i64, n)?;
                if jobs::finish_if_complete(c, job_id, now_ms())? {
                    tracing::info!("job done: every result is written");
                }
                Ok(())
            })
            .await?;
        Ok(())
    }
}

/// Appends the lines and syncs the file before returning the bytes written.
fn append_lines(path: &Path, lines: &[(i64, String)]) -> std::io::Result<u64> {
    let mut buf = Vec::with_capacity(lines.iter().map(|(_, l)| l.len() + 1).sum());
    for (_, line) in lines {
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(&buf)?;
    file.sync_data()?;
    Ok(buf.len() as u64)
}

fn truncate(path: &Path, len: u64) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    file.set_len(len)?;
    file.sync_all()
}
