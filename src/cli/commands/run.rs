//! `nightshift run`: the daemon in the foreground until SIGINT or SIGTERM; SIGHUP reloads.

use std::path::Path;
use std::process::ExitCode;

use crate::api::load_route_keys;
use crate::cli::signals::{reload_signals, shutdown_signal};
use crate::cli::{load_config, runtime};
use crate::config::{Config, ConfigError};
use crate::daemon;
use crate::files::{Identity, group_id, share_with};

pub fn run(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let keys = load_route_keys(&config)?;
    if let Some(group) = &config.daemon.readers_group {
        share_with_readers(&config, group)?;
    }
    let runtime = runtime()?;
    let ran = runtime
        .block_on(async { daemon::run(config, keys, shutdown_signal(), reload_signals()).await });
    // The daemon bounds its own shutdown; work it left behind (a file blocked on a full disk, say)
    // is not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    ran?;
    Ok(ExitCode::SUCCESS)
}

/// `[daemon] readers_group`: what the daemon keeps is shared with that group, which this process
/// must be in (it hands its files to it).
fn share_with_readers(config: &Config, group: &str) -> Result<(), ConfigError> {
    let invalid = |problem: String| config.invalid("daemon.readers_group", problem);
    let gid = group_id(group).map_err(|e| invalid(format!("is {group:?}: {e}")))?;
    let me = Identity::current();
    if me.uid != 0 && !me.gids.contains(&gid) {
        return Err(invalid(format!(
            "is {group:?}, a group nightshift's user (uid {}) is not in; add it (usermod -aG {group} <user>) and restart",
            me.uid
        )));
    }
    share_with(gid);
    Ok(())
}
