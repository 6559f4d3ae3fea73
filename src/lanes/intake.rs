//! Intake: finds complete job files in `jobs_dir`, streams them line by line, validates each line and
//! records the job and its items in SQLite, one transaction per chunk.
//!
//! A file is complete when it has its final name: writers put it in place with a rename (what
//! `nightshift submit` does), so a name ending in `.jsonl` that does not start with a dot is taken.
//! Ingested files move to `jobs_dir/ingested/`, files that cannot be jobs to `jobs_dir/rejected/`.
//! A job name is never taken twice; an interrupted intake resumes where its last chunk committed.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::model::job::{Deadline, JobDefaults, Manifest, Mode, Priority, check_tenant};
use crate::store::{self, Store, StoreError, jobs, now_ms};

/// Lines per intake transaction, at most.
const CHUNK_LINES: usize = 2_000;
/// Bytes of lines per intake transaction, at most (long prompts make fewer lines per chunk).
const CHUNK_BYTES: usize = 8 << 20;
/// Longer lines are not read into memory: no request that large is accepted by the API (32 MB).
const MAX_LINE_BYTES: usize = 32 << 20;
/// The fields a line may carry.
const LINE_FIELDS: [&str; 6] = [
    "custom_id",
    "params",
    "tenant",
    "priority",
    "mode",
    "deadline",
];
pub const INGESTED_DIR: &str = "ingested";
pub const REJECTED_DIR: &str = "rejected";

/// Why one line of a job file is not a valid request.
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    pub line: u64,
    /// The field at fault, as a path (`params.max_tokens`), when one is.
    pub field: Option<String>,
    pub reason: String,
}

impl LineError {
    fn new(line: u64, field: Option<&str>, reason: impl Into<String>) -> LineError {
        LineError {
            line,
            field: field.map(str::to_owned),
            reason: reason.into(),
        }
    }

    /// The message people read: file, line and field.
    pub fn message(&self, file: &str) -> String {
        match &self.field {
            Some(field) => format!(
                "{file} line {}: field `{field}`: {}",
                self.line, self.reason
            ),
            None => format!("{file} line {}: {}", self.line, self.reason),
        }
    }
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message("job file"))
    }
}

/// A line that passed validation, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidLine {
    pub custom_id: String,
    /// The `params` object exactly as written.
    pub params: String,
    pub model: String,
    pub max_tokens: u64,
    pub input_estimate: u64,
    pub tenant: String,
    pub priority: Priority,
    pub mode: Mode,
    pub deadline_at: Option<i64>,
}

/// One line of a job file after validation.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedLine {
    Valid(ValidLine),
    /// Invalid; `custom_id` is kept when it could be read (its result then carries it).
    Invalid {
        custom_id: Option<String>,
        error: LineError,
    },
}

/// Whether a custom_id is acceptable to the Message Batches API: `^[a-zA-Z0-9_-]{1,64}$`.
pub fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A rough input-token estimate before sending: a token per four bytes of the request body. It errs
/// high (JSON punctuation counts too), which keeps pacing on the safe side.
pub fn estimate_input_tokens(params: &str) -> u64 {
    (params.len() as u64).div_ceil(4).max(1)
}

/// Validates one line (without its newline). `intake_ms` resolves relative deadlines.
pub fn parse_line(bytes: &[u8], line: u64, defaults: &JobDefaults, intake_ms: i64) -> ParsedLine {
    let invalid =
        |custom_id: Option<String>, field: Option<&str>, reason: String| ParsedLine::Invalid {
            custom_id,
            error: LineError::new(line, field, reason),
        };
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            return invalid(
                None,
                None,
                format!(
                    "is not valid UTF-8 (bad byte at column {})",
                    e.valid_up_to() + 1
                ),
            );
        }
    };
    if text.trim().is_empty() {
        return invalid(
            None,
            None,
            "is empty; each line must be one JSON request".into(),
        );
    }
    let fields: HashMap<String, &RawValue> = match serde_json::from_str(text) {
        Ok(fields) => fields,
        Err(e) if e.is_data() => {
            return invalid(None, None, "is not a JSON object".into());
        }
        Err(e) => {
            return invalid(
                None,
                None,
                format!(
                    "is not valid JSON ({} at column {})",
                    describe_json_error(&e),
                    e.column()
                ),
            );
        }
    };

    // custom_id first, so that later errors can still carry it.
    let custom_id = match fields.get("custom_id") {
        None => return invalid(None, Some("custom_id"), "is missing".into()),
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(id) if valid_custom_id(&id) => id,
            Ok(id) => {
                return invalid(
                    None,
                    Some("custom_id"),
                    format!(
                        "must be 1-64 characters of A-Z, a-z, 0-9, _ and -; got {:?}",
                        truncate(&id, 80)
                    ),
                );
            }
            Err(_) => return invalid(None, Some("custom_id"), "must be a string".into()),
        },
    };
    let fail = |field: &str, reason: String| invalid(Some(custom_id.clone()), Some(field), reason);

    let mut unknown: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|k| !LINE_FIELDS.contains(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return fail(
            unknown[0],
            format!("is not a known field (allowed: {})", LINE_FIELDS.join(", ")),
        );
    }

    let tenant = match optional(&fields, "tenant", check_tenant) {
        Ok(t) => t.unwrap_or_else(|| defaults.tenant.clone()),
        Err((field, reason)) => return fail(field, reason),
    };
    let priority = match optional(&fields, "priority", str::parse::<Priority>) {
        Ok(p) => p.unwrap_or(defaults.priority),
        Err((field, reason)) => return fail(field, reason),
    };
    let mode = match optional(&fields, "mode", str::parse::<Mode>) {
        Ok(m) => m.unwrap_or(defaults.mode),
        Err((field, reason)) => return fail(field, reason),
    };
    let deadline = match optional(&fields, "deadline", str::parse::<Deadline>) {
        Ok(d) => d.or(defaults.deadline.as_ref().map(|(_, d)| *d)),
        Err((field, reason)) => return fail(field, reason),
    };

    let Some(params_raw) = fields.get("params") else {
        return fail("params", "is missing".into());
    };
    let params: HashMap<String, &RawValue> = match serde_json::from_str(params_raw.get()) {
        Ok(p) => p,
        Err(_) => {
            return fail(
                "params",
                "must be an object (a Messages request body)".into(),
            );
        }
    };
    let model = match params
        .get("model")
        .map(|raw| serde_json::from_str::<String>(raw.get()))
    {
        None => return fail("params.model", "is missing".into()),
        Some(Ok(m)) if !m.trim().is_empty() => m,
        Some(_) => return fail("params.model", "must be a non-empty string".into()),
    };
    let max_tokens = match params
        .get("max_tokens")
        .map(|raw| serde_json::from_str::<u64>(raw.get()))
    {
        None => return fail("params.max_tokens", "is missing".into()),
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => {
            return fail(
                "params.max_tokens",
                "must be an integer of at least 1".into(),
            );
        }
    };
    match params
        .get("messages")
        .map(|raw| serde_json::from_str::<Vec<&RawValue>>(raw.get()))
    {
        None => return fail("params.messages", "is missing".into()),
        Some(Ok(list)) if !list.is_empty() => {}
        Some(Ok(_)) => return fail("params.messages", "must not be empty".into()),
        Some(Err(_)) => return fail("params.messages", "must be an array of messages".into()),
    }

    let params = params_raw.get().to_owned();
    ParsedLine::Valid(ValidLine {
        input_estimate: estimate_input_tokens(&params),
        custom_id,
        params,
        model,
        max_tokens,
        tenant,
        priority,
        mode,
        deadline_at: deadline.map(|d| d.resolve(intake_ms)),
    })
}

/// An optional string field of a line, parsed by `parse`; the error is (field, reason).
fn optional<'f, T>(
    fields: &HashMap<String, &RawValue>,
    name: &'f str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, (&'f str, String)> {
    let Some(raw) = fields.get(name) else {
        return Ok(None);
    };
    let text: String =
        serde_json::from_str(raw.get()).map_err(|_| (name, "must be a string".to_owned()))?;
    parse(&text).map(Some).map_err(|reason| (name, reason))
}

fn describe_json_error(e: &serde_json::Error) -> String {
    // serde_json's text ends with " at line L column C"; the line is always 1 here.
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max_chars).collect();
        t.push('…');
        t
    }
}

/// A job name: the file's stem, usable as a file name.
pub fn valid_job_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The job files waiting in `jobs_dir`, oldest name first.
pub fn waiting_files(jobs_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(jobs_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".jsonl") {
            continue;
        }
        if entry.file_type()?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
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
    /// Where templates of recurring jobs are kept (`<data_dir>/templates`).
    pub templates_dir: PathBuf,
}

/// Attempts at a file that keeps failing (unreadable, vanishing) before it is rejected.
const MAX_FILE_FAILURES: u32 = 3;

impl Intake {
    fn wake(&self) {
        for w in &self.wakes {
            w.notify_one();
        }
    }

    /// Takes in every waiting file, in name order.
    pub fn scan(&self) -> anyhow::Result<Vec<IntakeOutcome>> {
        use anyhow::Context;
        let files = waiting_files(&self.jobs_dir)
            .with_context(|| format!("listing the jobs folder {}", self.jobs_dir.display()))?;
        let mut outcomes = Vec::new();
        for path in files {
            if self.cancel.is_cancelled() {
                break;
            }
            let outcome = match ingest_file(self, &path) {
                Ok(outcome) => {
                    self.failures.lock().expect("failures lock").remove(&path);
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
                    let next = next_run_at.map(crate::cli::report::format_time);
                    tracing::info!(schedule = %name, next = next.as_deref().unwrap_or("never"), "recurring job registered (its file is the template of each run)")
                }
                IntakeOutcome::Rejected { .. } | IntakeOutcome::Interrupted { .. } => {}
            }
            outcomes.push(outcome);
        }
        self.close_vanished()?;
        Ok(outcomes)
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
            let mut map = self.failures.lock().expect("failures lock");
            let n = map.entry(path.to_owned()).or_insert(0);
            *n += 1;
            *n
        };
        if !changed && failures < MAX_FILE_FAILURES {
            tracing::warn!(file = %path.display(), error = format!("{error:#}"), failures, "taking a job file in failed; trying again at the next scan");
            return Ok(None);
        }
        self.failures.lock().expect("failures lock").remove(path);
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
            if Path::new(&job.source_path).exists() {
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

    // The sidecar, read once: a schedule makes the file a template; otherwise its defaults serve
    // a new job (a sidecar that does not parse rejects the file then).
    let manifest = if sidecar.is_file() {
        let text = std::fs::read_to_string(&sidecar)
            .with_context(|| format!("reading {}", sidecar.display()))?;
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
        }) => return register_schedule(intake, path, &sidecar, &name, defaults, expr, timezone),
        other => other,
    };

    let existing = block_on_store(store, {
        let name = name.clone();
        move |conn| jobs::find_by_name(conn, &name)
    })?;
    let job = match existing {
        Some(job) if job.ingested_at.is_some() => {
            // Taken before; the move afterwards did not happen, or it is another file of that name.
            let hash = hash_file(path).with_context(|| format!("reading {}", path.display()))?;
            if job.content_hash.as_deref() == Some(hash.as_str()) {
                move_aside(jobs_dir, INGESTED_DIR, path, &sidecar)?;
                return Ok(IntakeOutcome::AlreadyIngested { job: name });
            }
            let reason = format!(
                "a job named {name:?} was already taken in with different content; rename the file to run it as a new job"
            );
            return reject(store, jobs_dir, path, &sidecar, &file_name, reason);
        }
        Some(job) => job, // an interrupted intake: resume it
        None => {
            let defaults = match manifest {
                Ok(m) => m.defaults,
                Err(e) => {
                    let reason = format!("its sidecar {}: {e}", sidecar.display());
                    return reject(store, jobs_dir, path, &sidecar, &file_name, reason);
                }
            };
            let new = jobs::NewJob {
                name: name.clone(),
                source_path: path.display().to_string(),
                defaults,
                created_at: now_ms(),
            };
            block_on_store(store, move |conn| jobs::create(conn, &new))?
        }
    };

    let lines =
        stream_lines(intake, &job, path).with_context(|| format!("reading {}", path.display()))?;
    let Some(lines) = lines else {
        return Ok(IntakeOutcome::Interrupted { job: name });
    };
    move_aside(jobs_dir, INGESTED_DIR, path, &sidecar)?;
    Ok(IntakeOutcome::Ingested { job: name, lines })
}

/// A job file whose sidecar has a `schedule`: keeps a copy as the template of each run, registers
/// (or replaces) the schedule, and moves the file aside like a job taken in.
fn register_schedule(
    intake: &Intake,
    path: &Path,
    sidecar: &Path,
    name: &str,
    defaults: JobDefaults,
    expr: String,
    timezone: Option<String>,
) -> anyhow::Result<IntakeOutcome> {
    use anyhow::Context;
    std::fs::create_dir_all(&intake.templates_dir)
        .with_context(|| format!("creating {}", intake.templates_dir.display()))?;
    copy_then_rename(path, &intake.templates_dir, &format!("{name}.jsonl"))?;
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
        defaults_toml: crate::policy::cron::defaults_toml(&defaults),
        next_run_at: None,
        last_run_at: None,
        last_job: None,
        runs: 0,
    };
    row.next_run_at = crate::policy::cron::next_run(&row, now);
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

/// Reads one line (up to and without its `\n`) into `buf`, keeping at most `cap` bytes of it;
/// every byte read goes into `hasher`. Returns the bytes read (0 at the end) and whether the line
/// was longer than `cap`.
fn read_line_capped(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    cap: usize,
    hasher: &mut Sha256,
) -> std::io::Result<(usize, bool)> {
    let (mut read, mut too_long) = (0, false);
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok((read, too_long));
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        let keep = take.min(cap.saturating_sub(buf.len()));
        buf.extend_from_slice(&available[..keep]);
        too_long |= keep < take;
        hasher.update(&available[..take]);
        reader.consume(take);
        read += take;
        if done {
            return Ok((read, too_long));
        }
    }
}

/// Streams the file into the store in chunks; returns the number of lines, or None when stopped
/// by the cancel token (what is committed stays; the next start resumes after it).
fn stream_lines(intake: &Intake, job: &jobs::JobRow, path: &Path) -> anyhow::Result<Option<u64>> {
    let store = &intake.store;
    let file = std::fs::File::open(path)?;
    let file_len = file.metadata()?.len().max(1);
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut line_no: u64 = 0;
    let mut offset: u64 = 0;
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
    loop {
        buf.clear();
        let (n, too_long) = read_line_capped(&mut reader, &mut buf, MAX_LINE_BYTES, &mut hasher)?;
        if n == 0 {
            break;
        }
        offset += n as u64;
        line_no += 1;
        if line_no <= resume_after {
            // Committed by an earlier, interrupted intake: check it is still the same file.
            if line_no == resume_after
                && job.ingest_prefix_hash.as_deref()
                    != Some(hex(&hasher.clone().finalize()).as_str())
            {
                return Err(IntakeError::ChangedDuringIntake {
                    lines: resume_after,
                }
                .into());
            }
            continue;
        }
        let mut line: &[u8] = &buf;
        if let Some(rest) = line.strip_suffix(b"\n") {
            line = rest;
        }
        if let Some(rest) = line.strip_suffix(b"\r") {
            line = rest;
        }
        let parsed = if too_long {
            ParsedLine::Invalid {
                custom_id: None,
                error: LineError::new(
                    line_no,
                    None,
                    format!(
                        "is longer than {} MiB, the API's request size limit",
                        MAX_LINE_BYTES >> 20
                    ),
                ),
            }
        } else {
            parse_line(line, line_no, &defaults, job.created_at)
        };
        chunk_bytes += line.len();
        chunk.push((line_no, parsed));
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
            let progress = Progress {
                lines: line_no,
                offset,
                prefix_hash: hex(&hasher.clone().finalize()),
                items_estimate: line_no.saturating_mul(file_len) / offset.max(1),
            };
            pending = Some(submit_chunk(intake, job.id, &display, full, progress));
        }
    }
    if let Some(rx) = pending.take() {
        wait(rx)?;
    }
    let hash = hex(&hasher.finalize());
    if !chunk.is_empty() {
        let progress = Progress {
            lines: line_no,
            offset,
            prefix_hash: hash.clone(),
            items_estimate: line_no,
        };
        wait(submit_chunk(intake, job.id, &display, chunk, progress))?;
    }
    let job_id = job.id;
    let note = (line_no == 0).then(|| "the file is empty: there is nothing to run".to_owned());
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
    chunk: Vec<(u64, ParsedLine)>,
    progress: Progress,
) -> tokio::sync::oneshot::Receiver<store::Result<()>> {
    let file = file.to_owned();
    let rpm_for = intake.rpm_for.clone();
    intake.store.submit(move |conn| {
        let plan = store::items::PlanContext {
            now: now_ms(),
            job_items: progress.items_estimate,
            rpm_for: &*rpm_for,
        };
        store::items::insert_chunk(conn, job_id, &file, &chunk, &plan)?;
        jobs::record_intake_progress(
            conn,
            job_id,
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
    F: FnOnce(&rusqlite::Connection) -> store::Result<T> + Send + 'static,
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

/// Moves the file and its sidecar into `jobs_dir/<folder>/`, never overwriting an earlier one.
fn move_aside(jobs_dir: &Path, folder: &str, path: &Path, sidecar: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = jobs_dir.join(folder);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The job file first: once it is gone nothing takes it again, whatever happens to the sidecar.
    for source in [path, sidecar] {
        if !source.exists() {
            continue;
        }
        let name = source
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut target = dir.join(&name);
        let mut n = 1;
        while target.exists() {
            target = dir.join(format!("{name}.{n}"));
            n += 1;
        }
        std::fs::rename(source, &target)
            .with_context(|| format!("moving {} to {}", source.display(), target.display()))?;
    }
    Ok(())
}

/// The sha256 of a whole file, as hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    if let Ok(conn) = store::open_read_only(&config.db_path()) {
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
        JobDefaults::from_sidecar(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", sidecar.display()))?;
        copy_then_rename(&sidecar, &config.jobs_dir, &format!("{name}.toml"))?;
    }
    copy_then_rename(file, &config.jobs_dir, &format!("{name}.jsonl"))?;
    Ok(target)
}

fn copy_then_rename(source: &Path, dir: &Path, name: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let partial = dir.join(format!(".{name}.partial"));
    let target = dir.join(name);
    std::fs::copy(source, &partial)
        .with_context(|| format!("copying {} to {}", source.display(), partial.display()))?;
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, &target)
        .with_context(|| format!("renaming {} to {}", partial.display(), target.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> ParsedLine {
        parse_line(line.as_bytes(), 7, &JobDefaults::default(), 1_000)
    }

    fn error_of(line: &str) -> (Option<String>, LineError) {
        match parse(line) {
            ParsedLine::Invalid { custom_id, error } => (custom_id, error),
            ParsedLine::Valid(v) => panic!("expected an error, got {v:?}"),
        }
    }

    const GOOD: &str = r#"{"custom_id":"a-1","params":{"model":"claude-haiku-5-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}}"#;

    #[test]
    fn a_batch_request_line_is_valid_unchanged() {
        let ParsedLine::Valid(v) = parse(GOOD) else {
            panic!("valid")
        };
        assert_eq!(v.custom_id, "a-1");
        assert_eq!(v.model, "claude-haiku-5-5");
        assert_eq!(v.max_tokens, 64);
        assert_eq!(v.tenant, "default");
        assert_eq!(v.priority, Priority::Nightly);
        assert_eq!(v.mode, Mode::Auto);
        assert!(v.params.starts_with(r#"{"model""#));
        assert!(v.input_estimate > 0);
    }

    #[test]
    fn optional_fields_override_the_defaults() {
        let line = r#"{"custom_id":"x","tenant":"acme","priority":"high","mode":"realtime","deadline":"1h","params":{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"q"}]}}"#;
        let ParsedLine::Valid(v) = parse(line) else {
            panic!("valid")
        };
        assert_eq!(v.tenant, "acme");
        assert_eq!(v.priority, Priority::High);
        assert_eq!(v.mode, Mode::Realtime);
        assert_eq!(v.deadline_at, Some(1_000 + 3_600_000));
    }

    #[test]
    fn each_problem_names_line_and_field() {
        let cases: [(&str, Option<&str>, &str); 12] = [
            ("{not json", None, "not valid JSON"),
            ("[1,2]", None, "not a JSON object"),
            ("   ", None, "empty"),
            (r#"{"params":{}}"#, Some("custom_id"), "missing"),
            (
                r#"{"custom_id":"bad id!","params":{}}"#,
                Some("custom_id"),
                "1-64",
            ),
            (
                r#"{"custom_id":5,"params":{}}"#,
                Some("custom_id"),
                "string",
            ),
            (r#"{"custom_id":"a"}"#, Some("params"), "missing"),
            (
                r#"{"custom_id":"a","params":{"max_tokens":5,"messages":[1]}}"#,
                Some("params.model"),
                "missing",
            ),
            (
                r#"{"custom_id":"a","params":{"model":"m","messages":[1]}}"#,
                Some("params.max_tokens"),
                "missing",
            ),
            (
                r#"{"custom_id":"a","params":{"model":"m","max_tokens":0,"messages":[1]}}"#,
                Some("params.max_tokens"),
                "at least 1",
            ),
            (
                r#"{"custom_id":"a","params":{"model":"m","max_tokens":5,"messages":[]}}"#,
                Some("params.messages"),
                "empty",
            ),
            (
                r#"{"custom_id":"a","colour":"red","params":{}}"#,
                Some("colour"),
                "not a known field",
            ),
        ];
        for (line, field, words) in cases {
            let (_, err) = error_of(line);
            assert_eq!(err.line, 7, "{line}");
            assert_eq!(err.field.as_deref(), field, "{line}: {err:?}");
            assert!(err.reason.contains(words), "{line}: {err:?}");
            let msg = err.message("jobs/x.jsonl");
            assert!(msg.starts_with("jobs/x.jsonl line 7"), "{msg}");
        }
    }

    #[test]
    fn a_readable_custom_id_is_kept_on_an_invalid_line() {
        let (id, _) = error_of(r#"{"custom_id":"keep-me","params":{"model":"m"}}"#);
        assert_eq!(id.as_deref(), Some("keep-me"));
        let (id, _) = error_of(r#"{"custom_id":"","params":{}}"#);
        assert_eq!(id, None);
    }

    #[test]
    fn non_utf8_is_reported_with_its_column() {
        let ParsedLine::Invalid { error, .. } =
            parse_line(b"{\"a\xff", 3, &JobDefaults::default(), 0)
        else {
            panic!("invalid")
        };
        assert!(error.reason.contains("UTF-8"), "{error:?}");
        assert!(error.reason.contains("column 4"), "{error:?}");
    }

    #[test]
    fn custom_id_rules_match_the_batch_api() {
        assert!(valid_custom_id("a"));
        assert!(valid_custom_id(&"x".repeat(64)));
        assert!(!valid_custom_id(&"x".repeat(65)));
        assert!(!valid_custom_id(""));
        assert!(!valid_custom_id("a.b"));
        assert!(!valid_custom_id("é"));
    }

    #[test]
    fn job_names_are_safe_file_names() {
        assert!(valid_job_name("nightly-2026.11.23"));
        assert!(!valid_job_name(".hidden"));
        assert!(!valid_job_name("a b"));
        assert!(!valid_job_name(""));
    }
}
