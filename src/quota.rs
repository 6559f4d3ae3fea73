//! Local pacing under the API's per-model limits: three continuously refilled token buckets
//! (requests, input tokens, output tokens) per model, the algorithm the API itself enforces.
//!
//! Pure logic: every function takes `now` as an argument, nothing reads the clock, so it is tested
//! without a server or sleeps. Limits come from the config and are lowered to what the API's
//! `anthropic-ratelimit-*-limit` headers say; a dimension with neither is not paced locally (the
//! API's 429s still are honoured by the lane).
//!
//! Output tokens are reserved at `max_tokens` when a call is admitted and settled with the real
//! usage when it ends: safe both where output is charged as generated and where `max_tokens` is
//! charged up front.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::{RateLimitHeaders, Usage};
use crate::config::ModelLimits;

/// How many seconds of refill a bucket is assumed to hold. The API does not publish its bucket
/// capacity; a few seconds' worth keeps bursts small and pacing close to the refill rate.
const ASSUMED_BURST_SECS: f64 = 6.0;

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

/// One continuously refilled bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// The per-minute limit.
    pub limit: f64,
    pub capacity: f64,
    /// May go below zero after an oversized take; it refills from there.
    pub level: f64,
    updated: Instant,
}

impl Bucket {
    pub fn new(per_minute: u64, now: Instant) -> Bucket {
        let limit = per_minute as f64;
        let capacity = (limit * ASSUMED_BURST_SECS / 60.0).max(1.0);
        Bucket {
            limit,
            capacity,
            level: capacity,
            updated: now,
        }
    }

    fn rate_per_sec(&self) -> f64 {
        self.limit / 60.0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.rate_per_sec()).min(self.capacity);
        self.updated = self.updated.max(now);
    }

    /// What must be in the bucket to take `amount`: all of it, or a full bucket for a request
    /// larger than the bucket (it then goes below zero and refills from there).
    fn needed(&self, amount: f64) -> f64 {
        amount.min(self.capacity)
    }

    /// How long until `amount` can be taken (zero if now).
    fn wait_for(&self, amount: f64) -> Duration {
        let missing = self.needed(amount) - self.level;
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((missing / self.rate_per_sec()).min(3600.0))
    }

    fn set_limit(&mut self, per_minute: u64) {
        let ratio = self.level / self.capacity;
        self.limit = per_minute as f64;
        self.capacity = (self.limit * ASSUMED_BURST_SECS / 60.0).max(1.0);
        self.level = self.level.min(ratio * self.capacity);
    }
}

/// The three buckets of one model, and a pause (after a `retry-after`).
#[derive(Debug, Clone)]
struct ModelQuota {
    requests: Option<Bucket>,
    input: Option<Bucket>,
    output: Option<Bucket>,
    paused_until: Option<Instant>,
}

impl ModelQuota {
    fn new(limits: ModelLimits, now: Instant) -> ModelQuota {
        ModelQuota {
            requests: limits.rpm.map(|l| Bucket::new(l, now)),
            input: limits.itpm.map(|l| Bucket::new(l, now)),
            output: limits.otpm.map(|l| Bucket::new(l, now)),
            paused_until: None,
        }
    }

    fn buckets(&mut self) -> [(&mut Option<Bucket>, u8); 3] {
        [
            (&mut self.requests, 0),
            (&mut self.input, 1),
            (&mut self.output, 2),
        ]
    }
}

/// What an admitted call holds until it is settled.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    pub model: String,
    pub input_reserved: u64,
    pub output_reserved: u64,
}

/// The pacer for every model.
pub struct Quota {
    configured: Box<dyn Fn(&str) -> ModelLimits + Send>,
    models: HashMap<String, ModelQuota>,
}

impl Quota {
    /// `configured` gives the configured limits of a model.
    pub fn new(configured: impl Fn(&str) -> ModelLimits + Send + 'static) -> Quota {
        Quota {
            configured: Box::new(configured),
            models: HashMap::new(),
        }
    }

    /// The buckets of the model's limit class (models sharing a limit share buckets).
    fn model(&mut self, model: &str, now: Instant) -> &mut ModelQuota {
        let class = limit_class(model);
        if !self.models.contains_key(&class) {
            let limits = (self.configured)(model);
            self.models
                .insert(class.clone(), ModelQuota::new(limits, now));
        }
        self.models.get_mut(&class).expect("inserted above")
    }

    /// Admits a call now, or says when to ask again.
    pub fn try_admit(
        &mut self,
        model: &str,
        input_estimate: u64,
        max_tokens: u64,
        now: Instant,
    ) -> Result<Ticket, Instant> {
        let quota = self.model(model, now);
        if let Some(until) = quota.paused_until {
            if now < until {
                return Err(until);
            }
            quota.paused_until = None;
        }
        let amounts = [1.0, input_estimate as f64, max_tokens as f64];
        let mut wait = Duration::ZERO;
        for (bucket, i) in quota.buckets() {
            if let Some(b) = bucket {
                b.refill(now);
                wait = wait.max(b.wait_for(amounts[i as usize]));
            }
        }
        if !wait.is_zero() {
            return Err(now + wait);
        }
        for (bucket, i) in quota.buckets() {
            if let Some(b) = bucket {
                b.level -= amounts[i as usize];
            }
        }
        Ok(Ticket {
            model: model.to_owned(),
            input_reserved: input_estimate,
            output_reserved: max_tokens,
        })
    }

    /// Settles an admitted call: with the real usage if the API ran it, or gives everything back
    /// (a 429, 529 or other error consumed nothing).
    pub fn settle(&mut self, ticket: &Ticket, usage: Option<&Usage>, now: Instant) {
        let quota = self.model(&ticket.model, now);
        let (req_back, in_back, out_back) = match usage {
            Some(u) => (
                0.0,
                ticket.input_reserved as f64 - u.rate_limited_input() as f64,
                ticket.output_reserved as f64 - u.output_tokens as f64,
            ),
            None => (
                1.0,
                ticket.input_reserved as f64,
                ticket.output_reserved as f64,
            ),
        };
        let back = [req_back, in_back, out_back];
        for (bucket, i) in quota.buckets() {
            if let Some(b) = bucket {
                b.refill(now);
                b.level = (b.level + back[i as usize]).min(b.capacity);
            }
        }
    }

    /// Holds every call of `model` until `until` (the API said `retry-after`).
    pub fn pause(&mut self, model: &str, until: Instant, now: Instant) {
        let quota = self.model(model, now);
        quota.paused_until = Some(quota.paused_until.map_or(until, |u| u.max(until)));
    }

    /// Learns limits from an answer's headers: a dimension not configured gets the API's limit; a
    /// configured one is lowered to it when the API says less.
    pub fn observe(&mut self, model: &str, headers: &RateLimitHeaders, now: Instant) {
        let quota = self.model(model, now);
        let learned = [
            headers.requests_limit,
            headers.input_limit,
            headers.output_limit,
        ];
        for (bucket, i) in quota.buckets() {
            let Some(limit) = learned[i as usize].filter(|l| *l > 0) else {
                continue;
            };
            match bucket {
                None => *bucket = Some(Bucket::new(limit, now)),
                Some(b) if (limit as f64) < b.limit => b.set_limit(limit),
                Some(_) => {}
            }
        }
    }

    /// The per-minute limits in force for a model (None: not paced).
    pub fn limits(&self, model: &str) -> Option<[Option<f64>; 3]> {
        let q = self.models.get(&limit_class(model))?;
        Some([&q.requests, &q.input, &q.output].map(|b| b.as_ref().map(|b| b.limit)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: u64, itpm: u64, otpm: u64) -> ModelLimits {
        ModelLimits {
            rpm: Some(rpm),
            itpm: Some(itpm),
            otpm: Some(otpm),
        }
    }

    #[test]
    fn admits_a_burst_then_paces_at_the_refill_rate() {
        let t0 = Instant::now();
        let mut q = Quota::new(|_| limits(60, 1_000_000, 1_000_000));
        // 60 RPM with 6 s of burst: 6 calls at once, then one per second.
        for _ in 0..6 {
            q.try_admit("m", 10, 10, t0).expect("burst");
        }
        let next = q.try_admit("m", 10, 10, t0).expect_err("bucket empty");
        assert_eq!(next.duration_since(t0).as_millis(), 1000);
        q.try_admit("m", 10, 10, t0 + Duration::from_secs(1))
            .expect("refilled");
    }

    #[test]
    fn the_binding_dimension_decides_the_wait() {
        let t0 = Instant::now();
        let mut q = Quota::new(|_| limits(1000, 6_000, 1_000_000));
        // ITPM 6000: 100 tokens/s, bucket 600. A 600-token call empties it.
        q.try_admit("m", 600, 1, t0).expect("first");
        let next = q
            .try_admit("m", 300, 1, t0)
            .expect_err("input bucket empty");
        assert_eq!(next.duration_since(t0).as_secs(), 3);
    }

    #[test]
    fn oversized_calls_wait_for_a_full_bucket_then_go_negative() {
        let t0 = Instant::now();
        let mut q = Quota::new(|_| limits(1000, 600, 1_000_000)); // 10/s, bucket 60
        q.try_admit("m", 120, 1, t0)
            .expect("full bucket admits an oversized call");
        let next = q.try_admit("m", 120, 1, t0).expect_err("now in debt");
        // From -60 back to a full 60 at 10/s: 12 s.
        assert_eq!(next.duration_since(t0).as_secs(), 12);
    }

    #[test]
    fn settle_returns_unused_output_and_failed_calls_give_everything_back() {
        let t0 = Instant::now();
        let mut q = Quota::new(|_| limits(60, 600, 600)); // buckets: 6 req, 60 in, 60 out
        let t = q.try_admit("m", 60, 60, t0).expect("admit");
        assert!(q.try_admit("m", 1, 1, t0).is_err());
        let usage = Usage {
            input_tokens: 30,
            output_tokens: 10,
            ..Default::default()
        };
        q.settle(&t, Some(&usage), t0);
        let t2 = q.try_admit("m", 30, 50, t0).expect("room came back");
        q.settle(&t2, None, t0);
        q.try_admit("m", 30, 50, t0)
            .expect("a failed call consumed nothing");
    }

    #[test]
    fn pause_holds_the_model_and_unpaced_models_pass() {
        let t0 = Instant::now();
        let mut q = Quota::new(|m| {
            if m == "paced" {
                limits(60, 600, 600)
            } else {
                ModelLimits::default()
            }
        });
        q.pause("paced", t0 + Duration::from_secs(5), t0);
        assert_eq!(
            q.try_admit("paced", 1, 1, t0),
            Err(t0 + Duration::from_secs(5))
        );
        q.try_admit("paced", 1, 1, t0 + Duration::from_secs(5))
            .expect("after the pause");
        for _ in 0..1000 {
            q.try_admit("free", 1_000_000, 1_000_000, t0)
                .expect("no limits, no pacing");
        }
    }

    #[test]
    fn models_sharing_a_limit_share_buckets() {
        assert_eq!(limit_class("claude-sonnet-4-5"), "claude-sonnet-4.x");
        assert_eq!(
            limit_class("claude-sonnet-4-6-20260101"),
            "claude-sonnet-4.x"
        );
        assert_eq!(limit_class("claude-opus-4-8"), "claude-opus-4.x");
        assert_eq!(limit_class("claude-sonnet-5-5"), "claude-sonnet-5-5");
        let t0 = Instant::now();
        let mut q = Quota::new(|_| limits(60, 1_000_000, 1_000_000)); // 6 requests of burst
        for i in 0..6 {
            let model = if i % 2 == 0 {
                "claude-sonnet-4-5"
            } else {
                "claude-sonnet-4-6"
            };
            q.try_admit(model, 1, 1, t0).expect("burst");
        }
        assert!(
            q.try_admit("claude-sonnet-4-6", 1, 1, t0).is_err(),
            "one bucket for both"
        );
        q.try_admit("claude-haiku-4-5", 1, 1, t0)
            .expect("another class has its own");
    }

    #[test]
    fn headers_teach_missing_limits_and_lower_configured_ones() {
        let t0 = Instant::now();
        let mut q = Quota::new(|_| ModelLimits {
            rpm: Some(600),
            ..Default::default()
        });
        let headers = RateLimitHeaders {
            requests_limit: Some(60),
            input_limit: Some(30_000),
            ..Default::default()
        };
        q.observe("m", &headers, t0);
        assert_eq!(q.limits("m"), Some([Some(60.0), Some(30_000.0), None]));
        q.observe(
            "m",
            &RateLimitHeaders {
                requests_limit: Some(5000),
                ..Default::default()
            },
            t0,
        );
        assert_eq!(
            q.limits("m").expect("known")[0],
            Some(60.0),
            "never raised past the config"
        );
    }
}
