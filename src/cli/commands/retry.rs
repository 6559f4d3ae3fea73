//! `nightshift retry JOB [--errored] [--expired] [--ids FILE]`: asks the daemon to send a job's
//! chosen final items again (their history kept); the job's results file then ends with each
//! custom_id once, with the latest outcome. Waits a little for the daemon's answer.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::{load_config, not_found};
use crate::store::{self, retry::Choice};

/// How long `retry` waits for the daemon to carry the request out before it says it is queued.
const WAIT: Duration = Duration::from_secs(10);

pub fn run(
    config: Option<&Path>,
    job: &str,
    errored: bool,
    expired: bool,
    ids_file: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let ids = match ids_file {
        Some(path) => Some(read_ids(path)?),
        None => None,
    };
    // Neither state named and no ids: both states.
    let both = !errored && !expired && ids.is_none();
    let choice = Choice {
        errored: errored || both,
        expired: expired || both,
        ids,
    };
    let db = crate::lanes::store_location(&config);
    let Some(request) = store::request_retry(&db, job, &choice)? else {
        return not_found("job", job);
    };
    let started = Instant::now();
    while started.elapsed() < WAIT {
        if let Some(outcome) = store::retry_outcome(&db, request)? {
            println!("{outcome}");
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "retry of {job} requested; the daemon carries it out when it runs (see `nightshift job {job}`)"
    );
    Ok(ExitCode::SUCCESS)
}

/// custom_ids, one per line (blank lines and surrounding spaces left out).
fn read_ids(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the ids file {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}
