//! `nightshift cancel NAME`: asks the daemon to cancel a job (its pending items end canceled, its
//! batches are canceled at the API; calls in flight finish).

use std::path::Path;
use std::process::ExitCode;

use crate::cli::{load_config, not_found};
use crate::store;

pub fn run(config: Option<&Path>, name: &str) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    if !store::request_cancel(&crate::lanes::store_location(&config), name)? {
        return not_found("job", name);
    }
    println!(
        "cancel of {name} requested; the daemon carries it out within a second or two (see `nightshift job {name}`)"
    );
    Ok(ExitCode::SUCCESS)
}
