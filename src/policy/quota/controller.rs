//! The controller of one limit class: its three buckets, the calls it has in flight, its
//! concurrency and the calibration of its estimates.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::bucket::Bucket;
use super::{ClassLimits, Dim, OutputReservation, QuotaSettings};
use crate::model::job::Priority;

/// The controller of one limit class.
#[derive(Debug, Clone)]
pub(super) struct Controller {
    pub(super) buckets: [Bucket; 3],
    pub(super) paused_until: Option<Instant>,
    /// Calls in flight: admission order → what each reserved, and its `max_tokens`.
    pub(super) in_flight: BTreeMap<u64, ([f64; 3], u64)>,
    pub(super) concurrency: usize,
    /// Calibration of the input estimate: actual / estimated, smoothed.
    pub(super) input_ratio: f64,
    /// Relative errors of recent input estimates (after calibration), for diagnosis.
    pub(super) input_errors: VecDeque<f64>,
    /// Recent (max_tokens, output tokens) of answers, for the usual output of similar calls.
    pub(super) outputs: VecDeque<(u64, u64)>,
    pub(super) last_throttle: Option<Instant>,
    /// The first model seen of the class, to look its configured limits up again on reload.
    pub(super) model: String,
}

impl Controller {
    pub(super) fn new(limits: ClassLimits, settings: &QuotaSettings, now: Instant) -> Controller {
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

    pub(super) fn floor(&self, dim: Dim, priority: Priority, reserve: f64) -> f64 {
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
    pub(super) fn usual_output(&self, max_tokens: u64) -> Option<f64> {
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

    pub(super) fn output_reservation(&self, max_tokens: u64, mode: OutputReservation) -> f64 {
        match (mode, self.usual_output(max_tokens)) {
            (OutputReservation::Learned, Some(usual)) => usual,
            _ => max_tokens as f64,
        }
    }
}
