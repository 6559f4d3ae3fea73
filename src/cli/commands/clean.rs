//! `nightshift clean [--older-than DURATION] [--purge --yes]`: finished jobs leave `status`;
//! they stay in the store for `job`, `item`, the ledger and the metrics. `--purge` deletes them
//! instead — their rows, results files and ingested job files — and asks for `--yes`.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::{EXIT_REFUSED, load_config};
use crate::lanes::intake::INGESTED_DIR;
use crate::model::results::results_path;
use crate::store;

pub fn run(
    config: Option<&Path>,
    older_than: Option<&str>,
    purge: bool,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let age = match older_than {
        Some(text) => match crate::model::time::parse_duration_ms(text) {
            Some(ms) => ms,
            None => {
                eprintln!("error: --older-than {text:?}: give a duration such as 12h, 7d or 1h30m");
                return Ok(ExitCode::from(EXIT_REFUSED));
            }
        },
        None => 0,
    };
    if purge && !yes {
        eprintln!(
            "error: --purge deletes the finished jobs' rows (items, calls, ledger rows) and files for good; add --yes to do it (or leave --purge out to only clear them from status)"
        );
        return Ok(ExitCode::from(EXIT_REFUSED));
    }
    let before = store::now_ms() - age;
    let cleared = store::clean(&crate::lanes::store_location(&config), before, purge)?;
    if purge {
        for (name, source) in &cleared {
            let mut files = vec![results_path(&config.results_dir(), name)];
            if let Some(file) = Path::new(source).file_name() {
                let ingested = config.jobs_dir.join(INGESTED_DIR).join(file);
                files.push(ingested.with_extension("toml"));
                files.push(ingested);
            }
            for file in files {
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => eprintln!("warning: cannot remove {}: {e}", file.display()),
                }
            }
        }
    }
    let names: Vec<&str> = cleared.iter().map(|(n, _)| n.as_str()).collect();
    match (names.len(), purge) {
        (0, _) => println!(
            "no finished job to clear{}",
            older_than.map_or(String::new(), |d| format!(" older than {d}"))
        ),
        (n, false) => println!(
            "{n} finished jobs cleared from status (still in `nightshift job`, `item` and the ledger): {}",
            names.join(", ")
        ),
        (n, true) => println!(
            "{n} finished jobs purged (rows, results and job files): {}",
            names.join(", ")
        ),
    }
    Ok(ExitCode::SUCCESS)
}
