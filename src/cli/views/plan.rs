//! `nightshift plan FILE`: reads a job file without sending anything and says what running it
//! would take: estimated tokens, cost through batches vs real time, how long the real-time lane
//! would need under the configured limits, and which limit binds.

use std::collections::{BTreeMap, HashMap};
use std::io::BufReader;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::config::Config;
use crate::model::job::JobDefaults;
use crate::model::job_file::{JobFileReader, Repeats};
use crate::model::line::{LineContext, ParsedLine, ValidLine};

/// `nightshift plan --json`.
#[derive(Debug, Serialize, PartialEq)]
pub struct Plan {
    /// Valid requests in the file (invalid lines are counted in `invalid_lines`).
    pub items: u64,
    pub invalid_lines: u64,
    /// Input tokens: counted by the API's `count_tokens` when asked (`counted_requests`), else
    /// estimated (a token per four bytes of request body; it runs 10–25 % high).
    pub input_tokens: u64,
    /// Requests whose input tokens the API counted; the rest are estimates.
    pub counted_requests: u64,
    /// The sum of `max_tokens`: an upper bound of the output.
    pub max_output_tokens: u64,
    pub cost_usd: Cost,
    /// Seconds the real-time lane needs at the configured limits (input estimated, output at
    /// `max_tokens`); null when a model has no configured limits.
    pub drain_seconds_realtime: Option<f64>,
    /// The limit that decides the drain time: `rpm`, `itpm` or `otpm` (null as above).
    pub binding: Option<&'static str>,
    /// Models without a price: their calls are not in `cost_usd`.
    pub unpriced_models: Vec<String>,
    /// A warning per deprecated model the file uses (its retirement day and replacement).
    pub deprecated_models: Vec<String>,
    /// `--check`: what the API said of each request shape; null when not asked.
    pub check: Option<ShapeCheck>,
    /// The same requests with the prompt cache (the figures above are without it); null when no
    /// request marks a prefix, nor would get one from `cache = "auto"`.
    pub cache: Option<CachePlan>,
}

/// `plan` → `cache`: what the prompt cache would do, predicted from the prefixes the requests
/// mark (their own breakpoints, and those `cache = "auto"` would add), on the assumption that
/// each entry lives from one of its requests to the next (an hour's, or 5 minutes' renewed by
/// each read): each prefix is written once per model and read by every later request.
#[derive(Debug, Serialize, PartialEq)]
pub struct CachePlan {
    /// The job's `cache` (its sidecar's, else the config's): `auto` or `off`.
    pub mode: &'static str,
    /// Requests that mark a prefix, and the distinct prefixes they mark.
    pub requests: u64,
    pub prefixes: u64,
    /// Tokens written to and read from the cache, in real time (estimated: a token per four
    /// bytes of the prefix). In a batch, `cache = "auto"` leaves out a prefix only two requests
    /// share (an hour's write would cost more than it saves), so it reads a little less there.
    pub write_tokens: u64,
    pub read_tokens: u64,
    /// `read_tokens` over both (null when nothing would be cached: every prefix is shorter than
    /// its model's minimum).
    pub hit_rate: Option<f64>,
    /// With the cache: through batches (1-hour writes where auto marks) and real time.
    pub cost_usd: Cost,
    /// Real time at the configured limits with the cache: reads do not count toward ITPM.
    pub drain_seconds_realtime: Option<f64>,
    pub binding: Option<&'static str>,
}

/// `plan --check` → `check`.
#[derive(Debug, Serialize, PartialEq)]
pub struct ShapeCheck {
    /// Distinct request shapes (model, tools, system and the other top-level fields).
    pub shapes: u64,
    /// Shapes the API could not be asked about (rate-limited or unreachable after retries).
    pub unchecked: u64,
    /// What the API refuses, each with the lines it refuses.
    pub refused: Vec<RefusedShape>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct RefusedShape {
    /// The API's status and message, e.g. "HTTP 404: model: claude-x".
    pub error: String,
    /// Requests refused.
    pub requests: u64,
    /// Their lines, the first [`MAX_LINES_LISTED`].
    pub lines: Vec<u64>,
}

/// Lines listed per refused shape, at most.
const MAX_LINES_LISTED: usize = 20;

/// Asks the API whether it takes a request (its shape), by counting it.
pub type ShapeChecker<'a> = dyn FnMut(&str) -> anyhow::Result<Answer> + 'a;

/// What the API said of one counted request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Taken: its input tokens.
    Counted(u64),
    Refused {
        status: u16,
        message: String,
    },
    /// Not asked: rate-limited or unreachable after retries.
    Unasked,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Cost {
    /// Everything through the Message Batches API (half price).
    pub batch: f64,
    /// Everything real time.
    pub realtime: f64,
}

/// Per limit class: requests, input tokens, output tokens, and a model of the class.
#[derive(Default)]
struct ClassTotals {
    requests: u64,
    input: u64,
    output: u64,
    model: String,
}

/// Lines counted together (so a token counter can send them side by side).
const CHUNK: usize = 256;

/// Where input-token counts come from: for each request of a chunk, its count, or None to use
/// the estimate (a failed count).
pub type InputCounter<'a> = dyn FnMut(&[ValidLine]) -> anyhow::Result<Vec<Option<u64>>> + 'a;

/// The estimate for every request: nothing is sent.
pub fn estimated(lines: &[ValidLine]) -> anyhow::Result<Vec<Option<u64>>> {
    Ok(vec![None; lines.len()])
}

/// Counts input tokens with the API's free `count_tokens` endpoint: up to 32 calls at once and no
/// more than `rpm` a minute (the endpoint has its own limit, apart from the Messages limits).
/// A 429 is waited out (its `retry-after`); 5xx, 529 and lost connections are tried again a few
/// times; a request the endpoint refuses (a 4xx) keeps its estimate. A refused key stops the plan.
pub struct ApiCounter {
    client: crate::api::ApiClient,
    runtime: tokio::runtime::Runtime,
    interval: std::time::Duration,
    next: tokio::time::Instant,
    /// Requests counted so far, for progress on stderr.
    pub counted: u64,
}

impl ApiCounter {
    pub fn new(client: crate::api::ApiClient, rpm: u32) -> anyhow::Result<ApiCounter> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let next = runtime.block_on(async { tokio::time::Instant::now() });
        Ok(ApiCounter {
            client,
            runtime,
            interval: std::time::Duration::try_from_secs_f64(60.0 / f64::from(rpm.max(1)))
                .unwrap_or(std::time::Duration::from_secs(60)),
            next,
            counted: 0,
        })
    }

    pub fn count(&mut self, lines: &[ValidLine]) -> anyhow::Result<Vec<Option<u64>>> {
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
        let mut tasks = tokio::task::JoinSet::new();
        let _guard = self.runtime.enter();
        for (i, v) in lines.iter().enumerate() {
            // Each call gets a start time `interval` after the previous one: the RPM is kept.
            let start = self.next.max(tokio::time::Instant::now());
            self.next = start + self.interval;
            let (client, params, permits) =
                (self.client.clone(), v.params.clone(), permits.clone());
            tasks.spawn(async move {
                tokio::time::sleep_until(start).await;
                let _permit = permits.acquire_owned().await;
                (i, count_one(&client, &params).await)
            });
        }
        let mut counts = vec![None; lines.len()];
        let results = self.runtime.block_on(async {
            let mut results = Vec::with_capacity(lines.len());
            while let Some(joined) = tasks.join_next().await {
                results.push(joined);
            }
            results
        });
        for joined in results {
            let (i, count) = joined?;
            counts[i] = count?;
        }
        self.counted += lines.len() as u64;
        Ok(counts)
    }
}

impl ApiCounter {
    /// Asks the API whether it takes `params` (one count_tokens call, paced like [`Self::count`]).
    pub fn check(&mut self, params: &str) -> anyhow::Result<Answer> {
        let start = self
            .next
            .max(self.runtime.block_on(async { tokio::time::Instant::now() }));
        self.next = start + self.interval;
        let client = self.client.clone();
        let params = params.to_owned();
        self.runtime.block_on(async move {
            tokio::time::sleep_until(start).await;
            ask(&client, &params).await
        })
    }
}

async fn count_one(client: &crate::api::ApiClient, params: &str) -> anyhow::Result<Option<u64>> {
    Ok(match ask(client, params).await? {
        Answer::Counted(n) => Some(n),
        Answer::Refused { .. } | Answer::Unasked => None,
    })
}

/// One count_tokens call, with 429s waited out and passing failures tried again.
async fn ask(client: &crate::api::ApiClient, params: &str) -> anyhow::Result<Answer> {
    use crate::model::answer::Outcome;
    use std::time::Duration;
    for attempt in 0..8u32 {
        let wait = match client.count_tokens(params).await {
            Ok(n) => return Ok(Answer::Counted(n)),
            Err(Outcome::RateLimited { retry_after, .. }) => {
                retry_after.unwrap_or(Duration::from_secs(1))
            }
            Err(Outcome::Retryable { retry_after, .. }) => {
                retry_after.unwrap_or(Duration::from_millis(250 << attempt))
            }
            Err(Outcome::Unknown { .. }) => Duration::from_millis(250 << attempt),
            Err(Outcome::Blocked {
                status, message, ..
            }) => anyhow::bail!(
                "the API refuses token counting (HTTP {status}: {message}); check the key, or plan without --count-tokens and --check"
            ),
            Err(Outcome::Fatal { status, body, .. }) => {
                use crate::policy::preflight::{Refusal, refusal};
                match refusal(status, &body) {
                    Refusal::Refused { message, .. } => {
                        return Ok(Answer::Refused { status, message });
                    }
                    Refusal::NotTheApi => anyhow::bail!(
                        "count_tokens answered HTTP {status} other than the API does: is the endpoint there at api.base_url? ({body})"
                    ),
                }
            }
            Err(Outcome::Succeeded { .. }) => return Ok(Answer::Unasked),
        };
        tokio::time::sleep(wait).await;
    }
    Ok(Answer::Unasked)
}

/// The prompt cache's part of one lane's plan: the prefixes seen (per model) and what the calls
/// would be billed, written and read.
#[derive(Default)]
struct CacheLane {
    seen: std::collections::HashSet<(String, i64)>,
    requests: u64,
    written: u64,
    read: u64,
    micro: i64,
    /// Per limit class, as [`Tally::classes`] but with ITPM charged only the input not read.
    classes: BTreeMap<String, ClassTotals>,
}

impl CacheLane {
    /// Adds a call of `line` with `input` tokens of prompt, marking `prefix` (as it goes in this
    /// lane): the first of a prefix writes it, the others read it. A prefix shorter than the
    /// model's minimum is not cached. Its size is the estimate's, scaled to `input` when the API
    /// counted the request (the estimate runs high).
    fn add(
        &mut self,
        config: &Config,
        line: &ValidLine,
        prefix: Option<crate::model::prompt_cache::CachePrefix>,
        input: u64,
        batch: bool,
    ) {
        use crate::model::answer::{CacheCreation, Usage};
        let mut usage = Usage {
            input_tokens: input,
            output_tokens: line.max_tokens,
            ..Default::default()
        };
        let mut charged = input;
        let scaled = |tokens: u64| {
            let scaled =
                u128::from(tokens) * u128::from(input) / u128::from(line.input_estimate.max(1));
            u64::try_from(scaled).unwrap_or(u64::MAX).min(input)
        };
        let prefix = prefix.map(|p| (p, scaled(p.tokens))).filter(|(_, tokens)| {
            *tokens >= crate::model::catalog::min_cacheable_tokens(&line.model)
        });
        if let Some((prefix, tokens)) = prefix {
            self.requests += 1;
            usage.input_tokens = input - tokens;
            if self.seen.insert((line.model.clone(), prefix.key)) {
                self.written += tokens;
                let one_hour = prefix.ttl_ms >= crate::model::prompt_cache::ONE_HOUR_MS;
                usage.cache_creation_input_tokens = Some(tokens);
                usage.cache_creation = Some(CacheCreation {
                    ephemeral_5m_input_tokens: if one_hour { 0 } else { tokens },
                    ephemeral_1h_input_tokens: if one_hour { tokens } else { 0 },
                });
            } else {
                self.read += tokens;
                usage.cache_read_input_tokens = Some(tokens);
                charged = input - tokens;
            }
        }
        self.micro += config
            .prices
            .cost_micro_usd(&line.model, &usage, batch)
            .unwrap_or(0);
        self.classes
            .entry(crate::policy::quota::limit_class(&line.model))
            .or_default()
            .add(&line.model, charged, line.max_tokens);
    }
}

/// Running sums over the file.
#[derive(Default)]
struct Tally {
    classes: BTreeMap<String, ClassTotals>,
    items: u64,
    invalid: u64,
    input: u64,
    output: u64,
    batch_micro: i64,
    realtime_micro: i64,
    unpriced: Vec<String>,
    /// Requests whose input is the estimate (no count was asked for, or the count failed).
    estimated: u64,
    /// The deprecated models the file uses.
    deprecated: crate::model::catalog::Deprecations,
    /// With the prompt cache, in each lane.
    cache_batch: CacheLane,
    cache_realtime: CacheLane,
}

impl ClassTotals {
    fn add(&mut self, model: &str, input: u64, output: u64) {
        self.requests += 1;
        self.input += input;
        self.output += output;
        model.clone_into(&mut self.model);
    }
}

impl Tally {
    fn add(
        &mut self,
        config: &Config,
        today: &str,
        chunk: &[ValidLine],
        counter: &mut InputCounter<'_>,
    ) -> anyhow::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let counts = counter(chunk)?;
        for (v, count) in chunk.iter().zip(counts) {
            self.deprecated.note(&v.model, today);
            let input = count.unwrap_or(v.input_estimate);
            self.estimated += u64::from(count.is_none());
            self.items += 1;
            self.input += input;
            self.output += v.max_tokens;
            let usage = crate::model::answer::Usage {
                input_tokens: input,
                output_tokens: v.max_tokens,
                ..Default::default()
            };
            match (
                config.prices.cost_micro_usd(&v.model, &usage, true),
                config.prices.cost_micro_usd(&v.model, &usage, false),
            ) {
                (Some(b), Some(r)) => {
                    self.batch_micro += b;
                    self.realtime_micro += r;
                }
                _ if !self.unpriced.contains(&v.model) => self.unpriced.push(v.model.clone()),
                _ => {}
            }
            self.classes
                .entry(crate::policy::quota::limit_class(&v.model))
                .or_default()
                .add(&v.model, input, v.max_tokens);
            self.cache_realtime.add(config, v, v.cache, input, false);
            // What `prompt_cache::for_batches` makes of the line in a batch.
            let in_batch = match (v.cache_added, &v.unmarked) {
                (true, Some(_)) => None,
                (true, None) => v.cache.map(|p| crate::model::prompt_cache::CachePrefix {
                    ttl_ms: crate::model::prompt_cache::ONE_HOUR_MS,
                    ..p
                }),
                (false, _) => v.cache,
            };
            self.cache_batch.add(config, v, in_batch, input, true);
        }
        Ok(())
    }
}

/// Shapes seen in a file: each with its first request's body, its requests and their first lines.
#[derive(Default)]
struct Shapes {
    order: Vec<String>,
    by_key: HashMap<String, ShapeSeen>,
}

struct ShapeSeen {
    first_params: String,
    first_line: u64,
    requests: u64,
    lines: Vec<u64>,
}

impl Shapes {
    fn add(&mut self, v: &ValidLine, line: u64) {
        let Some(key) = crate::policy::preflight::shape_key(&v.params) else {
            return;
        };
        let seen = self.by_key.entry(key.clone()).or_insert_with(|| {
            self.order.push(key);
            ShapeSeen {
                first_params: v.params.clone(),
                first_line: line,
                requests: 0,
                lines: Vec::new(),
            }
        });
        seen.requests += 1;
        if seen.lines.len() < MAX_LINES_LISTED {
            seen.lines.push(line);
        }
    }

    /// Asks `checker` of each shape, by its first request.
    fn check(self, checker: &mut ShapeChecker<'_>) -> anyhow::Result<ShapeCheck> {
        use crate::policy::preflight::shape_probe;
        let mut report = ShapeCheck {
            shapes: self.order.len() as u64,
            unchecked: 0,
            refused: Vec::new(),
        };
        let mut by_key = self.by_key;
        for (n, key) in self.order.iter().enumerate() {
            let Some(seen) = by_key.remove(key) else {
                continue;
            };
            if n > 0 && n % 500 == 0 {
                eprintln!("checking request shapes: {n} of {} so far", report.shapes);
            }
            match checker(&seen.first_params)? {
                Answer::Counted(_) => {}
                Answer::Unasked => report.unchecked += 1,
                Answer::Refused { status, message } => {
                    // The shape, if one short turn in place of the conversation is refused too;
                    // else the counted line alone.
                    let shape_refused = match shape_probe(&seen.first_params, &message) {
                        Some(probe) => match checker(&probe)? {
                            Answer::Refused { status, message } => Some((status, message)),
                            Answer::Counted(_) | Answer::Unasked => None,
                        },
                        None => None,
                    };
                    report.refused.push(match shape_refused {
                        Some((status, message)) => RefusedShape {
                            error: format!("HTTP {status}: {message}"),
                            requests: seen.requests,
                            lines: seen.lines,
                        },
                        None => RefusedShape {
                            error: format!("HTTP {status}: {message}"),
                            requests: 1,
                            lines: vec![seen.first_line],
                        },
                    });
                }
            }
        }
        Ok(report)
    }
}

/// Plans `file` with input tokens from `counter` ([`estimated`], or the API's `count_tokens`),
/// and with `checker`, asks the API whether it takes each request shape (`--check`). `now`
/// (Unix ms) dates the model table and resolves relative deadlines.
pub fn plan(
    config: &Config,
    file: &Path,
    now: i64,
    counter: &mut InputCounter<'_>,
    checker: Option<&mut ShapeChecker<'_>>,
) -> anyhow::Result<Plan> {
    let sidecar = file.with_extension("toml");
    let defaults = if sidecar.is_file() {
        let text = std::fs::read_to_string(&sidecar)
            .with_context(|| format!("reading {}", sidecar.display()))?;
        crate::config::sidecar::job_defaults(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", sidecar.display()))?
    } else {
        JobDefaults::default()
    };
    let file_handle =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut reader = JobFileReader::new(BufReader::with_capacity(1 << 20, file_handle));
    let mut repeats = Repeats::default();
    let mut shapes = Shapes::default();
    let ctx = LineContext::new(&defaults, now, &config.api.anthropic_version);
    let mut tally = Tally::default();
    let cache_mode = defaults.cache.unwrap_or(config.cache);
    let mut marker = crate::model::prompt_cache::AutoMarker::default();
    // Intake's chunks: `cache = "auto"` compares the requests of one chunk with each other.
    // The valid lines of a chunk and their line numbers.
    let mut chunk: Vec<ValidLine> = Vec::with_capacity(CHUNK);
    let mut line_nos: Vec<u64> = Vec::with_capacity(CHUNK);
    let (mut chunk_lines, mut chunk_bytes) = (0usize, 0usize);
    let asks_shapes = checker.is_some();
    let mut add_chunk = |tally: &mut Tally,
                         chunk: &mut Vec<ValidLine>,
                         line_nos: &mut Vec<u64>|
     -> anyhow::Result<()> {
        if cache_mode == crate::model::job::CacheMode::Auto {
            marker.mark(&mut chunk.iter_mut().collect::<Vec<_>>());
        }
        if asks_shapes {
            // The bodies as intake will store them (with the marks auto adds).
            for (v, line_no) in chunk.iter().zip(line_nos.iter()) {
                shapes.add(v, *line_no);
            }
        }
        for part in chunk.chunks(CHUNK) {
            tally.add(config, &ctx.today, part, counter)?;
        }
        chunk.clear();
        line_nos.clear();
        Ok(())
    };
    // Intake's reading and judging, line by line: the counts agree with what intake accepts,
    // and the chunks are intake's (every line counts toward one), so auto's marks agree too.
    while let Some(line) = reader
        .next_line(&ctx)
        .with_context(|| format!("reading {}", file.display()))?
    {
        chunk_lines += 1;
        chunk_bytes += line.len;
        match repeats.check(line.parsed, line.line_no) {
            ParsedLine::Valid(v) => {
                chunk.push(v);
                line_nos.push(line.line_no);
            }
            ParsedLine::Invalid { .. } => tally.invalid += 1,
        }
        if chunk_lines >= crate::lanes::intake::CHUNK_LINES
            || chunk_bytes >= crate::lanes::intake::CHUNK_BYTES
        {
            add_chunk(&mut tally, &mut chunk, &mut line_nos)?;
            (chunk_lines, chunk_bytes) = (0, 0);
        }
    }
    add_chunk(&mut tally, &mut chunk, &mut line_nos)?;
    let check = match checker {
        Some(checker) => Some(shapes.check(checker)?),
        None => None,
    };
    let Tally {
        classes,
        items,
        invalid,
        input,
        output,
        batch_micro,
        realtime_micro,
        unpriced,
        estimated,
        deprecated,
        cache_batch,
        cache_realtime,
    } = tally;
    let drain = drain_time(config, &classes, items);
    let cache = (cache_realtime.requests > 0 || cache_batch.requests > 0).then(|| {
        let with_cache = drain_time(config, &cache_realtime.classes, items);
        let (written, read) = (cache_realtime.written, cache_realtime.read);
        CachePlan {
            mode: cache_mode.as_str(),
            requests: cache_realtime.requests,
            prefixes: cache_realtime.seen.len() as u64,
            write_tokens: written,
            read_tokens: read,
            hit_rate: crate::policy::prices::cache_hit_ratio(read as i64, written as i64),
            cost_usd: Cost {
                batch: cache_batch.micro as f64 / 1_000_000.0,
                realtime: cache_realtime.micro as f64 / 1_000_000.0,
            },
            drain_seconds_realtime: with_cache.map(|(s, _)| s),
            binding: with_cache.filter(|_| items > 0).map(|(_, b)| b),
        }
    });
    Ok(Plan {
        items,
        invalid_lines: invalid,
        input_tokens: input,
        counted_requests: items - estimated,
        max_output_tokens: output,
        cost_usd: Cost {
            batch: batch_micro as f64 / 1_000_000.0,
            realtime: realtime_micro as f64 / 1_000_000.0,
        },
        drain_seconds_realtime: drain.map(|(s, _)| s),
        binding: drain.filter(|_| items > 0).map(|(_, b)| b),
        unpriced_models: unpriced,
        deprecated_models: deprecated.warnings(),
        check,
        cache,
    })
}

/// How long the real-time lane needs for `classes` at the configured limits, and which limit
/// binds: classes drain side by side, the slowest decides, and within it the slowest dimension.
/// None when a class has no configured limits.
fn drain_time(
    config: &Config,
    classes: &BTreeMap<String, ClassTotals>,
    items: u64,
) -> Option<(f64, &'static str)> {
    if items == 0 {
        return Some((0.0, "rpm"));
    }
    let mut drain = (0.0, "rpm");
    for totals in classes.values() {
        let limits = config.limits_for(&totals.model);
        for (name, amount, limit) in [
            ("rpm", totals.requests, limits.rpm),
            ("itpm", totals.input, limits.itpm),
            ("otpm", totals.output, limits.otpm),
        ] {
            let secs = amount as f64 / limit? as f64 * 60.0;
            if secs > drain.0 {
                drain = (secs, name);
            }
        }
    }
    Some(drain)
}

impl Plan {
    pub fn to_text(&self) -> String {
        let source = match self.counted_requests {
            0 => "estimated".to_owned(),
            n if n == self.items => "counted by the API".to_owned(),
            n => format!("counted by the API for {n} requests, estimated for the rest"),
        };
        let mut out = format!(
            "{} requests ({} invalid lines left out)\n  input tokens   {} ({source})\n  output tokens  <= {} (sum of max_tokens)\n  cost           ${:.4} through batches, ${:.4} real time (at most)\n",
            self.items,
            self.invalid_lines,
            self.input_tokens,
            self.max_output_tokens,
            self.cost_usd.batch,
            self.cost_usd.realtime
        );
        match (self.drain_seconds_realtime, self.binding) {
            (Some(secs), Some(binding)) => out.push_str(&format!(
                "  real time      about {:.0} s at the configured limits; {binding} binds\n",
                secs
            )),
            _ => out.push_str("  real time      unknown: some models have no configured limits ([limits] or [quota] tier)\n"),
        }
        if let Some(c) = &self.cache {
            out.push_str(&format!(
                "  with the cache {} requests mark {} prefix{} (cache = {}): ~{} tokens written, ~{} read, hit rate {}\n                 ${:.4} through batches, ${:.4} real time (at most); ",
                c.requests,
                c.prefixes,
                if c.prefixes == 1 { "" } else { "es" },
                c.mode,
                c.write_tokens,
                c.read_tokens,
                c.hit_rate
                    .map_or("-".to_owned(), |h| format!("{:.1} %", h * 100.0)),
                c.cost_usd.batch,
                c.cost_usd.realtime
            ));
            match (c.drain_seconds_realtime, c.binding) {
                (Some(secs), Some(binding)) => {
                    out.push_str(&format!("real time about {secs:.0} s, {binding} binds\n"))
                }
                _ => out.push_str("real time unknown\n"),
            }
        }
        if let Some(check) = &self.check {
            out.push_str(&format!(
                "  check          {} request shapes asked of the API (count_tokens){}\n",
                check.shapes,
                if check.unchecked > 0 {
                    format!(", {} could not be asked", check.unchecked)
                } else {
                    String::new()
                }
            ));
            for r in &check.refused {
                let more = if r.requests > r.lines.len() as u64 {
                    ", …"
                } else {
                    ""
                };
                let lines: Vec<String> = r.lines.iter().map(u64::to_string).collect();
                out.push_str(&format!(
                    "  REFUSED        {} requests (lines {}{more}): {}\n",
                    r.requests,
                    lines.join(", "),
                    r.error
                ));
            }
        }
        for warning in &self.deprecated_models {
            out.push_str(&format!("  deprecated: {warning}\n"));
        }
        if !self.unpriced_models.is_empty() {
            out.push_str(&format!(
                "  no price for: {} (not in the cost)\n",
                self.unpriced_models.join(", ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-02.
    const NOW: i64 = 1_796_212_800_000;

    fn config(limits: &str) -> Config {
        Config::parse(
            limits,
            Path::new("/tmp/nightshift.toml"),
            &Default::default(),
        )
        .expect("config")
    }

    fn write(lines: &[String]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        use std::io::Write;
        for l in lines {
            writeln!(file, "{l}").expect("write");
        }
        file
    }

    fn line(i: usize, prompt_chars: usize, max_tokens: u64) -> String {
        format!(
            r#"{{"custom_id":"p-{i}","params":{{"model":"claude-sonnet-4-6","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"{}"}}]}}}}"#,
            "x".repeat(prompt_chars)
        )
    }

    #[test]
    fn the_binding_dimension_is_the_slowest_to_drain() {
        let limits = "[limits.default]\nrpm = 1000\nitpm = 10000\notpm = 100000\n";
        // Long prompts, short answers: input tokens bind.
        let file = write(&(0..10).map(|i| line(i, 4_000, 16)).collect::<Vec<_>>());
        let p = plan(&config(limits), file.path(), NOW, &mut estimated, None).expect("plan");
        assert_eq!(p.items, 10);
        assert_eq!(p.binding, Some("itpm"));
        assert!(p.drain_seconds_realtime.expect("known") > 60.0);
        // Short prompts, long answers: output tokens bind.
        let file = write(&(0..10).map(|i| line(i, 10, 50_000)).collect::<Vec<_>>());
        assert_eq!(
            plan(&config(limits), file.path(), NOW, &mut estimated, None)
                .expect("plan")
                .binding,
            Some("otpm")
        );
        // Many small requests under a low RPM: requests bind.
        let low_rpm = "[limits.default]\nrpm = 50\nitpm = 10000\notpm = 100000\n";
        let file = write(&(0..200).map(|i| line(i, 10, 1)).collect::<Vec<_>>());
        let p = plan(&config(low_rpm), file.path(), NOW, &mut estimated, None).expect("plan");
        assert_eq!(p.binding, Some("rpm"));
        assert_eq!(
            p.drain_seconds_realtime,
            Some(240.0),
            "200 requests at 50 RPM"
        );
    }

    /// A request sharing a ~4,000-token system prompt (16,000 bytes), marked or not.
    fn rubric_line(i: usize, marked: bool) -> String {
        let mark = if marked {
            r#","cache_control":{"type":"ephemeral"}"#
        } else {
            ""
        };
        format!(
            r#"{{"custom_id":"r-{i}","params":{{"model":"claude-sonnet-5-5","max_tokens":10,"system":[{{"type":"text","text":"{}"{mark}}}],"messages":[{{"role":"user","content":"item {i}"}}]}}}}"#,
            "abcd".repeat(4_000)
        )
    }

    #[test]
    fn the_cache_is_predicted_beside_the_plan_without_it() {
        let tier = "[limits.default]\nrpm = 50\nitpm = 30000\notpm = 8000\n";
        // cache = "auto" (the config's default): nothing marked, auto would mark the rubric.
        let file = write(&(0..10).map(|i| rubric_line(i, false)).collect::<Vec<_>>());
        let p = plan(&config(tier), file.path(), NOW, &mut estimated, None).expect("plan");
        assert_eq!(
            p.binding,
            Some("itpm"),
            "uncached, 10 x ~4,000 tokens against 30k ITPM"
        );
        let c = p.cache.as_ref().expect("a cache plan");
        assert_eq!((c.mode, c.requests, c.prefixes), ("auto", 10, 1));
        assert!((3_990..4_100).contains(&c.write_tokens), "{c:?}");
        assert_eq!(c.read_tokens, 9 * c.write_tokens);
        assert!((c.hit_rate.expect("a hit rate") - 0.9).abs() < 1e-9);
        // Reads do not count toward ITPM: requests bind, 10 at 50 RPM.
        assert_eq!(
            (c.binding, c.drain_seconds_realtime),
            (Some("rpm"), Some(12.0))
        );
        assert!(c.cost_usd.realtime < p.cost_usd.realtime * 0.3, "{p:?}");
        assert!(c.cost_usd.batch < p.cost_usd.batch * 0.4, "{p:?}");
        assert!(p.to_text().contains("hit rate 90.0 %"), "{}", p.to_text());
        // cache = "off" in the sidecar: nothing would be marked, so no prediction.
        std::fs::write(file.path().with_extension("toml"), "cache = \"off\"\n").expect("sidecar");
        let off = plan(&config(tier), file.path(), NOW, &mut estimated, None).expect("plan");
        assert_eq!(off.cache, None);
        // ...but a file's own breakpoints are predicted whatever the mode.
        let marked = write(&(0..10).map(|i| rubric_line(i, true)).collect::<Vec<_>>());
        std::fs::write(marked.path().with_extension("toml"), "cache = \"off\"\n").expect("sidecar");
        let own = plan(&config(tier), marked.path(), NOW, &mut estimated, None).expect("plan");
        let c = own.cache.expect("a cache plan");
        assert_eq!((c.mode, c.requests, c.prefixes), ("off", 10, 1));
        // Two requests sharing a prefix: auto marks it in real time, not for an hour in a batch.
        let pair = write(&(0..2).map(|i| rubric_line(i, false)).collect::<Vec<_>>());
        let p = plan(&config(tier), pair.path(), NOW, &mut estimated, None).expect("plan");
        let c = p.cache.expect("a cache plan");
        assert!(c.cost_usd.realtime < p.cost_usd.realtime);
        assert_eq!(
            c.cost_usd.batch, p.cost_usd.batch,
            "sent as written in a batch"
        );
        // A prefix marked but shorter than the model's minimum: the API caches nothing.
        let short = write(
            &(0..10)
                .map(|i| rubric_line(i, true).replace(&"abcd".repeat(4_000), "short rubric"))
                .collect::<Vec<_>>(),
        );
        let p = plan(&config(tier), short.path(), NOW, &mut estimated, None).expect("plan");
        assert_eq!(p.cache, None);
        for f in [&file, &marked] {
            let _ = std::fs::remove_file(f.path().with_extension("toml"));
        }
    }

    #[test]
    fn costs_compare_batches_with_real_time_and_bad_lines_are_left_out() {
        let mut lines: Vec<String> = (0..4).map(|i| line(i, 400, 100)).collect();
        lines.push("{not json".into());
        let file = write(&lines);
        let p = plan(&config(""), file.path(), NOW, &mut estimated, None).expect("plan");
        assert_eq!((p.items, p.invalid_lines), (4, 1));
        assert!((p.cost_usd.batch * 2.0 - p.cost_usd.realtime).abs() < 1e-6);
        assert_eq!(p.drain_seconds_realtime, None, "no limits configured");
        assert_eq!(p.binding, None);
        assert_eq!(p.max_output_tokens, 400);
    }
}
