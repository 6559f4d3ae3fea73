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

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::ApiClient;
use crate::api::batches::{ApiBatch, BatchCall};
use crate::api::messages::without_stream;
use crate::config::{BatchSettings, Live};
use crate::store::batches::{self, BatchRow, Replan};
use crate::store::budget::Rules;
use crate::store::{Store, now_ms};

/// How far from the create call a found batch's creation time may be (clocks differ, calls queue).
const RECONCILE_WINDOW_MS: i64 = 10 * 60_000;
/// Result lines per transaction.
const APPLY_LINES: usize = 1_000;
/// Pages of the batch list searched at most when reconciling.
const MAX_LIST_PAGES: u32 = 50;
/// How often items are re-routed between the lanes as deadlines near.
const REROUTE_EVERY: Duration = Duration::from_secs(10);
/// Refused polls or downloads in a row before a batch is given up and its items re-planned.
const MAX_REFUSALS: i64 = 5;
/// How long the lane pauses when the API refuses the account (key, spend cap, usage limit).
const BLOCKED_WAIT: Duration = Duration::from_secs(300);

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

/// The lane's state between rounds.
struct Lane {
    pacer: Pacer,
    /// Set when the API refuses the account: no create calls until then.
    paused_until: Option<Instant>,
    /// Lowered when the API answers 413 to a batch of this size.
    max_bytes: i64,
}

/// What the last action on a batch asks of the loop.
enum Next {
    At(i64),
    Now,
}

impl BatchLane {
    /// Runs until `shutdown`. Batches under way stay recorded; the next start polls them again.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut lane = Lane {
            pacer: Pacer {
                interval: Duration::from_secs_f64(60.0 / self.settings.rpm as f64),
                next: Instant::now(),
            },
            paused_until: None,
            max_bytes: self.settings.max_bytes as i64,
        };
        let mut last_reroute = Instant::now();
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
        let canceled = self
            .store
            .call(|c| batches::take_cancel_requests(c, now_ms()))
            .await?;
        for job in canceled {
            tracing::info!(job = %job, "job canceled: pending items end canceled, its batches are being canceled");
            self.results_wake.notify_one();
        }
        if last_reroute.elapsed() >= REROUTE_EVERY {
            *last_reroute = Instant::now();
            let (to_realtime, to_batch) =
                self.store.call(|c| batches::reroute(c, now_ms())).await?;
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
    async fn call<T>(
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
    async fn replanning<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection, &Replan<'_>) -> crate::store::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (max_attempts, rpm_for) = (i64::from(self.max_attempts), self.rpm_for.clone());
        let rules = self.rules.get();
        Ok(self
            .store
            .call(move |c| {
                let replan = Replan {
                    now: now_ms(),
                    max_attempts,
                    rpm_for: &*rpm_for,
                    rules: &rules,
                };
                f(c, &replan)
            })
            .await?)
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
            loop {
                let job_id = job.job_id;
                let packed = self
                    .replanning(move |c, r| {
                        batches::pack(c, job_id, max_requests, max_bytes, r.rules, r.now)
                    })
                    .await?;
                // A budget may have ended items (rejected) while packing.
                self.results_wake.notify_one();
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
                (None, _) if batch.create_unknown => self.reconcile(&batch, lane, shutdown).await?,
                (None, _) if unresolved => Next::At(now_ms() + 1000),
                (None, _) => match lane.paused_until {
                    Some(until) if until > Instant::now() => {
                        Next::At(now_ms() + until.duration_since(Instant::now()).as_millis() as i64)
                    }
                    _ => self.create(&batch, lane, shutdown).await?,
                },
                (Some(api_id), "ended") => {
                    self.apply_results(&batch, api_id, lane, shutdown).await?
                }
                (Some(api_id), _) => self.poll(&batch, api_id, lane, shutdown).await?,
            };
            let at = match outcome {
                Next::At(at) => at,
                Next::Now => now_ms(),
            };
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        Ok(next)
    }

    async fn create(
        &self,
        batch: &BatchRow,
        lane: &mut Lane,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Next> {
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
        lane.pacer.ready().await;
        // The flag goes in before the call: from here on a crash leads to a search, not a resend.
        let sent_at = now_ms();
        self.store
            .call(move |c| batches::record_create_sending(c, id, sent_at))
            .await?;
        let Some(answer) = self.call(shutdown, self.client.create_batch(body)).await else {
            return Ok(Next::Now);
        };
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
                tracing::warn!(%message, "batch create call rate-limited (batch RPM or queue full); waiting");
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
                self.create_refused(batch, lane, status, message).await
            }
        }
    }

    /// A 4xx other than 429 to a create call.
    async fn create_refused(
        &self,
        batch: &BatchRow,
        lane: &mut Lane,
        status: u16,
        message: String,
    ) -> anyhow::Result<Next> {
        let id = batch.id;
        let error = format!("HTTP {status}: {message}");
        let account_blocked = (401..=403).contains(&status)
            || (status == 400
                && message.contains("reached your specified")
                && message.contains("usage limits"));
        if account_blocked {
            // Every batch would be refused alike: pause, keep the batch, fail nothing.
            tracing::error!(%error, wait_secs = BLOCKED_WAIT.as_secs(), "the API refuses this account's batches; the batch lane pauses");
            lane.paused_until = Some(Instant::now() + BLOCKED_WAIT);
            let at = now_ms() + BLOCKED_WAIT.as_millis() as i64;
            self.store
                .call(move |c| batches::record_create_retry(c, id, at, false, &error))
                .await?;
            return Ok(Next::At(at));
        }
        let too_large = status == 413;
        if too_large {
            lane.max_bytes = (lane.max_bytes / 2).max(1 << 20);
            tracing::warn!(
                max_bytes = lane.max_bytes,
                "the batch was too large; packing smaller ones"
            );
        } else {
            tracing::error!(%error, "the API refused the batch; its items go back to the planner");
        }
        self.replanning(move |c, replan| {
            batches::record_create_refused(c, id, &error, !too_large, replan)
        })
        .await?;
        self.wake_all();
        Ok(Next::Now)
    }

    /// A create call may have reached the API: look for the batch it made before sending again.
    async fn reconcile(
        &self,
        batch: &BatchRow,
        lane: &mut Lane,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Next> {
        let known = self.store.call(batches::known_api_ids).await?;
        let sent_at = batch.create_sent_at.unwrap_or(batch.intent_at);
        let (from, to) = (sent_at - RECONCILE_WINDOW_MS, sent_at + RECONCILE_WINDOW_MS);
        let mut after: Option<String> = None;
        let mut matches: Vec<ApiBatch> = Vec::new();
        let mut searched_all = false;
        for _ in 0..MAX_LIST_PAGES {
            lane.pacer.ready().await;
            let Some(answer) = self
                .call(shutdown, self.client.list_batches(after.as_deref(), 100))
                .await
            else {
                return Ok(Next::Now);
            };
            let page = match answer {
                BatchCall::Done(page) => page,
                BatchCall::Wait {
                    retry_after,
                    message,
                } => {
                    let at = now_ms() + retry_after.map_or(10_000, |d| d.as_millis() as i64);
                    return self.later(batch.id, at, Some(message)).await;
                }
                BatchCall::Retry { message, .. } | BatchCall::Refused { message, .. } => {
                    tracing::warn!(%message, "listing batches to reconcile failed; will retry");
                    let at = now_ms() + self.settings.poll_min.as_millis() as i64;
                    return self.later(batch.id, at, Some(message)).await;
                }
            };
            let mut older_than_window = false;
            for candidate in &page.data {
                let state = candidate.state();
                let Some(created) = state.created_at else {
                    continue;
                };
                if created < from {
                    older_than_window = true; // newest first: nothing further can match
                    break;
                }
                if created <= to
                    && state.counts.total() == batch.request_count
                    && !known.contains(&candidate.id)
                {
                    matches.push(candidate.clone());
                }
            }
            if older_than_window || !page.has_more {
                searched_all = true;
                break;
            }
            after = page.last_id.clone();
        }
        let id = batch.id;
        let now = now_ms();
        if !searched_all {
            // Not sure it is not there: never create on a partial search.
            tracing::warn!("the batch list is too long to search in one go; will search again");
            return self
                .later(
                    id,
                    now + self.settings.poll_max.as_millis() as i64,
                    Some("reconcile incomplete".into()),
                )
                .await;
        }
        match matches.as_slice() {
            [api] => {
                tracing::warn!(api_id = %api.id, "the earlier create call had gone through: adopting its batch, nothing is sent again");
                let state = api.state();
                self.store
                    .call(move |c| batches::record_created(c, id, &state, now, now, 0))
                    .await?;
            }
            [] => {
                tracing::info!("no batch of the earlier create call exists: sending it now");
                self.store
                    .call(move |c| {
                        batches::record_create_retry(c, id, now, false, "reconciled: not created")
                    })
                    .await?;
            }
            many => {
                let ids: Vec<&str> = many.iter().map(|b| b.id.as_str()).collect();
                let error = format!(
                    "{} batches of {} requests were created near the lost create call ({}); which is ours cannot be told: cancel the extra one at the API, or delete this job",
                    many.len(),
                    batch.request_count,
                    ids.join(", ")
                );
                tracing::error!(%error, "cannot reconcile the batch");
                return self
                    .later(
                        id,
                        now + self.settings.poll_max.as_millis() as i64,
                        Some(error),
                    )
                    .await;
            }
        }
        Ok(Next::Now)
    }

    async fn poll(
        &self,
        batch: &BatchRow,
        api_id: &str,
        lane: &mut Lane,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Next> {
        let id = batch.id;
        let poll_min = self.settings.poll_min.as_millis() as i64;
        let poll_max = self.settings.poll_max.as_millis() as i64;
        if batch.cancel_requested && batch.state == "in_progress" {
            lane.pacer.ready().await;
            let Some(answer) = self.call(shutdown, self.client.cancel_batch(api_id)).await else {
                return Ok(Next::Now);
            };
            match answer {
                BatchCall::Done(api) => {
                    tracing::info!(status = %api.processing_status, "batch cancel requested");
                    let state = api.state();
                    let at = now_ms();
                    self.store
                        .call(move |c| batches::record_poll(c, id, &state, at, poll_min))
                        .await?;
                }
                // Refused (already ended, say): carry on polling; its results say what happened.
                BatchCall::Refused { message, .. } => {
                    tracing::warn!(%message, "batch cancel refused")
                }
                BatchCall::Wait {
                    retry_after,
                    message,
                } => {
                    let at = now_ms() + retry_after.map_or(10_000, |d| d.as_millis() as i64);
                    return self.later(id, at, Some(message)).await;
                }
                BatchCall::Retry { message, .. } => {
                    return self.later(id, now_ms() + poll_min, Some(message)).await;
                }
            }
        }
        lane.pacer.ready().await;
        let Some(answer) = self.call(shutdown, self.client.get_batch(api_id)).await else {
            return Ok(Next::Now);
        };
        let now = now_ms();
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
                    return self.apply_results(batch, api_id, lane, shutdown).await;
                }
                Ok(Next::At(at))
            }
            BatchCall::Wait { retry_after, .. } => {
                self.later(
                    id,
                    now + retry_after.map_or(10_000, |d| d.as_millis() as i64),
                    None,
                )
                .await
            }
            BatchCall::Retry { message, .. } => {
                self.later(
                    id,
                    now + poll_min.max(batch.poll_interval_ms),
                    Some(message),
                )
                .await
            }
            BatchCall::Refused { status, message } => {
                self.refused(id, format!("HTTP {status}: {message}")).await
            }
        }
    }

    async fn later(&self, id: i64, at: i64, error: Option<String>) -> anyhow::Result<Next> {
        self.store
            .call(move |c| batches::set_next_action(c, id, at, error.as_deref()))
            .await?;
        Ok(Next::At(at))
    }

    /// The API refused to show a batch or its results (404: deleted; results gone after 29 days).
    /// After [`MAX_REFUSALS`] in a row, its items go back to the planner.
    async fn refused(&self, id: i64, error: String) -> anyhow::Result<Next> {
        let at = now_ms() + self.settings.poll_max.as_millis() as i64;
        let why = error.clone();
        let refusals = self
            .store
            .call(move |c| batches::record_refusal(c, id, at, &why))
            .await?;
        if refusals < MAX_REFUSALS {
            tracing::warn!(%error, refusals, "the API refused to show the batch; trying again later");
            return Ok(Next::At(at));
        }
        tracing::error!(%error, "the API keeps refusing to show the batch; its items go back to the planner");
        self.replanning(move |c, replan| batches::abandon(c, id, &error, replan))
            .await?;
        self.wake_all();
        Ok(Next::Now)
    }

    /// Streams the results of an ended batch and applies them, a transaction per chunk of lines.
    async fn apply_results(
        &self,
        batch: &BatchRow,
        api_id: &str,
        lane: &mut Lane,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Next> {
        let id = batch.id;
        let poll_min = self.settings.poll_min.as_millis() as i64;
        lane.pacer.ready().await;
        let Some(answer) = self.call(shutdown, self.client.batch_results(api_id)).await else {
            return Ok(Next::Now);
        };
        let mut response = match answer {
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
            BatchCall::Retry { message, .. } => {
                tracing::warn!(%message, "downloading batch results failed; will retry");
                return self.later(id, now_ms() + poll_min, Some(message)).await;
            }
            BatchCall::Refused { status, message } => {
                return self.refused(id, format!("HTTP {status}: {message}")).await;
            }
        };
        let mut pending: Vec<u8> = Vec::new();
        let mut lines: Vec<String> = Vec::with_capacity(APPLY_LINES);
        let mut applied = 0usize;
        loop {
            let Some(chunk) = self.call(shutdown, response.chunk()).await else {
                return Ok(Next::Now); // applied so far stays; the rest at the next start
            };
            let chunk = match chunk {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "batch results cut off; applying again later (it is idempotent)");
                    return self
                        .later(id, now_ms() + poll_min, Some(e.to_string()))
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
            }
        }
        let rest = String::from_utf8_lossy(&pending).trim().to_owned();
        if !rest.is_empty() {
            lines.push(rest);
        }
        applied += self.apply_chunk(id, api_id, lines).await?;
        let leftovers = self
            .replanning(move |c, replan| batches::finish_results(c, id, replan))
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
        let api_id = api_id.to_owned();
        let n = self
            .replanning(move |c, replan| batches::apply_results(c, id, &api_id, &lines, replan))
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
