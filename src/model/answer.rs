//! What an answer of the API came to, as the lanes and the quota controller read it: usage,
//! the rate-limit headers, and the kinds of outcome. Built by `api::classify`; no I/O here.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// Token usage of a call, as the API reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    /// The cache writes split by lifetime (absent from older answers).
    #[serde(default)]
    pub cache_creation: Option<CacheCreation>,
}

/// `usage.cache_creation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct CacheCreation {
    #[serde(default)]
    pub ephemeral_5m_input_tokens: u64,
    #[serde(default)]
    pub ephemeral_1h_input_tokens: u64,
}

impl Usage {
    /// The cache writes as (5-minute, 1-hour) tokens: the split when the answer gives it, what
    /// it leaves of `cache_creation_input_tokens` counted as 5-minute writes.
    pub fn cache_writes(&self) -> (u64, u64) {
        let total = self.cache_creation_input_tokens.unwrap_or(0);
        let one_hour = self
            .cache_creation
            .map_or(0, |c| c.ephemeral_1h_input_tokens)
            .min(total);
        (total - one_hour, one_hour)
    }

    /// What counts toward the input-tokens-per-minute limit.
    pub fn rate_limited_input(&self) -> u64 {
        self.input_tokens + self.cache_creation_input_tokens.unwrap_or(0)
    }
}

/// The `anthropic-ratelimit-*` headers of an answer (any may be missing).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RateLimitHeaders {
    /// Requests, input tokens, output tokens (in that order, as [`crate::policy::quota::Dim`]).
    pub dims: [DimHeaders; 3],
}

/// `-limit`, `-remaining` and `-reset` of one dimension. Each is None when missing or malformed;
/// values past any plausible limit are treated as malformed.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct DimHeaders {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Seconds from the answer until the bucket is full again (0 if the time has passed).
    pub reset_in: Option<f64>,
}

/// Who answered: the organization and workspace the answer names, and whether it bore the API's own marks.
///
/// `anthropic` is whether the answer had a `request-id` header or any `anthropic-*` header: a 429
/// without them came from something between nightshift and the API (a gateway, a proxy), not
/// from the API's rate limiter. Default: no answer came back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// `anthropic-organization-id`.
    pub organization_id: Option<String>,
    /// `anthropic-workspace-id`.
    pub workspace_id: Option<String>,
    /// `request-id`: what a support ticket names the answer by.
    pub request_id: Option<String>,
    pub anthropic: bool,
}

/// What one call came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 200 with a message. `message` is the body as received.
    Succeeded {
        message: String,
        usage: Usage,
        request_id: Option<String>,
        limits: RateLimitHeaders,
    },
    /// A rate-limit 429: wait `retry_after` (or back off) and send again; not a failure.
    RateLimited {
        retry_after: Option<Duration>,
        request_id: Option<String>,
        message: String,
        limits: RateLimitHeaders,
    },
    /// Sending again cannot help until a person acts: the spend cap (429 without `retry-after`,
    /// `enforced_spend_limit_reached`), a self-set usage limit (400 "reached your specified API
    /// usage limits"), or the key refused (401, 403). The lane pauses; items are not failed.
    Blocked {
        status: u16,
        request_id: Option<String>,
        message: String,
    },
    /// Worth sending again after a backoff: 5xx, 529, 408, 409, or a connection that failed before
    /// the request was sent (`status` None).
    Retryable {
        status: Option<u16>,
        retry_after: Option<Duration>,
        request_id: Option<String>,
        message: String,
    },
    /// The request itself is wrong (other 4xx): the item ends `errored` with the API's error body.
    Fatal {
        status: u16,
        request_id: Option<String>,
        body: Value,
    },
    /// Sent, but no usable answer came back (connection dropped, timeout, unreadable body): the API
    /// may have run it. Sending again may run it twice; that is recorded.
    Unknown { message: String },
}

impl Outcome {
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Outcome::Succeeded { request_id, .. }
            | Outcome::RateLimited { request_id, .. }
            | Outcome::Blocked { request_id, .. }
            | Outcome::Retryable { request_id, .. }
            | Outcome::Fatal { request_id, .. } => request_id.as_deref(),
            Outcome::Unknown { .. } => None,
        }
    }
}
