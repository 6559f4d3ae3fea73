//! The fake's endpoints: Messages (validate, draw faults, admit, wait, answer), count_tokens and
//! the Message Batches create and list.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use super::Faults;
use super::batches::{self};
use super::cache::CacheUsage;
use super::limits::{ClassLimits, ClassReading, Dimension, admit_all, retry_after_secs};
use super::messages::{
    ApiVersion, ParamsError, hash_bytes, message_json, plan_generation, validate_count_params,
    validate_params,
};

use super::orgs::Caller;
use super::reply::{ApiError, Reply, json_reply, reply};
use super::shared::{BATCH_MAX_BYTES, MESSAGES_MAX_BYTES, Shared, State, read_body};

/// The Messages endpoint through a key of `caller`: validate, draw faults, admit (into its
/// organization's buckets and its workspace's own), wait, answer.
pub(super) async fn messages(
    shared: &Arc<Shared>,
    kill: &CancellationToken,
    request: Request<Incoming>,
    request_id: &str,
    version: ApiVersion,
    caller: Caller,
) -> Result<Reply, ApiError> {
    let body = read_body(request, MESSAGES_MAX_BYTES).await?;
    if shared.keep_bodies {
        shared.lock().message_bodies.push(body.clone());
    }
    let params = shared.parse_json(&body)?;
    let valid = validate_params(&params, version).map_err(params_error)?;

    // Faults, then admission, under one lock.
    let (ticket, extra_latency, drop_connection, cache) = {
        let mut state = shared.lock();
        let state = &mut *state;
        let now = Instant::now();
        if let Some(mut error) = draw_fault(&state.faults, &mut state.draws) {
            if error.status == StatusCode::TOO_MANY_REQUESTS && !error.from_gateway {
                let mut layers =
                    state.orgs[caller.org].class_layers(caller.workspace, valid.class, now);
                error
                    .headers
                    .extend(tightest_headers(&mut layers.buckets, now));
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
        let org = &mut state.orgs[caller.org];
        // ITPM is charged what is not read from the cache: its input and what it writes.
        let plan = org.cache.plan(&valid.model, &valid.layout, now);
        let charged = plan.usage.uncached + plan.usage.written();
        let mut layers = org.class_layers(caller.workspace, valid.class, now);
        let ticket = if layers.buckets.is_empty() {
            None
        } else {
            match admit_all(
                &mut layers.buckets,
                charged,
                valid.max_tokens,
                otpm_rule,
                now,
            ) {
                Ok(ticket) => Some(ticket),
                Err((layer, refusal)) => {
                    let what = match refusal.dimension {
                        Dimension::Requests => "requests",
                        Dimension::InputTokens => "input tokens",
                        Dimension::OutputTokens => "output tokens",
                    };
                    let whose = if Some(layer) == layers.workspace {
                        "workspace's"
                    } else {
                        "organization's"
                    };
                    let mut error = ApiError::rate_limited(
                        format!(
                            "This request would exceed your {whose} rate limit of {} {what} per minute (model class {}). For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later.",
                            refusal.limit_per_minute, valid.class
                        ),
                        refusal.retry_after_secs,
                    );
                    error
                        .headers
                        .extend(tightest_headers(&mut layers.buckets, now));
                    return Err(error);
                }
            }
        };
        let org = &mut state.orgs[caller.org];
        // What it writes is readable once its answer begins (after the latency).
        let begins_at = now + shared.latency + extra_latency;
        let cache = org.cache.commit(&plan, now, begins_at);
        (ticket, extra_latency, drop_connection, cache)
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
        let mut layers = state.orgs[caller.org].class_layers(caller.workspace, valid.class, now);
        if let Some(ticket) = ticket {
            for layer in layers.buckets.iter_mut() {
                layer.complete(ticket, generation.output_tokens, now);
            }
        }
        let headers = tightest_headers(&mut layers.buckets, now);
        count_message(
            state,
            caller,
            cache,
            generation.output_tokens,
            drop_connection,
        );
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
        cache,
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

/// The `anthropic-ratelimit-*` headers of a call under `layers` (an organization's buckets of a
/// model class, then its workspace's own): per dimension those of the bucket with the least
/// left (see [`ClassReading::tighter`]); none without limits.
fn tightest_headers(layers: &mut [&mut ClassLimits], now: Instant) -> Vec<(&'static str, String)> {
    let reading = layers
        .iter_mut()
        .map(|layer| layer.reading(now))
        .reduce(ClassReading::tighter);
    reading.map_or_else(Vec::new, |reading| reading.headers(Timestamp::now()))
}

/// Counts a processed Messages call through a key of `caller`, in its organization's counters,
/// its workspace's and the fake's.
fn count_message(
    state: &mut State,
    caller: Caller,
    cache: CacheUsage,
    output_tokens: u64,
    dropped: bool,
) {
    let stats = &mut state.stats;
    stats.input_tokens += cache.uncached;
    stats.output_tokens += output_tokens;
    stats.cache_read_input_tokens += cache.read;
    stats.cache_hit_calls += u64::from(cache.read > 0);
    stats.cache_write_5m_tokens += cache.write_5m;
    stats.cache_write_1h_tokens += cache.write_1h;
    if dropped {
        stats.messages_dropped += 1;
    } else {
        stats.messages_accepted += 1;
    }
    for own in state.caller_stats(caller) {
        own.input_tokens += cache.uncached;
        own.output_tokens += output_tokens;
        own.cache_read_input_tokens += cache.read;
        own.cache_write_5m_tokens += cache.write_5m;
        own.cache_write_1h_tokens += cache.write_1h;
        if dropped {
            own.messages_dropped += 1;
        } else {
            own.messages_accepted += 1;
        }
    }
}

/// One draw decides between 529, 500, injected 429, a gateway's 429 and no fault.
pub(super) fn draw_fault(faults: &Faults, rng: &mut fastrand::Rng) -> Option<ApiError> {
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
    threshold += faults.gateway_429;
    if draw < threshold {
        return Some(ApiError::gateway_quota());
    }
    None
}

/// The answer to a Messages body the API refuses.
pub(super) fn params_error(error: ParamsError) -> ApiError {
    let (status, kind) = error.status_and_type();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    ApiError::new(status, kind, error.message())
}

/// `POST /v1/messages/count_tokens`: the input-token count the Messages endpoint would bill,
/// under the own RPM for it of `caller`'s organization.
pub(super) async fn count_tokens(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    request_id: &str,
    caller: Caller,
) -> Result<Reply, ApiError> {
    let org = caller.org;
    let body = read_body(request, MESSAGES_MAX_BYTES).await?;
    let params = shared.parse_json(&body)?;
    let input_tokens = validate_count_params(&params).map_err(params_error)?;
    let mut state = shared.lock();
    if let Some(bucket) = state.orgs[org].count_tokens_rpm.as_mut() {
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
    for own in state.caller_stats(caller) {
        own.count_tokens_calls += 1;
    }
    Ok(json_reply(
        StatusCode::OK,
        request_id,
        &serde_json::json!({ "input_tokens": input_tokens }),
    ))
}

/// Takes one request from organization `org`'s RPM bucket of the batch endpoints (when limits
/// are on).
pub(super) fn charge_batch_rpm(shared: &Shared, org: usize) -> Result<(), ApiError> {
    let mut state = shared.lock();
    let Some(bucket) = state.orgs[org].batch_rpm.as_mut() else {
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

/// `POST /v1/messages/batches`: a batch of `caller`'s organization, under its queue cap.
pub(super) async fn create_batch(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    request_id: &str,
    version: ApiVersion,
    caller: Caller,
) -> Result<Reply, ApiError> {
    let org = caller.org;
    let body = read_body(request, BATCH_MAX_BYTES).await?;
    {
        let mut state = shared.lock();
        if !state.create_bodies.insert(hash_bytes(0, &body)) {
            state.stats.repeated_batch_creates += 1;
        }
    }
    let body = shared.parse_json(&body)?;
    let requests = batches::parse_create_body(&body).map_err(ApiError::invalid)?;
    let count = requests.len() as u64;
    let batch = {
        let mut state = shared.lock();
        let state = &mut *state;
        let now = Instant::now();
        state.refresh_batches(org, now);
        let store = &mut state.orgs[org].batches;
        if let Some(wait) = store.queue_wait(count, shared.batch.queue_cap, now) {
            return Err(ApiError::rate_limited(
                format!(
                    "This batch would exceed your organization's limit of {} batch requests in the processing queue. Please try again later.",
                    shared.batch.queue_cap
                ),
                retry_after_secs(wait),
            ));
        }
        let batch = store.create(requests, version, now, Timestamp::now(), &shared.base_url);
        state.stats.batches_created += 1;
        state.stats.batch_requests += count;
        for own in state.caller_stats(caller) {
            own.batches_created += 1;
            own.batch_requests += count;
        }
        batch
    };
    // Created: a client that dies while waiting here never learns the id (the crash tests).
    if !shared.batch.create_latency.is_zero() {
        tokio::time::sleep(shared.batch.create_latency).await;
    }
    Ok(json_reply(StatusCode::OK, request_id, &batch))
}

/// `limit` (1..=1000, default 20), `after_id`, `before_id`.
pub(super) fn parse_list_query(
    query: &str,
) -> Result<(usize, Option<String>, Option<String>), ApiError> {
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
