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
use super::messages::ApiVersion;
use super::orgs::Caller;
use super::reply::{ApiError, Reply, json_reply, reply, stamp_org};
use super::shared::Shared;
use super::{FakeConfig, FakeLimits, FakeStats, Faults, OrgStats};

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
    /// Binds `addr` (port 0 picks a free port) and serves in a spawned task. An
    /// `InvalidInput` error when [`FakeConfig::orgs`] gives an organization id twice, a
    /// workspace id twice in one organization (its default one included), a key twice anywhere,
    /// or an empty key or workspace id.
    pub async fn start(config: FakeConfig, addr: SocketAddr) -> std::io::Result<FakeApi> {
        let shared = Shared::new(config, String::new())
            .map_err(|why| std::io::Error::new(std::io::ErrorKind::InvalidInput, why))?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        let shared = Arc::new(Shared {
            base_url: format!("http://{host}:{}", addr.port()),
            ..shared
        });
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

    /// The current fake-wide Messages rate limits (`None`: no limits).
    pub fn limits(&self) -> Option<FakeLimits> {
        self.shared.lock().limits
    }

    /// Replaces the fake-wide rate limits from now on, for every model class of every
    /// organization without limits of its own.
    ///
    /// Existing buckets keep their level, clamped to the new capacity (never raised), and
    /// refill at the new rate; the `anthropic-ratelimit-*-limit` headers of later answers
    /// report the new limits. `None` removes the limits (and the batch RPM with them, as in
    /// [`FakeConfig::limits`]); limits set again later start from full buckets.
    pub fn set_limits(&self, limits: Option<FakeLimits>) {
        let mut state = self.shared.lock();
        let now = Instant::now();
        state.limits = limits;
        for org in state.orgs.iter_mut().filter(|o| o.own_limits.is_none()) {
            org.apply_limits(limits, self.shared.rates, now);
        }
    }

    /// The limits in force for organization `org_id`: its own, else the fake-wide ones.
    /// Panics if the fake has no such organization.
    pub fn org_limits(&self, org_id: &str) -> Option<FakeLimits> {
        let org = self.shared.org_index(org_id);
        self.shared.lock().orgs[org].limits()
    }

    /// Gives organization `org_id` limits of its own from now on, as [`FakeApi::set_limits`]
    /// does for the fake-wide ones; `None`: back to the fake-wide limits. Panics if the fake
    /// has no such organization.
    pub fn set_org_limits(&self, org_id: &str, limits: Option<FakeLimits>) {
        let org = self.shared.org_index(org_id);
        let mut state = self.shared.lock();
        let in_force = limits.or(state.limits);
        let org = &mut state.orgs[org];
        org.own_limits = limits;
        org.apply_limits(in_force, self.shared.rates, Instant::now());
    }

    /// The own limits of workspace `workspace_id` of organization `org_id` (`None`: it has
    /// none, and only the organization's apply). Panics if the fake has no such workspace.
    pub fn workspace_limits(&self, org_id: &str, workspace_id: &str) -> Option<FakeLimits> {
        let caller = self.shared.workspace(org_id, workspace_id);
        let state = self.shared.lock();
        state.orgs[caller.org].workspaces[caller.workspace]
            .buckets
            .limits()
    }

    /// Gives workspace `workspace_id` of organization `org_id` limits of its own from now on,
    /// inside the organization's (see [`super::FakeWorkspace::limits`]); `None`: none, only
    /// the organization's. Its existing buckets keep their level, clamped to the new capacity,
    /// as with [`FakeApi::set_limits`]. Panics if the fake has no such workspace, or if it is
    /// the organization's default workspace, whose limits are the organization's
    /// ([`FakeApi::set_org_limits`]).
    pub fn set_workspace_limits(
        &self,
        org_id: &str,
        workspace_id: &str,
        limits: Option<FakeLimits>,
    ) {
        let caller = self.shared.workspace(org_id, workspace_id);
        assert!(
            caller.workspace != 0,
            "{workspace_id:?} is the default workspace of {org_id:?}: its limits are the organization's"
        );
        let mut state = self.shared.lock();
        state.orgs[caller.org].workspaces[caller.workspace]
            .buckets
            .set_limits(limits, Instant::now());
    }

    /// While `reached`, the Messages calls and batch creates of organization `org_id` get the
    /// tier spend-cap 429: `rate_limit_error` with `error.details.error_code =
    /// "enforced_spend_limit_reached"` and no `retry-after`, before any bucket is charged. Its
    /// other calls (count_tokens, reading batches) go on. Panics if the fake has no such
    /// organization.
    pub fn set_spend_cap_reached(&self, org_id: &str, reached: bool) {
        let org = self.shared.org_index(org_id);
        self.shared.lock().orgs[org].spend_cap_reached = reached;
    }

    /// From now on `key` is a 401 `authentication_error` ("invalid x-api-key"); the other keys
    /// of its organization keep working.
    pub fn revoke_key(&self, key: &str) {
        self.shared.lock().revoked.insert(key.to_string());
    }

    /// A snapshot of organization `org_id`'s counters (also those of the implicit organization,
    /// [`super::ORGANIZATION_ID`], which [`FakeStats::orgs`] leaves out). Panics if the fake has
    /// no such organization.
    pub fn org_stats(&self, org_id: &str) -> OrgStats {
        let org = self.shared.org_index(org_id);
        self.shared.lock().orgs[org].stats.clone()
    }

    /// A snapshot of the counters of the calls through the keys of workspace `workspace_id` of
    /// organization `org_id` (its default workspace: through the organization's own keys); the
    /// organization's counters ([`FakeApi::org_stats`]) count them too. Panics if the fake has
    /// no such workspace.
    pub fn workspace_stats(&self, org_id: &str, workspace_id: &str) -> OrgStats {
        let caller = self.shared.workspace(org_id, workspace_id);
        let state = self.shared.lock();
        state.orgs[caller.org].workspaces[caller.workspace]
            .stats
            .clone()
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

/// Answers one request, adds its organization's headers and counts error answers.
pub(super) async fn handle(
    shared: Arc<Shared>,
    kill: CancellationToken,
    request: Request<Incoming>,
) -> Reply {
    let request_id = batches::random_id(&mut shared.lock().ids, "req_");
    let (caller, result) = match gate(&shared, &request) {
        Ok(Gate::Stats) => {
            let stats = serde_json::to_value(shared.stats_snapshot()).unwrap_or_default();
            (None, Ok(json_reply(StatusCode::OK, &request_id, &stats)))
        }
        Ok(Gate::Api(caller)) => {
            let result = route(&shared, &kill, request, &request_id, caller).await;
            (Some(caller), result)
        }
        Err(error) => (None, Err(error)),
    };
    let mut answer = match result {
        Ok(answer) => answer,
        Err(error) => error.into_reply(&request_id),
    };
    if let Some(named) = caller.or(shared.directory.fallback()) {
        let (org_id, workspace_id) = shared.directory.names(named);
        stamp_org(&mut answer, org_id, workspace_id);
    }
    count_answer(&shared, answer.status(), caller);
    answer
}

/// Counts an error answer, in the organization's and workspace's counters too when its key
/// named them.
fn count_answer(shared: &Shared, status: StatusCode, caller: Option<Caller>) {
    if status.as_u16() < 400 {
        return;
    }
    let mut state = shared.lock();
    let stats = &mut state.stats;
    match status.as_u16() {
        400 | 401 | 404 | 413 => stats.invalid_4xx += 1,
        429 => stats.rate_limited_429 += 1,
        500 => stats.server_error_500 += 1,
        529 => stats.overloaded_529 += 1,
        _ => {}
    }
    if let Some(caller) = caller
        && status == StatusCode::TOO_MANY_REQUESTS
    {
        for stats in state.caller_stats(caller) {
            stats.rate_limited_429 += 1;
        }
    }
}

/// What a request is, before its route: the fake's own counters, or an API call through a key
/// of an organization's workspace.
pub(super) enum Gate {
    Stats,
    Api(Caller),
}

/// `GET /_fake/stats` needs no key; other paths outside `/v1/` are a 404; any other request
/// needs a key of an organization.
pub(super) fn gate(shared: &Shared, request: &Request<Incoming>) -> Result<Gate, ApiError> {
    let method = request.method();
    let path = request.uri().path();
    if method == Method::GET && path == "/_fake/stats" {
        return Ok(Gate::Stats);
    }
    if !path.starts_with("/v1/") {
        return Err(not_found_path(method, path));
    }
    check_api_key(shared, request.headers()).map(Gate::Api)
}

/// Routes an API call through a key of `caller`.
pub(super) async fn route(
    shared: &Arc<Shared>,
    kill: &CancellationToken,
    request: Request<Incoming>,
    request_id: &str,
    caller: Caller,
) -> Result<Reply, ApiError> {
    let org = caller.org;
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let version = check_version(request.headers())?;
    let spends = method == Method::POST
        && (path == "/v1/messages" || path.trim_end_matches('/') == "/v1/messages/batches");
    if spends && shared.lock().orgs[org].spend_cap_reached {
        return Err(ApiError::spend_cap(Timestamp::now()));
    }

    if method == Method::POST && path == "/v1/messages" {
        return messages(shared, kill, request, request_id, version, caller).await;
    }
    if method == Method::POST && path == "/v1/messages/count_tokens" {
        return count_tokens(shared, request, request_id, caller).await;
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
    charge_batch_rpm(shared, org)?;
    let base_url = shared.base_url.as_str();
    match (&method, segments.as_slice()) {
        (&Method::POST, []) => create_batch(shared, request, request_id, version, caller).await,
        (&Method::GET, []) => {
            let query = request.uri().query().unwrap_or("");
            let (limit, after_id, before_id) = parse_list_query(query)?;
            let page = with_batches(shared, org, |store| {
                Ok(store.list(limit, after_id.as_deref(), before_id.as_deref(), base_url))
            })?;
            Ok(json_reply(StatusCode::OK, request_id, &page))
        }
        (&Method::GET, [id]) => {
            let batch = with_batches(shared, org, |store| store.get(id, base_url))?;
            Ok(json_reply(StatusCode::OK, request_id, &batch))
        }
        (&Method::DELETE, [id]) => {
            let deleted = with_batches(shared, org, |store| store.delete(id))?;
            Ok(json_reply(StatusCode::OK, request_id, &deleted))
        }
        (&Method::POST, [id, "cancel"]) => {
            let wall_now = Timestamp::now();
            let batch = with_batches(shared, org, |store| store.cancel(id, wall_now, base_url))?;
            Ok(json_reply(StatusCode::OK, request_id, &batch))
        }
        (&Method::GET, [id, "results"]) => {
            let jsonl = with_batches(shared, org, |store| store.results(id))?;
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

/// Runs `f` on organization `org`'s batch store after resolving its batches that are due
/// (another organization's batch is not in it: a 404).
pub(super) fn with_batches<T>(
    shared: &Shared,
    org: usize,
    f: impl FnOnce(&mut BatchStore) -> Result<T, BatchError>,
) -> Result<T, ApiError> {
    let mut state = shared.lock();
    state.refresh_batches(org, Instant::now());
    Ok(f(&mut state.orgs[org].batches)?)
}

pub(super) fn not_found_path(method: &Method, path: &str) -> ApiError {
    ApiError::not_found(format!("Not Found: {method} {path}"))
}

/// The organization and workspace of the key in `x-api-key` (preferred) or `Authorization:
/// Bearer <key>`.
pub(super) fn check_api_key(shared: &Shared, headers: &HeaderMap) -> Result<Caller, ApiError> {
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
    let caller = shared.directory.caller_of(key, &shared.lock().revoked);
    caller.ok_or_else(|| unauthorized("invalid x-api-key"))
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
