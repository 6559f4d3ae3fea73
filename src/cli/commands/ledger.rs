//! `nightshift ledger`: every billed call, filtered and grouped, as a table, JSON or CSV.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::args::LedgerArgs;
use crate::cli::views::ledger;
use crate::cli::{load_config, print_report};
use crate::model::job::Deadline;
use crate::store;
use crate::store::ledger::{Filter, GroupBy};

pub fn run(config: Option<&Path>, args: &LedgerArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let conn = store::open_read_only(crate::lanes::store_location(&config))?;
    let now = store::now_ms();
    let when = |text: &Option<String>, what: &str| -> anyhow::Result<Option<i64>> {
        let Some(text) = text else { return Ok(None) };
        match text.parse::<Deadline>() {
            Ok(Deadline::At(ms)) => Ok(Some(ms)),
            Ok(Deadline::After(ms)) => Ok(Some(now - ms)),
            Err(_) => anyhow::bail!(
                "--{what} {text:?}: give an RFC 3339 time or a duration such as 24h or 7d"
            ),
        }
    };
    let filter = Filter {
        tenant: args.tenant.clone(),
        job: args.job.clone(),
        since: when(&args.since, "since")?,
        until: when(&args.until, "until")?,
    };
    let by = match args.by.as_str() {
        "day" => GroupBy::Day,
        "model" => GroupBy::Model,
        "job" => GroupBy::Job,
        _ => GroupBy::Tenant,
    };
    let report = ledger::ledger(&conn, by, &filter)?;
    let csv = args.csv;
    print_report(args.json, &report, |r| {
        if csv { r.to_csv() } else { r.to_text() }
    })
}
