//! Several routes, one scheduler. A route is a key and a base URL (the API, or a gateway in front
//! of it) that some tenants may use. Limits follow **organizations**, not keys: each route learns
//! its organization (and workspace) from its answers' `anthropic-organization-id` and
//! `anthropic-workspace-id`, and routes that name the same one share one [`Quota`] — a second key
//! of one organization buys no capacity, a second organization or workspace does.
//!
//! Until a route's first answer names its organization, it is a group of its own that sends one
//! call at a time, so two keys of one organization are never counted twice for more than a call.
//!
//! Choosing a route per call: among the routes the item's tenant may use, not paused and
//! reachable, the organization whose buckets admit the call soonest (with the most room left
//! between those that admit it now); one whose route answered a storm of 529s or 5xx goes last.
//! A call marking a cached prefix goes where that prefix is cached (caches are per organization)
//! while the entry lives.
//!
//! Failover: a route whose key is refused pauses alone; a spend cap or a usage limit pauses every
//! route of its organization until the reset; each pause ends by itself, and the next call is
//! the probe that tells whether the cause has passed. Pure: time is passed in.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::model::answer::{RateLimitHeaders, Usage};
use crate::policy::circuit::{self, Circuit};
use crate::policy::outcome::BLOCKED_WAIT;
use crate::policy::owner::{Owner, Verdict};
use crate::policy::quota::cache_book::Prediction;
use crate::policy::quota::{
    Answer, ClassSnapshot, Configured, Learned, Quota, QuotaSettings, Request, Ticket,
};

/// 529s and 5xx answers of a route within [`STORM_WINDOW`] that make it go last.
pub const STORM_CALLS: usize = 5;
pub const STORM_WINDOW: Duration = Duration::from_secs(60);
/// How soon to look again when no route may be used now and nothing says when one may.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// A route as the config gives it, as far as routing needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub name: String,
    /// The tenants that may use it; `None`: everyone.
    pub tenants: Option<Vec<String>>,
}

impl RouteSpec {
    pub fn allows(&self, tenant: &str) -> bool {
        self.tenants
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| n == tenant))
    }
}

/// One set of buckets: an organization (and workspace), or a route whose organization is not
/// known yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(u32);

/// The organization and workspace an answer named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgLabel {
    pub organization: String,
    pub workspace: Option<String>,
}

impl OrgLabel {
    /// `org` or `org/workspace`: the key its learned state is kept under.
    pub fn key(&self) -> String {
        match &self.workspace {
            Some(w) => format!("{}/{w}", self.organization),
            None => self.organization.clone(),
        }
    }
}

/// One organization's buckets, and the tighter buckets of its workspaces whose answers show
/// limits of their own below the organization's (a workspace's limit applies inside the
/// organization's, which always applies on top).
struct Group {
    /// The organization; `None` until an answer names it.
    organization: Option<String>,
    quota: Quota,
    /// Workspaces seen to have limits of their own: their buckets, inside the organization's.
    inner: BTreeMap<String, Quota>,
    /// The `-limit` headers each workspace's answers last gave, per class.
    seen: BTreeMap<(String, String), [Option<u64>; 3]>,
}

impl Group {
    fn in_flight(&self) -> usize {
        self.quota.in_flight() + self.inner.values().map(Quota::in_flight).sum::<usize>()
    }

    /// Whether a workspace's answers for `class` show a limit below another workspace's of the
    /// same organization: then that limit is the workspace's own.
    fn tight(&self, workspace: &str, class: &str) -> bool {
        let Some(mine) = self.seen.get(&(workspace.to_owned(), class.to_owned())) else {
            return false;
        };
        self.seen
            .iter()
            .filter(|((w, c), _)| w != workspace && c == class)
            .any(|(_, theirs)| {
                mine.iter()
                    .zip(theirs)
                    .any(|(m, t)| matches!((m, t), (Some(m), Some(t)) if m < t))
            })
    }
}

/// Why a route is paused.
#[derive(Debug, Clone, PartialEq)]
pub struct Pause {
    pub until: Instant,
    pub reason: String,
    pub owner: Owner,
}

impl Pause {
    /// The pause a refusal's verdict calls for: until the reset it names (spend cap, usage
    /// limit), else for [`BLOCKED_WAIT`] (a person must act; the next call after it is the
    /// probe). `now_ms`: wall-clock UTC, which the reset is given in.
    pub fn after(verdict: &Verdict, now: Instant, now_ms: i64) -> Pause {
        let wait = verdict
            .reset_at_ms
            .map(|at| Duration::from_millis((at - now_ms).max(0) as u64))
            .filter(|w| !w.is_zero())
            .unwrap_or(BLOCKED_WAIT);
        Pause {
            until: now + wait,
            reason: verdict.evidence.clone(),
            owner: verdict.owner,
        }
    }
}

struct Route {
    spec: RouteSpec,
    group: GroupId,
    /// The workspace its answers name, inside its organization.
    workspace: Option<String>,
    /// An answer said which organization it is (or that it names none): until then the route
    /// sends one call at a time.
    known: bool,
    pause: Option<Pause>,
    /// After a pause ends, one call goes as the probe: `Some(false)` until it is sent,
    /// `Some(true)` while it is out; its answer ends the probing.
    probe_after_pause: Option<bool>,
    circuit: Circuit,
    /// 529s and 5xx answers lately.
    storms: VecDeque<Instant>,
    /// Answers in a row naming another organization than the route's (see [`MOVE_AFTER`]).
    elsewhere: Option<(String, u32)>,
}

/// Answers in a row naming another organization before a known route moves to it: a gateway
/// spreading calls over several organizations does not make its route hop between them.
const MOVE_AFTER: u32 = 3;

/// A call admitted on a route.
#[derive(Debug, Clone)]
pub struct Choice {
    pub route: usize,
    pub group: GroupId,
    /// Its ticket of the organization's buckets…
    pub ticket: Ticket,
    /// …and of its workspace's, where the workspace has limits of its own.
    pub inner: Option<(String, Ticket)>,
    /// The one call the route's open circuit lets through.
    pub probe: bool,
}

/// What a route is doing, for `status`, `limits` and the metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RouteSnapshot {
    pub name: String,
    /// The key its organization's learned state is kept under.
    pub group: String,
    pub organization: Option<String>,
    pub workspace: Option<String>,
    /// `active`, `learning` (its organization not known yet), `paused`, `unreachable` or
    /// `deprioritised`.
    pub state: &'static str,
    pub reason: Option<String>,
    pub owner: Option<&'static str>,
    pub for_secs: Option<f64>,
}

/// One organization's buckets and the routes that share them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupSnapshot {
    pub group: String,
    pub organization: Option<String>,
    pub workspace: Option<String>,
    pub routes: Vec<String>,
    pub classes: Vec<ClassSnapshot>,
}

/// Every route and every organization behind them.
pub struct Routing {
    routes: Vec<Route>,
    groups: BTreeMap<GroupId, Group>,
    next_group: u32,
    configured: Configured,
    settings: QuotaSettings,
}

impl Routing {
    /// Each route starts as a group of its own, until its answers name its organization.
    pub fn new(specs: Vec<RouteSpec>, configured: Configured, settings: QuotaSettings) -> Routing {
        let mut routing = Routing {
            routes: Vec::new(),
            groups: BTreeMap::new(),
            next_group: 0,
            configured,
            settings,
        };
        for spec in specs {
            let group = routing.new_group(None);
            routing.routes.push(Route {
                spec,
                group,
                workspace: None,
                known: false,
                pause: None,
                probe_after_pause: None,
                circuit: Circuit::default(),
                storms: VecDeque::new(),
                elsewhere: None,
            });
        }
        routing
    }

    fn new_group(&mut self, organization: Option<String>) -> GroupId {
        let id = GroupId(self.next_group);
        self.next_group += 1;
        let quota = Quota::with(self.configured.clone(), self.settings);
        self.groups.insert(
            id,
            Group {
                organization,
                quota,
                inner: BTreeMap::new(),
                seen: BTreeMap::new(),
            },
        );
        id
    }

    /// The names of a group's buckets as daemons sharing a store compare them: its
    /// organization's key once an answer named it, and `route:<name>` of each of its routes
    /// (daemons deployed with one config name their routes alike before any answer came).
    fn reach_of(&self, id: GroupId) -> Vec<String> {
        let mut keys: Vec<String> = self
            .routes
            .iter()
            .filter(|r| r.group == id)
            .map(|r| format!("route:{}", r.spec.name))
            .collect();
        if let Some(organization) = self.groups.get(&id).and_then(|g| g.organization.clone()) {
            keys.push(organization);
        }
        keys
    }

    /// What this daemon's routes reach: every group's [`Routing::reach_of`], published for the
    /// other daemons sharing the store.
    pub fn reach(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .groups
            .keys()
            .flat_map(|id| self.reach_of(*id))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Paces each organization to this daemon's part of its limits. `others` are what the other
    /// live daemons sharing the store reach (their [`Routing::reach`]): they all take work from
    /// the same items, so an organization N others reach too is this daemon's for 1/(N+1), and
    /// N+1 daemons together are paced as one.
    /// Returns the groups whose share changed: (key, share).
    pub fn set_shares(&mut self, others: &[Vec<String>], now: Instant) -> Vec<(String, f64)> {
        let mut changed = Vec::new();
        let ids: Vec<GroupId> = self.groups.keys().copied().collect();
        for id in ids {
            let mine = self.reach_of(id);
            let reaching = others
                .iter()
                .filter(|theirs| theirs.iter().any(|k| mine.contains(k)))
                .count();
            let share = 1.0 / (reaching + 1) as f64;
            let key = self.group_key(id);
            if let Some(g) = self.groups.get_mut(&id) {
                if (g.quota.share() - share).abs() > 1e-9 {
                    changed.push((key, share));
                }
                g.quota.set_share(share, now);
                for inner in g.inner.values_mut() {
                    inner.set_share(share, now);
                }
            }
        }
        changed
    }

    /// Whether any route allows `tenant` (paused or not).
    pub fn serves(&self, tenant: &str) -> bool {
        self.routes.iter().any(|r| r.spec.allows(tenant))
    }

    pub fn route_names(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.spec.name.as_str()).collect()
    }

    pub fn route_index(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.spec.name == name)
    }

    pub fn route_name(&self, route: usize) -> &str {
        &self.routes[route].spec.name
    }

    /// The organization and workspace a route's answers named, if any has.
    pub fn label_of(&self, route: usize) -> Option<OrgLabel> {
        let r = &self.routes[route];
        let organization = self.groups.get(&r.group)?.organization.clone()?;
        Some(OrgLabel {
            organization,
            workspace: r.workspace.clone(),
        })
    }

    /// The key a group's learned state is kept under: its organization, else `route:<name>`
    /// of its first route.
    fn group_key(&self, id: GroupId) -> String {
        match self.groups.get(&id).and_then(|g| g.organization.as_ref()) {
            Some(organization) => organization.clone(),
            None => self.routes.iter().find(|r| r.group == id).map_or_else(
                || format!("group:{}", id.0),
                |r| format!("route:{}", r.spec.name),
            ),
        }
    }

    /// The quota of a group (the one a ticket was admitted by).
    pub fn quota(&mut self, group: GroupId) -> Option<&mut Quota> {
        self.groups.get_mut(&group).map(|g| &mut g.quota)
    }

    /// Admits a call of `tenant` on the route that admits it soonest, or says when to ask again.
    pub fn choose(
        &mut self,
        tenant: &str,
        request: &Request<'_>,
        now: Instant,
    ) -> Result<Choice, Instant> {
        let mut next = now + LOOK_AGAIN;
        let soonest = |at: Instant, next: &mut Instant| *next = (*next).min(at);
        // The usable routes, best first within each group.
        let mut usable: Vec<(GroupId, usize, bool)> = Vec::new();
        for (i, r) in self.routes.iter_mut().enumerate() {
            if !r.spec.allows(tenant) {
                continue;
            }
            if let Some(p) = &r.pause {
                if p.until > now {
                    soonest(p.until, &mut next);
                    continue;
                }
                r.pause = None;
                r.probe_after_pause = Some(false);
            }
            let mut probe = match r.circuit.gate(now) {
                circuit::Gate::Send => false,
                circuit::Gate::Probe => true,
                circuit::Gate::WaitUntil(at) => {
                    soonest(at, &mut next);
                    continue;
                }
                circuit::Gate::WaitForProbe => continue,
            };
            match r.probe_after_pause {
                Some(true) => continue,
                Some(false) => probe = true,
                None => {}
            }
            while r
                .storms
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > STORM_WINDOW)
            {
                r.storms.pop_front();
            }
            usable.push((r.group, i, probe));
        }
        if usable.is_empty() {
            return Err(next);
        }
        let stormy = |routes: &[Route], i: usize| routes[i].storms.len() >= STORM_CALLS;
        // One route per set of buckets (organization and workspace): a calm one before a stormy
        // one, then by name.
        let routes = &self.routes;
        usable.sort_by_key(|(g, i, _)| (*g, routes[*i].workspace.clone(), stormy(routes, *i), *i));
        usable.dedup_by_key(|(g, i, _)| (*g, routes[*i].workspace.clone()));
        // A cached prefix stays on the organization that holds it while the entry lives.
        if let Some(prefix) = &request.cache {
            let expect: Vec<Prediction> = usable
                .iter()
                .map(|(g, _, _)| {
                    self.groups[g]
                        .quota
                        .cache_expect(request.model, prefix, now)
                })
                .collect();
            if expect.contains(&Prediction::Read) {
                let mut keep = expect.iter().map(|p| *p == Prediction::Read);
                usable.retain(|_| keep.next().unwrap_or(false));
            } else if expect.contains(&Prediction::Wait) {
                // Another call is writing it: read it once that call is answered.
                let mut keep = expect.iter().map(|p| *p == Prediction::Wait);
                usable.retain(|_| keep.next().unwrap_or(false));
            }
        }
        // (not now, not a due probe, stormy, wait, less room), group, route, probe: a probe due
        // goes before other calls, so a route comes back as soon as it can.
        type Rank = (bool, bool, bool, Duration, i64);
        let mut ranked: Vec<(Rank, GroupId, usize, bool)> = Vec::new();
        for (g, i, probe) in usable {
            let workspace = self.routes[i].workspace.clone().unwrap_or_default();
            let group = self.groups.get_mut(&g).expect("a route's group exists");
            // A route not yet known sends one call at a time: its organization may be another
            // route's, whose buckets it would count twice.
            let learning = !self.routes[i].known && group.in_flight() > 0;
            let (wait, room) = if learning {
                (LOOK_AGAIN, -1.0)
            } else {
                let (wait, room) = group.quota.admits_in(request, now);
                match group.inner.get_mut(&workspace) {
                    Some(inner) => {
                        let (w, r) = inner.admits_in(request, now);
                        (wait.max(w), room.min(r))
                    }
                    None => (wait, room),
                }
            };
            let stormy = self.routes[i].storms.len() >= STORM_CALLS;
            ranked.push((
                (!wait.is_zero(), !probe, stormy, wait, -(room * 1e6) as i64),
                g,
                i,
                probe,
            ));
        }
        ranked.sort_by_key(|(key, _, i, _)| (*key, *i));
        let Some(&((later, _, _, wait, _), group, route, probe)) = ranked.first() else {
            return Err(next);
        };
        if later {
            // None admits it now: ask again when the first of them will.
            let soonest = ranked.iter().map(|(k, ..)| k.3).min().unwrap_or(wait);
            return Err(now + soonest.max(Duration::from_millis(1)));
        }
        let workspace = self.routes[route].workspace.clone().unwrap_or_default();
        let g = self.groups.get_mut(&group).expect("ranked");
        let ticket = g.quota.try_admit(request, now)?;
        let inner = match g.inner.get_mut(&workspace) {
            None => None,
            Some(q) => match q.try_admit(request, now) {
                Ok(t) => Some((workspace, t)),
                Err(at) => {
                    // The organization admitted it, its workspace not: give that back.
                    g.quota
                        .settle(&ticket, Answer::Refused, None, &Default::default(), now);
                    return Err(at);
                }
            },
        };
        if probe {
            let r = &mut self.routes[route];
            r.circuit.probe_sent();
            if r.probe_after_pause.is_some() {
                r.probe_after_pause = Some(true);
            }
        }
        Ok(Choice {
            route,
            group,
            ticket,
            inner,
            probe,
        })
    }

    /// Whether a call of `tenant` marking `prefix` would wait now for another call writing it on
    /// one of its organizations, none of which holds it yet (the lane then leaves it for later and
    /// sends what it can meanwhile).
    pub fn cache_waits(
        &self,
        tenant: &str,
        model: &str,
        prefix: &crate::model::prompt_cache::CachePrefix,
        now: Instant,
    ) -> bool {
        let mut waits = false;
        for r in self.routes.iter().filter(|r| r.spec.allows(tenant)) {
            match self.groups[&r.group].quota.cache_expect(model, prefix, now) {
                Prediction::Read => return false,
                Prediction::Wait => waits = true,
                Prediction::Write => {}
            }
        }
        waits
    }

    /// Gives back a call that was admitted but never sent.
    pub fn unsent(&mut self, choice: &Choice, now: Instant) {
        if choice.probe {
            let r = &mut self.routes[choice.route];
            r.circuit.probe_dropped();
            if r.probe_after_pause.is_some() {
                r.probe_after_pause = Some(false);
            }
        }
        self.settle(choice, Answer::Refused, None, &Default::default(), now);
    }

    /// A call of `route` was answered (or went unanswered). `refused`: the account or key was
    /// refused, and a pause follows; any other answer ends the probing after a pause.
    pub fn answered(&mut self, route: usize, refused: bool) {
        if !refused {
            self.routes[route].probe_after_pause = None;
        }
    }

    /// Settles a call in the organization that admitted it, and its workspace's buckets. An
    /// answer through a workspace seen to have limits of its own tells of those (the headers
    /// give the tighter of the two): its headers go to the workspace's buckets, and the
    /// organization's settle on the call's own use alone.
    pub fn settle(
        &mut self,
        choice: &Choice,
        answer: Answer,
        usage: Option<&Usage>,
        headers: &RateLimitHeaders,
        now: Instant,
    ) {
        let workspace = self.routes[choice.route]
            .workspace
            .clone()
            .unwrap_or_default();
        let (configured, settings) = (self.configured.clone(), self.settings);
        if let Some(g) = self.groups.get_mut(&choice.group) {
            let class = choice.ticket.class.clone();
            let limits = headers.dims.map(|d| d.limit);
            if g.organization.is_some() && limits.iter().any(Option::is_some) {
                g.seen.insert((workspace.clone(), class.clone()), limits);
            }
            let tight = g.tight(&workspace, &class);
            if tight && !g.inner.contains_key(&workspace) {
                let mut inner = Quota::with(configured, settings);
                inner.set_share(g.quota.share(), now);
                g.inner.insert(workspace.clone(), inner);
            }
            let org_headers = if tight {
                RateLimitHeaders::default()
            } else {
                headers.clone()
            };
            g.quota
                .settle(&choice.ticket, answer, usage, &org_headers, now);
            if let Some((ws, ticket)) = &choice.inner
                && let Some(q) = g.inner.get_mut(ws)
            {
                q.settle(ticket, answer, usage, headers, now);
            }
        }
        self.tidy();
    }

    /// The buckets whose books judge a throttle of this call: its workspace's where that has
    /// limits of its own, else its organization's (see [`Quota::books`]).
    pub fn books(
        &mut self,
        choice: &Choice,
        headers: &RateLimitHeaders,
        now: Instant,
    ) -> Option<[crate::policy::owner::DimBooks; 3]> {
        let g = self.groups.get_mut(&choice.group)?;
        Some(match &choice.inner {
            Some((ws, ticket)) if g.inner.contains_key(ws) => g
                .inner
                .get_mut(ws)
                .expect("checked")
                .books(ticket, headers, now),
            _ => g.quota.books(&choice.ticket, headers, now),
        })
    }

    /// What an answer of `route` said of its organization and workspace. `ran`: the answer was
    /// the API's message (a route whose successes name no organization is one of its own).
    /// Returns the organization and workspace when the route just learned (or changed) them.
    pub fn learn(
        &mut self,
        route: usize,
        organization: Option<&str>,
        workspace: Option<&str>,
        ran: bool,
    ) -> Option<OrgLabel> {
        let Some(organization) = organization else {
            if ran {
                self.routes[route].known = true;
            }
            return None;
        };
        let label = OrgLabel {
            organization: organization.to_owned(),
            workspace: workspace.map(str::to_owned),
        };
        let current = self.routes[route].group;
        let same_org = self.groups[&current].organization.as_deref() == Some(organization);
        if same_org && self.routes[route].workspace == label.workspace {
            let r = &mut self.routes[route];
            r.known = true;
            r.elsewhere = None;
            return None;
        }
        let r = &mut self.routes[route];
        if r.known && self.groups[&current].organization.is_some() {
            let seen = match &r.elsewhere {
                Some((key, n)) if *key == label.key() => n + 1,
                _ => 1,
            };
            r.elsewhere = Some((label.key(), seen));
            if seen < MOVE_AFTER {
                return None;
            }
        }
        self.routes[route].elsewhere = None;
        let group = if same_org {
            current
        } else {
            let existing = self
                .groups
                .iter()
                .find(|(_, g)| g.organization.as_deref() == Some(organization))
                .map(|(id, _)| *id);
            let shared = self.routes.iter().filter(|r| r.group == current).count() > 1;
            match existing {
                Some(id) => id,
                None if self.groups[&current].organization.is_none() && !shared => {
                    self.groups.get_mut(&current).expect("current").organization =
                        Some(organization.to_owned());
                    current
                }
                None => self.new_group(Some(organization.to_owned())),
            }
        };
        let r = &mut self.routes[route];
        r.group = group;
        r.workspace = label.workspace.clone();
        r.known = true;
        self.tidy();
        Some(label)
    }

    /// Groups no route uses and no call holds are dropped.
    fn tidy(&mut self) {
        let routes = &self.routes;
        self.groups
            .retain(|id, g| routes.iter().any(|r| r.group == *id) || g.in_flight() > 0);
    }

    /// Pauses what a refusal's verdict names: the route alone when its key was refused, else
    /// every route of its organization (a spend cap, a usage limit). Returns the routes paused.
    pub fn pause(&mut self, route: usize, pause: Pause) -> Vec<usize> {
        match pause.owner {
            // The key, or something between us and the API: this route's alone.
            Owner::Key | Owner::Gateway => {
                self.pause_route(route, pause);
                vec![route]
            }
            // A workspace's own usage limit: the routes of that workspace.
            Owner::UsageLimit if pause.reason.contains("workspace") => {
                let (group, workspace) = {
                    let r = &self.routes[route];
                    (r.group, r.workspace.clone())
                };
                let members: Vec<usize> = (0..self.routes.len())
                    .filter(|i| {
                        let r = &self.routes[*i];
                        r.group == group && r.workspace == workspace
                    })
                    .collect();
                for i in &members {
                    self.pause_route(*i, pause.clone());
                }
                members
            }
            _ => self.pause_organization(route, pause),
        }
    }

    /// Whether `route` may take calls now: neither paused nor unreachable (what
    /// [`Routing::routes`] shows as `paused` or `unreachable`). A route answering a storm of
    /// 529s, or still learning its organization, may.
    pub fn usable(&self, route: usize, now: Instant) -> bool {
        let r = &self.routes[route];
        r.pause.as_ref().is_none_or(|p| p.until <= now)
            && r.probe_after_pause != Some(true)
            && matches!(
                r.circuit.gate(now),
                circuit::Gate::Send | circuit::Gate::Probe
            )
    }

    /// A call of the batch lane on `route` was answered: the route is reachable again.
    pub fn reached(&mut self, route: usize) {
        self.routes[route].circuit.reached();
    }

    /// Whether `tenant` may use `route`.
    pub fn allows(&self, route: usize, tenant: &str) -> bool {
        self.routes[route].spec.allows(tenant)
    }

    /// The tenants that may use `route`; `None`: everyone.
    pub fn tenants(&self, route: usize) -> Option<&[String]> {
        self.routes[route].spec.tenants.as_deref()
    }

    /// Whether two routes are known to share one organization (and workspace): routes whose
    /// organization is not known yet share with none.
    pub fn same_organization(&self, a: usize, b: usize) -> bool {
        a == b || self.routes[a].group == self.routes[b].group
    }

    /// Pauses one route (its key was refused) until `until`.
    pub fn pause_route(&mut self, route: usize, pause: Pause) {
        let r = &mut self.routes[route];
        if r.pause.as_ref().is_none_or(|p| p.until < pause.until) {
            r.pause = Some(pause);
        }
        r.probe_after_pause = None;
    }

    /// Pauses every route of `route`'s organization (a spend cap, a usage limit): returns the
    /// routes paused.
    pub fn pause_organization(&mut self, route: usize, pause: Pause) -> Vec<usize> {
        let group = self.routes[route].group;
        let members: Vec<usize> = (0..self.routes.len())
            .filter(|i| self.routes[*i].group == group)
            .collect();
        for i in &members {
            self.pause_route(*i, pause.clone());
        }
        members
    }

    /// Holds every call of `model`'s class in the buckets that refused `choice` until `until`
    /// (`retry-after`): its workspace's where that has limits of its own, else its organization's.
    pub fn hold_class(&mut self, choice: &Choice, model: &str, until: Instant, now: Instant) {
        let Some(g) = self.groups.get_mut(&choice.group) else {
            return;
        };
        match &choice.inner {
            Some((ws, _)) if g.inner.contains_key(ws) => {
                g.inner
                    .get_mut(ws)
                    .expect("checked")
                    .pause(model, until, now);
            }
            _ => g.quota.pause(model, until, now),
        }
    }

    /// A 529 or 5xx answer of a route: enough of them lately and it goes last.
    pub fn storm(&mut self, route: usize, now: Instant) {
        let storms = &mut self.routes[route].storms;
        storms.push_back(now);
        while storms.len() > STORM_CALLS * 4 {
            storms.pop_front();
        }
    }

    /// The route's reachability circuit.
    pub fn circuit(&mut self, route: usize) -> &mut Circuit {
        &mut self.routes[route].circuit
    }

    /// Whether the organization of a call of `tenant` and `model` looks idle (see
    /// [`Quota::org_idle`]): idle on any route the tenant may use.
    pub fn org_idle(
        &mut self,
        tenant: &str,
        model: &str,
        now: Instant,
        fresh: Duration,
        share: f64,
    ) -> Option<bool> {
        let groups: Vec<GroupId> = self
            .routes
            .iter()
            .filter(|r| r.spec.allows(tenant))
            .map(|r| r.group)
            .collect();
        let mut idle = None;
        for g in groups {
            match self
                .quota(g)
                .and_then(|q| q.org_idle(model, now, fresh, share))
            {
                Some(true) => return Some(true),
                Some(false) => idle = Some(false),
                None => {}
            }
        }
        idle
    }

    /// A reloaded config, for every organization.
    pub fn reconfigure(&mut self, settings: QuotaSettings, now: Instant) {
        self.settings = settings;
        for g in self.groups.values_mut() {
            g.quota.reconfigure(settings, now);
            for inner in g.inner.values_mut() {
                inner.reconfigure(settings, now);
            }
        }
    }

    /// Every route's state.
    pub fn routes(&self, now: Instant) -> Vec<RouteSnapshot> {
        self.routes
            .iter()
            .map(|r| {
                let organization = self.groups.get(&r.group).and_then(|g| g.organization.clone());
                let pause = r.pause.as_ref().filter(|p| p.until > now);
                let gate = r.circuit.gate(now);
                let (state, reason, owner, until) = match (pause, gate) {
                    (Some(p), _) => ("paused", Some(p.reason.clone()), Some(p.owner.as_str()), Some(p.until)),
                    (None, circuit::Gate::WaitUntil(at)) => ("unreachable", Some("the route cannot be reached; one probe call at a time".to_owned()), None, Some(at)),
                    (None, circuit::Gate::WaitForProbe | circuit::Gate::Probe) => ("unreachable", Some("the route cannot be reached; one probe call at a time".to_owned()), None, None),
                    _ if r.storms.iter().filter(|t| now.saturating_duration_since(**t) <= STORM_WINDOW).count() >= STORM_CALLS => (
                        "deprioritised",
                        Some(format!("{STORM_CALLS}+ answers 529 or 5xx in the last minute: used when no other route can take a call")),
                        Some(Owner::Overloaded.as_str()),
                        None,
                    ),
                    _ if !r.known => ("learning", Some("its organization is not known yet: one call at a time".to_owned()), None, None),
                    _ => ("active", None, None, None),
                };
                RouteSnapshot {
                    name: r.spec.name.clone(),
                    group: self.group_key(r.group),
                    organization,
                    workspace: r.workspace.clone(),
                    state,
                    reason,
                    owner,
                    for_secs: until.map(|u| u.saturating_duration_since(now).as_secs_f64()),
                }
            })
            .collect()
    }

    /// Every organization's buckets and the routes sharing them; then, as `org/workspace`, each
    /// workspace with limits of its own and the routes in it.
    pub fn groups(&mut self, now: Instant) -> Vec<GroupSnapshot> {
        let ids: Vec<GroupId> = self.groups.keys().copied().collect();
        let mut out = Vec::new();
        for id in ids {
            let key = self.group_key(id);
            let members: Vec<(String, Option<String>)> = self
                .routes
                .iter()
                .filter(|r| r.group == id)
                .map(|r| (r.spec.name.clone(), r.workspace.clone()))
                .collect();
            let g = self.groups.get_mut(&id).expect("listed");
            out.push(GroupSnapshot {
                group: key.clone(),
                organization: g.organization.clone(),
                workspace: None,
                routes: members.iter().map(|(name, _)| name.clone()).collect(),
                classes: g.quota.snapshot(now),
            });
            for (ws, inner) in &mut g.inner {
                out.push(GroupSnapshot {
                    group: format!("{key}/{ws}"),
                    organization: g.organization.clone(),
                    workspace: Some(ws.clone()),
                    routes: members
                        .iter()
                        .filter(|(_, w)| w.as_deref().unwrap_or_default() == ws)
                        .map(|(name, _)| name.clone())
                        .collect(),
                    classes: inner.snapshot(now),
                });
            }
        }
        out
    }

    /// Each class over every organization: limits, capacities, levels and calls added up (what
    /// the routes together allow), for the status page's charts.
    pub fn class_totals(&mut self, now: Instant) -> Vec<ClassSnapshot> {
        let mut totals: Vec<ClassSnapshot> = Vec::new();
        for g in self.groups.values_mut() {
            for c in g.quota.snapshot(now) {
                let Some(t) = totals.iter_mut().find(|t| t.class == c.class) else {
                    totals.push(c);
                    continue;
                };
                t.concurrency += c.concurrency;
                t.in_flight += c.in_flight;
                for (td, d) in t.dims.iter_mut().zip(&c.dims) {
                    td.limit_per_minute = match (td.limit_per_minute, d.limit_per_minute) {
                        (Some(a), Some(b)) => Some(a + b),
                        (a, b) => a.or(b),
                    };
                    td.capacity += d.capacity;
                    td.level += d.level;
                }
            }
        }
        totals.sort_by(|a, b| a.class.cmp(&b.class));
        totals
    }

    /// What every organization learned: (key, class, learned); a workspace with limits of its
    /// own under `org/workspace`.
    pub fn learned(&mut self, now: Instant) -> Vec<(String, String, Learned)> {
        let ids: Vec<GroupId> = self.groups.keys().copied().collect();
        let mut out = Vec::new();
        for id in ids {
            let key = self.group_key(id);
            let g = self.groups.get_mut(&id).expect("listed");
            for (class, learned) in g.quota.learned(now) {
                out.push((key.clone(), class, learned));
            }
            for (ws, inner) in &mut g.inner {
                for (class, learned) in inner.learned(now) {
                    out.push((format!("{key}/{ws}"), class, learned));
                }
            }
        }
        out
    }

    /// Takes back what was learned `age` ago, by the key it was kept under (see
    /// [`Routing::learned`]).
    pub fn restore(&mut self, key: &str, learned: &Learned, age: Duration, now: Instant) {
        let (configured, settings) = (self.configured.clone(), self.settings);
        let ids: Vec<GroupId> = self.groups.keys().copied().collect();
        for id in ids {
            let group_key = self.group_key(id);
            let g = self.groups.get_mut(&id).expect("listed");
            if group_key == key {
                g.quota.restore(learned, age, now);
            } else if let Some(ws) = key
                .strip_prefix(group_key.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                && g.organization.is_some()
            {
                g.inner
                    .entry(ws.to_owned())
                    .or_insert_with(|| Quota::with(configured.clone(), settings))
                    .restore(learned, age, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::answer::DimHeaders;
    use crate::model::job::Priority;
    use crate::policy::quota::{ClassLimits, ModelLimits, OutputReservation};
    use std::sync::Arc;

    const MODEL: &str = "claude-haiku-4-5";

    fn settings() -> QuotaSettings {
        QuotaSettings {
            reserve: 0.0,
            output_reservation: OutputReservation::MaxTokens,
            max_concurrency: 64,
            initial_concurrency: 64,
        }
    }

    fn routing(specs: &[(&str, Option<&[&str]>)]) -> Routing {
        let configured: Configured = Arc::new(|_: &str| {
            ClassLimits::ceiling(ModelLimits {
                rpm: Some(600),
                itpm: None,
                otpm: None,
            })
        });
        let specs = specs
            .iter()
            .map(|(name, tenants)| RouteSpec {
                name: (*name).to_owned(),
                tenants: tenants.map(|t| t.iter().map(|s| (*s).to_owned()).collect()),
            })
            .collect();
        Routing::new(specs, configured, settings())
    }

    fn request() -> Request<'static> {
        Request {
            model: MODEL,
            priority: Priority::Normal,
            input_estimate: 10,
            max_tokens: 10,
            cache: None,
        }
    }

    fn ran(r: &mut Routing, choice: &Choice, now: Instant) {
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 5,
            ..Default::default()
        };
        r.settle(choice, Answer::Ran, Some(&usage), &Default::default(), now);
    }

    #[test]
    fn a_route_not_yet_known_sends_one_call_at_a_time() {
        let mut r = routing(&[("a", None)]);
        let now = Instant::now();
        let first = r.choose("t", &request(), now).expect("the probe");
        assert!(r.choose("t", &request(), now).is_err(), "one at a time");
        ran(&mut r, &first, now);
        assert_eq!(
            r.learn(first.route, Some("org-1"), None, true)
                .map(|l| l.key()),
            Some("org-1".into())
        );
        // Known now: as many as its bucket admits (600 rpm, 10 a second to start).
        let admitted = (0..5)
            .filter(|_| r.choose("t", &request(), now).is_ok())
            .count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn an_organization_other_daemons_reach_is_shared_with_them() {
        let mut r = routing(&[("a", None), ("b", None)]);
        let now = Instant::now();
        r.learn(1, Some("org-2"), None, true);
        assert_eq!(r.reach(), vec!["org-2", "route:a", "route:b"]);
        // Two others reach route a (by name: no answer named its organization yet), one org-2.
        let others = vec![
            vec!["route:a".to_owned()],
            vec!["route:a".to_owned(), "org-2".to_owned()],
            vec!["org-9".to_owned()],
        ];
        let mut changed = r.set_shares(&others, now);
        changed.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            changed,
            vec![("org-2".to_owned(), 0.5), ("route:a".to_owned(), 1.0 / 3.0)]
        );
        assert!(r.set_shares(&others, now).is_empty(), "unchanged");
        let rpm: Vec<Option<f64>> = r
            .groups(now)
            .iter()
            .map(|g| g.classes.first().and_then(|c| c.dims[0].limit_per_minute))
            .collect();
        assert!(rpm.iter().all(Option::is_none), "no class yet: {rpm:?}");
        // Alone again.
        assert_eq!(r.set_shares(&[], now).len(), 2);
    }

    #[test]
    fn two_keys_of_one_organization_share_one_set_of_buckets() {
        let mut r = routing(&[("a", None), ("b", None), ("c", None)]);
        let now = Instant::now();
        for (route, org) in [(0, "org-1"), (1, "org-1"), (2, "org-2")] {
            r.learn(route, Some(org), Some("default"), true);
        }
        let groups = r.groups(now);
        assert_eq!(groups.len(), 2, "the first two are one organization");
        assert_eq!(groups[0].routes, vec!["a", "b"]);
        assert_eq!(groups[0].group, "org-1");
        assert_eq!(groups[1].routes, vec!["c"]);
        // Calls spread over both organizations, each drawing on its own buckets.
        let mut by_group = BTreeMap::new();
        for _ in 0..16 {
            let c = r.choose("t", &request(), now).expect("admitted");
            *by_group.entry(c.group).or_insert(0) += 1;
        }
        assert_eq!(by_group.len(), 2, "{by_group:?}");
        assert_eq!(by_group.values().sum::<i32>(), 16);
    }

    #[test]
    fn tenants_choose_their_routes_and_a_paused_route_is_skipped() {
        let mut r = routing(&[("main", None), ("overflow", Some(&["support"]))]);
        let now = Instant::now();
        r.learn(0, Some("org-1"), None, true);
        r.learn(1, Some("org-2"), None, true);
        for _ in 0..5 {
            let c = r.choose("nightly", &request(), now).expect("admitted");
            assert_eq!(r.route_name(c.route), "main");
        }
        r.pause_route(
            0,
            Pause {
                until: now + Duration::from_secs(60),
                reason: "HTTP 401: invalid x-api-key".into(),
                owner: Owner::Key,
            },
        );
        let until = r
            .choose("nightly", &request(), now)
            .expect_err("no route for nightly");
        assert_eq!(
            until,
            now + Duration::from_secs(1).min(Duration::from_secs(60))
        );
        let c = r.choose("support", &request(), now).expect("overflow");
        assert_eq!(r.route_name(c.route), "overflow");
        let states = r.routes(now);
        assert_eq!(states[0].state, "paused");
        assert_eq!(states[0].owner, Some("key"));
        assert_eq!(states[1].state, "active");
        // The pause ends by itself: the next call is the probe.
        assert!(
            r.choose("nightly", &request(), now + Duration::from_secs(61))
                .is_ok()
        );
    }

    #[test]
    fn a_spend_cap_pauses_every_route_of_its_organization() {
        let mut r = routing(&[("a", None), ("b", None), ("c", None)]);
        let now = Instant::now();
        for (route, org) in [(0, "org-1"), (1, "org-1"), (2, "org-2")] {
            r.learn(route, Some(org), None, true);
        }
        let paused = r.pause_organization(
            0,
            Pause {
                until: now + Duration::from_secs(3600),
                reason: "spend cap".into(),
                owner: Owner::SpendCap,
            },
        );
        assert_eq!(paused, vec![0, 1]);
        for _ in 0..5 {
            let c = r.choose("t", &request(), now).expect("org-2 takes it");
            assert_eq!(r.route_name(c.route), "c");
        }
    }

    #[test]
    fn a_route_is_usable_unless_paused_or_unreachable_and_allows_its_tenants() {
        let mut r = routing(&[("a", None), ("b", Some(&["beta"]))]);
        let now = Instant::now();
        assert!(
            r.usable(0, now) && r.usable(1, now),
            "learning routes may be used"
        );
        assert!(r.allows(0, "acme") && r.allows(0, "beta"));
        assert!(!r.allows(1, "acme") && r.allows(1, "beta"));
        assert_eq!(r.tenants(0), None);
        assert_eq!(r.tenants(1), Some(&["beta".to_owned()][..]));
        // Paused: not usable until the pause ends.
        r.pause_route(
            0,
            Pause {
                until: now + Duration::from_secs(60),
                reason: "key".into(),
                owner: Owner::Key,
            },
        );
        assert!(!r.usable(0, now) && r.usable(1, now));
        assert!(r.usable(0, now + Duration::from_secs(60)));
        // Unreachable: not usable while its circuit is open.
        for _ in 0..circuit::OPEN_AFTER {
            r.circuit(1).unreachable(now, 0.5, false);
        }
        assert_eq!(r.routes(now)[1].state, "unreachable");
        assert!(!r.usable(1, now));
        r.circuit(1).reached();
        assert!(r.usable(1, now));
        // A storm makes a route go last, not unusable.
        for _ in 0..STORM_CALLS {
            r.storm(1, now);
        }
        assert!(r.usable(1, now));
    }

    #[test]
    fn a_verdict_pauses_the_route_or_its_organization_until_its_reset() {
        let mut r = routing(&[("a", None), ("b", None), ("c", None)]);
        let now = Instant::now();
        assert!(!r.same_organization(0, 1), "not known yet: each its own");
        for (route, org) in [(0, "org-1"), (1, "org-1"), (2, "org-2")] {
            r.learn(route, Some(org), None, true);
        }
        assert!(r.same_organization(0, 1) && !r.same_organization(0, 2));
        let key = Verdict {
            owner: Owner::Key,
            evidence: "HTTP 401: the key was refused".into(),
            reset_at_ms: None,
        };
        let pause = Pause::after(&key, now, 1_000);
        assert_eq!(pause.until, now + BLOCKED_WAIT, "no reset named");
        assert_eq!(r.pause(1, pause), vec![1], "a refused key pauses its route");
        assert!(r.usable(0, now) && !r.usable(1, now));
        let cap = Verdict {
            owner: Owner::SpendCap,
            evidence: "429 enforced_spend_limit_reached".into(),
            reset_at_ms: Some(1_000 + 3_600_000),
        };
        let pause = Pause::after(&cap, now, 1_000);
        assert_eq!(
            pause.until,
            now + Duration::from_secs(3600),
            "until the reset"
        );
        assert_eq!(r.pause(0, pause), vec![0, 1], "the whole organization");
        let states = r.routes(now);
        assert_eq!(
            (states[0].state, states[0].owner),
            ("paused", Some("spend_cap"))
        );
        assert!(!r.usable(0, now) && r.usable(2, now));
    }

    #[test]
    fn after_a_pause_one_call_probes_before_the_rest_go() {
        let mut r = routing(&[("a", None)]);
        let now = Instant::now();
        r.learn(0, Some("org-1"), None, true);
        r.pause(
            0,
            Pause {
                until: now + Duration::from_secs(5),
                reason: "HTTP 401".into(),
                owner: Owner::Key,
            },
        );
        let later = now + Duration::from_secs(6);
        let probe = r.choose("t", &request(), later).expect("the probe");
        assert!(probe.probe);
        assert!(r.choose("t", &request(), later).is_err(), "one call only");
        assert!(!r.usable(0, later), "the probe is out");
        // Refused again: paused again, and again one probe when that ends.
        r.answered(0, true);
        assert!(r.choose("t", &request(), later).is_err());
        // Answered: the route takes calls again.
        r.answered(0, false);
        ran(&mut r, &probe, later);
        assert!(r.choose("t", &request(), later).is_ok());
        assert!(r.choose("t", &request(), later).is_ok());
    }

    #[test]
    fn a_gateways_refusal_or_a_workspaces_usage_limit_pauses_only_what_it_concerns() {
        let mut r = routing(&[("gw", None), ("direct", None), ("other-ws", None)]);
        let now = Instant::now();
        r.learn(0, Some("org-1"), Some("ws-1"), true);
        r.learn(1, Some("org-1"), Some("ws-1"), true);
        r.learn(2, Some("org-1"), Some("ws-2"), true);
        let pause = |owner, reason: &str| Pause {
            until: now + Duration::from_secs(60),
            reason: reason.into(),
            owner,
        };
        assert_eq!(r.pause(0, pause(Owner::Gateway, "gateway 403")), vec![0]);
        let paused = r.pause(
            1,
            pause(
                Owner::UsageLimit,
                "You have reached your specified workspace API usage limits",
            ),
        );
        assert_eq!(paused, vec![0, 1], "the workspace's routes, not ws-2's");
        assert!(r.usable(2, now));
        let paused = r.pause(2, pause(Owner::SpendCap, "spend cap"));
        assert_eq!(paused, vec![0, 1, 2], "the whole organization");
    }

    #[test]
    fn a_known_route_moves_only_after_answers_in_a_row_name_another_organization() {
        let mut r = routing(&[("gw", None)]);
        let now = Instant::now();
        r.learn(0, Some("org-1"), None, true);
        assert!(r.learn(0, Some("org-2"), None, true).is_none());
        assert!(
            r.learn(0, Some("org-1"), None, true).is_none(),
            "back: no move"
        );
        assert!(r.learn(0, Some("org-2"), None, true).is_none());
        assert!(r.learn(0, Some("org-2"), None, true).is_none());
        let moved = r
            .learn(0, Some("org-2"), None, true)
            .expect("three in a row");
        assert_eq!(moved.organization, "org-2");
        assert_eq!(r.groups(now)[0].organization.as_deref(), Some("org-2"));
    }

    #[test]
    fn a_stormy_route_goes_last() {
        let mut r = routing(&[("a", None), ("b", None)]);
        let now = Instant::now();
        r.learn(0, Some("org-1"), None, true);
        r.learn(1, Some("org-2"), None, true);
        for _ in 0..STORM_CALLS {
            r.storm(0, now);
        }
        for _ in 0..5 {
            let c = r.choose("t", &request(), now).expect("admitted");
            assert_eq!(r.route_name(c.route), "b");
        }
        assert_eq!(r.routes(now)[0].state, "deprioritised");
        // Past the window it is calm again.
        let later = now + STORM_WINDOW + Duration::from_secs(1);
        assert_eq!(r.routes(later)[0].state, "active");
    }

    #[test]
    fn a_cached_prefix_stays_with_the_organization_that_holds_it() {
        use crate::model::prompt_cache::CachePrefix;
        let mut r = routing(&[("a", None), ("b", None)]);
        let now = Instant::now();
        r.learn(0, Some("org-1"), None, true);
        r.learn(1, Some("org-2"), None, true);
        let prefix = CachePrefix {
            key: 42,
            tokens: 5,
            ttl_ms: 300_000,
        };
        let cached = Request {
            cache: Some(prefix),
            ..request()
        };
        let first = r.choose("t", &cached, now).expect("the writer");
        // While it writes, the others wait for it (on its organization).
        let again = r.choose("t", &cached, now);
        assert!(again.is_err(), "waits for the write");
        let usage = Usage {
            input_tokens: 5,
            output_tokens: 5,
            cache_creation_input_tokens: Some(5),
            ..Default::default()
        };
        let headers = RateLimitHeaders {
            dims: [DimHeaders::default(); 3],
        };
        r.settle(&first, Answer::Ran, Some(&usage), &headers, now);
        for _ in 0..6 {
            let c = r.choose("t", &cached, now).expect("reads");
            assert_eq!(c.group, first.group, "stays where the prefix is cached");
        }
    }

    #[test]
    fn a_workspace_with_limits_of_its_own_is_a_tighter_bucket_inside_its_organization() {
        let mut r = routing(&[("app", None), ("nightly", None)]);
        let now = Instant::now();
        r.learn(0, Some("org-1"), Some("ws-app"), true);
        r.learn(1, Some("org-1"), Some("ws-nightly"), true);
        assert_eq!(r.groups(now).len(), 1, "one organization");
        let headers = |limit: u64, remaining: u64| RateLimitHeaders {
            dims: [
                DimHeaders {
                    limit: Some(limit),
                    remaining: Some(remaining),
                    reset_in: Some(1.0),
                },
                DimHeaders::default(),
                DimHeaders::default(),
            ],
        };
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 5,
            ..Default::default()
        };
        // The app's answers give the organization's 600; the nightly workspace's its own 60.
        let app = r.choose("t", &request(), now).expect("admitted");
        assert_eq!(r.route_name(app.route), "app", "name order breaks the tie");
        r.settle(&app, Answer::Ran, Some(&usage), &headers(600, 590), now);
        r.pause_route(
            0,
            Pause {
                until: now + Duration::from_secs(60),
                reason: "test".into(),
                owner: Owner::Key,
            },
        );
        let nightly = r.choose("t", &request(), now).expect("admitted");
        assert!(nightly.inner.is_none(), "not known to be tight yet");
        r.settle(&nightly, Answer::Ran, Some(&usage), &headers(60, 50), now);
        let groups = r.groups(now);
        let keys: Vec<&str> = groups.iter().map(|g| g.group.as_str()).collect();
        assert_eq!(keys, ["org-1", "org-1/ws-nightly"]);
        assert_eq!(groups[1].routes, ["nightly"]);
        // The organization keeps its own limit; the workspace's buckets have theirs.
        assert_eq!(groups[0].classes[0].dims[0].limit_per_minute, Some(600.0));
        let next = r.choose("t", &request(), now).expect("admitted");
        let (ws, _) = next.inner.as_ref().expect("the workspace's own ticket");
        assert_eq!(ws, "ws-nightly");
        r.settle(&next, Answer::Ran, Some(&usage), &headers(60, 49), now);
        let groups = r.groups(now);
        assert_eq!(groups[0].classes[0].dims[0].limit_per_minute, Some(600.0));
        assert_eq!(groups[1].classes[0].dims[0].limit_per_minute, Some(60.0));
        assert!(
            r.learned(now)
                .iter()
                .any(|(k, _, _)| k == "org-1/ws-nightly")
        );
    }

    #[test]
    fn restored_and_learned_state_is_kept_per_organization() {
        let mut r = routing(&[("a", None)]);
        let now = Instant::now();
        let c = r.choose("t", &request(), now).expect("probe");
        ran(&mut r, &c, now);
        assert_eq!(r.learned(now)[0].0, "route:a");
        r.learn(0, Some("org-9"), Some("ws"), true);
        let learned = r.learned(now);
        assert_eq!(learned[0].0, "org-9");
        let mut fresh = routing(&[("a", None)]);
        fresh.learn(0, Some("org-9"), Some("ws"), true);
        fresh.restore("org-9", &learned[0].2, Duration::ZERO, now);
        let restored = &fresh.learned(now)[0].2;
        assert_eq!(restored.outputs, learned[0].2.outputs);
        assert_eq!(restored.dims[0], learned[0].2.dims[0], "the request bucket");
    }
}
