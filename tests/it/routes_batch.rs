//! Batches belong to the route that created them (issue 16), against a fake with two
//! organizations, each seeing only its own batches: a batch is packed for a route its items'
//! tenants may use and is polled and downloaded with that route's key; a route whose account is
//! refused on a create call (the spend cap, a revoked key) is paused, and its items go through
//! another route.

use std::time::Duration;

use crate::common::*;
use nightshift::api::{ApiKey, RouteKeys};
use nightshift::fake_api::{FakeConfig, FakeOrg};
use serde_json::Value;

const KEY_A: &str = "sk-ant-org-a-key-AAAA";
const KEY_B: &str = "sk-ant-org-b-key-BBBB";

/// A fake with organizations `org-a` (key [`KEY_A`]) and `org-b` (key [`KEY_B`]), whose batches
/// end after 300 ms.
fn two_orgs() -> FakeConfig {
    FakeConfig {
        orgs: vec![
            FakeOrg::new("org-a", [KEY_A]),
            FakeOrg::new("org-b", [KEY_B]),
        ],
        ..fast_batch_fake(300)
    }
}

/// Route `a` with org-a's key, `b` with org-b's (the in-process daemon takes them from here).
fn keys() -> RouteKeys {
    RouteKeys::from_pairs([("a", ApiKey::new(KEY_A)), ("b", ApiKey::new(KEY_B))])
}

/// `[routes.a]` and `[routes.b]`, each with the tenants given (`None`: everyone).
fn routes(a: Option<&str>, b: Option<&str>) -> String {
    let tenants = |t: Option<&str>| t.map_or(String::new(), |t| format!("tenants = [\"{t}\"]\n"));
    format!(
        "{FAST_BATCHES}\n[routes.a]\nkey_env = \"UNUSED_A\"\n{}[routes.b]\nkey_env = \"UNUSED_B\"\n{}",
        tenants(a),
        tenants(b)
    )
}

/// A job of batch lines, each with the tenant `tenant_of(i)` gives: (ids, file).
fn job(
    prefix: &str,
    n: usize,
    tenant_of: impl Fn(usize) -> &'static str,
) -> (Vec<String>, Vec<u8>) {
    let mut ids = Vec::new();
    let mut body = String::new();
    for i in 0..n {
        let id = format!("{prefix}-{i:03}");
        let extra = format!(r#""tenant":"{}","mode":"batch","#, tenant_of(i));
        body.push_str(&planned_request(&id, &extra));
        body.push('\n');
        ids.push(id);
    }
    (ids, body.into_bytes())
}

fn batches_of(job: &Value) -> Vec<Value> {
    job["batches"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_batch_is_created_polled_and_downloaded_with_its_own_routes_key() {
    let env = TestEnv::new(two_orgs(), &routes(Some("acme"), Some("beta"))).await;
    let (ids, body) = job("mixed", 20, |i| if i % 2 == 0 { "acme" } else { "beta" });
    env.write_job("mixed", &body);
    let daemon = env.start_daemon_with_keys(keys());
    let done = env.wait_done("mixed", Duration::from_secs(60)).await;
    daemon.stop().await;

    assert_eq!(done.counts.succeeded, 20);
    let results = env.results("mixed");
    assert_each_once(&results, &ids);
    assert_eq!(succeeded(&results), 20);
    // Each organization created batches of its own tenant's items only.
    let (a, b) = (env.fake.org_stats("org-a"), env.fake.org_stats("org-b"));
    assert!(
        a.batches_created >= 1 && b.batches_created >= 1,
        "{a:?} {b:?}"
    );
    assert_eq!((a.batch_requests, b.batch_requests), (10, 10));
    // Another organization's key would have had a 404 for a batch it cannot see: none came.
    let stats = env.fake.stats();
    assert_eq!(stats.invalid_4xx, 0, "{stats:?}");
    assert_eq!(stats.messages_accepted, 0, "nothing went real time");
    // The job names each batch's route.
    let job = env.job_json("mixed");
    let batches = batches_of(&job);
    let mut routes: Vec<&str> = batches.iter().filter_map(|b| b["route"].as_str()).collect();
    routes.sort_unstable();
    routes.dedup();
    assert_eq!(routes, ["a", "b"], "{job}");
    assert!(batches.iter().all(|b| b["state"] == "ended"), "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_at_its_spend_cap_is_paused_and_the_batch_goes_through_another() {
    let env = TestEnv::new(two_orgs(), &routes(None, None)).await;
    env.fake.set_spend_cap_reached("org-a", true);
    let (ids, body) = job("capped", 10, |_| "acme");
    env.write_job("capped", &body);
    let daemon = env.start_daemon_with_keys(keys());
    let done = env.wait_done("capped", Duration::from_secs(60)).await;

    // Route a (and its organization) is paused with the reason, for both lanes.
    let out = env.cli(&["limits", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let limits: Value = serde_json::from_slice(&out.stdout).expect("limits --json is JSON");
    daemon.stop().await;
    let route = |name: &str| route_in(&limits, name);
    let a = route("a");
    assert_eq!(a["state"], "paused", "{a}");
    assert_eq!(a["owner"], "spend_cap", "{a}");
    assert_eq!(
        a["organization_id"], "org-a",
        "learned from the refusal: {a}"
    );
    assert!(
        a["reason"]
            .as_str()
            .is_some_and(|r| r.contains("enforced_spend_limit_reached")),
        "{a}"
    );
    assert_ne!(route("b")["state"], "paused");

    // The job completed through route b, each item once.
    assert_eq!(done.counts.succeeded, 10);
    let results = env.results("capped");
    assert_each_once(&results, &ids);
    assert_eq!(succeeded(&results), 10);
    let (org_a, org_b) = (env.fake.org_stats("org-a"), env.fake.org_stats("org-b"));
    assert_eq!(org_a.batches_created, 0, "{org_a:?}");
    assert!(
        org_a.rate_limited_429 >= 1,
        "the create met the cap: {org_a:?}"
    );
    assert!(org_b.batches_created >= 1, "{org_b:?}");
    assert_eq!(org_b.batch_requests, 10, "each item sent once where it ran");
    // The batch refused on a was never created; those created are b's and ended.
    let job = env.job_json("capped");
    for b in batches_of(&job) {
        match b["route"].as_str() {
            Some("a") => assert_eq!(b["state"], "failed", "{b}"),
            Some("b") => assert_eq!(b["state"], "ended", "{b}"),
            _ => panic!("a batch of no route: {b}"),
        }
    }
    // diagnose names the refused create and whose limit it was.
    let out = env.cli(&["diagnose", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("diagnose --json");
    let refused = report["events"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|e| e["endpoint"] == "POST /v1/messages/batches")
        })
        .cloned()
        .unwrap_or_else(|| panic!("the refused create in {report}"));
    assert_eq!(refused["route"], "a", "{refused}");
    assert_eq!(refused["owner"], "spend_cap", "{refused}");
    assert!(
        refused["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("req_")),
        "{refused}"
    );
    assert_eq!(refused["organization_id"], "org-a", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_key_is_refused_is_paused_and_the_batch_goes_through_another() {
    let env = TestEnv::new(two_orgs(), &routes(None, None)).await;
    env.fake.revoke_key(KEY_A);
    let (ids, body) = job("revoked", 6, |_| "acme");
    env.write_job("revoked", &body);
    let daemon = env.start_daemon_with_keys(keys());
    env.wait_done("revoked", Duration::from_secs(60)).await;
    let out = env.cli(&["limits", "--json"]);
    daemon.stop().await;
    let limits: Value = serde_json::from_slice(&out.stdout).expect("limits --json is JSON");
    let route = |name: &str| route_in(&limits, name);
    let a = route("a");
    assert_eq!(
        (&a["state"], &a["owner"]),
        (&"paused".into(), &"key".into()),
        "{a}"
    );
    assert_ne!(route("b")["state"], "paused");
    let results = env.results("revoked");
    assert_each_once(&results, &ids);
    assert_eq!(succeeded(&results), 6);
    assert_eq!(env.fake.org_stats("org-a").batches_created, 0);
    assert_eq!(env.fake.org_stats("org-b").batch_requests, 6);
}

/// Upgraded from one key to `[routes]` with a batch running: the batch, made on the old route
/// `default`, is found with the new route's key and followed to the end; nothing is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_a_route_gone_from_the_config_is_taken_over_by_the_route_that_finds_it() {
    let env = TestEnv::new(
        FakeConfig {
            orgs: vec![
                FakeOrg::new("org-a", [KEY_A]),
                FakeOrg::new("org-b", [KEY_B]),
            ],
            ..fast_batch_fake(3_000)
        },
        FAST_BATCHES,
    )
    .await;
    let (ids, body) = job("upgrade", 6, |_| "acme");
    env.write_job("upgrade", &body);
    // Before: one route, `default`, with org-a's key.
    let daemon =
        env.start_daemon_with_keys(RouteKeys::from_pairs([("default", ApiKey::new(KEY_A))]));
    let started = std::time::Instant::now();
    while env.fake.org_stats("org-a").batches_created == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no batch created"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await;
    // After: routes b (listed first by name, another organization) and main (org-a's key).
    env.edit_config(
        FAST_BATCHES,
        &format!("{FAST_BATCHES}\n[routes.b]\nkey_env = \"UNUSED_B\"\n[routes.main]\nkey_env = \"UNUSED_MAIN\"\n"),
    );
    let daemon = env.start_daemon_with_keys(RouteKeys::from_pairs([
        ("b", ApiKey::new(KEY_B)),
        ("main", ApiKey::new(KEY_A)),
    ]));
    let done = env.wait_done("upgrade", Duration::from_secs(60)).await;
    let job = env.job_json("upgrade");
    daemon.stop().await;

    assert_eq!(done.counts.succeeded, 6);
    assert_each_once(&env.results("upgrade"), &ids);
    assert_eq!(
        env.fake.org_stats("org-a").batches_created,
        1,
        "not created again"
    );
    assert_eq!(env.fake.org_stats("org-b").batches_created, 0);
    let batches = batches_of(&job);
    assert_eq!(batches.len(), 1, "{job}");
    assert_eq!(batches[0]["route"], "main", "{job}");
}

/// Batch items of a tenant no route allows wait, and `status` names the tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_items_of_a_tenant_no_route_allows_wait_and_status_says_so() {
    let env = TestEnv::new(two_orgs(), &routes(Some("acme"), Some("acme"))).await;
    let (_, body) = job("unserved", 4, |i| if i < 2 { "acme" } else { "beta" });
    env.write_job("unserved", &body);
    let daemon = env.start_daemon_with_keys(keys());
    env.wait_succeeded("unserved", 2, Duration::from_secs(60))
        .await;
    let trouble = env.wait_trouble("routes").await;
    let job = env.job_json("unserved");
    daemon.stop().await;
    assert!(
        trouble["error"]
            .as_str()
            .unwrap_or_default()
            .contains("beta"),
        "{trouble}"
    );
    assert_eq!(job["counts"]["succeeded"], 2, "{job}");
    assert_eq!(job["counts"]["pending"], 2, "beta's items wait: {job}");
}
