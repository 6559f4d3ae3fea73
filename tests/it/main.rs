//! The integration tests: one binary (CI links once), a module per area. Each runs the real
//! daemon (in-process or as the built binary) against the built-in fake API on 127.0.0.1:0, in
//! temp dirs; `common` holds the fixtures.

mod common;

mod bad_input;
mod batches;
mod budgets;
mod cache;
mod cli;
mod end_to_end;
mod failures;
mod faults;
mod ledger;
mod metrics;
mod operator;
mod page;
mod pg;
mod plan;
mod preflight;
mod quota;
mod restart;
mod routes;
mod routes_batch;
mod schedules;
mod sdk;
mod secrets;
mod service;
mod several;
mod trust;
mod windows;
