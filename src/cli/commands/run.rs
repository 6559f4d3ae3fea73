//! `nightshift run`: the daemon in the foreground until SIGINT or SIGTERM; SIGHUP reloads.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::signals::{reload_signals, shutdown_signal};
use crate::cli::{load_config, load_key, runtime};
use crate::daemon;

pub fn run(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let key = load_key(&config)?;
    runtime()?
        .block_on(async { daemon::run(config, key, shutdown_signal(), reload_signals()).await })?;
    Ok(ExitCode::SUCCESS)
}
