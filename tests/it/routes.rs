//! Several routes against a fake with several organizations: limits follow organizations (two
//! keys of one are one set of buckets), work flows to the organization that has room, a spend cap
//! or a refused key pauses only what it concerns, and every 429 gets an owner.

use std::time::Duration;

use crate::common::*;
use nightshift::api::{ApiKey, RouteKeys};
use nightshift::fake_api::{FakeConfig, FakeLimits, FakeOrg, Faults, LoadSpec, run_load};
use serde_json::Value;

const KEY_A1: &str = "sk-ant-test-orgA-first-key-AAA1";
const KEY_A2: &str = "sk-ant-test-orgA-second-key-AAA2";
const KEY_B: &str = "sk-ant-test-orgB-only-key-BBB1";
/// A client nightshift never sees, on organization A.
const KEY_OUTSIDE: &str = "sk-ant-test-orgA-outside-app-OUT1";

/// Three routes: two keys of organization A, one of B.
const THREE_ROUTES: &str = "[routes.a1]\nkey_env = \"NS_TEST_A1\"\n[routes.a2]\nkey_env = \"NS_TEST_A2\"\n[routes.b]\nkey_env = \"NS_TEST_B\"\n";

fn limits(rpm: u64, burst_seconds: f64) -> FakeLimits {
    FakeLimits {
        rpm,
        itpm: 10_000_000,
        otpm: 10_000_000,
        burst_seconds,
    }
}

fn two_orgs(limits: FakeLimits, latency_ms: u64) -> FakeConfig {
    FakeConfig {
        orgs: vec![
            FakeOrg::new("org-a", [KEY_A1, KEY_A2, KEY_OUTSIDE]),
            FakeOrg::new("org-b", [KEY_B]),
        ],
        limits: Some(limits),
        latency: Duration::from_millis(latency_ms),
        ..FakeConfig::default()
    }
}

fn keys(routes: &[(&str, &str)]) -> RouteKeys {
    RouteKeys::from_pairs(routes.iter().map(|(r, k)| (*r, ApiKey::new(*k))))
}

fn three_keys() -> RouteKeys {
    keys(&[("a1", KEY_A1), ("a2", KEY_A2), ("b", KEY_B)])
}

/// Succeeded real-time calls per route, from the store.
fn calls_by_route(env: &TestEnv) -> std::collections::BTreeMap<String, i64> {
    env.read_store(|conn| {
        conn.query_map(
            "SELECT route, COUNT(*) FROM attempts WHERE outcome = 'succeeded' AND lane = 'realtime' GROUP BY route",
            (),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect()
    })
    .expect("rows")
}

fn json_of(out: std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The throttling answers `diagnose --json` lists, as (route, owner).
fn owners(env: &TestEnv) -> Vec<(String, String)> {
    let report = json_of(env.cli(&["diagnose", "--json"]));
    report["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["route"].as_str().unwrap_or_default().to_owned(),
                e["owner"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_of_one_organization_share_its_limits_and_a_second_organization_adds_capacity() {
    // 600 RPM per organization, buckets of two seconds: counting organization A's two keys as
    // two sets of buckets would send twice what A allows, and the fake would answer 429s.
    let env = TestEnv::new(
        two_orgs(limits(600, 2.0), 20),
        &format!("[realtime]\nconcurrency = 16\n{THREE_ROUTES}"),
    )
    .await;
    let (ids, body) = job_of("shared", 240);
    env.write_job("shared", &body);
    let daemon = env.start_daemon_with_keys(three_keys());
    let job = env.wait_done("shared", Duration::from_secs(120)).await;
    let limits = json_of(env.cli(&["limits", "--json"]));
    daemon.stop().await;

    assert_eq!(job.counts.succeeded, 240);
    assert_each_once(&env.results("shared"), &ids);
    let (a, b) = (env.fake.org_stats("org-a"), env.fake.org_stats("org-b"));
    assert_eq!(a.rate_limited_429, 0, "organization A counted once: {a:?}");
    assert_eq!(b.rate_limited_429, 0, "{b:?}");
    // Both organizations carried the job: the second one's limits are more capacity.
    assert!(
        a.messages_accepted >= 60 && b.messages_accepted >= 60,
        "A {} and B {} calls",
        a.messages_accepted,
        b.messages_accepted
    );
    let orgs = limits["organizations"].as_array().expect("organizations");
    let of = |org: &str| {
        orgs.iter()
            .find(|o| o["organization_id"] == org)
            .unwrap_or_else(|| panic!("{org} in {limits}"))["routes"]
            .clone()
    };
    assert_eq!(of("org-a"), serde_json::json!(["a1", "a2"]), "{limits}");
    assert_eq!(of("org-b"), serde_json::json!(["b"]), "{limits}");
    let text = String::from_utf8_lossy(&env.cli(&["limits"]).stdout).into_owned();
    assert!(
        text.contains("routes a1, a2 share one set of limits"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_flows_to_the_other_organization_while_an_outside_client_drains_one() {
    let env = TestEnv::new(
        two_orgs(limits(600, 2.0), 20),
        "[realtime]\nconcurrency = 16\n[routes.a]\nkey_env = \"NS_TEST_A\"\n[routes.b]\nkey_env = \"NS_TEST_B\"\n",
    )
    .await;
    // An application nightshift never sees takes all of organization A's requests.
    let outside = tokio::spawn(run_load(
        LoadSpec {
            base_url: env.fake.base_url(),
            api_key: KEY_OUTSIDE.into(),
            model: "claude-haiku-5-5".into(),
            rpm: 900.0,
            duration: Duration::from_secs(15),
            max_tokens: 16,
            prompt_chars: 200,
        },
        tokio_util::sync::CancellationToken::new(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ids, body) = job_of("flows", 120);
    env.write_job("flows", &body);
    let daemon = env.start_daemon_with_keys(keys(&[("a", KEY_A1), ("b", KEY_B)]));
    let job = env.wait_done("flows", Duration::from_secs(120)).await;
    daemon.stop().await;
    outside.abort();

    assert_eq!(job.counts.succeeded, 120);
    assert_each_once(&env.results("flows"), &ids);
    let by_route = calls_by_route(&env);
    let (a, b) = (
        by_route.get("a").copied().unwrap_or(0),
        by_route.get("b").copied().unwrap_or(0),
    );
    assert!(
        b >= 3 * a.max(1),
        "the job went where there was room: {by_route:?}"
    );
    // What A refused was the outside client's doing, and diagnose says so.
    for (route, owner) in owners(&env) {
        assert_eq!(route, "a", "only the drained organization throttled");
        assert_ne!(owner, "gateway");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_burst_on_an_organization_is_judged_foreign() {
    // One call at a time, 200 ms each: about 300 a minute against A's 600, so A's bucket (50
    // requests) stays nearly full in our books, until an outside burst empties it.
    let env = TestEnv::new(
        two_orgs(limits(600, 5.0), 200),
        "[realtime]\nconcurrency = 1\nbackoff_min_ms = 50\nbackoff_max_ms = 500\n[routes.a]\nkey_env = \"NS_TEST_A\"\n",
    )
    .await;
    let (ids, body) = job_of("burst", 100);
    env.write_job("burst", &body);
    let daemon = env.start_daemon_with_keys(keys(&[("a", KEY_A1)]));
    env.wait_succeeded("burst", 10, Duration::from_secs(60))
        .await;
    // The outside client drains A until the daemon meets a 429 (a daemon that reads the
    // drain in the headers soon enough may wait it out, so the burst lasts as long as needed).
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn(run_load(
        LoadSpec {
            base_url: env.fake.base_url(),
            api_key: KEY_OUTSIDE.into(),
            model: "claude-haiku-5-5".into(),
            rpm: 12_000.0,
            duration: Duration::from_secs(30),
            max_tokens: 16,
            prompt_chars: 200,
        },
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while owners(&env).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.cancel();
    let burst = load.await.expect("the load generator ran");
    let job = env.wait_done("burst", Duration::from_secs(120)).await;
    daemon.stop().await;

    assert!(
        burst.rate_limited_429 > 0,
        "the burst emptied the bucket: {burst:?}"
    );
    assert_eq!(job.counts.succeeded, 100);
    assert_each_once(&env.results("burst"), &ids);
    let owners = owners(&env);
    assert!(
        owners.iter().any(|(_, o)| o == "foreign"),
        "a 429 after the outside burst is someone else's: {owners:?}"
    );
    let report = json_of(env.cli(&["diagnose", "--json"]));
    let foreign = report["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["owner"] == "foreign")
        .expect("a foreign event");
    assert_eq!(foreign["organization_id"], "org-a", "{foreign}");
    assert!(
        foreign["evidence"]
            .as_str()
            .unwrap_or_default()
            .contains("taken by other traffic"),
        "{foreign}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_cap_pauses_its_organizations_routes_and_the_job_completes_on_the_others() {
    let env = TestEnv::new(
        two_orgs(limits(6000, 2.0), 10),
        &format!("[realtime]\nconcurrency = 8\n{THREE_ROUTES}"),
    )
    .await;
    env.fake.set_spend_cap_reached("org-a", true);
    let (ids, body) = job_of("capped", 60);
    env.write_job("capped", &body);
    let daemon = env.start_daemon_with_keys(three_keys());
    let job = env.wait_done("capped", Duration::from_secs(120)).await;
    let status = json_of(env.cli(&["status", "--json"]));
    let limits = json_of(env.cli(&["limits", "--json"]));
    daemon.stop().await;

    assert_eq!(job.counts.succeeded, 60);
    assert_each_once(&env.results("capped"), &ids);
    assert_eq!(env.fake.org_stats("org-a").messages_accepted, 0);
    for name in ["a1", "a2"] {
        let route = route_in(&limits, name);
        assert_eq!(route["state"], "paused", "{route}");
        assert_eq!(route["owner"], "spend_cap", "{route}");
        assert_eq!(route["organization_id"], "org-a", "{route}");
    }
    let b = route_in(&limits, "b");
    assert_eq!(b["state"], "active", "{b}");
    let paused = status["paused"].as_array().expect("paused");
    assert!(
        paused.iter().any(|p| p["lane"] == "route a1"
            && p["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("spend cap")),
        "{status}"
    );
    let owners = owners(&env);
    assert!(!owners.is_empty(), "the refusals are on record");
    assert!(
        owners
            .iter()
            .all(|(route, owner)| route != "b" && owner == "spend_cap"),
        "{owners:?}"
    );

    // The support bundle: what a ticket needs, and no key, no prompt, no answer.
    let file = env.dir.path().join("evidence.json");
    let out = env.cli(&["diagnose", "--evidence", file.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file)
        .expect("bundle")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the bundle is private: {mode:o}");
    let text = std::fs::read_to_string(&file).expect("bundle");
    for secret in [KEY_A1, KEY_A2, KEY_B, "Summarise ticket", "parcel arrived"] {
        assert!(!text.contains(secret), "the bundle holds {secret:?}");
    }
    let bundle: Value = serde_json::from_str(&text).expect("json");
    let event = &bundle["events"][0];
    for field in [
        "request_id",
        "route",
        "host",
        "key_id",
        "organization_id",
        "owner",
        "evidence",
        "error",
        "output_limit",
        "concurrency",
    ] {
        assert!(!event[field].is_null(), "{field} in {event}");
    }
    assert!(
        event["key_id"]
            .as_str()
            .unwrap_or_default()
            .starts_with('…')
    );
    assert!(bundle["rows"].as_array().is_some_and(|r| !r.is_empty()));
    // A bundle never overwrites a file.
    assert!(
        !env.cli(&["diagnose", "--evidence", file.to_str().expect("utf-8")])
            .status
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_pauses_only_its_route() {
    let env = TestEnv::new(
        two_orgs(limits(6000, 2.0), 10),
        &format!("[realtime]\nconcurrency = 8\n{THREE_ROUTES}"),
    )
    .await;
    env.fake.revoke_key(KEY_A1);
    let (ids, body) = job_of("refused", 80);
    env.write_job("refused", &body);
    let daemon = env.start_daemon_with_keys(three_keys());
    let job = env.wait_done("refused", Duration::from_secs(120)).await;
    let limits = json_of(env.cli(&["limits", "--json"]));
    daemon.stop().await;

    assert_eq!(job.counts.succeeded, 80);
    assert_eq!(job.counts.errored, 0, "a refused key fails no item");
    assert_each_once(&env.results("refused"), &ids);
    let state = |name: &str| route_in(&limits, name);
    assert_eq!(state("a1")["state"], "paused");
    assert_eq!(state("a1")["owner"], "key");
    assert_eq!(state("a2")["state"], "active", "{limits}");
    assert_eq!(state("b")["state"], "active", "{limits}");
    // Each call keeps its route: the item's refused call on a1, its answer on another.
    let refused_item: String = env
        .read_store(|conn| {
            conn.query_row(
                "SELECT i.custom_id FROM attempts a JOIN items i ON i.id = a.item_id WHERE a.route = 'a1' LIMIT 1",
                (),
                |r| r.get(0),
            )
        })
        .expect("a call went on a1 and was refused");
    let item = json_of(env.cli(&["item", "refused", &refused_item, "--json"]));
    let routes: Vec<&str> = item["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| c["route"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(routes.first(), Some(&"a1"), "{item}");
    assert!(
        matches!(routes.last(), Some(&("a2" | "b"))),
        "answered on another route: {item}"
    );
    let by_route = calls_by_route(&env);
    assert_eq!(by_route.get("a1"), None, "{by_route:?}");
    assert!(by_route.get("a2").copied().unwrap_or(0) > 0, "{by_route:?}");
    assert!(by_route.get("b").copied().unwrap_or(0) > 0, "{by_route:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_without_the_apis_headers_is_the_gateways() {
    let env = TestEnv::new(
        FakeConfig {
            faults: Faults {
                gateway_429: 0.3,
                ..Faults::default()
            },
            ..two_orgs(limits(6000, 2.0), 5)
        },
        "[realtime]\nconcurrency = 4\nbackoff_min_ms = 20\nbackoff_max_ms = 200\n[routes.gw]\nkey_env = \"NS_TEST_GW\"\n",
    )
    .await;
    let (ids, body) = job_of("gateway", 40);
    env.write_job("gateway", &body);
    let daemon = env.start_daemon_with_keys(keys(&[("gw", KEY_B)]));
    let job = env.wait_done("gateway", Duration::from_secs(120)).await;
    daemon.stop().await;

    assert_eq!(job.counts.succeeded, 40);
    assert_each_once(&env.results("gateway"), &ids);
    let owners = owners(&env);
    assert!(!owners.is_empty(), "the gateway answered 429s");
    assert!(
        owners
            .iter()
            .all(|(route, owner)| route == "gw" && owner == "gateway"),
        "{owners:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_no_route_allows_waits_and_status_says_so() {
    let env = TestEnv::new(
        two_orgs(limits(6000, 2.0), 5),
        "[routes.a]\nkey_env = \"NS_TEST_A\"\ntenants = [\"acme\"]\n",
    )
    .await;
    let line = |id: &str, tenant: &str| {
        format!(
            r#"{{"custom_id":"{id}","tenant":"{tenant}","mode":"realtime","params":{{"model":"claude-haiku-5-5","max_tokens":16,"messages":[{{"role":"user","content":"q {id}"}}]}}}}"#
        )
    };
    let body = format!("{}\n{}\n", line("acme-1", "acme"), line("beta-1", "beta"));
    env.write_job("tenants", body.as_bytes());
    let daemon = env.start_daemon_with_keys(keys(&[("a", KEY_A1)]));
    env.wait_succeeded("tenants", 1, Duration::from_secs(60))
        .await;
    let trouble = env.wait_trouble("routes").await;
    let job = env.job_json("tenants");
    daemon.stop().await;
    assert!(
        trouble["error"]
            .as_str()
            .unwrap_or_default()
            .contains("beta"),
        "{trouble}"
    );
    assert_eq!(job["counts"]["succeeded"], 1, "{job}");
    assert_eq!(job["counts"]["pending"], 1, "beta's item waits: {job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_with_its_own_limit_is_paced_inside_its_organization() {
    use nightshift::fake_api::FakeWorkspace;
    const KEY_NIGHTLY: &str = "sk-ant-test-orgA-nightly-ws-NNN1";
    // Organization A allows 600 a minute; its nightly workspace 120 of them. The app team's
    // items go through the organization's default workspace, everyone else's through the
    // nightly one.
    let fake = FakeConfig {
        orgs: vec![FakeOrg::new("org-a", [KEY_A1]).with_workspace(
            FakeWorkspace::new("ws-nightly", [KEY_NIGHTLY]).with_limits(limits(120, 2.0)),
        )],
        limits: Some(limits(600, 2.0)),
        latency: Duration::from_millis(20),
        ..FakeConfig::default()
    };
    let env = TestEnv::new(
        fake,
        "[realtime]\nconcurrency = 16\n[routes.app]\nkey_env = \"NS_TEST_APP\"\ntenants = [\"app-team\"]\n\
         [routes.nightly]\nkey_env = \"NS_TEST_NIGHTLY\"\n",
    )
    .await;
    let mut ids = Vec::new();
    let mut body = String::new();
    for i in 0..150 {
        let (id, tenant) = if i % 5 == 0 {
            (format!("night-{i:03}"), "nightly")
        } else {
            (format!("app-{i:03}"), "app-team")
        };
        body.push_str(&format!(
            r#"{{"custom_id":"{id}","tenant":"{tenant}","mode":"realtime","params":{{"model":"claude-haiku-5-5","max_tokens":16,"messages":[{{"role":"user","content":"q {id}"}}]}}}}"#
        ));
        body.push('\n');
        ids.push(id);
    }
    env.write_job("ws", body.as_bytes());
    let daemon = env.start_daemon_with_keys(keys(&[("app", KEY_A1), ("nightly", KEY_NIGHTLY)]));
    let job = env.wait_done("ws", Duration::from_secs(120)).await;
    let limits = json_of(env.cli(&["limits", "--json"]));
    daemon.stop().await;

    assert_eq!(job.counts.succeeded, 150);
    assert_each_once(&env.results("ws"), &ids);
    let org = env.fake.org_stats("org-a");
    // Until the answers tell the workspace's limit from the organization's, a call or two may
    // meet the workspace's bucket; after that, none.
    assert!(org.rate_limited_429 <= 3, "{org:?}");
    let nightly = env.fake.workspace_stats("org-a", "ws-nightly");
    assert_eq!(nightly.messages_accepted, 30, "{nightly:?}");
    let orgs = limits["organizations"].as_array().expect("organizations");
    assert_eq!(orgs.len(), 1, "one organization: {limits}");
    assert_eq!(orgs[0]["routes"], serde_json::json!(["app", "nightly"]));
    let class = |group: &str| {
        limits["classes"]
            .as_array()
            .expect("classes")
            .iter()
            .find(|c| c["organization"] == group)
            .unwrap_or_else(|| panic!("{group}'s buckets in {limits}"))
            .clone()
    };
    assert_eq!(class("org-a")["dims"][0]["limit_per_minute"], 600.0);
    assert_eq!(
        class("org-a/ws-nightly")["dims"][0]["limit_per_minute"],
        120.0
    );
}
