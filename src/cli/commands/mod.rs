//! One file per subcommand: each reads what it needs, does it, and prints through a view.

pub mod backup;
pub mod bench;
pub mod bench_store;
pub mod cancel;
pub mod clean;
pub mod completions;
pub mod demo;
pub mod diagnose;
pub mod fake_api;
pub mod item;
pub mod job;
pub mod ledger;
pub mod limits;
pub mod man;
pub mod pause;
pub mod plan;
pub mod reload;
pub mod results;
pub mod retry;
pub mod run;
pub mod status;
pub mod submit;
pub mod unschedule;
