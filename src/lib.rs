//! nightshift: runs large Claude API workloads under rate limits.
//!
//! A job file (JSONL in the Message Batches request format) dropped into `jobs_dir` is taken in by
//! intake, recorded in SQLite, routed per item by the planner to the Message Batches lane or the
//! real-time lane (paced by the quota controller), and its outcomes land once per item in a
//! results file in the batch-results format.
//!
//! The tree is the map. Each layer may import only the layers below it (`api` and `store` sit side
//! by side and do not know each other); `.ci/layers` checks it:
//!
//! | layer | what it holds | may import |
//! |---|---|---|
//! | [`model`] | the words of the job file and the results format, states as enums, what an answer came to | std, serde, jiff |
//! | [`policy`] | every pure decision, time passed in: planner, budgets, windows, prices, cron, quota, both lanes' outcome rules | model |
//! | [`config`] | TOML to typed settings; the environment is passed in, never read | policy, model |
//! | [`api`] | the HTTP client: wire types, classification of answers, messages, batches, the key | config, policy, model |
//! | [`store`] | SQLite: plain SQL over a transaction, typed rows, one writer thread | config, policy, model |
//! | [`lanes`] | intake, real-time, batch, results writer, schedules: read → decide → write in one `Store::call` | api, store, and below |
//! | [`daemon`] | start-up, shutdown order, reload, tasks, systemd, metrics | lanes and below |
//! | [`cli`] | one file per subcommand and per report view | everything |
//!
//! [`fake_api`] is the built-in fake Claude API (a product feature: the demo, the tests and the
//! benchmarks use it); it is its own tree and imports nothing of the others.
//!
//! Two helpers live at the root, for every layer: [`lock`], the single policy for poisoned locks,
//! and [`make_private`], the single policy for file modes.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fake_api;
pub mod lanes;
pub mod model;
pub mod policy;
pub mod store;

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a mutex; a lock poisoned by a panic elsewhere is taken over, not propagated. Everything
/// nightshift keeps behind a mutex (quota estimates, counters, pause times, the fake's state) is
/// whole after any single update, and the panic itself has already been reported; stopping every
/// other task too would only turn one failure into an outage. The one place locks are taken
/// (clippy bans `Mutex::lock` elsewhere).
#[allow(clippy::disallowed_methods)]
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes a file nightshift keeps (the database, results, copies of job files, backups) readable
/// by its owner only: 0600 for a file, 0700 for a folder, whatever the umask or the mode of the
/// file it was copied from. A symlink is left alone (never followed). `recurse`: the folder's
/// contents too.
pub fn make_private(path: &Path, recurse: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = if meta.is_dir() { 0o700 } else { 0o600 };
    if meta.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    if recurse && meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            make_private(&entry?.path(), true)?;
        }
    }
    Ok(())
}
