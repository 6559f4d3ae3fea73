//! The quota controller: the API's own algorithm, run locally, per limit class (models sharing a
//! limit share one controller).
//!
//! Each class has three continuously refilled token buckets — requests, input tokens, output
//! tokens — as the API enforces them. What we know of each is kept as:
//! - the **limit** (per minute): from the config (or a tier preset), then what the answers'
//!   `-limit` headers say (a configured limit is never exceeded);
//! - the **capacity** (the burst the bucket holds, which the API does not publish): learned from
//!   every answer as `remaining + seconds-to-reset × rate`, kept as the recent upper end;
//! - the **level**, pessimistic: every answer resets it to what the API said remains, less the
//!   cost of our calls the answer may not have counted yet (for requests and input tokens, calls
//!   sent after the answered one; for output tokens, every other call in flight). So consumption
//!   by anyone else on the org — interactive apps that never pass through nightshift — is seen.
//!
//! Admission: a call may take from every bucket when the level stays above the class's floor.
//! Only `interactive` work may use the last `reserve` fraction of each bucket's capacity; the
//! other classes stop at it, so interactive traffic always finds room, while alone they still run
//! at the full refill rate (the reserve is headroom, not a cut in throughput).
//!
//! Output tokens are reserved at admission (`max_tokens`, or a learned estimate) and settled with
//! the real usage: safe where output is charged as generated (the 2026 rule) and where `max_tokens`
//! is charged up front (the 2025 rule, Bedrock). Input tokens are estimated from the body and the
//! estimator is calibrated per class from each answer's `usage`.
//!
//! Everything here is pure: `now` is passed in, nothing reads the clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::model::answer::{RateLimitHeaders, Usage};
use crate::config::ModelLimits;
use crate::model::job::Priority;

/// The three dimensions, in header order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Requests = 0,
    Input = 1,
    Output = 2,
}

pub const DIMS: [Dim; 3] = [Dim::Requests, Dim::Input, Dim::Output];

impl Dim {
    pub fn name(self) -> &'static str {
        match self {
            Dim::Requests => "requests",
            Dim::Input => "input_tokens",
            Dim::Output => "output_tokens",
        }
    }

    /// The short name of its per-minute limit, as in the config.
    pub fn limit_name(self) -> &'static str {
        match self {
            Dim::Requests => "rpm",
            Dim::Input => "itpm",
            Dim::Output => "otpm",
        }
    }
}

/// How output tokens are reserved at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputReservation {
    /// `max_tokens`: always safe.
    MaxTokens,
    /// Learned from the class's observed outputs (about p90 of recent answers), capped at
    /// `max_tokens`: more concurrency where outputs are far below `max_tokens`, but under the
    /// older rule (`max_tokens` charged up front) it can overshoot.
    Learned,
}

/// Settings of the controller.
#[derive(Debug, Clone, Copy)]
pub struct QuotaSettings {
    /// Fraction of each bucket's capacity only `interactive` work may use.
    pub reserve: f64,
    pub output_reservation: OutputReservation,
    /// Most calls in flight per class (adaptive concurrency grows up to this).
    pub max_concurrency: usize,
    /// Calls in flight per class at the start, before concurrency has grown.
    pub initial_concurrency: usize,
}

/// Before any answer: assume this much of each limit's refill is in the bucket.
const PROBE_SECS: f64 = 1.0;
/// Capacity estimates kept per dimension.
const CAPACITY_WINDOW: usize = 32;

/// What is known of one bucket.
#[derive(Debug, Clone)]
struct Bucket {
    /// Per-minute limit in force; None: unknown, not paced locally.
    limit: Option<f64>,
    /// The configured limit, never exceeded by what headers say.
    configured: Option<f64>,
    /// The limit the API's headers last gave.
    api_limit: Option<f64>,
    /// Recent capacity estimates; the upper end sizes the reserve.
    capacity_seen: VecDeque<f64>,
    /// Capacity assumed until an answer says more.
    capacity_assumed: f64,
    level: f64,
    updated: Instant,
    /// The last `remaining` an answer gave, and when.
    last_remaining: Option<(u64, Instant)>,
}

impl Bucket {
    /// `start`: the limit to start from; `cap`: whether it is a ceiling the headers may not
    /// raise (explicit numbers in the config) or only a first guess (a tier preset).
    fn new(start: Option<u64>, cap: bool, now: Instant) -> Bucket {
        let limit = start.map(|l| l as f64);
        let probe = limit.map_or(0.0, |l| (l * PROBE_SECS / 60.0).max(1.0));
        Bucket {
            limit,
            configured: if cap { limit } else { None },
            api_limit: None,
            capacity_seen: VecDeque::new(),
            capacity_assumed: probe,
            level: probe,
            updated: now,
            last_remaining: None,
        }
    }

    fn rate(&self) -> f64 {
        self.limit.unwrap_or(0.0) / 60.0
    }

    /// A reloaded config: the new limit is in force at once (the next answer's headers lower it
    /// again if the API's is smaller). A changed limit makes capacity estimates stale; the level
    /// is kept, never above the new starting burst, so a reload cannot cause a burst.
    fn reconfigure(&mut self, start: Option<u64>, cap: bool, now: Instant) {
        self.refill(now);
        let start = start.map(|l| l as f64);
        self.configured = if cap { start } else { None };
        // What the API's headers said still holds: a ceiling only lowers it, a guess never
        // replaces it.
        let limit = match (start, self.api_limit) {
            (Some(s), Some(api)) if cap => Some(s.min(api)),
            (_, Some(api)) => Some(api),
            (s, None) => s,
        };
        if limit != self.limit {
            self.limit = limit;
            self.capacity_seen.clear();
            self.capacity_assumed = limit.map_or(0.0, |l| (l * PROBE_SECS / 60.0).max(1.0));
            self.level = self.level.min(self.capacity_assumed);
        }
    }

    /// The burst the bucket holds, upper end of recent estimates: sizes the reserve, so the
    /// reserve is never too small. (`-reset` is given to the second, so estimates run up to a
    /// second's refill high.)
    fn capacity(&self) -> f64 {
        self.capacity_seen
            .iter()
            .copied()
            .fold(self.capacity_assumed, f64::max)
    }

    /// The lower end of recent estimates: the level is never assumed above it, so a burst after
    /// an idle spell cannot overshoot the real bucket.
    fn capacity_low(&self) -> f64 {
        if self.capacity_seen.is_empty() {
            return self.capacity_assumed;
        }
        // A low quantile, not the minimum: one estimate spoilt by a clock off by a second must not
        // shrink the bucket for the next 32 answers.
        let mut sorted: Vec<f64> = self.capacity_seen.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 4]
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.rate()).min(self.capacity_low());
        self.updated = self.updated.max(now);
    }

    /// What must be in the bucket to take `cost` above `floor`: all of it, or the whole usable
    /// part for a call larger than that (the level then goes below the floor and refills).
    fn needed(&self, cost: f64, floor: f64) -> f64 {
        // Never more than the bucket surely holds: a bucket too small for its reserve admits a
        // lower class only when full, instead of never.
        let low = self.capacity_low();
        (floor + cost.min((low - floor).max(0.0))).min(low)
    }

    fn wait_for(&self, cost: f64, floor: f64) -> Duration {
        let missing = self.needed(cost, floor) - self.level;
        if missing <= 0.0 || self.rate() <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((missing / self.rate()).min(3600.0))
    }

    /// Applies what an answer said: the limit, a capacity estimate, and the level less `uncounted`
    /// (our calls the answer may not include). Never panics on odd values.
    /// `tokens`: the dimension counts tokens, whose `remaining` the API rounds to thousands.
    fn correct(
        &mut self,
        header: &crate::model::answer::DimHeaders,
        uncounted: f64,
        tokens: bool,
        now: Instant,
    ) {
        let api_limit = header.limit.filter(|l| *l > 0).map(|l| l as f64);
        if api_limit.is_some() {
            self.api_limit = api_limit;
        }
        if let Some(limit) = api_limit {
            let effective = self.configured.map_or(limit, |c| c.min(limit));
            if self.limit != Some(effective) {
                self.limit = Some(effective);
                // A new limit makes old capacity estimates stale.
                self.capacity_seen.clear();
                self.capacity_assumed = (effective * PROBE_SECS / 60.0).max(1.0);
            }
        }
        self.refill(now);
        let Some(remaining) = header.remaining else {
            return;
        };
        self.last_remaining = Some((remaining, now));
        // Token counts are rounded to the nearest thousand: the truth may be 500 lower.
        let remaining = if tokens && remaining >= 1000 && remaining % 1000 == 0 {
            remaining as f64 - 500.0
        } else {
            remaining as f64
        };
        // The API's own bucket refills at the API's limit, which may be above ours.
        let api_rate = api_limit.or(self.limit).unwrap_or(0.0) / 60.0;
        let plausible = api_limit.is_none_or(|l| remaining <= l);
        match header.reset_in {
            // A per-minute bucket is full again within a minute; anything else is not trusted.
            Some(reset_in) if reset_in > 0.0 && reset_in <= 60.0 && api_rate > 0.0 && plausible => {
                if self.capacity_seen.len() == CAPACITY_WINDOW {
                    self.capacity_seen.pop_front();
                }
                self.capacity_seen
                    .push_back(remaining + reset_in * api_rate);
            }
            _ if plausible => self.capacity_assumed = self.capacity_assumed.max(remaining),
            _ => {}
        }
        let from_answer = (remaining - uncounted).min(self.capacity_low());
        let self_capped = matches!((self.configured, api_limit), (Some(c), Some(a)) if c < a);
        // Under our own, lower limit the API's bucket holds more than we may use: keep our books
        // and let the answer only lower them (someone else took from the bucket).
        self.level = if self_capped {
            self.level.min(from_answer)
        } else {
            from_answer
        };
    }
}

/// The controller of one limit class.
#[derive(Debug, Clone)]
struct Controller {
    buckets: [Bucket; 3],
    paused_until: Option<Instant>,
    /// Calls in flight: admission order → what each reserved, and its `max_tokens`.
    in_flight: BTreeMap<u64, ([f64; 3], u64)>,
    concurrency: usize,
    /// Calibration of the input estimate: actual / estimated, smoothed.
    input_ratio: f64,
    /// Relative errors of recent input estimates (after calibration), for diagnosis.
    input_errors: VecDeque<f64>,
    /// Recent (max_tokens, output tokens) of answers, for the usual output of similar calls.
    outputs: VecDeque<(u64, u64)>,
    last_throttle: Option<Instant>,
    /// The first model seen of the class, to look its configured limits up again on reload.
    model: String,
}

impl Controller {
    fn new(limits: ClassLimits, settings: &QuotaSettings, now: Instant) -> Controller {
        let cap = limits.is_ceiling;
        let l = limits.limits;
        Controller {
            buckets: [
                Bucket::new(l.rpm, cap, now),
                Bucket::new(l.itpm, cap, now),
                Bucket::new(l.otpm, cap, now),
            ],
            paused_until: None,
            in_flight: BTreeMap::new(),
            // Start small and grow.
            concurrency: settings
                .initial_concurrency
                .clamp(1, settings.max_concurrency.max(1)),
            input_ratio: 1.0,
            input_errors: VecDeque::new(),
            outputs: VecDeque::new(),
            last_throttle: None,
            model: String::new(),
        }
    }

    fn floor(&self, dim: Dim, priority: Priority, reserve: f64) -> f64 {
        if priority == Priority::Interactive {
            return 0.0;
        }
        let b = &self.buckets[dim as usize];
        // At least one request's worth for the request bucket, so the reserve never rounds away.
        let floor = reserve * b.capacity();
        if dim == Dim::Requests && reserve > 0.0 {
            floor.max(1.0)
        } else {
            floor
        }
    }

    /// About the p90 (with a margin) of recent outputs of calls with the same `max_tokens`, once
    /// ten have been seen: calls of one job are alike, calls of another may not be.
    fn usual_output(&self, max_tokens: u64) -> Option<f64> {
        let mut sorted: Vec<u64> = self
            .outputs
            .iter()
            .filter(|(m, _)| *m == max_tokens)
            .map(|(_, out)| *out)
            .collect();
        if sorted.len() < 10 {
            return None;
        }
        sorted.sort_unstable();
        let p90 = sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)];
        Some((p90 as f64 * 1.2 + 16.0).min(max_tokens as f64))
    }

    fn output_reservation(&self, max_tokens: u64, mode: OutputReservation) -> f64 {
        match (mode, self.usual_output(max_tokens)) {
            (OutputReservation::Learned, Some(usual)) => usual,
            _ => max_tokens as f64,
        }
    }
}

/// The limits a class starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClassLimits {
    pub limits: ModelLimits,
    /// Explicit numbers from the config are a ceiling the API's headers cannot raise; a tier
    /// preset is only a first guess, replaced by what the headers say.
    pub is_ceiling: bool,
}

impl ClassLimits {
    pub fn ceiling(limits: ModelLimits) -> ClassLimits {
        ClassLimits {
            limits,
            is_ceiling: true,
        }
    }
}

/// What the lane asks to send.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub model: &'a str,
    pub priority: Priority,
    /// The uncalibrated input estimate (a token per four bytes of body).
    pub input_estimate: u64,
    pub max_tokens: u64,
}

/// What an admitted call holds until it is settled.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    pub class: String,
    pub seq: u64,
    /// Reserved: requests (1), input tokens (calibrated estimate), output tokens.
    pub reserved: [f64; 3],
    pub raw_input_estimate: u64,
    pub max_tokens: u64,
    /// The class's concurrency when it was admitted.
    pub concurrency: usize,
}

/// How an answer went, for the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The API ran it (usage known).
    Ran,
    /// 429 rate limit.
    RateLimited,
    /// 529 overloaded: not a quota signal.
    Overloaded,
    /// Refused or failed without consuming anything (4xx, 5xx).
    Refused,
    /// Sent, no answer: it may have consumed quota.
    Unknown,
}

/// The state of one class, for `nightshift limits` and the benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassSnapshot {
    pub class: String,
    pub concurrency: usize,
    pub in_flight: usize,
    pub paused_for_secs: Option<f64>,
    pub input_ratio: f64,
    /// Mean absolute relative error of recent calibrated input estimates.
    pub input_error: Option<f64>,
    pub dims: Vec<DimSnapshot>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DimSnapshot {
    pub dim: &'static str,
    pub limit_per_minute: Option<f64>,
    pub capacity: f64,
    pub level: f64,
    pub last_remaining: Option<u64>,
}

/// The controllers of every class.
pub struct Quota {
    configured: Box<dyn Fn(&str) -> ClassLimits + Send>,
    settings: QuotaSettings,
    classes: HashMap<String, Controller>,
    next_seq: u64,
}

impl Quota {
    /// `configured` gives the configured (or tier) limits of a model.
    pub fn new(
        configured: impl Fn(&str) -> ClassLimits + Send + 'static,
        settings: QuotaSettings,
    ) -> Quota {
        Quota {
            configured: Box::new(configured),
            settings,
            classes: HashMap::new(),
            next_seq: 0,
        }
    }

    /// A reloaded config: `configured` gives the new limits (explicit ones in force at once,
    /// a tier preset only as the new first guess), and the reserve and output reservation change.
    /// Calls in flight keep what they hold.
    pub fn reconfigure(&mut self, settings: QuotaSettings, now: Instant) {
        self.settings = QuotaSettings {
            // Concurrency is sized at start (the lane's permits).
            max_concurrency: self.settings.max_concurrency,
            initial_concurrency: self.settings.initial_concurrency,
            ..settings
        };
        for c in self.classes.values_mut() {
            let limits = (self.configured)(&c.model);
            let l = limits.limits;
            for (bucket, start) in c.buckets.iter_mut().zip([l.rpm, l.itpm, l.otpm]) {
                bucket.reconfigure(start, limits.is_ceiling, now);
            }
        }
    }

    fn class(&mut self, model: &str, now: Instant) -> (String, &mut Controller) {
        let class = limit_class(model);
        if !self.classes.contains_key(&class) {
            let limits = (self.configured)(model);
            let mut controller = Controller::new(limits, &self.settings, now);
            controller.model = model.to_owned();
            self.classes.insert(class.clone(), controller);
        }
        let controller = self.classes.get_mut(&class).expect("inserted above");
        (class, controller)
    }

    /// Admits a call now, or says when to ask again (a call finishing may allow one sooner).
    pub fn try_admit(&mut self, request: &Request<'_>, now: Instant) -> Result<Ticket, Instant> {
        let settings = self.settings;
        let seq = self.next_seq;
        let (class, c) = self.class(request.model, now);
        if let Some(until) = c.paused_until {
            if now < until {
                return Err(until);
            }
            c.paused_until = None;
        }
        if c.in_flight.len() >= c.concurrency {
            return Err(now + Duration::from_secs(1));
        }
        let input = (request.input_estimate as f64 * c.input_ratio).max(1.0);
        let output = c.output_reservation(request.max_tokens, settings.output_reservation);
        let costs = [1.0, input, output];
        let mut wait = Duration::ZERO;
        for dim in DIMS {
            let floor = c.floor(dim, request.priority, settings.reserve);
            let b = &mut c.buckets[dim as usize];
            if b.limit.is_none() {
                continue;
            }
            b.refill(now);
            wait = wait.max(b.wait_for(costs[dim as usize], floor));
        }
        if !wait.is_zero() {
            return Err(now + wait.max(Duration::from_millis(1)));
        }
        for dim in DIMS {
            c.buckets[dim as usize].level -= costs[dim as usize];
        }
        c.in_flight.insert(seq, (costs, request.max_tokens));
        let concurrency = c.concurrency;
        self.next_seq += 1;
        Ok(Ticket {
            class,
            seq,
            reserved: costs,
            raw_input_estimate: request.input_estimate,
            max_tokens: request.max_tokens,
            concurrency,
        })
    }

    /// Settles a call: learns from its headers and usage, gives back what it did not use, and
    /// adapts the class's concurrency.
    pub fn settle(
        &mut self,
        ticket: &Ticket,
        answer: Answer,
        usage: Option<&Usage>,
        headers: &RateLimitHeaders,
        now: Instant,
    ) {
        let max_concurrency = self.settings.max_concurrency.max(1);
        let Some(c) = self.classes.get_mut(&ticket.class) else {
            return;
        };
        c.in_flight.remove(&ticket.seq);
        // Our calls this answer may not count: those sent after it (all three dimensions), and
        // for output tokens also those sent before it and still generating (where output is
        // charged as generated). Those cannot produce more than they reserved; once outputs have
        // been seen, not much more than a usual answer (p90), which keeps the level from being
        // needlessly low where `max_tokens` is far above real outputs.
        let mut uncounted = [0.0; 3];
        for (seq, (costs, max_tokens)) in &c.in_flight {
            if *seq > ticket.seq {
                uncounted[0] += costs[0];
                uncounted[1] += costs[1];
                uncounted[2] += costs[2];
            } else {
                let usual = c.usual_output(*max_tokens);
                uncounted[2] += usual.map_or(costs[2], |usual| usual.min(costs[2]));
            }
        }
        let used = match (answer, usage) {
            (Answer::Ran, Some(u)) => {
                Some([1.0, u.rate_limited_input() as f64, u.output_tokens as f64])
            }
            (Answer::Unknown, _) => None, // may have run: keep the reservation
            _ => Some([0.0; 3]),          // consumed nothing: give everything back
        };
        for dim in DIMS {
            let i = dim as usize;
            let header = &headers.dims[i];
            let b = &mut c.buckets[i];
            if header.remaining.is_some() || header.limit.is_some() {
                b.correct(header, uncounted[i], dim != Dim::Requests, now);
                if header.remaining.is_some() {
                    continue; // the answer's word replaces our books
                }
            }
            if let Some(used) = used {
                b.refill(now);
                b.level = (b.level + ticket.reserved[i] - used[i]).min(b.capacity_low());
            }
        }
        if let (Answer::Ran, Some(u)) = (answer, usage) {
            let actual = u.rate_limited_input() as f64;
            let raw = ticket.raw_input_estimate.max(1) as f64;
            let error = (ticket.reserved[1] - actual).abs() / actual.max(1.0);
            c.input_ratio = (0.9 * c.input_ratio + 0.1 * (actual / raw)).clamp(0.05, 20.0);
            push_bounded(&mut c.input_errors, error, 100);
            push_bounded(&mut c.outputs, (ticket.max_tokens, u.output_tokens), 200);
        }
        // Adaptive concurrency: grow while calls go through, halve on 429 and 529.
        match answer {
            Answer::RateLimited | Answer::Overloaded => {
                c.concurrency = (c.concurrency / 2).max(1);
                c.last_throttle = Some(now);
            }
            Answer::Ran if c.in_flight.len() + 1 >= c.concurrency => {
                c.concurrency = (c.concurrency + 1).min(max_concurrency);
            }
            _ => {}
        }
    }

    /// Holds every call of the model's class until `until` (`retry-after`).
    pub fn pause(&mut self, model: &str, until: Instant, now: Instant) {
        let (_, c) = self.class(model, now);
        c.paused_until = Some(c.paused_until.map_or(until, |u| u.max(until)));
    }

    /// The state of every class.
    pub fn snapshot(&mut self, now: Instant) -> Vec<ClassSnapshot> {
        let mut out: Vec<ClassSnapshot> = self
            .classes
            .iter_mut()
            .map(|(class, c)| ClassSnapshot {
                class: class.clone(),
                concurrency: c.concurrency,
                in_flight: c.in_flight.len(),
                paused_for_secs: c
                    .paused_until
                    .filter(|u| *u > now)
                    .map(|u| (u - now).as_secs_f64()),
                input_ratio: c.input_ratio,
                input_error: (!c.input_errors.is_empty())
                    .then(|| c.input_errors.iter().sum::<f64>() / c.input_errors.len() as f64),
                dims: DIMS
                    .iter()
                    .map(|d| {
                        let b = &mut c.buckets[*d as usize];
                        b.refill(now);
                        DimSnapshot {
                            dim: d.name(),
                            limit_per_minute: b.limit,
                            capacity: b.capacity(),
                            level: b.level,
                            last_remaining: b.last_remaining.map(|(r, _)| r),
                        }
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.class.cmp(&b.class));
        out
    }

    /// Whether the organisation's quota of `model`'s class looks idle: the latest answers (none
    /// older than `fresh`) left at least `share` of every known limit remaining, so no one else
    /// is drawing on it. None: no recent answer to tell.
    pub fn org_idle(
        &mut self,
        model: &str,
        now: Instant,
        fresh: Duration,
        share: f64,
    ) -> Option<bool> {
        let (_, c) = self.class(model, now);
        let mut idle = None;
        for b in &c.buckets {
            let Some(limit) = b.limit else { continue };
            let (remaining, seen) = b.last_remaining?;
            if now.saturating_duration_since(seen) > fresh {
                return None;
            }
            idle = Some(idle.unwrap_or(true) && remaining as f64 >= share * limit);
        }
        idle
    }

    /// The concurrency of the model's class now.
    pub fn concurrency(&mut self, model: &str, now: Instant) -> usize {
        self.class(model, now).1.concurrency
    }
}

fn push_bounded<T>(queue: &mut VecDeque<T>, value: T, max: usize) {
    if queue.len() == max {
        queue.pop_front();
    }
    queue.push_back(value);
}

/// The rate-limit class of a model: models that share one limit at the API share it here too
/// ("Opus 4.x" covers Opus 4.5–4.8, "Sonnet 4.x" covers Sonnet 4.5 and 4.6; §2.1 of the fact
/// sheet). A date suffix (`-20250929`) is dropped; every other model is its own class.
pub fn limit_class(model: &str) -> String {
    let base = match model.rsplit_once('-') {
        Some((base, date)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => model,
    };
    for (family, class) in [
        ("claude-opus-4-", "claude-opus-4.x"),
        ("claude-sonnet-4-", "claude-sonnet-4.x"),
    ] {
        if let Some(minor) = base.strip_prefix(family)
            && minor.parse::<u32>().is_ok_and(|m| m >= 5)
        {
            return class.to_owned();
        }
    }
    base.to_owned()
}

/// Rate-limit tiers from the public tables (`../shared/anthropic-api.md` §2.4–2.5, read
/// 2026-09-01): (rpm, itpm, otpm) for a model under a tier, if the table gives it.
pub const TIER_TABLES_AS_OF: &str = "2026-09-01";

pub fn tier_limits(tier: &str, model: &str) -> Option<ModelLimits> {
    let class = limit_class(model);
    let fable = class.starts_with("claude-fable-5");
    let haiku35 = class.starts_with("claude-3-5-haiku");
    let (rpm, itpm, otpm) = match tier {
        // Current scheme.
        "start" if fable => (1_000, 500_000, 100_000),
        "build" if fable => (2_000, 1_500_000, 300_000),
        "scale" if fable => (4_000, 4_000_000, 800_000),
        "start" if haiku35 => (1_000, 100_000, 20_000),
        "build" if haiku35 => (2_000, 200_000, 40_000),
        "scale" if haiku35 => (4_000, 400_000, 80_000),
        "start" => (1_000, 2_000_000, 400_000),
        "build" => (5_000, 5_000_000, 1_000_000),
        "scale" => (10_000, 10_000_000, 2_000_000),
        // The older scheme (2025), Opus/Sonnet 4.x and by default.
        "tier1" if class == "claude-haiku-4-5" => (50, 50_000, 10_000),
        "tier3" if class == "claude-haiku-4-5" => (2_000, 1_000_000, 200_000),
        "tier4" if class == "claude-haiku-4-5" => (4_000, 4_000_000, 800_000),
        "tier1" => (50, 30_000, 8_000),
        "tier2" => (1_000, 450_000, 90_000),
        "tier3" => (2_000, 800_000, 160_000),
        "tier4" => (4_000, 2_000_000, 400_000),
        _ => return None,
    };
    Some(ModelLimits {
        rpm: Some(rpm),
        itpm: Some(itpm),
        otpm: Some(otpm),
    })
}

/// The tier names [`tier_limits`] knows.
pub const TIERS: [&str; 7] = [
    "start", "build", "scale", "tier1", "tier2", "tier3", "tier4",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::answer::DimHeaders;

    fn limits(rpm: u64, itpm: u64, otpm: u64) -> ModelLimits {
        ModelLimits {
            rpm: Some(rpm),
            itpm: Some(itpm),
            otpm: Some(otpm),
        }
    }

    fn settings(reserve: f64) -> QuotaSettings {
        QuotaSettings {
            reserve,
            output_reservation: OutputReservation::MaxTokens,
            max_concurrency: 64,
            initial_concurrency: 64,
        }
    }

    fn req(priority: Priority, input: u64, max_tokens: u64) -> Request<'static> {
        Request {
            model: "m",
            priority,
            input_estimate: input,
            max_tokens,
        }
    }

    fn headers(dims: [(u64, u64, f64); 3]) -> RateLimitHeaders {
        RateLimitHeaders {
            dims: dims.map(|(limit, remaining, reset_in)| DimHeaders {
                limit: Some(limit),
                remaining: Some(remaining),
                reset_in: Some(reset_in),
            }),
        }
    }

    fn ran(input: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            ..Default::default()
        }
    }

    #[test]
    fn before_any_answer_one_probe_then_an_answer_opens_the_burst() {
        let t0 = Instant::now();
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(60, 60_000, 60_000)),
            settings(0.0),
        );
        let probe = q
            .try_admit(&req(Priority::Nightly, 10, 10), t0)
            .expect("the probe");
        assert!(
            q.try_admit(&req(Priority::Nightly, 10, 10), t0).is_err(),
            "one second of 60 RPM is one request"
        );
        // The answer: 59 requests remain, the bucket is full again in 1 s (so it holds 60).
        q.settle(
            &probe,
            Answer::Ran,
            Some(&ran(10, 10)),
            &headers([(60, 59, 1.0), (60_000, 59_000, 1.0), (60_000, 59_000, 1.0)]),
            t0,
        );
        for _ in 0..4 {
            q.try_admit(&req(Priority::Nightly, 10, 10), t0)
                .expect("the burst follows the answer");
        }
    }

    #[test]
    fn a_reload_puts_new_limits_and_reserve_in_force() {
        let t0 = Instant::now();
        let configured = std::sync::Arc::new(std::sync::Mutex::new(limits(600, 600_000, 600_000)));
        let live = configured.clone();
        let mut q = Quota::new(
            move |_| ClassLimits::ceiling(*live.lock().expect("lock")),
            settings(0.0),
        );
        let t = q
            .try_admit(&req(Priority::Nightly, 10, 10), t0)
            .expect("admitted");
        q.settle(
            &t,
            Answer::Ran,
            Some(&ran(10, 10)),
            &RateLimitHeaders::default(),
            t0,
        );
        *configured.lock().expect("lock") = limits(6, 600_000, 600_000);
        q.reconfigure(settings(0.5), t0);
        let snapshot = q.snapshot(t0);
        assert_eq!(snapshot[0].dims[0].limit_per_minute, Some(6.0));
        assert_eq!(q.settings.reserve, 0.5);
        // At 6 a minute the bucket starts with one request and refills one per 10 s.
        q.try_admit(&req(Priority::Interactive, 10, 10), t0)
            .expect("the one request in the bucket");
        let again = q
            .try_admit(&req(Priority::Interactive, 10, 10), t0)
            .expect_err("the new limit paces");
        assert!(again >= t0 + Duration::from_secs(9), "{:?}", again - t0);
    }

    #[test]
    fn a_reload_keeps_the_lower_limit_the_api_reported() {
        let t0 = Instant::now();
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(600, 600_000, 600_000)),
            settings(0.0),
        );
        let t = q
            .try_admit(&req(Priority::Nightly, 10, 10), t0)
            .expect("admitted");
        // The org's real limit is lower than the config says.
        q.settle(
            &t,
            Answer::Ran,
            Some(&ran(10, 10)),
            &headers([
                (50, 49, 1.0),
                (600_000, 599_000, 1.0),
                (600_000, 599_000, 1.0),
            ]),
            t0,
        );
        assert_eq!(q.snapshot(t0)[0].dims[0].limit_per_minute, Some(50.0));
        q.reconfigure(settings(0.3), t0);
        assert_eq!(
            q.snapshot(t0)[0].dims[0].limit_per_minute,
            Some(50.0),
            "an unchanged config does not undo what the headers said"
        );
    }

    #[test]
    fn the_org_quota_is_idle_when_recent_answers_left_nearly_all_of_it() {
        let t0 = Instant::now();
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(100, 100_000, 100_000)),
            settings(0.0),
        );
        let fresh = Duration::from_secs(30);
        assert_eq!(q.org_idle("m", t0, fresh, 0.9), None, "no answer yet");
        let t = q
            .try_admit(&req(Priority::Nightly, 10, 10), t0)
            .expect("admitted");
        q.settle(
            &t,
            Answer::Ran,
            Some(&ran(10, 10)),
            &headers([
                (100, 95, 1.0),
                (100_000, 99_000, 1.0),
                (100_000, 99_000, 1.0),
            ]),
            t0,
        );
        assert_eq!(q.org_idle("m", t0, fresh, 0.9), Some(true));
        assert_eq!(
            q.org_idle("m", t0 + Duration::from_secs(31), fresh, 0.9),
            None,
            "stale"
        );
        let t = q
            .try_admit(&req(Priority::Nightly, 10, 10), t0)
            .expect("admitted");
        // Someone else is using the requests bucket.
        q.settle(
            &t,
            Answer::Ran,
            Some(&ran(10, 10)),
            &headers([
                (100, 40, 1.0),
                (100_000, 99_000, 1.0),
                (100_000, 99_000, 1.0),
            ]),
            t0,
        );
        assert_eq!(q.org_idle("m", t0, fresh, 0.9), Some(false));
    }

    #[test]
    fn pacing_follows_the_refill_rate_of_the_binding_dimension() {
        let t0 = Instant::now();
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(6000, 6_000, 1_000_000)),
            settings(0.0),
        );
        // ITPM 6000 = 100 tokens/s; the probe bucket holds one second: 100 tokens.
        q.try_admit(&req(Priority::Nightly, 100, 1), t0)
            .expect("first");
        let next = q
            .try_admit(&req(Priority::Nightly, 50, 1), t0)
            .expect_err("input bucket empty");
        assert_eq!(next.duration_since(t0).as_millis(), 500);
        q.try_admit(&req(Priority::Nightly, 50, 1), next)
            .expect("refilled");
    }

    #[test]
    fn lower_classes_leave_the_reserve_and_interactive_may_use_it() {
        let t0 = Instant::now();
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(600, 1_000_000, 1_000_000)),
            settings(0.2),
        );
        let probe = q
            .try_admit(&req(Priority::Interactive, 1, 1), t0)
            .expect("probe");
        // The API: bucket of 10 requests (full in 1 s at 10/s), 9 left.
        q.settle(
            &probe,
            Answer::Ran,
            Some(&ran(1, 1)),
            &headers([
                (600, 9, 0.1),
                (1_000_000, 999_000, 0.1),
                (1_000_000, 999_000, 0.1),
            ]),
            t0,
        );
        let mut nightly = 0;
        while q.try_admit(&req(Priority::Nightly, 1, 1), t0).is_ok() {
            nightly += 1;
        }
        assert_eq!(nightly, 7, "9 left, 2 (20% of 10) kept back");
        q.try_admit(&req(Priority::Interactive, 1, 1), t0)
            .expect("interactive uses the reserve");
        q.try_admit(&req(Priority::Interactive, 1, 1), t0)
            .expect("all of it");
        assert!(q.try_admit(&req(Priority::Interactive, 1, 1), t0).is_err());
    }

    #[test]
    fn foreign_consumption_seen_in_remaining_makes_nightly_yield() {
        let t0 = Instant::now();
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(600, 1_000_000, 1_000_000)),
            settings(0.2),
        );
        let a = q
            .try_admit(&req(Priority::Nightly, 1, 1), t0)
            .expect("probe");
        q.settle(
            &a,
            Answer::Ran,
            Some(&ran(1, 1)),
            &headers([
                (600, 9, 0.1),
                (1_000_000, 999_000, 0.1),
                (1_000_000, 999_000, 0.1),
            ]),
            t0,
        );
        let b = q
            .try_admit(&req(Priority::Nightly, 1, 1), t0)
            .expect("room");
        // Someone else took 6 requests meanwhile: the answer says 2 remain (= the reserve).
        q.settle(
            &b,
            Answer::Ran,
            Some(&ran(1, 1)),
            &headers([
                (600, 2, 0.8),
                (1_000_000, 999_000, 0.1),
                (1_000_000, 999_000, 0.1),
            ]),
            t0,
        );
        let wait = q
            .try_admit(&req(Priority::Nightly, 1, 1), t0)
            .expect_err("nightly yields");
        assert_eq!(
            wait.duration_since(t0).as_millis(),
            100,
            "until one request refills above the reserve"
        );
        q.try_admit(&req(Priority::Interactive, 1, 1), t0)
            .expect("interactive still finds room");
    }

    #[test]
    fn calls_in_flight_are_taken_off_an_answer() {
        let t0 = Instant::now();
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(600, 1_000_000, 6_000)),
            settings(0.0),
        );
        let first = q
            .try_admit(&req(Priority::Nightly, 1, 10), t0)
            .expect("probe");
        q.settle(
            &first,
            Answer::Ran,
            Some(&ran(1, 10)),
            &headers([(600, 9, 0.1), (1_000_000, 999_000, 0.1), (6_000, 990, 0.1)]),
            t0,
        );
        let a = q.try_admit(&req(Priority::Nightly, 1, 400), t0).expect("a");
        let _b = q.try_admit(&req(Priority::Nightly, 1, 400), t0).expect("b");
        // a's answer does not count b's output (still generating): 990 - 400 remain for us.
        q.settle(
            &a,
            Answer::Ran,
            Some(&ran(1, 0)),
            &headers([(600, 8, 0.2), (1_000_000, 999_000, 0.1), (6_000, 990, 0.0)]),
            t0,
        );
        let snap = q.snapshot(t0);
        assert_eq!(snap[0].dims[2].level, 590.0);
    }

    #[test]
    fn settle_gives_back_what_was_not_used_without_headers() {
        let t0 = Instant::now();
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(60, 600, 600)),
            settings(0.0),
        );
        let t = q
            .try_admit(&req(Priority::Nightly, 10, 10), t0)
            .expect("admit");
        let before = q.snapshot(t0)[0].dims[2].level;
        q.settle(
            &t,
            Answer::Ran,
            Some(&ran(10, 4)),
            &RateLimitHeaders::default(),
            t0,
        );
        assert_eq!(q.snapshot(t0)[0].dims[2].level, before + 6.0);
        let t = q
            .try_admit(&req(Priority::Nightly, 1, 1), t0 + Duration::from_secs(1))
            .expect("admit");
        let before = q.snapshot(t0 + Duration::from_secs(1))[0].dims[0].level;
        q.settle(
            &t,
            Answer::Refused,
            None,
            &RateLimitHeaders::default(),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(
            q.snapshot(t0 + Duration::from_secs(1))[0].dims[0].level,
            before + 1.0,
            "a refused call took nothing"
        );
    }

    #[test]
    fn lowered_limits_are_followed_and_configured_ones_never_exceeded() {
        let t0 = Instant::now();
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(600, 100_000, 100_000)),
            settings(0.0),
        );
        let t = q
            .try_admit(&req(Priority::Nightly, 1, 1), t0)
            .expect("probe");
        q.settle(
            &t,
            Answer::Ran,
            Some(&ran(1, 1)),
            &headers([
                (60, 50, 1.0),
                (200_000, 190_000, 1.0),
                (100_000, 99_000, 1.0),
            ]),
            t0,
        );
        let snap = q.snapshot(t0);
        assert_eq!(
            snap[0].dims[0].limit_per_minute,
            Some(60.0),
            "lowered to what the API says"
        );
        assert_eq!(
            snap[0].dims[1].limit_per_minute,
            Some(100_000.0),
            "never above the config"
        );
    }

    #[test]
    fn overloaded_halves_concurrency_but_keeps_the_limits() {
        let t0 = Instant::now();
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(6000, 1_000_000, 1_000_000)),
            settings(0.0),
        );
        let t = q
            .try_admit(&req(Priority::Nightly, 1, 1), t0)
            .expect("probe");
        q.settle(
            &t,
            Answer::Ran,
            Some(&ran(1, 1)),
            &headers([
                (6000, 99, 1.0),
                (1_000_000, 999_000, 1.0),
                (1_000_000, 999_000, 1.0),
            ]),
            t0,
        );
        let c = q.concurrency("m", t0);
        assert!(c > 1);
        let t = q
            .try_admit(&req(Priority::Nightly, 1, 1), t0)
            .expect("admit");
        q.settle(
            &t,
            Answer::Overloaded,
            None,
            &RateLimitHeaders::default(),
            t0,
        );
        assert_eq!(q.concurrency("m", t0), (c / 2).max(1));
        assert_eq!(q.snapshot(t0)[0].dims[0].limit_per_minute, Some(6000.0));
    }

    #[test]
    fn the_input_estimator_calibrates() {
        let t0 = Instant::now();
        let mut q = Quota::new(|_| ClassLimits::default(), settings(0.0));
        for _ in 0..100 {
            let t = q
                .try_admit(&req(Priority::Nightly, 100, 1), t0)
                .expect("unpaced");
            q.settle(
                &t,
                Answer::Ran,
                Some(&ran(50, 1)),
                &RateLimitHeaders::default(),
                t0,
            );
        }
        let snap = q.snapshot(t0);
        assert!(
            (snap[0].input_ratio - 0.5).abs() < 0.01,
            "{}",
            snap[0].input_ratio
        );
        assert!(snap[0].input_error.expect("errors") < 0.2);
    }

    #[test]
    fn models_sharing_a_limit_share_a_controller() {
        assert_eq!(limit_class("claude-sonnet-4-5"), "claude-sonnet-4.x");
        assert_eq!(
            limit_class("claude-sonnet-4-6-20260101"),
            "claude-sonnet-4.x"
        );
        assert_eq!(limit_class("claude-opus-4-8"), "claude-opus-4.x");
        assert_eq!(limit_class("claude-sonnet-5-5"), "claude-sonnet-5-5");
        let t0 = Instant::now();
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(60, 1_000_000, 1_000_000)),
            settings(0.0),
        );
        q.try_admit(
            &Request {
                model: "claude-sonnet-4-5",
                ..req(Priority::Nightly, 1, 1)
            },
            t0,
        )
        .expect("probe");
        assert!(
            q.try_admit(
                &Request {
                    model: "claude-sonnet-4-6",
                    ..req(Priority::Nightly, 1, 1)
                },
                t0
            )
            .is_err(),
            "one bucket"
        );
        q.try_admit(
            &Request {
                model: "claude-haiku-4-5",
                ..req(Priority::Nightly, 1, 1)
            },
            t0,
        )
        .expect("own class");
    }

    #[test]
    fn a_spoilt_capacity_estimate_neither_shrinks_the_bucket_nor_stalls_a_class() {
        let t0 = Instant::now();
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(600, 1_000_000, 1_000_000)),
            settings(0.2),
        );
        let answer = |q: &mut Quota, remaining: u64, reset_in: f64| {
            let t = q
                .try_admit(&req(Priority::Interactive, 1, 1), t0)
                .expect("admit");
            let mut h = headers([
                (600, remaining, reset_in),
                (1_000_000, 999_000, 0.1),
                (1_000_000, 999_000, 0.1),
            ]);
            h.dims[0].reset_in = Some(reset_in);
            q.settle(&t, Answer::Ran, Some(&ran(1, 1)), &h, t0);
        };
        for _ in 0..7 {
            answer(&mut q, 9, 0.1); // a bucket of 10 requests
        }
        answer(&mut q, 1, 0.0); // a clock a second off: "full" with 1 left
        let snap = q.snapshot(t0 + Duration::from_secs(60));
        assert!(
            snap[0].dims[0].level >= 9.0,
            "one odd answer does not shrink the bucket: {:?}",
            snap[0].dims[0]
        );
        // A bucket smaller than its reserve still lets nightly work through when it is full.
        let mut tiny = Quota::new(
            |_| ClassLimits::ceiling(limits(60, 1_000_000, 1_000_000)),
            settings(0.5),
        );
        let t = tiny
            .try_admit(&req(Priority::Nightly, 1, 1), t0)
            .expect("the probe goes");
        tiny.settle(
            &t,
            Answer::Ran,
            Some(&ran(1, 1)),
            &RateLimitHeaders::default(),
            t0,
        );
        assert!(
            tiny.try_admit(&req(Priority::Nightly, 1, 1), t0 + Duration::from_secs(2))
                .is_ok()
        );
    }

    #[test]
    fn token_remaining_rounded_to_thousands_is_taken_at_its_low_end() {
        let t0 = Instant::now();
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(6000, 60_000, 60_000)),
            settings(0.0),
        );
        let t = q
            .try_admit(&req(Priority::Nightly, 1, 1), t0)
            .expect("probe");
        q.settle(
            &t,
            Answer::Ran,
            Some(&ran(1, 1)),
            &headers([(6000, 99, 1.0), (60_000, 5_000, 1.0), (60_000, 999, 1.0)]),
            t0,
        );
        let snap = q.snapshot(t0);
        assert_eq!(
            snap[0].dims[1].level, 4_500.0,
            "5,000 may be 4,500 rounded up"
        );
        assert_eq!(snap[0].dims[2].level, 999.0, "under a thousand is exact");
    }

    #[test]
    fn a_configured_limit_below_the_apis_is_kept() {
        let t0 = Instant::now();
        let mut q = Quota::new(
            |_| ClassLimits::ceiling(limits(60, 1_000_000, 1_000_000)),
            settings(0.0),
        );
        let t = q
            .try_admit(&req(Priority::Nightly, 1, 1), t0)
            .expect("probe");
        // The API allows 4,000 RPM and has 3,990 left; we were told 60.
        q.settle(
            &t,
            Answer::Ran,
            Some(&ran(1, 1)),
            &headers([
                (4000, 3990, 0.15),
                (1_000_000, 999_000, 0.1),
                (1_000_000, 999_000, 0.1),
            ]),
            t0,
        );
        let mut sent = 0;
        while q.try_admit(&req(Priority::Nightly, 1, 1), t0).is_ok() {
            sent += 1;
        }
        assert!(sent <= 1, "our books, not the API's bucket: {sent}");
        assert_eq!(q.snapshot(t0)[0].dims[0].limit_per_minute, Some(60.0));
    }

    #[test]
    fn a_tier_preset_is_a_first_guess_the_headers_replace() {
        let t0 = Instant::now();
        let preset = ClassLimits {
            limits: limits(50, 30_000, 8_000),
            is_ceiling: false,
        };
        let mut q = Quota::new(move |_| preset, settings(0.0));
        let t = q
            .try_admit(&req(Priority::Nightly, 1, 1), t0)
            .expect("probe");
        q.settle(
            &t,
            Answer::Ran,
            Some(&ran(1, 1)),
            &headers([
                (1000, 999, 0.1),
                (2_000_000, 1_999_000, 0.1),
                (400_000, 399_000, 0.1),
            ]),
            t0,
        );
        assert_eq!(q.snapshot(t0)[0].dims[0].limit_per_minute, Some(1000.0));
    }

    #[test]
    fn tiers_come_from_the_public_tables() {
        assert_eq!(
            tier_limits("tier1", "claude-sonnet-4-5"),
            Some(limits(50, 30_000, 8_000))
        );
        assert_eq!(
            tier_limits("build", "claude-opus-5"),
            Some(limits(5_000, 5_000_000, 1_000_000))
        );
        assert_eq!(
            tier_limits("start", "claude-fable-5-1"),
            Some(limits(1_000, 500_000, 100_000))
        );
        assert_eq!(tier_limits("gold", "claude-opus-5"), None);
    }
}
