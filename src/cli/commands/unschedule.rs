//! `nightshift unschedule NAME`: removes a recurring job's schedule (runs already taken in go on).

use std::path::Path;
use std::process::ExitCode;

use crate::cli::{load_config, not_found};
use crate::store;

pub fn run(config: Option<&Path>, name: &str) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    if !store::remove_schedule(&crate::lanes::store_location(&config), name)? {
        return not_found("schedule", name);
    }
    println!("schedule {name} removed; runs already taken in go on");
    Ok(ExitCode::SUCCESS)
}
