//! `nightshift limits`: per model class, the known limits, what remains, utilisation over the last
//! minute and the last throttling event.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::views::limits;
use crate::cli::{load_config, print_report};
use crate::store;

pub fn run(config: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let conn = store::open_read_only(crate::lanes::store_location(&config))?;
    let report = limits::limits(&conn, store::now_ms())?;
    print_report(json, &report, |r| r.to_text())
}
