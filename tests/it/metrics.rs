//! Watching the daemon: the Prometheus endpoint (off by default; with `[metrics] port` it serves
//! the expected series on 127.0.0.1, and `status` says where), and `status --watch`.

use std::time::Duration;

use crate::common::*;
use nightshift::fake_api::{BatchSettings, FakeConfig, Faults};

/// The fake's one organization: the key its quota is published under.
const ORG: &str = "6d1f2c3a-8b4e-4f5a-9c7d-0e1f2a3b4c5d";

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_serve_items_calls_tokens_cost_buckets_and_batches() {
    let env = TestEnv::new(
        FakeConfig {
            faults: Faults {
                rate_limited_429: 0.1,
                ..Faults::default()
            },
            batch: BatchSettings {
                processing_time: Duration::from_millis(200),
                ..BatchSettings::default()
            },
            ..FakeConfig::default()
        },
        "[metrics]\nport = 0\n\n[batch]\npoll_min_ms = 100\npoll_max_ms = 300\nrpm = 6000\n\n[limits.default]\nrpm = 6000\nitpm = 10000000\notpm = 10000000\n",
    )
    .await;
    let (_, mut body) = job_of("met", 20);
    for i in 0..5 {
        body.extend(
            planned_request(
                &format!("nightly-{i}"),
                r#""priority":"nightly","mode":"batch","#,
            )
            .bytes(),
        );
        body.push(b'\n');
    }
    env.write_job("observed", &body);
    let daemon = env.start_daemon();
    env.wait_done("observed", Duration::from_secs(60)).await;

    let status = env.status_json();
    let url = status["metrics_url"]
        .as_str()
        .expect("status names the metrics URL")
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let response = reqwest::get(&url).await.expect("scrape");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");

    assert_eq!(
        sample(&text, "nightshift_items{state=\"succeeded\"}"),
        Some(25.0),
        "{text}"
    );
    let stats = env.fake.stats();
    assert_eq!(
        sample(
            &text,
            "nightshift_api_calls_total{model=\"claude-haiku-5-5\",outcome=\"succeeded\"}"
        ),
        Some(20.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "nightshift_api_calls_total{model=\"claude-haiku-5-5\",outcome=\"rate_limited_429\"}"
        ),
        Some(stats.rate_limited_429 as f64),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "nightshift_billed_requests_total{tenant=\"default\"}"
        ),
        Some(25.0)
    );
    assert_eq!(
        sample(
            &text,
            "nightshift_tokens_total{tenant=\"default\",kind=\"input\"}"
        ),
        Some((stats.input_tokens + stats.batch_input_tokens) as f64),
        "{text}"
    );
    assert!(sample(&text, "nightshift_cost_usd_total{tenant=\"default\"}").unwrap_or(0.0) > 0.0);
    assert_eq!(
        sample(
            &text,
            &format!(
                "nightshift_quota_limit_per_minute{{organization=\"{ORG}\",class=\"claude-haiku-5-5\",dim=\"requests\"}}"
            )
        ),
        Some(6000.0),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "nightshift_quota_level{{organization=\"{ORG}\",class=\"claude-haiku-5-5\",dim=\"input_tokens\"}}"
        )),
        "{text}"
    );
    assert_eq!(
        sample(&text, "nightshift_batches{state=\"ended\"}"),
        Some(1.0),
        "{text}"
    );

    // (`/` is the status page now: tests/it/page.rs.)
    let other = reqwest::get(url.replace("/metrics", "/nope"))
        .await
        .expect("get");
    assert_eq!(other.status(), 404);
    daemon.stop().await;
    assert!(
        env.status_json()["metrics_url"].is_null(),
        "cleared at stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_prints_plain_progress_lines_when_piped_and_stops_on_ctrl_c() {
    let env = TestEnv::new(
        FakeConfig {
            latency: Duration::from_millis(100),
            ..FakeConfig::default()
        },
        "[realtime]\nconcurrency = 2\n",
    )
    .await;
    let (_, body) = job_of("w", 80);
    env.write_job("watched", &body);
    let daemon = env.start_daemon();
    env.wait_succeeded("watched", 1, Duration::from_secs(30))
        .await;
    let watcher = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&env.config_path)
        .args(["status", "--watch", "--interval", "0.2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("watch starts");
    // The daemon publishes quota use every 2 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    signal(&watcher, libc::SIGINT);
    let out = watcher.wait_with_output().expect("watch ends");
    daemon.stop().await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        !text.contains('\x1b'),
        "no terminal escapes on a pipe: {text:?}"
    );
    let progress: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("job watched: "))
        .collect();
    assert!(
        progress.len() >= 2,
        "progress is printed as it changes: {text}"
    );
    assert!(text.contains("quota claude-haiku-5-5: "), "{text}");
}

/// `[metrics] token_file`: a scrape without the bearer token (or with another) gets 401; with it,
/// the metrics. A token file nightshift cannot read stops the start (exit 78) naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_bearer_token() {
    let env = TestEnv::new(
        FakeConfig::default(),
        "[metrics]\nport = 0\ntoken_file = \"metrics-token\"\n",
    )
    .await;
    let mut refused = env.spawn_binary_daemon("sk-ant-test-metrics-0000", "no-token.log");
    let code = refused.wait().expect("exits").code();
    let log = std::fs::read_to_string(env.dir.path().join("no-token.log")).expect("log");
    assert_eq!(code, Some(78), "{log}");
    assert!(log.contains("metrics.token_file"), "{log}");

    std::fs::write(
        env.dir.path().join("metrics-token"),
        "s3cret-scrape-token\n",
    )
    .expect("token");
    let daemon = env.start_daemon();
    let started = std::time::Instant::now();
    let url = loop {
        if let Some(url) = env.try_status_json()["metrics_url"].as_str() {
            break url.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no metrics URL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let client = reqwest::Client::new();
    let bare = client.get(&url).send().await.expect("scrape");
    assert_eq!(bare.status(), 401);
    assert_eq!(bare.headers()["www-authenticate"], "Bearer");
    let wrong = client
        .get(&url)
        .bearer_auth("s3cret-scrape-tokeN")
        .send()
        .await
        .expect("scrape");
    assert_eq!(wrong.status(), 401);
    let right = client
        .get(&url)
        .bearer_auth("s3cret-scrape-token")
        .send()
        .await
        .expect("scrape");
    assert_eq!(right.status(), 200);
    assert!(right.text().await.expect("body").contains("nightshift_"));
    daemon.stop().await;
}
