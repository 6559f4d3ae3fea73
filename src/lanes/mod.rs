//! The lanes: where decisions meet the world. Each reads what it needs from the store, decides
//! with `policy`, and writes the outcome in the same `Store::call`, so admission stays atomic.
//!
//! - [`intake`]: job files in, validated and planned, into the store.
//! - [`admission`]: budget admission, in the transaction that sends an item.
//! - [`realtime`]: paced real-time calls; [`calls`] counts them for the metrics.
//! - [`batch`]: the Message Batches lane.
//! - [`routes`]: what both lanes share of the routes (learning, pausing, publishing).
//! - [`results`]: the results files.
//! - [`schedules`]: recurring jobs fired into the jobs folder.

pub mod admission;
pub mod batch;
pub mod calls;
pub mod health;
pub mod hooks;
pub mod intake;
pub mod realtime;
pub mod results;
pub mod routes;
pub mod schedules;

/// Where the config says the store is: `[store] url` (PostgreSQL), else SQLite in `data_dir`.
pub fn store_location(config: &crate::config::Config) -> crate::store::Location {
    crate::store::Location::new(
        config.db_path(),
        config.store.url.as_deref(),
        config.store.password_file.as_deref(),
        config.env.pgpassword.as_ref().map(|s| s.0.as_str()),
    )
}
