//! The `nightshift` binary: parse the command line, set up logging, dispatch. Nothing else.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use nightshift::cli::args::{BenchCommand, Cli, Command};
use nightshift::cli::{bench, demo, report};
use nightshift::config::{Config, ConfigError};
use nightshift::lanes::intake;
use nightshift::store::StoreError;
use nightshift::{api, daemon, fake_api, store};

/// Exit codes: 0 ok, 1 failure, 2 bad usage (clap), 3 no such job, 69 no database yet,
/// 78 bad configuration (sysexits' EX_CONFIG).
const EXIT_NOT_FOUND: u8 = 3;
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo draws its own progress; its log shows only what needs a person.
    let default_filter = match cli.command {
        Command::Demo { .. } => "nightshift=error",
        _ => "nightshift=info",
    };
    init_tracing(default_filter);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else if matches!(
                e.downcast_ref::<StoreError>(),
                Some(StoreError::Missing { .. })
            ) {
                ExitCode::from(EXIT_UNAVAILABLE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The API key from `api.api_key_file`, the systemd credential or `ANTHROPIC_API_KEY`; its absence
/// is a configuration error naming where it was looked for.
fn load_key(config: &Config) -> Result<api::ApiKey, ConfigError> {
    api::ApiKey::load(&config.api).map_err(|e| ConfigError::Invalid {
        path: config.source.clone().unwrap_or_default(),
        key: if config.api.api_key_file.is_some() {
            "api.api_key_file".into()
        } else {
            "ANTHROPIC_API_KEY".into()
        },
        problem: format!("gives no key: {e}"),
    })
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run => {
            let config = Config::locate(cli.config.as_deref())?;
            let key = load_key(&config)?;
            runtime()?.block_on(async {
                daemon::run(config, key, shutdown_signal(), reload_signals()).await
            })?;
        }
        Command::Status(flags) if flags.watch => {
            let config = Config::locate(cli.config.as_deref())?;
            let rules = nightshift::lanes::admission::Rules::from_config(&config);
            let results_dir = config.results_dir();
            anyhow::ensure!(
                flags.interval.is_finite(),
                "--interval must be a number of seconds"
            );
            let every = std::time::Duration::from_secs_f64(flags.interval.clamp(0.1, 3600.0));
            runtime()?.block_on(nightshift::cli::watch::run(
                &config.db_path(),
                every,
                |db| {
                    let conn = store::open_read_only(db)?;
                    let now = store::now_ms();
                    Ok((
                        report::status(&conn, &results_dir, &rules, now)?,
                        report::limits(&conn, now)?,
                    ))
                },
            ))?;
        }
        Command::Status(flags) => {
            let config = Config::locate(cli.config.as_deref())?;
            let conn = store::open_read_only(&config.db_path())?;
            let status = report::status(
                &conn,
                &config.results_dir(),
                &nightshift::lanes::admission::Rules::from_config(&config),
                store::now_ms(),
            )?;
            print_report(flags.json, &status, |r| r.to_text())?;
        }
        Command::Job { name, json } => {
            let config = Config::locate(cli.config.as_deref())?;
            let conn = store::open_read_only(&config.db_path())?;
            let Some(job) = report::job(&conn, &config.results_dir(), &name, store::now_ms())?
            else {
                eprintln!("error: no job named {name:?} (see `nightshift status`)");
                return Ok(ExitCode::from(EXIT_NOT_FOUND));
            };
            print_report(json.json, &job, |r| r.to_text())?;
        }
        Command::Limits(flags) => {
            let config = Config::locate(cli.config.as_deref())?;
            let conn = store::open_read_only(&config.db_path())?;
            let report = report::limits(&conn, store::now_ms())?;
            print_report(flags.json, &report, |r| r.to_text())?;
        }
        Command::Diagnose(flags) => {
            let config = Config::locate(cli.config.as_deref())?;
            let conn = store::open_read_only(&config.db_path())?;
            let report = report::diagnose(&conn)?;
            print_report(flags.json, &report, |r| r.to_text())?;
        }
        Command::Plan {
            file,
            count_tokens,
            count_tokens_rpm,
            json,
        } => {
            use nightshift::cli::plan::{ApiCounter, estimated, plan};
            let config = Config::locate(cli.config.as_deref())?;
            let plan = if count_tokens {
                let client = api::ApiClient::new(&config.api, &load_key(&config)?)?;
                let mut counter = ApiCounter::new(client, count_tokens_rpm)?;
                plan(&config, &file, &mut |lines| {
                    let counts = counter.count(lines)?;
                    if counter.counted % 2560 == 0 {
                        eprintln!("counting input tokens: {} requests so far", counter.counted);
                    }
                    Ok(counts)
                })?
            } else {
                plan(&config, &file, &mut estimated)?
            };
            print_report(json.json, &plan, |r| r.to_text())?;
        }
        Command::Ledger(args) => {
            use nightshift::store::ledger::{Filter, GroupBy};
            let config = Config::locate(cli.config.as_deref())?;
            let conn = store::open_read_only(&config.db_path())?;
            let now = store::now_ms();
            let when = |text: &Option<String>, what: &str| -> anyhow::Result<Option<i64>> {
                let Some(text) = text else { return Ok(None) };
                match text.parse::<nightshift::model::job::Deadline>() {
                    Ok(nightshift::model::job::Deadline::At(ms)) => Ok(Some(ms)),
                    Ok(nightshift::model::job::Deadline::After(ms)) => Ok(Some(now - ms)),
                    Err(_) => anyhow::bail!(
                        "--{what} {text:?}: give an RFC 3339 time or a duration such as 24h or 7d"
                    ),
                }
            };
            let filter = Filter {
                tenant: args.tenant.clone(),
                job: args.job.clone(),
                since: when(&args.since, "since")?,
                until: when(&args.until, "until")?,
            };
            let by = match args.by.as_str() {
                "day" => GroupBy::Day,
                "model" => GroupBy::Model,
                "job" => GroupBy::Job,
                _ => GroupBy::Tenant,
            };
            let report = report::ledger(&conn, by, &filter)?;
            let csv = args.csv;
            print_report(args.json, &report, |r| {
                if csv { r.to_csv() } else { r.to_text() }
            })?;
        }
        Command::Cancel { name } => {
            let config = Config::locate(cli.config.as_deref())?;
            if !store::request_cancel(&config.db_path(), &name)? {
                eprintln!("error: no job named {name:?} (see `nightshift status`)");
                return Ok(ExitCode::from(EXIT_NOT_FOUND));
            }
            println!(
                "cancel of {name} requested; the daemon carries it out within a second or two (see `nightshift job {name}`)"
            );
        }
        Command::Unschedule { name } => {
            let config = Config::locate(cli.config.as_deref())?;
            if !store::remove_schedule(&config.db_path(), &name)? {
                eprintln!("error: no schedule named {name:?} (see `nightshift status`)");
                return Ok(ExitCode::from(EXIT_NOT_FOUND));
            }
            println!("schedule {name} removed; runs already taken in go on");
        }
        Command::Backup { file } => {
            let config = Config::locate(cli.config.as_deref())?;
            store::backup(&config.db_path(), &file)?;
            println!(
                "backed up {} to {}",
                config.db_path().display(),
                file.display()
            );
        }
        Command::Submit { file, name } => {
            let config = Config::locate(cli.config.as_deref())?;
            let target = intake::submit(&config, &file, name.as_deref())?;
            println!("submitted {} as {}", file.display(), target.display());
        }
        Command::FakeApi(args) => {
            let fake_config = demo::fake_config_from_args(&args);
            runtime()?.block_on(async move {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
                let fake = fake_api::FakeApi::start(fake_config, addr)
                    .await
                    .with_context(|| format!("starting the fake API on {addr}"))?;
                println!("fake Claude API listening on {}", fake.base_url());
                println!(
                    "use it with: ANTHROPIC_BASE_URL={} ANTHROPIC_API_KEY=any",
                    fake.base_url()
                );
                shutdown_signal().await;
                fake.shutdown().await;
                anyhow::Ok(())
            })?;
        }
        Command::Demo { dir } => runtime()?.block_on(demo::run(&dir))?,
        Command::Bench { what } => match what {
            BenchCommand::Ingest { lines } => runtime()?.block_on(bench::ingest(lines))?,
            BenchCommand::Quota {
                profile,
                secs,
                both_rules,
            } => runtime()?.block_on(async move {
                let profiles: Vec<bench::Profile> = bench::PROFILES
                    .into_iter()
                    .filter(|p| profile.as_deref().is_none_or(|want| want == p.name))
                    .collect();
                anyhow::ensure!(!profiles.is_empty(), "unknown profile; use tier1 or fast");
                let rules: &[bool] = if both_rules { &[false, true] } else { &[false] };
                for p in profiles {
                    for &rule in rules {
                        for interactive in [false, true] {
                            let run = bench::quota(p, secs, interactive, rule).await?;
                            println!("{}", run.to_text());
                        }
                    }
                }
                anyhow::Ok(())
            })?,
            BenchCommand::Realtime { items, concurrency } => {
                runtime()?.block_on(bench::realtime(items, concurrency))?
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a report as pretty JSON (the documented `--json` shape) or as text.
fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", text(report));
    }
    Ok(())
}

/// Resolves on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
/// A message per SIGHUP: reload the config file.
fn reload_signals() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    if tx.send(()).is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => tracing::error!(error = %e, "cannot listen for SIGHUP; reloads need a restart"),
    }
    rx
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops nightshift");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
