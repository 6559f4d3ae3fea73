//! SIGHUP: the config file is read again; limits, reserve, budgets and prices take effect at once,
//! and a change that needs a restart is named in the log.

use std::sync::{Arc, Mutex};

use crate::config::{Config, Live};
use crate::lanes::admission::Rules;
use crate::policy::quota::{Quota, QuotaSettings};

/// What a reload (SIGHUP) replaces: the config the limits and planner read, the budgets and
/// prices, and the quota controllers' limits and reserve.
pub(super) struct Reloader {
    pub(super) source: Option<std::path::PathBuf>,
    pub(super) config: Live<Config>,
    pub(super) rules: Live<Rules>,
    pub(super) quota: Arc<Mutex<Quota>>,
}

impl Reloader {
    /// Reads the config file again. A file that does not load leaves everything as it was.
    pub(super) fn reload(&self) {
        let Some(path) = &self.source else {
            tracing::warn!(
                "reload asked, but the daemon runs on built-in defaults (no config file)"
            );
            return;
        };
        let old = self.config.get();
        let new = match Config::load(path, &old.env) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(error = %e, "reload failed; the running configuration stays in force");
                return;
            }
        };
        for (what, changed) in [
            (
                "jobs_dir, data_dir",
                old.jobs_dir != new.jobs_dir || old.data_dir != new.data_dir,
            ),
            ("[api]", old.api != new.api),
            ("[realtime]", old.realtime != new.realtime),
            ("[batch]", old.batch != new.batch),
            ("[daemon]", old.daemon != new.daemon),
        ] {
            if changed {
                tracing::warn!(
                    "{what} changed in {}; that takes effect at the next restart",
                    path.display()
                );
            }
        }
        self.rules.set(Rules::from_config(&new));
        let settings = QuotaSettings {
            reserve: new.quota.reserve,
            output_reservation: new.quota.output_reservation,
            max_concurrency: old.realtime.concurrency,
            initial_concurrency: old.realtime.concurrency.min(4),
        };
        self.config.set(new);
        crate::lock(&self.quota).reconfigure(settings, std::time::Instant::now());
        tracing::info!(config = %path.display(), "configuration reloaded: limits, reserve, budgets and prices are in force");
    }
}
