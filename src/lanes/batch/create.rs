//! Creating a batch on its route: the intent is recorded first, the create call is flagged before
//! it goes out, and a call whose answer was lost is looked up in the route's batch list before
//! another is sent. A route that refuses the account is paused and the batch's items go to
//! another route.

use tokio_util::sync::CancellationToken;

use super::preflight::Checked;
use super::{BatchLane, Lane, MAX_LIST_PAGES, Next, RECONCILE_WINDOW_MS, apply};
use crate::api::batches::{ApiBatch, BatchCall};
use crate::api::messages::without_stream;
use crate::model::answer::Origin;
use crate::policy::owner;
use crate::store::batches::{self, BatchRow};
use crate::store::now_ms;

impl BatchLane {
    /// Creates the batch on `route` (its index among the clients), with that route's key.
    pub(super) async fn create(
        &self,
        batch: &BatchRow,
        route: usize,
        lane: &mut Lane,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Next> {
        let id = batch.id;
        let client = &self.clients[route];
        let requests = self.store.call(move |c| batches::requests(c, id)).await?;
        let requests = match self.preflight(id, client, requests, shutdown).await? {
            Checked::Send(requests) => requests,
            Checked::Empty | Checked::Stopped => return Ok(Next::Now),
        };
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
        let Some(answer) = self.call(shutdown, client.create_batch(body)).await else {
            return Ok(Next::Now);
        };
        // An answer, whatever it says, shows the route can be reached (its circuit closes).
        if !matches!(
            answer,
            BatchCall::Retry {
                maybe_done: false,
                ..
            }
        ) {
            crate::lock(&self.routing).reached(route);
        }
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
                origin,
            } => {
                let at = now + retry_after.map_or(10_000, |d| d.as_millis() as i64);
                tracing::warn!(%message, "batch create call rate-limited (batch RPM or queue full); waiting");
                let answered = owner::Answered {
                    status: 429,
                    message: &message,
                    spend_cap: false,
                    anthropic: origin.anthropic,
                    retry_after,
                };
                let verdict = owner::judge(&answered, None, now);
                record_refused_create(
                    &self.store,
                    &self.clients[route],
                    429,
                    &message,
                    retry_after,
                    &origin,
                    &verdict,
                )
                .await;
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
            BatchCall::Blocked {
                status,
                message,
                origin,
            } => {
                self.create_blocked(batch, route, status, message, origin)
                    .await
            }
        }
    }

    /// The route refuses the account on a create call (a refused key, the spend cap, a usage
    /// limit): every batch would be refused alike there. Who owns it is judged as the real-time
    /// lane judges a refused call, the route paused (a key alone, else every route of its
    /// organization, until the reset the answer names), and the batch, which the answer says
    /// was not created, gives its items back to be packed for another route. Nothing fails.
    async fn create_blocked(
        &self,
        batch: &BatchRow,
        route: usize,
        status: u16,
        message: String,
        origin: Origin,
    ) -> anyhow::Result<Next> {
        let verdict = owner::judge(
            &owner::Answered {
                status,
                message: &message,
                // Among the refusals only the spend cap answers 429.
                spend_cap: status == 429,
                anthropic: origin.anthropic,
                retry_after: None,
            },
            None,
            now_ms(),
        );
        record_refused_create(
            &self.store,
            &self.clients[route],
            status,
            &message,
            None,
            &origin,
            &verdict,
        )
        .await;
        // Its organization, so the pause reaches every route of it.
        crate::lanes::routes::learn(&mut crate::lock(&self.routing), route, &origin, false);
        crate::lanes::routes::pause(
            &self.store,
            &self.clients,
            &self.routing,
            route,
            &verdict,
            "batch",
        )
        .await;
        let why = format!(
            "route {} refuses the account ({}): HTTP {status}: {message}",
            batch.route,
            verdict.owner.as_str()
        );
        self.unroute(batch.id, why).await
    }

    /// A 4xx other than 429 to a create call.
    pub(super) async fn create_refused(
        &self,
        batch: &BatchRow,
        lane: &mut Lane,
        status: u16,
        message: String,
    ) -> anyhow::Result<Next> {
        let id = batch.id;
        let error = format!("HTTP {status}: {message}");
        if matches!(status, 400 | 422) {
            // Something in the body the API will not take, from one request or a few: find them
            // by halves, never send the refused body again.
            let refused = self
                .store
                .call(move |c| apply::refuse_batch(c, id, &error, now_ms()))
                .await?;
            match refused {
                apply::Refused::Split(half) => tracing::warn!(
                    requests = batch.request_count,
                    half,
                    %message,
                    "the API refused the batch as an invalid request; splitting it in two to find the request it refuses"
                ),
                apply::Refused::Empty => tracing::info!(
                    "the API refused the batch, whose requests were canceled meanwhile"
                ),
                apply::Refused::Errored { file, line } => tracing::error!(
                    file,
                    line,
                    %message,
                    "the API refuses this request in a batch: errored"
                ),
            }
            self.wake_all();
            return Ok(Next::Now);
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
            apply::fail_batch(
                c,
                id,
                &error,
                apply::Failure::Refused { counts: !too_large },
                replan,
            )
        })
        .await?;
        self.wake_all();
        Ok(Next::Now)
    }

    /// A create call may have reached the API: look for the batch it made, in the list of its
    /// `route` (which only that route's organization sees), before sending again.
    pub(super) async fn reconcile(
        &self,
        batch: &BatchRow,
        route: usize,
        lane: &mut Lane,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Next> {
        let client = &self.clients[route];
        let known = self.store.call(batches::known_api_ids).await?;
        let sent_at = batch.create_sent_at.unwrap_or(batch.intent_at);
        let (from, to) = (sent_at - RECONCILE_WINDOW_MS, sent_at + RECONCILE_WINDOW_MS);
        let mut after: Option<String> = None;
        let mut matches: Vec<ApiBatch> = Vec::new();
        let mut searched_all = false;
        for _ in 0..MAX_LIST_PAGES {
            lane.pacer.ready().await;
            let Some(answer) = self
                .call(shutdown, client.list_batches(after.as_deref(), 100))
                .await
            else {
                return Ok(Next::Now);
            };
            let page = match answer {
                BatchCall::Done(page) => page,
                BatchCall::Wait {
                    retry_after,
                    message,
                    ..
                } => {
                    let at = now_ms() + retry_after.map_or(10_000, |d| d.as_millis() as i64);
                    return self.later(batch.id, at, Some(message)).await;
                }
                BatchCall::Retry { message, .. }
                | BatchCall::Refused { message, .. }
                | BatchCall::Blocked { message, .. } => {
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
}

/// Records a throttled or refused create call for `diagnose`, under the model `(batches)`: the
/// batch endpoints' limits are the organization's, for every model.
async fn record_refused_create(
    store: &crate::store::Store,
    client: &crate::api::ApiClient,
    status: u16,
    message: &str,
    retry_after: Option<std::time::Duration>,
    origin: &crate::model::answer::Origin,
    verdict: &owner::Verdict,
) {
    let event = crate::store::quota::ThrottleEvent {
        model: "(batches)".into(),
        class: "batches".into(),
        ..crate::lanes::routes::throttle_event(
            client,
            "POST /v1/messages/batches",
            status,
            message,
            retry_after,
            origin,
            verdict,
        )
    };
    crate::lanes::routes::record_throttle(store, event).await;
}
