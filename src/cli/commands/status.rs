//! `nightshift status`: every job with its progress and counts; `--watch` redraws it live.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::args::StatusArgs;
use crate::cli::views::{limits, status, watch};
use crate::cli::{load_config, print_report, runtime};
use crate::lanes::admission::Rules;
use crate::store;

pub fn run(config: Option<&Path>, flags: &StatusArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let rules = Rules::from_config(&config);
    let results_dir = config.results_dir();
    if flags.watch {
        let every = flags.interval.clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(3600),
        );
        runtime()?.block_on(watch::run(
            &crate::lanes::store_location(&config),
            every,
            |db| {
                let conn = store::open_read_only(db)?;
                let now = store::now_ms();
                Ok((
                    status::status(&conn, &config.data_dir, &results_dir, &rules, now)?,
                    limits::limits(&conn, now)?,
                ))
            },
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let conn = store::open_read_only(crate::lanes::store_location(&config))?;
    let mut report = status::status(
        &conn,
        &config.data_dir,
        &results_dir,
        &rules,
        store::now_ms(),
    )?;
    report.config = config.source_name();
    // On a terminal the jobs table fits its width; into a pipe or a file it has every column.
    let width = watch::terminal_width();
    print_report(flags.json, &report, |r| r.to_text_within(width))
}
