//! `nightshift job NAME`: one job in detail, with its errored lines and why.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::views::job;
use crate::cli::{load_config, not_found, print_report};
use crate::store;

pub fn run(config: Option<&Path>, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let conn = store::open_read_only(crate::lanes::store_location(&config))?;
    match job::job(&conn, &config.results_dir(), name, store::now_ms())? {
        Some(report) => print_report(json, &report, |r| r.to_text()),
        None => not_found("job", name),
    }
}
