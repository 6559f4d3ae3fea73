//! The HTTP client for the Claude API, and the pure classification of its answers.
//!
//! [`classify`] turns a status, headers and body into an [`Outcome`] the real-time lane acts on; it
//! does no I/O so it is unit-tested on its own. The key is held in [`ApiKey`], which never prints.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::ApiSettings;

/// The API key. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// From `api.api_key_file`, else the systemd credential `anthropic-api-key`, else
    /// `ANTHROPIC_API_KEY`. The error names what to set.
    pub fn load(settings: &ApiSettings) -> anyhow::Result<ApiKey> {
        if let Some(path) = &settings.api_key_file {
            return read_key_file(path);
        }
        if let Ok(dir) = std::env::var("CREDENTIALS_DIRECTORY") {
            let path = Path::new(&dir).join("anthropic-api-key");
            if path.is_file() {
                return read_key_file(&path);
            }
        }
        match std::env::var("ANTHROPIC_API_KEY") {
            Ok(key) if !key.trim().is_empty() => Ok(ApiKey(key.trim().to_owned())),
            _ => anyhow::bail!(
                "no API key: set ANTHROPIC_API_KEY, or `api.api_key_file` in the config, \
                 or give systemd the credential `anthropic-api-key`"
            ),
        }
    }

    /// The last four characters, to tell keys apart in diagnostics without revealing them (nothing
    /// at all of a key too short to spare four).
    pub fn fingerprint(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        if chars.len() < 16 {
            return "(short key)".to_owned();
        }
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("…{tail}")
    }

    /// The raw key, for tests that check it leaks nowhere.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn read_key_file(path: &Path) -> anyhow::Result<ApiKey> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the API key file {} (`api.api_key_file`): {e}",
            path.display()
        )
    })?;
    let key = text.trim();
    anyhow::ensure!(
        !key.is_empty(),
        "the API key file {} is empty",
        path.display()
    );
    Ok(ApiKey(key.to_owned()))
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

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
}

impl Usage {
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

impl RateLimitHeaders {
    pub fn parse(headers: &HeaderMap, now: SystemTime) -> RateLimitHeaders {
        const PLAUSIBLE: u64 = 1_000_000_000_000;
        let text = |name: String| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let num = |name: String| text(name)?.parse::<u64>().ok().filter(|n| *n < PLAUSIBLE);
        let reset = |name: String| -> Option<f64> {
            let at: jiff::Timestamp = text(name)?.parse().ok()?;
            let now_ms = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis() as i64;
            let secs = (at.as_millisecond() - now_ms) as f64 / 1000.0;
            // A reset more than a day out is not a per-minute bucket's: ignore it.
            (secs <= 86_400.0).then_some(secs.max(0.0))
        };
        let dim = |prefix: &str| DimHeaders {
            limit: num(format!("anthropic-ratelimit-{prefix}-limit")),
            remaining: num(format!("anthropic-ratelimit-{prefix}-remaining")),
            reset_in: reset(format!("anthropic-ratelimit-{prefix}-reset")),
        };
        RateLimitHeaders {
            dims: [dim("requests"), dim("input-tokens"), dim("output-tokens")],
        }
    }
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

/// `retry-after-ms` (what the SDKs read first), else `retry-after` as seconds or an HTTP date.
/// Garbage, negative or absurd values (over a day) are ignored.
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    const MAX: Duration = Duration::from_secs(86_400);
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|t| t.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
        && ms <= MAX.as_millis() as f64
    {
        return Some(Duration::from_micros((ms * 1000.0) as u64));
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 && secs <= MAX.as_secs_f64() {
            return Some(Duration::from_millis((secs * 1000.0) as u64));
        }
        return None;
    }
    // An HTTP date, e.g. "Wed, 21 Oct 2026 07:28:00 GMT".
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(at.as_millisecond().max(0) as u64);
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    (wait <= MAX).then_some(wait)
}

#[derive(Deserialize)]
struct MessageHead {
    #[serde(rename = "type")]
    kind: String,
    usage: Usage,
}

/// Classifies an answer. Pure: the lane's decisions are tested through it.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Outcome {
    let request_id = headers
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let retry_after = parse_retry_after(headers, now);
    let limits = RateLimitHeaders::parse(headers, now);
    if status == 200 {
        return match std::str::from_utf8(body) {
            Ok(text) => match serde_json::from_str::<MessageHead>(text) {
                Ok(head) if head.kind == "message" => Outcome::Succeeded {
                    message: text.to_owned(),
                    usage: head.usage,
                    request_id,
                    limits,
                },
                _ => Outcome::Unknown {
                    message: format!("200 answer is not a message (request-id {request_id:?})"),
                },
            },
            Err(_) => Outcome::Unknown {
                message: "200 answer is not UTF-8".into(),
            },
        };
    }
    let body_json: Value = serde_json::from_slice(body).unwrap_or_else(|_| {
        // Proxies and load balancers answer with HTML or nothing; keep it readable.
        let text = String::from_utf8_lossy(body);
        let text: String = text.chars().take(300).collect();
        json!({"type": "error", "error": {"type": "api_error", "message": format!("HTTP {status}: {text}")}})
    });
    let message = body_json["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"));
    let error_code = body_json["error"]["details"]["error_code"]
        .as_str()
        .unwrap_or_default();
    let should_retry = headers.get("x-should-retry").and_then(|v| v.to_str().ok());
    match status {
        429 if error_code == "enforced_spend_limit_reached" => Outcome::Blocked {
            status,
            request_id,
            message,
        },
        429 => Outcome::RateLimited {
            retry_after,
            request_id,
            message,
            limits,
        },
        // A refused key stops every call alike: pause, do not fail each item.
        401 | 403 => Outcome::Blocked {
            status,
            request_id,
            message,
        },
        400 if message.contains("reached your specified") && message.contains("usage limits") => {
            Outcome::Blocked {
                status,
                request_id,
                message,
            }
        }
        _ if should_retry == Some("false") => Outcome::Fatal {
            status,
            request_id,
            body: body_json,
        },
        408 | 409 | 500..=599 => Outcome::Retryable {
            status: Some(status),
            retry_after,
            request_id,
            message,
        },
        _ if should_retry == Some("true") => Outcome::Retryable {
            status: Some(status),
            retry_after,
            request_id,
            message,
        },
        _ => Outcome::Fatal {
            status,
            request_id,
            body: body_json,
        },
    }
}

/// Sends Messages requests.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    messages_url: String,
    version: HeaderValue,
    key: HeaderValue,
}

impl ApiClient {
    pub fn new(settings: &ApiSettings, key: &ApiKey) -> anyhow::Result<ApiClient> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1024)
            .user_agent(concat!("nightshift/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut key = HeaderValue::from_str(&key.0).map_err(|_| {
            anyhow::anyhow!("the API key contains characters not allowed in a header")
        })?;
        key.set_sensitive(true);
        Ok(ApiClient {
            http,
            messages_url: format!("{}/v1/messages", settings.base_url),
            version: HeaderValue::from_str(&settings.anthropic_version)?,
            key,
        })
    }

    /// Sends one Messages request (`params` as written in the job file) and classifies the answer.
    pub async fn send_message(&self, params: &str) -> Outcome {
        match self.post(&self.messages_url, without_stream(params)).await {
            Ok((status, headers, body)) => classify(status, &headers, &body, SystemTime::now()),
            Err(outcome) => outcome,
        }
    }

    /// Counts a request's input tokens with the free `count_tokens` endpoint (its own RPM). The
    /// body keeps only the fields that endpoint takes (no `max_tokens`, sampling or metadata).
    /// Err: the call's outcome when it did not answer with a count.
    pub async fn count_tokens(&self, params: &str) -> Result<u64, Outcome> {
        let url = format!("{}/count_tokens", self.messages_url);
        #[derive(Deserialize)]
        struct Count {
            input_tokens: u64,
        }
        match self.post(&url, count_tokens_body(params)).await {
            Ok((200, _, body)) => serde_json::from_slice::<Count>(&body)
                .map(|c| c.input_tokens)
                .map_err(|e| Outcome::Unknown {
                    message: format!("count_tokens answered without a count: {e}"),
                }),
            Ok((status, headers, body)) => {
                Err(classify(status, &headers, &body, SystemTime::now()))
            }
            Err(outcome) => Err(outcome),
        }
    }

    /// POSTs a JSON body. Err: no status came back (the outcome says whether it was sent), or a
    /// 200 whose body was cut off. A failed status whose body was lost comes back with an empty
    /// body: the status alone tells what happened.
    async fn post(
        &self,
        url: &str,
        body: String,
    ) -> Result<(u16, HeaderMap, bytes::Bytes), Outcome> {
        let response = self
            .http
            .post(url)
            .header("x-api-key", self.key.clone())
            .header("anthropic-version", self.version.clone())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return Err(Outcome::Retryable {
                    status: None,
                    retry_after: None,
                    request_id: None,
                    message: format!("could not connect: {}", error_chain(&e)),
                });
            }
            Err(e) => {
                return Err(Outcome::Unknown {
                    message: format!("no answer after sending: {}", error_chain(&e)),
                });
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        match response.bytes().await {
            Ok(body) => Ok((status, headers, body)),
            Err(e) if status == 200 => Err(Outcome::Unknown {
                message: format!("answer cut off while reading: {}", error_chain(&e)),
            }),
            Err(_) => Ok((status, headers, bytes::Bytes::new())),
        }
    }
}

/// The fields `count_tokens` takes, from a Messages body.
pub fn count_tokens_body(params: &str) -> String {
    const COUNTED: [&str; 8] = [
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "cache_control",
    ];
    match serde_json::from_str::<Value>(params) {
        Ok(Value::Object(mut object)) => {
            object.retain(|k, _| COUNTED.contains(&k.as_str()));
            Value::Object(object).to_string()
        }
        _ => params.to_owned(),
    }
}

/// A Message Batch as the API describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiBatch {
    pub id: String,
    pub processing_status: String,
    pub request_counts: crate::store::batches::BatchCounts,
    pub created_at: String,
    #[serde(default)]
    pub ended_at: Option<String>,
}

impl ApiBatch {
    pub fn state(&self) -> crate::store::batches::ApiState {
        let ms = |t: &str| {
            t.parse::<jiff::Timestamp>()
                .ok()
                .map(|t| t.as_millisecond())
        };
        crate::store::batches::ApiState {
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

/// nightshift collects whole messages, so a `stream: true` in the job file is dropped before
/// sending (the results format holds complete messages).
pub fn without_stream(params: &str) -> String {
    if !params.contains("\"stream\"") {
        return params.to_owned();
    }
    match serde_json::from_str::<serde_json::Map<String, Value>>(params) {
        Ok(mut map) => {
            map.remove("stream");
            Value::Object(map).to_string()
        }
        Err(_) => params.to_owned(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    #[test]
    fn success_carries_usage_and_request_id() {
        let body = br#"{"id":"msg_1","type":"message","content":[],"usage":{"input_tokens":12,"output_tokens":7,"cache_creation_input_tokens":3}}"#;
        let out = classify(200, &headers(&[("request-id", "req_1")]), body, NOW);
        let Outcome::Succeeded {
            usage, request_id, ..
        } = out
        else {
            panic!("{out:?}")
        };
        assert_eq!(usage.input_tokens, 12);
        assert_eq!(usage.rate_limited_input(), 15);
        assert_eq!(request_id.as_deref(), Some("req_1"));
    }

    #[test]
    fn the_three_kinds_of_429_and_529() {
        let rl = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
        let out = classify(429, &headers(&[("retry-after", "7")]), rl, NOW);
        assert!(
            matches!(out, Outcome::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(7))
        );

        let cap = br#"{"type":"error","error":{"type":"rate_limit_error","message":"cap","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
        assert!(matches!(
            classify(429, &headers(&[]), cap, NOW),
            Outcome::Blocked { status: 429, .. }
        ));

        let own = br#"{"type":"error","error":{"type":"invalid_request_error","message":"You have reached your specified API usage limits. You will regain access on 2026-12-01"}}"#;
        assert!(matches!(
            classify(400, &headers(&[]), own, NOW),
            Outcome::Blocked { status: 400, .. }
        ));

        let over =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(matches!(
            classify(529, &headers(&[]), over, NOW),
            Outcome::Retryable {
                status: Some(529),
                ..
            }
        ));
    }

    #[test]
    fn other_4xx_are_fatal_with_the_api_body() {
        let bad = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"},"request_id":"req_9"}"#;
        let Outcome::Fatal { status, body, .. } = classify(400, &headers(&[]), bad, NOW) else {
            panic!()
        };
        assert_eq!(status, 400);
        assert_eq!(body["error"]["message"], "max_tokens: too big");
        assert!(matches!(
            classify(500, &headers(&[]), b"<html>", NOW),
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            classify(404, &headers(&[]), b"<html>not found</html>", NOW),
            Outcome::Fatal { status: 404, .. }
        ));
        assert!(matches!(
            classify(400, &headers(&[("x-should-retry", "true")]), b"{}", NOW),
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            classify(503, &headers(&[("x-should-retry", "false")]), b"{}", NOW),
            Outcome::Fatal { .. }
        ));
    }

    #[test]
    fn rate_limit_headers_parse_and_survive_garbage() {
        let h = headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "1970-01-01T00:00:02Z"),
            ("anthropic-ratelimit-input-tokens-limit", "30000"),
            ("anthropic-ratelimit-input-tokens-remaining", "-5"),
            ("anthropic-ratelimit-input-tokens-reset", "soon"),
            (
                "anthropic-ratelimit-output-tokens-limit",
                "99999999999999999999",
            ),
            ("anthropic-ratelimit-output-tokens-remaining", "8000"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "1969-12-31T23:59:00Z",
            ),
        ]);
        let r = RateLimitHeaders::parse(&h, NOW);
        assert_eq!(
            r.dims[0],
            DimHeaders {
                limit: Some(50),
                remaining: Some(49),
                reset_in: Some(2.0)
            }
        );
        assert_eq!(
            r.dims[1],
            DimHeaders {
                limit: Some(30000),
                remaining: None,
                reset_in: None
            }
        );
        assert_eq!(
            r.dims[2],
            DimHeaders {
                limit: None,
                remaining: Some(8000),
                reset_in: Some(0.0)
            }
        );
        assert_eq!(
            RateLimitHeaders::parse(&headers(&[]), NOW),
            RateLimitHeaders::default()
        );
    }

    #[test]
    fn a_garbled_200_is_an_unknown_outcome() {
        assert!(matches!(
            classify(200, &headers(&[]), b"{\"ty", NOW),
            Outcome::Unknown { .. }
        ));
    }

    #[test]
    fn retry_after_forms() {
        let at = |pairs: &[(&'static str, &str)]| parse_retry_after(&headers(pairs), NOW);
        assert_eq!(at(&[("retry-after", "3")]), Some(Duration::from_secs(3)));
        assert_eq!(
            at(&[("retry-after", "0.5")]),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            at(&[("retry-after-ms", "250"), ("retry-after", "9")]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(at(&[("retry-after", "-1")]), None);
        assert_eq!(at(&[("retry-after", "soon")]), None);
        assert_eq!(at(&[("retry-after", "1e300")]), None);
        assert_eq!(at(&[("retry-after", "NaN")]), None);
        assert_eq!(
            parse_retry_after(
                &headers(&[("retry-after", "Thu, 01 Jan 1970 00:00:10 GMT")]),
                NOW
            ),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn stream_is_dropped_before_sending() {
        let p = r#"{"model":"m","stream":true,"max_tokens":5}"#;
        let v: Value = serde_json::from_str(&without_stream(p)).expect("json");
        assert!(v.get("stream").is_none());
        assert_eq!(v["max_tokens"], 5);
        assert_eq!(without_stream(r#"{"model":"m"}"#), r#"{"model":"m"}"#);
    }

    #[test]
    fn the_key_never_prints() {
        let key = ApiKey::new("sk-ant-secret-1234");
        assert_eq!(format!("{key:?}"), "ApiKey([redacted])");
        assert_eq!(key.fingerprint(), "…1234");
        assert_eq!(ApiKey::new("abcd").fingerprint(), "(short key)");
    }
}
