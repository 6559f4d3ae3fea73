//! What nightshift believes the API's prompt cache holds, per model and prefix, learned from the
//! answers' `usage`: whether a call's marked prefix will be read (charge ITPM only the rest),
//! written (charge all of it), or is being written by a call not yet answered (wait for it, then
//! read: warm, then burst). Pure, time passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::answer::Usage;
use crate::model::prompt_cache::CachePrefix;

/// What a call's prefix is expected to do at the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// Read from the cache: ITPM is charged only what follows it.
    Read,
    /// Written (or not cached at all): ITPM is charged the whole prompt.
    Write,
    /// Another call is writing it and has no answer yet: wait, then read.
    Wait,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Entry {
    /// A call that will write it is in flight (its admission number).
    Warming { seq: u64 },
    /// Cached until then (a safe lower bound: the call that last used it was admitted before
    /// its answer began, and the API keeps the entry for its TTL from then).
    Live { until: Instant },
    /// The API neither read nor wrote it (shorter than the model's minimum, say): not waited
    /// for, looked at again after a while.
    NotCached { until: Instant },
}

/// How long a prefix the API did not cache is left alone.
const NOT_CACHED_FOR: Duration = Duration::from_secs(600);
/// A warming call older than this is not waited for any longer (its answer may never come).
const WARMING_AT_MOST: Duration = Duration::from_secs(120);

/// The prefixes of every model seen.
#[derive(Debug, Default)]
pub struct CacheBook {
    entries: HashMap<(String, i64), (Entry, Instant)>,
}

impl CacheBook {
    /// What a call of `model` marking `prefix` should expect now (nothing is recorded: see
    /// [`CacheBook::sent`]).
    pub fn expect(&self, model: &str, prefix: &CachePrefix, now: Instant) -> Prediction {
        match self.entries.get(&(model.to_owned(), prefix.key)) {
            Some((Entry::Live { until }, _)) if *until > now => Prediction::Read,
            Some((Entry::NotCached { until }, _)) if *until > now => Prediction::Write,
            Some((Entry::Warming { .. }, since))
                if now.saturating_duration_since(*since) < WARMING_AT_MOST =>
            {
                Prediction::Wait
            }
            _ => Prediction::Write,
        }
    }

    /// Call `seq` went out expecting `prediction`: one that is to write the prefix makes the
    /// calls after it wait for its answer (unless the prefix is known not to be cached).
    pub fn sent(
        &mut self,
        model: &str,
        prefix: &CachePrefix,
        prediction: Prediction,
        seq: u64,
        now: Instant,
    ) {
        let key = (model.to_owned(), prefix.key);
        let not_cached = matches!(
            self.entries.get(&key),
            Some((Entry::NotCached { until }, _)) if *until > now
        );
        if prediction == Prediction::Write && !not_cached {
            self.entries.insert(key, (Entry::Warming { seq }, now));
        }
    }

    #[cfg(test)]
    fn predict(&mut self, model: &str, prefix: &CachePrefix, seq: u64, now: Instant) -> Prediction {
        let prediction = self.expect(model, prefix, now);
        self.sent(model, prefix, prediction, seq, now);
        prediction
    }

    /// Call `seq`, admitted at `admitted_at`, was answered: its `usage` says what the cache did
    /// (None: it did not run, and what it was to write is not there).
    pub fn answered(
        &mut self,
        model: &str,
        prefix: &CachePrefix,
        seq: u64,
        admitted_at: Instant,
        usage: Option<&Usage>,
        now: Instant,
    ) {
        let key = (model.to_owned(), prefix.key);
        let warming_by_this = matches!(
            self.entries.get(&key),
            Some((Entry::Warming { seq: s }, _)) if *s == seq
        );
        let Some(usage) = usage else {
            if warming_by_this {
                self.entries.remove(&key);
            }
            return;
        };
        let cached = usage.cache_read_input_tokens.unwrap_or(0) > 0
            || usage.cache_creation_input_tokens.unwrap_or(0) > 0;
        let entry = if cached {
            let until = admitted_at + Duration::from_millis(prefix.ttl_ms);
            match self.entries.get(&key) {
                Some((Entry::Live { until: was }, _)) => Entry::Live {
                    until: until.max(*was),
                },
                _ => Entry::Live { until },
            }
        } else {
            Entry::NotCached {
                until: now + NOT_CACHED_FOR,
            }
        };
        self.entries.insert(key, (entry, now));
    }

    /// Drops what has expired.
    pub fn forget_expired(&mut self, now: Instant) {
        self.entries.retain(|_, (entry, since)| match entry {
            Entry::Live { until } | Entry::NotCached { until } => *until > now,
            Entry::Warming { .. } => now.saturating_duration_since(*since) < WARMING_AT_MOST,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: CachePrefix = CachePrefix {
        key: 42,
        tokens: 2_000,
        ttl_ms: 300_000,
    };

    fn usage(read: u64, written: u64) -> Usage {
        Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_creation_input_tokens: Some(written),
            cache_read_input_tokens: Some(read),
            cache_creation: None,
        }
    }

    #[test]
    fn the_first_call_writes_the_others_wait_for_its_answer_then_read_until_the_ttl() {
        let mut book = CacheBook::default();
        let t0 = Instant::now();
        let m = "claude-sonnet-5-5";
        assert_eq!(book.predict(m, &PREFIX, 1, t0), Prediction::Write);
        assert_eq!(book.predict(m, &PREFIX, 2, t0), Prediction::Wait);
        assert_eq!(book.expect(m, &PREFIX, t0), Prediction::Wait);
        let answered = t0 + Duration::from_secs(2);
        book.answered(m, &PREFIX, 1, t0, Some(&usage(0, 2_000)), answered);
        assert_eq!(book.predict(m, &PREFIX, 3, answered), Prediction::Read);
        // Each read pushes the end on, from its own admission.
        let later = t0 + Duration::from_secs(290);
        book.answered(m, &PREFIX, 3, later, Some(&usage(2_000, 0)), later);
        assert_eq!(
            book.predict(m, &PREFIX, 4, t0 + Duration::from_secs(500)),
            Prediction::Read
        );
        let gone = later + Duration::from_secs(301);
        assert_eq!(book.predict(m, &PREFIX, 5, gone), Prediction::Write);
        assert_eq!(
            book.predict("claude-opus-5-5", &PREFIX, 6, t0),
            Prediction::Write,
            "caches are per model"
        );
    }

    #[test]
    fn a_writer_that_fails_lets_the_next_call_write_and_an_uncached_prefix_is_not_waited_for() {
        let mut book = CacheBook::default();
        let t0 = Instant::now();
        let m = "claude-sonnet-5-5";
        assert_eq!(book.predict(m, &PREFIX, 1, t0), Prediction::Write);
        book.answered(m, &PREFIX, 1, t0, None, t0);
        assert_eq!(book.predict(m, &PREFIX, 2, t0), Prediction::Write);
        // It ran and the API cached nothing: the rest go at once, each charged all of it.
        book.answered(m, &PREFIX, 2, t0, Some(&usage(0, 0)), t0);
        assert_eq!(book.predict(m, &PREFIX, 3, t0), Prediction::Write);
        assert_eq!(book.predict(m, &PREFIX, 4, t0), Prediction::Write);
        // A warming call never answered is not waited for past two minutes.
        let other = CachePrefix { key: 7, ..PREFIX };
        assert_eq!(book.predict(m, &other, 5, t0), Prediction::Write);
        assert_eq!(book.predict(m, &other, 6, t0), Prediction::Wait);
        let late = t0 + WARMING_AT_MOST;
        assert_eq!(book.predict(m, &other, 7, late), Prediction::Write);
    }
}
