//! The Message Batches lane: packs a job's batch items into batches, records the intent before the
//! create call and the id right after, polls with growing intervals, streams the results and
//! applies each line idempotently. Expired items and retryable errors go back to the planner.
//!
//! Routes: a batch belongs to the route it was packed for, recorded with the intent. Each batch
//! is packed for the first route in name order that is usable now (not paused, reachable) and
//! allows the tenants of the items it takes; every later call for it (create, poll, results,
//! cancel, the list searched to reconcile it) goes with that route's key, as another
//! organization's key cannot see it. A batch whose route is no longer in the config is left as
//! it is (said once in the log). When a route refuses the account on a create call (a refused
//! key, the spend cap, a usage limit), the route is paused (a key alone, else every route of its
//! organization, for the real-time lane too) and the batch, never created, gives its items back
//! to be packed for another route.
//!
//! Crash safety: just before each create call the batch is flagged `create_unknown` with the time
//! of the call; only an answer that says nothing was created clears it. A batch still flagged (a
//! crash mid-call, a lost answer) is looked up in the list endpoint of its route (creation time
//! near the call, same request count) before anything is sent again, so a crash between the call
//! and recording the id never makes a second batch. While one batch is unresolved no other create
//! call goes out on its route, nor on a route known to share its organization (whose batches the
//! same list shows), so a match can only be that batch's; other routes go on.

pub mod apply;
mod create;
mod poll;
mod preflight;
mod retry;
pub mod staged;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::ApiClient;
use crate::config::{BatchSettings, Live};
use crate::lanes::admission::Rules;
use crate::model::state::BatchState;
use crate::policy::preflight::ShapeVerdict;
use crate::policy::routing::Routing;
use crate::store::batches::{self, BatchRow, PackRoute};
use crate::store::{Store, now_ms};
use apply::Replan;

/// How far from the create call a found batch's creation time may be (clocks differ, calls queue).
pub(super) const RECONCILE_WINDOW_MS: i64 = 10 * 60_000;
/// Result lines per transaction, at most, and their bytes (a transaction of its own each).
pub(super) const APPLY_LINES: usize = 5_000;
pub(super) const APPLY_BYTES: u64 = 16 << 20;
/// Pages of the batch list searched at most when reconciling.
pub(super) const MAX_LIST_PAGES: u32 = 50;
/// How often items are re-routed between the lanes as deadlines near.
const REROUTE_EVERY: Duration = Duration::from_secs(10);
/// Refused polls or downloads in a row before a batch is given up and its items re-planned.
pub(super) const MAX_REFUSALS: i64 = 5;

#[derive(Clone)]
pub struct BatchLane {
    pub store: Store,
    /// One client per route, in the order of `routing`'s routes (the config's).
    pub clients: Arc<Vec<ApiClient>>,
    /// The routes (shared with the real-time lane): which are usable now, whose tenants they
    /// take, and their pauses.
    pub routing: Arc<Mutex<Routing>>,
    pub settings: BatchSettings,
    pub max_attempts: u32,
    pub rpm_for: crate::policy::planner::RpmFor,
    /// Budgets (checked as items are packed) and prices (charged as results come in).
    pub rules: Live<Rules>,
    /// Poked when items may be waiting (intake) or went back to the planner.
    pub wake: Arc<Notify>,
    /// Poked for the real-time lane when items come back routed to it.
    pub realtime_wake: Arc<Notify>,
    pub results_wake: Arc<Notify>,
    /// Where downloaded results wait to be applied (see [`staged`]).
    pub staging_dir: std::path::PathBuf,
    /// What the API said of each request shape counted before a batch (see [`preflight`]).
    pub shapes: Arc<std::sync::Mutex<HashMap<String, ShapeVerdict>>>,
    /// Whether the preflight runs (`[batch] preflight`; off for good once `count_tokens` answers
    /// other than the API does).
    pub preflight_on: Arc<std::sync::atomic::AtomicBool>,
    /// Tenants whose items no route allows, told once each.
    pub unserved: crate::lanes::routes::Unserved,
    /// Jobs whose waiting tenants were checked against the routes (once per job and start).
    pub tenants_checked: Arc<Mutex<std::collections::HashSet<i64>>>,
    /// This daemon, as it holds the leases of the batches it follows.
    pub holder: crate::store::leases::Holder,
}

/// Spaces calls to the batch endpoints under their RPM.
pub(super) struct Pacer {
    interval: Duration,
    next: Instant,
}

impl Pacer {
    pub(super) async fn ready(&mut self) {
        tokio::time::sleep_until(self.next.into()).await;
        self.next = Instant::now().max(self.next) + self.interval;
    }
}

/// The lane's state between rounds.
pub(super) struct Lane {
    pub(super) pacer: Pacer,
    /// Routes named by batches but no longer in the config, said once in the log.
    pub(super) lost_routes: HashSet<String>,
    /// Batches of such routes already looked up with today's routes' keys.
    pub(super) adoption_tried: HashSet<i64>,
    /// Lowered when the API answers 413 to a batch of this size.
    pub(super) max_bytes: i64,
    /// The batch whose results are being applied beside the lane, if any.
    pub(super) applying: Option<Applying>,
}

/// A batch's staged results being applied by a task of their own.
pub(super) struct Applying {
    pub(super) batch_id: i64,
    pub(super) task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Lane {
    /// Waits until no batch's results are being applied. A failure is logged: the batch is
    /// still due, and its results are downloaded and applied again.
    pub(super) async fn applied(&mut self) {
        let Some(Applying { batch_id, task }) = self.applying.take() else {
            return;
        };
        let error = match task.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => format!("the task stopped: {e}"),
        };
        tracing::error!(batch = batch_id, %error, "applying batch results failed; trying again");
    }

    /// Whether `batch_id`'s results are being applied (the lane leaves it alone meanwhile).
    fn is_applying(&self, batch_id: i64) -> bool {
        self.applying
            .as_ref()
            .is_some_and(|a| a.batch_id == batch_id)
    }
}

/// What the last action on a batch asks of the loop.
pub(super) enum Next {
    At(i64),
    Now,
}

impl BatchLane {
    /// Runs until `shutdown`. Batches under way stay recorded; the next start polls them again.
    #[tracing::instrument(name = "batches", skip_all)]
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut lane = Lane {
            pacer: Pacer {
                interval: Duration::try_from_secs_f64(60.0 / self.settings.rpm.max(1) as f64)
                    .unwrap_or(Duration::from_secs(60)),
                next: Instant::now(),
            },
            lost_routes: HashSet::new(),
            adoption_tried: HashSet::new(),
            max_bytes: self.settings.max_bytes as i64,
            applying: None,
        };
        let mut last_reroute = Instant::now();
        // After a start, every batch under way is looked at once: it may have ended meanwhile.
        match self
            .store
            .call(|c| batches::poll_all_now(c, now_ms()))
            .await
        {
            Ok(n) if n > 0 => tracing::info!(batches = n, "polling every batch under way"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not make the batches due; they are polled when due")
            }
        }
        while !shutdown.is_cancelled() {
            let next = match self.round(&mut lane, &mut last_reroute, &shutdown).await {
                Ok(next) => next,
                Err(e) => {
                    // A passing problem (a busy database, say) must not stop the lane: try again.
                    tracing::error!(
                        error = format!("{e:#}"),
                        "batch lane round failed; trying again in a second"
                    );
                    Some(now_ms() + 1000)
                }
            };
            let sleep = next.map_or(Duration::from_secs(1), |at| {
                Duration::from_millis((at - now_ms()).clamp(0, 1000) as u64)
            });
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        lane.applied().await; // it stops at its next chunk
        Ok(())
    }

    /// One round: cancel requests, re-routing, packing, and every batch that is due. Returns when
    /// the next thing is due.
    async fn round(
        &self,
        lane: &mut Lane,
        last_reroute: &mut Instant,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<i64>> {
        if lane.applying.as_ref().is_some_and(|a| a.task.is_finished()) {
            lane.applied().await;
        }
        let canceled = self
            .store
            .call(|c| batches::take_cancel_requests(c, now_ms()))
            .await?;
        for job in canceled {
            tracing::info!(job = %job, "job canceled: pending items end canceled, its batches are being canceled");
            self.results_wake.notify_one();
        }
        let retried = self.replanning(retry::take_requests).await?;
        if retried.iter().any(|(_, n)| *n > 0) {
            self.realtime_wake.notify_one();
            self.results_wake.notify_one();
        }
        if last_reroute.elapsed() >= REROUTE_EVERY {
            *last_reroute = Instant::now();
            let (to_realtime, to_batch) = self.store.call(|c| apply::reroute(c, now_ms())).await?;
            if to_realtime > 0 || to_batch > 0 {
                tracing::info!(to_realtime, to_batch, "items re-routed between the lanes");
                self.realtime_wake.notify_one();
            }
        }
        let next_pack = self.pack_ready(lane).await?;
        let next_batch = self.work_batches(lane, shutdown).await?;
        Ok([next_pack, next_batch].into_iter().flatten().min())
    }

    /// Runs an API call unless shutdown comes first (None then). A create call cut off this way
    /// stays flagged unknown and is reconciled at the next start.
    pub(super) async fn call<T>(
        &self,
        shutdown: &CancellationToken,
        call: impl Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            value = call => Some(value),
            _ = shutdown.cancelled() => None,
        }
    }

    /// Runs `f` on the writer thread with what sending items back to the planner needs.
    pub(super) async fn replanning<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::store::sql::Conn, &Replan<'_>) -> crate::store::Result<T>
        + Send
        + 'static,
    ) -> anyhow::Result<T> {
        Ok(self.store.call(self.with_replan(f)).await?)
    }

    /// `f` as a store op, given what sending items back to the planner needs (read now, `now`
    /// taken when it runs).
    pub(super) fn with_replan<T>(
        &self,
        f: impl FnOnce(&crate::store::sql::Conn, &Replan<'_>) -> crate::store::Result<T>
        + Send
        + 'static,
    ) -> impl FnOnce(&crate::store::sql::Conn) -> crate::store::Result<T> + Send + 'static {
        let (max_attempts, rpm_for) = (i64::from(self.max_attempts), self.rpm_for.clone());
        let rules = self.rules.get();
        move |c| {
            let replan = Replan {
                now: now_ms(),
                max_attempts,
                rpm_for: &*rpm_for,
                rules: &rules,
            };
            f(c, &replan)
        }
    }

    /// Packs batches for jobs whose waiting items should go now: the job is fully read, a full
    /// batch is waiting, or the oldest item waited `max_wait`. Returns when to look again.
    async fn pack_ready(&self, lane: &Lane) -> anyhow::Result<Option<i64>> {
        let rules = self.rules.get();
        let max_requests = self.settings.max_requests as i64;
        let waiting = self
            .store
            .call(move |c| {
                let now = now_ms();
                // Items a budget parked until now are ready again.
                crate::store::budget::unpark_due(c, now)?;
                batches::waiting_jobs(c, now, &rules.windows.closed_ranks(now), max_requests)
            })
            .await?;
        let max_bytes = lane.max_bytes;
        let max_wait = self.settings.max_wait.as_millis() as i64;
        let mut next: Option<i64> = None;
        for job in waiting {
            let now = now_ms();
            let all = job.ingested || now - job.oldest_at >= max_wait;
            if !all && job.waiting < max_requests {
                let at = job.oldest_at + max_wait;
                next = Some(next.map_or(at, |n| n.min(at)));
                continue;
            }
            let span = tracing::info_span!("pack", job = %job.name);
            self.pack_job(job.job_id, all, max_requests, max_bytes)
                .instrument(span)
                .await?;
        }
        Ok(next)
    }

    /// Packs batches of one job: all it has waiting (`all`), or one full batch. Each batch goes
    /// to the first usable route (in name order) with items of the tenants it allows; items
    /// no usable route allows wait.
    async fn pack_job(
        &self,
        job_id: i64,
        all: bool,
        max_requests: i64,
        max_bytes: i64,
    ) -> anyhow::Result<()> {
        let routes = self.pack_routes();
        loop {
            let mut packed = None;
            for (name, tenants) in &routes {
                let (route, allowed) = (name.clone(), tenants.clone());
                let holder = self.holder.clone();
                let found = self
                    .replanning(move |c, r| {
                        let route = PackRoute {
                            name: &route,
                            tenants: allowed.as_deref(),
                        };
                        let size = (max_requests, max_bytes);
                        apply::pack(c, job_id, &route, size, r.rules, &holder, r.now)
                    })
                    .await?;
                // A budget may have ended items (rejected) while packing.
                self.results_wake.notify_one();
                if let Some(batch_id) = found {
                    packed = Some((batch_id, name));
                    break;
                }
                if tenants.is_none() {
                    break; // a route for everyone found nothing: no route after it will
                }
            }
            let Some((batch_id, route)) = packed else {
                self.tell_unserved(job_id).await?;
                break;
            };
            tracing::info!(batch = batch_id, %route, "batch packed");
            if !all {
                break; // one full batch; the rest waits for more items or for max_wait
            }
        }
        Ok(())
    }

    /// Once per job and start, when nothing of it could be packed: its waiting tenants that no
    /// route allows are told (the log, and `status`).
    async fn tell_unserved(&self, job_id: i64) -> anyhow::Result<()> {
        if !crate::lock(&self.tenants_checked).insert(job_id) {
            return Ok(());
        }
        let tenants = self
            .store
            .call(move |c| batches::waiting_tenants(c, job_id))
            .await?;
        let routing = crate::lock(&self.routing);
        for tenant in tenants.iter().filter(|t| !routing.serves(t)) {
            self.unserved.tell(tenant);
        }
        Ok(())
    }

    /// The routes a batch may be packed for now, in name order: usable (neither paused nor
    /// unreachable), each with the tenants it allows (`None`: everyone).
    fn pack_routes(&self) -> Vec<(String, Option<Vec<String>>)> {
        let routing = crate::lock(&self.routing);
        let now = Instant::now();
        (0..routing.route_names().len())
            .filter(|&i| routing.usable(i, now))
            .map(|i| {
                (
                    routing.route_name(i).to_owned(),
                    routing.tenants(i).map(<[String]>::to_vec),
                )
            })
            .collect()
    }

    /// The route of a batch (its index among the clients), or None when it is no longer in the
    /// config: said once in the log; the batch is left as it is.
    fn route_of(&self, batch: &BatchRow, lane: &mut Lane) -> Option<usize> {
        let route = crate::lock(&self.routing).route_index(&batch.route);
        if route.is_none() && lane.lost_routes.insert(batch.route.clone()) {
            tracing::error!(
                route = %batch.route,
                "batches of a route no longer in the config are left as they are, their items with them: put the route back (and restart) to follow them"
            );
        }
        route
    }

    /// A batch whose route is no longer in the config (the one route `default` of an earlier
    /// version, say, before `[routes]` was written): a created batch is looked up with each
    /// route's key, and the route that finds it (its organization's) takes it over; an intent
    /// never sent has its items packed again for a route of today. Once per batch and start:
    /// what no route finds is left as it is (`route_of` said so).
    async fn adopt(
        &self,
        batch: &BatchRow,
        lane: &mut Lane,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<usize>> {
        if !lane.adoption_tried.insert(batch.id) {
            return Ok(None);
        }
        let id = batch.id;
        let Some(api_id) = &batch.api_id else {
            if batch.create_unknown {
                // It may have been created with a key no route has now: nothing to look with.
                return Ok(None);
            }
            let why = format!(
                "route {} is no longer in the config and its batch was never sent",
                batch.route
            );
            self.unroute(id, why).await?;
            return Ok(None);
        };
        for (route, client) in self.clients.iter().enumerate() {
            lane.pacer.ready().await;
            let Some(answer) = self.call(shutdown, client.get_batch(api_id)).await else {
                return Ok(None);
            };
            if let crate::api::batches::BatchCall::Done(_) = answer {
                let name = client.route_name().to_owned();
                tracing::warn!(
                    old_route = %batch.route,
                    route = %name,
                    "a batch of a route no longer in the config is found with this route's key; the route takes it over"
                );
                self.store
                    .call(move |c| batches::set_route(c, id, &name))
                    .await?;
                return Ok(Some(route));
            }
        }
        Ok(None)
    }

    /// Whether a route may take a batch now, and if not, why (its pause's reason, say).
    fn route_usable(&self, route: usize) -> Result<(), String> {
        let routing = crate::lock(&self.routing);
        let now = Instant::now();
        if routing.usable(route, now) {
            return Ok(());
        }
        let state = routing.routes(now).swap_remove(route);
        Err(format!(
            "route {} is {}: {}",
            state.name,
            state.state,
            state.reason.unwrap_or_default()
        ))
    }

    /// Acts on every batch that is due. Returns when the next one is.
    async fn work_batches(
        &self,
        lane: &mut Lane,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<i64>> {
        let holder = self.holder.clone();
        let (open, unresolved) = self
            .store
            .call(move |c| {
                let open = batches::claim_open(c, &holder, now_ms())?;
                Ok((open, batches::unresolved_routes(c)?))
            })
            .await?;
        // While a create call's outcome is unknown (whichever daemon sent it), no other create
        // goes out on its route, nor on one of its organization (see the module doc): a search
        // for the lost batch must not find another's.
        let unresolved: Vec<&str> = unresolved.iter().map(String::as_str).collect();
        let held = held_routes(&crate::lock(&self.routing), &unresolved);
        let mut next: Option<i64> = None;
        for batch in &open {
            if shutdown.is_cancelled() {
                break;
            }
            if lane.is_applying(batch.id) {
                continue;
            }
            let route = match self.route_of(batch, lane) {
                Some(route) => route,
                None => match self.adopt(batch, lane, shutdown).await? {
                    Some(route) => route,
                    None => continue,
                },
            };
            if batch.next_action_at > now_ms() {
                next = Some(next.map_or(batch.next_action_at, |n| n.min(batch.next_action_at)));
                continue;
            }
            let span = tracing::info_span!(
                "batch",
                job = %batch.job_name,
                batch = batch.id,
                api_id = batch.api_id.as_deref().unwrap_or("-"),
                route = %batch.route
            );
            let outcome = self
                .work_batch(batch, route, held.contains(&route), lane, shutdown)
                .instrument(span)
                .await?;
            let at = match outcome {
                Next::At(at) => at,
                Next::Now => now_ms(),
            };
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        Ok(next)
    }

    /// The next step of one batch that is due: drop, reconcile, create, poll or apply its results,
    /// each call with the client of its `route`. `held`: a create call of its route (or its
    /// organization) is unresolved.
    async fn work_batch(
        &self,
        batch: &BatchRow,
        route: usize,
        held: bool,
        lane: &mut Lane,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Next> {
        let outcome = match (&batch.api_id, batch.state) {
            (None, _) if batch.cancel_requested && !batch.create_unknown => {
                let id = batch.id;
                self.store
                    .call(move |c| apply::drop_uncreated(c, id, now_ms()))
                    .await?;
                self.results_wake.notify_one();
                Next::Now
            }
            (None, _) if batch.create_unknown => {
                self.reconcile(batch, route, lane, shutdown).await?
            }
            (None, _) if held => Next::At(now_ms() + 1000),
            (None, _) => match self.route_usable(route) {
                Ok(()) => self.create(batch, route, lane, shutdown).await?,
                // Paused or unreachable since it was packed: its items go to another route.
                Err(why) => self.unroute(batch.id, why).await?,
            },
            (Some(api_id), BatchState::Ended) => {
                self.apply_results(batch, route, api_id, lane, shutdown)
                    .await?
            }
            (Some(api_id), _) => self.poll(batch, route, api_id, lane, shutdown).await?,
        };
        Ok(outcome)
    }

    /// A batch never created whose route cannot take it (paused, unreachable, or it refused the
    /// account): it is given up, its items go back to be packed for a usable route (no attempt
    /// is used up), or wait for one.
    pub(super) async fn unroute(&self, id: i64, why: String) -> anyhow::Result<Next> {
        tracing::warn!(reason = %why, "the batch's route cannot take it; its items are packed again for another route");
        self.replanning(move |c, replan| {
            apply::fail_batch(c, id, &why, apply::Failure::RouteBlocked, replan)
        })
        .await?;
        self.wake_all();
        Ok(Next::Now)
    }

    pub(super) fn wake_all(&self) {
        self.results_wake.notify_one();
        self.realtime_wake.notify_one();
        self.wake.notify_one();
    }
}

/// The routes no create call may go out on: those of `unresolved` batches (whose create call's
/// outcome is unknown) and the routes known to share their organizations. A route no longer in
/// the config holds nothing back.
fn held_routes(routing: &Routing, unresolved: &[&str]) -> Vec<usize> {
    let unresolved: Vec<usize> = unresolved
        .iter()
        .filter_map(|name| routing.route_index(name))
        .collect();
    // Two routes whose organizations are not known yet may be one organization: an unresolved
    // create on one holds the others back too (their batches would show in the same list).
    let unknown = |i: usize| routing.label_of(i).is_none();
    (0..routing.route_names().len())
        .filter(|&i| {
            unresolved
                .iter()
                .any(|&u| routing.same_organization(u, i) || (unknown(u) && unknown(i)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::quota::{ClassLimits, Configured, ModelLimits, OutputReservation};
    use crate::policy::routing::RouteSpec;

    fn routing(names: &[&str]) -> Routing {
        let configured: Configured = Arc::new(|_: &str| {
            ClassLimits::ceiling(ModelLimits {
                rpm: Some(60),
                itpm: None,
                otpm: None,
            })
        });
        let specs = names
            .iter()
            .map(|n| RouteSpec {
                name: (*n).to_owned(),
                tenants: None,
            })
            .collect();
        let settings = crate::policy::quota::QuotaSettings {
            reserve: 0.0,
            output_reservation: OutputReservation::MaxTokens,
            max_concurrency: 4,
            initial_concurrency: 4,
        };
        Routing::new(specs, configured, settings)
    }

    #[test]
    fn an_unresolved_create_holds_back_its_route_and_every_route_that_may_share_its_organization() {
        let mut r = routing(&["a", "a2", "b"]);
        assert!(held_routes(&r, &[]).is_empty());
        assert_eq!(
            held_routes(&r, &["a"]),
            vec![0, 1, 2],
            "organizations not known yet: any may be a's"
        );
        r.learn(0, Some("org-a"), None, true);
        r.learn(1, Some("org-a"), None, true);
        r.learn(2, Some("org-b"), None, true);
        assert_eq!(
            held_routes(&r, &["a"]),
            vec![0, 1],
            "one organization, one list"
        );
        assert_eq!(held_routes(&r, &["b", "b"]), vec![2]);
        assert!(held_routes(&r, &["gone"]).is_empty());
    }
}
