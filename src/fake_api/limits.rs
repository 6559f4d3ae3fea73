//! Token buckets behind the fake's rate limits.
//!
//! Everything here is pure: the current time is always passed in (`now: Instant`), so the
//! logic can be unit-tested without sleeping.

use std::collections::HashMap;
use std::time::Instant;

use super::{FakeLimits, OtpmRule};

/// A continuously refilled token bucket.
///
/// The level can go negative (output tokens taken after the fact under the 2026 OTPM rule);
/// it never goes above `capacity`.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    /// The per-minute limit this bucket enforces (reported in `*-limit` headers).
    limit_per_minute: u64,
    capacity: f64,
    refill_per_second: f64,
    level: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket for `limit_per_minute`, holding `burst_seconds` worth of refill
    /// (at least 1 unit).
    pub(crate) fn new(limit_per_minute: u64, burst_seconds: f64, now: Instant) -> TokenBucket {
        let capacity = (limit_per_minute as f64 * burst_seconds / 60.0).max(1.0);
        TokenBucket {
            limit_per_minute,
            capacity,
            refill_per_second: limit_per_minute as f64 / 60.0,
            level: capacity,
            updated: now,
        }
    }

    /// Switches to a new per-minute limit and burst from `now` on. The refill so far is
    /// credited at the old rate; the level is then clamped to the new capacity (never raised).
    pub(crate) fn set_limit(&mut self, limit_per_minute: u64, burst_seconds: f64, now: Instant) {
        self.refill(now);
        let fresh = TokenBucket::new(limit_per_minute, burst_seconds, now);
        self.limit_per_minute = fresh.limit_per_minute;
        self.capacity = fresh.capacity;
        self.refill_per_second = fresh.refill_per_second;
        self.level = self.level.min(self.capacity);
    }

    /// Adds the refill accumulated since the last update.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.refill_per_second).min(self.capacity);
        self.updated = self.updated.max(now);
    }

    /// The current level (may be negative).
    pub(crate) fn level(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.level
    }

    pub(crate) fn capacity(&self) -> f64 {
        self.capacity
    }

    pub(crate) fn limit_per_minute(&self) -> u64 {
        self.limit_per_minute
    }

    /// Removes `amount` (the level may go negative).
    pub(crate) fn take(&mut self, amount: f64, now: Instant) {
        self.refill(now);
        self.level -= amount;
    }

    /// Returns `amount` to the bucket (capped at capacity).
    pub(crate) fn give_back(&mut self, amount: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level + amount).min(self.capacity);
    }

    /// Seconds until the level reaches `target` (0 when it already has).
    pub(crate) fn seconds_until(&mut self, target: f64, now: Instant) -> f64 {
        let level = self.level(now);
        if level >= target || self.refill_per_second <= 0.0 {
            0.0
        } else {
            (target - level) / self.refill_per_second
        }
    }

    /// Seconds until the bucket is full again.
    pub(crate) fn seconds_until_full(&mut self, now: Instant) -> f64 {
        let capacity = self.capacity;
        self.seconds_until(capacity, now)
    }

    /// Whole units left, never negative.
    pub(crate) fn remaining(&mut self, now: Instant) -> u64 {
        self.level(now).max(0.0).floor() as u64
    }

    /// What the headers report of it at `now`.
    pub(crate) fn reading(&mut self, now: Instant) -> Reading {
        Reading {
            limit_per_minute: self.limit_per_minute,
            remaining: self.remaining(now),
            full_in_secs: self.seconds_until_full(now),
        }
    }
}

/// One limit as the `anthropic-ratelimit-*` headers report it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Reading {
    pub limit_per_minute: u64,
    /// Whole units left (never negative), not yet rounded.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub full_in_secs: f64,
}

impl Reading {
    /// The more restrictive of two readings: fewer units left; on a tie the lower limit; on a
    /// tie of both, `self`.
    pub(crate) fn tighter(self, other: Reading) -> Reading {
        if (other.remaining, other.limit_per_minute) < (self.remaining, self.limit_per_minute) {
            other
        } else {
            self
        }
    }
}

/// Which of the three Messages limits turned a request away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dimension {
    Requests,
    InputTokens,
    OutputTokens,
}

/// A refused admission: which limit, and how long to wait (whole seconds, at least 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub dimension: Dimension,
    pub limit_per_minute: u64,
    pub retry_after_secs: u64,
}

/// What an admitted request holds until it completes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ticket {
    /// Output tokens reserved at admission (the `MaxTokens` rule), to settle at completion.
    reserved_output: u64,
}

/// Rounds a wait up to whole seconds, at least 1.
pub(crate) fn retry_after_secs(seconds: f64) -> u64 {
    (seconds.ceil() as u64).max(1)
}

/// The three buckets of one model class.
#[derive(Clone, Debug)]
pub(crate) struct ClassLimits {
    requests: TokenBucket,
    input: TokenBucket,
    output: TokenBucket,
}

impl ClassLimits {
    pub(crate) fn new(limits: &FakeLimits, now: Instant) -> ClassLimits {
        ClassLimits {
            requests: TokenBucket::new(limits.rpm, limits.burst_seconds, now),
            input: TokenBucket::new(limits.itpm, limits.burst_seconds, now),
            output: TokenBucket::new(limits.otpm, limits.burst_seconds, now),
        }
    }

    /// Switches all three buckets to `limits` (see [`TokenBucket::set_limit`]).
    pub(crate) fn set_limits(&mut self, limits: &FakeLimits, now: Instant) {
        self.requests
            .set_limit(limits.rpm, limits.burst_seconds, now);
        self.input.set_limit(limits.itpm, limits.burst_seconds, now);
        self.output
            .set_limit(limits.otpm, limits.burst_seconds, now);
    }

    /// Admits a request or says which limit it would exceed (see [`admit_all`]).
    #[cfg(test)]
    pub(crate) fn admit(
        &mut self,
        input_tokens: u64,
        max_tokens: u64,
        rule: OtpmRule,
        now: Instant,
    ) -> Result<Ticket, Refusal> {
        admit_all(&mut [self], input_tokens, max_tokens, rule, now).map_err(|(_, refusal)| refusal)
    }

    /// Whether a request would be admitted now, or which limit it would exceed (charging
    /// nothing).
    ///
    /// A request needing more than a bucket's capacity is admitted once the bucket is full
    /// (otherwise it could never run); the level then goes negative.
    fn check(
        &mut self,
        input_tokens: u64,
        max_tokens: u64,
        rule: OtpmRule,
        now: Instant,
    ) -> Result<(), Refusal> {
        let input_need = (input_tokens as f64).min(self.input.capacity());
        let waits = [
            (Dimension::Requests, self.requests.seconds_until(1.0, now)),
            (
                Dimension::InputTokens,
                self.input.seconds_until(input_need, now),
            ),
            (
                Dimension::OutputTokens,
                self.output_wait(max_tokens, rule, now),
            ),
        ];
        let (dimension, wait) = waits
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("the array is not empty");
        if wait > 0.0 {
            let limit_per_minute = match dimension {
                Dimension::Requests => self.requests.limit_per_minute(),
                Dimension::InputTokens => self.input.limit_per_minute(),
                Dimension::OutputTokens => self.output.limit_per_minute(),
            };
            return Err(Refusal {
                dimension,
                limit_per_minute,
                retry_after_secs: retry_after_secs(wait),
            });
        }
        Ok(())
    }

    /// Charges an admitted request at admission.
    fn charge(
        &mut self,
        input_tokens: u64,
        max_tokens: u64,
        rule: OtpmRule,
        now: Instant,
    ) -> Ticket {
        self.requests.take(1.0, now);
        self.input.take(input_tokens as f64, now);
        let mut ticket = Ticket::default();
        if rule == OtpmRule::MaxTokens {
            self.output.take(max_tokens as f64, now);
            ticket.reserved_output = max_tokens;
        }
        ticket
    }

    /// Seconds until the output bucket allows a request in.
    fn output_wait(&mut self, max_tokens: u64, rule: OtpmRule, now: Instant) -> f64 {
        match rule {
            // 2026 rule: any positive level lets a request start.
            OtpmRule::Generated => {
                let level = self.output.level(now);
                if level > 0.0 {
                    0.0
                } else {
                    // Strictly above zero: wait a hair longer than the exact refill time.
                    self.output.seconds_until(level.max(0.0) + 1e-6, now)
                }
            }
            OtpmRule::MaxTokens => {
                let need = (max_tokens as f64).min(self.output.capacity());
                self.output.seconds_until(need, now)
            }
        }
    }

    /// Charges the real output of a finished request (settling any reservation).
    pub(crate) fn complete(&mut self, ticket: Ticket, output_tokens: u64, now: Instant) {
        if ticket.reserved_output > 0 {
            self.output.give_back(ticket.reserved_output as f64, now);
        }
        self.output.take(output_tokens as f64, now);
    }

    /// What the headers report of its buckets at `now`.
    pub(crate) fn reading(&mut self, now: Instant) -> ClassReading {
        let input = self.input.reading(now);
        let output = self.output.reading(now);
        ClassReading {
            requests: self.requests.reading(now),
            input,
            output,
            tokens: Reading {
                limit_per_minute: input.limit_per_minute + output.limit_per_minute,
                remaining: input.remaining + output.remaining,
                full_in_secs: input.full_in_secs.max(output.full_in_secs),
            },
        }
    }

    /// The `anthropic-ratelimit-*` headers. `wall_now` is the wall-clock time matching `now`.
    #[cfg(test)]
    pub(crate) fn headers(
        &mut self,
        now: Instant,
        wall_now: jiff::Timestamp,
    ) -> Vec<(&'static str, String)> {
        self.reading(now).headers(wall_now)
    }
}

/// Admits a request into every one of `layers` (an organization's buckets of its model class,
/// then those of the key's workspace when it has limits of its own) and charges each, or
/// charges none and says which layer refused (its index) and why. When several refuse, the
/// refusal with the longest wait is given (retrying sooner could not succeed); on a tie, the
/// first layer's.
pub(crate) fn admit_all(
    layers: &mut [&mut ClassLimits],
    input_tokens: u64,
    max_tokens: u64,
    rule: OtpmRule,
    now: Instant,
) -> Result<Ticket, (usize, Refusal)> {
    let mut refused: Option<(usize, Refusal)> = None;
    for (index, layer) in layers.iter_mut().enumerate() {
        if let Err(refusal) = layer.check(input_tokens, max_tokens, rule, now)
            && refused
                .as_ref()
                .is_none_or(|(_, r)| refusal.retry_after_secs > r.retry_after_secs)
        {
            refused = Some((index, refusal));
        }
    }
    if let Some(refused) = refused {
        return Err(refused);
    }
    let mut ticket = Ticket::default();
    for layer in layers.iter_mut() {
        ticket = layer.charge(input_tokens, max_tokens, rule, now);
    }
    Ok(ticket)
}

/// A model class's limits as the headers report them: one [`Reading`] per dimension, and
/// `tokens` for input and output together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ClassReading {
    pub requests: Reading,
    pub input: Reading,
    pub output: Reading,
    pub tokens: Reading,
}

impl ClassReading {
    /// Per dimension the more restrictive of the two ([`Reading::tighter`]): what the headers
    /// of a call under an organization's limits and its workspace's report. `tokens` is the
    /// more restrictive of the two combined limits, never a mix of both.
    pub(crate) fn tighter(self, other: ClassReading) -> ClassReading {
        ClassReading {
            requests: self.requests.tighter(other.requests),
            input: self.input.tighter(other.input),
            output: self.output.tighter(other.output),
            tokens: self.tokens.tighter(other.tokens),
        }
    }

    /// The `anthropic-ratelimit-*` headers. `wall_now` is the wall-clock time of the reading.
    pub(crate) fn headers(&self, wall_now: jiff::Timestamp) -> Vec<(&'static str, String)> {
        let reset = |reading: &Reading| rfc3339_after(wall_now, reading.full_in_secs);
        let limit = |reading: &Reading| reading.limit_per_minute.to_string();
        let rounded = |reading: &Reading| round_thousands(reading.remaining).to_string();
        let (requests, input, output, tokens) =
            (&self.requests, &self.input, &self.output, &self.tokens);
        vec![
            ("anthropic-ratelimit-requests-limit", limit(requests)),
            (
                "anthropic-ratelimit-requests-remaining",
                requests.remaining.to_string(),
            ),
            ("anthropic-ratelimit-requests-reset", reset(requests)),
            ("anthropic-ratelimit-input-tokens-limit", limit(input)),
            ("anthropic-ratelimit-input-tokens-remaining", rounded(input)),
            ("anthropic-ratelimit-input-tokens-reset", reset(input)),
            ("anthropic-ratelimit-output-tokens-limit", limit(output)),
            (
                "anthropic-ratelimit-output-tokens-remaining",
                rounded(output),
            ),
            ("anthropic-ratelimit-output-tokens-reset", reset(output)),
            ("anthropic-ratelimit-tokens-limit", limit(tokens)),
            ("anthropic-ratelimit-tokens-remaining", rounded(tokens)),
            ("anthropic-ratelimit-tokens-reset", reset(tokens)),
        ]
    }
}

/// The buckets of every model class under one set of limits (an organization's, or a
/// workspace's own), each created full on first use.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClassBuckets {
    limits: Option<FakeLimits>,
    classes: HashMap<&'static str, ClassLimits>,
}

impl ClassBuckets {
    pub(crate) fn new(limits: Option<FakeLimits>) -> ClassBuckets {
        ClassBuckets {
            limits,
            classes: HashMap::new(),
        }
    }

    /// The limits in force (`None`: no buckets).
    pub(crate) fn limits(&self) -> Option<FakeLimits> {
        self.limits
    }

    /// Puts `limits` in force from `now`: existing buckets keep their level, clamped to the new
    /// capacity (never raised), and refill at the new rate. `None` removes the buckets; limits
    /// set again later start from full ones.
    pub(crate) fn set_limits(&mut self, limits: Option<FakeLimits>, now: Instant) {
        self.limits = limits;
        match limits {
            None => self.classes.clear(),
            Some(limits) => {
                for class in self.classes.values_mut() {
                    class.set_limits(&limits, now);
                }
            }
        }
    }

    /// The buckets of `class` (created full on first use), or `None` without limits.
    pub(crate) fn class(&mut self, class: &'static str, now: Instant) -> Option<&mut ClassLimits> {
        let limits = self.limits?;
        Some(
            self.classes
                .entry(class)
                .or_insert_with(|| ClassLimits::new(&limits, now)),
        )
    }
}

/// Token counts in headers are rounded down to thousands once they reach 1000.
pub(crate) fn round_thousands(value: u64) -> u64 {
    if value >= 1000 {
        value / 1000 * 1000
    } else {
        value
    }
}

/// `wall_now + seconds`, rounded up to a whole second, as RFC 3339 UTC.
pub(crate) fn rfc3339_after(wall_now: jiff::Timestamp, seconds: f64) -> String {
    let nanos = (seconds.max(0.0) * 1e9).min(1e18) as i64;
    let at = wall_now
        .checked_add(jiff::SignedDuration::from_nanos(nanos))
        .unwrap_or(wall_now);
    let whole = if at.subsec_nanosecond() > 0 {
        at.as_second() + 1
    } else {
        at.as_second()
    };
    jiff::Timestamp::from_second(whole)
        .unwrap_or(at)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(rpm: u64, itpm: u64, otpm: u64, burst_seconds: f64) -> FakeLimits {
        FakeLimits {
            rpm,
            itpm,
            otpm,
            burst_seconds,
        }
    }

    #[test]
    fn bucket_starts_full_and_refills_continuously() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(60, 10.0, t0);
        assert_eq!(bucket.capacity(), 10.0);
        bucket.take(10.0, t0);
        assert_eq!(bucket.remaining(t0), 0);
        // 60 per minute = 1 per second.
        assert_eq!(bucket.remaining(t0 + Duration::from_secs(3)), 3);
        assert_eq!(bucket.remaining(t0 + Duration::from_secs(100)), 10);
    }

    #[test]
    fn bucket_capacity_is_at_least_one() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(1, 1.0, t0);
        assert_eq!(bucket.capacity(), 1.0);
    }

    #[test]
    fn bucket_can_go_negative_and_reports_wait() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(600, 6.0, t0); // capacity 60, 10/s
        bucket.take(80.0, t0);
        assert_eq!(bucket.remaining(t0), 0);
        assert!((bucket.seconds_until(0.0, t0) - 2.0).abs() < 1e-9);
        assert!((bucket.seconds_until_full(t0) - 8.0).abs() < 1e-9);
    }

    #[test]
    fn set_limit_clamps_the_level_but_never_raises_it() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(600, 6.0, t0); // capacity 60, 10/s
        bucket.take(20.0, t0); // level 40
        bucket.set_limit(60, 6.0, t0); // capacity 6, 1/s
        assert_eq!(bucket.limit_per_minute(), 60);
        assert_eq!(bucket.capacity(), 6.0);
        assert_eq!(bucket.remaining(t0), 6);
        bucket.take(6.0, t0);
        assert_eq!(bucket.remaining(t0 + Duration::from_secs(2)), 2);

        // Raising the limit keeps the level where it was; the new rate refills it.
        let t1 = t0 + Duration::from_secs(2);
        bucket.set_limit(6000, 6.0, t1); // capacity 600, 100/s
        assert_eq!(bucket.remaining(t1), 2);
        assert_eq!(bucket.remaining(t1 + Duration::from_secs(1)), 102);
    }

    #[test]
    fn set_limit_credits_refill_at_the_old_rate_first() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(60, 60.0, t0); // capacity 60, 1/s
        bucket.take(60.0, t0);
        let t1 = t0 + Duration::from_secs(5);
        bucket.set_limit(600, 60.0, t1); // 5 earned at 1/s before the switch
        assert_eq!(bucket.remaining(t1), 5);
    }

    #[test]
    fn class_set_limits_changes_refusals_and_headers() {
        let t0 = Instant::now();
        let wall = jiff::Timestamp::from_second(1_800_000_000).expect("valid time");
        let mut class = ClassLimits::new(&limits(100, 1_000_000, 1_000_000, 60.0), t0);
        assert!(class.admit(10, 10, OtpmRule::Generated, t0).is_ok());
        class.set_limits(&limits(1, 1_000_000, 1_000_000, 60.0), t0);
        let headers = class.headers(t0, wall);
        assert!(headers.contains(&("anthropic-ratelimit-requests-limit", "1".to_string())));
        // Clamped to the new capacity of 1: one more request, then a refusal.
        assert!(class.admit(10, 10, OtpmRule::Generated, t0).is_ok());
        let refusal = class
            .admit(10, 10, OtpmRule::Generated, t0)
            .expect_err("refused");
        assert_eq!(refusal.dimension, Dimension::Requests);
        assert_eq!(refusal.limit_per_minute, 1);
        assert_eq!(refusal.retry_after_secs, 60);
    }

    #[test]
    fn requests_limit_refuses_third_call_with_retry_after() {
        let t0 = Instant::now();
        let mut class = ClassLimits::new(&limits(2, 1_000_000, 1_000_000, 60.0), t0);
        for _ in 0..2 {
            let ticket = class
                .admit(10, 100, OtpmRule::Generated, t0)
                .expect("admitted");
            class.complete(ticket, 50, t0);
        }
        let refusal = class
            .admit(10, 100, OtpmRule::Generated, t0)
            .expect_err("refused");
        assert_eq!(refusal.dimension, Dimension::Requests);
        assert_eq!(refusal.limit_per_minute, 2);
        assert_eq!(refusal.retry_after_secs, 30); // 1 request at 2/min
        // After 30 s one request is back.
        assert!(
            class
                .admit(10, 100, OtpmRule::Generated, t0 + Duration::from_secs(30))
                .is_ok()
        );
    }

    #[test]
    fn input_tokens_limit_names_input_dimension() {
        let t0 = Instant::now();
        let mut class = ClassLimits::new(&limits(1000, 6000, 6000, 60.0), t0);
        let ticket = class
            .admit(5000, 10, OtpmRule::Generated, t0)
            .expect("admitted");
        class.complete(ticket, 10, t0);
        let refusal = class
            .admit(2000, 10, OtpmRule::Generated, t0)
            .expect_err("refused");
        assert_eq!(refusal.dimension, Dimension::InputTokens);
        // Needs 1000 more tokens at 100/s.
        assert_eq!(refusal.retry_after_secs, 10);
    }

    #[test]
    fn generated_rule_takes_output_at_completion() {
        let t0 = Instant::now();
        let mut class = ClassLimits::new(&limits(1000, 1_000_000, 600, 60.0), t0);
        // A huge max_tokens costs nothing at admission.
        let ticket = class
            .admit(1, 100_000, OtpmRule::Generated, t0)
            .expect("admitted");
        class.complete(ticket, 900, t0); // level 600 - 900 = -300
        let refusal = class
            .admit(1, 1, OtpmRule::Generated, t0)
            .expect_err("refused");
        assert_eq!(refusal.dimension, Dimension::OutputTokens);
        assert_eq!(refusal.retry_after_secs, 31); // just over 300 tokens at 10/s
    }

    #[test]
    fn max_tokens_rule_reserves_then_settles() {
        let t0 = Instant::now();
        let mut class = ClassLimits::new(&limits(1000, 1_000_000, 1000, 60.0), t0);
        let first = class
            .admit(1, 800, OtpmRule::MaxTokens, t0)
            .expect("admitted");
        // Only 200 left while the first is in flight.
        let refusal = class
            .admit(1, 800, OtpmRule::MaxTokens, t0)
            .expect_err("refused");
        assert_eq!(refusal.dimension, Dimension::OutputTokens);
        class.complete(first, 100, t0); // settles to 900 left
        assert!(class.admit(1, 800, OtpmRule::MaxTokens, t0).is_ok());
    }

    #[test]
    fn headers_round_down_to_thousands_and_never_go_negative() {
        let t0 = Instant::now();
        let wall = jiff::Timestamp::from_second(1_800_000_000).expect("valid time");
        let mut class = ClassLimits::new(&limits(100, 50_000, 10_000, 60.0), t0);
        let ticket = class
            .admit(1_234, 10, OtpmRule::Generated, t0)
            .expect("admitted");
        class.complete(ticket, 20_000, t0);
        let headers = class.headers(t0, wall);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .expect("header present")
        };
        assert_eq!(get("anthropic-ratelimit-requests-remaining"), "99");
        assert_eq!(get("anthropic-ratelimit-input-tokens-remaining"), "48000");
        assert_eq!(get("anthropic-ratelimit-output-tokens-remaining"), "0");
        assert_eq!(get("anthropic-ratelimit-tokens-limit"), "60000");
        assert_eq!(get("anthropic-ratelimit-tokens-remaining"), "48000");
        // Output at -10000 refills at 10000/min: full after 120 s.
        assert_eq!(
            get("anthropic-ratelimit-output-tokens-reset"),
            "2027-01-15T08:02:00Z"
        );
    }

    #[test]
    fn admit_all_charges_every_layer_or_none() {
        let t0 = Instant::now();
        let mut org = ClassLimits::new(&limits(10, 1_000_000, 1_000_000, 60.0), t0);
        let mut workspace = ClassLimits::new(&limits(2, 1_000_000, 1_000_000, 60.0), t0);
        for _ in 0..2 {
            let ticket = admit_all(
                &mut [&mut org, &mut workspace],
                10,
                10,
                OtpmRule::Generated,
                t0,
            )
            .expect("admitted");
            org.complete(ticket, 5, t0);
            workspace.complete(ticket, 5, t0);
        }
        let (layer, refusal) = admit_all(
            &mut [&mut org, &mut workspace],
            10,
            10,
            OtpmRule::Generated,
            t0,
        )
        .expect_err("the workspace is spent");
        assert_eq!(layer, 1);
        assert_eq!(refusal.dimension, Dimension::Requests);
        assert_eq!(refusal.limit_per_minute, 2);
        // The refusal charged the organization nothing: 8 of its 10 are left.
        assert_eq!(org.reading(t0).requests.remaining, 8);
        for _ in 0..8 {
            assert!(org.admit(10, 10, OtpmRule::Generated, t0).is_ok());
        }
        // Both spent: the longer wait is given, the workspace's 30 s (a request at 2/min) over
        // the organization's 6 s (at 10/min).
        let (layer, refusal) = admit_all(
            &mut [&mut org, &mut workspace],
            10,
            10,
            OtpmRule::Generated,
            t0,
        )
        .expect_err("both spent");
        assert_eq!((layer, refusal.retry_after_secs), (1, 30));
        let (layer, refusal) =
            admit_all(&mut [&mut org], 10, 10, OtpmRule::Generated, t0).expect_err("spent");
        assert_eq!((layer, refusal.retry_after_secs), (0, 6));
    }

    #[test]
    fn the_tighter_reading_has_fewer_left_per_dimension() {
        let t0 = Instant::now();
        let wall = jiff::Timestamp::from_second(1_800_000_000).expect("valid time");
        let mut org = ClassLimits::new(&limits(100, 50_000, 10_000, 60.0), t0);
        let mut workspace = ClassLimits::new(&limits(5, 1_000_000, 1_000_000, 60.0), t0);
        for class in [&mut org, &mut workspace] {
            let ticket = class
                .admit(20_000, 10, OtpmRule::Generated, t0)
                .expect("admitted");
            class.complete(ticket, 1_000, t0);
        }
        let both = org.reading(t0).tighter(workspace.reading(t0));
        // Requests: the workspace's 4 of 5 against the organization's 99 of 100.
        assert_eq!(
            (both.requests.limit_per_minute, both.requests.remaining),
            (5, 4)
        );
        // Tokens: the organization's 30,000 and 9,000 against the workspace's 980,000 and 999,000.
        assert_eq!(both.input.limit_per_minute, 50_000);
        assert_eq!(both.output.limit_per_minute, 10_000);
        assert_eq!(both.tokens.limit_per_minute, 60_000);
        let headers = both.headers(wall);
        assert!(headers.contains(&("anthropic-ratelimit-requests-limit", "5".to_string())));
        assert!(headers.contains(&("anthropic-ratelimit-tokens-remaining", "39000".to_string())));
        // On a tie of what is left, the lower limit is the tighter.
        let a = Reading {
            limit_per_minute: 10,
            remaining: 3,
            full_in_secs: 1.0,
        };
        let b = Reading {
            limit_per_minute: 5,
            ..a
        };
        assert_eq!(a.tighter(b), b);
        assert_eq!(b.tighter(a), b);
    }

    #[test]
    fn class_buckets_are_made_on_first_use_and_follow_their_limits() {
        let t0 = Instant::now();
        let mut buckets = ClassBuckets::new(None);
        assert!(buckets.class("c", t0).is_none());
        buckets.set_limits(Some(limits(3, 1_000, 1_000, 60.0)), t0);
        let class = buckets.class("c", t0).expect("limits set");
        assert!(class.admit(1, 1, OtpmRule::Generated, t0).is_ok());
        buckets.set_limits(Some(limits(1, 1_000, 1_000, 60.0)), t0);
        let class = buckets.class("c", t0).expect("limits set");
        assert_eq!(class.reading(t0).requests.remaining, 1);
        buckets.set_limits(None, t0);
        assert!(buckets.class("c", t0).is_none());
        assert_eq!(buckets.limits(), None);
    }

    #[test]
    fn round_thousands_only_above_one_thousand() {
        assert_eq!(round_thousands(999), 999);
        assert_eq!(round_thousands(1000), 1000);
        assert_eq!(round_thousands(45_678), 45_000);
    }
}
