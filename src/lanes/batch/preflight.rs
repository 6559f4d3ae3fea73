//! Before a batch is created: one free `count_tokens` call per request shape not yet known
//! ([`crate::policy::preflight`]), so that requests the API refuses are errored in seconds, not
//! when the batch ends. A shape that cannot be counted now (a 429, an outage, a refused key) is
//! not held up: the batch goes as it is and the API validates it as usual. A request the API
//! refuses is errored; its shape only if one short turn in place of its conversation is refused
//! too. `[batch] preflight = false` turns it off.

use tokio_util::sync::CancellationToken;

use super::{BatchLane, apply};
use crate::api::ApiClient;
use crate::model::answer::Outcome;
use std::collections::HashSet;
use std::sync::atomic::Ordering;

use crate::policy::preflight::{
    MAX_SHAPES_KNOWN, Refusal, ShapeVerdict, refusal, shape_key, shape_probe, shapes_to_check,
};

/// What the preflight leaves of a batch's requests.
pub(super) enum Checked {
    /// These go in the create call (the refused ones are errored already).
    Send(Vec<(String, String)>),
    /// Nothing is left to create: every request was refused.
    Empty,
    /// Shutdown came first.
    Stopped,
}

/// One count.
enum Asked {
    Counted,
    Refused {
        status: u16,
        kind: String,
        message: String,
    },
    /// Not now (a 429, an outage, a refused key): unchecked.
    Unasked,
}

impl BatchLane {
    /// Counts `params`; None when shutdown came first. An answer that is not the API's judgement
    /// of the request switches the preflight off for this process.
    async fn ask(
        &self,
        client: &ApiClient,
        params: &str,
        shutdown: &CancellationToken,
    ) -> Option<Asked> {
        let answer = self.call(shutdown, client.count_tokens(params)).await?;
        Some(match answer {
            Ok(_) => Asked::Counted,
            Err(Outcome::Fatal { status, body, .. }) if matches!(status, 400 | 404 | 422) => {
                match refusal(status, &body) {
                    Refusal::Refused { kind, message } => Asked::Refused {
                        status,
                        kind,
                        message,
                    },
                    Refusal::NotTheApi => {
                        self.preflight_on.store(false, Ordering::Relaxed);
                        tracing::warn!(
                            status,
                            "count_tokens answered other than the API does (is the endpoint there at this base_url?); the batch preflight is off until a restart"
                        );
                        Asked::Unasked
                    }
                }
            }
            Err(other) => {
                tracing::debug!(outcome = ?other, "a request could not be counted before the batch; it goes unchecked");
                Asked::Unasked
            }
        })
    }

    /// Counts one request of each unknown shape of `requests` (custom_id, params), with the
    /// `client` of the batch's route, and errors the requests the API refuses.
    pub(super) async fn preflight(
        &self,
        batch_id: i64,
        client: &ApiClient,
        requests: Vec<(String, String)>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Checked> {
        if !self.preflight_on.load(Ordering::Relaxed) {
            return Ok(Checked::Send(requests));
        }
        let keys: Vec<Option<String>> = requests.iter().map(|(_, p)| shape_key(p)).collect();
        let to_check: Vec<(String, usize)> = {
            let known = crate::lock(&self.shapes);
            shapes_to_check(&keys, &known)
                .into_iter()
                .map(|(key, i)| (key.to_owned(), i))
                .collect()
        };
        // (custom_id, the API's error type, its answer) of each request refused.
        let mut refused: Vec<(String, String, String)> = Vec::new();
        let mut refused_ids: HashSet<String> = HashSet::new();
        for (key, i) in to_check {
            if !self.preflight_on.load(Ordering::Relaxed) {
                break;
            }
            let (custom_id, params) = &requests[i];
            let Some(first) = self.ask(client, params, shutdown).await else {
                return Ok(Checked::Stopped);
            };
            let verdict = match first {
                Asked::Counted => Some(ShapeVerdict::Accepted),
                Asked::Unasked => None,
                Asked::Refused {
                    status,
                    kind,
                    message,
                } => {
                    // That request is refused, whatever the others: the API said so of it.
                    refused_ids.insert(custom_id.clone());
                    let answer = format!("HTTP {status}: {message}");
                    refused.push((custom_id.clone(), kind, answer));
                    // Its shape too, if one short turn in its place is refused as well.
                    match shape_probe(params, &message) {
                        None => None,
                        Some(probe) => match self.ask(client, &probe, shutdown).await {
                            None => return Ok(Checked::Stopped),
                            Some(Asked::Refused {
                                status,
                                kind,
                                message,
                            }) => Some(ShapeVerdict::Refused {
                                status,
                                kind,
                                message,
                            }),
                            Some(Asked::Counted) => Some(ShapeVerdict::Accepted),
                            Some(Asked::Unasked) => None,
                        },
                    }
                }
            };
            if let Some(verdict) = verdict {
                if let ShapeVerdict::Refused {
                    status, message, ..
                } = &verdict
                {
                    tracing::warn!(status, %message, "the API refuses a request shape of this batch; its requests are errored before the batch is created");
                }
                let mut known = crate::lock(&self.shapes);
                if known.len() >= MAX_SHAPES_KNOWN {
                    known.clear();
                }
                known.insert(key, verdict);
            }
        }
        {
            let known = crate::lock(&self.shapes);
            for ((custom_id, _), key) in requests.iter().zip(&keys) {
                if let Some(ShapeVerdict::Refused {
                    status,
                    kind,
                    message,
                }) = key.as_ref().and_then(|k| known.get(k))
                    && refused_ids.insert(custom_id.clone())
                {
                    let answer = format!("HTTP {status}: {message}");
                    refused.push((custom_id.clone(), kind.clone(), answer));
                }
            }
        }
        if refused.is_empty() {
            return Ok(Checked::Send(requests));
        }
        let count = refused.len();
        let left = self
            .store
            .call(move |c| apply::refuse_requests(c, batch_id, &refused, crate::store::now_ms()))
            .await?;
        tracing::warn!(
            refused = count,
            left,
            "requests the API refuses were errored before the batch was created"
        );
        self.results_wake.notify_one();
        if left == 0 {
            return Ok(Checked::Empty);
        }
        Ok(Checked::Send(
            requests
                .into_iter()
                .filter(|(id, _)| !refused_ids.contains(id))
                .collect(),
        ))
    }
}
