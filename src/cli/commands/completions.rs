//! `nightshift completions SHELL`: a completion script for bash, zsh, fish, elvish or PowerShell,
//! made by clap_complete from the same clap types that parse the command line, so it never lags
//! behind a new subcommand or flag.

use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::args::Cli;

pub fn run(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut cli = Cli::command();
    clap_complete::generate(shell, &mut cli, "nightshift", &mut std::io::stdout().lock());
    Ok(ExitCode::SUCCESS)
}
