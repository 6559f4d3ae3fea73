//! Following a created batch: polls with growing intervals, cancels when asked, and streams and
//! applies the results of an ended batch (a transaction per chunk of lines, idempotent).

use tokio_util::sync::CancellationToken;

use super::{APPLY_LINES, BatchLane, Lane, MAX_REFUSALS, Next, apply};
use crate::api::batches::BatchCall;
use crate::model::state::BatchState;
use crate::store::batches::{self, BatchRow};
use crate::store::now_ms;

impl BatchLane {
    pub(super) async fn poll(
        &self,
        batch: &BatchRow,
        api_id: &str,
        lane: &mut Lane,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Next> {
        let id = batch.id;
        let poll_min = self.settings.poll_min.as_millis() as i64;
        let poll_max = self.settings.poll_max.as_millis() as i64;
        if batch.cancel_requested && batch.state == BatchState::InProgress {
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
                    let c = api.request_counts;
                    tracing::info!(
                        processing = c.processing,
                        succeeded = c.succeeded,
                        errored = c.errored,
                        expired = c.expired,
                        canceled = c.canceled,
                        "batch ended"
                    );
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

    pub(super) async fn later(
        &self,
        id: i64,
        at: i64,
        error: Option<String>,
    ) -> anyhow::Result<Next> {
        self.store
            .call(move |c| batches::set_next_action(c, id, at, error.as_deref()))
            .await?;
        Ok(Next::At(at))
    }

    /// The API refused to show a batch or its results (404: deleted; results gone after 29 days).
    /// After [`MAX_REFUSALS`] in a row, its items go back to the planner.
    pub(super) async fn refused(&self, id: i64, error: String) -> anyhow::Result<Next> {
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
        self.replanning(move |c, replan| {
            apply::fail_batch(c, id, &error, apply::Failure::Unreadable, replan)
        })
        .await?;
        self.wake_all();
        Ok(Next::Now)
    }

    /// Streams the results of an ended batch and applies them, a transaction per chunk of lines.
    pub(super) async fn apply_results(
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
            .replanning(move |c, replan| apply::finish_results(c, id, replan))
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

    pub(super) async fn apply_chunk(
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
            .replanning(move |c, replan| apply::apply_results(c, id, &api_id, &lines, replan))
            .await?;
        self.results_wake.notify_one();
        Ok(n)
    }
}
