//! `nightshift item JOB CUSTOM_ID`: one item in full (state, lane, every call, batch, cost,
//! result line, and the lines it had before a retry).

use std::path::Path;
use std::process::ExitCode;

use crate::cli::views::item::{ItemLookup, item};
use crate::cli::{EXIT_NOT_FOUND, load_config, not_found, print_report};
use crate::store;

pub fn run(
    config: Option<&Path>,
    job: &str,
    custom_id: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let conn = store::open_read_only(crate::lanes::store_location(&config))?;
    match item(&conn, job, custom_id)? {
        ItemLookup::Found(report) => print_report(json, &*report, |r| r.to_text()),
        ItemLookup::NoJob => not_found("job", job),
        ItemLookup::NoItem => {
            eprintln!(
                "error: job {job} has no item {custom_id:?} (a line without a usable custom_id is nightshift:line:N; see `nightshift job {job}`)"
            );
            Ok(ExitCode::from(EXIT_NOT_FOUND))
        }
    }
}
