//! What both lanes share of the routes: learning a route's organization from an answer, pausing
//! what a refusal's verdict names (a route, or every route of its organization), and publishing
//! every route's state for `status`, `limits` and `diagnose`. The real-time lane pauses on a
//! refused Messages call, the batch lane on a refused create call; either pause holds both lanes
//! back from the route, through the one [`Routing`].

use std::sync::Mutex;
use std::time::Instant;

use crate::api::ApiClient;
use crate::model::answer::Origin;
use crate::policy::owner::Verdict;
use crate::policy::routing::{Pause, Routing};
use crate::store::quota::ThrottleEvent;
use crate::store::{Store, now_ms};

/// A throttling or refusing answer on `client`'s route, with its owner: the facts every such
/// answer has (the caller adds the call's own: model, sizes, concurrency, headers).
pub fn throttle_event(
    client: &ApiClient,
    endpoint: &str,
    status: u16,
    message: &str,
    retry_after: Option<std::time::Duration>,
    origin: &Origin,
    verdict: &Verdict,
) -> ThrottleEvent {
    let error_type = match status {
        429 => "rate_limit_error",
        529 => "overloaded_error",
        401 => "authentication_error",
        403 => "permission_error",
        _ => "invalid_request_error",
    };
    ThrottleEvent {
        at: now_ms(),
        endpoint: endpoint.to_owned(),
        key_id: client.key_id().to_owned(),
        http_status: status,
        error_type: Some(error_type.into()),
        message: Some(message.to_owned()),
        request_id: origin.request_id.clone(),
        retry_after_ms: retry_after.map(|d| d.as_millis() as i64),
        headers: "{}".into(),
        route: client.route_name().to_owned(),
        host: Some(client.host().to_owned()),
        organization_id: origin.organization_id.clone(),
        workspace_id: origin.workspace_id.clone(),
        owner: Some(verdict.owner.as_str().to_owned()),
        evidence: Some(verdict.evidence.clone()),
        reset_at: verdict.reset_at_ms,
        ..ThrottleEvent::default()
    }
}

/// Records a throttle event for `diagnose` (a failure to is logged: the call's outcome matters
/// more than its evidence).
pub async fn record_throttle(store: &Store, event: ThrottleEvent) {
    if let Err(e) = store
        .call(move |c| crate::store::quota::record_throttle(c, &event))
        .await
    {
        tracing::warn!(error = %e, "could not record a throttle event");
    }
}

/// Tenants with waiting items that no route allows, told once each (both lanes share it).
#[derive(Clone, Default)]
pub struct Unserved {
    told: std::sync::Arc<Mutex<std::collections::BTreeSet<String>>>,
    health: crate::lanes::health::Board,
}

impl Unserved {
    pub fn new(health: crate::lanes::health::Board) -> Unserved {
        Unserved {
            told: Default::default(),
            health,
        }
    }

    /// Says once, in the log and the health `status` shows, that no route allows `tenant`,
    /// whose items wait until a route's `tenants` names it (and a restart).
    pub fn tell(&self, tenant: &str) {
        let tenants: Vec<String> = {
            let mut told = crate::lock(&self.told);
            if !told.insert(tenant.to_owned()) {
                return;
            }
            told.iter().cloned().collect()
        };
        tracing::error!(
            tenant,
            "no route allows this tenant: its items wait; name it in a route's `tenants` and restart"
        );
        self.health.set(
            crate::lanes::health::ROUTES,
            "no route allows some tenants: their items wait",
            &format!("tenants without a route: {}", tenants.join(", ")),
            now_ms(),
            None,
        );
    }
}

/// What an answer of `route` said of its organization (see [`Routing::learn`]); said in the log
/// when the route learns (or changes) it, and then true.
pub fn learn(routing: &mut Routing, route: usize, origin: &Origin, ran: bool) -> bool {
    let learned = routing.learn(
        route,
        origin.organization_id.as_deref(),
        origin.workspace_id.as_deref(),
        ran,
    );
    if let Some(label) = &learned {
        tracing::info!(
            route = routing.route_name(route),
            organization = %label.key(),
            "the route's answers name its organization; routes of one organization share its limits"
        );
    }
    learned.is_some()
}

/// Pauses a route (a refused key), or every route of its organization (a spend cap, a usage
/// limit), until the reset the verdict names or for `BLOCKED_WAIT` (see [`Pause::after`]):
/// sending more cannot succeed until then. Both lanes leave the routes paused alone; the next
/// call after it is the probe. Said in the log (by `lane`, whose call was refused) and, through
/// [`publish`], in `status` and `limits`. Returns the routes paused.
pub async fn pause(
    store: &Store,
    clients: &[ApiClient],
    routing: &Mutex<Routing>,
    route: usize,
    verdict: &Verdict,
    lane: &str,
) -> Vec<usize> {
    let pause = Pause::after(verdict, Instant::now(), now_ms());
    let wait = pause.until.saturating_duration_since(Instant::now());
    let paused = crate::lock(routing).pause(route, pause);
    let names: Vec<&str> = paused.iter().map(|i| clients[*i].route_name()).collect();
    tracing::error!(
        routes = %names.join(", "),
        owner = verdict.owner.as_str(),
        reason = %verdict.evidence,
        wait_secs = wait.as_secs(),
        "the API refuses these routes' {lane} calls; both lanes pause them (their work goes to the other routes)"
    );
    publish(store, clients, routing).await;
    paused
}

/// Writes every route's state for `status`, `limits` and `diagnose`.
pub async fn publish(store: &Store, clients: &[ApiClient], routing: &Mutex<Routing>) {
    let (snapshot, now) = (crate::lock(routing).routes(Instant::now()), now_ms());
    let rows: Vec<crate::store::routes::RouteRow> = snapshot
        .into_iter()
        .zip(clients.iter())
        .map(|(r, client)| crate::store::routes::RouteRow {
            name: r.name,
            key_id: client.key_id().to_owned(),
            host: client.host().to_owned(),
            organization_id: r.organization,
            workspace_id: r.workspace,
            grp: r.group,
            state: r.state.to_owned(),
            reason: r.reason,
            owner: r.owner.map(str::to_owned),
            until: r.for_secs.map(|s| now + (s * 1000.0) as i64),
            updated_at: now,
        })
        .collect();
    let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let saved = store
        .call(move |c| {
            for row in &rows {
                crate::store::routes::save(c, row)?;
            }
            crate::store::routes::keep_only(c, &names)
        })
        .await;
    if let Err(e) = saved {
        tracing::debug!(error = %e, "could not publish the routes");
    }
}
