//! The command line: [`args`] holds the clap types, [`run`] takes a parsed command to its own file
//! in [`commands`] (one per subcommand), and [`views`] are the reports they print (one per view).
//! `main.rs` only parses, sets up tracing and maps errors to exit codes.

/// `print!` for what the commands that keep SIGPIPE ignored print (demo, plan, bench, fake-api:
/// see [`args::Command::holds_sockets`]): a reader that has gone ends the process as SIGPIPE
/// ends the others, where `print!` would panic ("failed printing to stdout: Broken pipe").
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` as [`out!`] is `print!`.
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod args;
pub mod commands;
pub mod signals;
pub mod views;

use std::path::Path;
use std::process::ExitCode;

use args::{BenchCommand, Cli, Command};
use commands::*;

use crate::config::{Config, ConfigError, Env, Secret};

/// Exit codes: 0 ok, 1 failure, 2 bad usage (clap), 3 no such job, 65 the API refuses requests
/// of the file (`plan --check`; sysexits' EX_DATAERR), 69 no database yet or no daemon answered,
/// 77 a database this user may not read, or change (sysexits' EX_NOPERM), 78 bad configuration or
/// a refused reload (sysexits' EX_CONFIG).
pub const EXIT_NOT_FOUND: u8 = 3;
pub const EXIT_REFUSED: u8 = 65;
pub const EXIT_UNAVAILABLE: u8 = 69;
/// The job is still running: what `results` wrote is partial (sysexits' EX_TEMPFAIL).
pub const EXIT_TEMPFAIL: u8 = 75;
pub const EXIT_NOPERM: u8 = 77;
pub const EXIT_CONFIG: u8 = 78;

/// Runs a parsed command line; its exit code on success.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Run => run::run(config),
        Command::Reload { timeout_secs, pid } => {
            reload::run(config, pid, std::time::Duration::from_secs(timeout_secs))
        }
        Command::Status(flags) => status::run(config, &flags),
        Command::Job { name, json } => job::run(config, &name, json.json),
        Command::Item {
            job,
            custom_id,
            json,
        } => item::run(config, &job, &custom_id, json.json),
        Command::Limits(flags) => limits::run(config, flags.json),
        Command::Diagnose { flags, evidence } => {
            diagnose::run(config, flags.json, evidence.as_deref())
        }
        Command::Plan {
            file,
            count_tokens,
            check,
            count_tokens_rpm,
            json,
        } => plan::run(
            config,
            &file,
            plan::Asks {
                count_tokens,
                check,
                rpm: count_tokens_rpm,
            },
            json.json,
        ),
        Command::Ledger(args) => ledger::run(config, &args),
        Command::Cancel { name } => cancel::run(config, &name),
        Command::Retry {
            job,
            errored,
            expired,
            ids,
        } => retry::run(config, &job, errored, expired, ids.as_deref()),
        Command::Clean {
            older_than,
            purge,
            yes,
        } => clean::run(config, older_than.as_deref(), purge, yes),
        Command::Pause { on, cancel_batches } => pause::pause(config, &on.on(), cancel_batches),
        Command::Resume { on } => pause::resume(config, &on.on()),
        Command::Unschedule { name } => unschedule::run(config, &name),
        Command::Backup { file } => backup::run(config, &file),
        Command::Results { job, out } => results::run(config, &job, out.as_deref()),
        Command::Submit { file, name } => submit::run(config, &file, name.as_deref()),
        Command::Completions { shell } => completions::run(shell),
        Command::Man { dir } => man::run(dir.as_deref()),
        Command::FakeApi(args) => fake_api::run(&args),
        Command::Demo { dir } => runtime()?
            .block_on(demo::run(&dir))
            .map(|()| ExitCode::SUCCESS),
        Command::Bench { what } => match what {
            BenchCommand::Ingest { lines } => runtime()?.block_on(bench::ingest(lines)),
            BenchCommand::Quota {
                profile,
                secs,
                both_rules,
            } => runtime()?.block_on(bench::quota_runs(profile.as_deref(), secs, both_rules)),
            BenchCommand::Cache {
                profile,
                secs,
                prefix_tokens,
                auto,
            } => runtime()?.block_on(bench::cache_runs(
                profile.as_deref(),
                secs,
                prefix_tokens,
                auto,
            )),
            BenchCommand::BatchResults { lines } => {
                runtime()?.block_on(bench::batch_results(lines))
            }
            BenchCommand::Store { items, postgres } => {
                runtime()?.block_on(bench_store::run(items, postgres.as_deref()))
            }
            BenchCommand::Realtime { items, concurrency } => {
                runtime()?.block_on(bench::realtime(items, concurrency))
            }
        }
        .map(|()| ExitCode::SUCCESS),
    }
}

/// Who runs this command, for what it records (a pause): the user's name and uid, from the
/// password file (not the environment, which anyone can set).
fn operator() -> String {
    let uid = rustix::process::getuid().as_raw();
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)? == uid.to_string()).then(|| name.to_owned())
            })
        });
    match name {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// What the config takes from the environment: read here, at the edge, and passed in.
#[allow(clippy::disallowed_methods)]
pub fn env() -> Env {
    Env {
        anthropic_base_url: std::env::var("ANTHROPIC_BASE_URL").ok(),
        pgpassword: std::env::var("PGPASSWORD").ok().map(Secret),
    }
}

/// The config: `--config` (or `NIGHTSHIFT_CONFIG`), else the default places, else defaults.
fn load_config(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    Config::locate(explicit, &env())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Prints a report as pretty JSON (the documented `--json` shape) or as text.
fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<ExitCode> {
    if json {
        outln!("{}", serde_json::to_string_pretty(report)?);
    } else {
        out!("{}", text(report));
    }
    Ok(ExitCode::SUCCESS)
}

/// What [`out!`] and [`outln!`] do: write to standard output (line-buffered, so a line is written
/// when it ends). A reader that has gone ends the process as SIGPIPE would; any other failure (a
/// full disk behind `>`) ends it with the error, exit 1.
pub fn write_stdout(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(text) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            signals::end_as_by_sigpipe();
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `error: no job named "x" (see `nightshift status`)`, exit 3.
fn not_found(what: &str, name: &str) -> anyhow::Result<ExitCode> {
    eprintln!("error: no {what} named {name:?} (see `nightshift status`)");
    Ok(ExitCode::from(EXIT_NOT_FOUND))
}
