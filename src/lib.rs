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
//! and [`files`], the single policy for file modes, trusted folders and symlinks.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fake_api;
pub mod files;
pub mod lanes;
pub mod model;
pub mod policy;
pub mod store;

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
