//! `nightshift run`: the daemon in the foreground until SIGINT or SIGTERM; SIGHUP reloads.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::signals::{reload_signals, shutdown_signal};
use crate::cli::{load_config, load_key, runtime};
use crate::daemon;

pub fn run(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let key = load_key(&config)?;
    let runtime = runtime()?;
    let ran = runtime
        .block_on(async { daemon::run(config, key, shutdown_signal(), reload_signals()).await });
    // The daemon bounds its own shutdown; work it left behind (a file blocked on a full disk, say)
    // is not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    ran?;
    Ok(ExitCode::SUCCESS)
}
