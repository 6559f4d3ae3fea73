//! What every handler of the fake shares: its configuration and mutable state behind one lock,
//! and reading a request's body.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Request, StatusCode};
use serde_json::Value;

use super::batches::{BatchStore, ResolveSettings};
use super::orgs::{Caller, Directory, EndpointRates, OrgState};
use super::reply::ApiError;
use super::{BatchSettings, FakeConfig, FakeLimits, FakeStats, Faults, OrgStats, OtpmRule};

/// Messages body limit (32 MB).
pub(super) const MESSAGES_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Batch create body limit (256 MB).
pub(super) const BATCH_MAX_BYTES: usize = 256 * 1024 * 1024;

/// Configuration plus the mutable state behind one lock.
pub(super) struct Shared {
    /// The organizations and their keys.
    pub(super) directory: Directory,
    pub(super) latency: Duration,
    pub(super) otpm_rule: OtpmRule,
    pub(super) seed: u64,
    pub(super) batch: BatchSettings,
    /// The batch and `count_tokens` RPM of every organization.
    pub(super) rates: EndpointRates,
    pub(super) max_json_depth: usize,
    pub(super) keep_bodies: bool,
    pub(super) base_url: String,
    pub(super) state: Mutex<State>,
}

pub(super) struct State {
    /// The fake-wide Messages rate limits, of every organization without its own (changed by
    /// [`FakeApi::set_limits`]).
    pub(super) limits: Option<FakeLimits>,
    pub(super) faults: Faults,
    pub(super) stats: FakeStats,
    /// Request and message ids.
    pub(super) ids: fastrand::Rng,
    /// Fault, slow and drop draws.
    pub(super) draws: fastrand::Rng,
    /// Each organization's buckets, cache, batches and counters, numbered as in the directory.
    pub(super) orgs: Vec<OrgState>,
    /// Keys revoked at run time ([`FakeApi::revoke_key`]).
    pub(super) revoked: HashSet<String>,
    /// Messages bodies as received, when kept.
    pub(super) message_bodies: Vec<Bytes>,
    /// Hashes of every batch create body seen.
    pub(super) create_bodies: HashSet<u64>,
}

impl State {
    /// The counters of `caller`'s organization and of its workspace, to count one thing in both.
    pub(super) fn caller_stats(&mut self, caller: Caller) -> [&mut OrgStats; 2] {
        let org = &mut self.orgs[caller.org];
        [&mut org.stats, &mut org.workspaces[caller.workspace].stats]
    }

    /// Resolves the batches of organization `org` that are due at `now`.
    pub(super) fn refresh_batches(&mut self, org: usize, now: Instant) {
        let org = &mut self.orgs[org];
        org.batches.refresh(now, &mut self.stats, &mut org.cache);
    }
}

impl Shared {
    /// Err: why `config.orgs` is unusable.
    pub(super) fn new(config: FakeConfig, base_url: String) -> Result<Shared, String> {
        let now = Instant::now();
        let directory = Directory::new(&config.orgs, config.api_key.as_deref())?;
        let rates = EndpointRates {
            batch_rpm: config.batch.rpm,
            count_tokens_rpm: config.count_tokens_rpm,
        };
        let resolve = ResolveSettings {
            processing_time: config.batch.processing_time,
            expire_fraction: config.batch.expire_fraction,
            error_fraction: config.batch.error_fraction,
            seed: config.seed,
        };
        let orgs = (0..directory.orgs.len())
            .map(|index| {
                let batches = BatchStore::new(resolve, index as u64);
                let org = config.orgs.get(index);
                // The default workspace has the organization's limits only.
                let workspace_limits = std::iter::once(None).chain(
                    org.into_iter()
                        .flat_map(|o| o.workspaces.iter().map(|w| w.limits)),
                );
                let own_limits = org.and_then(|o| o.limits);
                OrgState::new(
                    own_limits,
                    config.limits,
                    workspace_limits,
                    rates,
                    batches,
                    now,
                )
            })
            .collect();
        Ok(Shared {
            directory,
            latency: config.latency,
            otpm_rule: config.otpm_rule,
            seed: config.seed,
            batch: config.batch,
            rates,
            max_json_depth: config.max_json_depth,
            keep_bodies: config.keep_bodies,
            base_url,
            state: Mutex::new(State {
                limits: config.limits,
                faults: config.faults,
                stats: FakeStats::default(),
                ids: fastrand::Rng::with_seed(config.seed),
                draws: fastrand::Rng::with_seed(config.seed ^ 0x5eed_fa17_0000_0002),
                orgs,
                revoked: HashSet::new(),
                message_bodies: Vec::new(),
                create_bodies: HashSet::new(),
            }),
        })
    }

    /// Locks the state. A panic while holding the lock cannot leave it inconsistent in a way
    /// that matters for a test fake, so poisoning is ignored.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// The counters, every organization's batches due by now resolved first.
    pub(super) fn stats_snapshot(&self) -> FakeStats {
        let mut state = self.lock();
        let now = Instant::now();
        for org in 0..state.orgs.len() {
            state.refresh_batches(org, now);
        }
        let mut stats = state.stats.clone();
        if !self.directory.implicit {
            stats.orgs = self
                .directory
                .orgs
                .iter()
                .zip(&state.orgs)
                .map(|(identity, org)| (identity.id.clone(), org.stats.clone()))
                .collect();
        }
        stats
    }

    /// The number of organization `org_id`. Panics when there is none: the fake's controls are
    /// for tests, where a wrong id is a mistake to see at once.
    pub(super) fn org_index(&self, org_id: &str) -> usize {
        self.directory
            .index_of(org_id)
            .unwrap_or_else(|| panic!("the fake API has no organization {org_id:?}"))
    }

    /// Organization `org_id` and its workspace `workspace_id` (its default one included).
    /// Panics when there is none, as [`Shared::org_index`] does.
    pub(super) fn workspace(&self, org_id: &str, workspace_id: &str) -> Caller {
        self.directory
            .workspace_of(org_id, workspace_id)
            .unwrap_or_else(|| {
                panic!("the fake API has no workspace {workspace_id:?} in organization {org_id:?}")
            })
    }
}

/// Reads the whole body, refusing more than `max` bytes with 413.
pub(super) async fn read_body(request: Request<Incoming>, max: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("Request exceeds the maximum allowed number of bytes ({max})."),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(error) => Err(ApiError::invalid(format!(
            "could not read the body: {error}"
        ))),
    }
}

impl Shared {
    /// A request body as JSON, or the 400 the API gives a body its parser cannot read.
    pub(super) fn parse_json(&self, body: &[u8]) -> Result<Value, ApiError> {
        let parse_error = |error: String| {
            ApiError::invalid(format!("There was an error parsing the body: {error}"))
        };
        if nesting_depth(body) > self.max_json_depth {
            return Err(parse_error(format!(
                "nesting deeper than {} levels",
                self.max_json_depth
            )));
        }
        serde_json::from_slice(body).map_err(|error| parse_error(error.to_string()))
    }
}

/// The deepest nesting of arrays and objects in a JSON text (what is inside strings aside).
fn nesting_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::nesting_depth;

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        assert_eq!(nesting_depth(br#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(nesting_depth(br#"{"a":"[[[{{{\\\"[["}"#), 1);
        assert_eq!(nesting_depth(b"7"), 0);
    }
}
