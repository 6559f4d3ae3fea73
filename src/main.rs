//! The `nightshift` binary: parse the command line, set up logging, run, map errors to exit codes.
//! Nothing else: each subcommand is a file in `cli::commands`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use nightshift::cli::args::{Cli, Command};
use nightshift::cli::{EXIT_CONFIG, EXIT_NOPERM, EXIT_UNAVAILABLE};
use nightshift::config::ConfigError;
use nightshift::daemon::journal;
use nightshift::store::StoreError;

fn main() -> ExitCode {
    private_umask();
    limit_malloc_arenas();
    let cli = Cli::parse();
    if !cli.command.holds_sockets() {
        // `nightshift status | head -1` ends quietly, as `cat` would.
        nightshift::cli::signals::default_sigpipe();
    }
    // The demo draws its own progress; its log shows only what needs a person.
    let default_filter = match cli.command {
        Command::Demo { .. } => "nightshift=error",
        _ => "nightshift=info",
    };
    let to_journal = init_tracing(default_filter);
    match nightshift::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            if to_journal {
                // At priority 3, so `journalctl -p warning` shows why the service stopped.
                eprintln!(
                    "{}",
                    journal::lines(tracing::Level::ERROR, &format!("error: {e:#}"))
                );
            } else {
                eprintln!("error: {e:#}");
            }
            if e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<nightshift::files::Untrusted>().is_some()
            {
                ExitCode::from(EXIT_CONFIG)
            } else if matches!(
                e.downcast_ref::<StoreError>(),
                Some(StoreError::Missing { .. })
            ) {
                ExitCode::from(EXIT_UNAVAILABLE)
            } else if matches!(
                e.downcast_ref::<StoreError>(),
                Some(StoreError::Unreadable { .. } | StoreError::Unwritable { .. })
            ) {
                ExitCode::from(EXIT_NOPERM)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// glibc gives each thread that allocates an arena of its own, up to eight per core, and keeps
/// what each arena ever held: applying a large batch's results from the runtime's pool of
/// threads then grows the memory with the number of threads that took part, not with the work.
/// Two arenas serve the writer and everything else on the cores this runs on.
/// Everything nightshift creates is its owner's alone (the database and its WAL hold every prompt
/// and answer): the process umask is 077, whatever the caller's.
#[allow(unsafe_code)] // one libc call, before any thread starts
fn private_umask() {
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

#[allow(unsafe_code)] // one libc call, before any thread starts
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[allow(clippy::disallowed_methods)] // NO_COLOR is read here, at the edge
/// Sets up the logs; true when stderr is the journal.
fn init_tracing(default_filter: &str) -> bool {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Never a prompt or an answer in the logs, whatever RUST_LOG asks: PostgreSQL's client logs
    // each statement's parameters (the requests, the result lines) at debug.
    for quiet in ["tokio_postgres=info", "postgres=info"] {
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let journal = std::env::var("JOURNAL_STREAM").ok();
    if journal::is_journal(journal.as_deref(), journal::stderr_identity()) {
        // Under systemd: priorities the journal reads, and its timestamps instead of ours.
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_ansi(false);
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(journal::WithPriority(format))
            .init();
        return true;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    false
}
