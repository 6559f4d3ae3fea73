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

mod bucket;
pub mod cache_book;
mod class;
mod controller;
#[cfg(test)]
mod tests;
mod tiers;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::model::answer::{RateLimitHeaders, Usage};
use crate::model::job::Priority;
use crate::model::prompt_cache::CachePrefix;
use cache_book::{CacheBook, Prediction};

pub use class::{ClassLimits, ModelLimits, limit_class};
pub use tiers::{TIER_TABLES_AS_OF, TIERS, tier_limits};

use controller::Controller;

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

/// How long a call whose prefix another call is writing waits before asking again.
const CACHE_WAIT: Duration = Duration::from_millis(50);

/// What the lane asks to send.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub model: &'a str,
    pub priority: Priority,
    /// The uncalibrated input estimate (a token per four bytes of body).
    pub input_estimate: u64,
    pub max_tokens: u64,
    /// The prefix it marks for the prompt cache: ITPM is charged only what the API is expected
    /// not to read from the cache.
    pub cache: Option<CachePrefix>,
}

/// What an admitted call holds until it is settled.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    pub class: String,
    pub seq: u64,
    /// Reserved: requests (1), input tokens (calibrated estimate), output tokens.
    pub reserved: [f64; 3],
    /// The input estimate it was charged for: all of it, or what follows a prefix expected to
    /// be read from the cache.
    pub raw_input_estimate: u64,
    pub max_tokens: u64,
    /// The class's concurrency when it was admitted.
    pub concurrency: usize,
    pub model: String,
    /// Its cached prefix and what was expected of it.
    pub cache: Option<(CachePrefix, Prediction)>,
    pub admitted_at: Instant,
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

/// A call found admissible, not yet taken.
struct Checked {
    class: String,
    costs: [f64; 3],
    charged_input: u64,
    cache: Option<(CachePrefix, Prediction)>,
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

/// What a class learned that outlives a restart: the API's limits, the sizes of its buckets,
/// the concurrency that went through and the calibration of the estimates. Restored at start, a
/// backlog resumes at the learned rate (the first answers correct it) instead of from a probe.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Learned {
    /// A model of the class, to look its configured limits up.
    pub model: String,
    pub concurrency: usize,
    pub input_ratio: f64,
    /// Recent (max_tokens, output tokens) of answers.
    pub outputs: Vec<(u64, u64)>,
    /// Requests, input tokens, output tokens.
    pub dims: Vec<LearnedDim>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LearnedDim {
    pub api_limit: Option<f64>,
    pub capacity_seen: Vec<f64>,
    pub capacity_assumed: f64,
    pub level: f64,
}

/// The configured (or tier) limits of a model.
pub type Configured = std::sync::Arc<dyn Fn(&str) -> ClassLimits + Send + Sync>;

/// The controllers of every class (of one organization: see [`crate::policy::routing`]).
pub struct Quota {
    configured: Configured,
    settings: QuotaSettings,
    classes: HashMap<String, Controller>,
    next_seq: u64,
    cache_book: CacheBook,
    /// The part of the organization's limits this daemon paces itself to: 1 alone, 1/N when N
    /// daemons sharing a store draw on the organization (see [`Quota::set_share`]).
    share: f64,
}

impl Quota {
    /// `configured` gives the configured (or tier) limits of a model.
    pub fn new(
        configured: impl Fn(&str) -> ClassLimits + Send + Sync + 'static,
        settings: QuotaSettings,
    ) -> Quota {
        Quota::with(std::sync::Arc::new(configured), settings)
    }

    /// As [`Quota::new`], sharing `configured` with other organizations' quotas.
    pub fn with(configured: Configured, settings: QuotaSettings) -> Quota {
        Quota {
            configured,
            settings,
            classes: HashMap::new(),
            next_seq: 0,
            cache_book: CacheBook::default(),
            share: 1.0,
        }
    }

    /// The configured (or tier) limits of `model`, for this daemon's share of them.
    fn limits_of(&self, model: &str) -> ClassLimits {
        limits_of(&self.configured, self.share, model)
    }

    /// Paces this daemon to `share` of the organization's limits (several daemons sharing a
    /// store draw on one organization: each takes its part, so together they are paced as one).
    /// What the classes learned is scaled at once, so a change causes neither a burst nor a dip.
    pub fn set_share(&mut self, share: f64, now: Instant) {
        let share = if share.is_finite() {
            share.clamp(0.01, 1.0)
        } else {
            1.0
        };
        if (share - self.share).abs() < 1e-9 {
            return;
        }
        let ratio = share / self.share;
        self.share = share;
        for c in self.classes.values_mut() {
            for b in &mut c.buckets {
                b.rescale(ratio, share < 1.0, now);
            }
        }
    }

    pub fn share(&self) -> f64 {
        self.share
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
            let limits = limits_of(&self.configured, self.share, &c.model);
            let l = limits.limits;
            for (bucket, start) in c.buckets.iter_mut().zip([l.rpm, l.itpm, l.otpm]) {
                bucket.reconfigure(start, limits.is_ceiling, now);
            }
        }
    }

    fn class(&mut self, model: &str, now: Instant) -> (String, &mut Controller) {
        let class = limit_class(model);
        if !self.classes.contains_key(&class) {
            let limits = self.limits_of(model);
            let mut controller = Controller::new(limits, &self.settings, now);
            controller.model = model.to_owned();
            if self.share < 1.0 {
                // Already shared: its limits are the share's; its burst is held back too.
                for b in &mut controller.buckets {
                    b.rescale(1.0, true, now);
                }
            }
            self.classes.insert(class.clone(), controller);
        }
        let controller = self.classes.get_mut(&class).expect("inserted above");
        (class, controller)
    }

    /// Admits a call now, or says when to ask again (a call finishing may allow one sooner).
    pub fn try_admit(&mut self, request: &Request<'_>, now: Instant) -> Result<Ticket, Instant> {
        let checked = self.check(request, now)?;
        Ok(self.take(request, checked, now))
    }

    /// How long until `request` would be admitted (zero: now), and the share of its tightest
    /// bucket it would leave (for choosing between organizations). Changes nothing.
    pub fn admits_in(&mut self, request: &Request<'_>, now: Instant) -> (Duration, f64) {
        match self.check(request, now) {
            Ok(checked) => {
                let c = &self.classes[&checked.class];
                let room = DIMS
                    .iter()
                    .filter_map(|d| {
                        let b = &c.buckets[*d as usize];
                        b.limit?;
                        Some((b.level - checked.costs[*d as usize]) / b.capacity().max(1.0))
                    })
                    .fold(1.0, f64::min);
                (Duration::ZERO, room)
            }
            Err(at) => (at.saturating_duration_since(now), -1.0),
        }
    }

    /// Whether `request` may go now, and what it would cost.
    fn check(&mut self, request: &Request<'_>, now: Instant) -> Result<Checked, Instant> {
        let settings = self.settings;
        let cache = request
            .cache
            .map(|p| (p, self.cache_book.expect(request.model, &p, now)));
        if let Some((_, Prediction::Wait)) = cache {
            // Another call is writing its prefix: ask again once that one is answered.
            return Err(now + CACHE_WAIT);
        }
        // A prefix read from the cache is not charged to ITPM.
        let charged_input = match cache {
            Some((prefix, Prediction::Read)) => {
                request.input_estimate.saturating_sub(prefix.tokens).max(1)
            }
            _ => request.input_estimate,
        };
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
        let input = (charged_input as f64 * c.input_ratio).max(1.0);
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
        Ok(Checked {
            class,
            costs,
            charged_input,
            cache,
        })
    }

    /// Takes what a checked call costs and hands out its ticket.
    fn take(&mut self, request: &Request<'_>, checked: Checked, now: Instant) -> Ticket {
        let Checked {
            class,
            costs,
            charged_input,
            cache,
        } = checked;
        let seq = self.next_seq;
        let c = self.classes.get_mut(&class).expect("checked");
        for dim in DIMS {
            c.buckets[dim as usize].level -= costs[dim as usize];
        }
        c.in_flight.insert(seq, (costs, request.max_tokens));
        let concurrency = c.concurrency;
        self.next_seq += 1;
        if let Some((prefix, prediction)) = cache {
            self.cache_book
                .sent(request.model, &prefix, prediction, seq, now);
        }
        if seq.is_multiple_of(1024) {
            self.cache_book.forget_expired(now);
        }
        Ticket {
            class,
            seq,
            reserved: costs,
            raw_input_estimate: charged_input,
            max_tokens: request.max_tokens,
            concurrency,
            model: request.model.to_owned(),
            cache,
            admitted_at: now,
        }
    }

    /// Our books of a call's class beside what its answer said, for judging who owns a 429
    /// ([`crate::policy::owner`]). Call it before [`Quota::settle`], which merges the answer.
    pub fn books(
        &mut self,
        ticket: &Ticket,
        headers: &RateLimitHeaders,
        now: Instant,
    ) -> [crate::policy::owner::DimBooks; 3] {
        let share = self.share;
        let Some(c) = self.classes.get_mut(&ticket.class) else {
            return Default::default();
        };
        // Our other calls in flight: their input may be off by the estimates' error.
        let in_flight_input: f64 = c
            .in_flight
            .iter()
            .filter(|(seq, _)| **seq != ticket.seq)
            .map(|(_, (costs, _))| costs[1])
            .sum();
        // How far our input figures may be off: the recent error of the estimates (at least a
        // tenth) over every call in flight; output of calls in flight is reserved in full.
        let input_error = if c.input_errors.is_empty() {
            0.1
        } else {
            (2.0 * c.input_errors.iter().sum::<f64>() / c.input_errors.len() as f64).max(0.1)
        };
        std::array::from_fn(|i| {
            let b = &mut c.buckets[i];
            b.refill(now);
            let header = headers.dims[i];
            // Token counts are rounded to thousands; a request's count is exact but another
            // call may be in the middle of being counted.
            let rounding = if i == 0 { 1.0 } else { 1000.0 };
            let estimates = if i == 1 {
                input_error * (in_flight_input + ticket.reserved[1])
            } else {
                0.0
            };
            crate::policy::owner::DimBooks {
                name: DIMS[i].name(),
                cost: ticket.reserved[i],
                level: b.level,
                tolerance: rounding + estimates,
                remaining: header.remaining.map(|r| (r as f64 * share) as u64),
            }
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
        let ran = match (answer, usage) {
            (Answer::Ran, Some(u)) => Some(u),
            _ => None,
        };
        // Whether the answer may calibrate the estimate: not when the cache did otherwise than
        // expected, nor when it read the prefix (what is charged then is mostly the body's JSON
        // wrapping, a different ratio of tokens to bytes from a whole prompt's, which would
        // make the ratio under-reserve every uncached call of the class).
        let mut calibrates = true;
        if let Some((prefix, prediction)) = &ticket.cache {
            self.cache_book.answered(
                &ticket.model,
                prefix,
                ticket.seq,
                ticket.admitted_at,
                ran,
                now,
            );
            if let Some(u) = ran {
                let read = u.cache_read_input_tokens.unwrap_or(0) > 0;
                calibrates = !read && *prediction != Prediction::Read;
            }
        }
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
                b.correct(header, uncounted[i], dim != Dim::Requests, self.share, now);
                if header.remaining.is_some() {
                    continue; // the answer's word replaces our books
                }
            }
            if let Some(used) = used {
                b.refill(now);
                b.level = (b.level + ticket.reserved[i] - used[i]).min(b.capacity_low());
            }
        }
        if let (Answer::Ran, Some(u), true) = (answer, usage, calibrates) {
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

    /// Whether a call of `model` marking `prefix` would wait now for another call writing it.
    #[cfg(test)]
    pub fn cache_waits(&self, model: &str, prefix: &CachePrefix, now: Instant) -> bool {
        self.cache_expect(model, prefix, now) == Prediction::Wait
    }

    /// What a call of `model` marking `prefix` should expect of this organization's cache now.
    pub fn cache_expect(&self, model: &str, prefix: &CachePrefix, now: Instant) -> Prediction {
        self.cache_book.expect(model, prefix, now)
    }

    /// Calls in flight in every class.
    pub fn in_flight(&self) -> usize {
        self.classes.values().map(|c| c.in_flight.len()).sum()
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

    /// What every class learned, by class.
    pub fn learned(&mut self, now: Instant) -> Vec<(String, Learned)> {
        let mut out: Vec<(String, Learned)> = self
            .classes
            .iter_mut()
            .map(|(class, c)| {
                let dims = c.buckets.iter_mut().map(|b| b.learned(now)).collect();
                let learned = Learned {
                    model: c.model.clone(),
                    concurrency: c.concurrency,
                    input_ratio: c.input_ratio,
                    outputs: c.outputs.iter().copied().collect(),
                    dims,
                };
                (class.clone(), learned)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Takes back what a class learned `age` ago (see [`Learned`]), within this run's settings:
    /// the concurrency under its maximum, limits under configured ceilings. A class already
    /// running is left alone.
    pub fn restore(&mut self, learned: &Learned, age: Duration, now: Instant) {
        if learned.model.is_empty() || self.classes.contains_key(&limit_class(&learned.model)) {
            return;
        }
        let max_concurrency = self.settings.max_concurrency.max(1);
        let (_, c) = self.class(&learned.model, now);
        for (bucket, dim) in c.buckets.iter_mut().zip(&learned.dims) {
            bucket.restore(dim, age.as_secs_f64(), now);
        }
        c.concurrency = learned.concurrency.clamp(1, max_concurrency);
        if learned.input_ratio.is_finite() {
            c.input_ratio = learned.input_ratio.clamp(0.05, 20.0);
        }
        for output in &learned.outputs {
            push_bounded(&mut c.outputs, *output, 200);
        }
    }

    /// The concurrency of the model's class now.
    pub fn concurrency(&mut self, model: &str, now: Instant) -> usize {
        self.class(model, now).1.concurrency
    }
}

/// `share` of the configured (or tier) limits of `model`.
fn limits_of(configured: &Configured, share: f64, model: &str) -> ClassLimits {
    let mut limits = configured(model);
    let part = |l: Option<u64>| l.map(|l| ((l as f64 * share) as u64).max(1));
    limits.limits = ModelLimits {
        rpm: part(limits.limits.rpm),
        itpm: part(limits.limits.itpm),
        otpm: part(limits.limits.otpm),
    };
    limits
}

pub(super) fn push_bounded<T>(queue: &mut VecDeque<T>, value: T, max: usize) {
    if queue.len() == max {
        queue.pop_front();
    }
    queue.push_back(value);
}
