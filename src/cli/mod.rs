//! The command line.

pub mod args;
pub mod bench;
pub mod demo;
pub mod plan;
pub mod report;
pub mod watch;
