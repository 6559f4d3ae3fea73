//! `nightshift pause JOB | --tenant T` and `nightshift resume`: pending items wait (calls in
//! flight finish; batches already sent run on unless `--cancel-batches`), until resumed. The hold
//! is a row in the database, so it survives restarts, and works with or without a daemon running.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::{load_config, not_found, operator};
use crate::store::{self, HoldOn};

pub fn pause(config: Option<&Path>, on: &HoldOn, cancel_batches: bool) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let Some(new) = store::pause(
        &crate::lanes::store_location(&config),
        on,
        &operator(),
        cancel_batches,
    )?
    else {
        return not_found("job", name(on));
    };
    let what = describe(on);
    if new {
        println!(
            "{what} paused: its pending items wait (calls in flight finish{}); `nightshift resume{}` lets them go",
            if cancel_batches {
                ", its batches under way are canceled and their requests wait too"
            } else {
                ", batches already sent run on"
            },
            resume_args(on)
        );
    } else {
        println!("{what} was paused already (see `nightshift status`)");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn resume(config: Option<&Path>, on: &HoldOn) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let Some(released) = store::resume(&crate::lanes::store_location(&config), on)? else {
        return not_found("job", name(on));
    };
    let what = describe(on);
    if released {
        println!("{what} resumed: its pending items go again (unless another pause holds them)");
    } else {
        println!("{what} was not paused");
    }
    Ok(ExitCode::SUCCESS)
}

fn name(on: &HoldOn) -> &str {
    match on {
        HoldOn::Job(name) | HoldOn::Tenant(name) => name,
    }
}

fn describe(on: &HoldOn) -> String {
    match on {
        HoldOn::Job(name) => format!("job {name}"),
        HoldOn::Tenant(tenant) => format!("tenant {tenant}"),
    }
}

fn resume_args(on: &HoldOn) -> String {
    match on {
        HoldOn::Job(name) => format!(" {name}"),
        HoldOn::Tenant(tenant) => format!(" --tenant {tenant}"),
    }
}
