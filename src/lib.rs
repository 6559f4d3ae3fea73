//! nightshift: runs large Claude API workloads under rate limits.
//!
//! A job file (JSONL in the Message Batches request format) dropped into `jobs_dir` is taken in by
//! [`intake`], recorded in SQLite by [`store`], routed by the [`planner`] to the [`batch`] lane or
//! the [`realtime`] lane (paced by [`quota`]), and its outcomes land in a results file written by
//! [`results`]. [`daemon`] wires them together;
//! [`report`] is what the CLI shows. [`fake_api`] is the built-in fake Claude API used by the tests,
//! the demo and the benchmarks.

pub mod api;
pub mod batch;
pub mod bench;
pub mod budget;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod fake_api;
pub mod intake;
pub mod job;
pub mod metrics;
pub mod plan;
pub mod planner;
pub mod prices;
pub mod quota;
pub mod realtime;
pub mod report;
pub mod results;
pub mod schedule;
pub mod store;
pub mod systemd;
pub mod watch;
pub mod window;
