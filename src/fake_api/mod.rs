//! The built-in fake Claude API.
//!
//! An HTTP server on 127.0.0.1 that behaves like the Anthropic API closely enough for
//! nightshift's tests, demo and benchmarks: the Messages endpoint (with per-model-class token
//! bucket rate limits and injectable faults) and the Message Batches endpoints (time-driven
//! lifecycle). See `/work/shared/anthropic-api.md` for the facts it follows.
//!
//! Layout:
//! - `server`: the hyper server, routing and auth ([`FakeApi`]); `endpoints`: the endpoints;
//!   `reply`: the API's answers and error shapes; `shared`: the state behind one lock.
//! - `messages`: models, validation, token counting and generated answers.
//! - `limits`: the token buckets (pure, time passed in).
//! - `batches`: the batch store (pure, time passed in).
//! - `orgs`: organizations and their workspaces: which key is whose, and what the API keeps per
//!   organization (its buckets, prompt cache, batches, spend-cap switch and counters) and per
//!   workspace (its own buckets, when it has limits, and counters).
//! - `load`: a load generator playing interactive traffic against a Messages endpoint
//!   ([`run_load`]).
//!
//! Randomness (fault draws, ids, expiries, result order) comes from RNGs seeded with
//! [`FakeConfig::seed`]; answer lengths come from a hash of the request.

mod batches;
mod cache;
mod endpoints;
mod limits;
mod load;
mod messages;
mod orgs;
mod reply;
mod server;
mod shared;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

pub use load::{LoadReport, LoadSpec, run_load};
pub use messages::{count_input_tokens, model_class};
pub use orgs::{DEFAULT_WORKSPACE_ID, ORGANIZATION_ID};
pub use server::FakeApi;

/// How the fake behaves.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Without `orgs`: `Some(k)`: `x-api-key` must equal `k`; `None`: any non-empty key is
    /// accepted. A missing key is always a 401. Ignored when `orgs` is not empty.
    pub api_key: Option<String>,
    /// The organizations, each with its keys. Empty (the default): one implicit organization,
    /// [`ORGANIZATION_ID`] with workspace [`DEFAULT_WORKSPACE_ID`], whose keys are as `api_key`
    /// says. Otherwise a request's key (`x-api-key`, or `Authorization: Bearer`) picks its
    /// organization and a key of none is a 401 `authentication_error`.
    ///
    /// What the real API keeps per organization is per organization here too: the Messages
    /// buckets of each model class, the batch RPM, the `count_tokens` RPM, the prompt cache
    /// (per organization and model) and the batch store (another organization's batch is a
    /// 404). A key of one of an organization's [`FakeOrg::workspaces`] is of that organization
    /// too, and a workspace with limits of its own adds its buckets inside the organization's.
    /// Every answer carries `anthropic-organization-id` of the key's organization and
    /// `anthropic-workspace-id` of the key's workspace (the default one for the organization's
    /// own keys); an answer whose request named no organization (a missing, unknown
    /// or revoked key, a path outside `/v1/`, `/_fake/stats`) carries the implicit organization's
    /// when `orgs` is empty (as before there were organizations) and none otherwise.
    pub orgs: Vec<FakeOrg>,
    /// Messages rate limits per model class (and the batch and `count_tokens` RPM) of every
    /// organization without limits of its own; `None` = no rate limits. Changeable at run time
    /// with [`FakeApi::set_limits`].
    pub limits: Option<FakeLimits>,
    /// Base latency added to every Messages answer.
    pub latency: Duration,
    pub faults: Faults,
    pub batch: BatchSettings,
    pub otpm_rule: OtpmRule,
    /// Requests per minute of `POST /v1/messages/count_tokens`, its own limit independent of the
    /// Messages limits (5,000 at the Start tier); only enforced when `limits` is set.
    pub count_tokens_rpm: u64,
    /// The deepest nesting of arrays and objects a request body may have; deeper is a 400 "error
    /// parsing the body", for a whole batch create. The real API does not publish its limit; the
    /// default is that of serde_json, the fake's parser.
    pub max_json_depth: usize,
    /// Seed of every random draw, so runs are reproducible.
    pub seed: u64,
    /// Keep the body of every Messages call, as received ([`FakeApi::message_bodies`]).
    pub keep_bodies: bool,
}

impl Default for FakeConfig {
    fn default() -> FakeConfig {
        FakeConfig {
            api_key: None,
            orgs: Vec::new(),
            limits: None,
            latency: Duration::ZERO,
            faults: Faults::default(),
            batch: BatchSettings::default(),
            otpm_rule: OtpmRule::default(),
            count_tokens_rpm: 5_000,
            max_json_depth: 128,
            seed: 1,
            keep_bodies: false,
        }
    }
}

/// One organization of the fake (see [`FakeConfig::orgs`]).
#[derive(Clone, Debug, PartialEq)]
pub struct FakeOrg {
    /// Its `anthropic-organization-id`.
    pub id: String,
    /// The `anthropic-workspace-id` of its default workspace, the one its own `keys` resolve to.
    pub workspace_id: String,
    /// Its API keys (of its default workspace), each non-empty and given once in the whole fake.
    pub keys: Vec<String>,
    /// Its own limits; `None`: those of [`FakeConfig::limits`] (as [`FakeApi::set_limits`]
    /// changes them). Changeable at run time with [`FakeApi::set_org_limits`]. They apply to
    /// every call of the organization, whichever workspace its key is of.
    pub limits: Option<FakeLimits>,
    /// Its other workspaces, each with its own keys (default: none). Everything but a
    /// workspace's own limits stays per organization: its buckets, batches, prompt cache and
    /// spend-cap switch are shared by all its workspaces.
    pub workspaces: Vec<FakeWorkspace>,
}

impl FakeOrg {
    /// Organization `id` with `keys`, workspace `wrkspc_<id>` and the fake-wide limits.
    pub fn new(
        id: impl Into<String>,
        keys: impl IntoIterator<Item = impl Into<String>>,
    ) -> FakeOrg {
        let id = id.into();
        FakeOrg {
            workspace_id: format!("wrkspc_{id}"),
            id,
            keys: keys.into_iter().map(Into::into).collect(),
            limits: None,
            workspaces: Vec::new(),
        }
    }

    /// The organization with `workspace` added.
    pub fn with_workspace(mut self, workspace: FakeWorkspace) -> FakeOrg {
        self.workspaces.push(workspace);
        self
    }
}

/// A workspace of an organization ([`FakeOrg::workspaces`]).
///
/// A call through one of its keys is of its organization (whose buckets, batches, prompt cache
/// and spend-cap switch it shares) and its answer carries `anthropic-workspace-id: <id>`. With
/// `limits`, the workspace also has buckets of its own per model class inside the
/// organization's: a Messages call must be admitted by both and is charged to both, a 429 from
/// the workspace's names "your workspace's rate limit", and the `anthropic-ratelimit-*` headers
/// report per dimension whichever of the two has less left (fact sheet §0, §2.1–2.2).
#[derive(Clone, Debug, PartialEq)]
pub struct FakeWorkspace {
    /// Its `anthropic-workspace-id`, not that of another workspace of its organization.
    pub id: String,
    /// Its API keys, each non-empty and given once in the whole fake.
    pub keys: Vec<String>,
    /// Its own Messages limits, lower than its organization's as a rule (the organization's
    /// apply on top either way); `None`: only the organization's. Changeable at run time with
    /// [`FakeApi::set_workspace_limits`]. The batch and `count_tokens` RPM stay the
    /// organization's.
    pub limits: Option<FakeLimits>,
}

impl FakeWorkspace {
    /// Workspace `id` with `keys` and no limits of its own.
    pub fn new(
        id: impl Into<String>,
        keys: impl IntoIterator<Item = impl Into<String>>,
    ) -> FakeWorkspace {
        FakeWorkspace {
            id: id.into(),
            keys: keys.into_iter().map(Into::into).collect(),
            limits: None,
        }
    }

    /// The workspace with `limits` of its own.
    pub fn with_limits(mut self, limits: FakeLimits) -> FakeWorkspace {
        self.limits = Some(limits);
        self
    }
}

/// Per-model-class limits. Each bucket holds `limit * burst_seconds / 60` (at least 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FakeLimits {
    pub rpm: u64,
    pub itpm: u64,
    pub otpm: u64,
    pub burst_seconds: f64,
}

/// How output tokens are charged against OTPM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OtpmRule {
    /// 2026 rule: output tokens are taken from the bucket when generated.
    #[default]
    Generated,
    /// 2025/Bedrock rule: `max_tokens` is reserved at admission and settled with real usage.
    MaxTokens,
}

/// Injected faults, each a probability in 0..=1.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// 529 `overloaded_error`.
    pub overloaded_529: f64,
    /// 500 `api_error`.
    pub server_error_500: f64,
    /// 429 `rate_limit_error` with `retry-after: 1`, independent of the buckets.
    pub rate_limited_429: f64,
    /// A 429 as a gateway in front of the API gives it: a body not in the API's error shape,
    /// `retry-after: 1`, and no `request-id`, no `anthropic-organization-id` or
    /// `anthropic-workspace-id` and no `anthropic-ratelimit-*` headers. Counted in
    /// `rate_limited_429`; nothing is processed. Drawn on Messages calls, as the others are.
    pub gateway_429: f64,
    /// The request is fully processed and counted, then the connection is closed unanswered.
    pub drop_after_processing: f64,
    /// Probability of adding `slow_latency` to an answer.
    pub slow: f64,
    pub slow_latency: Duration,
}

/// Message Batches behaviour.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchSettings {
    /// Time from creation until a batch ends.
    pub processing_time: Duration,
    /// Probability that a valid request ends `expired`.
    pub expire_fraction: f64,
    /// Probability that a valid request ends `errored` with a retryable `api_error`.
    pub error_fraction: f64,
    /// RPM shared by all batch endpoints (enforced when `FakeConfig::limits` is set).
    pub rpm: u64,
    /// Most batch requests in processing at once.
    pub queue_cap: u64,
    /// Delay between creating a batch and answering the create call.
    pub create_latency: Duration,
}

impl Default for BatchSettings {
    fn default() -> BatchSettings {
        BatchSettings {
            processing_time: Duration::from_secs(2),
            expire_fraction: 0.0,
            error_fraction: 0.0,
            rpm: 1000,
            queue_cap: 200_000,
            create_latency: Duration::ZERO,
        }
    }
}

/// Counters of what the fake has done (also served as JSON on `GET /_fake/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FakeStats {
    /// Messages requests processed and answered 200.
    pub messages_accepted: u64,
    /// Messages requests processed (tokens counted) whose connection was then dropped.
    pub messages_dropped: u64,
    /// All 429s (buckets, injected, batch RPM and queue cap).
    pub rate_limited_429: u64,
    pub overloaded_529: u64,
    pub server_error_500: u64,
    /// 400/401/404/413 answers.
    pub invalid_4xx: u64,
    /// Over processed Messages requests (accepted + dropped), as their `usage` says:
    /// `input_tokens` is the input neither read from nor written to the cache.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_write_5m_tokens: u64,
    pub cache_write_1h_tokens: u64,
    /// Messages calls that read from the cache.
    pub cache_hit_calls: u64,
    pub batches_created: u64,
    /// Batch create calls whose body is byte for byte one sent before (created or refused).
    pub repeated_batch_creates: u64,
    pub batch_requests: u64,
    pub batch_succeeded: u64,
    pub batch_errored: u64,
    pub batch_expired: u64,
    pub batch_canceled: u64,
    pub batch_input_tokens: u64,
    pub batch_output_tokens: u64,
    pub batch_cache_read_input_tokens: u64,
    pub batch_cache_write_5m_tokens: u64,
    pub batch_cache_write_1h_tokens: u64,
    /// `count_tokens` requests answered with a count.
    pub count_tokens_calls: u64,
    /// The counters of each configured organization, by id (empty without
    /// [`FakeConfig::orgs`]: then the counters above are the implicit organization's).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub orgs: BTreeMap<String, OrgStats>,
}

/// Counters of one organization ([`FakeStats::orgs`], [`FakeApi::org_stats`]), or of the calls
/// through one workspace's keys ([`FakeApi::workspace_stats`]); each counts as the
/// [`FakeStats`] field of the same name does.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OrgStats {
    /// Messages requests processed and answered 200.
    pub messages_accepted: u64,
    /// Messages requests processed whose connection was then dropped.
    pub messages_dropped: u64,
    /// All its 429s (buckets, spend cap, injected, gateway, batch RPM and queue cap).
    pub rate_limited_429: u64,
    /// Over its processed Messages requests, as their `usage` says.
    pub input_tokens: u64,
    /// Over its processed Messages requests.
    pub output_tokens: u64,
    /// Over its processed Messages requests.
    pub cache_read_input_tokens: u64,
    /// Over its processed Messages requests.
    pub cache_write_5m_tokens: u64,
    /// Over its processed Messages requests.
    pub cache_write_1h_tokens: u64,
    /// Batches it created.
    pub batches_created: u64,
    /// Requests in the batches it created.
    pub batch_requests: u64,
    /// Its `count_tokens` requests answered with a count.
    pub count_tokens_calls: u64,
}
