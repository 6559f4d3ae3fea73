//! One token bucket as far as it is known: its limit, its capacity (learned from the answers)
//! and its level, pessimistic.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Before any answer: assume this much of each limit's refill is in the bucket.
pub(super) const PROBE_SECS: f64 = 1.0;
/// Capacity estimates kept per dimension.
pub(super) const CAPACITY_WINDOW: usize = 32;

/// What is known of one bucket.
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    /// Per-minute limit in force; None: unknown, not paced locally.
    pub(super) limit: Option<f64>,
    /// The configured limit, never exceeded by what headers say.
    pub(super) configured: Option<f64>,
    /// The limit the API's headers last gave.
    pub(super) api_limit: Option<f64>,
    /// Recent capacity estimates; the upper end sizes the reserve.
    pub(super) capacity_seen: VecDeque<f64>,
    /// Capacity assumed until an answer says more.
    pub(super) capacity_assumed: f64,
    pub(super) level: f64,
    pub(super) updated: Instant,
    /// The last `remaining` an answer gave, and when.
    pub(super) last_remaining: Option<(u64, Instant)>,
    /// The part of the learned burst the level may reach: 1 alone; [`SHARED_BURST`] when several
    /// daemons share the bucket (see [`Bucket::rescale`]).
    pub(super) burst: f64,
}

/// The part of its share of the burst a daemon may take when several share a bucket. Each one's
/// capacity estimate runs high by up to a second's refill (`-reset` is given to the second);
/// alone the next answer corrects it, but several daemons bursting at once after an idle spell
/// would add their errors up. Only the burst is held back, not the refill rate.
pub(super) const SHARED_BURST: f64 = 0.8;

impl Bucket {
    /// `start`: the limit to start from; `cap`: whether it is a ceiling the headers may not
    /// raise (explicit numbers in the config) or only a first guess (a tier preset).
    pub(super) fn new(start: Option<u64>, cap: bool, now: Instant) -> Bucket {
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
            burst: 1.0,
        }
    }

    /// What this bucket learned, to outlive a restart.
    pub(super) fn learned(&mut self, now: Instant) -> super::LearnedDim {
        self.refill(now);
        super::LearnedDim {
            api_limit: self.api_limit,
            capacity_seen: self.capacity_seen.iter().copied().collect(),
            capacity_assumed: self.capacity_assumed,
            level: self.level,
        }
    }

    /// Takes back what was learned `age_secs` ago: the API's limit (under a configured ceiling
    /// still), the sizes seen, and the level refilled for the time passed (never above the
    /// bucket's lower size). Odd values (negative, not finite) are left out.
    pub(super) fn restore(&mut self, learned: &super::LearnedDim, age_secs: f64, now: Instant) {
        let sane = |v: f64| v.is_finite() && v >= 0.0;
        if let Some(api) = learned.api_limit.filter(|l| sane(*l) && *l > 0.0) {
            self.api_limit = Some(api);
            self.limit = Some(self.configured.map_or(api, |c| c.min(api)));
        }
        let seen: Vec<f64> = learned
            .capacity_seen
            .iter()
            .copied()
            .filter(|c| sane(*c))
            .collect();
        let skip = seen.len().saturating_sub(CAPACITY_WINDOW);
        self.capacity_seen = seen.into_iter().skip(skip).collect();
        if sane(learned.capacity_assumed) && learned.capacity_assumed > 0.0 {
            self.capacity_assumed = learned.capacity_assumed;
        }
        let age = if sane(age_secs) { age_secs } else { 0.0 };
        if sane(learned.level) {
            self.level = (learned.level + age * self.rate()).min(self.capacity_low());
        }
        self.updated = now;
    }

    /// Its share of the organization's bucket changed by `ratio` (another daemon came or went):
    /// every figure, which counts only the share, is scaled with it. `shared`: the bucket is
    /// shared now (the share is below 1).
    pub(super) fn rescale(&mut self, ratio: f64, shared: bool, now: Instant) {
        self.refill(now);
        self.burst = if shared { SHARED_BURST } else { 1.0 };
        let scale = |v: f64| v * ratio;
        if ratio < 1.0 {
            // Another daemon came: it takes its part from now on, while this one may have taken
            // a whole share's burst since it came; start the smaller share empty, refilling at
            // its rate (a burst's worth of throughput, once).
            self.level = 0.0;
        }
        self.limit = self.limit.map(scale);
        self.configured = self.configured.map(scale);
        self.api_limit = self.api_limit.map(scale);
        self.capacity_seen.iter_mut().for_each(|c| *c = scale(*c));
        self.capacity_assumed = scale(self.capacity_assumed);
        self.level = scale(self.level).min(self.capacity_low());
        self.last_remaining = self
            .last_remaining
            .map(|(r, at)| (scale(r as f64).max(0.0) as u64, at));
    }

    pub(super) fn rate(&self) -> f64 {
        self.limit.unwrap_or(0.0) / 60.0
    }

    /// A reloaded config: the new limit is in force at once (the next answer's headers lower it
    /// again if the API's is smaller). A changed limit makes capacity estimates stale; the level
    /// is kept, never above the new starting burst, so a reload cannot cause a burst.
    pub(super) fn reconfigure(&mut self, start: Option<u64>, cap: bool, now: Instant) {
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
    pub(super) fn capacity(&self) -> f64 {
        self.capacity_seen
            .iter()
            .copied()
            .fold(self.capacity_assumed, f64::max)
    }

    /// The lower end of recent estimates: the level is never assumed above it, so a burst after
    /// an idle spell cannot overshoot the real bucket.
    pub(super) fn capacity_low(&self) -> f64 {
        if self.capacity_seen.is_empty() {
            return self.capacity_assumed * self.burst;
        }
        // A low quantile, not the minimum: one estimate spoilt by a clock off by a second must not
        // shrink the bucket for the next 32 answers.
        let mut sorted: Vec<f64> = self.capacity_seen.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 4] * self.burst
    }

    pub(super) fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.rate()).min(self.capacity_low());
        self.updated = self.updated.max(now);
    }

    /// What must be in the bucket to take `cost` above `floor`: all of it, or the whole usable
    /// part for a call larger than that (the level then goes below the floor and refills).
    pub(super) fn needed(&self, cost: f64, floor: f64) -> f64 {
        // Never more than the bucket surely holds: a bucket too small for its reserve admits a
        // lower class only when full, instead of never.
        let low = self.capacity_low();
        (floor + cost.min((low - floor).max(0.0))).min(low)
    }

    pub(super) fn wait_for(&self, cost: f64, floor: f64) -> Duration {
        let missing = self.needed(cost, floor) - self.level;
        if missing <= 0.0 || self.rate() <= 0.0 {
            return Duration::ZERO;
        }
        // A NaN (no usable rate) waits the longest, like an unknown refill.
        Duration::try_from_secs_f64((missing / self.rate()).min(3600.0))
            .unwrap_or(Duration::from_secs(3600))
    }

    /// Applies what an answer said: the limit, a capacity estimate, and the level less `uncounted`
    /// (our calls the answer may not include). Never panics on odd values.
    /// `tokens`: the dimension counts tokens, whose `remaining` the API rounds to thousands.
    /// `share`: the part of the organization's bucket this daemon paces itself to (1 alone; see
    /// [`super::Quota::set_share`]): the answer's limit and remaining count for that part.
    pub(super) fn correct(
        &mut self,
        header: &crate::model::answer::DimHeaders,
        uncounted: f64,
        tokens: bool,
        share: f64,
        now: Instant,
    ) {
        let api_limit = header.limit.filter(|l| *l > 0).map(|l| l as f64 * share);
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
        // Token counts are rounded to the nearest thousand: the truth may be 500 lower.
        let remaining = if tokens && remaining >= 1000 && remaining % 1000 == 0 {
            remaining as f64 - 500.0
        } else {
            remaining as f64
        } * share;
        self.last_remaining = Some((remaining.max(0.0) as u64, now));
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
