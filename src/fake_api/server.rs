//! The HTTP side of the fake: accept loop, routing, auth, and turning the pure logic of
//! `messages`, `limits` and `batches` into answers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::batches::{self, BatchError, BatchStore, ResolveSettings};
use super::limits::{ClassLimits, Dimension, TokenBucket, retry_after_secs};
use super::messages::{
    ApiVersion, ParamsError, hash_bytes, message_json, plan_generation, validate_count_params,
    validate_params,
};
use super::{BatchSettings, FakeConfig, FakeLimits, FakeStats, Faults, OtpmRule};

/// Messages body limit (32 MB).
const MESSAGES_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Batch create body limit (256 MB).
const BATCH_MAX_BYTES: usize = 256 * 1024 * 1024;
/// Every answer's `anthropic-organization-id`.
const ORGANIZATION_ID: &str = "6d1f2c3a-8b4e-4f5a-9c7d-0e1f2a3b4c5d";

type Reply = Response<Full<Bytes>>;

/// A running fake API server.
pub struct FakeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl FakeApi {
    /// Binds `addr` (port 0 picks a free port) and serves in a spawned task.
    pub async fn start(config: FakeConfig, addr: SocketAddr) -> std::io::Result<FakeApi> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        let base_url = format!("http://{host}:{}", addr.port());
        let shared = Arc::new(Shared::new(config, base_url));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), shutdown.clone()));
        tracing::debug!(%addr, "fake Claude API listening");
        Ok(FakeApi {
            addr,
            shared,
            shutdown,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// A snapshot of the counters (batches due to end are resolved first).
    pub fn stats(&self) -> FakeStats {
        self.shared.stats_snapshot()
    }

    /// The current Messages rate limits (`None`: no limits).
    pub fn limits(&self) -> Option<FakeLimits> {
        self.shared.lock().limits
    }

    /// Replaces the rate limits from now on, for every model class.
    ///
    /// Existing buckets keep their level, clamped to the new capacity (never raised), and
    /// refill at the new rate; the `anthropic-ratelimit-*-limit` headers of later answers
    /// report the new limits. `None` removes the limits (and the batch RPM with them, as in
    /// [`FakeConfig::limits`]); limits set again later start from full buckets.
    pub fn set_limits(&self, limits: Option<FakeLimits>) {
        let mut state = self.shared.lock();
        let state = &mut *state;
        let now = Instant::now();
        state.limits = limits;
        match limits {
            None => {
                state.classes.clear();
                state.batch_rpm = None;
                state.count_tokens_rpm = None;
            }
            Some(limits) => {
                for class in state.classes.values_mut() {
                    class.set_limits(&limits, now);
                }
                if state.count_tokens_rpm.is_none() {
                    state.count_tokens_rpm = Some(TokenBucket::new(
                        self.shared.count_tokens_rpm,
                        limits.burst_seconds,
                        now,
                    ));
                }
                let batch_rpm = self.shared.batch.rpm;
                match state.batch_rpm.as_mut() {
                    Some(bucket) => bucket.set_limit(batch_rpm, limits.burst_seconds, now),
                    None => {
                        state.batch_rpm =
                            Some(TokenBucket::new(batch_rpm, limits.burst_seconds, now));
                    }
                }
            }
        }
    }

    /// Replaces the injected faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }

    /// Stops accepting, closes open connections and waits for the server task.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::warn!(%error, "fake API server task failed");
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        // A fake dropped without `shutdown` still stops serving.
        self.shutdown.cancel();
    }
}

/// Configuration plus the mutable state behind one lock.
struct Shared {
    api_key: Option<String>,
    latency: Duration,
    otpm_rule: OtpmRule,
    seed: u64,
    batch: BatchSettings,
    count_tokens_rpm: u64,
    base_url: String,
    state: Mutex<State>,
}

struct State {
    /// Messages rate limits per model class (changed by [`FakeApi::set_limits`]).
    limits: Option<FakeLimits>,
    faults: Faults,
    stats: FakeStats,
    /// Request and message ids.
    ids: fastrand::Rng,
    /// Fault, slow and drop draws.
    draws: fastrand::Rng,
    /// Messages buckets per model class, created on first use.
    classes: HashMap<&'static str, ClassLimits>,
    /// Shared RPM of the batch endpoints (only with limits).
    batch_rpm: Option<TokenBucket>,
    /// RPM of `count_tokens` (only with limits).
    count_tokens_rpm: Option<TokenBucket>,
    batches: BatchStore,
}

impl Shared {
    fn new(config: FakeConfig, base_url: String) -> Shared {
        let now = Instant::now();
        let batch_rpm = config
            .limits
            .map(|l| TokenBucket::new(config.batch.rpm, l.burst_seconds, now));
        let count_tokens_rpm = config
            .limits
            .map(|l| TokenBucket::new(config.count_tokens_rpm, l.burst_seconds, now));
        let batches = BatchStore::new(ResolveSettings {
            processing_time: config.batch.processing_time,
            expire_fraction: config.batch.expire_fraction,
            error_fraction: config.batch.error_fraction,
            seed: config.seed,
        });
        Shared {
            api_key: config.api_key,
            latency: config.latency,
            otpm_rule: config.otpm_rule,
            seed: config.seed,
            batch: config.batch,
            count_tokens_rpm: config.count_tokens_rpm,
            base_url,
            state: Mutex::new(State {
                limits: config.limits,
                faults: config.faults,
                stats: FakeStats::default(),
                ids: fastrand::Rng::with_seed(config.seed),
                draws: fastrand::Rng::with_seed(config.seed ^ 0x5eed_fa17_0000_0002),
                classes: HashMap::new(),
                batch_rpm,
                count_tokens_rpm,
                batches,
            }),
        }
    }

    /// Locks the state. A panic while holding the lock cannot leave it inconsistent in a way
    /// that matters for a test fake, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    fn stats_snapshot(&self) -> FakeStats {
        let mut state = self.lock();
        let state = &mut *state;
        state.batches.refresh(Instant::now(), &mut state.stats);
        state.stats.clone()
    }
}

/// An error answer, turned into a [`Reply`] once the request id is known.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    headers: Vec<(&'static str, String)>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    fn rate_limited(message: impl Into<String>, retry_after: u64) -> ApiError {
        let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message);
        error.headers.push(("retry-after", retry_after.to_string()));
        error
    }

    fn into_reply(self, request_id: &str) -> Reply {
        let body = serde_json::json!({
            "type": "error",
            "error": {"type": self.kind, "message": self.message},
            "request_id": request_id,
        });
        reply(
            self.status,
            request_id,
            "application/json",
            Bytes::from(body.to_string()),
            &self.headers,
        )
    }
}

impl From<BatchError> for ApiError {
    fn from(error: BatchError) -> ApiError {
        match error {
            BatchError::NotFound(message) => ApiError::not_found(message),
            BatchError::Invalid(message) => ApiError::invalid(message),
        }
    }
}

fn reply(
    status: StatusCode,
    request_id: &str,
    content_type: &'static str,
    body: Bytes,
    extra_headers: &[(&'static str, String)],
) -> Reply {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        HeaderName::from_static("anthropic-organization-id"),
        HeaderValue::from_static(ORGANIZATION_ID),
    );
    insert_header(headers, "request-id", request_id);
    for (name, value) in extra_headers {
        insert_header(headers, name, value);
    }
    response
}

/// `name` must be a lowercase static header name.
fn insert_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

fn json_reply(status: StatusCode, request_id: &str, body: &Value) -> Reply {
    reply(
        status,
        request_id,
        "application/json",
        Bytes::from(body.to_string()),
        &[],
    )
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // Usually out of file descriptors: back off briefly.
                    tracing::debug!(%error, "fake API accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        connections.spawn(serve_connection(stream, shared.clone(), shutdown.clone()));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one keep-alive connection until the client closes it, a handler asks to drop it
/// (the `kill` token), or the server shuts down.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, shutdown: CancellationToken) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "set_nodelay failed");
    }
    let kill = CancellationToken::new();
    let service = {
        let kill = kill.clone();
        service_fn(move |request| {
            let shared = shared.clone();
            let kill = kill.clone();
            async move { Ok::<_, Infallible>(handle(shared, kill, request).await) }
        })
    };
    let connection = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => {
            if let Err(error) = result {
                tracing::debug!(%error, "fake API connection ended with an error");
            }
        }
        _ = kill.cancelled() => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Answers one request and counts error answers.
async fn handle(shared: Arc<Shared>, kill: CancellationToken, request: Request<Incoming>) -> Reply {
    let request_id = batches::random_id(&mut shared.lock().ids, "req_");
    let answer = match route(&shared, &kill, request, &request_id).await {
        Ok(answer) => answer,
        Err(error) => error.into_reply(&request_id),
    };
    let status = answer.status().as_u16();
    if status >= 400 {
        let mut state = shared.lock();
        let stats = &mut state.stats;
        match status {
            400 | 401 | 404 | 413 => stats.invalid_4xx += 1,
            429 => stats.rate_limited_429 += 1,
            500 => stats.server_error_500 += 1,
            529 => stats.overloaded_529 += 1,
            _ => {}
        }
    }
    answer
}

async fn route(
    shared: &Arc<Shared>,
    kill: &CancellationToken,
    request: Request<Incoming>,
    request_id: &str,
) -> Result<Reply, ApiError> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    if method == Method::GET && path == "/_fake/stats" {
        let stats = serde_json::to_value(shared.stats_snapshot()).unwrap_or_default();
        return Ok(json_reply(StatusCode::OK, request_id, &stats));
    }
    if !path.starts_with("/v1/") {
        return Err(not_found_path(&method, &path));
    }
    check_api_key(shared, request.headers())?;
    let version = check_version(request.headers())?;

    if method == Method::POST && path == "/v1/messages" {
        return messages(shared, kill, request, request_id, version).await;
    }
    if method == Method::POST && path == "/v1/messages/count_tokens" {
        return count_tokens(shared, request, request_id).await;
    }
    let Some(rest) = path.strip_prefix("/v1/messages/batches") else {
        return Err(not_found_path(&method, &path));
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let known = matches!(
        (&method, segments.as_slice()),
        (&Method::POST | &Method::GET, [])
            | (&Method::GET | &Method::DELETE, [_])
            | (&Method::POST, [_, "cancel"])
            | (&Method::GET, [_, "results"])
    );
    if !known {
        return Err(not_found_path(&method, &path));
    }
    charge_batch_rpm(shared)?;
    let base_url = shared.base_url.as_str();
    match (&method, segments.as_slice()) {
        (&Method::POST, []) => create_batch(shared, request, request_id, version).await,
        (&Method::GET, []) => {
            let query = request.uri().query().unwrap_or("");
            let (limit, after_id, before_id) = parse_list_query(query)?;
            let mut state = shared.lock();
            let state = &mut *state;
            state.batches.refresh(Instant::now(), &mut state.stats);
            let page =
                state
                    .batches
                    .list(limit, after_id.as_deref(), before_id.as_deref(), base_url);
            Ok(json_reply(StatusCode::OK, request_id, &page))
        }
        (&Method::GET, [id]) => {
            let batch = with_batches(shared, |store| store.get(id, base_url))?;
            Ok(json_reply(StatusCode::OK, request_id, &batch))
        }
        (&Method::DELETE, [id]) => {
            let deleted = with_batches(shared, |store| store.delete(id))?;
            Ok(json_reply(StatusCode::OK, request_id, &deleted))
        }
        (&Method::POST, [id, "cancel"]) => {
            let wall_now = Timestamp::now();
            let batch = with_batches(shared, |store| store.cancel(id, wall_now, base_url))?;
            Ok(json_reply(StatusCode::OK, request_id, &batch))
        }
        (&Method::GET, [id, "results"]) => {
            let jsonl = with_batches(shared, |store| store.results(id))?;
            Ok(reply(
                StatusCode::OK,
                request_id,
                "application/x-jsonl",
                Bytes::from(jsonl),
                &[],
            ))
        }
        _ => Err(not_found_path(&method, &path)),
    }
}

/// Runs `f` on the batch store after resolving batches that are due.
fn with_batches<T>(
    shared: &Shared,
    f: impl FnOnce(&mut BatchStore) -> Result<T, BatchError>,
) -> Result<T, ApiError> {
    let mut state = shared.lock();
    let state = &mut *state;
    state.batches.refresh(Instant::now(), &mut state.stats);
    Ok(f(&mut state.batches)?)
}

fn not_found_path(method: &Method, path: &str) -> ApiError {
    ApiError::not_found(format!("Not Found: {method} {path}"))
}

/// `x-api-key` (preferred) or `Authorization: Bearer <key>`.
fn check_api_key(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let from_x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let from_bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let key = from_x_api_key.or(from_bearer).map(str::trim).unwrap_or("");
    let unauthorized =
        |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", message);
    if key.is_empty() {
        return Err(unauthorized("x-api-key header is required"));
    }
    match &shared.api_key {
        Some(expected) if expected != key => Err(unauthorized("invalid x-api-key")),
        _ => Ok(()),
    }
}

fn check_version(headers: &HeaderMap) -> Result<ApiVersion, ApiError> {
    let Some(value) = headers.get("anthropic-version") else {
        return Err(ApiError::invalid("anthropic-version: header is required"));
    };
    let value = value.to_str().unwrap_or("");
    ApiVersion::parse(value).ok_or_else(|| {
        ApiError::invalid(format!(
            "anthropic-version: \"{value}\" is not a valid version"
        ))
    })
}

/// Reads the whole body, refusing more than `max` bytes with 413.
async fn read_body(request: Request<Incoming>, max: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("Request exceeds the maximum allowed number of bytes ({max})."),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(error) => Err(ApiError::invalid(format!(
            "could not read the body: {error}"
        ))),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|error| ApiError::invalid(format!("There was an error parsing the body: {error}")))
}

/// The Messages endpoint: validate, draw faults, admit, wait, answer.
async fn messages(
    shared: &Arc<Shared>,
    kill: &CancellationToken,
    request: Request<Incoming>,
    request_id: &str,
    version: ApiVersion,
) -> Result<Reply, ApiError> {
    let body = read_body(request, MESSAGES_MAX_BYTES).await?;
    let params = parse_json(&body)?;
    let valid = validate_params(&params, version).map_err(params_error)?;

    // Faults, then admission, under one lock.
    let (ticket, extra_latency, drop_connection) = {
        let mut state = shared.lock();
        let state = &mut *state;
        let now = Instant::now();
        if let Some(mut error) = draw_fault(&state.faults, &mut state.draws) {
            if error.status == StatusCode::TOO_MANY_REQUESTS
                && let Some(class) = class_limits(state, valid.class, now)
            {
                error.headers.extend(class.headers(now, Timestamp::now()));
            }
            return Err(error);
        }
        let slow = state.draws.f64() < state.faults.slow;
        let drop_connection = state.draws.f64() < state.faults.drop_after_processing;
        let extra_latency = if slow {
            state.faults.slow_latency
        } else {
            Duration::ZERO
        };
        let otpm_rule = shared.otpm_rule;
        let ticket = match class_limits(state, valid.class, now) {
            None => None,
            Some(class) => {
                match class.admit(valid.input_tokens, valid.max_tokens, otpm_rule, now) {
                    Ok(ticket) => Some(ticket),
                    Err(refusal) => {
                        let what = match refusal.dimension {
                            Dimension::Requests => "requests",
                            Dimension::InputTokens => "input tokens",
                            Dimension::OutputTokens => "output tokens",
                        };
                        let mut error = ApiError::rate_limited(
                            format!(
                                "This request would exceed your organization's rate limit of {} {what} per minute (model class {}). For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later.",
                                refusal.limit_per_minute, valid.class
                            ),
                            refusal.retry_after_secs,
                        );
                        error.headers.extend(class.headers(now, Timestamp::now()));
                        return Err(error);
                    }
                }
            }
        };
        (ticket, extra_latency, drop_connection)
    };

    let latency = shared.latency + extra_latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let hash = hash_bytes(shared.seed, &body);
    let generation = plan_generation(hash, valid.max_tokens);
    let (message_id, headers) = {
        let mut state = shared.lock();
        let state = &mut *state;
        let now = Instant::now();
        let mut headers = Vec::new();
        if let Some(ticket) = ticket
            && let Some(class) = class_limits(state, valid.class, now)
        {
            class.complete(ticket, generation.output_tokens, now);
            headers = class.headers(now, Timestamp::now());
        }
        state.stats.input_tokens += valid.input_tokens;
        state.stats.output_tokens += generation.output_tokens;
        if drop_connection {
            state.stats.messages_dropped += 1;
        } else {
            state.stats.messages_accepted += 1;
        }
        (batches::random_id(&mut state.ids, "msg_"), headers)
    };

    if drop_connection {
        // Processed and counted; now close the connection without answering.
        kill.cancel();
        std::future::pending::<()>().await;
    }

    let message = message_json(
        &message_id,
        &valid.model,
        valid.input_tokens,
        hash,
        generation,
        "standard",
    );
    Ok(reply(
        StatusCode::OK,
        request_id,
        "application/json",
        Bytes::from(message.to_string()),
        &headers,
    ))
}

/// The buckets of `class` (created full on first use), or `None` without limits.
fn class_limits<'a>(
    state: &'a mut State,
    class: &'static str,
    now: Instant,
) -> Option<&'a mut ClassLimits> {
    let limits = state.limits?;
    Some(
        state
            .classes
            .entry(class)
            .or_insert_with(|| ClassLimits::new(&limits, now)),
    )
}

/// One draw decides between 529, 500, injected 429 and no fault.
fn draw_fault(faults: &Faults, rng: &mut fastrand::Rng) -> Option<ApiError> {
    let draw = rng.f64();
    let mut threshold = faults.overloaded_529;
    if draw < threshold {
        return Some(ApiError::new(
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "overloaded_error",
            "Overloaded",
        ));
    }
    threshold += faults.server_error_500;
    if draw < threshold {
        return Some(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "Internal server error",
        ));
    }
    threshold += faults.rate_limited_429;
    if draw < threshold {
        return Some(ApiError::rate_limited(
            "Number of request tokens has exceeded your per-minute rate limit (injected by the fake)",
            1,
        ));
    }
    None
}

/// Takes one request from the batch endpoints' shared RPM bucket (when limits are on).
fn params_error(error: ParamsError) -> ApiError {
    let (status, kind) = error.status_and_type();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    ApiError::new(status, kind, error.message())
}

/// `POST /v1/messages/count_tokens`: the input-token count the Messages endpoint would bill,
/// under its own RPM.
async fn count_tokens(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    request_id: &str,
) -> Result<Reply, ApiError> {
    let body = read_body(request, MESSAGES_MAX_BYTES).await?;
    let params = parse_json(&body)?;
    let input_tokens = validate_count_params(&params).map_err(params_error)?;
    let mut state = shared.lock();
    if let Some(bucket) = state.count_tokens_rpm.as_mut() {
        let now = Instant::now();
        let wait = bucket.seconds_until(1.0, now);
        if wait > 0.0 {
            return Err(ApiError::rate_limited(
                format!(
                    "This request would exceed your organization's rate limit of {} requests per minute for token counting. Please try again later.",
                    bucket.limit_per_minute()
                ),
                retry_after_secs(wait),
            ));
        }
        bucket.take(1.0, now);
    }
    state.stats.count_tokens_calls += 1;
    Ok(json_reply(
        StatusCode::OK,
        request_id,
        &serde_json::json!({ "input_tokens": input_tokens }),
    ))
}

fn charge_batch_rpm(shared: &Shared) -> Result<(), ApiError> {
    let mut state = shared.lock();
    let Some(bucket) = state.batch_rpm.as_mut() else {
        return Ok(());
    };
    let now = Instant::now();
    let wait = bucket.seconds_until(1.0, now);
    if wait > 0.0 {
        return Err(ApiError::rate_limited(
            format!(
                "This request would exceed your organization's rate limit of {} requests per minute for the Message Batches API. Please try again later.",
                bucket.limit_per_minute()
            ),
            retry_after_secs(wait),
        ));
    }
    bucket.take(1.0, now);
    Ok(())
}

async fn create_batch(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    request_id: &str,
    version: ApiVersion,
) -> Result<Reply, ApiError> {
    let body = read_body(request, BATCH_MAX_BYTES).await?;
    let body = parse_json(&body)?;
    let requests = batches::parse_create_body(&body).map_err(ApiError::invalid)?;
    let count = requests.len() as u64;
    let batch = {
        let mut state = shared.lock();
        let state = &mut *state;
        let now = Instant::now();
        state.batches.refresh(now, &mut state.stats);
        if let Some(wait) = state.batches.queue_wait(count, shared.batch.queue_cap, now) {
            return Err(ApiError::rate_limited(
                format!(
                    "This batch would exceed your organization's limit of {} batch requests in the processing queue. Please try again later.",
                    shared.batch.queue_cap
                ),
                retry_after_secs(wait),
            ));
        }
        let batch =
            state
                .batches
                .create(requests, version, now, Timestamp::now(), &shared.base_url);
        state.stats.batches_created += 1;
        state.stats.batch_requests += count;
        batch
    };
    // Created: a client that dies while waiting here never learns the id (the crash tests).
    if !shared.batch.create_latency.is_zero() {
        tokio::time::sleep(shared.batch.create_latency).await;
    }
    Ok(json_reply(StatusCode::OK, request_id, &batch))
}

/// `limit` (1..=1000, default 20), `after_id`, `before_id`.
fn parse_list_query(query: &str) -> Result<(usize, Option<String>, Option<String>), ApiError> {
    let mut limit = 20;
    let mut after_id = None;
    let mut before_id = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => {
                limit = match value.parse::<usize>() {
                    Ok(n) if (1..=1000).contains(&n) => n,
                    _ => {
                        return Err(ApiError::invalid(
                            "limit: Input should be an integer between 1 and 1000",
                        ));
                    }
                }
            }
            "after_id" => after_id = Some(value.to_string()),
            "before_id" => before_id = Some(value.to_string()),
            _ => {}
        }
    }
    if after_id.is_some() && before_id.is_some() {
        return Err(ApiError::invalid(
            "after_id and before_id cannot be used together",
        ));
    }
    Ok((limit, after_id, before_id))
}
