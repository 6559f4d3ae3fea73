//! The command line: clap types only. `cli::run` dispatches them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// What `--version` prints after the name: `0.1.0 (commit 665b5a0c1d2e)`, the commit from
/// `build.rs` (`unknown` when the build had no git and no packaged record of it).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NIGHTSHIFT_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "nightshift",
    version = VERSION,
    about = "Runs large Claude API workloads under rate limits"
)]
pub struct Cli {
    /// The config file. Default: ./nightshift.toml if present, else /etc/nightshift/nightshift.toml
    /// if present, else built-in defaults (state in /var/lib/nightshift).
    #[arg(long, global = true, env = "NIGHTSHIFT_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground until SIGINT or SIGTERM.
    Run,
    /// Make the running daemon read its config file again, and wait for its verdict: exit 0 when
    /// the new config is in force, 78 when it was refused (the running one stays), 69 when no
    /// daemon answered. What the unit's ExecReload runs.
    Reload {
        /// How long to wait for the daemon's verdict.
        #[arg(long, default_value = "30", value_name = "SECONDS")]
        timeout_secs: u64,
        /// The daemon's pid (the unit passes $MAINPID); default: the one in data_dir/nightshift.lock.
        #[arg(long)]
        pid: Option<i32>,
    },
    /// Show every job with its progress and counts (`--watch`: live, until Ctrl-C).
    Status(StatusArgs),
    /// Show one job in detail, with its errored lines and why.
    Job {
        /// The job's name (its file's stem).
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show one item in full: state, lane, every call (outcome, request-id, retry-after), its
    /// batch, its cost, its result line, and the lines it had before a retry.
    Item {
        /// The job's name.
        job: String,
        /// The item's custom_id (a line without a usable one is nightshift:line:N).
        custom_id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Cancel a job: its pending items end canceled, its batches are canceled at the API. Calls
    /// already in flight finish.
    Cancel {
        /// The job's name.
        name: String,
    },
    /// Send a job's errored and expired items again (or those chosen): their history is kept,
    /// and the job's results file ends with each custom_id once, with the latest outcome.
    Retry {
        /// The job's name.
        job: String,
        /// The errored items (with neither flag nor --ids: errored and expired).
        #[arg(long)]
        errored: bool,
        /// The expired items.
        #[arg(long)]
        expired: bool,
        /// These custom_ids, one per line, whatever their outcome.
        #[arg(long, value_name = "FILE")]
        ids: Option<PathBuf>,
    },
    /// Clear finished jobs from `status` (kept for `job`, `item`, the ledger and the metrics), or
    /// with --purge --yes delete them: rows, results files and ingested job files.
    Clean {
        /// Only jobs finished at least this long ago (e.g. 12h, 7d).
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        /// Delete the jobs instead: their rows (the tenants' daily spend stays) and files.
        #[arg(long)]
        purge: bool,
        /// Confirms --purge.
        #[arg(long, requires = "purge")]
        yes: bool,
    },
    /// Pause a job or a tenant: its pending items wait until `resume` (calls in flight finish;
    /// batches already sent run on unless --cancel-batches). Survives restarts.
    Pause {
        #[command(flatten)]
        on: HoldArgs,
        /// Also cancel its batches under way at the API; their requests wait with the rest.
        #[arg(long)]
        cancel_batches: bool,
    },
    /// Let a paused job or tenant go again.
    Resume {
        #[command(flatten)]
        on: HoldArgs,
    },
    /// Stop a recurring job: its schedule is removed (runs already taken in go on).
    Unschedule {
        /// The schedule's name (its template's job name).
        name: String,
    },
    /// Per model class: the known limits, what remains, utilisation over the last minute, and the
    /// last throttling event.
    Limits(JsonFlag),
    /// Per route, endpoint and model: the last success, the first failure and the latest failure
    /// side by side, and who owned each 429 and 529 (self, foreign, acceleration, spend_cap,
    /// usage_limit, overloaded, gateway), which is what a support ticket needs.
    Diagnose {
        #[command(flatten)]
        flags: JsonFlag,
        /// Write a support bundle to this new file (JSON, private): per route and model the exact
        /// messages, times, request-ids, rate-limit headers, owner verdicts, sizes and
        /// concurrency, with no key, no prompt and no answer in it.
        #[arg(long, value_name = "FILE")]
        evidence: Option<PathBuf>,
    },
    /// Read a job file without sending anything: estimated tokens, cost through batches vs real
    /// time, how long real time would take under the configured limits, and which limit binds.
    Plan {
        /// The JSONL job file to read (as intake would; nothing is submitted).
        file: PathBuf,
        /// Count input tokens with the API's free count_tokens endpoint (needs the API key) instead
        /// of estimating them.
        #[arg(long)]
        count_tokens: bool,
        /// Check each request shape (model, tools, system and the other top-level fields) with one
        /// free count_tokens call, as the batch lane does before a batch: exit 65 if the API
        /// refuses any, naming the lines.
        #[arg(long)]
        check: bool,
        /// Most count_tokens calls per minute (that endpoint's own limit: 5,000 at the Start tier,
        /// 100 at the old Tier 1; 429s are waited out either way).
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
        count_tokens_rpm: u32,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Tokens and dollars per tenant, job, model or day, from the ledger of billed calls.
    Ledger(LedgerArgs),
    /// Write a job's results (the batch-results format, each custom_id once) from the store, on
    /// any host that shares it: exit 75 if the job is still running (what is there so far).
    Results {
        /// The job's name.
        job: String,
        /// Write them to FILE (replaced atomically, private) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a consistent copy of the database to FILE, also while the daemon runs.
    Backup {
        /// Where the copy goes: a new file (a backup never overwrites one).
        file: PathBuf,
    },
    /// Put a job file into the jobs folder atomically (copy to a hidden name, then rename).
    Submit {
        /// The JSONL job file. A sidecar FILE.toml beside it (same stem) goes along.
        file: PathBuf,
        /// The job's name, if not the file's stem.
        #[arg(long)]
        name: Option<String>,
    },
    /// Serve the built-in fake Claude API on 127.0.0.1.
    FakeApi(FakeApiArgs),
    /// Run the demo: the fake API and the daemon on jobs/example.jsonl, with progress and a summary.
    Demo {
        /// Where the demo keeps its config, jobs and results (made afresh).
        #[arg(long, default_value = "target/nightshift-demo")]
        dir: PathBuf,
    },
    /// Print a shell completion script: `nightshift completions bash >
    /// /etc/bash_completion.d/nightshift` (see the README for zsh and fish).
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `nightshift man > /usr/local/share/man/man1/nightshift.1`; with
    /// --dir, write it and a page per subcommand (nightshift-status.1, ...) into a folder.
    Man {
        /// Write nightshift.1 and every nightshift-SUBCOMMAND.1 into this folder (mode 0644),
        /// instead of printing nightshift.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Measure: intake throughput and memory, or the real-time lane's own overhead.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

impl Command {
    /// Whether the command writes to sockets: the daemon, the fake API, and the commands that run
    /// them in-process (demo, bench) or call the API (plan's --count-tokens and --check). These
    /// keep SIGPIPE ignored (`cli::signals::default_sigpipe` says why) and print through `out!`;
    /// every other command ends by SIGPIPE's default action when its reader goes.
    pub fn holds_sockets(&self) -> bool {
        matches!(
            self,
            Command::Run
                | Command::FakeApi(_)
                | Command::Demo { .. }
                | Command::Bench { .. }
                | Command::Plan { .. }
        )
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON (a documented, stable shape) instead of text.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Redraw progress per job and quota use per model class until Ctrl-C (plain lines, printed
    /// when something changes, when the output is not a terminal).
    #[arg(long)]
    pub watch: bool,
    /// Seconds between redraws with --watch.
    #[arg(long, default_value = "1", value_parser = seconds, requires = "watch")]
    pub interval: Duration,
}

/// A job by name, or a tenant.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct HoldArgs {
    /// The job's name.
    pub job: Option<String>,
    /// A tenant: every item of it, in every job.
    #[arg(long)]
    pub tenant: Option<String>,
}

impl HoldArgs {
    pub fn on(&self) -> crate::store::HoldOn {
        match (&self.job, &self.tenant) {
            (_, Some(tenant)) => crate::store::HoldOn::Tenant(tenant.clone()),
            (Some(job), None) => crate::store::HoldOn::Job(job.clone()),
            (None, None) => unreachable!("clap requires one of them"),
        }
    }
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON (a documented, stable shape) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LedgerArgs {
    /// Only this tenant's calls.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this job's calls (by name).
    #[arg(long)]
    pub job: Option<String>,
    /// From this time (RFC 3339, or a duration back from now such as 24h or 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Until this time (RFC 3339, or a duration back from now).
    #[arg(long)]
    pub until: Option<String>,
    /// Group by day, tenant, model or job.
    #[arg(long, default_value = "tenant", value_parser = ["day", "tenant", "model", "job"])]
    pub by: String,
    /// Print JSON (a documented, stable shape) instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV instead of a table.
    #[arg(long)]
    pub csv: bool,
}

#[derive(Debug, Args)]
pub struct FakeApiArgs {
    /// Port on 127.0.0.1 (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8787)]
    pub port: u16,
    /// Requests per minute per model class (each limit left out is the Start tier's: 1,000 RPM,
    /// 2,000,000 ITPM, 400,000 OTPM, and the answers carry the rate-limit headers as the API's do).
    #[arg(long, conflicts_with = "no_limits")]
    pub rpm: Option<u64>,
    /// Input tokens per minute per model class.
    #[arg(long, conflicts_with = "no_limits")]
    pub itpm: Option<u64>,
    /// Output tokens per minute per model class.
    #[arg(long, conflicts_with = "no_limits")]
    pub otpm: Option<u64>,
    /// No rate limits and no rate-limit headers (no real organization is unlimited; for
    /// benchmarks of nightshift's own speed).
    #[arg(long)]
    pub no_limits: bool,
    /// Seconds of refill each bucket holds.
    #[arg(long, default_value_t = 10.0)]
    pub burst_secs: f64,
    /// Latency added to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Fraction of requests answered 529 overloaded_error.
    #[arg(long, default_value_t = 0.0)]
    pub fail_529: f64,
    /// Fraction of requests answered 500 api_error.
    #[arg(long, default_value_t = 0.0)]
    pub fail_500: f64,
    /// Fraction of requests processed and then left unanswered (connection dropped).
    #[arg(long, default_value_t = 0.0)]
    pub drop: f64,
    /// Seconds a batch takes to end.
    #[arg(long, default_value = "2", value_parser = seconds)]
    pub batch_secs: Duration,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// An organization and its API keys, e.g. `--org org-a=sk-a1,sk-a2` (repeatable). Each has
    /// its own rate limits, prompt cache and batches, and workspace `wrkspc_ID`; a key of none is
    /// a 401. Without --org, one organization takes any key.
    #[arg(long = "org", value_name = "ID=KEY[,KEY...]", value_parser = org_spec)]
    pub orgs: Vec<crate::fake_api::FakeOrg>,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Intake of a generated job file: lines/s and peak memory.
    Ingest {
        /// Lines of the generated job file.
        #[arg(long, default_value_t = 1_000_000)]
        lines: u64,
    },
    /// The real-time lane against the fake API with no limits and no latency: items/s.
    Realtime {
        /// Items of the generated job, all for the real-time lane.
        #[arg(long, default_value_t = 20_000)]
        items: u64,
        /// Real-time calls in flight at once (the config's `realtime.concurrency`).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// The store alone, as the lanes load it: claims/s and results/s on SQLite and, with
    /// --postgres, on PostgreSQL beside it.
    Store {
        /// Real-time items claimed, then answered.
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
        items: u64,
        /// The URL of an empty PostgreSQL database to measure too (password from PGPASSWORD).
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Applying batch results: from the download's start to every line applied and synced.
    BatchResults {
        /// Lines of the generated batch job, and so of the results applied.
        #[arg(long, default_value_t = 100_000)]
        lines: u64,
    },
    /// A job sharing a prefix the job marks for the prompt cache, on tier-like limits, alone and
    /// beside interactive traffic: input tokens a minute against ITPM, hit rate, the binding
    /// limit as a % of what it allows, cost against the same calls uncached.
    Cache {
        /// `tier1` (the default: 50 RPM / 30,000 ITPM / 8,000 OTPM) or `fast`.
        #[arg(long)]
        profile: Option<String>,
        /// Seconds each run lasts.
        #[arg(long, default_value_t = 120)]
        secs: u64,
        /// Tokens of the shared, cached prefix.
        #[arg(long, default_value_t = 4_000)]
        prefix_tokens: u64,
        /// The job marks nothing: `cache = "auto"` is to find the prefix.
        #[arg(long)]
        auto: bool,
    },
    /// The quota controller against tier-like limits, alone and beside interactive traffic:
    /// throughput on the binding dimension as a % of the limit, 429s on both sides.
    Quota {
        /// `tier1` (50 RPM / 30,000 ITPM / 8,000 OTPM), `fast`, or either across two
        /// organizations (`tier1-two-orgs`, `fast-two-orgs`: three routes, two of them keys of
        /// the first organization); every profile when left out.
        #[arg(long)]
        profile: Option<String>,
        /// Seconds each run lasts (the reserve's cost shrinks over minutes).
        #[arg(long, default_value_t = 120)]
        secs: u64,
        /// Also run under the 2025 rule (the fake charges `max_tokens` up front).
        #[arg(long)]
        both_rules: bool,
    },
}

/// A number of seconds (`1`, `0.5`), kept within 0 and a day; what is not a finite number (`NaN`,
/// `inf`, a word) is refused with a message, never a panic.
fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !secs.is_finite() {
        return Err(format!("{text:?} is not a number of seconds"));
    }
    Duration::try_from_secs_f64(secs.clamp(0.0, 86_400.0)).map_err(|e| format!("{text:?}: {e}"))
}

/// `ID=KEY[,KEY...]`: an organization of the fake API and its keys.
fn org_spec(text: &str) -> Result<crate::fake_api::FakeOrg, String> {
    let usage = || format!("{text:?} is not ID=KEY[,KEY...]");
    let (id, keys) = text.split_once('=').ok_or_else(usage)?;
    let keys: Vec<&str> = keys.split(',').map(str::trim).collect();
    if id.trim().is_empty() || keys.iter().any(|k| k.is_empty()) {
        return Err(usage());
    }
    Ok(crate::fake_api::FakeOrg::new(id.trim(), keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help`, the completions and the man page are only as good as these strings: every
    /// subcommand and every argument has one (clap's own `--help`, `--version` and `help` have theirs).
    #[test]
    fn every_subcommand_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    let name = match arg.get_long() {
                        Some(long) => format!("--{long}"),
                        None => arg.get_id().to_string().to_uppercase(),
                    };
                    missing.push(format!("{path} {name}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut cli = <Cli as clap::CommandFactory>::command();
        // Built, so that the global --config and clap's own arguments are on every subcommand.
        cli.build();
        let mut missing = Vec::new();
        walk(&cli, "nightshift", &mut missing);
        assert!(
            missing.is_empty(),
            "without help text (a doc comment on the field or variant): {missing:#?}"
        );
    }

    #[test]
    fn seconds_are_checked_not_panicked_on() {
        assert_eq!(seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(seconds("2"), Ok(Duration::from_secs(2)));
        assert_eq!(seconds("-1"), Ok(Duration::ZERO), "clamped, as before");
        assert_eq!(seconds("1e9"), Ok(Duration::from_secs(86_400)));
        for bad in ["NaN", "inf", "-inf", "soon"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }
}
