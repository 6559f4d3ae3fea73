//! `nightshift backup FILE`: a consistent copy of the database while the daemon runs.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::load_config;
use crate::store;

pub fn run(config: Option<&Path>, file: &Path) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    store::backup(&crate::lanes::store_location(&config), file)?;
    println!(
        "backed up {} to {}",
        crate::lanes::store_location(&config),
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}
