//! Intake: finds complete job files in `jobs_dir`, streams them line by line, validates each line and
//! records the job and its items in SQLite, one transaction per chunk.
//!
//! A file is complete when it has its final name: writers put it in place with a rename (what
//! `nightshift submit` does), so a name ending in `.jsonl` that does not start with a dot is taken.
//! Ingested files move to `jobs_dir/ingested/`, files that cannot be jobs to `jobs_dir/rejected/`.
//! A job name is never taken twice; an interrupted intake resumes where its last chunk committed.

use std::collections::{BTreeMap, HashMap};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use sha2::{Digest, Sha256};

use crate::config::sidecar::Manifest;
use crate::model::job::JobDefaults;
use crate::model::job_file::{JobFileReader, hex};
use crate::model::line::{LineContext, ParsedLine, ValidLine, valid_job_name};
use crate::model::prompt_cache;
use crate::policy::planner;
use crate::store::{self, Store, StoreError, jobs, now_ms};

/// Lines per intake transaction, at most (also the span `cache = "auto"` compares requests in;
/// `plan` uses the same).
pub const CHUNK_LINES: usize = 2_000;
/// Bytes of lines per intake transaction, at most (long prompts make fewer lines per chunk).
pub const CHUNK_BYTES: usize = 8 << 20;
pub const INGESTED_DIR: &str = "ingested";
pub const REJECTED_DIR: &str = "rejected";

/// What `jobs_dir` holds: the job files to take, oldest name first, and every other entry with
/// why it is not taken (hidden names, sidecars and nightshift's own folders are not listed).
#[derive(Debug, Default)]
pub struct Listing {
    pub files: Vec<PathBuf>,
    pub not_taken: BTreeMap<String, String>,
}

/// Lists `jobs_dir` without following any link in it.
pub fn list_jobs_dir(jobs_dir: &Path) -> std::io::Result<Listing> {
    let mut listing = Listing::default();
    for entry in std::fs::read_dir(jobs_dir)? {
        let entry = entry?;
        let raw = entry.file_name();
        let Some(name) = raw.to_str() else {
            listing.not_taken.insert(
                raw.to_string_lossy().into_owned(),
                "its name is not UTF-8; rename it (job names are A-Z, a-z, 0-9, _, - and .)".into(),
            );
            continue;
        };
        if name.starts_with('.') || name.ends_with(".toml") {
            continue; // being written (`submit`'s hidden names), or a sidecar
        }
        let kind = entry.file_type()?;
        if kind.is_dir() && (name == INGESTED_DIR || name == REJECTED_DIR) {
            continue;
        }
        let why = if kind.is_symlink() {
            "a symlink; nightshift never follows links in its folders: put the file itself there"
        } else if kind.is_dir() {
            "a folder, not a job file"
        } else if !kind.is_file() {
            "not a regular file (a FIFO, socket or device)"
        } else if !name.ends_with(".jsonl") {
            "not a job file: only NAME.jsonl files are taken (with their NAME.toml sidecars)"
        } else {
            listing.files.push(entry.path());
            continue;
        };
        listing.not_taken.insert(name.to_owned(), why.to_owned());
    }
    listing.files.sort();
    Ok(listing)
}

/// What happened to one file.
#[derive(Debug, PartialEq)]
pub enum IntakeOutcome {
    Ingested {
        job: String,
        lines: u64,
    },
    AlreadyIngested {
        job: String,
    },
    Rejected {
        file: String,
        reason: String,
    },
    /// Left where it is for now, with why (a file nightshift cannot read yet): tried again at
    /// each scan, and no job exists until it was read whole.
    NotTaken {
        file: String,
        reason: String,
    },
    /// Stopped part-way by shutdown; resumed at the next start.
    Interrupted {
        job: String,
    },
    /// A template with a schedule: registered, not run now.
    Scheduled {
        name: String,
        next_run_at: Option<i64>,
    },
}

/// The fact that lists the entries of `jobs_dir` intake does not take (JSON, [`NotTaken`]s).
pub const NOT_TAKEN_FACT: &str = "intake.not_taken";

/// An entry of `jobs_dir` that is not taken, and why; `since` in Unix ms.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NotTaken {
    pub entry: String,
    pub reason: String,
    pub since: i64,
}

/// What intake works with.
#[derive(Clone)]
pub struct Intake {
    pub store: Store,
    pub jobs_dir: PathBuf,
    /// Poked after each committed chunk: there is new work (for each lane).
    pub wakes: Vec<Arc<Notify>>,
    /// Intake stops after the chunk in hand when this is cancelled; it resumes at the next start.
    pub cancel: CancellationToken,
    /// The real-time lane's requests per minute for a model, if known (for the planner).
    pub rpm_for: crate::policy::planner::RpmFor,
    /// Failed attempts per file, to give up on a file that keeps failing.
    pub failures: Arc<std::sync::Mutex<HashMap<PathBuf, u32>>>,
    /// The entries of `jobs_dir` the last scan did not take, with why and since when: each is
    /// logged when it appears and published for `status` (the fact [`NOT_TAKEN_FACT`]).
    pub not_taken: Arc<std::sync::Mutex<BTreeMap<String, NotTaken>>>,
    /// Where templates of recurring jobs are kept (`<data_dir>/templates`).
    pub templates_dir: PathBuf,
    /// The `anthropic-version` nightshift sends: some fields are refused on some versions.
    pub api_version: String,
    /// `cache` for jobs whose sidecar does not say.
    pub cache_default: crate::model::job::CacheMode,
    /// This daemon: a file is taken in by one daemon of those sharing the store.
    pub holder: store::leases::Holder,
}

/// Attempts at a file that keeps failing (unreadable, vanishing) before it is rejected.
const MAX_FILE_FAILURES: u32 = 3;

impl Intake {
    fn wake(&self) {
        for w in &self.wakes {
            w.notify_one();
        }
    }

    /// Takes in every waiting file, in name order, if `jobs_dir` is safe from other users; says
    /// what it did not take, and why.
    pub fn scan(&self) -> anyhow::Result<Vec<IntakeOutcome>> {
        use anyhow::Context;
        let mut not_taken = BTreeMap::new();
        let files = match crate::files::check_folder(&self.jobs_dir, "jobs_dir") {
            Ok(_) => {
                let listing = list_jobs_dir(&self.jobs_dir).with_context(|| {
                    format!("listing the jobs folder {}", self.jobs_dir.display())
                })?;
                not_taken = listing.not_taken;
                // Where files are moved must be nightshift's own folders, not links elsewhere.
                let foreign = [INGESTED_DIR, REJECTED_DIR].into_iter().find_map(|folder| {
                    crate::files::check_own_folder(&self.jobs_dir.join(folder))
                        .err()
                        .map(|e| (folder, e))
                });
                match foreign {
                    None => listing.files,
                    Some((folder, e)) => {
                        not_taken.insert(
                            folder.to_owned(),
                            format!("{e}; no job file is taken until then"),
                        );
                        Vec::new()
                    }
                }
            }
            Err(e) => {
                not_taken.insert(
                    self.jobs_dir.display().to_string(),
                    format!("{e}; no job file is taken until then"),
                );
                Vec::new()
            }
        };
        let mut outcomes = Vec::new();
        for path in files {
            if self.cancel.is_cancelled() {
                break;
            }
            let outcome = match ingest_file(self, &path) {
                Ok(outcome) => {
                    crate::lock(&self.failures).remove(&path);
                    outcome
                }
                Err(e) => match self.give_up_on(&path, &e)? {
                    Some(outcome) => outcome,
                    None => continue,
                },
            };
            match &outcome {
                IntakeOutcome::Ingested { job, lines } => {
                    tracing::info!(job = %job, lines, "job taken in")
                }
                IntakeOutcome::AlreadyIngested { job } => {
                    tracing::info!(job = %job, "job file was already taken in; moved to {INGESTED_DIR}/")
                }
                IntakeOutcome::Scheduled { name, next_run_at } => {
                    let next = next_run_at.map(crate::model::time::format_time);
                    tracing::info!(schedule = %name, next = next.as_deref().unwrap_or("never"), "recurring job registered (its file is the template of each run)")
                }
                IntakeOutcome::NotTaken { file, reason } => {
                    not_taken.insert(file.clone(), reason.clone());
                }
                IntakeOutcome::Rejected { .. } | IntakeOutcome::Interrupted { .. } => {}
            }
            outcomes.push(outcome);
        }
        self.publish_not_taken(not_taken)?;
        self.close_vanished()?;
        Ok(outcomes)
    }

    /// Logs each entry not taken once, when it appears (and when it is gone), and publishes the
    /// list for `status` when it changed.
    fn publish_not_taken(&self, now_not_taken: BTreeMap<String, String>) -> anyhow::Result<()> {
        let now = now_ms();
        let list = {
            let mut known = crate::lock(&self.not_taken);
            let before: Vec<NotTaken> = known.values().cloned().collect();
            known.retain(|entry, _| {
                let stays = now_not_taken.contains_key(entry);
                if !stays {
                    tracing::info!(entry = %entry, "an entry of the jobs folder that was not taken is gone or taken now");
                }
                stays
            });
            for (entry, reason) in now_not_taken {
                match known.get_mut(&entry) {
                    Some(seen) if seen.reason == reason => {}
                    seen => {
                        tracing::warn!(entry = %entry, %reason, "an entry of the jobs folder is not taken");
                        let since = seen.map_or(now, |s| s.since);
                        known.insert(
                            entry.clone(),
                            NotTaken {
                                entry,
                                reason,
                                since,
                            },
                        );
                    }
                }
            }
            let list: Vec<NotTaken> = known.values().cloned().collect();
            if list == before {
                return Ok(());
            }
            list
        };
        let json = serde_json::to_string(&list)?;
        let daemon = self.holder.id.clone();
        let written = block_on_store(&self.store, move |c| {
            if list.is_empty() {
                crate::store::facts::clear(c, &daemon, NOT_TAKEN_FACT)
            } else {
                crate::store::facts::set(c, &daemon, NOT_TAKEN_FACT, &json, now)
            }
        });
        if written.is_err() {
            // Not published (a busy database): the next scan publishes it again.
            crate::lock(&self.not_taken).clear();
        }
        Ok(written?)
    }

    /// Counts a failure of `path`; after [`MAX_FILE_FAILURES`] (or at once when the file changed
    /// during intake) rejects it. None: try again at the next scan.
    fn give_up_on(
        &self,
        path: &Path,
        error: &anyhow::Error,
    ) -> anyhow::Result<Option<IntakeOutcome>> {
        let changed = error.downcast_ref::<IntakeError>().is_some();
        let failures = {
            let mut map = crate::lock(&self.failures);
            let n = map.entry(path.to_owned()).or_insert(0);
            *n += 1;
            *n
        };
        if !changed && failures < MAX_FILE_FAILURES {
            tracing::warn!(file = %path.display(), error = format!("{error:#}"), failures, "taking a job file in failed; trying again at the next scan");
            return Ok(None);
        }
        crate::lock(&self.failures).remove(path);
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = file_name.trim_end_matches(".jsonl").to_owned();
        if changed {
            // What was taken in stays a job of its own; the rest of the file is not taken.
            let note = error.to_string();
            block_on_store(&self.store, move |c| {
                jobs::close_partial_intake(c, &stem, &note, now_ms())
            })?;
        }
        let reason = format!("{error:#}");
        reject(
            &self.store,
            &self.jobs_dir,
            path,
            &path.with_extension("toml"),
            &file_name,
            reason,
        )
        .map(Some)
    }

    /// Jobs whose intake was interrupted and whose file is gone: keep what was taken in, and say so.
    fn close_vanished(&self) -> anyhow::Result<()> {
        let open = block_on_store(&self.store, jobs::ingesting)?;
        for job in open {
            // Another daemon's file is in its own jobs folder, on its own host.
            let mine = job
                .taken_in_by
                .as_ref()
                .is_none_or(|t| *t == self.holder.id);
            if !mine || Path::new(&job.source_path).exists() {
                continue;
            }
            let note = format!(
                "the job file disappeared after {} lines were taken in; only those lines are part of the job",
                job.ingest_lines
            );
            tracing::warn!(job = %job.name, "{note}");
            let name = job.name.clone();
            block_on_store(&self.store, move |c| {
                jobs::close_partial_intake(c, &name, &note, now_ms())
            })?;
        }
        Ok(())
    }
}

/// Takes one job file in: creates (or resumes) the job, streams its lines into the store, then
/// moves the file (and its sidecar) to `ingested/`. Runs blocking I/O: call it from a blocking task.
#[tracing::instrument(name = "intake", skip_all, fields(file = %path.display()))]
pub fn ingest_file(intake: &Intake, path: &Path) -> anyhow::Result<IntakeOutcome> {
    let (store, jobs_dir) = (&intake.store, intake.jobs_dir.as_path());
    use anyhow::Context;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let name = file_name.trim_end_matches(".jsonl").to_owned();
    let sidecar = path.with_extension("toml");
    if !valid_job_name(&name) {
        let reason = format!(
            "the job name {name:?} (the file's stem) must be 1-128 characters of A-Z, a-z, 0-9, _, - and ."
        );
        return reject(store, jobs_dir, path, &sidecar, &file_name, reason);
    }

    // Opened before anything is recorded: a file nightshift cannot read (yet) makes no job, and
    // is tried again at the next scan.
    let file = match crate::files::open_regular(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(IntakeOutcome::NotTaken {
                file: file_name,
                reason: "it went away while being listed".into(),
            });
        }
        Err(e) => return Ok(not_readable(file_name, path, &e)),
    };
    // The sidecar, read once: a schedule makes the file a template; otherwise its defaults serve
    // a new job (a sidecar that does not parse rejects the file then).
    let manifest = if std::fs::symlink_metadata(&sidecar).is_ok() {
        let text = match read_sidecar(&sidecar) {
            Ok(text) => text,
            Err(e) => return Ok(not_readable(file_name, &sidecar, &e)),
        };
        Manifest::parse(&text)
    } else {
        Ok(Manifest {
            defaults: JobDefaults::default(),
            schedule: None,
        })
    };
    let manifest = match manifest {
        Ok(Manifest {
            defaults,
            schedule: Some((expr, timezone)),
        }) => {
            let template = Template {
                file,
                sidecar: &sidecar,
                name: &name,
            };
            return register_schedule(intake, path, template, defaults, expr, timezone);
        }
        other => other,
    };

    let existing = block_on_store(store, {
        let name = name.clone();
        move |conn| jobs::find_by_name(conn, &name)
    })?;
    let job = match existing {
        Some(job) if job.ingested_at.is_some() => {
            // Taken before; the move afterwards did not happen, or it is another file of that name.
            let hash = hash_file(file).with_context(|| format!("reading {}", path.display()))?;
            if job.content_hash.as_deref() == Some(hash.as_str()) {
                move_aside(jobs_dir, INGESTED_DIR, path, &sidecar)?;
                return Ok(IntakeOutcome::AlreadyIngested { job: name });
            }
            let reason = format!(
                "a job named {name:?} was already taken in with different content; rename the file to run it as a new job"
            );
            return reject(store, jobs_dir, path, &sidecar, &file_name, reason);
        }
        Some(job) => {
            // An interrupted intake: resume it, unless another daemon sharing the store is
            // taking the same file in from its own jobs folder (then the next scan finds it
            // taken in, and this copy is moved aside).
            let (id, holder) = (job.id, intake.holder.clone());
            let taken = block_on_store(store, move |conn| {
                jobs::take_intake(conn, id, &holder, now_ms())
            })?;
            if !taken {
                return Ok(being_taken_in(file_name, &job));
            }
            job
        }
        None => {
            let mut defaults = match manifest {
                Ok(m) => m.defaults,
                Err(e) => {
                    let reason = format!("its sidecar {}: {e}", sidecar.display());
                    return reject(store, jobs_dir, path, &sidecar, &file_name, reason);
                }
            };
            defaults.cache.get_or_insert(intake.cache_default);
            let new = jobs::NewJob {
                name: name.clone(),
                source_path: path.display().to_string(),
                defaults,
                created_at: now_ms(),
            };
            let taker = intake.holder.id.clone();
            match block_on_store(store, move |conn| jobs::create(conn, &new, &taker))? {
                Some(job) => job,
                // Another daemon sharing the store created it this moment.
                None => {
                    return Ok(IntakeOutcome::NotTaken {
                        file: file_name,
                        reason: "another nightshift daemon sharing the store is taking a file of this name in".into(),
                    });
                }
            }
        }
    };

    let lines = stream_lines(intake, &job, path, file)
        .with_context(|| format!("reading {}", path.display()))?;
    let Some(lines) = lines else {
        return Ok(IntakeOutcome::Interrupted { job: name });
    };
    move_aside(jobs_dir, INGESTED_DIR, path, &sidecar)?;
    Ok(IntakeOutcome::Ingested { job: name, lines })
}

/// A file another live daemon is taking in: left alone, and told in `status` until it is taken.
fn being_taken_in(file: String, job: &jobs::JobRow) -> IntakeOutcome {
    let by = job.taken_in_by.as_deref().unwrap_or("another daemon");
    IntakeOutcome::NotTaken {
        file,
        reason: format!(
            "the daemon {by} sharing the store is taking a file of this name in; once it has, this copy is compared with it and moved aside if the same"
        ),
    }
}

/// A job file with a schedule, opened (never through a link) to be kept as the template.
struct Template<'a> {
    file: std::fs::File,
    sidecar: &'a Path,
    name: &'a str,
}

/// A job file whose sidecar has a `schedule`: keeps a copy as the template of each run, registers
/// (or replaces) the schedule, and moves the file aside like a job taken in.
fn register_schedule(
    intake: &Intake,
    path: &Path,
    template: Template<'_>,
    defaults: JobDefaults,
    expr: String,
    timezone: Option<String>,
) -> anyhow::Result<IntakeOutcome> {
    use anyhow::Context;
    std::fs::create_dir_all(&intake.templates_dir)
        .with_context(|| format!("creating {}", intake.templates_dir.display()))?;
    let Template {
        file,
        sidecar,
        name,
    } = template;
    // From the file opened, not by its name again (which a link could have taken meanwhile).
    copy_file_then_rename(file, &intake.templates_dir, &format!("{name}.jsonl"), None)?;
    let now = now_ms();
    let mut row = crate::store::schedules::ScheduleRow {
        name: name.to_owned(),
        expr,
        timezone,
        template_path: intake
            .templates_dir
            .join(format!("{name}.jsonl"))
            .display()
            .to_string(),
        defaults_toml: crate::config::sidecar::to_toml(&defaults),
        next_run_at: None,
        last_run_at: None,
        last_job: None,
        runs: 0,
    };
    row.next_run_at = crate::policy::cron::next_run(&row.expr, row.timezone.as_deref(), now);
    let next_run_at = row.next_run_at;
    block_on_store(&intake.store, move |c| {
        crate::store::schedules::upsert(c, &row, now)
    })?;
    move_aside(&intake.jobs_dir, INGESTED_DIR, path, sidecar)?;
    Ok(IntakeOutcome::Scheduled {
        name: name.to_owned(),
        next_run_at,
    })
}

/// Streams the file into the store in chunks; returns the number of lines, or None when stopped
/// by the cancel token (what is committed stays; the next start resumes after it).
fn stream_lines(
    intake: &Intake,
    job: &jobs::JobRow,
    path: &Path,
    file: std::fs::File,
) -> anyhow::Result<Option<u64>> {
    let store = &intake.store;
    let file_len = file.metadata()?.len().max(1);
    let mut reader = JobFileReader::new(BufReader::with_capacity(1 << 20, file));
    let mut chunk: Vec<(u64, ParsedLine)> = Vec::with_capacity(CHUNK_LINES);
    let mut chunk_bytes = 0usize;
    // One chunk may be committing while the next is parsed.
    let mut pending: Option<tokio::sync::oneshot::Receiver<store::Result<()>>> = None;
    let display = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let defaults = job.defaults.clone();
    let resume_after = job.ingest_lines as u64;
    while reader.line_no() < resume_after {
        // Committed by an earlier, interrupted intake: check it is still the same file.
        if !reader.skip()? {
            break;
        }
    }
    if resume_after > 0
        && (reader.line_no() < resume_after
            || job.ingest_prefix_hash.as_deref() != Some(reader.prefix_hash().as_str()))
    {
        return Err(IntakeError::ChangedDuringIntake {
            lines: resume_after,
        }
        .into());
    }
    let ctx = LineContext::new(&defaults, job.created_at, &intake.api_version);
    // `cache = "auto"`: marked here, off the store's writer (which only makes a mark an hour
    // long, or takes it away, for the batch lane).
    let auto_cache = defaults.cache == Some(crate::model::job::CacheMode::Auto);
    let mut marker = prompt_cache::AutoMarker::default();
    let mut mark_chunk = |chunk: &mut Vec<(u64, ParsedLine)>| {
        if auto_cache {
            let mut lines: Vec<&mut ValidLine> = chunk
                .iter_mut()
                .filter_map(|(_, parsed)| match parsed {
                    ParsedLine::Valid(v) => Some(v),
                    ParsedLine::Invalid { .. } => None,
                })
                .collect();
            marker.mark(&mut lines);
        }
    };
    // Deprecated models the job uses, each warned of once (in the log and the job's note).
    let mut deprecated = crate::model::catalog::Deprecations::default();
    while let Some(line) = reader.next_line(&ctx)? {
        if let ParsedLine::Valid(v) = &line.parsed
            && let Some(warning) = deprecated.note(&v.model, &ctx.today)
        {
            tracing::warn!(job = %job.name, model = %v.model, "{warning}");
        }
        chunk_bytes += line.len;
        chunk.push((line.line_no, line.parsed));
        if chunk.len() >= CHUNK_LINES || chunk_bytes >= CHUNK_BYTES {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_LINES));
            chunk_bytes = 0;
            if let Some(rx) = pending.take() {
                wait(rx)?;
                intake.wake();
            }
            if intake.cancel.is_cancelled() {
                return Ok(None);
            }
            let (line_no, offset) = (reader.line_no(), reader.offset());
            let progress = Progress {
                lines: line_no,
                offset,
                prefix_hash: reader.prefix_hash(),
                items_estimate: line_no.saturating_mul(file_len) / offset.max(1),
            };
            let mut full = full;
            mark_chunk(&mut full);
            pending = Some(submit_chunk(intake, job.id, &display, full, progress));
        }
    }
    let line_no = reader.line_no();
    let offset = reader.offset();
    if let Some(rx) = pending.take() {
        wait(rx)?;
    }
    let hash = reader.prefix_hash();
    if !chunk.is_empty() {
        let progress = Progress {
            lines: line_no,
            offset,
            prefix_hash: hash.clone(),
            items_estimate: line_no,
        };
        let mut chunk = chunk;
        mark_chunk(&mut chunk);
        wait(submit_chunk(intake, job.id, &display, chunk, progress))?;
    }
    let job_id = job.id;
    let warnings = deprecated.warnings();
    let note = if line_no == 0 {
        Some("the file is empty: there is nothing to run".to_owned())
    } else if !warnings.is_empty() {
        Some(warnings.join("; "))
    } else {
        None
    };
    block_on_store(store, move |conn| {
        jobs::finish_intake(
            conn,
            job_id,
            line_no as i64,
            &hash,
            note.as_deref(),
            now_ms(),
        )
    })?;
    intake.wake();
    Ok(Some(line_no))
}

/// How far intake has got, committed with each chunk.
struct Progress {
    lines: u64,
    offset: u64,
    /// sha256 of the file up to `offset`: a resumed intake checks the file is still the same.
    prefix_hash: String,
    /// The job's size as far as can be told yet, for the planner.
    items_estimate: u64,
}

fn submit_chunk(
    intake: &Intake,
    job_id: i64,
    file: &str,
    mut chunk: Vec<(u64, ParsedLine)>,
    progress: Progress,
) -> tokio::sync::oneshot::Receiver<store::Result<()>> {
    let file = file.to_owned();
    let rpm_for = intake.rpm_for.clone();
    let taker = intake.holder.id.clone();
    intake.store.submit(move |conn| {
        // Read what the planner needs, decide each line's lane, write: one transaction.
        let now = now_ms();
        let turnaround = store::batches::turnaround_ms(conn)?;
        let plan = |line: &ValidLine| {
            let lanes = planner::LaneFacts {
                now,
                batch_turnaround_ms: turnaround,
                job_items: progress.items_estimate,
                realtime_rpm: rpm_for(&line.model),
            };
            planner::decide_line(line, &lanes)
        };
        for (_, parsed) in chunk.iter_mut() {
            if let ParsedLine::Valid(line) = parsed
                && line.cache_added
                && plan(line).lane == crate::model::state::Lane::Batch
            {
                prompt_cache::for_batches(line);
            }
        }
        store::items::insert_chunk(conn, job_id, &file, &chunk, now, &plan)?;
        jobs::record_intake_progress(
            conn,
            job_id,
            &taker,
            progress.lines as i64,
            progress.offset as i64,
            &progress.prefix_hash,
        )
    })
}

/// Why a file could not be taken in.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(
        "the file changed after its first {lines} lines were taken in; those lines stay as they were, the rest of this file is not taken"
    )]
    ChangedDuringIntake { lines: u64 },
}

fn wait<T>(rx: tokio::sync::oneshot::Receiver<store::Result<T>>) -> Result<T, StoreError> {
    rx.blocking_recv().map_err(|_| StoreError::Closed)?
}

fn block_on_store<T, F>(store: &Store, f: F) -> Result<T, StoreError>
where
    F: FnOnce(&crate::store::sql::Conn) -> store::Result<T> + Send + 'static,
    T: Send + 'static,
{
    wait(store.submit(f))
}

fn reject(
    store: &Store,
    jobs_dir: &Path,
    path: &Path,
    sidecar: &Path,
    file_name: &str,
    reason: String,
) -> anyhow::Result<IntakeOutcome> {
    tracing::error!(file = %file_name, %reason, "job file rejected; moved to {REJECTED_DIR}/");
    let (file, why) = (file_name.to_owned(), reason.clone());
    block_on_store(store, move |conn| {
        jobs::record_rejection(conn, &file, &why, now_ms())
    })?;
    move_aside(jobs_dir, REJECTED_DIR, path, sidecar)?;
    Ok(IntakeOutcome::Rejected {
        file: file_name.to_owned(),
        reason,
    })
}

/// Moves the file and its sidecar into `jobs_dir/<folder>/`, never overwriting an earlier one
/// and never through a symlink ([`crate::files::move_into`]).
fn move_aside(jobs_dir: &Path, folder: &str, path: &Path, sidecar: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    // The job file first: once it is gone nothing takes it again, whatever happens to the sidecar.
    for source in [path, sidecar] {
        let Some(name) = source.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if std::fs::symlink_metadata(source).is_err() {
            continue;
        }
        crate::files::move_into(jobs_dir, folder, name)
            .with_context(|| format!("moving {} into {}/", source.display(), folder))?;
    }
    Ok(())
}

/// A file intake cannot open (unreadable, a symlink, not a regular file): not taken, with why.
fn not_readable(file_name: String, path: &Path, e: &std::io::Error) -> IntakeOutcome {
    let reason = if e.kind() == std::io::ErrorKind::PermissionDenied {
        format!(
            "{} cannot be read by nightshift's user (uid {}): {e}; give it read access (chmod/chgrp) and it is taken in",
            path.display(),
            rustix::process::geteuid().as_raw()
        )
    } else {
        format!("{} cannot be opened: {e}", path.display())
    };
    IntakeOutcome::NotTaken {
        file: file_name,
        reason,
    }
}

/// Reads a sidecar, never through a symlink.
fn read_sidecar(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    crate::files::open_regular(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// The sha256 of a whole file, as hex.
pub fn hash_file(mut file: std::fs::File) -> std::io::Result<String> {
    use std::io::Read;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// `nightshift submit`: copies `file` (and its sidecar `<stem>.toml`, if any) into `jobs_dir`
/// under a hidden name, syncs it, then renames it to `<name>.jsonl`, so intake never sees a partial
/// file. Refuses a name that is waiting or already a job.
pub fn submit(
    config: &crate::config::Config,
    file: &Path,
    name: Option<&str>,
) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let name = name.unwrap_or(stem);
    anyhow::ensure!(
        valid_job_name(name),
        "the job name {name:?} must be 1-128 characters of A-Z, a-z, 0-9, _, - and . (use --name)"
    );
    anyhow::ensure!(file.is_file(), "{} is not a file", file.display());
    std::fs::create_dir_all(&config.jobs_dir)
        .with_context(|| format!("creating the jobs folder {}", config.jobs_dir.display()))?;
    let target = config.jobs_dir.join(format!("{name}.jsonl"));
    anyhow::ensure!(
        !target.exists(),
        "{} is already waiting to be taken in; use --name to submit under another name",
        target.display()
    );
    if let Ok(conn) = store::open_read_only(crate::lanes::store_location(config)) {
        anyhow::ensure!(
            jobs::find_by_name(&conn, name)?.is_none(),
            "a job named {name:?} exists already (see `nightshift job {name}`); use --name to choose another"
        );
    }
    // The sidecar goes first, so the job file never arrives without it.
    let sidecar = file.with_extension("toml");
    if sidecar.is_file() {
        let text = std::fs::read_to_string(&sidecar)
            .with_context(|| format!("reading {}", sidecar.display()))?;
        crate::config::sidecar::job_defaults(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", sidecar.display()))?;
        copy_then_rename(&sidecar, &config.jobs_dir, &format!("{name}.toml"))?;
    }
    copy_then_rename(file, &config.jobs_dir, &format!("{name}.jsonl"))?;
    Ok(target)
}

/// `submit`'s copy. Into a jobs folder of another user (a submitters' folder nightshift owns),
/// the copy is 0640, so nightshift can read it through the folder's group; else 0600.
fn copy_then_rename(source: &Path, dir: &Path, name: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::MetadataExt;
    let file =
        std::fs::File::open(source).with_context(|| format!("opening {}", source.display()))?;
    let others_folder =
        std::fs::metadata(dir).is_ok_and(|m| m.uid() != rustix::process::geteuid().as_raw());
    copy_file_then_rename(file, dir, name, others_folder.then_some(0o640))
}

/// Copies `source` into `dir` under a hidden name, made private (or `mode`), syncs it, then
/// renames it to `name`.
fn copy_file_then_rename(
    mut source: std::fs::File,
    dir: &Path,
    name: &str,
    mode: Option<u32>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let partial = dir.join(format!(".{name}.partial"));
    let target = dir.join(name);
    {
        let mut out = std::fs::File::create(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        std::io::copy(&mut source, &mut out)
            .with_context(|| format!("copying to {}", partial.display()))?;
    }
    crate::files::make_private(&partial, false)?;
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, &target)
        .with_context(|| format!("renaming {} to {}", partial.display(), target.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
