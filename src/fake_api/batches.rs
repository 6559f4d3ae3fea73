//! Message Batches: the in-memory batch store.
//!
//! Batches are time-driven without a background timer: whenever the store is touched, batches
//! whose processing time has passed (or that were canceled) are resolved. The clock is passed
//! in, so the logic stays testable.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::{Value, json};

use super::FakeStats;
use super::cache::Cache;
use super::messages::{
    ApiVersion, ParamsError, hash_bytes, message_json, plan_generation, validate_params,
};

/// Most requests a single batch may hold.
pub(crate) const MAX_REQUESTS_PER_BATCH: usize = 100_000;

/// One request of a batch, as submitted.
#[derive(Clone, Debug)]
pub(crate) struct BatchRequest {
    pub custom_id: String,
    pub params: Value,
}

/// The final state of a batch.
#[derive(Clone, Debug, Default)]
struct Outcome {
    ended_at: Timestamp,
    succeeded: u64,
    errored: u64,
    canceled: u64,
    expired: u64,
    /// JSONL lines, already in (shuffled) output order.
    lines: Vec<String>,
}

#[derive(Clone, Debug)]
struct Batch {
    id: String,
    version: ApiVersion,
    created_at: Timestamp,
    /// When processing ends (monotonic clock).
    ends_at: Instant,
    /// The same moment on the wall clock.
    ends_at_wall: Timestamp,
    total: u64,
    /// Emptied once the batch is resolved.
    requests: Vec<BatchRequest>,
    cancel_initiated_at: Option<Timestamp>,
    outcome: Option<Outcome>,
}

impl Batch {
    fn is_ended(&self) -> bool {
        self.outcome.is_some()
    }

    fn to_json(&self, base_url: &str) -> Value {
        let status = if self.is_ended() {
            "ended"
        } else if self.cancel_initiated_at.is_some() {
            "canceling"
        } else {
            "in_progress"
        };
        let counts = match &self.outcome {
            Some(o) => json!({
                "processing": 0,
                "succeeded": o.succeeded,
                "errored": o.errored,
                "canceled": o.canceled,
                "expired": o.expired,
            }),
            None => json!({
                "processing": self.total,
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            }),
        };
        let expires_at = self
            .created_at
            .checked_add(jiff::SignedDuration::from_hours(24))
            .unwrap_or(self.created_at);
        json!({
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": self.outcome.as_ref().map(|o| o.ended_at.to_string()),
            "created_at": self.created_at.to_string(),
            "expires_at": expires_at.to_string(),
            "archived_at": null,
            "cancel_initiated_at": self.cancel_initiated_at.map(|t| t.to_string()),
            "results_url": self.is_ended().then(|| format!("{base_url}/v1/messages/batches/{}/results", self.id)),
        })
    }
}

/// Why a batch operation failed (mapped to HTTP by the server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BatchError {
    /// 404 `not_found_error`.
    NotFound(String),
    /// 400 `invalid_request_error`.
    Invalid(String),
}

/// Settings needed to resolve batches.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResolveSettings {
    pub processing_time: Duration,
    pub expire_fraction: f64,
    pub error_fraction: f64,
    pub seed: u64,
}

/// All batches of one organization, in creation order.
pub(crate) struct BatchStore {
    batches: HashMap<String, Batch>,
    /// Ids, oldest first.
    order: Vec<String>,
    rng: fastrand::Rng,
    settings: ResolveSettings,
}

/// `prefix` followed by 24 base62 characters.
pub(crate) fn random_id(rng: &mut fastrand::Rng, prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    for _ in 0..24 {
        id.push(rng.alphanumeric());
    }
    id
}

/// Checks a create body: 1..=100,000 requests with valid, unique `custom_id`s and object
/// `params` (the params themselves are checked when the batch is processed).
pub(crate) fn parse_create_body(body: &Value) -> Result<Vec<BatchRequest>, String> {
    let requests = match body.get("requests") {
        None => return Err("requests: Field required".into()),
        Some(Value::Array(requests)) => requests,
        Some(_) => return Err("requests: Input should be a valid list".into()),
    };
    if requests.is_empty() {
        return Err("requests: List should have at least 1 item after validation, not 0".into());
    }
    if requests.len() > MAX_REQUESTS_PER_BATCH {
        return Err(format!(
            "requests: List should have at most {MAX_REQUESTS_PER_BATCH} items after validation, not {}",
            requests.len()
        ));
    }
    let mut seen = HashSet::with_capacity(requests.len());
    let mut parsed = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        let custom_id = match request.get("custom_id") {
            None => return Err(format!("requests.{i}.custom_id: Field required")),
            Some(Value::String(id)) => id,
            Some(_) => {
                return Err(format!(
                    "requests.{i}.custom_id: Input should be a valid string"
                ));
            }
        };
        if !valid_custom_id(custom_id) {
            return Err(format!(
                "requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            ));
        }
        if !seen.insert(custom_id.as_str()) {
            return Err(format!(
                "requests.{i}.custom_id: Duplicate custom_id '{custom_id}'; custom_id values must be unique within a batch"
            ));
        }
        let params = match request.get("params") {
            None => return Err(format!("requests.{i}.params: Field required")),
            Some(params @ Value::Object(_)) => params.clone(),
            Some(_) => {
                return Err(format!(
                    "requests.{i}.params: Input should be a valid dictionary"
                ));
            }
        };
        parsed.push(BatchRequest {
            custom_id: custom_id.clone(),
            params,
        });
    }
    Ok(parsed)
}

fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl BatchStore {
    /// An empty store. Stores of different `stream`s (one per organization) draw different ids
    /// and fates; stream 0 draws what a store drew before there were organizations.
    pub(crate) fn new(settings: ResolveSettings, stream: u64) -> BatchStore {
        let stream = stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        BatchStore {
            batches: HashMap::new(),
            order: Vec::new(),
            rng: fastrand::Rng::with_seed(settings.seed ^ 0xba7c_4e55_0000_0001 ^ stream),
            settings,
        }
    }

    /// Resolves every batch whose time has come (or that was canceled).
    pub(crate) fn refresh(&mut self, now: Instant, stats: &mut FakeStats, cache: &mut Cache) {
        let due: Vec<String> = self
            .batches
            .values()
            .filter(|b| !b.is_ended() && (b.cancel_initiated_at.is_some() || now >= b.ends_at))
            .map(|b| b.id.clone())
            .collect();
        for id in due {
            if let Some(mut batch) = self.batches.remove(&id) {
                self.resolve(&mut batch, stats, cache);
                self.batches.insert(id, batch);
            }
        }
    }

    /// Requests still in processing across its batches (call `refresh` first).
    pub(crate) fn processing(&self) -> u64 {
        self.batches
            .values()
            .filter(|b| !b.is_ended())
            .map(|b| b.total)
            .sum()
    }

    /// Seconds until `extra` more requests fit under `cap` (`None` if they fit now).
    pub(crate) fn queue_wait(&self, extra: u64, cap: u64, now: Instant) -> Option<f64> {
        let mut processing = self.processing();
        if processing + extra <= cap {
            return None;
        }
        let mut pending: Vec<(Instant, u64)> = self
            .batches
            .values()
            .filter(|b| !b.is_ended())
            .map(|b| (b.ends_at, b.total))
            .collect();
        pending.sort_by_key(|(at, _)| *at);
        let mut wait = 0.0;
        for (at, total) in pending {
            processing -= total;
            wait = at.saturating_duration_since(now).as_secs_f64();
            if processing + extra <= cap {
                break;
            }
        }
        Some(wait)
    }

    /// Stores a new batch and returns its JSON object.
    pub(crate) fn create(
        &mut self,
        requests: Vec<BatchRequest>,
        version: ApiVersion,
        now: Instant,
        wall_now: Timestamp,
        base_url: &str,
    ) -> Value {
        let id = random_id(&mut self.rng, "msgbatch_");
        let processing_time = self.settings.processing_time;
        let ends_at_wall = wall_now.checked_add(processing_time).unwrap_or(wall_now);
        let batch = Batch {
            id: id.clone(),
            version,
            created_at: wall_now,
            ends_at: now + processing_time,
            ends_at_wall,
            total: requests.len() as u64,
            requests,
            cancel_initiated_at: None,
            outcome: None,
        };
        let json = batch.to_json(base_url);
        self.order.push(id.clone());
        self.batches.insert(id, batch);
        json
    }

    pub(crate) fn get(&self, id: &str, base_url: &str) -> Result<Value, BatchError> {
        self.batches
            .get(id)
            .map(|b| b.to_json(base_url))
            .ok_or_else(|| not_found(id))
    }

    /// Newest first. `after_id` pages toward older batches, `before_id` toward newer ones.
    pub(crate) fn list(
        &self,
        limit: usize,
        after_id: Option<&str>,
        before_id: Option<&str>,
        base_url: &str,
    ) -> Value {
        let newest_first: Vec<&String> = self.order.iter().rev().collect();
        let position = |id: &str| newest_first.iter().position(|x| x.as_str() == id);
        let (start, end, has_more) = if let Some(before) = before_id {
            let end = position(before).unwrap_or(0);
            let start = end.saturating_sub(limit);
            (start, end, start > 0)
        } else {
            let start = match after_id {
                Some(after) => position(after).map_or(newest_first.len(), |p| p + 1),
                None => 0,
            };
            let end = (start + limit).min(newest_first.len());
            (start, end, end < newest_first.len())
        };
        let page = &newest_first[start..end];
        let data: Vec<Value> = page
            .iter()
            .filter_map(|id| self.batches.get(id.as_str()))
            .map(|b| b.to_json(base_url))
            .collect();
        json!({
            "data": data,
            "has_more": has_more,
            "first_id": page.first(),
            "last_id": page.last(),
        })
    }

    /// Marks a batch canceled; it is resolved (all requests `canceled`) on the next refresh.
    /// Canceling an ended batch returns it unchanged.
    pub(crate) fn cancel(
        &mut self,
        id: &str,
        wall_now: Timestamp,
        base_url: &str,
    ) -> Result<Value, BatchError> {
        let batch = self.batches.get_mut(id).ok_or_else(|| not_found(id))?;
        if !batch.is_ended() && batch.cancel_initiated_at.is_none() {
            batch.cancel_initiated_at = Some(wall_now);
        }
        Ok(batch.to_json(base_url))
    }

    pub(crate) fn delete(&mut self, id: &str) -> Result<Value, BatchError> {
        let batch = self.batches.get(id).ok_or_else(|| not_found(id))?;
        if !batch.is_ended() {
            return Err(BatchError::Invalid(format!(
                "Batch {id} cannot be deleted while it is still processing; cancel it first"
            )));
        }
        self.batches.remove(id);
        self.order.retain(|x| x != id);
        Ok(json!({"id": id, "type": "message_batch_deleted"}))
    }

    /// The results as JSONL (only once the batch has ended).
    pub(crate) fn results(&self, id: &str) -> Result<String, BatchError> {
        let batch = self.batches.get(id).ok_or_else(|| not_found(id))?;
        let Some(outcome) = &batch.outcome else {
            return Err(BatchError::Invalid(format!(
                "Batch {id} has not finished processing; results are available once processing_status is 'ended'"
            )));
        };
        let mut jsonl = String::with_capacity(outcome.lines.iter().map(|l| l.len() + 1).sum());
        for line in &outcome.lines {
            jsonl.push_str(line);
            jsonl.push('\n');
        }
        Ok(jsonl)
    }

    /// Decides every request's result and counts them in `stats`.
    /// Requests are processed one after another when the batch ends, reading and writing the
    /// prompt cache as Messages calls do: the first of a shared prefix writes it, the others
    /// read it.
    fn resolve(&mut self, batch: &mut Batch, stats: &mut FakeStats, cache: &mut Cache) {
        let mut outcome = Outcome::default();
        let requests = std::mem::take(&mut batch.requests);
        if let Some(canceled_at) = batch.cancel_initiated_at {
            outcome.ended_at = canceled_at;
            outcome.canceled = requests.len() as u64;
            outcome.lines = requests
                .iter()
                .map(|r| result_line(&r.custom_id, json!({"type": "canceled"})))
                .collect();
        } else {
            outcome.ended_at = batch.ends_at_wall;
            for request in &requests {
                let result = self.resolve_one(request, batch.version, batch.ends_at, stats, cache);
                match result["type"].as_str() {
                    Some("succeeded") => outcome.succeeded += 1,
                    Some("errored") => outcome.errored += 1,
                    _ => outcome.expired += 1,
                }
                outcome.lines.push(result_line(&request.custom_id, result));
            }
        }
        self.rng.shuffle(&mut outcome.lines);
        stats.batch_succeeded += outcome.succeeded;
        stats.batch_errored += outcome.errored;
        stats.batch_canceled += outcome.canceled;
        stats.batch_expired += outcome.expired;
        batch.outcome = Some(outcome);
    }

    /// The `result` object of one request.
    fn resolve_one(
        &mut self,
        request: &BatchRequest,
        version: ApiVersion,
        at: Instant,
        stats: &mut FakeStats,
        cache: &mut Cache,
    ) -> Value {
        let valid = match validate_params(&request.params, version) {
            Ok(valid) => valid,
            Err(error) => {
                let (_, kind) = error.status_and_type();
                return json!({
                    "type": "errored",
                    "error": {
                        "type": "error",
                        "error": {"type": kind, "message": error_message(&error)},
                        "request_id": random_id(&mut self.rng, "req_"),
                    }
                });
            }
        };
        if self.rng.f64() < self.settings.expire_fraction {
            return json!({"type": "expired"});
        }
        if self.rng.f64() < self.settings.error_fraction {
            // A server-side failure: worth retrying as it is, unlike invalid_request_error.
            return json!({
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {"type": "api_error", "message": "Internal server error"},
                    "request_id": random_id(&mut self.rng, "req_"),
                }
            });
        }
        let body = serde_json::to_vec(&request.params).unwrap_or_default();
        let hash = hash_bytes(self.settings.seed, &body);
        let generation = plan_generation(hash, valid.max_tokens);
        let usage = cache.serve(&valid.model, &valid.layout, at, at);
        stats.batch_input_tokens += usage.uncached;
        stats.batch_output_tokens += generation.output_tokens;
        stats.batch_cache_read_input_tokens += usage.read;
        stats.batch_cache_write_5m_tokens += usage.write_5m;
        stats.batch_cache_write_1h_tokens += usage.write_1h;
        let id = random_id(&mut self.rng, "msg_");
        json!({
            "type": "succeeded",
            "message": message_json(&id, &valid.model, usage, hash, generation, "batch"),
        })
    }
}

fn error_message(error: &ParamsError) -> String {
    error.message().to_string()
}

fn result_line(custom_id: &str, result: Value) -> String {
    json!({"custom_id": custom_id, "result": result}).to_string()
}

fn not_found(id: &str) -> BatchError {
    BatchError::NotFound(format!("Batch {id} not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(expire_fraction: f64) -> ResolveSettings {
        ResolveSettings {
            processing_time: Duration::from_secs(10),
            expire_fraction,
            error_fraction: 0.0,
            seed: 7,
        }
    }

    fn request(id: &str, model: &str) -> BatchRequest {
        BatchRequest {
            custom_id: id.into(),
            params: json!({
                "model": model,
                "max_tokens": 50,
                "messages": [{"role": "user", "content": "hi"}]
            }),
        }
    }

    #[test]
    fn parse_rejects_bad_custom_ids() {
        let body = json!({"requests": [
            {"custom_id": "a", "params": {}},
            {"custom_id": "a", "params": {}}
        ]});
        let err = parse_create_body(&body).expect_err("duplicate");
        assert!(err.starts_with("requests.1.custom_id: Duplicate"), "{err}");
        let body = json!({"requests": [{"custom_id": "a b", "params": {}}]});
        let err = parse_create_body(&body).expect_err("pattern");
        assert!(
            err.starts_with("requests.0.custom_id: String should match"),
            "{err}"
        );
        let body = json!({"requests": []});
        assert!(parse_create_body(&body).is_err());
        let body = json!({"requests": [{"custom_id": "ok_1-2", "params": {}}]});
        assert_eq!(parse_create_body(&body).expect("valid").len(), 1);
    }

    #[test]
    fn batch_ends_after_processing_time() {
        let t0 = Instant::now();
        let wall = Timestamp::from_second(1_800_000_000).expect("valid time");
        let mut store = BatchStore::new(settings(0.0), 0);
        let mut stats = FakeStats::default();
        let created = store.create(
            vec![
                request("a", "claude-haiku-4-5"),
                request("b", "no-such-model"),
            ],
            ApiVersion::V2023_06_01,
            t0,
            wall,
            "http://x",
        );
        let id = created["id"].as_str().expect("id").to_string();
        assert_eq!(created["processing_status"], "in_progress");
        assert_eq!(created["request_counts"]["processing"], 2);
        assert!(created["results_url"].is_null());
        assert_eq!(created["expires_at"], "2027-01-16T08:00:00Z");
        assert_eq!(store.processing(), 2);
        assert!(store.results(&id).is_err());

        store.refresh(
            t0 + Duration::from_secs(10),
            &mut stats,
            &mut Cache::default(),
        );
        let ended = store.get(&id, "http://x").expect("exists");
        assert_eq!(ended["processing_status"], "ended");
        assert_eq!(ended["request_counts"]["succeeded"], 1);
        assert_eq!(ended["request_counts"]["errored"], 1);
        assert_eq!(ended["ended_at"], "2027-01-15T08:00:10Z");
        assert_eq!(
            ended["results_url"],
            format!("http://x/v1/messages/batches/{id}/results")
        );
        assert_eq!((stats.batch_succeeded, stats.batch_errored), (1, 1));
        let jsonl = store.results(&id).expect("ended");
        assert_eq!(jsonl.lines().count(), 2);
        assert!(jsonl.contains("not_found_error"));
        assert!(jsonl.contains("\"service_tier\":\"batch\""));
        // Counted once only.
        store.refresh(
            t0 + Duration::from_secs(20),
            &mut stats,
            &mut Cache::default(),
        );
        assert_eq!(stats.batch_succeeded, 1);
        assert!(store.delete(&id).is_ok());
        assert!(store.get(&id, "http://x").is_err());
    }

    #[test]
    fn cancel_and_expire() {
        let t0 = Instant::now();
        let wall = Timestamp::from_second(1_800_000_000).expect("valid time");
        let mut store = BatchStore::new(settings(1.0), 0);
        let mut stats = FakeStats::default();
        let a = store.create(
            vec![request("a", "claude-opus-5")],
            ApiVersion::V2023_06_01,
            t0,
            wall,
            "",
        );
        let b = store.create(
            vec![request("b", "claude-opus-5")],
            ApiVersion::V2023_06_01,
            t0,
            wall,
            "",
        );
        let a_id = a["id"].as_str().expect("id");
        let b_id = b["id"].as_str().expect("id");
        let canceling = store.cancel(a_id, wall, "").expect("exists");
        assert_eq!(canceling["processing_status"], "canceling");
        assert!(store.delete(b_id).is_err());
        store.refresh(t0, &mut stats, &mut Cache::default());
        assert_eq!(
            store.get(a_id, "").expect("exists")["request_counts"]["canceled"],
            1
        );
        assert_eq!(store.queue_wait(1, 1, t0), Some(10.0));
        assert_eq!(store.queue_wait(1, 2, t0), None);
        store.refresh(
            t0 + Duration::from_secs(10),
            &mut stats,
            &mut Cache::default(),
        );
        assert_eq!(
            store.get(b_id, "").expect("exists")["request_counts"]["expired"],
            1
        );
        assert_eq!((stats.batch_canceled, stats.batch_expired), (1, 1));
    }

    #[test]
    fn list_pages_newest_first() {
        let t0 = Instant::now();
        let wall = Timestamp::from_second(1_800_000_000).expect("valid time");
        let mut store = BatchStore::new(settings(0.0), 0);
        let ids: Vec<String> = (0..5)
            .map(|i| {
                store.create(
                    vec![request(&format!("r{i}"), "claude-opus-5")],
                    ApiVersion::V2023_06_01,
                    t0,
                    wall,
                    "",
                )["id"]
                    .as_str()
                    .expect("id")
                    .to_string()
            })
            .collect();
        let page = store.list(2, None, None, "");
        assert_eq!(page["first_id"], ids[4]);
        assert_eq!(page["last_id"], ids[3]);
        assert_eq!(page["has_more"], true);
        let page = store.list(2, Some(&ids[3]), None, "");
        assert_eq!(page["first_id"], ids[2]);
        assert_eq!(page["last_id"], ids[1]);
        let page = store.list(2, Some(&ids[1]), None, "");
        assert_eq!(page["data"].as_array().expect("array").len(), 1);
        assert_eq!(page["has_more"], false);
        let page = store.list(2, None, Some(&ids[1]), "");
        assert_eq!(page["first_id"], ids[3]);
        assert_eq!(page["last_id"], ids[2]);
        assert_eq!(page["has_more"], true);
    }
}
