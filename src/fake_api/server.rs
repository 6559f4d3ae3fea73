//! The HTTP side of the fake: its handle ([`FakeApi`]), the accept loop, routing and auth. The
//! endpoints are in `endpoints`, the answers in `reply`, the state they share in `shared`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::batches::{self, BatchError, BatchStore};
use super::endpoints::{charge_batch_rpm, count_tokens, create_batch, messages, parse_list_query};
use super::limits::TokenBucket;
use super::messages::ApiVersion;
use super::reply::{ApiError, Reply, json_reply, reply};
use super::shared::Shared;
use super::{FakeConfig, FakeLimits, FakeStats, Faults};

/// A running fake API server.
pub struct FakeApi {
    pub(super) addr: SocketAddr,
    pub(super) shared: Arc<Shared>,
    pub(super) shutdown: CancellationToken,
    /// Whether it listens (see [`FakeApi::set_reachable`]).
    pub(super) reachable: watch::Sender<bool>,
    pub(super) task: Option<JoinHandle<()>>,
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
        let (reachable, reachable_rx) = watch::channel(true);
        let task = tokio::spawn(accept_loop(
            listener,
            addr,
            shared.clone(),
            shutdown.clone(),
            reachable_rx,
        ));
        tracing::debug!(%addr, "fake Claude API listening");
        Ok(FakeApi {
            addr,
            shared,
            shutdown,
            reachable,
            task: Some(task),
        })
    }

    /// An outage: `false` closes the listening socket and every open connection, so calls are
    /// refused at connect (as when the API's host cannot be reached); `true` listens again on the
    /// same address.
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.send_replace(reachable);
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

    /// The body of every Messages call so far, as received (only with
    /// [`super::FakeConfig::keep_bodies`]).
    pub fn message_bodies(&self) -> Vec<bytes::Bytes> {
        self.shared.lock().message_bodies.clone()
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

pub(super) async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    mut reachable: watch::Receiver<bool>,
) {
    let connections = TaskTracker::new();
    let mut listener = Some(listener);
    // Cancelled at an outage: the connections open then are cut.
    let mut cut = shutdown.child_token();
    loop {
        let Some(open) = &listener else {
            // Down: wait to be reachable again, then listen on the same address.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = reachable.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if *reachable.borrow_and_update() {
                        // The port may linger a moment after the outage: try until it binds.
                        while listener.is_none() && !shutdown.is_cancelled() {
                            match TcpListener::bind(addr).await {
                                Ok(bound) => listener = Some(bound),
                                Err(error) => {
                                    tracing::debug!(%error, "the fake API cannot listen again yet");
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            }
                        }
                    }
                }
            }
            continue;
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = reachable.changed() => {
                if changed.is_err() {
                    break;
                }
                if !*reachable.borrow_and_update() {
                    listener = None;
                    cut.cancel();
                    cut = shutdown.child_token();
                }
                continue;
            }
            accepted = open.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // Usually out of file descriptors: back off briefly.
                    tracing::debug!(%error, "fake API accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        connections.spawn(serve_connection(stream, shared.clone(), cut.clone()));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one keep-alive connection until the client closes it, a handler asks to drop it
/// (the `kill` token), or the server shuts down.
pub(super) async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
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
pub(super) async fn handle(
    shared: Arc<Shared>,
    kill: CancellationToken,
    request: Request<Incoming>,
) -> Reply {
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

pub(super) async fn route(
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
            state
                .batches
                .refresh(Instant::now(), &mut state.stats, &mut state.cache);
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
pub(super) fn with_batches<T>(
    shared: &Shared,
    f: impl FnOnce(&mut BatchStore) -> Result<T, BatchError>,
) -> Result<T, ApiError> {
    let mut state = shared.lock();
    let state = &mut *state;
    state
        .batches
        .refresh(Instant::now(), &mut state.stats, &mut state.cache);
    Ok(f(&mut state.batches)?)
}

pub(super) fn not_found_path(method: &Method, path: &str) -> ApiError {
    ApiError::not_found(format!("Not Found: {method} {path}"))
}

/// `x-api-key` (preferred) or `Authorization: Bearer <key>`.
pub(super) fn check_api_key(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
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

pub(super) fn check_version(headers: &HeaderMap) -> Result<ApiVersion, ApiError> {
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
