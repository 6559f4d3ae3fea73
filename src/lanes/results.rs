//! The results writer: appends each job's result lines to `<data_dir>/results/<job>.jsonl` as
//! outcomes arrive (the lines themselves are made by `model::results`).
//!
//! The file is the database, always. Each final outcome's line is stored once (`store::results`,
//! in the transaction of the state change); the writer appends only lines the store has
//! committed, syncs the file, and only then records the new committed length and the last line
//! written in the job row. Before each
//! append it checks the file against that length and against the file it wrote (the same inode):
//! - longer: a round appended but could not record it (a held lock, a full disk, a crash): the
//!   extra bytes are cut off and written again, so no line is ever in a file twice;
//! - shorter, gone or replaced: someone deleted, truncated or swapped it: it is written again from
//!   the store at once, in full.
//!
//! A write or sync that fails (a full disk) is cut back to the committed length straight away, so
//! no fragment stays, and the round is tried again with a growing pause. A job is done only once
//! its file holds every line, synced, and is still the file written.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::lanes::{health, hooks};
use crate::model::results::results_path;
use crate::store::{Store, jobs, now_ms, results};

/// Appends written outcomes to the results files.
pub struct ResultsWriter {
    store: Store,
    results_dir: PathBuf,
    /// Poked whenever an outcome is recorded.
    wake: Arc<Notify>,
    /// The file each job's lines went to (device, inode), as last seen by this writer.
    files: Mutex<HashMap<i64, FileId>>,
    /// Where a failing write shows beside the store (`status`, metrics).
    health: health::Board,
    /// `[hooks] on_job_done`, run as each job ends.
    on_job_done: Option<Vec<String>>,
    /// This daemon's id: it writes the files of the jobs it took in (or adopted, see
    /// `results::adopt_orphans`, at the heartbeat).
    keeper: String,
}

/// Which file a path names: a deleted and recreated (or swapped) file is another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

/// What a results file holds against what the store has committed.
#[derive(Debug, PartialEq, Eq)]
enum FileState {
    /// As recorded (cut back to it if it was longer): append to it.
    Sound(FileId),
    /// Deleted, shorter than recorded or another file: to be written again in full.
    Lost(&'static str),
}

/// Lines fetched per round, at most.
const ROUND_LINES: i64 = 5_000;
/// Bytes of lines per round, at most (long answers make fewer lines per round).
const ROUND_BYTES: usize = 8 << 20;
/// After a failed round the writer waits this long, doubling up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(10);

impl ResultsWriter {
    pub fn new(
        store: Store,
        results_dir: PathBuf,
        wake: Arc<Notify>,
        health: health::Board,
        keeper: String,
    ) -> ResultsWriter {
        ResultsWriter {
            store,
            results_dir,
            wake,
            files: Mutex::new(HashMap::new()),
            health,
            on_job_done: None,
            keeper,
        }
    }

    /// The unfinished jobs whose files this writer keeps.
    async fn kept(&self) -> crate::store::Result<Vec<jobs::JobRow>> {
        let keeper = self.keeper.clone();
        self.store
            .call(move |c| jobs::unfinished_kept_by(c, &keeper))
            .await
    }

    /// Runs `command` (program, arguments) as each job ends.
    pub fn with_hook(mut self, command: Option<Vec<String>>) -> ResultsWriter {
        self.on_job_done = command;
        self
    }

    /// Marks the job done if it is complete (in the store's transaction `c`); returns what its
    /// hook is told, if it just ended.
    fn finish(
        c: &crate::store::sql::Conn,
        job_id: i64,
        results_dir: &Path,
    ) -> crate::store::Result<Option<hooks::JobEnded>> {
        if !jobs::finish_if_complete(c, job_id, now_ms())? {
            return Ok(None);
        }
        tracing::info!("job done: every result is written");
        let Some(job) = jobs::get(c, job_id)? else {
            return Ok(None);
        };
        Ok(Some(hooks::JobEnded {
            state: if job.canceled_at.is_some() {
                "canceled"
            } else {
                "done"
            },
            counts: crate::store::items::counts(c, job_id)?,
            cost_usd: crate::store::ledger::job_cost_micro(c, job_id)? as f64 / 1e6,
            results: results_path(results_dir, &job.name),
            name: job.name,
        }))
    }

    /// Runs the hook for a job that just ended, if one is set.
    fn ended(&self, job: Option<hooks::JobEnded>) {
        if let (Some(command), Some(job)) = (&self.on_job_done, job) {
            hooks::run(command, job);
        }
    }

    /// Brings every unfinished job's results file to its committed length. Call before anything
    /// else writes results.
    pub async fn recover(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        std::fs::create_dir_all(&self.results_dir)
            .with_context(|| format!("creating {}", self.results_dir.display()))?;
        for job in self.kept().await? {
            let span = tracing::info_span!("results", job = %job.name);
            // One file that cannot be put right must not hold the others (or the start) up; the
            // writer tries it again.
            if let Err(e) = self
                .check_file(job.id, &job.name, job.results_bytes)
                .instrument(span)
                .await
            {
                tracing::error!(job = %job.name, error = format!("{e:#}"), "cannot check the results file; trying again while running");
            }
        }
        Ok(())
    }

    /// Writes until `shutdown`, then writes what is left and returns.
    #[tracing::instrument(name = "results", skip_all)]
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut pause = FIRST_PAUSE;
        loop {
            let wrote = match self.write_round().await {
                Ok(wrote) => {
                    pause = FIRST_PAUSE;
                    self.health.clear(health::RESULTS);
                    wrote
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    let now = now_ms();
                    let next = Some(now + pause.as_millis() as i64);
                    // The database refusing is the store's trouble; the file's is the results'.
                    let (part, what) = if e.downcast_ref::<crate::store::StoreError>().is_some() {
                        (health::STORE, health::store_trouble(&error))
                    } else {
                        (
                            health::RESULTS,
                            "results cannot be written (they wait in the database)",
                        )
                    };
                    self.health.set(part, what, &error, now, next);
                    // A full disk or a busy database: nothing is lost (the lines wait in the
                    // database, the file is back at its committed length); try again.
                    tracing::error!(
                        %error,
                        retry_in_ms = pause.as_millis() as u64,
                        "writing results failed; trying again"
                    );
                    if shutdown.is_cancelled() {
                        // Nothing is lost: what is left is written at the next start.
                        tracing::warn!(
                            "results not yet written stay in the database for the next start"
                        );
                        return Ok(());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    pause = (pause * 2).min(MAX_PAUSE);
                    continue;
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

    /// One round: appends up to [`ROUND_LINES`] unwritten lines; returns how many (a file
    /// written again from the start counts as work done).
    pub async fn write_round(&self) -> anyhow::Result<usize> {
        let keeper = self.keeper.clone();
        let lines = self
            .store
            .read(move |c| results::unwritten(c, &keeper, ROUND_LINES, ROUND_BYTES))
            .await?;
        let count = lines.len();
        // Per job (id, name, committed bytes, epoch): its lines (seq, line).
        type JobKey = (i64, String, i64, i64);
        let mut by_job: BTreeMap<JobKey, Vec<(i64, String)>> = BTreeMap::new();
        for line in lines {
            by_job
                .entry((line.job_id, line.job_name, line.committed_bytes, line.epoch))
                .or_default()
                .push((line.seq, line.line));
        }
        // A job whose file keeps failing (a full disk, a permission) must not hold the others up:
        // each goes on, and the first failure is reported after the round.
        let mut failure: Option<anyhow::Error> = None;
        for ((job_id, job_name, committed, epoch), lines) in by_job {
            let span = tracing::info_span!("results", job = %job_name);
            let appended = self
                .append_job(job_id, job_name, (committed, epoch), lines)
                .instrument(span)
                .await;
            if let Err(e) = appended {
                failure.get_or_insert(e);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if count > 0 {
            return Ok(count);
        }
        // Nothing to append: check the files of jobs still open (one deleted meanwhile is
        // written again at once), and mark done those with every line written (e.g. an empty
        // file's job, whose results file exists, if empty, before it is done).
        let mut rebuilt = 0;
        for job in self.kept().await? {
            let span = tracing::info_span!("results", job = %job.name);
            if self
                .check_file(job.id, &job.name, job.results_bytes)
                .instrument(span.clone())
                .await?
                .is_none()
            {
                rebuilt += 1;
                continue;
            }
            if job.ingested_at.is_none() {
                continue;
            }
            let (id, dir) = (job.id, self.results_dir.clone());
            let ended = self
                .store
                .call(move |c| Self::finish(c, id, &dir))
                .instrument(span)
                .await?;
            self.ended(ended);
        }
        Ok(rebuilt)
    }

    /// Appends one job's lines to a sound file, then records them written (and the job done, if it
    /// is). A file found lost is written again from the start instead.
    /// `committed`: the file's committed length and results epoch, read with the lines.
    async fn append_job(
        &self,
        job_id: i64,
        job_name: String,
        (committed, epoch): (i64, i64),
        lines: Vec<(i64, String)>,
    ) -> anyhow::Result<()> {
        let Some(file) = self.check_file(job_id, &job_name, committed).await? else {
            return Ok(()); // the lines come again, from the first, in the next round
        };
        let path = results_path(&self.results_dir, &job_name);
        let seqs: Vec<i64> = lines.iter().map(|(seq, _)| *seq).collect();
        let bytes = tokio::task::spawn_blocking(move || {
            append_lines(&path, &lines, committed.max(0) as u64, file)
        })
        .await??;
        // If this fails the file is longer than recorded: the next round cuts it back first.
        let dir = self.results_dir.clone();
        let ended = self
            .store
            .call(move |c| {
                if !results::mark_written(c, job_id, &seqs, (committed, epoch), bytes as i64)? {
                    tracing::info!(
                        "the job's results were reset meanwhile (a retry); they are written again"
                    );
                    return Ok(None);
                }
                Self::finish(c, job_id, &dir)
            })
            .await?;
        self.ended(ended);
        Ok(())
    }

    /// Makes the job's results file what the store says it is: cut back to `committed` bytes if
    /// longer; written again from the start (the job's cursor back to its first line) if it is
    /// gone, shorter or not the file this writer wrote. Returns the file if it was sound.
    async fn check_file(
        &self,
        job_id: i64,
        job_name: &str,
        committed: i64,
    ) -> anyhow::Result<Option<FileId>> {
        let path = results_path(&self.results_dir, job_name);
        let known = crate::lock(&self.files).get(&job_id).copied();
        let committed = committed.max(0) as u64;
        let checked = path.clone();
        let state =
            tokio::task::spawn_blocking(move || file_state(&checked, committed, known)).await??;
        match state {
            FileState::Sound(id) => {
                crate::lock(&self.files).insert(job_id, id);
                Ok(Some(id))
            }
            FileState::Lost(why) => {
                tracing::warn!(
                    file = %path.display(),
                    recorded_bytes = committed,
                    "the results file {why}; writing it again from the database"
                );
                self.store.call(move |c| results::reset(c, job_id)).await?;
                let id = tokio::task::spawn_blocking(move || start_over(&path)).await??;
                crate::lock(&self.files).insert(job_id, id);
                Ok(None)
            }
        }
    }
}

/// Where a results file stands against `committed` bytes and the file last written (`known`);
/// extra bytes past `committed` are cut off here.
fn file_state(path: &Path, committed: u64, known: Option<FileId>) -> std::io::Result<FileState> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(if committed == 0 && known.is_none() {
                // Nothing written yet: a new, empty file is the file.
                FileState::Sound(start_over(path)?)
            } else {
                FileState::Lost("is gone")
            });
        }
        Err(e) => return Err(e),
    };
    let id = file_id(&meta);
    if known.is_some_and(|k| k != id) {
        return Ok(FileState::Lost("was replaced by another file"));
    }
    if meta.len() < committed {
        return Ok(FileState::Lost("is shorter than recorded"));
    }
    if meta.len() > committed {
        tracing::info!(
            cut_bytes = meta.len() - committed,
            "cutting results appended but not recorded; they are written again"
        );
        truncate(path, committed)?;
    }
    Ok(FileState::Sound(id))
}

/// An empty results file in place of whatever was there (a new file if it was deleted), its
/// directory entry synced too.
fn start_over(path: &Path) -> std::io::Result<FileId> {
    truncate(path, 0)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(file_id(&std::fs::metadata(path)?))
}

fn file_id(meta: &std::fs::Metadata) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// Appends the lines to the checked file `expected` of `committed` bytes and syncs it before
/// returning the bytes written. The file opened must still be that one, of that length, and the
/// path must still name it after the sync (a file deleted or swapped meanwhile is caught by the
/// next round's check, and this append is not recorded). If the write or the sync fails, the file
/// is cut back to `committed`: no fragment of a line stays in it.
fn append_lines(
    path: &Path,
    lines: &[(i64, String)],
    committed: u64,
    expected: FileId,
) -> std::io::Result<u64> {
    let changed = || std::io::Error::other("the results file changed while it was written");
    let mut buf = Vec::with_capacity(lines.iter().map(|(_, l)| l.len() + 1).sum());
    for (_, line) in lines {
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    }
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    let meta = file.metadata()?;
    if file_id(&meta) != expected || meta.len() != committed {
        return Err(changed());
    }
    let written = match seam::full_disk(path) {
        // Part of the lines goes in, as on a disk that fills mid-write.
        Some(e) => file.write_all(&buf[..buf.len() / 2]).and(Err(e)),
        None => file.write_all(&buf).and_then(|()| file.sync_data()),
    };
    if let Err(e) = written {
        if let Err(cut) = file.set_len(committed).and_then(|()| file.sync_data()) {
            // The next round's check cuts it back then.
            tracing::warn!(error = %cut, "cannot cut the results file back yet");
        }
        return Err(e);
    }
    if file_id(&std::fs::metadata(path)?) != expected {
        return Err(changed());
    }
    Ok(buf.len() as u64)
}

/// A seam for the tests of a full disk on machines where a small file system cannot be mounted
/// (that needs root): while a results directory is marked full, each append to its files writes
/// half its bytes and fails with ENOSPC, as a disk that fills mid-write does. Nothing marks a
/// directory but a test; a daemon never looks further than this list, empty.
pub mod seam {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static FULL: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    /// Marks `results_dir` full (or not).
    pub fn set_disk_full(results_dir: &Path, full: bool) {
        let mut dirs = crate::lock(&FULL);
        dirs.retain(|d| d != results_dir);
        if full {
            dirs.push(results_dir.to_owned());
        }
    }

    /// The error a write to `file` meets, if its directory is marked full.
    pub(super) fn full_disk(file: &Path) -> Option<std::io::Error> {
        let dirs = crate::lock(&FULL);
        let dir = file.parent()?;
        dirs.iter()
            .any(|d| d == dir)
            .then(|| std::io::Error::from_raw_os_error(libc::ENOSPC))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_cut_back_rebuilt_or_kept_against_what_was_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.jsonl");
        // Nothing recorded, no file yet: an empty file is made and is the file.
        let FileState::Sound(first) = file_state(&path, 0, None).expect("state") else {
            panic!("a new file is sound")
        };
        append_lines(&path, &[(1, "{\"a\":1}".into())], 0, first).expect("append");
        // Recorded 8 bytes; 8 more appended but not recorded: cut back.
        append_lines(&path, &[(2, "{\"b\":2}".into())], 8, first).expect("append");
        assert!(
            append_lines(&path, &[(3, "{\"c\":3}".into())], 8, first).is_err(),
            "a file not of the committed length is not appended to"
        );
        assert_eq!(
            file_state(&path, 8, Some(first)).expect("state"),
            FileState::Sound(first)
        );
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "{\"a\":1}\n");
        // Shorter than recorded, gone, or another file: lost.
        assert_eq!(
            file_state(&path, 16, Some(first)).expect("state"),
            FileState::Lost("is shorter than recorded")
        );
        std::fs::remove_file(&path).expect("delete");
        assert_eq!(
            file_state(&path, 8, Some(first)).expect("state"),
            FileState::Lost("is gone")
        );
        // Swapped for another file (written beside it, renamed over it): another inode.
        let FileState::Sound(second) = file_state(&path, 0, None).expect("state") else {
            panic!("a new file is sound")
        };
        let other = dir.path().join("other");
        std::fs::write(&other, "{\"a\":1}\n").expect("write");
        std::fs::rename(&other, &path).expect("swap");
        assert_eq!(
            file_state(&path, 8, Some(second)).expect("state"),
            FileState::Lost("was replaced by another file")
        );
    }
}
