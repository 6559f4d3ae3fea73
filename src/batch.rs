//! The Message Batches lane: packs a job's batch items into batches, records the intent before the
//! create call and the id right after, polls with growing intervals, streams the results and
//! applies each line idempotently. Expired items and retryable errors go back to the planner.
//!
//! Crash safety: before each create call the batch is flagged `create_unknown`; only an answer
//! that says nothing was created clears it. A batch still flagged (a crash mid-call, a lost
//! answer) is looked up in the list endpoint (creation time and request count) before anything is
//! sent again, so a crash between the call and recording the id never makes a second batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiClient, BatchCall, without_stream};
use crate::config::BatchSettings;
use crate::store::batches::{self, BatchRow, Replan};
use crate::store::{Store, now_ms};

/// How far from the intent a found batch's creation time may be (clocks differ, calls queue).
const RECONCILE_WINDOW_MS: i64 = 10 * 60_000;
/// Result lines per transaction.
const APPLY_LINES: usize = 1_000;
/// How often items are re-routed between the lanes as deadlines near.
const REROUTE_EVERY: Duration = Duration::from_secs(10);
/// Pages of the batch list searched at most when reconciling.
const MAX_LIST_PAGES: u32 = 50;

#[derive(Clone)]
pub struct BatchLane {
    pub store: Store,
    pub client: ApiClient,
    pub settings: BatchSettings,
    pub max_attempts: u32,
    pub rpm_for: crate::planner::RpmFor,
    /// Poked when items may be waiting (intake) or went back to the planner.
    pub wake: Arc<Notify>,
    /// Poked for the real-time lane when items come back routed to it.
    pub realtime_wake: Arc<Notify>,
    pub results_wake: Arc<Notify>,
}

/// Spaces calls to the batch endpoints under their RPM.
struct Pacer {
    interval: Duration,
    next: Instant,
}

impl Pacer {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.next.into()).await;
        self.next = Instant::now().max(self.next) + self.interval;
    }
}

/// What the last action on a batch asks of the loop.
enum Next {
    At(i64),
    Now,
}

impl BatchLane {
    /// Runs until `shutdown`. Batches under way stay recorded; the next start polls them again.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut pacer = Pacer {
            interval: Duration::from_secs_f64(60.0 / self.settings.rpm as f64),
            next: Instant::now(),
        };
        let mut last_reroute = Instant::now();
        while !shutdown.is_cancelled() {
            let canceled = self
                .store
                .call(|c| batches::take_cancel_requests(c, now_ms()))
                .await?;
            for job in canceled {
                tracing::info!(job = %job, "job canceled: pending items end canceled, its batches are being canceled");
                self.results_wake.notify_one();
            }
            if last_reroute.elapsed() >= REROUTE_EVERY {
                last_reroute = Instant::now();
                let (to_realtime, to_batch) =
                    self.store.call(|c| batches::reroute(c, now_ms())).await?;
                if to_realtime > 0 || to_batch > 0 {
                    tracing::info!(to_realtime, to_batch, "items re-routed between the lanes");
                    self.realtime_wake.notify_one();
                }
            }
            let next_pack = self.pack_ready().await?;
            let next_batch = self.work_batches(&mut pacer, &shutdown).await?;
            let next = [next_pack, next_batch].into_iter().flatten().min();
            let sleep = next.map_or(Duration::from_secs(1), |at| {
                Duration::from_millis((at - now_ms()).clamp(0, 1000) as u64)
            });
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        Ok(())
    }

    fn replan(&self) -> (i64, crate::planner::RpmFor) {
        (i64::from(self.max_attempts), self.rpm_for.clone())
    }

    /// Packs batches for jobs whose waiting items should go now: the job is fully read, a full
    /// batch is waiting, or the oldest item waited `max_wait`. Returns when to look again.
    async fn pack_ready(&self) -> anyhow::Result<Option<i64>> {
        let waiting = self.store.call(batches::waiting_jobs).await?;
        let max_requests = self.settings.max_requests as i64;
        let max_bytes = self.settings.max_bytes as i64;
        let max_wait = self.settings.max_wait.as_millis() as i64;
        let mut next: Option<i64> = None;
        for job in waiting {
            let now = now_ms();
            let all = job.ingested || now - job.oldest_at >= max_wait;
            if !all && job.waiting < max_requests {
                next = Some(next.map_or(job.oldest_at + max_wait, |n| {
                    n.min(job.oldest_at + max_wait)
                }));
                continue;
            }
            loop {
                let job_id = job.job_id;
                let packed = self
                    .store
                    .call(move |c| batches::pack(c, job_id, max_requests, max_bytes, now_ms()))
                    .await?;
                let Some(batch_id) = packed else { break };
                tracing::info!(job = %job.name, batch = batch_id, "batch packed");
                if !all {
                    break; // one full batch; the rest waits for more items or for max_wait
                }
            }
        }
        Ok(next)
    }

    /// Acts on every batch that is due. Returns when the next one is.
    async fn work_batches(
        &self,
        pacer: &mut Pacer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<i64>> {
        let open = self.store.call(batches::open).await?;
        let mut next: Option<i64> = None;
        for batch in open {
            if shutdown.is_cancelled() {
                break;
            }
            if batch.next_action_at > now_ms() {
                next = Some(next.map_or(batch.next_action_at, |n| n.min(batch.next_action_at)));
                continue;
            }
            let span = tracing::info_span!("batch", job = %batch.job_name, batch = batch.id, api_id = batch.api_id.as_deref().unwrap_or("-"));
            let _entered = span.enter();
            let outcome = match (&batch.api_id, batch.state.as_str()) {
                (None, _) if batch.cancel_requested && !batch.create_unknown => {
                    let id = batch.id;
                    self.store
                        .call(move |c| batches::drop_uncreated(c, id, now_ms()))
                        .await?;
                    self.results_wake.notify_one();
                    Next::Now
                }
                (None, _) if batch.create_unknown => self.reconcile(&batch, pacer).await?,
                (None, _) => self.create(&batch, pacer).await?,
                (Some(api_id), "ended") => {
                    self.apply_results(&batch, api_id, pacer, shutdown).await?
                }
                (Some(api_id), _) => self.poll(&batch, api_id, pacer, shutdown).await?,
            };
            if let Next::At(at) = outcome {
                next = Some(next.map_or(at, |n| n.min(at)));
            } else {
                next = Some(now_ms());
            }
        }
        Ok(next)
    }

    async fn create(&self, batch: &BatchRow, pacer: &mut Pacer) -> anyhow::Result<Next> {
        let id = batch.id;
        let requests = self.store.call(move |c| batches::requests(c, id)).await?;
        let mut body = String::with_capacity(
            requests
                .iter()
                .map(|(c, p)| c.len() + p.len() + 32)
                .sum::<usize>()
                + 16,
        );
        body.push_str("{\"requests\":[");
        for (i, (custom_id, params)) in requests.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str("{\"custom_id\":");
            body.push_str(&serde_json::Value::String(custom_id.clone()).to_string());
            body.push_str(",\"params\":");
            body.push_str(&without_stream(params));
            body.push('}');
        }
        body.push_str("]}");
        drop(requests);
        // The marker goes in before the call: a crash from here on leads to a search, not a resend.
        let now = now_ms();
        self.store
            .call(move |c| batches::record_create_retry(c, id, now, true, "create call under way"))
            .await?;
        pacer.ready().await;
        let answer = self.client.create_batch(body).await;
        let now = now_ms();
        let poll_min = self.settings.poll_min.as_millis() as i64;
        match answer {
            BatchCall::Done(api) => {
                tracing::info!(api_id = %api.id, requests = batch.request_count, "batch created");
                let state = api.state();
                self.store
                    .call(move |c| {
                        batches::record_created(c, id, &state, now, now + poll_min, poll_min)
                    })
                    .await?;
                Ok(Next::At(now + poll_min))
            }
            BatchCall::Wait {
                retry_after,
                message,
            } => {
                let at = now + retry_after.map_or(10_000, |d| d.as_millis() as i64);
                tracing::warn!(%message, "batch create call rate-limited; waiting");
                self.store
                    .call(move |c| batches::record_create_retry(c, id, at, false, &message))
                    .await?;
                Ok(Next::At(at))
            }
            BatchCall::Retry {
                maybe_done,
                message,
            } => {
                let at = now + poll_min;
                tracing::warn!(%message, maybe_done, "batch create call failed; will look and retry");
                self.store
                    .call(move |c| batches::record_create_retry(c, id, at, maybe_done, &message))
                    .await?;
                Ok(Next::At(at))
            }
            BatchCall::Refused { status, message } => {
                tracing::error!(status, %message, "the API refused the batch; its items go back to the planner");
                let (max_attempts, rpm_for) = self.replan();
                let error = format!("HTTP {status}: {message}");
                self.store
                    .call(move |c| {
                        let replan = Replan {
                            now: now_ms(),
                            max_attempts,
                            rpm_for: &*rpm_for,
                        };
                        batches::record_create_refused(c, id, &error, &replan)
                    })
                    .await?;
                self.wake_all();
                Ok(Next::Now)
            }
        }
    }

    /// A create call may have reached the API: look for the batch it made before sending again.
    async fn reconcile(&self, batch: &BatchRow, pacer: &mut Pacer) -> anyhow::Result<Next> {
        let known = self.store.call(batches::known_api_ids).await?;
        let (from, to) = (
            batch.intent_at - RECONCILE_WINDOW_MS,
            batch.intent_at + RECONCILE_WINDOW_MS,
        );
        let mut after: Option<String> = None;
        let mut found: Option<crate::api::ApiBatch> = None;
        'pages: for _ in 0..MAX_LIST_PAGES {
            pacer.ready().await;
            let page = match self.client.list_batches(after.as_deref(), 100).await {
                BatchCall::Done(page) => page,
                BatchCall::Wait { retry_after, .. } => {
                    return Ok(Next::At(
                        now_ms() + retry_after.map_or(10_000, |d| d.as_millis() as i64),
                    ));
                }
                BatchCall::Retry { message, .. } | BatchCall::Refused { message, .. } => {
                    tracing::warn!(%message, "listing batches to reconcile failed; will retry");
                    let at = now_ms() + self.settings.poll_min.as_millis() as i64;
                    let id = batch.id;
                    self.store
                        .call(move |c| batches::set_next_action(c, id, at, Some(&message)))
                        .await?;
                    return Ok(Next::At(at));
                }
            };
            for candidate in &page.data {
                let state = candidate.state();
                let Some(created) = state.created_at else {
                    continue;
                };
                if created < from {
                    break 'pages; // newest first: nothing older can match
                }
                if created <= to
                    && state.counts.total() == batch.request_count
                    && !known.contains(&candidate.id)
                    && found.as_ref().is_none_or(|f| {
                        (f.state().created_at.unwrap_or(0) - batch.intent_at).abs()
                            > (created - batch.intent_at).abs()
                    })
                {
                    found = Some(candidate.clone());
                }
            }
            if !page.has_more {
                break;
            }
            after = page.last_id.clone();
        }
        let id = batch.id;
        let now = now_ms();
        match found {
            Some(api) => {
                tracing::warn!(api_id = %api.id, "the earlier create call had gone through: adopting its batch, nothing is sent again");
                let state = api.state();
                self.store
                    .call(move |c| batches::record_created(c, id, &state, now, now, 0))
                    .await?;
            }
            None => {
                tracing::info!("no batch of the earlier create call exists: sending it now");
                self.store
                    .call(move |c| {
                        batches::record_create_retry(c, id, now, false, "reconciled: not created")
                    })
                    .await?;
            }
        }
        Ok(Next::Now)
    }

    async fn poll(
        &self,
        batch: &BatchRow,
        api_id: &str,
        pacer: &mut Pacer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Next> {
        let id = batch.id;
        if batch.cancel_requested && batch.state == "in_progress" {
            pacer.ready().await;
            match self.client.cancel_batch(api_id).await {
                BatchCall::Done(api) => {
                    tracing::info!(status = %api.processing_status, "batch cancel requested")
                }
                BatchCall::Refused { message, .. } => {
                    tracing::warn!(%message, "batch cancel refused")
                }
                BatchCall::Wait { message, .. } | BatchCall::Retry { message, .. } => {
                    tracing::warn!(%message, "batch cancel call failed; will retry");
                    return Ok(Next::At(
                        now_ms() + self.settings.poll_min.as_millis() as i64,
                    ));
                }
            }
        }
        pacer.ready().await;
        let answer = self.client.get_batch(api_id).await;
        let now = now_ms();
        let poll_min = self.settings.poll_min.as_millis() as i64;
        let poll_max = self.settings.poll_max.as_millis() as i64;
        match answer {
            BatchCall::Done(api) => {
                let state = api.state();
                let ended = state.status == "ended";
                let interval = if batch.poll_interval_ms <= 0 {
                    poll_min
                } else {
                    (batch.poll_interval_ms * 3 / 2).clamp(poll_min, poll_max)
                };
                let at = if ended { now } else { now + interval };
                self.store
                    .call(move |c| batches::record_poll(c, id, &state, at, interval))
                    .await?;
                if ended {
                    tracing::info!(counts = ?api.request_counts, "batch ended");
                    let mut ended_batch = batch.clone();
                    ended_batch.state = "ended".into();
                    return self
                        .apply_results(&ended_batch, api_id, pacer, shutdown)
                        .await;
                }
                Ok(Next::At(at))
            }
            BatchCall::Wait { retry_after, .. } => Ok(self
                .later(
                    id,
                    now + retry_after.map_or(10_000, |d| d.as_millis() as i64),
                    None,
                )
                .await?),
            BatchCall::Retry { message, .. } => Ok(self
                .later(
                    id,
                    now + poll_min.max(batch.poll_interval_ms),
                    Some(message),
                )
                .await?),
            BatchCall::Refused { status, message } => {
                tracing::error!(status, %message, "polling the batch was refused; trying again later");
                Ok(self
                    .later(
                        id,
                        now + poll_max,
                        Some(format!("HTTP {status}: {message}")),
                    )
                    .await?)
            }
        }
    }

    async fn later(&self, id: i64, at: i64, error: Option<String>) -> anyhow::Result<Next> {
        self.store
            .call(move |c| batches::set_next_action(c, id, at, error.as_deref()))
            .await?;
        Ok(Next::At(at))
    }

    /// Streams the results of an ended batch and applies them, a transaction per chunk of lines.
    async fn apply_results(
        &self,
        batch: &BatchRow,
        api_id: &str,
        pacer: &mut Pacer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Next> {
        let id = batch.id;
        pacer.ready().await;
        let mut response = match self.client.batch_results(api_id).await {
            BatchCall::Done(r) => r,
            BatchCall::Wait { retry_after, .. } => {
                return self
                    .later(
                        id,
                        now_ms() + retry_after.map_or(10_000, |d| d.as_millis() as i64),
                        None,
                    )
                    .await;
            }
            BatchCall::Retry { message, .. } | BatchCall::Refused { message, .. } => {
                tracing::warn!(%message, "downloading batch results failed; will retry");
                return self
                    .later(
                        id,
                        now_ms() + self.settings.poll_min.as_millis() as i64,
                        Some(message),
                    )
                    .await;
            }
        };
        let mut pending: Vec<u8> = Vec::new();
        let mut lines: Vec<String> = Vec::with_capacity(APPLY_LINES);
        let mut applied = 0usize;
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "batch results cut off; applying again later (it is idempotent)");
                    return self
                        .later(
                            id,
                            now_ms() + self.settings.poll_min.as_millis() as i64,
                            Some(e.to_string()),
                        )
                        .await;
                }
            };
            pending.extend_from_slice(&chunk);
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line).trim().to_owned();
                if !text.is_empty() {
                    lines.push(text);
                }
            }
            if lines.len() >= APPLY_LINES {
                applied += self
                    .apply_chunk(id, api_id, std::mem::take(&mut lines))
                    .await?;
                if shutdown.is_cancelled() {
                    return Ok(Next::Now); // resumed at the next start
                }
            }
        }
        let rest = String::from_utf8_lossy(&pending).trim().to_owned();
        if !rest.is_empty() {
            lines.push(rest);
        }
        applied += self.apply_chunk(id, api_id, lines).await?;
        let (max_attempts, rpm_for) = self.replan();
        let leftovers = self
            .store
            .call(move |c| {
                let replan = Replan {
                    now: now_ms(),
                    max_attempts,
                    rpm_for: &*rpm_for,
                };
                batches::finish_results(c, id, &replan)
            })
            .await?;
        if leftovers > 0 {
            tracing::warn!(
                leftovers,
                "the batch's results lacked some items; they went back to the planner"
            );
        }
        tracing::info!(applied, "batch results applied");
        self.wake_all();
        Ok(Next::Now)
    }

    async fn apply_chunk(
        &self,
        id: i64,
        api_id: &str,
        lines: Vec<String>,
    ) -> anyhow::Result<usize> {
        if lines.is_empty() {
            return Ok(0);
        }
        let (max_attempts, rpm_for) = self.replan();
        let api_id = api_id.to_owned();
        let n = self
            .store
            .call(move |c| {
                let replan = Replan {
                    now: now_ms(),
                    max_attempts,
                    rpm_for: &*rpm_for,
                };
                batches::apply_results(c, id, &api_id, &lines, &replan)
            })
            .await?;
        self.results_wake.notify_one();
        Ok(n)
    }

    fn wake_all(&self) {
        self.results_wake.notify_one();
        self.realtime_wake.notify_one();
        self.wake.notify_one();
    }
}
