//! `nightshift results JOB [--out FILE]`: a job's results in the batch-results format, each
//! custom_id once, read from the store, so any host sharing it can write them (the daemon that
//! took the job in keeps its own copy under its `data_dir`).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{EXIT_TEMPFAIL, load_config, not_found};
use crate::store::{self, items, jobs};

/// Lines read from the store at a time.
const PAGE: i64 = 5_000;

pub fn run(config: Option<&Path>, job: &str, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let conn = store::open_read_only(crate::lanes::store_location(&config))?;
    let Some(row) = jobs::find_by_name(&conn, job)? else {
        return not_found("job", job);
    };
    let written = match out {
        None => {
            let stdout = std::io::stdout().lock();
            write_all(&conn, row.id, std::io::BufWriter::new(stdout))?
        }
        Some(path) => write_file(&conn, row.id, path)?,
    };
    let counts = items::counts(&conn, row.id)?;
    let open = counts.pending + counts.in_flight;
    if row.ingested_at.is_none() || open > 0 {
        eprintln!(
            "{job}: {written} of {} items have their result so far ({open} still to go{}); run this again once `nightshift job {job}` says done",
            counts.total,
            if row.ingested_at.is_none() {
                ", and the file is still being taken in"
            } else {
                ""
            }
        );
        return Ok(ExitCode::from(EXIT_TEMPFAIL));
    }
    if let Some(path) = out {
        eprintln!(
            "{job}: {written} result lines written to {}",
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Every line of the job, in the order they were recorded; returns how many.
fn write_all(conn: &store::sql::Conn, job_id: i64, mut to: impl Write) -> anyhow::Result<u64> {
    let (mut after, mut n) = (0, 0u64);
    loop {
        let page = store::results::page(conn, job_id, after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.0;
        for (_, line) in &page {
            to.write_all(line.as_bytes())?;
            to.write_all(b"\n")?;
            n += 1;
        }
    }
    to.flush()?;
    Ok(n)
}

/// Written beside `path` under a hidden name, synced, then renamed over it: a reader never sees
/// half a file. Private (0600), as everything nightshift keeps.
fn write_file(conn: &store::sql::Conn, job_id: i64, path: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let temp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let written = write_all(conn, job_id, &mut writer)
        .and_then(|n| {
            let file = writer.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(n)
        })
        .and_then(|n| {
            std::fs::rename(&temp, path)?;
            Ok(n)
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}
