//! `nightshift bench`: measurements that are not tests (speed is never asserted in tests).
//!
//! - `ingest`: intake of a generated N-line job file: lines/s and the process's peak memory.
//! - `realtime`: the real-time lane against the in-process fake API with no limits and no latency:
//!   items/s, i.e. nightshift's own overhead per call (the fake shares the same two cores).
//! - `batch-results`: applying downloaded batch results, from the download's start to every line
//!   in the store and the results file synced: lines/s and the peak memory while applying.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::ApiKey;
use crate::cli::commands::demo;
use crate::config::Config;
use crate::daemon;
use crate::fake_api::{FakeApi, FakeConfig};
use crate::lanes::intake::{Intake, IntakeOutcome};
use crate::store::Store;

/// Writes an `n`-line job file of realistic requests (about 300 bytes a line), for `mode`.
pub fn write_job_file(path: &Path, n: u64, mode: &str) -> std::io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for i in 0..n {
        writeln!(
            out,
            r#"{{"custom_id":"req-{i:08}","mode":"{mode}","params":{{"model":"claude-haiku-5-5","max_tokens":128,"system":"Classify the ticket as billing, shipping, account, bug or other.","messages":[{{"role":"user","content":"Ticket {i}: my order arrived late and the box was damaged; please advise what to do next."}}]}}}}"#
        )?;
    }
    out.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

/// Intake as a daemon runs it, on `store`, for the benches: its files in `dir`.
pub fn bench_intake(
    store: &Store,
    jobs_dir: std::path::PathBuf,
    dir: &Path,
    cache_default: crate::model::job::CacheMode,
) -> Intake {
    Intake {
        store: store.clone(),
        jobs_dir,
        wakes: vec![Arc::new(Notify::new())],
        cancel: CancellationToken::new(),
        rpm_for: Arc::new(|_| None),
        failures: Default::default(),
        not_taken: Default::default(),
        templates_dir: dir.join("templates"),
        api_version: crate::config::DEFAULT_ANTHROPIC_VERSION.to_owned(),
        cache_default,
        holder: crate::store::leases::Holder::new("bench", dir, crate::config::DEFAULT_LEASE),
    }
}

/// Peak resident memory of this process so far, in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub async fn ingest(lines: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let jobs_dir = dir.path().join("jobs");
    std::fs::create_dir_all(&jobs_dir)?;
    let file = dir.path().join("bench.jsonl");
    outln!("writing a {lines}-line job file ...");
    let bytes = write_job_file(&file, lines, "auto")?;
    std::fs::rename(&file, jobs_dir.join("bench.jsonl"))?;
    let rss_before = peak_rss_bytes();

    let db = dir.path().join("nightshift.db");
    let store = Store::open(&db)?;
    // The default `cache`, as a daemon takes jobs in.
    let intake = bench_intake(
        &store,
        jobs_dir,
        dir.path(),
        crate::model::job::CacheMode::Auto,
    );
    let started = Instant::now();
    let outcomes = tokio::task::spawn_blocking(move || intake.scan()).await??;
    let elapsed = started.elapsed();
    store.close().await;
    let taken = match outcomes.as_slice() {
        [IntakeOutcome::Ingested { lines, .. }] => *lines,
        other => anyhow::bail!("unexpected intake outcome: {other:?}"),
    };
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    outln!(
        "ingested {taken} lines ({:.0} MiB) in {:.2} s",
        mb(bytes),
        elapsed.as_secs_f64()
    );
    outln!(
        "  throughput      {:.0} lines/s, {:.0} MiB/s",
        taken as f64 / elapsed.as_secs_f64(),
        mb(bytes) / elapsed.as_secs_f64()
    );
    if let (Some(before), Some(after)) = (rss_before, peak_rss_bytes()) {
        outln!(
            "  peak RSS        {:.1} MiB (before intake: {:.1} MiB)",
            mb(after),
            mb(before)
        );
    }
    outln!(
        "  database size   {:.0} MiB",
        mb(std::fs::metadata(&db)?.len())
    );
    Ok(())
}

pub async fn realtime(items: u64, concurrency: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fake = FakeApi::start(FakeConfig::default(), ([127, 0, 0, 1], 0).into()).await?;
    let config_path = dir.path().join("nightshift.toml");
    std::fs::write(
        &config_path,
        format!(
            "jobs_dir = \"jobs\"\ndata_dir = \"data\"\n[api]\nbase_url = \"{}\"\n[realtime]\nconcurrency = {concurrency}\n[daemon]\nscan_interval_ms = 50\n",
            fake.base_url()
        ),
    )?;
    let config = Config::load(&config_path, &Default::default())?;
    std::fs::create_dir_all(&config.jobs_dir)?;
    let file = dir.path().join("bench.jsonl");
    write_job_file(&file, items, "realtime")?;

    let daemon = daemon::spawn(config.clone(), ApiKey::new("sk-bench").into());
    let started = Instant::now();
    std::fs::rename(&file, config.jobs_dir.join("bench.jsonl"))?;
    let job = demo::wait_until_done(&config, "bench", Duration::from_secs(3600), |_| {}).await?;
    let elapsed = started.elapsed();
    daemon.stop().await?;
    let stats = fake.stats();
    fake.shutdown().await;
    outln!(
        "{} items through the real-time lane in {:.2} s: {:.0} items/s (concurrency {concurrency}, fake API in the same process, no limits, no latency)",
        job.counts.total,
        elapsed.as_secs_f64(),
        job.counts.total as f64 / elapsed.as_secs_f64()
    );
    outln!(
        "  succeeded {}, errored {}; the fake accepted {} calls",
        job.counts.succeeded,
        job.counts.errored,
        stats.messages_accepted
    );
    Ok(())
}

/// A rate-limit profile for `bench quota`.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub name: &'static str,
    pub rpm: u64,
    pub itpm: u64,
    pub otpm: u64,
    /// Seconds of refill the fake's buckets hold (the API publishes no capacity).
    pub burst_secs: f64,
    /// The fake's answer latency.
    pub latency: Duration,
    /// Organizations, each with these limits: with two, nightshift runs three routes (two keys
    /// of the first organization, one of the second) and the interactive load draws on the first.
    pub orgs: u64,
}

pub const PROFILES: [Profile; 4] = [
    // The old Tier 1 for Sonnet 4.x: 50 RPM / 30,000 ITPM / 8,000 OTPM.
    Profile {
        name: "tier1",
        rpm: 50,
        itpm: 30_000,
        otpm: 8_000,
        burst_secs: 10.0,
        latency: Duration::from_millis(800),
        orgs: 1,
    },
    Profile {
        name: "fast",
        rpm: 1_200,
        itpm: 400_000,
        otpm: 120_000,
        burst_secs: 5.0,
        latency: Duration::from_millis(400),
        orgs: 1,
    },
    // The same limits in each of two organizations: what both allow together is the measure.
    Profile {
        name: "tier1-two-orgs",
        rpm: 50,
        itpm: 30_000,
        otpm: 8_000,
        burst_secs: 10.0,
        latency: Duration::from_millis(800),
        orgs: 2,
    },
    Profile {
        name: "fast-two-orgs",
        rpm: 1_200,
        itpm: 400_000,
        otpm: 120_000,
        burst_secs: 5.0,
        latency: Duration::from_millis(400),
        orgs: 2,
    },
];

/// The keys of a two-organization run: routes a1 and a2 on the first organization, b on the
/// second; the interactive load's key is the first organization's too.
const TWO_ORG_ROUTES: [(&str, &str, usize); 3] = [
    ("a1", "sk-bench-quota-org-a-one", 0),
    ("a2", "sk-bench-quota-org-a-two", 0),
    ("b", "sk-bench-quota-org-b-one", 1),
];
const TWO_ORG_IDS: [&str; 2] = ["org-a", "org-b"];

/// What the cache did in a run of `bench cache`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheRun {
    pub itpm: u64,
    /// Input, cache writes and cache reads per minute: what the job's prompts came to.
    pub effective_input_per_min: f64,
    /// Cache reads over cache reads and writes, in tokens.
    pub hit_rate: f64,
    pub calls_read: u64,
    /// The bill against the same calls without caching.
    pub cost_share: f64,
}

/// One measured run of the quota benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuotaRun {
    pub profile: &'static str,
    pub otpm_rule: &'static str,
    pub interactive_rpm: f64,
    pub seconds: f64,
    /// (dimension, used by nightshift, allowed over the run: a full bucket plus the refill,
    /// less what the interactive load used).
    pub dims: Vec<(String, u64, f64)>,
    pub binding: String,
    pub binding_percent: f64,
    pub nightshift_calls: u64,
    pub nightshift_429: u64,
    pub interactive: Option<crate::fake_api::LoadReport>,
    /// With several organizations: (organization, nightshift's calls answered, 429s on it,
    /// including the interactive load's).
    pub per_org: Vec<(String, u64, u64)>,
    /// `bench cache` only.
    pub cache: Option<CacheRun>,
}

/// `bench quota`: each profile (or the one named), alone and beside interactive traffic, under
/// the 2026 output rule (and the 2025 one with `both_rules`).
pub async fn quota_runs(profile: Option<&str>, secs: u64, both_rules: bool) -> anyhow::Result<()> {
    let profiles: Vec<Profile> = PROFILES
        .into_iter()
        .filter(|p| profile.is_none_or(|want| want == p.name))
        .collect();
    anyhow::ensure!(
        !profiles.is_empty(),
        "unknown profile; use tier1, fast, tier1-two-orgs or fast-two-orgs"
    );
    let rules: &[bool] = if both_rules { &[false, true] } else { &[false] };
    for p in profiles {
        for &rule in rules {
            for interactive in [false, true] {
                let run = quota(p, secs, interactive, rule, Job::Plain).await?;
                outln!("{}", run.to_text());
            }
        }
    }
    Ok(())
}

/// The job a quota run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Haiku 5.5 tickets of ~400 tokens, nothing cached.
    Plain,
    /// Sonnet 5.5 items sharing a system prompt of about `prefix_tokens` tokens, then a short
    /// question of their own; `marked`: the job marks the prompt for the cache itself (5-minute
    /// TTL), else it marks nothing and `cache = "auto"` is left to find it.
    Cached { prefix_tokens: u64, marked: bool },
}

impl Job {
    fn model(self) -> &'static str {
        match self {
            Job::Plain => "claude-haiku-5-5",
            Job::Cached { .. } => "claude-sonnet-5-5",
        }
    }

    fn line(self, i: u64) -> String {
        match self {
            Job::Plain => format!(
                r#"{{"custom_id":"q-{i:07}","mode":"realtime","params":{{"model":"claude-haiku-5-5","max_tokens":256,"messages":[{{"role":"user","content":"Ticket {i}: {}"}}]}}}}"#,
                "the parcel arrived late and damaged, please advise; ".repeat(30)
            ),
            Job::Cached {
                prefix_tokens,
                marked,
            } => {
                // A token is about four characters.
                let sentence = "Grade the answer against the rubric, citing each point. ";
                let rubric = sentence.repeat((prefix_tokens * 4) as usize / sentence.len() + 1);
                let system = if marked {
                    format!(
                        r#"[{{"type":"text","text":"{rubric}","cache_control":{{"type":"ephemeral"}}}}]"#
                    )
                } else {
                    format!(r#""{rubric}""#)
                };
                format!(
                    r#"{{"custom_id":"q-{i:07}","mode":"realtime","params":{{"model":"claude-sonnet-5-5","max_tokens":256,"system":{system},"messages":[{{"role":"user","content":"Answer {i}: the parcel arrived late; grade it."}}]}}}}"#
                )
            }
        }
    }
}

/// `nightshift bench cache`: [`quota`] runs of a job sharing a marked prefix, alone and beside
/// interactive traffic.
pub async fn cache_runs(
    profile: Option<&str>,
    secs: u64,
    prefix_tokens: u64,
    auto: bool,
) -> anyhow::Result<()> {
    let profile = PROFILES
        .into_iter()
        .find(|p| p.name == profile.unwrap_or("tier1"))
        .context("unknown profile; use tier1 or fast")?;
    let job = Job::Cached {
        prefix_tokens,
        marked: !auto,
    };
    outln!(
        "{}",
        if auto {
            "the job marks nothing; cache = \"auto\" places the breakpoint"
        } else {
            "the job marks its prefix itself"
        }
    );
    for interactive in [false, true] {
        let run = quota(profile, secs, interactive, false, job).await?;
        outln!("{}", run.to_text());
    }
    Ok(())
}

/// `nightshift bench quota`: a real-time job against the fake API with tier-like limits, alone
/// and beside a steady interactive load at 20 % of the RPM on the same org.
pub async fn quota(
    profile: Profile,
    secs: u64,
    interactive: bool,
    max_tokens_rule: bool,
    job: Job,
) -> anyhow::Result<QuotaRun> {
    use crate::fake_api::{FakeLimits, LoadSpec, OtpmRule, run_load};
    let dir = tempfile::tempdir()?;
    let limits = FakeLimits {
        rpm: profile.rpm,
        itpm: profile.itpm,
        otpm: profile.otpm,
        burst_seconds: profile.burst_secs,
    };
    let two_orgs = profile.orgs == 2;
    let orgs = if two_orgs {
        TWO_ORG_IDS
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut keys: Vec<&str> = TWO_ORG_ROUTES
                    .iter()
                    .filter(|(_, _, org)| *org == i)
                    .map(|(_, key, _)| *key)
                    .collect();
                if i == 0 {
                    keys.push(INTERACTIVE_KEY);
                }
                crate::fake_api::FakeOrg::new(*id, keys)
            })
            .collect()
    } else {
        Vec::new()
    };
    let fake = FakeApi::start(
        FakeConfig {
            orgs,
            limits: Some(limits),
            latency: profile.latency,
            otpm_rule: if max_tokens_rule {
                OtpmRule::MaxTokens
            } else {
                OtpmRule::Generated
            },
            ..FakeConfig::default()
        },
        ([127, 0, 0, 1], 0).into(),
    )
    .await?;
    let config_path = dir.path().join("nightshift.toml");
    std::fs::write(
        &config_path,
        format!(
            "jobs_dir = \"jobs\"\ndata_dir = \"data\"\n[api]\nbase_url = \"{}\"\n[realtime]\nconcurrency = 64\n\
             [daemon]\nscan_interval_ms = 50\nshutdown_grace_secs = 30\n[limits.default]\nrpm = {}\nitpm = {}\notpm = {}\n{}",
            fake.base_url(),
            profile.rpm,
            profile.itpm,
            profile.otpm,
            if two_orgs {
                TWO_ORG_ROUTES
                    .iter()
                    .map(|(name, _, _)| {
                        format!("[routes.{name}]\nkey_env = \"NIGHTSHIFT_BENCH_{name}\"\n")
                    })
                    .collect::<String>()
            } else {
                String::new()
            }
        ),
    )?;
    let config = Config::load(&config_path, &Default::default())?;
    std::fs::create_dir_all(&config.jobs_dir)?;
    // More work than the run can do: the limits, not the job, must be what stops it.
    let items = (profile.rpm * profile.orgs * secs / 60) * 2 + 50;
    let file = dir.path().join("quota.jsonl");
    {
        let mut out = BufWriter::new(std::fs::File::create(&file)?);
        for i in 0..items {
            writeln!(out, "{}", job.line(i))?;
        }
        out.flush()?;
    }
    let started = Instant::now();
    let keys = if two_orgs {
        crate::api::RouteKeys::from_pairs(
            TWO_ORG_ROUTES
                .iter()
                .map(|(name, key, _)| (*name, ApiKey::new(*key))),
        )
    } else {
        ApiKey::new("sk-bench-quota-key").into()
    };
    let daemon = daemon::spawn(config.clone(), keys);
    std::fs::rename(&file, config.jobs_dir.join("quota.jsonl"))?;
    let interactive_rpm = if interactive {
        profile.rpm as f64 * 0.2
    } else {
        0.0
    };
    let load = interactive.then(|| {
        tokio::spawn(run_load(
            LoadSpec {
                base_url: fake.base_url(),
                api_key: INTERACTIVE_KEY.into(),
                model: job.model().into(),
                rpm: interactive_rpm,
                duration: Duration::from_secs(secs),
                max_tokens: 128,
                prompt_chars: 1_200,
            },
            CancellationToken::new(),
        ))
    });
    tokio::time::sleep(Duration::from_secs(secs)).await;
    daemon.stop().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let interactive_report = match load {
        Some(task) => Some(task.await?),
        None => None,
    };
    let stats = fake.stats();
    let per_org = if two_orgs {
        TWO_ORG_IDS
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let org = fake.org_stats(id);
                let interactive_ok = if i == 0 {
                    interactive_report.as_ref().map_or(0, |r| r.ok)
                } else {
                    0
                };
                (
                    (*id).to_owned(),
                    org.messages_accepted.saturating_sub(interactive_ok),
                    org.rate_limited_429,
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    fake.shutdown().await;
    let (i_ok, i_429, i_in, i_out) = interactive_report.as_ref().map_or((0, 0, 0, 0), |r| {
        (r.ok, r.rate_limited_429, r.input_tokens, r.output_tokens)
    });
    // ITPM counts input and cache writes, never cache reads (the interactive load caches none).
    let written = stats.cache_write_5m_tokens + stats.cache_write_1h_tokens;
    let used = [
        stats.messages_accepted.saturating_sub(i_ok),
        (stats.input_tokens + written).saturating_sub(i_in),
        stats.output_tokens.saturating_sub(i_out),
    ];
    let cache = matches!(job, Job::Cached { .. }).then(|| {
        let input = stats.input_tokens.saturating_sub(i_in);
        let read = stats.cache_read_input_tokens;
        // The run's usage at list prices, and the same prompts without the cache.
        let prices = crate::policy::prices::PriceTable::default();
        let usage = crate::model::answer::Usage {
            input_tokens: input,
            output_tokens: used[2],
            cache_creation_input_tokens: Some(written),
            cache_read_input_tokens: Some(read),
            cache_creation: Some(crate::model::answer::CacheCreation {
                ephemeral_5m_input_tokens: stats.cache_write_5m_tokens,
                ephemeral_1h_input_tokens: stats.cache_write_1h_tokens,
            }),
        };
        let uncached_usage = crate::model::answer::Usage {
            input_tokens: input + written + read,
            output_tokens: used[2],
            ..Default::default()
        };
        let price = |u: &crate::model::answer::Usage| {
            prices.cost_micro_usd(job.model(), u, false).unwrap_or(0) as f64
        };
        let (cost, uncached) = (price(&usage), price(&uncached_usage));
        CacheRun {
            itpm: profile.itpm,
            effective_input_per_min: (input + written + read) as f64 / elapsed * 60.0,
            hit_rate: read as f64 / (read + written).max(1) as f64,
            calls_read: stats.cache_hit_calls,
            cost_share: cost / uncached.max(1.0),
        }
    });
    let interactive_used = [i_ok, i_in, i_out];
    let mut dims = Vec::new();
    let (mut binding, mut binding_percent) = (String::new(), 0.0);
    for (i, (name, limit)) in [
        ("requests", profile.rpm),
        ("input_tokens", profile.itpm),
        ("output_tokens", profile.otpm),
    ]
    .into_iter()
    .enumerate()
    {
        // Each organization's bucket, full at the start, plus its refill over the run.
        let capacity = (limit as f64 * profile.burst_secs / 60.0).max(1.0);
        let allowed = (capacity + limit as f64 / 60.0 * elapsed) * profile.orgs as f64
            - interactive_used[i] as f64;
        let percent = used[i] as f64 / allowed * 100.0;
        if percent > binding_percent {
            binding = name.to_owned();
            binding_percent = percent;
        }
        dims.push((name.to_owned(), used[i], allowed));
    }
    Ok(QuotaRun {
        profile: profile.name,
        otpm_rule: if max_tokens_rule {
            "max_tokens (2025)"
        } else {
            "generated (2026)"
        },
        interactive_rpm,
        seconds: elapsed,
        dims,
        binding,
        binding_percent,
        nightshift_calls: used[0] + stats.rate_limited_429.saturating_sub(i_429),
        nightshift_429: stats.rate_limited_429.saturating_sub(i_429),
        interactive: interactive_report,
        per_org,
        cache,
    })
}

/// The interactive load's key (on the first organization when there are two).
const INTERACTIVE_KEY: &str = "sk-interactive-app";

impl QuotaRun {
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "profile {}{} ({} output rule), {:.0} s, {}:\n",
            self.profile,
            if self.per_org.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} organizations, their limits added up; routes a1 and a2 are two keys of org-a)",
                    self.per_org.len()
                )
            },
            self.otpm_rule,
            self.seconds,
            if self.interactive.is_some() {
                format!("beside interactive load at {:.0} RPM", self.interactive_rpm)
            } else {
                "alone".to_owned()
            }
        );
        for (name, used, allowed) in &self.dims {
            out.push_str(&format!(
                "  {name:<14} used {used:>9}  allowed {allowed:>11.0}  {:>5.1}%\n",
                *used as f64 / allowed * 100.0
            ));
        }
        out.push_str(&format!(
            "  binding: {} at {:.1}% of what the limit allowed; nightshift got {} x 429 of {} calls ({:.2}%)\n",
            self.binding,
            self.binding_percent,
            self.nightshift_429,
            self.nightshift_calls,
            self.nightshift_429 as f64 / self.nightshift_calls.max(1) as f64 * 100.0
        ));
        for (org, calls, throttled) in &self.per_org {
            out.push_str(&format!(
                "  {org}: nightshift's calls answered {calls}, 429s on the organization {throttled}\n"
            ));
        }
        if let Some(c) = &self.cache {
            out.push_str(&format!(
                "  cache: {:.0} input tokens a minute in all (input, writes and reads) against {} ITPM; \
                 hit rate {:.1}% of the prefix tokens ({} calls read it); cost {:.1}% of the same calls uncached\n",
                c.effective_input_per_min,
                c.itpm,
                c.hit_rate * 100.0,
                c.calls_read,
                c.cost_share * 100.0
            ));
        }
        if let Some(i) = &self.interactive {
            out.push_str(&format!(
                "  interactive: {} sent, {} ok, {} x 429, latency p50 {:.0} ms, p99 {:.0} ms\n",
                i.sent, i.ok, i.rate_limited_429, i.latency_p50_ms, i.latency_p99_ms
            ));
        }
        out
    }
}

/// The built-in fake API in a child process (`nightshift fake-api`), so that its copy of every
/// request and result is not counted in this process's memory. Killed when dropped.
struct FakeChild {
    child: std::process::Child,
    base_url: String,
    /// Its output, kept open: it prints on, and a closed pipe would end it.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl FakeChild {
    fn spawn(args: &[&str]) -> anyhow::Result<FakeChild> {
        use std::io::BufRead;
        let exe = std::env::current_exe().context("finding this program to run the fake API")?;
        let mut child = std::process::Command::new(exe)
            .arg("fake-api")
            .args(["--port", "0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting `nightshift fake-api`")?;
        let stdout = child.stdout.take().context("the fake API's output")?;
        let mut stdout = std::io::BufReader::new(stdout);
        let mut first = String::new();
        stdout.read_line(&mut first)?;
        let mut fake = FakeChild {
            child,
            base_url: String::new(),
            _stdout: stdout,
        };
        fake.base_url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .with_context(|| format!("the fake API said {first:?}, not its address"))?
            .to_owned();
        Ok(fake)
    }
}

impl Drop for FakeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resets this process's peak-memory mark (Linux `clear_refs`), so a later [`peak_rss_bytes`]
/// is the peak of what came after.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU time this process has used so far (user, system), from `/proc/self/stat` (in ticks of
/// 1/100 s, Linux's USER_HZ); zero where that cannot be read. On a shared machine it varies less
/// from run to run than the time on the clock.
fn cpu_time() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command's name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (
        Duration::from_millis(ticks(11) * 10),
        Duration::from_millis(ticks(12) * 10),
    )
}

/// `bench batch-results`: an `n`-line batch job is packed and created against the fake (in a
/// child process), the daemon stops, the fake ends every batch; then a daemon starts again and
/// the clock runs from its start (it polls every batch at once and downloads the results) to
/// every line applied in the store and the job's results file complete and synced.
pub async fn batch_results(lines: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut fake = FakeChild::spawn(&["--batch-secs", "1", "--no-limits"])?;
    let config_path = dir.path().join("nightshift.toml");
    // Polls far apart: no batch is looked at before the daemon is restarted.
    std::fs::write(
        &config_path,
        format!(
            "jobs_dir = \"jobs\"\ndata_dir = \"data\"\n[api]\nbase_url = \"{}\"\n[daemon]\nscan_interval_ms = 50\n\
             [batch]\npoll_min_ms = 3600000\npoll_max_ms = 3600000\nrpm = 1000\n",
            fake.base_url
        ),
    )?;
    let config = Config::load(&config_path, &Default::default())?;
    std::fs::create_dir_all(&config.jobs_dir)?;
    let file = dir.path().join("bench.jsonl");
    outln!("writing a {lines}-line batch job ...");
    write_job_file(&file, lines, "batch")?;
    let key = ApiKey::new("sk-bench-batch");
    let daemon = daemon::spawn(config.clone(), key.clone().into());
    let packing = Instant::now();
    std::fs::rename(&file, config.jobs_dir.join("bench.jsonl"))?;
    let batches = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(conn) = crate::store::open_read_only(crate::lanes::store_location(&config)) else {
            continue;
        };
        let Ok(Some(job)) = crate::store::jobs::find_by_name(&conn, "bench") else {
            continue;
        };
        let batches = crate::store::batches::by_job(&conn, job.id)?;
        let created: i64 = batches
            .iter()
            .filter(|b| b.api_id.is_some())
            .map(|b| b.request_count)
            .sum();
        if created == lines as i64 {
            break batches.len();
        }
        anyhow::ensure!(fake.child.try_wait()?.is_none(), "the fake API stopped");
        anyhow::ensure!(
            packing.elapsed() < Duration::from_secs(3600),
            "the batches were not all created within an hour"
        );
    };
    daemon.stop().await?;
    outln!(
        "{lines} items read, packed and sent in {batches} batches in {:.1} s; the fake ends them ...",
        packing.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The fake makes a batch's results when it is first looked at after it ends: look now, so
    // that its work is not timed.
    let client = crate::api::ApiClient::new(&config.api, &config.routes[0], &key)?;
    let conn = crate::store::open_read_only(crate::lanes::store_location(&config))?;
    for batch in crate::store::batches::open(&conn)? {
        if let Some(api_id) = &batch.api_id {
            let _ = client.get_batch(api_id).await;
        }
    }
    drop(conn);

    std::fs::write(
        &config_path,
        std::fs::read_to_string(&config_path)?
            .replace("poll_min_ms = 3600000", "poll_min_ms = 200"),
    )?;
    let config = Config::load(&config_path, &Default::default())?;
    let peak_reset = reset_peak_rss();
    let cpu_before = cpu_time();
    let started = Instant::now();
    let daemon = daemon::spawn(config.clone(), key.into());
    // Polled often, on one connection: the clock stops within milliseconds of the job's end.
    let conn = crate::store::open_read_only(crate::lanes::store_location(&config))?;
    let job = loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let Some(row) = crate::store::jobs::find_by_name(&conn, "bench")? else {
            continue;
        };
        if row.finished_at.is_some() {
            break row;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "the results were not all applied within an hour"
        );
    };
    let elapsed = started.elapsed();
    let cpu_after = cpu_time();
    let counts = crate::store::items::counts(&conn, job.id)?;
    drop(conn);
    let peak = peak_rss_bytes();
    daemon.stop().await?;
    let written = std::io::BufRead::lines(std::io::BufReader::new(std::fs::File::open(
        crate::model::results::results_path(&config.results_dir(), "bench"),
    )?))
    .count();
    outln!(
        "results of {batches} batches downloaded, {} lines applied and {written} written and synced in {:.2} s: {:.0} lines/s",
        counts.succeeded + counts.errored + counts.expired + counts.canceled,
        elapsed.as_secs_f64(),
        written as f64 / elapsed.as_secs_f64()
    );
    outln!(
        "  succeeded {}, errored {}, expired {}",
        counts.succeeded,
        counts.errored,
        counts.expired
    );
    if let (true, Some(peak)) = (peak_reset, peak) {
        outln!(
            "  peak RSS while applying {:.1} MiB (the fake runs in its own process)",
            peak as f64 / (1024.0 * 1024.0)
        );
    }
    let (user, system) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    outln!(
        "  CPU while applying {:.1} s (user {:.1}, system {:.1}): {:.1} µs a line",
        (user + system).as_secs_f64(),
        user.as_secs_f64(),
        system.as_secs_f64(),
        (user + system).as_secs_f64() * 1e6 / written.max(1) as f64
    );
    Ok(())
}
