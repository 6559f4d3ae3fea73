//! Organizations: which key belongs to which ([`Directory`], fixed at start), and what the API
//! keeps per organization ([`OrgState`]: its rate-limit buckets, prompt cache, batches, spend-cap
//! switch and counters). Pure, time passed in.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use super::batches::BatchStore;
use super::cache::Cache;
use super::limits::{ClassLimits, TokenBucket};
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
    pub(super) workspace_id: String,
}

/// The organizations and their keys, fixed at start. Organizations are numbered in the order
/// configured; the implicit one is number 0.
#[derive(Debug)]
pub(super) struct Directory {
    pub(super) orgs: Vec<OrgIdentity>,
    /// Each configured key's organization.
    keys: HashMap<String, usize>,
    /// No organizations configured and no `api_key`: any non-empty key is organization 0's.
    open: bool,
    /// Whether organization 0 is the implicit one (no organizations configured).
    pub(super) implicit: bool,
}

impl Directory {
    /// The directory of `orgs`, or of the implicit organization (with `api_key` its only key,
    /// or any key when `None`) when `orgs` is empty. Err: why the organizations are unusable
    /// (an id or key given twice, an empty key).
    pub(super) fn new(orgs: &[FakeOrg], api_key: Option<&str>) -> Result<Directory, String> {
        if orgs.is_empty() {
            let identity = OrgIdentity {
                id: ORGANIZATION_ID.to_string(),
                workspace_id: DEFAULT_WORKSPACE_ID.to_string(),
            };
            let keys = api_key.map(|k| (k.to_string(), 0)).into_iter().collect();
            return Ok(Directory {
                orgs: vec![identity],
                keys,
                open: api_key.is_none(),
                implicit: true,
            });
        }
        let mut keys = HashMap::new();
        let mut ids = HashSet::new();
        for (index, org) in orgs.iter().enumerate() {
            if !ids.insert(org.id.as_str()) {
                return Err(format!("organization {:?} is given twice", org.id));
            }
            for key in &org.keys {
                if key.trim().is_empty() || key.trim() != key {
                    return Err(format!(
                        "organization {:?} has an empty key or one with surrounding spaces",
                        org.id
                    ));
                }
                if keys.insert(key.clone(), index).is_some() {
                    return Err(format!(
                        "key {key:?} is given to more than one organization"
                    ));
                }
            }
        }
        Ok(Directory {
            orgs: orgs
                .iter()
                .map(|o| OrgIdentity {
                    id: o.id.clone(),
                    workspace_id: o.workspace_id.clone(),
                })
                .collect(),
            keys,
            open: false,
            implicit: false,
        })
    }

    /// The organization of a non-empty `key` that is not revoked, if any.
    pub(super) fn org_of(&self, key: &str, revoked: &HashSet<String>) -> Option<usize> {
        if revoked.contains(key) {
            return None;
        }
        match self.keys.get(key) {
            Some(&index) => Some(index),
            None => self.open.then_some(0),
        }
    }

    /// The number of organization `org_id`.
    pub(super) fn index_of(&self, org_id: &str) -> Option<usize> {
        self.orgs.iter().position(|o| o.id == org_id)
    }

    /// The organization an answer names when its request named none: the implicit one, if
    /// that is the only one.
    pub(super) fn fallback(&self) -> Option<usize> {
        self.implicit.then_some(0)
    }
}

/// The per-minute rates of the limits that are not per model class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EndpointRates {
    /// Shared by all batch endpoints.
    pub(super) batch_rpm: u64,
    pub(super) count_tokens_rpm: u64,
}

/// What the API keeps for one organization.
pub(super) struct OrgState {
    /// Its own limits; `None`: the fake-wide ones.
    pub(super) own_limits: Option<FakeLimits>,
    /// The limits in force (its own, else the fake-wide ones).
    pub(super) limits: Option<FakeLimits>,
    /// Messages buckets per model class, created on first use.
    classes: HashMap<&'static str, ClassLimits>,
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
}

impl OrgState {
    /// An organization with `own_limits` (`None`: `fake_wide`), full buckets and no batches.
    pub(super) fn new(
        own_limits: Option<FakeLimits>,
        fake_wide: Option<FakeLimits>,
        rates: EndpointRates,
        batches: BatchStore,
        now: Instant,
    ) -> OrgState {
        let mut org = OrgState {
            own_limits,
            limits: None,
            classes: HashMap::new(),
            batch_rpm: None,
            count_tokens_rpm: None,
            batches,
            cache: Cache::default(),
            spend_cap_reached: false,
            stats: OrgStats::default(),
        };
        org.apply_limits(own_limits.or(fake_wide), rates, now);
        org
    }

    /// Puts `limits` in force from `now`.
    ///
    /// Existing buckets keep their level, clamped to the new capacity (never raised), and
    /// refill at the new rate. `None` removes the buckets; limits set again later start from
    /// full ones.
    pub(super) fn apply_limits(
        &mut self,
        limits: Option<FakeLimits>,
        rates: EndpointRates,
        now: Instant,
    ) {
        self.limits = limits;
        let Some(limits) = limits else {
            self.classes.clear();
            self.batch_rpm = None;
            self.count_tokens_rpm = None;
            return;
        };
        for class in self.classes.values_mut() {
            class.set_limits(&limits, now);
        }
        let burst = limits.burst_seconds;
        // The count_tokens RPM does not follow the Messages limits, only their presence.
        self.count_tokens_rpm
            .get_or_insert_with(|| TokenBucket::new(rates.count_tokens_rpm, burst, now));
        match self.batch_rpm.as_mut() {
            Some(bucket) => bucket.set_limit(rates.batch_rpm, burst, now),
            None => self.batch_rpm = Some(TokenBucket::new(rates.batch_rpm, burst, now)),
        }
    }

    /// The buckets of `class` (created full on first use), or `None` without limits.
    pub(super) fn class_limits(
        &mut self,
        class: &'static str,
        now: Instant,
    ) -> Option<&mut ClassLimits> {
        let limits = self.limits?;
        Some(
            self.classes
                .entry(class)
                .or_insert_with(|| ClassLimits::new(&limits, now)),
        )
    }
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

    fn org(id: &str, keys: &[&str]) -> FakeOrg {
        FakeOrg::new(id, keys.iter().copied())
    }

    #[test]
    fn without_orgs_the_implicit_org_takes_any_key_or_the_one_key() {
        let none = HashSet::new();
        let open = Directory::new(&[], None).expect("valid");
        assert_eq!(open.org_of("anything", &none), Some(0));
        assert_eq!(open.orgs[0].id, ORGANIZATION_ID);
        assert_eq!(open.fallback(), Some(0));
        let one = Directory::new(&[], Some("sk-a")).expect("valid");
        assert_eq!(one.org_of("sk-a", &none), Some(0));
        assert_eq!(one.org_of("sk-b", &none), None);
        let revoked = HashSet::from(["sk-a".to_string()]);
        assert_eq!(one.org_of("sk-a", &revoked), None);
        assert_eq!(open.org_of("sk-a", &revoked), None);
    }

    #[test]
    fn keys_pick_their_org_and_no_other_key_is_taken() {
        let none = HashSet::new();
        let directory = Directory::new(&[org("a", &["ka1", "ka2"]), org("b", &["kb"])], Some("x"))
            .expect("valid");
        assert_eq!(directory.org_of("ka2", &none), Some(0));
        assert_eq!(directory.org_of("kb", &none), Some(1));
        assert_eq!(directory.org_of("x", &none), None, "api_key is ignored");
        assert_eq!(directory.index_of("b"), Some(1));
        assert_eq!(directory.fallback(), None);
        assert_eq!(directory.orgs[1].workspace_id, "wrkspc_b");
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
