//! Following a created batch, with the key of its route: polls with growing intervals, cancels
//! when asked, and downloads the results of an ended batch into a staged file, then applies them
//! in item order (a transaction per chunk of lines, idempotent).

use tokio_util::sync::CancellationToken;

use tracing::Instrument;

use super::{
    APPLY_BYTES, APPLY_LINES, Applying, BatchLane, Lane, MAX_REFUSALS, Next, apply, staged,
};
use crate::api::batches::BatchCall;
use crate::model::state::BatchState;
use crate::store::batches::{self, BatchRow};
use crate::store::now_ms;

impl BatchLane {
    /// Polls the batch (and cancels it first when asked) on its `route`.
    pub(super) async fn poll(
        &self,
        batch: &BatchRow,
        route: usize,
        api_id: &str,
        lane: &mut Lane,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Next> {
        let id = batch.id;
        let client = &self.clients[route];
        let poll_min = self.settings.poll_min.as_millis() as i64;
        let poll_max = self.settings.poll_max.as_millis() as i64;
        if batch.cancel_requested && batch.state == BatchState::InProgress {
            lane.pacer.ready().await;
            let Some(answer) = self.call(shutdown, client.cancel_batch(api_id)).await else {
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
                BatchCall::Refused { message, .. } | BatchCall::Blocked { message, .. } => {
                    tracing::warn!(%message, "batch cancel refused")
                }
                BatchCall::Wait {
                    retry_after,
                    message,
                    ..
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
        let Some(answer) = self.call(shutdown, client.get_batch(api_id)).await else {
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
                    return self
                        .apply_results(batch, route, api_id, lane, shutdown)
                        .await;
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
            BatchCall::Blocked {
                status, message, ..
            } => self.blocked(id, status, message).await,
        }
    }

    /// The route's account was refused on a poll or a download. The spend cap waits: the batch
    /// is still there and reading it costs nothing. A refused key or a usage limit counts as a
    /// refusal, as before routes: after [`MAX_REFUSALS`] the items go back to the planner (and
    /// so to a route that works).
    async fn blocked(&self, id: i64, status: u16, message: String) -> anyhow::Result<Next> {
        let error = format!("HTTP {status}: {message}");
        if status == 429 {
            tracing::warn!(%error, "the route's spend cap refuses to show the batch; trying again later");
            let at = now_ms() + self.settings.poll_max.as_millis() as i64;
            return self.later(id, at, Some(error)).await;
        }
        self.refused(id, error).await
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

    /// Streams the results of an ended batch from its `route` and applies them, a transaction per
    /// chunk of lines.
    pub(super) async fn apply_results(
        &self,
        batch: &BatchRow,
        route: usize,
        api_id: &str,
        lane: &mut Lane,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Next> {
        let id = batch.id;
        let client = &self.clients[route];
        let poll_min = self.settings.poll_min.as_millis() as i64;
        lane.pacer.ready().await;
        let Some(answer) = self.call(shutdown, client.batch_results(api_id)).await else {
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
            BatchCall::Blocked {
                status, message, ..
            } => return self.blocked(id, status, message).await,
        };
        let mut download = match staged::Download::start(&self.staging_dir, id).await {
            Ok(d) => d,
            Err(e) => return self.staging_failed(id, e).await,
        };
        loop {
            let Some(chunk) = self.call(shutdown, response.chunk()).await else {
                return Ok(Next::Now); // nothing applied yet; downloaded again at the next start
            };
            let chunk = match chunk {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "batch results cut off; downloading them again later");
                    return self
                        .later(id, now_ms() + poll_min, Some(e.to_string()))
                        .await;
                }
            };
            if let Err(e) = download.write(&chunk).await {
                return self.staging_failed(id, e).await;
            }
        }
        let path = match download.finish().await {
            Ok(path) => path,
            Err(e) => return self.staging_failed(id, e).await,
        };
        let index = match self.index_staged(id, &path).await {
            Ok(index) => index,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e);
            }
        };
        // One batch's results are applied at a time; while they are, the lane goes on (the
        // next batch's results are downloaded and indexed meanwhile).
        lane.applied().await;
        let (this, api_id, shutdown) = (self.clone(), api_id.to_owned(), shutdown.clone());
        let task = tokio::spawn(
            async move {
                this.apply_and_finish(id, &api_id, &path, &index, &shutdown)
                    .await
            }
            .instrument(tracing::Span::current()),
        );
        lane.applying = Some(Applying { batch_id: id, task });
        Ok(Next::Now)
    }

    /// Applies a staged results file, removes it, and ends the batch: items it had no line for go
    /// back to the planner.
    async fn apply_and_finish(
        &self,
        id: i64,
        api_id: &str,
        path: &std::path::Path,
        index: &staged::Index,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let applied = self.apply_staged(id, api_id, path, index, shutdown).await;
        // Applied or not, the copy is done with: what is left is downloaded again.
        staged::recycle(path).await;
        let Some(applied) = applied? else {
            return Ok(()); // shutdown: the rest at the next start
        };
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
        Ok(())
    }

    /// Where each line of a staged results file is, for the items still waiting for it.
    async fn index_staged(&self, id: i64, path: &std::path::Path) -> anyhow::Result<staged::Index> {
        // Read beside the writer, which may be busy applying the batch before.
        let waiting = self
            .store
            .read(move |c| batches::in_flight_ids(c, id))
            .await?;
        let path = path.to_owned();
        let index = tokio::task::spawn_blocking(move || staged::index(&path, &waiting)).await??;
        if index.unreadable > 0 {
            tracing::warn!(
                lines = index.unreadable,
                "batch results lines that are not results; skipped"
            );
        }
        Ok(index)
    }

    /// Applies a staged results file in item order, a transaction per chunk. None: stopped by
    /// shutdown part-way (what is applied stays; the rest is applied after the next download).
    /// While the writer applies a chunk, the next is read and judged and queued behind it: the
    /// writer goes from one to the next without waiting for this task.
    async fn apply_staged(
        &self,
        id: i64,
        api_id: &str,
        path: &std::path::Path,
        index: &staged::Index,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<usize>> {
        let file = std::sync::Arc::new(std::fs::File::open(path)?);
        let judge = |chunk: &[staged::Place]| {
            let (file, chunk, api_id) = (file.clone(), chunk.to_vec(), api_id.to_owned());
            tokio::task::spawn_blocking(move || {
                staged::read(&file, &chunk).map(|lines| apply::judge_lines(&api_id, lines))
            })
        };
        let mut chunks = staged::chunks(&index.places, APPLY_LINES, APPLY_BYTES).into_iter();
        let mut next = chunks.next().map(judge);
        let mut applying = None;
        let mut applied = 0;
        while let Some(judging) = next.take() {
            let judged = judging.await??;
            next = chunks.next().map(judge);
            let api_id = api_id.to_owned();
            let queued = self.store.submit_alone(self.with_replan(move |c, replan| {
                apply::apply_results(c, id, &api_id, &judged, replan)
            }));
            if let Some(done) = applying.replace(queued) {
                applied += done.await.map_err(|_| crate::store::StoreError::Closed)??;
                self.results_wake.notify_one();
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        if let Some(done) = applying {
            applied += done.await.map_err(|_| crate::store::StoreError::Closed)??;
            self.results_wake.notify_one();
        }
        if next.is_some() {
            return Ok(None); // stopped by shutdown before the last chunk
        }
        Ok(Some(applied))
    }

    /// The results could not be staged (a full disk, say): nothing is applied; try again later,
    /// with the reason where `status` shows it.
    async fn staging_failed(&self, id: i64, e: std::io::Error) -> anyhow::Result<Next> {
        let message = format!(
            "cannot keep the downloaded results in {}: {e}",
            self.staging_dir.display()
        );
        tracing::error!(error = %message, "batch results not applied; trying again");
        let at = now_ms() + self.settings.poll_min.as_millis().max(1000) as i64;
        self.later(id, at, Some(message)).await
    }
}
