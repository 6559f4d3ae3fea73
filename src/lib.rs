//! nightshift: runs large Claude API workloads under rate limits.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fake_api;
pub mod lanes;
pub mod model;
pub mod policy;
pub mod store;
