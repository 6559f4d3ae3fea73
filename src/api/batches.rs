//! The Message Batches endpoints: create, get, cancel, list, results.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use super::classify::parse_retry_after;
use super::{ApiClient, error_chain};
use crate::model::batch::{ApiState, BatchCounts};

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
    },
    /// Worth trying again after a backoff. `maybe_done`: the request was sent and may have taken
    /// effect (no answer, or a 5xx), which matters for creating a batch.
    Retry {
        maybe_done: bool,
        message: String,
    },
    /// The API refused it (4xx other than 429).
    Refused {
        status: u16,
        message: String,
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
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("HTTP {status}"));
    match status {
        429 => BatchCall::Wait {
            retry_after: parse_retry_after(headers, SystemTime::now()),
            message,
        },
        408 | 409 | 500..=599 => BatchCall::Retry {
            maybe_done: true,
            message: format!("HTTP {status}: {message}"),
        },
        _ => BatchCall::Refused { status, message },
    }
}
