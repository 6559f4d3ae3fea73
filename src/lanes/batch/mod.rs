//! The Message Batches lane: packs a job's batch items into batches, records the intent before the
//! create call and the id right after, polls with growing intervals, streams the results and
//! applies each line idempotently. Expired items and retryable errors go back to the planner.
//!
//! Crash safety: just before each create call the batch is flagged `create_unknown` with the time
//! of the call; only an answer that says nothing was created clears it. A batch still flagged (a
//! crash mid-call, a lost answer) is looked up in the list endpoint (creation time near the call,
//! same request count) before anything is sent again, so a crash between the call and recording
//! the id never makes a second batch. While one batch is unresolved no other create call goes out,
//! so a match can only be that batch's.

pub mod apply;
mod create;
mod poll;
mod preflight;
mod retry;
pub mod staged;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::ApiClient;
use crate::config::{BatchSettings, Live};
use crate::lanes::admission::Rules;
use crate::model::state::BatchState;
use crate::policy::preflight::ShapeVerdict;
use crate::store::batches::{self, BatchRow};
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
    pub client: ApiClient,
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
    /// Set when the API refuses the account: no create calls until then.
    pub(super) paused_until: Option<Instant>,
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
            paused_until: None,
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
        f: impl FnOnce(&rusqlite::Connection, &Replan<'_>) -> crate::store::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        Ok(self.store.call(self.with_replan(f)).await?)
    }

    /// `f` as a store op, given what sending items back to the planner needs (read now, `now`
    /// taken when it runs).
    pub(super) fn with_replan<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection, &Replan<'_>) -> crate::store::Result<T> + Send + 'static,
    ) -> impl FnOnce(&rusqlite::Connection) -> crate::store::Result<T> + Send + 'static {
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

    /// Packs batches of one job: all it has waiting (`all`), or one full batch.
    async fn pack_job(
        &self,
        job_id: i64,
        all: bool,
        max_requests: i64,
        max_bytes: i64,
    ) -> anyhow::Result<()> {
        loop {
            let packed = self
                .replanning(move |c, r| {
                    apply::pack(c, job_id, max_requests, max_bytes, r.rules, r.now)
                })
                .await?;
            // A budget may have ended items (rejected) while packing.
            self.results_wake.notify_one();
            let Some(batch_id) = packed else { break };
            tracing::info!(batch = batch_id, "batch packed");
            if !all {
                break; // one full batch; the rest waits for more items or for max_wait
            }
        }
        Ok(())
    }

    /// Acts on every batch that is due. Returns when the next one is.
    async fn work_batches(
        &self,
        lane: &mut Lane,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<i64>> {
        let open = self.store.call(batches::open).await?;
        // While a create call's outcome is unknown, no other create goes out (see the module doc).
        let unresolved = open.iter().any(|b| b.api_id.is_none() && b.create_unknown);
        let mut next: Option<i64> = None;
        for batch in open {
            if shutdown.is_cancelled() {
                break;
            }
            if lane.is_applying(batch.id) {
                continue;
            }
            if batch.next_action_at > now_ms() {
                next = Some(next.map_or(batch.next_action_at, |n| n.min(batch.next_action_at)));
                continue;
            }
            let span = tracing::info_span!(
                "batch",
                job = %batch.job_name,
                batch = batch.id,
                api_id = batch.api_id.as_deref().unwrap_or("-")
            );
            let outcome = self
                .work_batch(&batch, unresolved, lane, shutdown)
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

    /// The next step of one batch that is due: drop, reconcile, create, poll or apply its results.
    async fn work_batch(
        &self,
        batch: &BatchRow,
        unresolved: bool,
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
            (None, _) if batch.create_unknown => self.reconcile(batch, lane, shutdown).await?,
            (None, _) if unresolved => Next::At(now_ms() + 1000),
            (None, _) => match lane.paused_until {
                Some(until) if until > Instant::now() => {
                    Next::At(now_ms() + until.duration_since(Instant::now()).as_millis() as i64)
                }
                _ => self.create(batch, lane, shutdown).await?,
            },
            (Some(api_id), BatchState::Ended) => {
                self.apply_results(batch, api_id, lane, shutdown).await?
            }
            (Some(api_id), _) => self.poll(batch, api_id, lane, shutdown).await?,
        };
        Ok(outcome)
    }

    pub(super) fn wake_all(&self) {
        self.results_wake.notify_one();
        self.realtime_wake.notify_one();
        self.wake.notify_one();
    }
}
