//! Before a batch is created: one free `count_tokens` call per request shape not yet known
//! ([`crate::policy::preflight`]), so that requests the API refuses are errored in seconds, not
//! when the batch ends. A shape that cannot be counted now (a 429, an outage, a refused key) is
//! not held up: the batch goes as it is and the API validates it as usual.

use tokio_util::sync::CancellationToken;

use super::{BatchLane, apply};
use crate::model::answer::Outcome;
use crate::policy::preflight::{
    Blame, MAX_SHAPES_KNOWN, ShapeVerdict, blame, shape_key, shapes_to_check,
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

impl BatchLane {
    /// Counts one request of each unknown shape of `requests` (custom_id, params) and errors the
    /// requests the API refuses.
    pub(super) async fn preflight(
        &self,
        batch_id: i64,
        requests: Vec<(String, String)>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Checked> {
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
        for (key, i) in to_check {
            let (custom_id, params) = &requests[i];
            let Some(answer) = self.call(shutdown, self.client.count_tokens(params)).await else {
                return Ok(Checked::Stopped);
            };
            let verdict = match answer {
                Ok(_) => Some(ShapeVerdict::Accepted),
                Err(Outcome::Fatal { status, body, .. }) if matches!(status, 400 | 404 | 422) => {
                    let message = body["error"]["message"]
                        .as_str()
                        .unwrap_or("no message")
                        .to_owned();
                    let kind = body["error"]["type"]
                        .as_str()
                        .unwrap_or("invalid_request_error")
                        .to_owned();
                    match blame(&message) {
                        Blame::Shape => Some(ShapeVerdict::Refused {
                            status,
                            kind,
                            message,
                        }),
                        Blame::Request => {
                            // That request's own conversation: it alone is refused.
                            let answer = format!("HTTP {status}: {message}");
                            refused.push((custom_id.clone(), kind, answer));
                            None
                        }
                    }
                }
                Err(other) => {
                    tracing::debug!(outcome = ?other, "a request shape could not be counted before the batch; it goes unchecked");
                    None
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
                    && !refused.iter().any(|(id, ..)| id == custom_id)
                {
                    let answer = format!("HTTP {status}: {message}");
                    refused.push((custom_id.clone(), kind.clone(), answer));
                }
            }
        }
        if refused.is_empty() {
            return Ok(Checked::Send(requests));
        }
        let gone: std::collections::HashSet<String> =
            refused.iter().map(|(id, ..)| id.clone()).collect();
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
                .filter(|(id, _)| !gone.contains(id))
                .collect(),
        ))
    }
}
