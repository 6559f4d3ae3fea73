//! The Message Batches endpoints: create, get, cancel, list, results.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use super::classify::{origin, parse_retry_after, spend_cap};
use super::{ApiClient, error_chain};
use crate::model::answer::Origin;
use crate::model::batch::{ApiState, BatchCounts};
use crate::policy::outcome::account_blocked;

/// A Message Batch as the API describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiBatch {
    pub id: String,
    pub processing_status: String,
    pub request_counts: BatchCounts,
    pub created_at: String,
    #[serde(default)]
    pub ended_at: Option<String>,
}

impl ApiBatch {
    pub fn state(&self) -> ApiState {
        let ms = |t: &str| {
            t.parse::<jiff::Timestamp>()
                .ok()
                .map(|t| t.as_millisecond())
        };
        ApiState {
            api_id: self.id.clone(),
            status: self.processing_status.clone(),
            counts: self.request_counts,
            created_at: ms(&self.created_at),
            ended_at: self.ended_at.as_deref().and_then(ms),
        }
    }
}

/// A page of `GET /v1/messages/batches`.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchPage {
    pub data: Vec<ApiBatch>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub last_id: Option<String>,
}

/// What a call to a batch endpoint came to.
#[derive(Debug)]
pub enum BatchCall<T> {
    Done(T),
    /// 429: wait (the batch endpoints' RPM, or the queue of batch requests is full).
    Wait {
        retry_after: Option<Duration>,
        message: String,
        /// Who answered, for the owner's verdict.
        origin: Origin,
    },
    /// Worth trying again after a backoff. `maybe_done`: the request was sent and may have taken
    /// effect (no answer, or a 5xx), which matters for creating a batch.
    Retry {
        maybe_done: bool,
        message: String,
    },
    /// The API refused it (4xx other than 429, and not [`BatchCall::Blocked`]).
    Refused {
        status: u16,
        message: String,
    },
    /// The API refuses the route's account or key (401, 403, the usage limit's 400, the spend
    /// cap's 429; see [`crate::policy::outcome::account_blocked`]): every call of the route
    /// would be refused alike. `origin`: who answered, for the owner's verdict.
    Blocked {
        status: u16,
        message: String,
        origin: Origin,
    },
}

impl ApiClient {
    fn batches_url(&self) -> String {
        format!("{}/batches", self.messages_url)
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header("x-api-key", self.key.clone())
            .header("anthropic-version", self.version.clone())
    }

    /// `POST /v1/messages/batches` with a body built by the caller.
    pub async fn create_batch(&self, body: String) -> BatchCall<ApiBatch> {
        let request = self
            .request(reqwest::Method::POST, &self.batches_url())
            .header("content-type", "application/json")
            .body(body);
        batch_call(request).await
    }

    pub async fn get_batch(&self, id: &str) -> BatchCall<ApiBatch> {
        batch_call(self.request(
            reqwest::Method::GET,
            &format!("{}/{id}", self.batches_url()),
        ))
        .await
    }

    pub async fn cancel_batch(&self, id: &str) -> BatchCall<ApiBatch> {
        batch_call(self.request(
            reqwest::Method::POST,
            &format!("{}/{id}/cancel", self.batches_url()),
        ))
        .await
    }

    /// One page of the batch list, newest first.
    pub async fn list_batches(&self, after_id: Option<&str>, limit: u32) -> BatchCall<BatchPage> {
        let mut url = format!("{}?limit={limit}", self.batches_url());
        if let Some(after) = after_id {
            url.push_str(&format!("&after_id={after}"));
        }
        batch_call(self.request(reqwest::Method::GET, &url)).await
    }

    /// Opens a batch's results (JSONL). The URL is built from the configured base URL, never taken
    /// from the answer, so the key only ever goes to the API it is meant for.
    pub async fn batch_results(&self, id: &str) -> BatchCall<reqwest::Response> {
        let url = format!("{}/{id}/results", self.batches_url());
        let sent = self
            .request(reqwest::Method::GET, &url)
            .header("accept", "application/binary")
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => BatchCall::Done(r),
            Ok(r) => {
                let status = r.status().as_u16();
                let headers = r.headers().clone();
                let body = r.bytes().await.unwrap_or_default();
                batch_failure(status, &headers, &body)
            }
            Err(e) => BatchCall::Retry {
                maybe_done: false,
                message: error_chain(&e),
            },
        }
    }
}

async fn batch_call<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
) -> BatchCall<T> {
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            return BatchCall::Retry {
                maybe_done: !e.is_connect(),
                message: error_chain(&e),
            };
        }
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return BatchCall::Retry {
                maybe_done: true,
                message: format!("answer cut off: {}", error_chain(&e)),
            };
        }
    };
    if status == 200 {
        return match serde_json::from_slice(&body) {
            Ok(value) => BatchCall::Done(value),
            Err(e) => BatchCall::Retry {
                maybe_done: true,
                message: format!("unreadable answer: {e}"),
            },
        };
    }
    batch_failure(status, &headers, &body)
}

fn batch_failure<T>(status: u16, headers: &HeaderMap, body: &[u8]) -> BatchCall<T> {
    let json = serde_json::from_slice::<Value>(body).ok();
    let message = json
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("HTTP {status}"));
    let error_code = json
        .as_ref()
        .and_then(|v| v["error"]["details"]["error_code"].as_str())
        .unwrap_or_default();
    if account_blocked(status, &message, spend_cap(error_code)) {
        return BatchCall::Blocked {
            status,
            message,
            origin: origin(headers),
        };
    }
    match status {
        429 => BatchCall::Wait {
            retry_after: parse_retry_after(headers, SystemTime::now()),
            message,
            origin: origin(headers),
        },
        408 | 409 | 500..=599 => BatchCall::Retry {
            maybe_done: true,
            message: format!("HTTP {status}: {message}"),
        },
        _ => BatchCall::Refused { status, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn answer(status: u16, body: &str, request_id: bool) -> BatchCall<ApiBatch> {
        let mut headers = HeaderMap::new();
        if request_id {
            headers.insert("request-id", HeaderValue::from_static("req_1"));
            headers.insert(
                "anthropic-organization-id",
                HeaderValue::from_static("org-a"),
            );
        }
        batch_failure(status, &headers, body.as_bytes())
    }

    #[test]
    fn a_refused_account_is_blocked_and_says_who_answered() {
        let cap = r#"{"type":"error","error":{"type":"rate_limit_error","message":"cap","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
        match answer(429, cap, true) {
            BatchCall::Blocked {
                status: 429,
                message,
                origin,
            } => {
                assert_eq!(message, "cap");
                assert!(origin.anthropic);
                assert_eq!(origin.organization_id.as_deref(), Some("org-a"));
            }
            other => panic!("{other:?}"),
        }
        let slow = r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
        assert!(matches!(answer(429, slow, true), BatchCall::Wait { .. }));
        let key = r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        assert!(matches!(
            answer(401, key, false),
            BatchCall::Blocked { status: 401, origin, .. } if !origin.anthropic
        ));
        let usage = r#"{"type":"error","error":{"type":"invalid_request_error","message":"You have reached your specified API usage limits."}}"#;
        assert!(matches!(
            answer(400, usage, true),
            BatchCall::Blocked { status: 400, .. }
        ));
        let gone =
            r#"{"type":"error","error":{"type":"not_found_error","message":"no such batch"}}"#;
        assert!(matches!(
            answer(404, gone, true),
            BatchCall::Refused { status: 404, .. }
        ));
        assert!(matches!(
            answer(400, "not json", true),
            BatchCall::Refused { status: 400, .. }
        ));
    }
}
