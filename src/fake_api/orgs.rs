//! Organizations: which key belongs to which organization and workspace ([`Directory`], fixed at
//! start), and what the API keeps per organization ([`OrgState`]: its rate-limit buckets, prompt
//! cache, batches, spend-cap switch and counters) and per workspace ([`WorkspaceState`]: its own
//! buckets, if it has limits, and counters). Pure, time passed in.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use super::batches::BatchStore;
use super::cache::Cache;
use super::limits::{ClassBuckets, ClassLimits, TokenBucket};
use super::{FakeLimits, FakeOrg, OrgStats};

/// The `anthropic-organization-id` of the implicit organization (a fake without
/// [`super::FakeConfig::orgs`]).
pub const ORGANIZATION_ID: &str = "6d1f2c3a-8b4e-4f5a-9c7d-0e1f2a3b4c5d";

/// The `anthropic-workspace-id` of the implicit organization (a fake without
/// [`super::FakeConfig::orgs`]).
pub const DEFAULT_WORKSPACE_ID: &str = "wrkspc_fake_default";

/// An organization's names, as the headers of its answers carry them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OrgIdentity {
    pub(super) id: String,
    /// The ids of its workspaces, numbered as in [`Caller::workspace`]: its default workspace
    /// first, then those of [`FakeOrg::workspaces`] in order.
    pub(super) workspaces: Vec<String>,
}

/// Whose a key is: an organization and one of its workspaces (0: its default one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Caller {
    pub(super) org: usize,
    pub(super) workspace: usize,
}

impl Caller {
    /// The default workspace of organization `org`.
    pub(super) fn default_of(org: usize) -> Caller {
        Caller { org, workspace: 0 }
    }
}

/// The organizations, their workspaces and their keys, fixed at start. Organizations are
/// numbered in the order configured; the implicit one is number 0.
#[derive(Debug)]
pub(super) struct Directory {
    pub(super) orgs: Vec<OrgIdentity>,
    /// Each configured key's organization and workspace.
    keys: HashMap<String, Caller>,
    /// No organizations configured and no `api_key`: any non-empty key is organization 0's.
    open: bool,
    /// Whether organization 0 is the implicit one (no organizations configured).
    pub(super) implicit: bool,
}

impl Directory {
    /// The directory of `orgs`, or of the implicit organization (with `api_key` its only key,
    /// or any key when `None`) when `orgs` is empty. Err: why the organizations are unusable
    /// (an organization id given twice, a workspace id given twice in one organization or empty,
    /// a key given twice in the whole fake, an empty key).
    pub(super) fn new(orgs: &[FakeOrg], api_key: Option<&str>) -> Result<Directory, String> {
        if orgs.is_empty() {
            let identity = OrgIdentity {
                id: ORGANIZATION_ID.to_string(),
                workspaces: vec![DEFAULT_WORKSPACE_ID.to_string()],
            };
            let keys = api_key
                .map(|k| (k.to_string(), Caller::default_of(0)))
                .into_iter()
                .collect();
            return Ok(Directory {
                orgs: vec![identity],
                keys,
                open: api_key.is_none(),
                implicit: true,
            });
        }
        let mut keys = HashMap::new();
        let mut ids = HashSet::new();
        let mut identities = Vec::with_capacity(orgs.len());
        for (index, org) in orgs.iter().enumerate() {
            if !ids.insert(org.id.as_str()) {
                return Err(format!("organization {:?} is given twice", org.id));
            }
            let mut workspaces = vec![org.workspace_id.clone()];
            let mut key_sets = vec![(Caller::default_of(index), &org.keys)];
            for workspace in &org.workspaces {
                if workspace.id.trim().is_empty() || workspaces.contains(&workspace.id) {
                    return Err(format!(
                        "organization {:?} has an empty workspace id or gives {:?} twice",
                        org.id, workspace.id
                    ));
                }
                let caller = Caller {
                    org: index,
                    workspace: workspaces.len(),
                };
                workspaces.push(workspace.id.clone());
                key_sets.push((caller, &workspace.keys));
            }
            for (caller, set) in key_sets {
                for key in set {
                    if key.trim().is_empty() || key.trim() != key {
                        return Err(format!(
                            "organization {:?} has an empty key or one with surrounding spaces",
                            org.id
                        ));
                    }
                    if keys.insert(key.clone(), caller).is_some() {
                        return Err(format!(
                            "key {key:?} is given to more than one organization or workspace"
                        ));
                    }
                }
            }
            identities.push(OrgIdentity {
                id: org.id.clone(),
                workspaces,
            });
        }
        Ok(Directory {
            orgs: identities,
            keys,
            open: false,
            implicit: false,
        })
    }

    /// The organization and workspace of a non-empty `key` that is not revoked, if any.
    pub(super) fn caller_of(&self, key: &str, revoked: &HashSet<String>) -> Option<Caller> {
        if revoked.contains(key) {
            return None;
        }
        match self.keys.get(key) {
            Some(&caller) => Some(caller),
            None => self.open.then_some(Caller::default_of(0)),
        }
    }

    /// The number of organization `org_id`.
    pub(super) fn index_of(&self, org_id: &str) -> Option<usize> {
        self.orgs.iter().position(|o| o.id == org_id)
    }

    /// Organization `org_id` and its workspace `workspace_id` (its default one included).
    pub(super) fn workspace_of(&self, org_id: &str, workspace_id: &str) -> Option<Caller> {
        let org = self.index_of(org_id)?;
        let workspace = self.orgs[org]
            .workspaces
            .iter()
            .position(|w| w == workspace_id)?;
        Some(Caller { org, workspace })
    }

    /// The organization an answer names when its request named none: the implicit one (its
    /// default workspace), if that is the only one.
    pub(super) fn fallback(&self) -> Option<Caller> {
        self.implicit.then_some(Caller::default_of(0))
    }

    /// The `anthropic-organization-id` and `anthropic-workspace-id` of `caller`.
    pub(super) fn names(&self, caller: Caller) -> (&str, &str) {
        let org = &self.orgs[caller.org];
        (&org.id, &org.workspaces[caller.workspace])
    }
}

/// The per-minute rates of the limits that are not per model class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EndpointRates {
    /// Shared by all batch endpoints.
    pub(super) batch_rpm: u64,
    pub(super) count_tokens_rpm: u64,
}

/// What the API keeps for one workspace of an organization.
#[derive(Debug, Default)]
pub(super) struct WorkspaceState {
    /// Its own Messages buckets per model class, inside the organization's (none without
    /// limits of its own; the default workspace never has any).
    pub(super) buckets: ClassBuckets,
    /// The counters of the calls through its keys.
    pub(super) stats: OrgStats,
}

/// What the API keeps for one organization.
pub(super) struct OrgState {
    /// Its own limits; `None`: the fake-wide ones.
    pub(super) own_limits: Option<FakeLimits>,
    /// Messages buckets per model class, under the limits in force (its own, else the
    /// fake-wide ones); shared by all its workspaces.
    pub(super) buckets: ClassBuckets,
    /// Shared RPM of the batch endpoints (only with limits).
    pub(super) batch_rpm: Option<TokenBucket>,
    /// RPM of `count_tokens` (only with limits).
    pub(super) count_tokens_rpm: Option<TokenBucket>,
    pub(super) batches: BatchStore,
    /// The prompt cache, which its Messages calls and batch requests share.
    pub(super) cache: Cache,
    /// While set, its Messages calls and batch creates get the spend-cap 429.
    pub(super) spend_cap_reached: bool,
    pub(super) stats: OrgStats,
    /// Its workspaces, numbered as in [`Caller::workspace`] (the default one first).
    pub(super) workspaces: Vec<WorkspaceState>,
}

impl OrgState {
    /// An organization with `own_limits` (`None`: `fake_wide`), full buckets and no batches,
    /// and workspaces with the limits of `workspace_limits` (its default one first, without).
    pub(super) fn new(
        own_limits: Option<FakeLimits>,
        fake_wide: Option<FakeLimits>,
        workspace_limits: impl IntoIterator<Item = Option<FakeLimits>>,
        rates: EndpointRates,
        batches: BatchStore,
        now: Instant,
    ) -> OrgState {
        let mut org = OrgState {
            own_limits,
            buckets: ClassBuckets::default(),
            batch_rpm: None,
            count_tokens_rpm: None,
            batches,
            cache: Cache::default(),
            spend_cap_reached: false,
            stats: OrgStats::default(),
            workspaces: workspace_limits
                .into_iter()
                .map(|limits| WorkspaceState {
                    buckets: ClassBuckets::new(limits),
                    stats: OrgStats::default(),
                })
                .collect(),
        };
        org.apply_limits(own_limits.or(fake_wide), rates, now);
        org
    }

    /// The limits in force (its own, else the fake-wide ones).
    pub(super) fn limits(&self) -> Option<FakeLimits> {
        self.buckets.limits()
    }

    /// Puts `limits` in force from `now`.
    ///
    /// Existing buckets keep their level, clamped to the new capacity (never raised), and
    /// refill at the new rate. `None` removes the buckets; limits set again later start from
    /// full ones. Its workspaces' own buckets are left as they are.
    pub(super) fn apply_limits(
        &mut self,
        limits: Option<FakeLimits>,
        rates: EndpointRates,
        now: Instant,
    ) {
        self.buckets.set_limits(limits, now);
        let Some(limits) = limits else {
            self.batch_rpm = None;
            self.count_tokens_rpm = None;
            return;
        };
        let burst = limits.burst_seconds;
        // The count_tokens RPM does not follow the Messages limits, only their presence.
        self.count_tokens_rpm
            .get_or_insert_with(|| TokenBucket::new(rates.count_tokens_rpm, burst, now));
        match self.batch_rpm.as_mut() {
            Some(bucket) => bucket.set_limit(rates.batch_rpm, burst, now),
            None => self.batch_rpm = Some(TokenBucket::new(rates.batch_rpm, burst, now)),
        }
    }

    /// The buckets of `class` a Messages call through `workspace` must pass (each created
    /// full on first use).
    pub(super) fn class_layers(
        &mut self,
        workspace: usize,
        class: &'static str,
        now: Instant,
    ) -> Layers<'_> {
        let mut buckets: Vec<&mut ClassLimits> =
            self.buckets.class(class, now).into_iter().collect();
        let own = self.workspaces[workspace].buckets.class(class, now);
        let workspace = own.is_some().then_some(buckets.len());
        buckets.extend(own);
        Layers { buckets, workspace }
    }
}

/// The buckets of a model class a Messages call must pass: its organization's (when it has
/// limits), then those of its key's workspace (when that has limits of its own).
pub(super) struct Layers<'a> {
    pub(super) buckets: Vec<&'a mut ClassLimits>,
    /// The index in `buckets` of the workspace's own.
    pub(super) workspace: Option<usize>,
}

/// When access resumes after the tier's spend cap: 00:00 UTC on the 1st of the month after
/// `wall_now`'s.
pub(super) fn spend_cap_resumes_at(wall_now: Timestamp) -> Timestamp {
    let first = wall_now
        .to_zoned(TimeZone::UTC)
        .date()
        .first_of_month()
        .checked_add(1.month())
        .ok();
    first
        .and_then(|date| date.to_zoned(TimeZone::UTC).ok())
        .map_or(wall_now, |zoned| zoned.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fake_api::FakeWorkspace;

    fn org(id: &str, keys: &[&str]) -> FakeOrg {
        FakeOrg::new(id, keys.iter().copied())
    }

    fn caller(org: usize, workspace: usize) -> Option<Caller> {
        Some(Caller { org, workspace })
    }

    #[test]
    fn without_orgs_the_implicit_org_takes_any_key_or_the_one_key() {
        let none = HashSet::new();
        let open = Directory::new(&[], None).expect("valid");
        assert_eq!(open.caller_of("anything", &none), caller(0, 0));
        assert_eq!(open.orgs[0].id, ORGANIZATION_ID);
        assert_eq!(open.fallback(), caller(0, 0));
        assert_eq!(
            open.names(Caller::default_of(0)),
            (ORGANIZATION_ID, DEFAULT_WORKSPACE_ID)
        );
        let one = Directory::new(&[], Some("sk-a")).expect("valid");
        assert_eq!(one.caller_of("sk-a", &none), caller(0, 0));
        assert_eq!(one.caller_of("sk-b", &none), None);
        let revoked = HashSet::from(["sk-a".to_string()]);
        assert_eq!(one.caller_of("sk-a", &revoked), None);
        assert_eq!(open.caller_of("sk-a", &revoked), None);
    }

    #[test]
    fn keys_pick_their_org_and_no_other_key_is_taken() {
        let none = HashSet::new();
        let directory = Directory::new(&[org("a", &["ka1", "ka2"]), org("b", &["kb"])], Some("x"))
            .expect("valid");
        assert_eq!(directory.caller_of("ka2", &none), caller(0, 0));
        assert_eq!(directory.caller_of("kb", &none), caller(1, 0));
        assert_eq!(directory.caller_of("x", &none), None, "api_key is ignored");
        assert_eq!(directory.index_of("b"), Some(1));
        assert_eq!(directory.fallback(), None);
        assert_eq!(directory.names(Caller::default_of(1)), ("b", "wrkspc_b"));
    }

    #[test]
    fn a_workspace_key_picks_its_workspace_of_its_org() {
        let none = HashSet::new();
        let a = org("a", &["ka"])
            .with_workspace(FakeWorkspace::new("ws-1", ["k1"]))
            .with_workspace(FakeWorkspace::new("ws-2", ["k2a", "k2b"]));
        let directory = Directory::new(&[org("b", &["kb"]), a], None).expect("valid");
        assert_eq!(directory.caller_of("ka", &none), caller(1, 0));
        assert_eq!(directory.caller_of("k1", &none), caller(1, 1));
        assert_eq!(directory.caller_of("k2b", &none), caller(1, 2));
        assert_eq!(
            directory.names(Caller {
                org: 1,
                workspace: 2
            }),
            ("a", "ws-2")
        );
        assert_eq!(directory.workspace_of("a", "ws-1"), caller(1, 1));
        assert_eq!(directory.workspace_of("a", "wrkspc_a"), caller(1, 0));
        assert_eq!(directory.workspace_of("b", "ws-1"), None);
        let revoked = HashSet::from(["k1".to_string()]);
        assert_eq!(directory.caller_of("k1", &revoked), None);
    }

    #[test]
    fn a_workspace_given_twice_or_a_key_shared_with_a_workspace_is_refused() {
        let twice = org("a", &["k"])
            .with_workspace(FakeWorkspace::new("w", ["k1"]))
            .with_workspace(FakeWorkspace::new("w", ["k2"]));
        assert!(Directory::new(&[twice], None).is_err());
        let default_again = org("a", &["k"]).with_workspace(FakeWorkspace::new("wrkspc_a", ["k1"]));
        assert!(Directory::new(&[default_again], None).is_err());
        let empty_id = org("a", &["k"]).with_workspace(FakeWorkspace::new(" ", ["k1"]));
        assert!(Directory::new(&[empty_id], None).is_err());
        let with_org_key = org("a", &["k"]).with_workspace(FakeWorkspace::new("w", ["k"]));
        assert!(Directory::new(&[with_org_key], None).is_err());
        let other_org = org("b", &["kb"]).with_workspace(FakeWorkspace::new("w", ["k"]));
        assert!(Directory::new(&[org("a", &["k"]), other_org], None).is_err());
        let empty_key = org("a", &["k"]).with_workspace(FakeWorkspace::new("w", [""]));
        assert!(Directory::new(&[empty_key], None).is_err());
        // The same workspace id in two organizations is two workspaces.
        let a = org("a", &["ka"]).with_workspace(FakeWorkspace::new("w", ["ka-w"]));
        let b = org("b", &["kb"]).with_workspace(FakeWorkspace::new("w", ["kb-w"]));
        assert!(Directory::new(&[a, b], None).is_ok());
    }

    #[test]
    fn a_key_or_id_given_twice_or_an_empty_key_is_refused() {
        assert!(Directory::new(&[org("a", &["k"]), org("b", &["k"])], None).is_err());
        assert!(Directory::new(&[org("a", &["k"]), org("a", &["l"])], None).is_err());
        assert!(Directory::new(&[org("a", &[""])], None).is_err());
        assert!(Directory::new(&[org("a", &[" k"])], None).is_err());
    }

    #[test]
    fn spend_cap_resumes_on_the_first_of_next_month() {
        let at = |s: &str| s.parse::<Timestamp>().expect("valid time");
        assert_eq!(
            spend_cap_resumes_at(at("2026-11-17T13:45:00Z")),
            at("2026-12-01T00:00:00Z")
        );
        assert_eq!(
            spend_cap_resumes_at(at("2026-12-31T23:59:59Z")),
            at("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            spend_cap_resumes_at(at("2027-01-01T00:00:00Z")),
            at("2027-02-01T00:00:00Z")
        );
    }
}
