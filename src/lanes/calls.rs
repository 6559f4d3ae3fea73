//! Real-time calls counted by model and outcome since the daemon started, for the metrics
//! endpoint.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::model::answer::Outcome;

/// Real-time calls by (model, outcome), since the daemon started.
#[derive(Debug, Default)]
pub struct CallCounters(Mutex<BTreeMap<(String, &'static str), u64>>);

impl CallCounters {
    pub fn count(&self, model: &str, outcome: &Outcome) {
        let mut counts = crate::lock(&self.0);
        *counts
            .entry((model.to_owned(), outcome_label(outcome)))
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> Vec<((String, &'static str), u64)> {
        let counts = crate::lock(&self.0);
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// The `outcome` label of a call.
pub fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded { .. } => "succeeded",
        Outcome::RateLimited { .. } => "rate_limited_429",
        Outcome::Retryable {
            status: Some(529), ..
        } => "overloaded_529",
        Outcome::Retryable {
            status: Some(_), ..
        } => "server_error",
        Outcome::Retryable { status: None, .. } => "connection_error",
        Outcome::Blocked { .. } => "blocked",
        Outcome::Fatal { .. } => "invalid_request",
        Outcome::Unknown { .. } => "unknown",
    }
}
