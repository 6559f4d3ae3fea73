//! The daemon's configuration: a TOML file, checked strictly at start.
//!
//! Unknown keys are an error (a typo must not silently fall back to a default), and every error names
//! the setting and the file. Relative paths in the file are taken relative to the file's folder, so a
//! config works the same whatever the working directory.

pub mod routes;
pub mod sidecar;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::policy::quota::ModelLimits;
pub use routes::{DEFAULT_ROUTE, KeySource, RouteConfig, RouteKind, Tenants};

/// Where the config is looked for when `--config` is not given (and `NIGHTSHIFT_CONFIG` is unset).
pub const DEFAULT_CONFIG_PATHS: [&str; 2] = ["nightshift.toml", "/etc/nightshift/nightshift.toml"];
/// Where state goes when the config does not say: the systemd `StateDirectory=nightshift`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/nightshift";
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
const KNOWN_VERSIONS: [&str; 2] = ["2023-06-01", "2026-10-21"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: setting `{key}` {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// The file as written. Every table denies unknown fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    jobs_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    cache: Option<String>,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    realtime: RawRealtime,
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    batch: RawBatch,
    #[serde(default)]
    quota: RawQuota,
    #[serde(default)]
    limits: BTreeMap<String, ModelLimits>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    windows: BTreeMap<String, RawWindow>,
    #[serde(default)]
    prices: BTreeMap<String, RawPrice>,
    #[serde(default)]
    budgets: BTreeMap<String, RawBudget>,
    #[serde(default)]
    hooks: RawHooks,
    /// None: no `[routes]` table (one default route); Some(empty): an empty one (an error).
    routes: Option<BTreeMap<String, routes::RawRoute>>,
    #[serde(default)]
    store: RawStore,
}

/// `[store]`: where the jobs, items and ledger are kept. Without `url`, SQLite in `data_dir`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
    password_file: Option<PathBuf>,
    lease_secs: Option<u64>,
}

/// `[hooks]`: commands run when things happen (no shell: program, then its arguments).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    on_job_done: Option<Vec<String>>,
}

/// `[windows.<class>]`: when that priority class may run.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    hours: String,
    timezone: Option<String>,
    when_idle: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    port: Option<u16>,
    token_file: Option<PathBuf>,
}

/// `[prices."model"]`: USD per million tokens. Cache prices default to 1.25× (5-minute write),
/// 2× (1-hour write) and 0.1× (read) the input price.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: f64,
    output: f64,
    cache_write: Option<f64>,
    cache_write_1h: Option<f64>,
    cache_read: Option<f64>,
}

/// `[budgets."tenant"]` (or `[budgets."*"]` for every tenant without its own).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    daily_usd: Option<f64>,
    monthly_usd: Option<f64>,
    on_daily: Option<String>,
    on_monthly: Option<String>,
    downgrade_to: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    base_url: Option<String>,
    anthropic_version: Option<String>,
    api_key_file: Option<PathBuf>,
    timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRealtime {
    concurrency: Option<usize>,
    max_attempts: Option<u32>,
    backoff_min_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    reserve: Option<f64>,
    tier: Option<String>,
    output_reservation: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    max_requests: Option<u64>,
    max_bytes_mb: Option<u64>,
    max_wait_secs: Option<u64>,
    poll_min_ms: Option<u64>,
    poll_max_ms: Option<u64>,
    rpm: Option<u64>,
    preflight: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    scan_interval_ms: Option<u64>,
    shutdown_grace_secs: Option<u64>,
    disk_low_mb: Option<u64>,
    readers_group: Option<String>,
}

/// What the config takes from the process environment. The caller (the CLI) reads it and passes
/// it in; nothing in this module reads the environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Env {
    /// `ANTHROPIC_BASE_URL`, as the official SDKs read it: used when the config sets no
    /// `api.base_url`.
    pub anthropic_base_url: Option<String>,
    /// `PGPASSWORD`: the PostgreSQL store's password when `[store] password_file` names none.
    pub pgpassword: Option<Secret>,
}

/// A secret from the environment: shown as `***` by `Debug`, so no log or message prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The checked configuration the rest of the program uses.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any (for messages).
    pub source: Option<PathBuf>,
    /// The environment it was read with (a reload reads the file again with the same).
    pub env: Env,
    pub jobs_dir: PathBuf,
    pub data_dir: PathBuf,
    /// `cache`: whether jobs without their own `cache` get breakpoints placed (default auto).
    pub cache: crate::model::job::CacheMode,
    pub api: ApiSettings,
    pub realtime: RealtimeSettings,
    pub daemon: DaemonSettings,
    pub batch: BatchSettings,
    pub quota: QuotaConfig,
    /// Keyed by model id; the key `default` applies to models without their own entry.
    pub limits: BTreeMap<String, ModelLimits>,
    /// The list prices with the config's overrides.
    pub prices: crate::policy::prices::PriceTable,
    /// Time windows per priority class.
    pub windows: crate::policy::window::Windows,
    /// The Prometheus endpoint's port on 127.0.0.1 (`[metrics] port`); None: off. 0 picks a free
    /// port (see `nightshift status`).
    pub metrics_port: Option<u16>,
    /// A file holding the bearer token a scrape must send (`[metrics] token_file`); None: none
    /// is asked. Read by the daemon at start; the token is never logged.
    pub metrics_token_file: Option<PathBuf>,
    pub budgets: crate::policy::budget::Budgets,
    /// `[hooks] on_job_done`: the program (resolved against the config's folder) and its
    /// arguments, run when a job ends. Read at start.
    pub on_job_done: Option<Vec<String>>,
    /// `[routes.<name>]`, sorted by name; never empty. Without `[routes]`, one route named
    /// [`DEFAULT_ROUTE`] with today's key chain and `[api] base_url`. Read at start.
    pub routes: Vec<RouteConfig>,
    /// `[store]`. Read at start.
    pub store: StoreSettings,
}

/// `[store]`: None for `url` is SQLite in `data_dir` (the default, for one daemon); a PostgreSQL
/// URL is the store several daemons share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// `postgres://USER@HOST:PORT/DATABASE`, without a password.
    pub url: Option<String>,
    /// The file holding the password (else PGPASSWORD); read when connecting, never kept.
    pub password_file: Option<PathBuf>,
    /// `lease_secs`: how long a daemon's hold on an item in flight or a batch lasts unless its
    /// heartbeat renews it; after that another daemon takes the work over.
    pub lease: Duration,
}

/// The default `[store] lease_secs`: six heartbeats.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

impl Default for StoreSettings {
    fn default() -> StoreSettings {
        StoreSettings {
            url: None,
            password_file: None,
            lease: DEFAULT_LEASE,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    pub base_url: String,
    pub anthropic_version: String,
    /// A file holding the API key (e.g. a systemd credential); `ANTHROPIC_API_KEY` is used otherwise.
    /// The default route's (without `[routes]`); an error with `[routes]`.
    pub api_key_file: Option<PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RealtimeSettings {
    /// Most calls in flight at once, over all models.
    pub concurrency: usize,
    /// Most failed attempts (5xx, 529, connection errors, unknown outcomes) before an item ends
    /// `errored`. Waiting out a rate-limit 429 does not count.
    pub max_attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// The quota controller's settings.
#[derive(Debug, Clone)]
pub struct QuotaConfig {
    /// Fraction of each bucket's capacity left to `interactive` work (default 0.2).
    pub reserve: f64,
    /// A tier preset for models without their own `[limits]` entry (`start`, `build`, `scale`,
    /// `tier1`..`tier4`).
    pub tier: Option<String>,
    pub output_reservation: crate::policy::quota::OutputReservation,
}

/// The Message Batches lane.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSettings {
    /// Most requests per batch (the API allows 100,000).
    pub max_requests: u64,
    /// Most bytes of request bodies per batch (the API allows 256 MB); the body is built in memory.
    pub max_bytes: u64,
    /// Items wait at most this long to be packed when their job is still being read.
    pub max_wait: Duration,
    /// The first poll of a batch comes this long after creation; each next one 1.5 times later…
    pub poll_min: Duration,
    /// … up to this.
    pub poll_max: Duration,
    /// Calls per minute to the batch endpoints (all of them share one limit at the API).
    pub rpm: u64,
    /// Count one request per shape with `count_tokens` before a batch is created, to error what
    /// the API refuses in seconds (`[batch] preflight`, default on).
    pub preflight: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    pub scan_interval: Duration,
    pub shutdown_grace: Duration,
    /// Under this many free bytes on the data dir's disk, `status` says the disk is low.
    pub disk_low_bytes: u64,
    /// A group (name or gid) whose members may read what the daemon keeps with the CLI
    /// (`[daemon] readers_group`): files 0640, folders 2750 in it. None: nightshift's user alone.
    pub readers_group: Option<String>,
}

impl Config {
    /// Finds and loads the config: `explicit` (from `--config` or `NIGHTSHIFT_CONFIG`) must exist;
    /// otherwise the first of [`DEFAULT_CONFIG_PATHS`] that exists; otherwise built-in defaults.
    pub fn locate(explicit: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
        if let Some(path) = explicit {
            return Config::load(path, env);
        }
        for candidate in DEFAULT_CONFIG_PATHS {
            let path = Path::new(candidate);
            if path.is_file() {
                return Config::load(path, env);
            }
        }
        Config::from_raw(RawConfig::default(), None, Path::new("/"), env)
    }

    pub fn load(path: &Path, env: &Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path, env)
    }

    /// Parses config text as if read from `path` (relative paths resolve against its folder).
    pub fn parse(text: &str, path: &Path, env: &Env) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: toml_error(&e, text),
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Config::from_raw(raw, Some(path.to_owned()), base, env)
    }

    fn from_raw(
        raw: RawConfig,
        source: Option<PathBuf>,
        base: &Path,
        env: &Env,
    ) -> Result<Config, ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: source
                .clone()
                .unwrap_or_else(|| PathBuf::from("(built-in defaults)")),
            key: key.to_owned(),
            problem,
        };
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let data_dir = resolve(
            raw.data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        );
        let jobs_dir = resolve(raw.jobs_dir.unwrap_or_else(|| data_dir.join("jobs")));

        // As in the official SDKs: an explicit setting wins, then ANTHROPIC_BASE_URL, then the default.
        let base_url = raw
            .api
            .base_url
            .or_else(|| env.anthropic_base_url.clone().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        let base_url = base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
            return Err(invalid(
                "api.base_url",
                format!(
                    "is {base_url:?}; it must start with https:// (or http:// for a local fake)"
                ),
            ));
        }
        let anthropic_version = raw
            .api
            .anthropic_version
            .unwrap_or_else(|| DEFAULT_ANTHROPIC_VERSION.to_owned());
        if !KNOWN_VERSIONS.contains(&anthropic_version.as_str()) {
            return Err(invalid(
                "api.anthropic_version",
                format!(
                    "is {anthropic_version:?}; known versions are {}",
                    KNOWN_VERSIONS.join(", ")
                ),
            ));
        }
        let timeout_secs = raw.api.timeout_secs.unwrap_or(600);
        if timeout_secs == 0 {
            return Err(invalid("api.timeout_secs", "must be at least 1".into()));
        }

        let concurrency = raw.realtime.concurrency.unwrap_or(32);
        if !(1..=10_000).contains(&concurrency) {
            return Err(invalid(
                "realtime.concurrency",
                format!("is {concurrency}; it must be between 1 and 10000"),
            ));
        }
        let max_attempts = raw.realtime.max_attempts.unwrap_or(8);
        if max_attempts == 0 {
            return Err(invalid(
                "realtime.max_attempts",
                "must be at least 1".into(),
            ));
        }
        let backoff_min = Duration::from_millis(raw.realtime.backoff_min_ms.unwrap_or(500));
        let backoff_max = Duration::from_millis(raw.realtime.backoff_max_ms.unwrap_or(60_000));
        if backoff_min.is_zero() || backoff_max < backoff_min {
            return Err(invalid(
                "realtime.backoff_min_ms",
                "must be at least 1 and not above realtime.backoff_max_ms".into(),
            ));
        }

        for (model, limits) in &raw.limits {
            for (dim, value) in [
                ("rpm", limits.rpm),
                ("itpm", limits.itpm),
                ("otpm", limits.otpm),
            ] {
                if value == Some(0) {
                    return Err(invalid(
                        &format!("limits.\"{model}\".{dim}"),
                        "is 0; leave it out to not pace that dimension".into(),
                    ));
                }
            }
        }

        let max_requests = raw.batch.max_requests.unwrap_or(50_000);
        if !(1..=100_000).contains(&max_requests) {
            return Err(invalid(
                "batch.max_requests",
                format!("is {max_requests}; the API takes 1 to 100000 requests per batch"),
            ));
        }
        let max_bytes_mb = raw.batch.max_bytes_mb.unwrap_or(64);
        if !(1..=256).contains(&max_bytes_mb) {
            return Err(invalid(
                "batch.max_bytes_mb",
                format!("is {max_bytes_mb}; the API takes batches of up to 256 MB"),
            ));
        }
        let poll_min = Duration::from_millis(raw.batch.poll_min_ms.unwrap_or(5_000).max(10));
        let poll_max = Duration::from_millis(raw.batch.poll_max_ms.unwrap_or(300_000));
        if poll_max < poll_min {
            return Err(invalid(
                "batch.poll_max_ms",
                "must not be below batch.poll_min_ms".into(),
            ));
        }
        let batch = BatchSettings {
            max_requests,
            max_bytes: max_bytes_mb << 20,
            max_wait: Duration::from_secs(raw.batch.max_wait_secs.unwrap_or(60)),
            poll_min,
            poll_max,
            rpm: raw.batch.rpm.unwrap_or(100).max(1),
            preflight: raw.batch.preflight.unwrap_or(true),
        };

        let reserve = raw.quota.reserve.unwrap_or(0.2);
        if !(0.0..0.9).contains(&reserve) {
            return Err(invalid(
                "quota.reserve",
                format!("is {reserve}; it must be at least 0 and below 0.9"),
            ));
        }
        if let Some(tier) = &raw.quota.tier
            && !crate::policy::quota::TIERS.contains(&tier.as_str())
        {
            return Err(invalid(
                "quota.tier",
                format!(
                    "is {tier:?}; known tiers are {}",
                    crate::policy::quota::TIERS.join(", ")
                ),
            ));
        }
        let output_reservation = match raw.quota.output_reservation.as_deref() {
            None | Some("max_tokens") => crate::policy::quota::OutputReservation::MaxTokens,
            Some("learned") => crate::policy::quota::OutputReservation::Learned,
            Some(other) => {
                return Err(invalid(
                    "quota.output_reservation",
                    format!("is {other:?}; it must be \"max_tokens\" or \"learned\""),
                ));
            }
        };
        let quota = QuotaConfig {
            reserve,
            tier: raw.quota.tier,
            output_reservation,
        };

        let cache = match raw.cache.as_deref() {
            None => crate::model::job::CacheMode::Auto,
            Some(text) => text.parse().map_err(|e: String| invalid("cache", e))?,
        };
        let on_job_done = match raw.hooks.on_job_done {
            None => None,
            Some(command) if command.first().is_none_or(|p| p.trim().is_empty()) => {
                return Err(invalid(
                    "hooks.on_job_done",
                    "must name a program first, e.g. [\"/usr/local/bin/notify\", \"--channel\", \"ops\"]".into(),
                ));
            }
            Some(mut command) => {
                // A relative program is the config folder's, as the other paths are; a bare name
                // is looked up in PATH.
                if command[0].contains('/') {
                    command[0] = resolve(PathBuf::from(&command[0])).display().to_string();
                }
                Some(command)
            }
        };
        let mut overrides = BTreeMap::new();
        for (model, p) in raw.prices {
            let price = crate::policy::prices::Price {
                input: p.input,
                output: p.output,
                cache_write: p.cache_write.unwrap_or(p.input * 1.25),
                cache_write_1h: p.cache_write_1h.unwrap_or(p.input * 2.0),
                cache_read: p.cache_read.unwrap_or(p.input * 0.1),
                long_prompt: None,
            };
            for (field, value) in [
                ("input", price.input),
                ("output", price.output),
                ("cache_write", price.cache_write),
                ("cache_write_1h", price.cache_write_1h),
                ("cache_read", price.cache_read),
            ] {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(invalid(
                        &format!("prices.\"{model}\".{field}"),
                        format!(
                            "is {value}; it must be a price in USD per million tokens, 0 or more"
                        ),
                    ));
                }
            }
            overrides.insert(model, price);
        }
        let prices = crate::policy::prices::PriceTable::new(overrides);
        let mut windows = crate::policy::window::Windows::default();
        for (class, w) in raw.windows {
            let priority: crate::model::job::Priority = class.parse().map_err(|e: String| {
                invalid(
                    &format!("windows.{class}"),
                    format!("is not a priority class: {e}"),
                )
            })?;
            let window = crate::policy::window::Window::parse(
                &w.hours,
                w.timezone.as_deref(),
                w.when_idle.unwrap_or(false),
            )
            .map_err(|e| {
                let key = if e.starts_with("time zone") {
                    "timezone"
                } else {
                    "hours"
                };
                invalid(&format!("windows.{class}.{key}"), e)
            })?;
            windows.0.insert(priority, window);
        }
        let budgets = budgets_from_raw(raw.budgets, &prices, &invalid)?;
        let routes = routes::routes_from_raw(
            raw.routes,
            &base_url,
            raw.api.api_key_file.is_some(),
            &resolve,
            &invalid,
        )?;

        let store = store_from_raw(raw.store, &resolve, &invalid)?;
        Ok(Config {
            source,
            env: env.clone(),
            batch,
            quota,
            jobs_dir,
            data_dir,
            api: ApiSettings {
                base_url,
                anthropic_version,
                api_key_file: raw.api.api_key_file.map(resolve),
                timeout: Duration::from_secs(timeout_secs),
            },
            realtime: RealtimeSettings {
                concurrency,
                max_attempts,
                backoff_min,
                backoff_max,
            },
            daemon: DaemonSettings {
                scan_interval: Duration::from_millis(
                    raw.daemon.scan_interval_ms.unwrap_or(1000).max(10),
                ),
                shutdown_grace: Duration::from_secs(raw.daemon.shutdown_grace_secs.unwrap_or(30)),
                disk_low_bytes: raw
                    .daemon
                    .disk_low_mb
                    .unwrap_or(1024)
                    .saturating_mul(1 << 20),
                readers_group: raw.daemon.readers_group.filter(|g| !g.trim().is_empty()),
            },
            limits: raw.limits,
            prices,
            budgets,
            metrics_port: raw.metrics.port,
            metrics_token_file: raw.metrics.token_file.map(resolve),
            windows,
            cache,
            on_job_done,
            routes,
            store,
        })
    }

    /// The limits that apply to `model`: its own entry (by model id or limit class), else the
    /// tier preset, else `default`, else none (learned from the API's headers).
    pub fn limits_for(&self, model: &str) -> ModelLimits {
        self.class_limits(model).limits
    }

    /// [`Config::limits_for`], saying whether they are explicit numbers (a ceiling the API's
    /// headers cannot raise) or a tier preset (a first guess the headers replace).
    pub fn class_limits(&self, model: &str) -> crate::policy::quota::ClassLimits {
        use crate::policy::quota::ClassLimits;
        let class = crate::policy::quota::limit_class(model);
        let explicit = self.limits.get(model).or_else(|| self.limits.get(&class));
        if let Some(limits) = explicit {
            return ClassLimits::ceiling(*limits);
        }
        let tier = self.quota.tier.as_deref();
        if let Some(limits) = tier.and_then(|t| crate::policy::quota::tier_limits(t, model)) {
            return ClassLimits {
                limits,
                is_ceiling: false,
            };
        }
        self.limits
            .get("default")
            .map(|l| ClassLimits::ceiling(*l))
            .unwrap_or_default()
    }

    /// The error of setting `key` (of this config's file), which `problem` says what is wrong
    /// with; for settings checked after loading (a key file, a group, a token file).
    pub fn invalid(&self, key: &str, problem: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone().unwrap_or_default(),
            key: key.to_owned(),
            problem,
        }
    }

    /// The file it came from, or "built-in defaults".
    pub fn source_name(&self) -> String {
        self.source.as_ref().map_or_else(
            || "built-in defaults".to_owned(),
            |p| p.display().to_string(),
        )
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("nightshift.db")
    }

    pub fn results_dir(&self) -> PathBuf {
        self.data_dir.join("results")
    }

    /// Downloaded batch results waiting to be applied.
    pub fn staging_dir(&self) -> PathBuf {
        self.data_dir.join("staging")
    }
}

/// Checks `[budgets]`: positive caps, known actions, and a priced `downgrade_to` wherever a cap
/// downgrades.
/// `[store]`: a PostgreSQL URL, checked for its form, and never with a password in it (that
/// belongs in `password_file` or PGPASSWORD, out of a file others may read).
fn store_from_raw(
    raw: RawStore,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<StoreSettings, ConfigError> {
    let url = match raw
        .url
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
    {
        None => None,
        Some(url) => {
            let Some(rest) = url
                .strip_prefix("postgres://")
                .or_else(|| url.strip_prefix("postgresql://"))
            else {
                return Err(invalid(
                    "store.url",
                    "is not a PostgreSQL URL: write it as postgres://USER@HOST:PORT/DATABASE \
                     (leave [store] out to keep SQLite in data_dir)"
                        .into(),
                ));
            };
            let authority = rest.split(['/', '?']).next().unwrap_or_default();
            let userinfo = authority.rsplit_once('@').map(|(u, _)| u);
            if userinfo.is_some_and(|u| u.contains(':')) || url.contains("password=") {
                return Err(invalid(
                    "store.url",
                    "holds a password: take it out of the URL and put it in the file \
                     `[store] password_file` names (or PGPASSWORD), which only nightshift's user \
                     may read"
                        .into(),
                ));
            }
            Some(url)
        }
    };
    if raw.password_file.is_some() && url.is_none() {
        return Err(invalid(
            "store.password_file",
            "is set without `[store] url`: SQLite has no password".into(),
        ));
    }
    // The heartbeat renews leases three times per lease (at most every 5 s): one late beat never
    // loses one.
    let lease_secs = raw.lease_secs.unwrap_or(DEFAULT_LEASE.as_secs());
    if lease_secs < 2 {
        return Err(invalid(
            "store.lease_secs",
            format!("is {lease_secs}: a lease must last at least 2 seconds (the default is 30)"),
        ));
    }
    Ok(StoreSettings {
        url,
        password_file: raw.password_file.map(resolve),
        lease: Duration::from_secs(lease_secs),
    })
}

fn budgets_from_raw(
    raw: BTreeMap<String, RawBudget>,
    prices: &crate::policy::prices::PriceTable,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<crate::policy::budget::Budgets, ConfigError> {
    use crate::policy::budget::{Cap, CapAction, TenantCaps};
    let mut budgets = crate::policy::budget::Budgets::default();
    for (tenant, b) in raw {
        let key = |field: &str| format!("budgets.\"{tenant}\".{field}");
        let cap = |usd: Option<f64>, action: Option<String>, name: &str| {
            let action_key = key(&format!("on_{name}"));
            let action = match action.as_deref() {
                None => CapAction::Reject,
                Some(a) => CapAction::parse(a).ok_or_else(|| {
                    invalid(
                        &action_key,
                        format!("is {a:?}; it must be \"reject\", \"downgrade\" or \"defer\""),
                    )
                })?,
            };
            let Some(usd) = usd else {
                return Ok(None);
            };
            if !(usd.is_finite() && usd > 0.0) {
                return Err(invalid(
                    &key(&format!("{name}_usd")),
                    format!("is {usd}; a cap must be more than 0 US dollars"),
                ));
            }
            Ok(Some(Cap {
                micro_usd: (usd * 1e6).round() as i64,
                action,
            }))
        };
        let caps = TenantCaps {
            daily: cap(b.daily_usd, b.on_daily, "daily")?,
            monthly: cap(b.monthly_usd, b.on_monthly, "monthly")?,
            downgrade_to: b.downgrade_to,
        };
        let downgrades = [caps.daily, caps.monthly]
            .iter()
            .flatten()
            .any(|c| c.action == CapAction::Downgrade);
        match &caps.downgrade_to {
            None if downgrades => {
                return Err(invalid(
                    &key("downgrade_to"),
                    "is missing; a cap with action \"downgrade\" needs the cheaper model to use"
                        .into(),
                ));
            }
            Some(model) if prices.price(model).is_none() => {
                return Err(invalid(
                    &key("downgrade_to"),
                    format!("is {model:?}, which has no price; add [prices.\"{model}\"]"),
                ));
            }
            _ => {}
        }
        budgets.tenants.insert(tenant, caps);
    }
    Ok(budgets)
}

/// A value the daemon reads often and a reload replaces whole (SIGHUP): readers take a cheap
/// snapshot (`get`), so a reload never changes a value under a reader's feet.
#[derive(Debug)]
pub struct Live<T>(std::sync::Arc<std::sync::RwLock<std::sync::Arc<T>>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live(self.0.clone())
    }
}

impl<T> Live<T> {
    pub fn new(value: T) -> Live<T> {
        Live(std::sync::Arc::new(std::sync::RwLock::new(
            std::sync::Arc::new(value),
        )))
    }

    pub fn get(&self) -> std::sync::Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(value);
    }
}

/// A TOML error as "line L, column C: message", without quoting the line: a misplaced secret
/// (say, `api_key = "sk-…"`) must not reach the log.
pub fn toml_error(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/ns/nightshift.toml"), &Env::default())
    }

    #[test]
    fn the_store_is_sqlite_unless_a_postgres_url_without_a_password_is_given() {
        assert_eq!(parse("").expect("valid").store, StoreSettings::default());
        assert_eq!(StoreSettings::default().lease, Duration::from_secs(30));
        let leased = parse("[store]\nlease_secs = 10\n").expect("valid");
        assert_eq!(leased.store.lease, Duration::from_secs(10));
        let config = parse(
            "[store]\nurl = \"postgres://ns@db:5432/nightshift\"\npassword_file = \"pg.secret\"\n",
        )
        .expect("valid");
        assert_eq!(
            config.store.url.as_deref(),
            Some("postgres://ns@db:5432/nightshift")
        );
        assert_eq!(
            config.store.password_file.as_deref(),
            Some(Path::new("/etc/ns/pg.secret")),
            "resolved against the config's folder"
        );
        for (text, says) in [
            (
                "[store]\nurl = \"mysql://db/x\"\n",
                "postgres://USER@HOST:PORT/DATABASE",
            ),
            (
                "[store]\nurl = \"postgres://ns:hunter2@db/x\"\n",
                "password_file",
            ),
            (
                "[store]\nurl = \"postgres://ns@db/x?password=hunter2\"\n",
                "password_file",
            ),
            (
                "[store]\npassword_file = \"pg.secret\"\n",
                "without `[store] url`",
            ),
            ("[store]\nurl = \"postgres://ns@db/x\"\npool = 3\n", "pool"),
            ("[store]\nlease_secs = 1\n", "store.lease_secs"),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(says), "{text}: {err}");
            assert!(
                !err.contains("hunter2"),
                "the password is not repeated: {err}"
            );
        }
    }

    #[test]
    fn full_config_parses_and_resolves_relative_paths() {
        let config = parse(
            r#"
            jobs_dir = "jobs"
            data_dir = "/srv/ns"
            [api]
            base_url = "http://127.0.0.1:9999/"
            anthropic_version = "2026-10-21"
            [realtime]
            concurrency = 4
            [limits."claude-sonnet-5-5"]
            rpm = 50
            itpm = 30000
            otpm = 8000
            [limits.default]
            rpm = 10
            "#,
        )
        .expect("valid config");
        assert_eq!(config.jobs_dir, PathBuf::from("/etc/ns/jobs"));
        assert_eq!(config.data_dir, PathBuf::from("/srv/ns"));
        assert_eq!(config.api.base_url, "http://127.0.0.1:9999");
        assert_eq!(config.api.anthropic_version, "2026-10-21");
        assert_eq!(config.realtime.concurrency, 4);
        assert_eq!(config.limits_for("claude-sonnet-5-5").itpm, Some(30000));
        assert_eq!(config.limits_for("claude-haiku-5-5").rpm, Some(10));
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let config = parse("").expect("empty config is valid");
        assert_eq!(config.api.anthropic_version, "2023-06-01");
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(
            config.jobs_dir,
            PathBuf::from(DEFAULT_DATA_DIR).join("jobs")
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = parse("jobs_dri = \"x\"").expect_err("typo must fail");
        assert!(err.to_string().contains("jobs_dri"), "{err}");
        let err = parse("[limits.m]\nrpm = 5\ntpm = 3").expect_err("unknown limit key");
        assert!(err.to_string().contains("tpm"), "{err}");
        assert!(err.to_string().contains("line 3"), "{err}");
        let err = parse("[api]\napi_key = \"sk-ant-secret\"").expect_err("no such key");
        assert!(err.to_string().contains("api_key"), "{err}");
        assert!(
            !err.to_string().contains("sk-ant-secret"),
            "the value is not quoted: {err}"
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = parse("[api]\nanthropic_version = \"2024-01-01\"").expect_err("unknown version");
        assert!(err.to_string().contains("api.anthropic_version"), "{err}");
        let err = parse("[limits.m]\nrpm = 0").expect_err("zero limit");
        assert!(err.to_string().contains("limits.\"m\".rpm"), "{err}");
        let err = parse("[api]\nbase_url = \"ftp://x\"").expect_err("bad url");
        assert!(err.to_string().contains("api.base_url"), "{err}");
    }

    #[test]
    fn budgets_and_prices_parse_and_are_checked() {
        let config = parse(
            r#"
            [prices."claude-house-1"]
            input = 1.0
            output = 4.0
            [budgets.acme]
            daily_usd = 2.5
            monthly_usd = 40
            on_daily = "downgrade"
            on_monthly = "defer"
            downgrade_to = "claude-house-1"
            [budgets."*"]
            daily_usd = 1
            "#,
        )
        .expect("valid config");
        let acme = config.budgets.for_tenant("acme").expect("acme has caps");
        assert_eq!(acme.daily.map(|c| c.micro_usd), Some(2_500_000));
        assert_eq!(
            acme.monthly.map(|c| c.action),
            Some(crate::policy::budget::CapAction::Defer)
        );
        let other = config.budgets.for_tenant("other").expect("the wildcard");
        assert_eq!(
            other.daily.map(|c| c.action),
            Some(crate::policy::budget::CapAction::Reject)
        );
        assert_eq!(
            config.prices.price("claude-house-1").map(|p| p.cache_read),
            Some(0.1)
        );

        let err = parse("[budgets.a]\ndaily_usd = 1\non_daily = \"downgrade\"")
            .expect_err("downgrade needs a model");
        assert!(
            err.to_string().contains("budgets.\"a\".downgrade_to"),
            "{err}"
        );
        let err = parse("[budgets.a]\ndaily_usd = 1\non_daily = \"pause\"").expect_err("action");
        assert!(err.to_string().contains("budgets.\"a\".on_daily"), "{err}");
        let err = parse("[budgets.a]\nmonthly_usd = 0").expect_err("zero cap");
        assert!(
            err.to_string().contains("budgets.\"a\".monthly_usd"),
            "{err}"
        );
        let err = parse("[budgets.a]\ndaily_usd = 1\ndowngrade_to = \"claude-house-9\"")
            .expect_err("unpriced downgrade");
        assert!(err.to_string().contains("has no price"), "{err}");
        let err = parse("[prices.m]\ninput = -1.0\noutput = 1.0").expect_err("negative price");
        assert!(err.to_string().contains("prices.\"m\".input"), "{err}");
        let err = parse("[prices.m]\ninput = 1.0").expect_err("output missing");
        assert!(err.to_string().contains("output"), "{err}");
    }
}
