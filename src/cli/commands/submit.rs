//! `nightshift submit FILE`: puts a job file into the jobs folder the safe way (copy, then rename).

use std::path::Path;
use std::process::ExitCode;

use crate::cli::load_config;
use crate::lanes::intake;

pub fn run(config: Option<&Path>, file: &Path, name: Option<&str>) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let target = intake::submit(&config, file, name)?;
    println!("submitted {} as {}", file.display(), target.display());
    Ok(ExitCode::SUCCESS)
}
