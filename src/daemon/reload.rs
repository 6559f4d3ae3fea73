//! SIGHUP: the config file is read again; limits, reserve, budgets and prices take effect at once,
//! and a change that needs a restart is named in the log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::config::{Config, Live};
use crate::lanes::admission::Rules;
use crate::lanes::health::{self, Board};
use crate::policy::quota::QuotaSettings;
use crate::policy::routing::Routing;

/// What a reload (SIGHUP) replaces: the config the limits and planner read, the budgets and
/// prices, and the quota controllers' limits and reserve.
pub(super) struct Reloader {
    pub(super) source: Option<std::path::PathBuf>,
    pub(super) config: Live<Config>,
    pub(super) rules: Live<Rules>,
    pub(super) routing: Arc<Mutex<Routing>>,
    /// Where the verdict of each reload is written ([`VERDICT_FILE`] in the data dir).
    pub(super) verdict_path: PathBuf,
    /// Reloads so far, counted on from the last verdict file (`nightshift reload` waits for the
    /// next number).
    pub(super) seq: u64,
    /// A refused config is a trouble until a reload takes.
    pub(super) board: Board,
}

/// The verdict file's name in the data dir.
pub const VERDICT_FILE: &str = "reload.json";
/// Where `nightshift reload` leaves a token before it signals; the reload that reads it (before
/// it reads the config file) names it in its verdict, so the command hears the verdict on the
/// config as it was when it asked, not one a reload already under way had read before.
pub const REQUEST_FILE: &str = "reload.request";

/// What became of a reload, for `nightshift reload` (which waits for it) and the service status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Counts the reloads of this data dir.
    pub seq: u64,
    /// Unix ms.
    pub at: i64,
    /// The new config is in force.
    pub ok: bool,
    /// What took effect, or why the config file was refused.
    pub message: String,
    /// The token of the `nightshift reload` that asked, if one did ([`REQUEST_FILE`]).
    #[serde(default)]
    pub request: Option<String>,
}

/// The last verdict written in `path`, if any.
pub fn read_verdict(path: &std::path::Path) -> Option<Verdict> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

impl Reloader {
    /// Reads the config file again and says what became of it (in the verdict file too). A file
    /// that does not load, or folders other users could change, leave everything as it was.
    pub(super) fn reload(&mut self) -> Verdict {
        // The request is read before the config file: a verdict that names it judged the file
        // as it was when the request was made, or later.
        let request = self
            .verdict_path
            .parent()
            .and_then(|dir| std::fs::read_to_string(dir.join(REQUEST_FILE)).ok())
            .map(|token| token.trim().to_owned());
        let outcome = self.apply();
        self.seq += 1;
        let now = crate::store::now_ms();
        let (ok, message) = match outcome {
            Ok(message) => {
                self.board.clear(health::CONFIG);
                tracing::info!("{message}");
                (true, message)
            }
            Err(why) => {
                self.board.set(
                    health::CONFIG,
                    "the last reload was refused",
                    &why,
                    now,
                    None,
                );
                tracing::error!(error = %why, "reload refused; the running configuration stays in force");
                (
                    false,
                    format!(
                        "the reload was refused, the running configuration stays in force: {why}"
                    ),
                )
            }
        };
        let verdict = Verdict {
            seq: self.seq,
            at: now,
            ok,
            message,
            request,
        };
        if let Err(e) = write_verdict(&self.verdict_path, &verdict) {
            tracing::warn!(error = %e, path = %self.verdict_path.display(), "cannot write the reload verdict; `nightshift reload` will not hear it");
        }
        verdict
    }

    fn apply(&self) -> Result<String, String> {
        let Some(path) = &self.source else {
            return Err(
                "the daemon runs on built-in defaults (no config file): there is nothing to reload"
                    .into(),
            );
        };
        let old = self.config.get();
        let new = Config::load(path, &old.env).map_err(|e| e.to_string())?;
        super::check_folders(&old).map_err(|e| e.to_string())?;
        let mut later = Vec::new();
        for (what, changed) in [
            (
                "jobs_dir, data_dir",
                old.jobs_dir != new.jobs_dir || old.data_dir != new.data_dir,
            ),
            ("[api]", old.api != new.api),
            ("[realtime]", old.realtime != new.realtime),
            ("[batch]", old.batch != new.batch),
            ("[daemon]", old.daemon != new.daemon),
            (
                "[metrics]",
                old.metrics_port != new.metrics_port
                    || old.metrics_token_file != new.metrics_token_file,
            ),
            ("cache", old.cache != new.cache),
            ("[hooks]", old.on_job_done != new.on_job_done),
            ("[routes]", old.routes != new.routes),
        ] {
            if changed {
                tracing::warn!(
                    "{what} changed in {}; that takes effect at the next restart",
                    path.display()
                );
                later.push(what);
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
        crate::lock(&self.routing).reconfigure(settings, std::time::Instant::now());
        let mut message = format!(
            "configuration reloaded from {}: limits, reserve, budgets and prices are in force",
            path.display()
        );
        if !later.is_empty() {
            message.push_str(&format!(
                "; {} changed and take effect at the next restart",
                later.join(", ")
            ));
        }
        Ok(message)
    }
}

/// Writes the verdict whole (a temporary file renamed over the last one).
fn write_verdict(path: &std::path::Path, verdict: &Verdict) -> std::io::Result<()> {
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, serde_json::to_vec(verdict).unwrap_or_default())?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_of_routes_waits_for_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nightshift.toml");
        let before = "jobs_dir = \"jobs\"\ndata_dir = \"data\"\n";
        std::fs::write(&path, before).expect("config");
        let config = Config::load(&path, &Default::default()).expect("config");
        for folder in [&config.jobs_dir, &config.data_dir] {
            std::fs::create_dir_all(folder).expect("folder");
        }
        let limits = Live::new(config.clone());
        let mut reloader = Reloader {
            source: Some(path.clone()),
            rules: Live::new(Rules::from_config(&config)),
            routing: Arc::new(Mutex::new(Routing::new(
                vec![],
                Arc::new(move |model: &str| limits.get().class_limits(model)),
                QuotaSettings {
                    reserve: config.quota.reserve,
                    output_reservation: config.quota.output_reservation,
                    max_concurrency: config.realtime.concurrency,
                    initial_concurrency: 4,
                },
            ))),
            config: Live::new(config),
            verdict_path: dir.path().join("data").join(VERDICT_FILE),
            seq: 0,
            board: Board::default(),
        };
        std::fs::write(
            &path,
            format!("{before}[routes.main]\nkey_env = \"NIGHTSHIFT_KEY_MAIN\"\n"),
        )
        .expect("config");
        let verdict = reloader.reload();
        assert!(verdict.ok, "{verdict:?}");
        assert!(
            verdict
                .message
                .contains("[routes] changed and take effect at the next restart"),
            "{verdict:?}"
        );
    }
}
