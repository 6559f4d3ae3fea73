//! The real-time lane: takes ready items highest priority first, admits them under the quota and a
//! concurrency cap, marks them in flight (committed before anything is sent), sends, and records
//! each outcome in one transaction. What to do with an answer is decided by the pure
//! `policy::realtime::decide`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::api::ApiClient;
use crate::config::{Live, RealtimeSettings};
use crate::lanes::admission::{self, Admission, Rules};
use crate::model::answer::Outcome;
use crate::model::job::Priority;
use crate::model::state::{AttemptOutcome, Lane};
use crate::policy::circuit::{self, Circuit};
use crate::policy::outcome::{AttemptRecord, BLOCKED_WAIT, ItemUpdate};
use crate::policy::quota::{Answer, Quota, Request as QuotaRequest, Ticket};
use crate::policy::realtime::{Attempt, backoff_delay, decide};
use crate::policy::window::Gate;
use crate::store::items::{self, Dispatch};
use crate::store::quota::ThrottleEvent;
use crate::store::{Store, now_ms};

/// Outside its window, `when_idle` work goes while the latest answers (this recent) left at least
/// this share of every limit: the org's quota is idle, no one else is using it.
const IDLE_FRESH: Duration = Duration::from_secs(30);
const IDLE_SHARE: f64 = 0.9;
/// With time windows configured, the lane looks at least this often (a window may open).
const WINDOW_LOOK: Duration = Duration::from_secs(1);
/// An item waiting for another call to write its cached prefix is looked at again this soon.
const CACHE_LOOK: Duration = Duration::from_millis(50);
/// The longest the lane waits before it looks again.
const IDLE_LOOK: Duration = Duration::from_secs(1);

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
    pub calls: Arc<crate::lanes::calls::CallCounters>,
    /// Open while the API cannot be reached: one probe at a time instead of every item.
    pub circuit: Arc<Mutex<Circuit>>,
    /// Where the API's reachability shows beside the store (`status`, metrics).
    pub health: crate::lanes::health::Board,
    /// When each class last sent a probe call for `when_idle` work.
    pub idle_probes: Arc<Mutex<std::collections::HashMap<String, Instant>>>,
}

impl RealtimeLane {
    /// Sends until `shutdown`; then stops admitting and waits up to `grace` for calls in flight.
    /// Calls still running after that are abandoned: their items stay in flight in the database
    /// and are sent again (recorded as unknown outcomes) at the next start.
    #[tracing::instrument(name = "realtime", skip_all)]
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
            // At most a second: what the CLI writes beside the daemon (a resume) is seen soon.
            let sleep = next.map_or(IDLE_LOOK, |n| n.min(IDLE_LOOK));
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
        // While the API cannot be reached, one probe call at a time.
        let max_admit = match crate::lock(&self.circuit).gate(Instant::now()) {
            circuit::Gate::Send => usize::MAX,
            circuit::Gate::Probe => 1,
            circuit::Gate::WaitForProbe => return Ok(None),
            circuit::Gate::WaitUntil(at) => {
                return Ok(Some(at.saturating_duration_since(Instant::now())));
            }
        };
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
        // Cached prefixes another call is writing: their items are left out of the next look too.
        let mut waiting: Vec<i64> = Vec::new();
        let mut next_try: Option<Instant> = None;
        for _ in 0..8 {
            let now = now_ms();
            let (skip, skip_ranks, skip_prefixes) = (held.clone(), closed.clone(), waiting.clone());
            let found = self
                .store
                .call(move |c| {
                    // Items a budget parked until now are ready again.
                    crate::store::budget::unpark_due(c, now)?;
                    items::ready_realtime(c, now, limit, &skip, &skip_ranks, &skip_prefixes)
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
            let (held_before, closed_before, waiting_before) =
                (held.len(), closed.len(), waiting.len());
            {
                let mut quota = crate::lock(&self.quota);
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
                    if admitted.len() >= max_admit {
                        break;
                    }
                    // Warm, then burst: an item whose cached prefix another call is writing
                    // waits for that call's answer, then reads it; others go meanwhile.
                    if let Some(prefix) = &item.cache
                        && quota.cache_waits(&item.model, prefix, now)
                    {
                        let again = now + CACHE_LOOK;
                        next_try = Some(next_try.map_or(again, |t: Instant| t.min(again)));
                        if !waiting.contains(&prefix.key) {
                            waiting.push(prefix.key);
                        }
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
                        cache: item.cache,
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
            let newly_held = held.len() > held_before
                || closed.len() > closed_before
                || waiting.len() > waiting_before;
            if !newly_held || permits.available_permits() == 0 || admitted.len() >= max_admit {
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
                    out.push(mark(c, id, sent_with, &rules, now)?);
                }
                Ok(out)
            })
            .await;
        let dispatches = match marked {
            Ok(dispatches) => dispatches,
            Err(e) => {
                // Nothing was sent: give every admitted call's quota back before giving up.
                let mut quota = crate::lock(&self.quota);
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
                crate::lock(&self.quota).settle(
                    &ticket,
                    Answer::Refused,
                    None,
                    &Default::default(),
                    Instant::now(),
                );
                continue;
            };
            let probe = max_admit == 1;
            if probe {
                crate::lock(&self.circuit).probe_sent();
            }
            let lane = self.clone();
            let span = tracing::info_span!("item", job = %dispatch.job_name, custom_id = %dispatch.custom_id, attempt = dispatch.attempt);
            tracker.spawn(lane.call(dispatch, ticket, permit, probe).instrument(span));
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
                let mut probes = crate::lock(&self.idle_probes);
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
        let mut paused = crate::lock(&self.paused);
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
        *crate::lock(&self.paused) = Some(until);
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

    /// Opens the circuit after a few calls in a row could not reach the API, closes it at the
    /// first answer; says so once per change (the log, and a pause `status` shows).
    async fn follow_reachability(&self, outcome: &Outcome, probe: bool) {
        let now = Instant::now();
        let (change, was_open) = {
            let mut circuit = crate::lock(&self.circuit);
            let was_open = circuit.is_open();
            let change = match outcome {
                Outcome::Retryable { status: None, .. } => {
                    circuit.unreachable(now, fastrand::f64(), probe)
                }
                _ => circuit.reached(),
            };
            (change, was_open)
        };
        let at = now_ms();
        let error = match outcome {
            Outcome::Retryable { message, .. } => message.as_str(),
            _ => "",
        };
        match change {
            circuit::Change::Opened { next_probe } => {
                let next = at + next_probe.saturating_duration_since(now).as_millis() as i64;
                self.health.set(
                    crate::lanes::health::API,
                    "the API cannot be reached",
                    error,
                    at,
                    Some(next),
                );
            }
            circuit::Change::Closed => self.health.clear(crate::lanes::health::API),
            circuit::Change::None => {}
        }
        // A blocked account's pause (5 minutes, with its own reason) stays what status shows.
        let blocked = self.paused_until().is_some();
        let recorded = match change {
            circuit::Change::None => return,
            circuit::Change::Opened { .. } | circuit::Change::Closed if blocked => return,
            circuit::Change::Opened { next_probe } => {
                let probe_in_ms = next_probe.saturating_duration_since(now).as_millis() as i64;
                if was_open {
                    tracing::debug!(error, probe_in_ms, "the API still cannot be reached");
                } else {
                    tracing::error!(
                        error,
                        probe_in_ms,
                        "the API cannot be reached; items wait (no attempt is used) and one probe call goes at a time"
                    );
                }
                let reason = format!(
                    "the API cannot be reached ({error}); items wait, one probe call at a time"
                );
                self.store
                    .call(move |c| {
                        crate::store::quota::set_pause(c, "realtime", &reason, at, at + probe_in_ms)
                    })
                    .await
            }
            circuit::Change::Closed => {
                tracing::warn!("the API answers again; the real-time lane resumes");
                self.store
                    .call(move |c| crate::store::quota::end_pause(c, "realtime", at))
                    .await
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "could not record the API's reachability");
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

    /// Writes the controller's view of each class for `nightshift limits`, and what it learned for
    /// the next start, every few seconds.
    pub async fn publish_quota(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.cancelled() => return,
            }
            let (snapshot, learned) = {
                let mut quota = crate::lock(&self.quota);
                (
                    quota.snapshot(Instant::now()),
                    quota.learned(Instant::now()),
                )
            };
            let key_id = self.key_id.clone();
            let saved = self
                .store
                .call(move |c| {
                    for (class, (name, learned)) in snapshot.iter().zip(&learned) {
                        debug_assert_eq!(&class.class, name);
                        let json = serde_json::to_string(class).unwrap_or_default();
                        let learned = serde_json::to_string(learned).unwrap_or_default();
                        crate::store::quota::save_state(
                            c,
                            &class.class,
                            &json,
                            &learned,
                            &key_id,
                            now_ms(),
                        )?;
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
    /// `probe`: the one call the open circuit let through.
    async fn call(
        self,
        dispatch: Dispatch,
        ticket: Ticket,
        permit: OwnedSemaphorePermit,
        probe: bool,
    ) {
        if dispatch.unknown_before > 0 {
            tracing::warn!(
                unknown_before = dispatch.unknown_before,
                "sending again after an unknown outcome: the API may run this request twice"
            );
        }
        let outcome = self.client.send_message(&dispatch.params).await.outcome;
        self.calls.count(&dispatch.model, &outcome);
        let now = Instant::now();
        {
            let no_headers = Default::default();
            let mut quota = crate::lock(&self.quota);
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
        self.follow_reachability(&outcome, probe).await;
        self.record_throttle(&dispatch, &ticket, &outcome).await;
        let backoff = backoff_delay(
            self.settings.backoff_min,
            self.settings.backoff_max,
            dispatch.failures as u32,
        );
        let attempt = Attempt {
            custom_id: &dispatch.custom_id,
            failures: dispatch.failures,
            max_attempts: self.settings.max_attempts,
        };
        let (record, update) = decide(&attempt, &outcome, backoff, now_ms());
        log_outcome(&record, &update);
        drop(permit);
        let (item_id, attempt_id) = (dispatch.item_id, dispatch.attempt_id);
        if let Outcome::Blocked {
            status, message, ..
        } = &outcome
        {
            self.pause(format!("HTTP {status}: {message}")).await;
        }
        // An answer once received is kept until the store has it: a full disk, a held lock or an
        // I/O error passes, and the item never stays in flight while the daemon lives. Only a store
        // that has stopped (shutdown) leaves it in flight, as a kill -9 would, for the next start.
        let mut wait = Duration::from_millis(200);
        for tries in 1u32.. {
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
                Ok(()) => {
                    if tries > 1 {
                        tracing::info!(tries, "outcome recorded once the store took it");
                    }
                    break;
                }
                Err(crate::store::StoreError::Closed) => {
                    tracing::error!(
                        "the store has stopped before this outcome was recorded; the item is sent again at the next start"
                    );
                    break;
                }
                Err(e) => {
                    if tries == 1 || tries % 10 == 0 {
                        tracing::warn!(error = %e, tries, "recording an outcome failed; it is kept and tried again");
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.results_wake.notify_one();
        self.wake.notify_one();
    }
}

/// What [`mark`] did with an admitted item.
#[derive(Debug, Clone)]
pub enum Marked {
    /// In flight: send it.
    InFlight(Dispatch),
    /// No longer pending (canceled meanwhile).
    NotPending,
    /// Its tenant's budget stopped it (see [`Admission`]).
    Budget(Admission),
}

/// In the sending transaction: checks a pending item against its tenant's budget, then marks it
/// in flight with its attempt row, before anything is sent. `sent_with`: the class's concurrency
/// and the input estimate at admission, kept for diagnosis.
pub fn mark(
    conn: &rusqlite::Connection,
    item_id: i64,
    sent_with: (i64, i64),
    rules: &Rules,
    now: i64,
) -> crate::store::Result<Marked> {
    if !items::is_pending(conn, item_id)? {
        return Ok(Marked::NotPending);
    }
    match admission::admit(conn, item_id, Lane::Realtime, rules, now)? {
        Admission::Admitted => {}
        other => return Ok(Marked::Budget(other)),
    }
    items::mark_in_flight(conn, item_id, Lane::Realtime, sent_with, now).map(Marked::InFlight)
}

fn log_outcome(record: &AttemptRecord, update: &ItemUpdate) {
    let (outcome, status, request_id) = (
        record.outcome.as_str(),
        record.http_status,
        record.request_id.as_deref(),
    );
    match update {
        _ if record.outcome == AttemptOutcome::Succeeded => {
            tracing::debug!(request_id, "succeeded")
        }
        ItemUpdate::Retry { not_before, .. } => tracing::warn!(
            outcome,
            status,
            request_id,
            retry_in_ms = not_before - now_ms(),
            error = record.error.as_deref().unwrap_or_default(),
            "call failed; will retry"
        ),
        ItemUpdate::Final { error, .. } => tracing::warn!(
            outcome,
            status,
            request_id,
            error = error.as_deref().unwrap_or_default(),
            "item errored"
        ),
    }
}
