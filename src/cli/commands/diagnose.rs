//! `nightshift diagnose`: per endpoint and model, the last success, the first failure and the
//! latest failure side by side (what a support ticket needs).

use std::path::Path;
use std::process::ExitCode;

use crate::cli::views::diagnose;
use crate::cli::{load_config, print_report};
use crate::store;

pub fn run(config: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let conn = store::open_read_only(&config.db_path())?;
    let report = diagnose::diagnose(&conn)?;
    print_report(json, &report, |r| r.to_text())
}
