//! The real-time lane: takes ready items highest priority first, admits them under the quota and a
//! concurrency cap, marks them in flight (committed before anything is sent), sends, and records
//! each outcome in one transaction. What to do with an answer is decided by the pure [`decide`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::api::ApiClient;
use crate::config::{Live, RealtimeSettings};
use crate::model::answer::Outcome;
use crate::model::job::Priority;
use crate::model::results;
use crate::model::state::{ItemState, Lane};
use crate::policy::quota::{Answer, Quota, Request as QuotaRequest, Ticket};
use crate::policy::window::Gate;
use crate::store::budget::{Admission, Rules};
use crate::store::items::{self, AttemptRecord, Dispatch, ItemUpdate, Marked};
use crate::store::quota::ThrottleEvent;
use crate::store::{Store, now_ms};

/// How long the lane pauses when the account is blocked (spend cap, usage limit, key refused).
const BLOCKED_WAIT: Duration = Duration::from_secs(300);
/// Outside its window, `when_idle` work goes while the latest answers (this recent) left at least
/// this share of every limit: the org's quota is idle, no one else is using it.
const IDLE_FRESH: Duration = Duration::from_secs(30);
const IDLE_SHARE: f64 = 0.9;
/// With time windows configured, the lane looks at least this often (a window may open).
const WINDOW_LOOK: Duration = Duration::from_secs(1);

/// Everything the lane needs; cheap to clone into each call's task.
#[derive(Clone)]
pub struct RealtimeLane {
    pub store: Store,
    pub client: ApiClient,
    pub quota: Arc<Mutex<Quota>>,
    pub settings: RealtimeSettings,
    /// Poked when work may have become ready (intake, a finished call).
    pub wake: Arc<Notify>,
    /// Poked when a result line is waiting to be written.
    pub results_wake: Arc<Notify>,
    /// Poked when a budget sends items to the batch lane.
    pub batch_wake: Arc<Notify>,
    /// Set when the account is blocked (spend cap, usage limit, key refused): no calls until then.
    pub paused: Arc<Mutex<Option<Instant>>>,
    /// The key's fingerprint, for diagnosis (never the key).
    pub key_id: String,
    /// Budgets (checked as each call is marked in flight) and prices (charged as answers come in).
    pub rules: Live<Rules>,
    /// Calls by model and outcome, for the metrics endpoint.
    pub calls: Arc<crate::daemon::metrics::CallCounters>,
    /// When each class last sent a probe call for `when_idle` work.
    pub idle_probes: Arc<Mutex<std::collections::HashMap<String, Instant>>>,
}

impl RealtimeLane {
    /// Sends until `shutdown`; then stops admitting and waits up to `grace` for calls in flight.
    /// Calls still running after that are abandoned: their items stay in flight in the database
    /// and are sent again (recorded as unknown outcomes) at the next start.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        while !shutdown.is_cancelled() {
            let next = match self.dispatch_round(&permits, &tracker).await {
                Ok(next) => next,
                Err(e) => {
                    // A passing problem (a busy database, say) must not stop the lane: try again.
                    tracing::error!(
                        error = format!("{e:#}"),
                        "real-time dispatch failed; trying again in a second"
                    );
                    Some(Duration::from_secs(1))
                }
            };
            let sleep = next.unwrap_or(Duration::from_secs(1));
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        tracker.close();
        let in_flight = self.settings.concurrency - permits.available_permits();
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                grace_secs = grace.as_secs(),
                "waiting for calls in flight"
            );
        }
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                "calls still in flight after the grace period; they will be sent again at the next start"
            );
        }
        Ok(())
    }

    /// Admits what the quota and the free permits allow. Returns how long until it is worth looking
    /// again when nothing more can go now (None: when woken).
    async fn dispatch_round(
        &self,
        permits: &Arc<Semaphore>,
        tracker: &TaskTracker,
    ) -> anyhow::Result<Option<Duration>> {
        let free = permits.available_permits();
        if free == 0 {
            return Ok(None);
        }
        if let Some(until) = self.paused_until() {
            return Ok(Some(until.saturating_duration_since(Instant::now())));
        }
        let limit = (free * 4).clamp(64, 2048) as i64;
        let rules = self.rules.get();
        let wall = jiff::Timestamp::now();
        let mut closed: Vec<i64> = Priority::ALL
            .into_iter()
            .filter(|p| rules.windows.gate(*p, wall) == Gate::Closed)
            .map(Priority::rank)
            .collect();
        let mut admitted: Vec<(i64, Ticket, OwnedSemaphorePermit)> = Vec::new();
        // Models the quota holds back are left out of the next look, so they cannot starve others.
        let mut held: Vec<String> = Vec::new();
        let mut next_try: Option<Instant> = None;
        for _ in 0..8 {
            let now = now_ms();
            let (skip, skip_ranks) = (held.clone(), closed.clone());
            let found = self
                .store
                .call(move |c| {
                    // Items a budget parked until now are ready again.
                    crate::store::budget::unpark_due(c, now)?;
                    items::ready_realtime(c, now, limit, &skip, &skip_ranks)
                })
                .await;
            let ready = match found {
                Ok(ready) => ready,
                Err(e) if admitted.is_empty() => return Err(e.into()),
                // Send what was admitted; look again next round.
                Err(_) => break,
            };
            if ready.is_empty() {
                if admitted.is_empty() && held.is_empty() {
                    let next = self
                        .store
                        .call(move |c| items::next_ready_at(c, now))
                        .await?
                        .map(|at| Duration::from_millis((at - now).max(1) as u64));
                    // A window may open before then: look again within a second.
                    if !rules.windows.0.is_empty() {
                        return Ok(Some(next.map_or(WINDOW_LOOK, |n| n.min(WINDOW_LOOK))));
                    }
                    return Ok(next);
                }
                break;
            }
            let (held_before, closed_before) = (held.len(), closed.len());
            {
                let mut quota = self.quota.lock().expect("quota lock");
                let now = Instant::now();
                for item in &ready {
                    if held.contains(&item.model) {
                        continue;
                    }
                    let priority = Priority::from_rank(item.priority);
                    if closed.contains(&item.priority) {
                        continue;
                    }
                    if rules.windows.gate(priority, wall) == Gate::IfIdle
                        && !self.quota_idle(&mut quota, &item.model, now)
                    {
                        // Leave the class out of the next look, so it cannot crowd out the
                        // classes behind it.
                        closed.push(item.priority);
                        continue;
                    }
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        break;
                    };
                    let request = QuotaRequest {
                        model: &item.model,
                        priority,
                        input_estimate: item.input_estimate,
                        max_tokens: item.max_tokens,
                    };
                    match quota.try_admit(&request, now) {
                        Ok(ticket) => admitted.push((item.id, ticket, permit)),
                        Err(at) => {
                            held.push(item.model.clone());
                            next_try = Some(next_try.map_or(at, |t: Instant| t.min(at)));
                        }
                    }
                }
            }
            // Look again only if a model or class was newly held back and permits are left.
            let newly_held = held.len() > held_before || closed.len() > closed_before;
            if !newly_held || permits.available_permits() == 0 {
                break;
            }
        }
        if admitted.is_empty() {
            return Ok(Some(next_try.map_or(Duration::from_secs(1), |at| {
                at.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1))
            })));
        }

        let sends: Vec<(i64, (i64, i64))> = admitted
            .iter()
            .map(|(id, t, _)| (*id, (t.concurrency as i64, t.reserved[1] as i64)))
            .collect();
        // The same rules as the admission above: a reload mid-round applies from the next one.
        let rules = rules.clone();
        let marked = self
            .store
            .call(move |c| {
                let now = now_ms();
                let mut out = Vec::with_capacity(sends.len());
                for (id, sent_with) in sends {
                    out.push(items::mark_in_flight(
                        c,
                        id,
                        Lane::Realtime,
                        sent_with,
                        &rules,
                        now,
                    )?);
                }
                Ok(out)
            })
            .await;
        let dispatches = match marked {
            Ok(dispatches) => dispatches,
            Err(e) => {
                // Nothing was sent: give every admitted call's quota back before giving up.
                let mut quota = self.quota.lock().expect("quota lock");
                for (_, ticket, _) in &admitted {
                    quota.settle(
                        ticket,
                        Answer::Refused,
                        None,
                        &Default::default(),
                        Instant::now(),
                    );
                }
                return Err(e.into());
            }
        };
        for ((_, ticket, permit), marked) in admitted.into_iter().zip(dispatches) {
            let dispatch = match marked {
                Marked::InFlight(dispatch) => Some(dispatch),
                Marked::NotPending => None,
                Marked::Budget(admission) => {
                    match admission {
                        Admission::Rejected => self.results_wake.notify_one(),
                        Admission::Deferred => self.batch_wake.notify_one(),
                        // Looked at again at once, with its new model.
                        Admission::Downgraded | Admission::Admitted => {}
                    }
                    None
                }
            };
            let Some(dispatch) = dispatch else {
                // Not sent (canceled meanwhile, or stopped by a budget): give the quota back.
                self.quota.lock().expect("quota lock").settle(
                    &ticket,
                    Answer::Refused,
                    None,
                    &Default::default(),
                    Instant::now(),
                );
                continue;
            };
            let lane = self.clone();
            let span = tracing::info_span!("item", job = %dispatch.job_name, custom_id = %dispatch.custom_id, attempt = dispatch.attempt);
            tracker.spawn(lane.call(dispatch, ticket, permit).instrument(span));
        }
        // More may be admissible right away (permits, quota): look again at once.
        Ok(Some(Duration::ZERO))
    }

    /// For work outside its time window with `when_idle`: whether the org's quota of the model's
    /// class is idle (recent answers left at least [`IDLE_SHARE`] of every limit). With no recent
    /// answer to tell, one call per [`IDLE_FRESH`] goes as a probe; its headers answer the question.
    fn quota_idle(&self, quota: &mut Quota, model: &str, now: Instant) -> bool {
        match quota.org_idle(model, now, IDLE_FRESH, IDLE_SHARE) {
            Some(idle) => idle,
            None => {
                let mut probes = self.idle_probes.lock().expect("probe lock");
                let class = crate::policy::quota::limit_class(model);
                let due = probes
                    .get(&class)
                    .is_none_or(|at| now.saturating_duration_since(*at) >= IDLE_FRESH);
                if due {
                    probes.insert(class, now);
                }
                due
            }
        }
    }

    fn paused_until(&self) -> Option<Instant> {
        let mut paused = self.paused.lock().expect("pause lock");
        match *paused {
            Some(until) if until > Instant::now() => Some(until),
            _ => {
                *paused = None;
                None
            }
        }
    }

    /// Holds every call for [`BLOCKED_WAIT`]: sending more cannot succeed until a person acts.
    /// The reason is recorded for `nightshift status`.
    async fn pause(&self, reason: String) {
        let until = Instant::now() + BLOCKED_WAIT;
        *self.paused.lock().expect("pause lock") = Some(until);
        tracing::error!(%reason, wait_secs = BLOCKED_WAIT.as_secs(), "the API refuses this account's calls; the real-time lane pauses");
        let now = now_ms();
        let until_ms = now + BLOCKED_WAIT.as_millis() as i64;
        if let Err(e) = self
            .store
            .call(move |c| crate::store::quota::set_pause(c, "realtime", &reason, now, until_ms))
            .await
        {
            tracing::warn!(error = %e, "could not record the pause");
        }
    }

    /// Records a 429 or 529 with what a support ticket needs.
    async fn record_throttle(&self, dispatch: &Dispatch, ticket: &Ticket, outcome: &Outcome) {
        let (status, retry_after, message, headers) = match outcome {
            Outcome::RateLimited {
                retry_after,
                message,
                limits,
                ..
            } => (429, *retry_after, message.clone(), limits.clone()),
            Outcome::Retryable {
                status: Some(529),
                retry_after,
                message,
                ..
            } => (529, *retry_after, message.clone(), Default::default()),
            Outcome::Blocked {
                status, message, ..
            } => (*status, None, message.clone(), Default::default()),
            _ => return,
        };
        let error_type = match status {
            429 => "rate_limit_error",
            529 => "overloaded_error",
            401 => "authentication_error",
            403 => "permission_error",
            _ => "invalid_request_error",
        };
        let event = ThrottleEvent {
            at: now_ms(),
            endpoint: "POST /v1/messages".into(),
            key_id: self.key_id.clone(),
            model: dispatch.model.clone(),
            class: ticket.class.clone(),
            http_status: status,
            error_type: Some(error_type.into()),
            message: Some(message),
            request_id: outcome.request_id().map(str::to_owned),
            retry_after_ms: retry_after.map(|d| d.as_millis() as i64),
            headers: serde_json::to_string(&headers).unwrap_or_default(),
            input_estimate: Some(ticket.reserved[1] as i64),
            max_tokens: Some(dispatch.max_tokens),
            concurrency: Some(ticket.concurrency as i64),
        };
        if let Err(e) = self
            .store
            .call(move |c| crate::store::quota::record_throttle(c, &event))
            .await
        {
            tracing::warn!(error = %e, "could not record a throttle event");
        }
    }

    /// Writes the controller's view of each class for `nightshift limits`, every few seconds.
    pub async fn publish_quota(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.cancelled() => return,
            }
            let snapshot = self
                .quota
                .lock()
                .expect("quota lock")
                .snapshot(Instant::now());
            let key_id = self.key_id.clone();
            let saved = self
                .store
                .call(move |c| {
                    for class in &snapshot {
                        let json = serde_json::to_string(class).unwrap_or_default();
                        crate::store::quota::save_state(c, &class.class, &json, &key_id, now_ms())?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = saved {
                tracing::debug!(error = %e, "could not publish the quota state");
            }
        }
    }

    /// One call: send, settle the quota, record the outcome.
    async fn call(self, dispatch: Dispatch, ticket: Ticket, permit: OwnedSemaphorePermit) {
        if dispatch.unknown_before > 0 {
            tracing::warn!(
                unknown_before = dispatch.unknown_before,
                "sending again after an unknown outcome: the API may run this request twice"
            );
        }
        let outcome = self.client.send_message(&dispatch.params).await;
        self.calls.count(&dispatch.model, &outcome);
        let now = Instant::now();
        {
            let no_headers = Default::default();
            let mut quota = self.quota.lock().expect("quota lock");
            match &outcome {
                Outcome::Succeeded { usage, limits, .. } => {
                    quota.settle(&ticket, Answer::Ran, Some(usage), limits, now);
                }
                Outcome::RateLimited {
                    retry_after,
                    limits,
                    ..
                } => {
                    quota.settle(&ticket, Answer::RateLimited, None, limits, now);
                    // retry-after holds the whole class, not just this item.
                    let wait = retry_after.unwrap_or(Duration::from_secs(1));
                    quota.pause(&dispatch.model, now + wait, now);
                }
                // 529 is the API's load, not our quota: back off without learning limits from it.
                Outcome::Retryable {
                    status: Some(529), ..
                } => {
                    quota.settle(&ticket, Answer::Overloaded, None, &no_headers, now);
                }
                Outcome::Unknown { .. } => {
                    quota.settle(&ticket, Answer::Unknown, None, &no_headers, now)
                }
                _ => quota.settle(&ticket, Answer::Refused, None, &no_headers, now),
            }
        }
        self.record_throttle(&dispatch, &ticket, &outcome).await;
        let backoff = backoff_delay(&self.settings, dispatch.failures as u32);
        let (record, update) = decide(&dispatch, &outcome, &self.settings, backoff, now_ms());
        log_outcome(&record, &update);
        drop(permit);
        let (item_id, attempt_id) = (dispatch.item_id, dispatch.attempt_id);
        if let Outcome::Blocked {
            status, message, ..
        } = &outcome
        {
            self.pause(format!("HTTP {status}: {message}")).await;
        }
        // Recording must not be lost to a passing problem (a busy disk): try for a while.
        for attempt in 1..=10u32 {
            let (record, update) = (record.clone(), update.clone());
            let rules = self.rules.get();
            let stored = self
                .store
                .call(move |c| {
                    items::record_outcome(
                        c,
                        &rules.prices,
                        item_id,
                        attempt_id,
                        &record,
                        &update,
                        now_ms(),
                    )
                })
                .await;
            match stored {
                Ok(()) => break,
                Err(e) if attempt == 10 || matches!(e, crate::store::StoreError::Closed) => {
                    // The item stays in flight in the database and is sent again at the next start.
                    tracing::error!(error = %e, "could not record an outcome; the item is retried at the next start");
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "recording an outcome failed; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
            }
        }
        self.results_wake.notify_one();
        self.wake.notify_one();
    }
}

/// The delay before retry number `failures + 1`: exponential from `backoff_min`, capped at
/// `backoff_max`, with jitter (backon's: up to one more step at random).
pub fn backoff_delay(settings: &RealtimeSettings, failures: u32) -> Duration {
    backon::ExponentialBuilder::default()
        .with_min_delay(settings.backoff_min)
        .with_max_delay(settings.backoff_max)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(failures as usize + 1)
        .build()
        .nth(failures as usize)
        .unwrap_or(settings.backoff_max)
        .min(settings.backoff_max)
}

/// Decides what an outcome means for the item. Pure: `backoff` and `now` (Unix ms) are given.
pub fn decide(
    dispatch: &Dispatch,
    outcome: &Outcome,
    settings: &RealtimeSettings,
    backoff: Duration,
    now: i64,
) -> (AttemptRecord, ItemUpdate) {
    let ms = |d: Duration| d.as_millis() as i64;
    let custom_id = dispatch.custom_id.as_str();
    let mut record = AttemptRecord {
        request_id: outcome.request_id().map(str::to_owned),
        ..Default::default()
    };
    // A failure that counts toward the cap: retry after the backoff (or retry-after, if longer),
    // unless this was the last attempt allowed.
    let failed = |record: &mut AttemptRecord,
                  status: Option<u16>,
                  retry_after: Option<Duration>,
                  why: &str| {
        let failures = dispatch.failures + 1;
        if failures >= i64::from(settings.max_attempts) {
            let message = format!("gave up after {failures} failed attempts; the last: {why}");
            let update = ItemUpdate::Final {
                state: ItemState::Errored,
                result_line: results::errored_line(
                    Some(custom_id),
                    error_type(status),
                    &message,
                    None,
                ),
                error: Some(message),
            };
            return update;
        }
        record.retry_after_ms = retry_after.map(ms);
        let wait = retry_after.map_or(backoff, |r| r.max(backoff));
        ItemUpdate::Retry {
            not_before: now + ms(wait),
            failed: true,
        }
    };
    let update = match outcome {
        Outcome::Succeeded { message, usage, .. } => {
            record.outcome = "succeeded";
            record.http_status = Some(200);
            record.input_tokens = Some(usage.input_tokens);
            record.output_tokens = Some(usage.output_tokens);
            record.usage = Some(*usage);
            ItemUpdate::Final {
                state: ItemState::Succeeded,
                result_line: results::succeeded_line(custom_id, message),
                error: None,
            }
        }
        Outcome::RateLimited {
            retry_after,
            message,
            ..
        } => {
            record.outcome = "rate_limited";
            record.http_status = Some(429);
            record.retry_after_ms = retry_after.map(ms);
            record.error = Some(message.clone());
            // Waiting out a rate limit is not a failure: it does not use up attempts.
            ItemUpdate::Retry {
                not_before: now + ms(retry_after.unwrap_or(backoff)),
                failed: false,
            }
        }
        Outcome::Blocked {
            status, message, ..
        } => {
            record.outcome = "blocked";
            record.http_status = Some(*status);
            record.error = Some(message.clone());
            ItemUpdate::Retry {
                not_before: now + ms(BLOCKED_WAIT),
                failed: false,
            }
        }
        Outcome::Retryable {
            status,
            retry_after,
            message,
            ..
        } => {
            record.outcome = if status.is_some() {
                "retryable"
            } else {
                "not_sent"
            };
            record.http_status = *status;
            record.error = Some(message.clone());
            failed(&mut record, *status, *retry_after, message)
        }
        Outcome::Unknown { message } => {
            record.outcome = "unknown";
            record.error = Some(message.clone());
            failed(&mut record, None, None, message)
        }
        Outcome::Fatal { status, body, .. } => {
            record.outcome = "fatal";
            record.http_status = Some(*status);
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("request rejected")
                .to_owned();
            record.error = Some(message.clone());
            ItemUpdate::Final {
                state: ItemState::Errored,
                result_line: results::api_errored_line(Some(custom_id), body),
                error: Some(format!("HTTP {status}: {message}")),
            }
        }
    };
    (record, update)
}

fn error_type(status: Option<u16>) -> &'static str {
    match status {
        Some(529) => "overloaded_error",
        Some(504) => "timeout_error",
        _ => "api_error",
    }
}

fn log_outcome(record: &AttemptRecord, update: &ItemUpdate) {
    match (record.outcome, update) {
        ("succeeded", _) => tracing::debug!(request_id = ?record.request_id, "succeeded"),
        (outcome, ItemUpdate::Retry { not_before, .. }) => tracing::warn!(
            outcome,
            status = ?record.http_status,
            request_id = ?record.request_id,
            retry_in_ms = not_before - now_ms(),
            error = record.error.as_deref().unwrap_or_default(),
            "call failed; will retry"
        ),
        (outcome, ItemUpdate::Final { error, .. }) => tracing::warn!(
            outcome,
            status = ?record.http_status,
            request_id = ?record.request_id,
            error = error.as_deref().unwrap_or_default(),
            "item errored"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::answer::Usage;
    use serde_json::json;

    fn settings() -> RealtimeSettings {
        RealtimeSettings {
            concurrency: 4,
            max_attempts: 3,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        }
    }

    fn dispatch(failures: i64) -> Dispatch {
        Dispatch {
            item_id: 1,
            attempt_id: 1,
            attempt: failures + 1,
            failures,
            job_name: "j".into(),
            custom_id: "c-1".into(),
            params: "{}".into(),
            unknown_before: 0,
            model: "m".into(),
            max_tokens: 64,
        }
    }

    const BACKOFF: Duration = Duration::from_secs(2);

    #[test]
    fn success_is_final_with_the_message() {
        let out = Outcome::Succeeded {
            message: r#"{"type":"message","id":"msg_1"}"#.into(),
            usage: Usage {
                input_tokens: 5,
                output_tokens: 6,
                ..Default::default()
            },
            request_id: Some("req_1".into()),
            limits: Default::default(),
        };
        let (record, update) = decide(&dispatch(0), &out, &settings(), BACKOFF, 1000);
        assert_eq!(record.outcome, "succeeded");
        assert_eq!(record.output_tokens, Some(6));
        let ItemUpdate::Final {
            state, result_line, ..
        } = update
        else {
            panic!()
        };
        assert_eq!(state, ItemState::Succeeded);
        assert!(result_line.contains("\"custom_id\":\"c-1\""));
    }

    #[test]
    fn rate_limits_wait_retry_after_without_using_attempts() {
        let out = Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
            request_id: None,
            message: "slow".into(),
            limits: Default::default(),
        };
        let (record, update) = decide(&dispatch(2), &out, &settings(), BACKOFF, 1000);
        assert_eq!(record.retry_after_ms, Some(7000));
        assert_eq!(
            update,
            ItemUpdate::Retry {
                not_before: 8000,
                failed: false
            }
        );
    }

    #[test]
    fn server_errors_back_off_and_give_up_at_the_cap() {
        let out = Outcome::Retryable {
            status: Some(529),
            retry_after: None,
            request_id: None,
            message: "Overloaded".into(),
        };
        let (_, update) = decide(&dispatch(0), &out, &settings(), BACKOFF, 1000);
        assert_eq!(
            update,
            ItemUpdate::Retry {
                not_before: 3000,
                failed: true
            }
        );
        let (_, update) = decide(&dispatch(2), &out, &settings(), BACKOFF, 1000);
        let ItemUpdate::Final {
            state,
            result_line,
            error,
        } = update
        else {
            panic!()
        };
        assert_eq!(state, ItemState::Errored);
        assert!(result_line.contains("overloaded_error"));
        assert!(error.expect("message").contains("gave up after 3"));
    }

    #[test]
    fn a_longer_retry_after_wins_over_the_backoff() {
        let out = Outcome::Retryable {
            status: Some(503),
            retry_after: Some(Duration::from_secs(10)),
            request_id: None,
            message: "down".into(),
        };
        let (_, update) = decide(&dispatch(0), &out, &settings(), BACKOFF, 0);
        assert_eq!(
            update,
            ItemUpdate::Retry {
                not_before: 10_000,
                failed: true
            }
        );
    }

    #[test]
    fn unknown_outcomes_are_recorded_and_retried() {
        let out = Outcome::Unknown {
            message: "connection closed".into(),
        };
        let (record, update) = decide(&dispatch(0), &out, &settings(), BACKOFF, 0);
        assert_eq!(record.outcome, "unknown");
        assert!(matches!(update, ItemUpdate::Retry { failed: true, .. }));
    }

    #[test]
    fn fatal_errors_keep_the_api_body() {
        let body = json!({"type":"error","error":{"type":"not_found_error","message":"model: x"},"request_id":"req_2"});
        let out = Outcome::Fatal {
            status: 404,
            request_id: Some("req_2".into()),
            body,
        };
        let (_, update) = decide(&dispatch(0), &out, &settings(), BACKOFF, 0);
        let ItemUpdate::Final {
            result_line, error, ..
        } = update
        else {
            panic!()
        };
        assert!(result_line.contains("not_found_error"));
        assert_eq!(error.as_deref(), Some("HTTP 404: model: x"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = settings();
        let first = backoff_delay(&s, 0);
        assert!(
            first >= Duration::from_millis(500) && first <= Duration::from_millis(1000),
            "{first:?}"
        );
        let fourth = backoff_delay(&s, 3);
        assert!(
            fourth >= Duration::from_secs(4) && fourth <= Duration::from_secs(8),
            "{fourth:?}"
        );
        assert_eq!(backoff_delay(&s, 30), Duration::from_secs(60));
    }
}
