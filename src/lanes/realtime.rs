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
use crate::model::answer::{Origin, Outcome};
use crate::model::job::Priority;
use crate::model::state::{AttemptOutcome, Lane};
use crate::policy::circuit;
use crate::policy::outcome::{AttemptRecord, ItemUpdate};
use crate::policy::owner::{self, Owner, Verdict};
use crate::policy::quota::{Answer, Request as QuotaRequest};
use crate::policy::realtime::{Attempt, backoff_delay, decide};
use crate::policy::routing::{Choice, Pause, Routing};
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
    /// One client per route, in the order of `routing`'s routes.
    pub clients: Arc<Vec<ApiClient>>,
    /// The routes, the organizations behind them and their quotas.
    pub routing: Arc<Mutex<Routing>>,
    pub settings: RealtimeSettings,
    /// Poked when work may have become ready (intake, a finished call).
    pub wake: Arc<Notify>,
    /// Poked when a result line is waiting to be written.
    pub results_wake: Arc<Notify>,
    /// Poked when a budget sends items to the batch lane.
    pub batch_wake: Arc<Notify>,
    /// Budgets (checked as each call is marked in flight) and prices (charged as answers come in).
    pub rules: Live<Rules>,
    /// Calls by model and outcome, for the metrics endpoint.
    pub calls: Arc<crate::lanes::calls::CallCounters>,
    /// Where the API's reachability shows beside the store (`status`, metrics).
    pub health: crate::lanes::health::Board,
    /// Tenants whose items no route allows, told once each.
    pub unserved: crate::lanes::routes::Unserved,
    /// When each class last sent a probe call for `when_idle` work.
    pub idle_probes: Arc<Mutex<std::collections::HashMap<String, Instant>>>,
    /// This daemon, as it holds the leases of the items it sends.
    pub holder: crate::store::leases::Holder,
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
        let limit = (free * 4).clamp(64, 2048) as i64;
        let rules = self.rules.get();
        let wall = jiff::Timestamp::now();
        let mut closed: Vec<i64> = Priority::ALL
            .into_iter()
            .filter(|p| rules.windows.gate(*p, wall) == Gate::Closed)
            .map(Priority::rank)
            .collect();
        let mut admitted: Vec<(i64, Choice, OwnedSemaphorePermit)> = Vec::new();
        // A tenant's models its routes hold back are left out of the next look, so they cannot
        // starve the others (another tenant may have other routes).
        let mut held: Vec<(String, String)> = Vec::new();
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
                let mut routing = crate::lock(&self.routing);
                let now = Instant::now();
                for item in &ready {
                    let pair = (item.tenant.clone(), item.model.clone());
                    if held.contains(&pair) {
                        continue;
                    }
                    let priority = Priority::from_rank(item.priority);
                    if closed.contains(&item.priority) {
                        continue;
                    }
                    if rules.windows.gate(priority, wall) == Gate::IfIdle
                        && !self.quota_idle(&mut routing, &item.tenant, &item.model, now)
                    {
                        // Leave the class out of the next look, so it cannot crowd out the
                        // classes behind it.
                        closed.push(item.priority);
                        continue;
                    }
                    // Warm, then burst: an item whose cached prefix another call is writing
                    // waits for that call's answer, then reads it; others go meanwhile.
                    if let Some(prefix) = &item.cache
                        && routing.cache_waits(&item.tenant, &item.model, prefix, now)
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
                    match routing.choose(&item.tenant, &request, now) {
                        Ok(choice) => admitted.push((item.id, choice, permit)),
                        Err(at) => {
                            if !routing.serves(&item.tenant) {
                                self.unserved.tell(&item.tenant);
                            }
                            held.push(pair);
                            next_try = Some(next_try.map_or(at, |t: Instant| t.min(at)));
                        }
                    }
                }
            }
            // Look again only if a model or class was newly held back and permits are left.
            let newly_held = held.len() > held_before
                || closed.len() > closed_before
                || waiting.len() > waiting_before;
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

        let sends: Vec<(i64, (i64, i64), String)> = {
            let routing = crate::lock(&self.routing);
            admitted
                .iter()
                .map(|(id, c, _)| {
                    let sent_with = (c.ticket.concurrency as i64, c.ticket.reserved[1] as i64);
                    (*id, sent_with, routing.route_name(c.route).to_owned())
                })
                .collect()
        };
        // The same rules as the admission above: a reload mid-round applies from the next one.
        let rules = rules.clone();
        let holder = self.holder.clone();
        let marked = self
            .store
            .call(move |c| {
                let now = now_ms();
                let mut out = Vec::with_capacity(sends.len());
                for (id, sent_with, route) in sends {
                    out.push(mark(c, id, sent_with, &route, &rules, &holder, now)?);
                }
                Ok(out)
            })
            .await;
        let dispatches = match marked {
            Ok(dispatches) => dispatches,
            Err(e) => {
                // Nothing was sent: give every admitted call's quota back before giving up.
                let mut routing = crate::lock(&self.routing);
                for (_, choice, _) in &admitted {
                    routing.unsent(choice, Instant::now());
                }
                return Err(e.into());
            }
        };
        for ((_, choice, permit), marked) in admitted.into_iter().zip(dispatches) {
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
                crate::lock(&self.routing).unsent(&choice, Instant::now());
                continue;
            };
            let lane = self.clone();
            let route = self.clients[choice.route].route_name().to_owned();
            let span = tracing::info_span!("item", job = %dispatch.job_name, custom_id = %dispatch.custom_id, attempt = dispatch.attempt, %route);
            tracker.spawn(lane.call(dispatch, choice, permit).instrument(span));
        }
        // More may be admissible right away (permits, quota): look again at once.
        Ok(Some(Duration::ZERO))
    }

    /// For work outside its time window with `when_idle`: whether the org's quota of the model's
    /// class is idle (recent answers left at least [`IDLE_SHARE`] of every limit). With no recent
    /// answer to tell, one call per [`IDLE_FRESH`] goes as a probe; its headers answer the question.
    fn quota_idle(&self, routing: &mut Routing, tenant: &str, model: &str, now: Instant) -> bool {
        match routing.org_idle(tenant, model, now, IDLE_FRESH, IDLE_SHARE) {
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

    /// Pauses what the verdict names (see [`crate::lanes::routes::pause`]).
    async fn pause(&self, route: usize, verdict: &Verdict) {
        crate::lanes::routes::pause(
            &self.store,
            &self.clients,
            &self.routing,
            route,
            verdict,
            "real-time",
        )
        .await;
    }

    /// Writes every route's state for `status`, `limits` and `diagnose`.
    pub async fn publish_routes(&self) {
        crate::lanes::routes::publish(&self.store, &self.clients, &self.routing).await;
    }

    /// Opens a route's circuit after a few calls in a row could not reach it, closes it at the
    /// first answer; says so once per change (the log, the health board, and `status`).
    async fn follow_reachability(&self, route: usize, outcome: &Outcome, probe: bool) {
        let now = Instant::now();
        let (change, was_open, any_open) = {
            let mut routing = crate::lock(&self.routing);
            let circuit = routing.circuit(route);
            let was_open = circuit.is_open();
            let change = match outcome {
                Outcome::Retryable { status: None, .. } => {
                    circuit.unreachable(now, fastrand::f64(), probe)
                }
                _ => circuit.reached(),
            };
            let any_open = (0..self.clients.len()).any(|i| routing.circuit(i).is_open());
            (change, was_open, any_open)
        };
        let at = now_ms();
        let error = match outcome {
            Outcome::Retryable { message, .. } => message.as_str(),
            _ => "",
        };
        let name = self.clients[route].route_name();
        match change {
            circuit::Change::Opened { next_probe } => {
                let next = at + next_probe.saturating_duration_since(now).as_millis() as i64;
                self.health.set(
                    crate::lanes::health::API,
                    "the API cannot be reached",
                    &format!("route {name}: {error}"),
                    at,
                    Some(next),
                );
                let probe_in_ms = next_probe.saturating_duration_since(now).as_millis() as i64;
                if was_open {
                    tracing::debug!(
                        route = name,
                        error,
                        probe_in_ms,
                        "the API still cannot be reached"
                    );
                } else {
                    tracing::error!(
                        route = name,
                        error,
                        probe_in_ms,
                        "the API cannot be reached; items wait (no attempt is used) and one probe call goes at a time"
                    );
                }
            }
            circuit::Change::Closed => {
                if !any_open {
                    self.health.clear(crate::lanes::health::API);
                }
                tracing::warn!(route = name, "the API answers again; the route resumes");
            }
            circuit::Change::None => return,
        }
        self.publish_routes().await;
    }

    /// Records a 429, a 529 or a refusal with what a support ticket needs and its owner.
    async fn record_throttle(
        &self,
        dispatch: &Dispatch,
        choice: &Choice,
        outcome: &Outcome,
        origin: &Origin,
        verdict: &Verdict,
    ) {
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
        let client = &self.clients[choice.route];
        let event = ThrottleEvent {
            model: dispatch.model.clone(),
            class: choice.ticket.class.clone(),
            request_id: outcome.request_id().map(str::to_owned),
            headers: serde_json::to_string(&headers).unwrap_or_default(),
            input_estimate: Some(choice.ticket.reserved[1] as i64),
            max_tokens: Some(dispatch.max_tokens),
            concurrency: Some(choice.ticket.concurrency as i64),
            ..crate::lanes::routes::throttle_event(
                client,
                "POST /v1/messages",
                status,
                &message,
                retry_after,
                origin,
                verdict,
            )
        };
        crate::lanes::routes::record_throttle(&self.store, event).await;
    }

    /// Writes the controller's view of each organization's classes for `nightshift limits`,
    /// what it learned for the next start, and the routes, every few seconds.
    pub async fn publish_quota(self, stop: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => false,
                _ = stop.cancelled() => true,
            };
            let (groups, learned) = {
                let mut routing = crate::lock(&self.routing);
                (
                    routing.groups(Instant::now()),
                    routing.learned(Instant::now()),
                )
            };
            // The key id of the first route of each organization, for people.
            let key_of = |routes: &[String]| {
                routes
                    .first()
                    .and_then(|r| self.clients.iter().find(|c| c.route_name() == r))
                    .map(|c| c.key_id().to_owned())
                    .unwrap_or_default()
            };
            let mut rows = Vec::new();
            for g in &groups {
                let key_id = key_of(&g.routes);
                for class in &g.classes {
                    let learned = learned
                        .iter()
                        .find(|(grp, c, _)| *grp == g.group && *c == class.class)
                        .map(|(_, _, l)| serde_json::to_string(l).unwrap_or_default())
                        .unwrap_or_default();
                    let json = serde_json::to_string(class).unwrap_or_default();
                    rows.push((
                        g.group.clone(),
                        class.class.clone(),
                        json,
                        learned,
                        key_id.clone(),
                    ));
                }
            }
            let running: Vec<String> = groups.iter().map(|g| g.group.clone()).collect();
            let saved = self
                .store
                .call(move |c| {
                    crate::store::quota::keep_groups(c, &running)?;
                    for (grp, class, json, learned, key_id) in &rows {
                        crate::store::quota::save_state(
                            c,
                            grp,
                            class,
                            json,
                            learned,
                            key_id,
                            now_ms(),
                        )?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = saved {
                tracing::debug!(error = %e, "could not publish the quota state");
            }
            self.publish_routes().await;
            // Once more at the stop: the next start resumes from the latest.
            if stopping {
                return;
            }
        }
    }

    /// One call: send on its route, settle the quota, judge a throttle, record the outcome.
    async fn call(self, dispatch: Dispatch, choice: Choice, permit: OwnedSemaphorePermit) {
        if dispatch.unknown_before > 0 {
            tracing::warn!(
                unknown_before = dispatch.unknown_before,
                "sending again after an unknown outcome: the API may run this request twice"
            );
        }
        let client = &self.clients[choice.route];
        let sent = client.send_message(&dispatch.params).await;
        let (outcome, origin) = (sent.outcome, sent.origin);
        self.calls.count(&dispatch.model, &outcome);
        let (verdict, learned) = self.settle(&dispatch, &choice, &outcome, &origin);
        if learned {
            self.publish_routes().await;
        }
        self.follow_reachability(choice.route, &outcome, choice.probe)
            .await;
        if let Some(verdict) = &verdict {
            self.record_throttle(&dispatch, &choice, &outcome, &origin, verdict)
                .await;
        }
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
        let claim = dispatch.claim();
        if let (Outcome::Blocked { .. }, Some(verdict)) = (&outcome, &verdict) {
            self.pause(choice.route, verdict).await;
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
                    items::record_outcome(c, &rules.prices, &claim, &record, &update, now_ms())
                })
                .await;
            match stored {
                Ok(()) => {
                    if tries > 1 {
                        tracing::info!(tries, "outcome recorded once the store took it");
                    }
                    break;
                }
                Err(crate::store::StoreError::LeaseLost) => {
                    // Paused or cut off past the lease: another daemon took the item back and
                    // sends it again; this answer is not recorded (the attempt is unknown there).
                    tracing::warn!("{}", crate::store::StoreError::LeaseLost);
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

    /// Settles the call's quota in the organization that admitted it, learns the route's
    /// organization from the answer (true: it just did), and judges who owns a throttle or a
    /// refusal.
    fn settle(
        &self,
        dispatch: &Dispatch,
        choice: &Choice,
        outcome: &Outcome,
        origin: &Origin,
    ) -> (Option<Verdict>, bool) {
        let now = Instant::now();
        let no_headers = Default::default();
        let mut routing = crate::lock(&self.routing);
        fn answered<'a>(
            origin: &Origin,
            status: u16,
            message: &'a str,
            retry_after: Option<Duration>,
            spend_cap: bool,
        ) -> owner::Answered<'a> {
            owner::Answered {
                status,
                message,
                spend_cap,
                anthropic: origin.anthropic,
                retry_after,
            }
        }
        let verdict = match outcome {
            Outcome::Succeeded { usage, limits, .. } => {
                routing.settle(choice, Answer::Ran, Some(usage), limits, now);
                None
            }
            Outcome::RateLimited {
                retry_after,
                limits,
                message,
                ..
            } => {
                let books = routing.books(choice, limits, now);
                let verdict = owner::judge(
                    &answered(origin, 429, message, *retry_after, false),
                    books.as_ref(),
                    now_ms(),
                );
                let wait = retry_after.unwrap_or(Duration::from_secs(1));
                if verdict.owner == Owner::Gateway {
                    // Not the API's limit: nothing to learn of the organization's buckets; the
                    // gateway's own policy holds this route back, not the organization.
                    routing.settle(choice, Answer::Refused, None, &no_headers, now);
                    routing.pause_route(
                        choice.route,
                        Pause {
                            until: now + wait,
                            reason: verdict.evidence.clone(),
                            owner: verdict.owner,
                        },
                    );
                } else {
                    routing.settle(choice, Answer::RateLimited, None, limits, now);
                    // retry-after holds the whole class of the organization, not this item.
                    routing.hold_class(choice, &dispatch.model, now + wait, now);
                }
                Some(verdict)
            }
            // 529 is the API's load, not our quota: back off without learning limits from it.
            Outcome::Retryable {
                status: Some(status @ (500..=599)),
                retry_after,
                message,
                ..
            } => {
                let answer = if *status == 529 {
                    Answer::Overloaded
                } else {
                    Answer::Refused
                };
                routing.settle(choice, answer, None, &no_headers, now);
                routing.storm(choice.route, now);
                (*status == 529).then(|| {
                    owner::judge(
                        &answered(origin, 529, message, *retry_after, false),
                        None,
                        now_ms(),
                    )
                })
            }
            Outcome::Unknown { .. } => {
                routing.settle(choice, Answer::Unknown, None, &no_headers, now);
                None
            }
            Outcome::Blocked {
                status, message, ..
            } => {
                routing.settle(choice, Answer::Refused, None, &no_headers, now);
                // Only the tier spend cap answers 429 among the refusals.
                let spend_cap = *status == 429;
                Some(owner::judge(
                    &answered(origin, *status, message, None, spend_cap),
                    None,
                    now_ms(),
                ))
            }
            _ => {
                routing.settle(choice, Answer::Refused, None, &no_headers, now);
                None
            }
        };
        // A refusal is followed by a pause (the gateway's 429 was paused above; a blocked call
        // is paused by the caller); any other answer ends a probe after a pause.
        let pause_follows = match outcome {
            Outcome::Blocked { .. } => true,
            Outcome::RateLimited { .. } => {
                verdict.as_ref().is_some_and(|v| v.owner == Owner::Gateway)
            }
            _ => false,
        };
        routing.answered(choice.route, pause_follows);
        let ran = matches!(outcome, Outcome::Succeeded { .. });
        let learned = crate::lanes::routes::learn(&mut routing, choice.route, origin, ran);
        (verdict, learned)
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
    conn: &crate::store::sql::Conn,
    item_id: i64,
    sent_with: (i64, i64),
    route: &str,
    rules: &Rules,
    holder: &crate::store::leases::Holder,
    now: i64,
) -> crate::store::Result<Marked> {
    // Locked from here to the commit (PostgreSQL): another daemon skips it meanwhile.
    if !items::claimable(conn, item_id)? {
        return Ok(Marked::NotPending);
    }
    match admission::admit(conn, item_id, Lane::Realtime, rules, now)? {
        Admission::Admitted => {}
        other => return Ok(Marked::Budget(other)),
    }
    items::mark_in_flight(
        conn,
        item_id,
        Lane::Realtime,
        sent_with,
        Some(route),
        holder,
        now,
    )
    .map(Marked::InFlight)
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
