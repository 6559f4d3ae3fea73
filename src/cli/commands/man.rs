//! `nightshift man [--dir DIR]`: the man page in roff, made by clap_mangen from the same clap types
//! that parse the command line (and so with the same help text).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::args::Cli;

pub fn run(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    // Built, so that each subcommand knows its full name (nightshift-status) and carries the
    // global --config; without clap's `help` subcommand, which has no page of its own.
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    match dir {
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cli).render(&mut out)?;
            out.flush()?;
        }
        Some(dir) => {
            for path in write_pages(&cli, dir)? {
                println!("{}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the page of `cmd` and of each of its subcommands, depth first, into `dir`; their paths.
fn write_pages(cmd: &clap::Command, dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut written = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.extend(write_pages(sub, dir)?);
    }
    let page = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(page.get_filename());
    let mut roff = Vec::new();
    page.render(&mut roff)?;
    std::fs::write(&path, roff).with_context(|| format!("writing {}", path.display()))?;
    // A man page is for every user of the machine: 0644, not the 0600 that nightshift's umask of
    // 077 (kept for its state) would give it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("making {} readable", path.display()))?;
    written.push(path);
    Ok(written)
}
