//! End-to-end tests: start the fake on a free port and call it over HTTP.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;

async fn start(config: FakeConfig) -> FakeApi {
    FakeApi::start(config, "127.0.0.1:0".parse().expect("valid address"))
        .await
        .expect("fake starts")
}

fn message_body() -> Value {
    json!({
        "model": "claude-sonnet-4-6",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "Write a haiku about the night shift."}]
    })
}

async fn post(
    client: &reqwest::Client,
    url: String,
    body: &Value,
) -> Result<reqwest::Response, reqwest::Error> {
    client
        .post(url)
        .header("x-api-key", "sk-test")
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
}

async fn get(client: &reqwest::Client, url: String) -> reqwest::Response {
    client
        .get(url)
        .header("x-api-key", "sk-test")
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .expect("request sent")
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_string()
}

fn with_limits(rpm: u64) -> FakeConfig {
    FakeConfig {
        limits: Some(FakeLimits {
            rpm,
            itpm: 1_000_000,
            otpm: 200_000,
            burst_seconds: 60.0,
        }),
        ..FakeConfig::default()
    }
}

#[tokio::test]
async fn valid_message_gets_200_with_usage_and_headers() {
    let fake = start(with_limits(100)).await;
    let client = reqwest::Client::new();
    let response = post(
        &client,
        format!("{}/v1/messages", fake.base_url()),
        &message_body(),
    )
    .await
    .expect("answered");
    assert_eq!(response.status(), 200);
    assert!(header(&response, "request-id").starts_with("req_"));
    assert!(!header(&response, "anthropic-organization-id").is_empty());
    assert_eq!(
        header(&response, "anthropic-ratelimit-requests-limit"),
        "100"
    );
    assert_eq!(
        header(&response, "anthropic-ratelimit-requests-remaining"),
        "99"
    );
    assert_eq!(
        header(&response, "anthropic-ratelimit-tokens-limit"),
        "1200000"
    );
    let reset = header(&response, "anthropic-ratelimit-input-tokens-reset");
    assert!(reset.parse::<jiff::Timestamp>().is_ok(), "{reset}");
    let body: Value = response.json().await.expect("json");
    assert!(body["id"].as_str().expect("id").starts_with("msg_"));
    assert_eq!(body["id"].as_str().expect("id").len(), 28);
    assert_eq!(body["type"], "message");
    assert_eq!(body["model"], "claude-sonnet-4-6");
    assert_eq!(body["usage"]["service_tier"], "standard");
    let input = body["usage"]["input_tokens"].as_u64().expect("input");
    let output = body["usage"]["output_tokens"].as_u64().expect("output");
    assert_eq!(input, count_input_tokens(&message_body()));
    assert!((5..=200).contains(&output));
    assert!(
        !body["content"][0]["text"]
            .as_str()
            .expect("text")
            .is_empty()
    );

    // The same body gets the same length (deterministic).
    let again: Value = post(
        &client,
        format!("{}/v1/messages", fake.base_url()),
        &message_body(),
    )
    .await
    .expect("answered")
    .json()
    .await
    .expect("json");
    assert_eq!(again["usage"]["output_tokens"], output);

    let stats = fake.stats();
    assert_eq!(stats.messages_accepted, 2);
    assert_eq!(stats.input_tokens, 2 * input);
    assert_eq!(stats.output_tokens, 2 * output);

    // The stats endpoint needs no auth.
    let remote: Value = reqwest::get(format!("{}/_fake/stats", fake.base_url()))
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    assert_eq!(remote["messages_accepted"], 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn auth_version_and_validation_errors() {
    let fake = start(FakeConfig {
        api_key: Some("sk-test".into()),
        ..FakeConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());

    // Missing key.
    let response = client
        .post(&url)
        .header("anthropic-version", "2023-06-01")
        .json(&message_body())
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert!(body["request_id"].as_str().expect("id").starts_with("req_"));

    // Wrong key, then Bearer with the right key.
    let response = client
        .post(&url)
        .header("x-api-key", "sk-wrong")
        .header("anthropic-version", "2023-06-01")
        .json(&message_body())
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 401);
    let response = client
        .post(&url)
        .header("authorization", "Bearer sk-test")
        .header("anthropic-version", "2026-10-21")
        .json(&message_body())
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);

    // Missing version.
    let response = client
        .post(&url)
        .header("x-api-key", "sk-test")
        .json(&message_body())
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["error"]["message"],
        "anthropic-version: header is required"
    );

    // Unknown model.
    let mut unknown = message_body();
    unknown["model"] = json!("claude-3-opus-20240229");
    let response = post(&client, url.clone(), &unknown)
        .await
        .expect("answered");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "not_found_error");
    assert_eq!(body["error"]["message"], "model: claude-3-opus-20240229");

    // Bad field.
    let mut bad = message_body();
    bad["max_tokens"] = json!(0);
    let response = post(&client, url.clone(), &bad).await.expect("answered");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .starts_with("max_tokens:")
    );

    // Not JSON.
    let response = client
        .post(&url)
        .header("x-api-key", "sk-test")
        .header("anthropic-version", "2023-06-01")
        .body("{nope")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 400);

    // Unknown path.
    let response = get(&client, format!("{}/v1/nothing", fake.base_url())).await;
    assert_eq!(response.status(), 404);

    let stats = fake.stats();
    assert_eq!(stats.messages_accepted, 1);
    assert_eq!(stats.invalid_4xx, 7);
    fake.shutdown().await;
}

#[tokio::test]
async fn third_quick_call_is_rate_limited() {
    let fake = start(with_limits(2)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());
    for _ in 0..2 {
        let response = post(&client, url.clone(), &message_body())
            .await
            .expect("answered");
        assert_eq!(response.status(), 200);
    }
    let response = post(&client, url.clone(), &message_body())
        .await
        .expect("answered");
    assert_eq!(response.status(), 429);
    let retry_after: u64 = header(&response, "retry-after").parse().expect("number");
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(
        header(&response, "anthropic-ratelimit-requests-remaining"),
        "0"
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("rate limit of 2 requests per minute")
    );
    // Another model class has its own buckets.
    let mut opus = message_body();
    opus["model"] = json!("claude-opus-4-7");
    let response = post(&client, url, &opus).await.expect("answered");
    assert_eq!(response.status(), 200);

    let stats = fake.stats();
    assert_eq!(stats.messages_accepted, 3);
    assert_eq!(stats.rate_limited_429, 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn set_limits_changes_headers_and_429s_at_run_time() {
    let fake = start(with_limits(100)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());
    let response = post(&client, url.clone(), &message_body())
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "anthropic-ratelimit-requests-limit"),
        "100"
    );
    assert_eq!(
        header(&response, "anthropic-ratelimit-requests-remaining"),
        "99"
    );

    // Lower the RPM to 2: the bucket (99 left) is clamped to its new capacity of 2.
    let lowered = FakeLimits {
        rpm: 2,
        ..fake.limits().expect("limits set")
    };
    fake.set_limits(Some(lowered));
    assert_eq!(fake.limits(), Some(lowered));
    for remaining in ["1", "0"] {
        let response = post(&client, url.clone(), &message_body())
            .await
            .expect("answered");
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "anthropic-ratelimit-requests-limit"), "2");
        assert_eq!(
            header(&response, "anthropic-ratelimit-requests-remaining"),
            remaining
        );
    }
    let response = post(&client, url.clone(), &message_body())
        .await
        .expect("answered");
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "anthropic-ratelimit-requests-limit"), "2");
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("rate limit of 2 requests per minute")
    );
    // A class first used after the change starts with the new limits too.
    let mut opus = message_body();
    opus["model"] = json!("claude-opus-4-7");
    let response = post(&client, url.clone(), &opus).await.expect("answered");
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "anthropic-ratelimit-requests-limit"), "2");

    // Without limits: no 429 and no rate limit headers.
    fake.set_limits(None);
    assert_eq!(fake.limits(), None);
    let response = post(&client, url, &message_body()).await.expect("answered");
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("anthropic-ratelimit-requests-limit")
            .is_none()
    );

    let stats = fake.stats();
    assert_eq!(stats.messages_accepted, 5);
    assert_eq!(stats.rate_limited_429, 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn injected_overload_counts_nothing_accepted() {
    let fake = start(FakeConfig {
        faults: Faults {
            overloaded_529: 1.0,
            ..Faults::default()
        },
        ..FakeConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());
    let response = post(&client, url.clone(), &message_body())
        .await
        .expect("answered");
    assert_eq!(response.status(), 529);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "overloaded_error");
    let stats = fake.stats();
    assert_eq!(stats.messages_accepted, 0);
    assert_eq!(stats.overloaded_529, 1);
    assert_eq!(stats.input_tokens, 0);

    // Faults can change at run time.
    fake.set_faults(Faults {
        rate_limited_429: 1.0,
        ..Faults::default()
    });
    let response = post(&client, url.clone(), &message_body())
        .await
        .expect("answered");
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "1");
    fake.set_faults(Faults::default());
    let response = post(&client, url, &message_body()).await.expect("answered");
    assert_eq!(response.status(), 200);
    fake.shutdown().await;
}

#[tokio::test]
async fn dropped_after_processing_gives_client_error() {
    let fake = start(FakeConfig {
        faults: Faults {
            drop_after_processing: 1.0,
            ..Faults::default()
        },
        ..FakeConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());
    let result = post(&client, url, &message_body()).await;
    assert!(result.is_err(), "expected a connection error");
    let stats = fake.stats();
    assert_eq!(stats.messages_dropped, 1);
    assert_eq!(stats.messages_accepted, 0);
    assert!(stats.output_tokens > 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn latency_is_applied() {
    let fake = start(FakeConfig {
        latency: Duration::from_millis(150),
        ..FakeConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let response = post(
        &client,
        format!("{}/v1/messages", fake.base_url()),
        &message_body(),
    )
    .await
    .expect("answered");
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    fake.shutdown().await;
}

fn batch_body(n: usize) -> Value {
    let requests: Vec<Value> = (0..n)
        .map(|i| {
            let mut params = message_body();
            params["messages"][0]["content"] = json!(format!("Question number {i}"));
            if i == 0 {
                params["model"] = json!("not-a-model");
            }
            json!({"custom_id": format!("req-{i}"), "params": params})
        })
        .collect();
    json!({ "requests": requests })
}

#[tokio::test]
async fn batch_goes_from_in_progress_to_ended() {
    let fake = start(FakeConfig {
        batch: BatchSettings {
            processing_time: Duration::from_millis(200),
            ..BatchSettings::default()
        },
        ..FakeConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let base = fake.base_url();
    let response = post(
        &client,
        format!("{base}/v1/messages/batches"),
        &batch_body(10),
    )
    .await
    .expect("answered");
    assert_eq!(response.status(), 200);
    let batch: Value = response.json().await.expect("json");
    let id = batch["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("msgbatch_"));
    assert_eq!(batch["type"], "message_batch");
    assert_eq!(batch["processing_status"], "in_progress");
    assert_eq!(batch["request_counts"]["processing"], 10);
    assert!(batch["results_url"].is_null());

    // Results and delete are refused while processing.
    let response = get(&client, format!("{base}/v1/messages/batches/{id}/results")).await;
    assert_eq!(response.status(), 400);

    tokio::time::sleep(Duration::from_millis(250)).await;
    let batch: Value = get(&client, format!("{base}/v1/messages/batches/{id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(batch["processing_status"], "ended");
    let counts = &batch["request_counts"];
    let sum: u64 = ["processing", "succeeded", "errored", "canceled", "expired"]
        .iter()
        .map(|k| counts[k].as_u64().expect("count"))
        .sum();
    assert_eq!(sum, 10);
    assert_eq!(counts["errored"], 1);
    assert_eq!(counts["succeeded"], 9);
    let results_url = batch["results_url"].as_str().expect("url").to_string();
    assert_eq!(
        results_url,
        format!("{base}/v1/messages/batches/{id}/results")
    );

    let jsonl = get(&client, results_url).await.text().await.expect("text");
    let mut ids: Vec<String> = jsonl
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).expect("json line");
            line["custom_id"].as_str().expect("custom_id").to_string()
        })
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("req-{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected);

    let stats = fake.stats();
    assert_eq!(stats.batches_created, 1);
    assert_eq!(stats.batch_requests, 10);
    assert_eq!(stats.batch_succeeded, 9);
    assert_eq!(stats.batch_errored, 1);
    assert!(stats.batch_output_tokens > 0);
    assert_eq!(stats.messages_accepted, 0);

    let response = client
        .delete(format!("{base}/v1/messages/batches/{id}"))
        .header("x-api-key", "sk-test")
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    let response = get(&client, format!("{base}/v1/messages/batches/{id}")).await;
    assert_eq!(response.status(), 404);
    fake.shutdown().await;
}

#[tokio::test]
async fn batch_cancel_and_validation() {
    let fake = start(FakeConfig {
        batch: BatchSettings {
            processing_time: Duration::from_secs(60),
            queue_cap: 15,
            ..BatchSettings::default()
        },
        ..FakeConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let base = fake.base_url();
    let url = format!("{base}/v1/messages/batches");

    let duplicate = json!({"requests": [
        {"custom_id": "a", "params": message_body()},
        {"custom_id": "a", "params": message_body()}
    ]});
    let response = post(&client, url.clone(), &duplicate)
        .await
        .expect("answered");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .starts_with("requests.1.custom_id")
    );

    let batch: Value = post(&client, url.clone(), &batch_body(10))
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    let id = batch["id"].as_str().expect("id").to_string();

    // The queue cap (15) leaves no room for 10 more.
    let response = post(&client, url.clone(), &batch_body(10))
        .await
        .expect("answered");
    assert_eq!(response.status(), 429);
    assert!(
        header(&response, "retry-after")
            .parse::<u64>()
            .expect("number")
            >= 1
    );

    let canceling: Value = post(&client, format!("{url}/{id}/cancel"), &json!({}))
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    assert_eq!(canceling["processing_status"], "canceling");
    assert!(canceling["cancel_initiated_at"].is_string());
    let ended: Value = get(&client, format!("{url}/{id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(ended["processing_status"], "ended");
    assert_eq!(ended["request_counts"]["canceled"], 10);
    let jsonl = get(&client, format!("{url}/{id}/results"))
        .await
        .text()
        .await
        .expect("text");
    assert_eq!(jsonl.lines().count(), 10);
    assert!(jsonl.lines().all(|l| l.contains("\"canceled\"")));
    assert_eq!(fake.stats().batch_canceled, 10);
    fake.shutdown().await;
}

#[tokio::test]
async fn batch_list_paginates_newest_first() {
    let fake = start(FakeConfig::default()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages/batches", fake.base_url());
    let mut ids = Vec::new();
    for _ in 0..5 {
        let batch: Value = post(&client, url.clone(), &batch_body(1))
            .await
            .expect("answered")
            .json()
            .await
            .expect("json");
        ids.push(batch["id"].as_str().expect("id").to_string());
    }
    ids.reverse(); // newest first

    let page: Value = get(&client, format!("{url}?limit=2"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page["data"].as_array().expect("data").len(), 2);
    assert_eq!(page["data"][0]["id"], ids[0]);
    assert_eq!(page["first_id"], ids[0]);
    assert_eq!(page["last_id"], ids[1]);
    assert_eq!(page["has_more"], true);

    let page: Value = get(&client, format!("{url}?limit=2&after_id={}", ids[1]))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page["first_id"], ids[2]);
    assert_eq!(page["last_id"], ids[3]);
    assert_eq!(page["has_more"], true);

    let page: Value = get(&client, format!("{url}?limit=2&after_id={}", ids[3]))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page["data"].as_array().expect("data").len(), 1);
    assert_eq!(page["has_more"], false);

    let page: Value = get(&client, url.clone()).await.json().await.expect("json");
    assert_eq!(page["data"].as_array().expect("data").len(), 5);

    let response = get(&client, format!("{url}?limit=0")).await;
    assert_eq!(response.status(), 400);
    fake.shutdown().await;
}

#[tokio::test]
async fn oversized_body_gets_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = start(FakeConfig::default()).await;
    let mut stream = tokio::net::TcpStream::connect(fake.addr())
        .await
        .expect("connects");
    let head = "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\n\
                anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n\
                content-length: 40000000\r\n\r\n{";
    stream.write_all(head.as_bytes()).await.expect("written");
    let mut buffer = vec![0u8; 4096];
    let n = stream.read(&mut buffer).await.expect("read");
    let answer = String::from_utf8_lossy(&buffer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request_too_large"), "{answer}");
    assert_eq!(fake.stats().invalid_4xx, 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn count_tokens_counts_what_messages_bills_and_refuses_extra_fields() {
    let fake = start(FakeConfig::default()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages/count_tokens", fake.base_url());
    let mut body = message_body();
    let refused = post(&client, url.clone(), &body).await.expect("sent");
    assert_eq!(refused.status(), 400, "max_tokens is not taken");
    let error: Value = refused.json().await.expect("json");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_tokens: Extra inputs are not permitted"),
        "{error}"
    );
    body.as_object_mut().expect("object").remove("max_tokens");
    let counted: Value = post(&client, url, &body)
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let billed: Value = post(
        &client,
        format!("{}/v1/messages", fake.base_url()),
        &message_body(),
    )
    .await
    .expect("sent")
    .json()
    .await
    .expect("json");
    assert_eq!(counted["input_tokens"], billed["usage"]["input_tokens"]);
    let stats = fake.stats();
    assert_eq!((stats.count_tokens_calls, stats.messages_accepted), (1, 1));
}

/// A call sharing a 2,000-token system prompt marked for the cache, then asking `question`.
fn cached_body(question: &str, ttl: &str) -> Value {
    json!({
        "model": "claude-sonnet-5-5",
        "max_tokens": 20,
        "system": [{
            "type": "text",
            "text": "Grade the answer against the rubric. ".repeat(216),
            "cache_control": {"type": "ephemeral", "ttl": ttl}
        }],
        "messages": [{"role": "user", "content": question}]
    })
}

async fn usage_of(client: &reqwest::Client, base: &str, body: &Value) -> Value {
    let response = post(client, format!("{base}/v1/messages"), body)
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    let message: Value = response.json().await.expect("json");
    message["usage"].clone()
}

#[tokio::test]
async fn the_cache_is_written_once_read_after_and_charged_to_itpm_only_for_what_is_not_read() {
    // 30,000 ITPM a minute over a 6 s burst: 3,000 tokens in the bucket, room for the prefix
    // once, not twice.
    let fake = start(FakeConfig {
        limits: Some(FakeLimits {
            rpm: 1_000,
            itpm: 30_000,
            otpm: 100_000,
            burst_seconds: 6.0,
        }),
        ..FakeConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let base = fake.base_url();
    let total = count_input_tokens(&cached_body("Is 2 + 2 = 4?", "5m"));
    assert!((2_000..3_000).contains(&total), "{total}");
    let first = usage_of(&client, &base, &cached_body("Is 2 + 2 = 4?", "5m")).await;
    let written = first["cache_creation_input_tokens"]
        .as_u64()
        .expect("written");
    assert_eq!(
        first["cache_creation"]["ephemeral_5m_input_tokens"],
        written
    );
    assert_eq!(first["cache_read_input_tokens"], 0);
    assert_eq!(
        written + first["input_tokens"].as_u64().expect("input"),
        total
    );
    // Less than the prefix is left in the bucket, yet the next calls are admitted: what they
    // read is not charged, and they send only a few tokens of their own.
    for i in 0..5 {
        let usage = usage_of(&client, &base, &cached_body(&format!("Is {i} even?"), "5m")).await;
        assert_eq!(usage["cache_read_input_tokens"], written, "{usage}");
        assert_eq!(usage["cache_creation_input_tokens"], 0);
        assert!(usage["input_tokens"].as_u64().expect("input") < 20);
    }
    let stats = fake.stats();
    assert_eq!(stats.cache_write_5m_tokens, written);
    assert_eq!(stats.cache_read_input_tokens, 5 * written);
    assert_eq!(stats.rate_limited_429, 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn identical_first_calls_at_once_all_write_and_five_breakpoints_are_refused() {
    let fake = start(FakeConfig {
        latency: Duration::from_millis(300),
        ..FakeConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let base = fake.base_url();
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                usage_of(&client, &base, &cached_body(&format!("q{i}"), "1h")).await
            })
        })
        .collect();
    let mut usages = Vec::new();
    for call in calls {
        usages.push(call.await.expect("call"));
    }
    for usage in &usages {
        assert!(usage["cache_creation"]["ephemeral_1h_input_tokens"].as_u64() > Some(1_000));
        assert_eq!(usage["cache_read_input_tokens"], 0);
    }
    // Their answers have begun: now it is read.
    let after = usage_of(&client, &base, &cached_body("q9", "1h")).await;
    assert!(after["cache_read_input_tokens"].as_u64() > Some(1_000));

    let block = json!({"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}});
    let mut five = message_body();
    five["system"] = json!([block, block, block, block, block]);
    let response = post(&client, format!("{base}/v1/messages"), &five)
        .await
        .expect("answered");
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert_eq!(
        error["error"]["message"],
        "A maximum of 4 blocks with cache_control may be provided. Found 5."
    );
    let mut empty = message_body();
    empty["messages"][0]["content"] = json!([{"type": "text", "text": ""}]);
    let response = post(&client, format!("{base}/v1/messages"), &empty)
        .await
        .expect("answered");
    assert_eq!(response.status(), 400);
    fake.shutdown().await;
}

#[tokio::test]
async fn batch_requests_read_and_write_the_same_cache_as_messages_calls() {
    let fake = start(FakeConfig {
        batch: BatchSettings {
            processing_time: Duration::from_millis(100),
            ..BatchSettings::default()
        },
        ..FakeConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let base = fake.base_url();
    let requests: Vec<Value> = (0..4)
        .map(|i| json!({"custom_id": format!("r{i}"), "params": cached_body(&format!("q{i}"), "1h")}))
        .collect();
    let response = post(
        &client,
        format!("{base}/v1/messages/batches"),
        &json!({"requests": requests}),
    )
    .await
    .expect("answered");
    assert_eq!(response.status(), 200);
    let id = response.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let jsonl = get(&client, format!("{base}/v1/messages/batches/{id}/results"))
        .await
        .text()
        .await
        .expect("text");
    let (mut writes, mut reads) = (0, 0);
    for line in jsonl.lines() {
        let line: Value = serde_json::from_str(line).expect("json");
        let usage = &line["result"]["message"]["usage"];
        writes += usage["cache_creation"]["ephemeral_1h_input_tokens"]
            .as_u64()
            .expect("1h");
        reads += usage["cache_read_input_tokens"].as_u64().expect("read");
    }
    let stats = fake.stats();
    assert_eq!(stats.batch_cache_write_1h_tokens, writes);
    assert_eq!(stats.batch_cache_read_input_tokens, reads);
    assert_eq!(
        reads,
        3 * writes,
        "the first writes the prefix, the other three read it"
    );
    // A Messages call after the batch reads what the batch wrote.
    let usage = usage_of(&client, &base, &cached_body("later", "1h")).await;
    assert_eq!(usage["cache_read_input_tokens"].as_u64(), Some(writes));
    fake.shutdown().await;
}

/// Org A with two keys, org B with one; every class of either holds `rpm` requests (a bucket
/// of a minute's refill).
fn two_orgs(rpm: u64) -> FakeConfig {
    FakeConfig {
        orgs: vec![
            FakeOrg::new("org-a", ["sk-a1", "sk-a2"]),
            FakeOrg::new("org-b", ["sk-b"]),
        ],
        ..with_limits(rpm)
    }
}

async fn post_as(
    client: &reqwest::Client,
    url: String,
    key: &str,
    body: &Value,
) -> reqwest::Response {
    client
        .post(url)
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .expect("answered")
}

async fn get_as(client: &reqwest::Client, url: String, key: &str) -> reqwest::Response {
    client
        .get(url)
        .header("authorization", format!("Bearer {key}"))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .expect("answered")
}

fn has_header(response: &reqwest::Response, name: &str) -> bool {
    response.headers().contains_key(name)
}

#[tokio::test]
async fn the_keys_of_an_org_share_its_buckets_and_another_org_has_its_own() {
    let fake = start(two_orgs(3)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());
    let mut accepted = 0;
    for key in ["sk-a1", "sk-a2", "sk-a1", "sk-a2", "sk-a1", "sk-a2"] {
        let response = post_as(&client, url.clone(), key, &message_body()).await;
        assert_eq!(header(&response, "anthropic-organization-id"), "org-a");
        assert_eq!(header(&response, "anthropic-workspace-id"), "wrkspc_org-a");
        assert!(header(&response, "request-id").starts_with("req_"));
        match response.status().as_u16() {
            200 => accepted += 1,
            429 => assert!(accepted == 3, "a 429 before A's bucket was drained"),
            status => panic!("unexpected {status}"),
        }
    }
    assert_eq!(accepted, 3, "A's two keys drew on one bucket of 3");
    for _ in 0..3 {
        let response = post_as(&client, url.clone(), "sk-b", &message_body()).await;
        assert_eq!(response.status(), 200, "B is untouched by A's traffic");
        assert_eq!(header(&response, "anthropic-organization-id"), "org-b");
        assert_eq!(header(&response, "anthropic-workspace-id"), "wrkspc_org-b");
    }
    // A key of no org: a 401 naming no org.
    let response = post_as(&client, url.clone(), "sk-nobody", &message_body()).await;
    assert_eq!(response.status(), 401);
    assert!(!has_header(&response, "anthropic-organization-id"));
    assert!(has_header(&response, "request-id"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(body["error"]["message"], "invalid x-api-key");

    let (a, b) = (fake.org_stats("org-a"), fake.org_stats("org-b"));
    assert_eq!((a.messages_accepted, a.rate_limited_429), (3, 3));
    assert_eq!((b.messages_accepted, b.rate_limited_429), (3, 0));
    assert!(a.input_tokens > 0 && a.output_tokens > 0);
    let stats = fake.stats();
    assert_eq!((stats.messages_accepted, stats.rate_limited_429), (6, 3));
    assert_eq!(stats.input_tokens, a.input_tokens + b.input_tokens);
    assert_eq!(stats.orgs.get("org-a"), Some(&a));
    assert_eq!(stats.orgs.get("org-b"), Some(&b));
    let remote: Value = reqwest::get(format!("{}/_fake/stats", fake.base_url()))
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    assert_eq!(remote["orgs"]["org-b"]["messages_accepted"], 3);
    fake.shutdown().await;
}

#[tokio::test]
async fn set_org_limits_changes_one_org_and_none_brings_back_the_fake_wide_limits() {
    let fake = start(two_orgs(100)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());
    let one = FakeLimits {
        rpm: 1,
        ..fake.limits().expect("limits")
    };
    fake.set_org_limits("org-b", Some(one));
    assert_eq!(fake.org_limits("org-b"), Some(one));
    assert_eq!(fake.org_limits("org-a"), fake.limits());
    let response = post_as(&client, url.clone(), "sk-b", &message_body()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "anthropic-ratelimit-requests-limit"), "1");
    let response = post_as(&client, url.clone(), "sk-b", &message_body()).await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "anthropic-organization-id"), "org-b");
    let response = post_as(&client, url.clone(), "sk-a1", &message_body()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "anthropic-ratelimit-requests-limit"),
        "100"
    );

    // Fake-wide changes reach A, not B while it has its own.
    let two = FakeLimits { rpm: 2, ..one };
    fake.set_limits(Some(two));
    let response = post_as(&client, url.clone(), "sk-a2", &message_body()).await;
    assert_eq!(header(&response, "anthropic-ratelimit-requests-limit"), "2");
    assert_eq!(fake.org_limits("org-b"), Some(one));
    fake.set_org_limits("org-b", None);
    assert_eq!(fake.org_limits("org-b"), Some(two));
    fake.shutdown().await;
}

#[tokio::test]
async fn a_batch_is_seen_only_by_its_own_org() {
    let fake = start(FakeConfig {
        batch: BatchSettings {
            processing_time: Duration::from_millis(100),
            ..BatchSettings::default()
        },
        ..two_orgs(100)
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages/batches", fake.base_url());
    let response = post_as(&client, url.clone(), "sk-a1", &batch_body(2)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "anthropic-organization-id"), "org-a");
    let id = response.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let listed: Value = get_as(&client, url.clone(), "sk-b")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed["data"], json!([]), "B lists none of A's batches");
    let listed: Value = get_as(&client, url.clone(), "sk-a2")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed["data"][0]["id"], id.as_str());

    let response = get_as(&client, format!("{url}/{id}"), "sk-b").await;
    assert_eq!(response.status(), 404);
    assert_eq!(header(&response, "anthropic-organization-id"), "org-b");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "not_found_error");
    let response = post_as(&client, format!("{url}/{id}/cancel"), "sk-b", &json!({})).await;
    assert_eq!(response.status(), 404);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let response = get_as(&client, format!("{url}/{id}/results"), "sk-b").await;
    assert_eq!(response.status(), 404);
    let response = client
        .delete(format!("{url}/{id}"))
        .header("x-api-key", "sk-b")
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 404);
    let response = get_as(&client, format!("{url}/{id}/results"), "sk-a2").await;
    assert_eq!(response.status(), 200);

    let (a, b) = (fake.org_stats("org-a"), fake.org_stats("org-b"));
    assert_eq!((a.batches_created, a.batch_requests), (1, 2));
    assert_eq!(b.batches_created, 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn each_org_has_its_own_prompt_cache() {
    let fake = start(two_orgs(100)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());
    let usage = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.expect("json")["usage"].clone()
    };
    let first = usage(post_as(&client, url.clone(), "sk-a1", &cached_body("q1", "5m")).await).await;
    assert!(first["cache_creation_input_tokens"].as_u64() > Some(1_000));
    let other_org =
        usage(post_as(&client, url.clone(), "sk-b", &cached_body("q2", "5m")).await).await;
    assert_eq!(
        other_org["cache_read_input_tokens"], 0,
        "B cannot read A's cache"
    );
    assert_eq!(
        other_org["cache_creation_input_tokens"],
        first["cache_creation_input_tokens"]
    );
    let same_org = usage(post_as(&client, url, "sk-a2", &cached_body("q3", "5m")).await).await;
    assert_eq!(
        same_org["cache_read_input_tokens"],
        first["cache_creation_input_tokens"]
    );
    assert_eq!(
        fake.org_stats("org-a").cache_read_input_tokens,
        same_org["cache_read_input_tokens"].as_u64().expect("read")
    );
    assert_eq!(fake.org_stats("org-b").cache_read_input_tokens, 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_reached_spend_cap_is_a_429_without_retry_after_until_cleared() {
    let fake = start(two_orgs(100)).await;
    let client = reqwest::Client::new();
    let base = fake.base_url();
    fake.set_spend_cap_reached("org-a", true);
    let response = post_as(
        &client,
        format!("{base}/v1/messages"),
        "sk-a1",
        &message_body(),
    )
    .await;
    assert_eq!(response.status(), 429);
    assert!(!has_header(&response, "retry-after"));
    assert!(header(&response, "request-id").starts_with("req_"));
    assert_eq!(header(&response, "anthropic-organization-id"), "org-a");
    assert_eq!(header(&response, "anthropic-workspace-id"), "wrkspc_org-a");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(
        body["error"]["details"]["error_code"],
        "enforced_spend_limit_reached"
    );
    let message = body["error"]["message"].as_str().expect("message");
    let resumes = message
        .strip_prefix(
            "Your organization has reached its monthly spend limit. Access resumes at 00:00 UTC on ",
        )
        .and_then(|rest| rest.strip_suffix('.'))
        .unwrap_or_else(|| panic!("{message}"));
    let resumes: jiff::Timestamp = resumes.parse().expect("RFC 3339");
    let resumes = resumes.to_zoned(jiff::tz::TimeZone::UTC);
    assert_eq!((resumes.day(), resumes.hour(), resumes.minute()), (1, 0, 0));
    assert!(resumes.timestamp() > jiff::Timestamp::now());

    // Batch creates too; reading batches is not spending.
    let response = post_as(
        &client,
        format!("{base}/v1/messages/batches"),
        "sk-a2",
        &batch_body(1),
    )
    .await;
    assert_eq!(response.status(), 429);
    assert!(!has_header(&response, "retry-after"));
    let response = get_as(&client, format!("{base}/v1/messages/batches"), "sk-a2").await;
    assert_eq!(response.status(), 200);

    let response = post_as(
        &client,
        format!("{base}/v1/messages"),
        "sk-b",
        &message_body(),
    )
    .await;
    assert_eq!(response.status(), 200, "B has not reached its cap");

    fake.set_spend_cap_reached("org-a", false);
    let response = post_as(
        &client,
        format!("{base}/v1/messages"),
        "sk-a1",
        &message_body(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let a = fake.org_stats("org-a");
    assert_eq!((a.rate_limited_429, a.messages_accepted), (2, 1));
    fake.shutdown().await;
}

#[tokio::test]
async fn a_revoked_key_is_a_401_and_its_orgs_other_key_still_works() {
    let fake = start(two_orgs(100)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());
    fake.revoke_key("sk-a1");
    let response = post_as(&client, url.clone(), "sk-a1", &message_body()).await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(body["error"]["message"], "invalid x-api-key");
    let response = get_as(
        &client,
        format!("{}/v1/messages/batches", fake.base_url()),
        "sk-a1",
    )
    .await;
    assert_eq!(response.status(), 401, "as a Bearer token too");
    let response = post_as(&client, url, "sk-a2", &message_body()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "anthropic-organization-id"), "org-a");
    fake.shutdown().await;
}

#[tokio::test]
async fn a_gateway_429_carries_none_of_the_apis_headers() {
    let fake = start(FakeConfig {
        faults: Faults {
            gateway_429: 1.0,
            ..Faults::default()
        },
        ..two_orgs(100)
    })
    .await;
    let client = reqwest::Client::new();
    let response = post_as(
        &client,
        format!("{}/v1/messages", fake.base_url()),
        "sk-a1",
        &message_body(),
    )
    .await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "1");
    assert!(!has_header(&response, "request-id"));
    let anthropic: Vec<_> = response
        .headers()
        .keys()
        .filter(|name| name.as_str().starts_with("anthropic-"))
        .collect();
    assert!(anthropic.is_empty(), "{anthropic:?}");
    let body: Value = response.json().await.expect("json");
    assert!(
        body.get("type").is_none() && body.get("request_id").is_none(),
        "{body}"
    );
    assert!(body["error"]["message"].is_string(), "{body}");
    let stats = fake.stats();
    assert_eq!((stats.rate_limited_429, stats.messages_accepted), (1, 0));
    assert_eq!(stats.input_tokens, 0);
    assert_eq!(fake.org_stats("org-a").rate_limited_429, 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn without_orgs_every_answer_names_the_implicit_org() {
    let fake = start(FakeConfig {
        api_key: Some("sk-test".into()),
        ..with_limits(100)
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());
    let response = post(&client, url.clone(), &message_body())
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "anthropic-organization-id"),
        ORGANIZATION_ID
    );
    assert_eq!(
        header(&response, "anthropic-workspace-id"),
        DEFAULT_WORKSPACE_ID
    );
    assert!(header(&response, "request-id").starts_with("req_"));
    // Even a 401 (as before there were organizations).
    let response = post_as(&client, url, "sk-other", &message_body()).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        header(&response, "anthropic-organization-id"),
        ORGANIZATION_ID
    );
    assert!(header(&response, "request-id").starts_with("req_"));
    let stats = fake.stats();
    assert!(stats.orgs.is_empty());
    let remote: Value = reqwest::get(format!("{}/_fake/stats", fake.base_url()))
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    assert!(remote.get("orgs").is_none(), "{remote}");
    assert_eq!(fake.org_stats(ORGANIZATION_ID).messages_accepted, 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn the_load_generator_drains_the_org_of_its_key() {
    let fake = start(two_orgs(3)).await;
    let spec = LoadSpec {
        base_url: fake.base_url(),
        api_key: "sk-a1".to_string(),
        model: "claude-sonnet-4-6".to_string(),
        rpm: 600.0,
        duration: Duration::from_millis(800),
        max_tokens: 50,
        prompt_chars: 100,
    };
    let report = run_load(spec, tokio_util::sync::CancellationToken::new()).await;
    assert_eq!(report.ok, 3, "{report:?}");
    assert!(report.rate_limited_429 >= 4, "{report:?}");
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());
    let response = post_as(&client, url.clone(), "sk-a2", &message_body()).await;
    assert_eq!(response.status(), 429, "A's other key finds A drained");
    let response = post_as(&client, url, "sk-b", &message_body()).await;
    assert_eq!(response.status(), 200);
    fake.shutdown().await;
}

#[tokio::test]
async fn orgs_giving_a_key_twice_are_refused_at_start() {
    let config = FakeConfig {
        orgs: vec![FakeOrg::new("a", ["k"]), FakeOrg::new("b", ["k"])],
        ..FakeConfig::default()
    };
    let error = FakeApi::start(config, "127.0.0.1:0".parse().expect("valid address"))
        .await
        .err()
        .expect("refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

/// Org A (key `sk-a`, each class holding `org_rpm` requests) with workspace `ws-nightly`
/// (key `sk-nightly`, its own `ws_rpm` and 100,000 ITPM) and workspace `ws-open` without limits
/// of its own (key `sk-open`); org B (key `sk-b`).
fn org_with_workspaces(org_rpm: u64, ws_rpm: u64) -> FakeConfig {
    let config = with_limits(org_rpm);
    let nightly = FakeLimits {
        rpm: ws_rpm,
        itpm: 100_000,
        ..config.limits.expect("limits")
    };
    FakeConfig {
        orgs: vec![
            FakeOrg::new("org-a", ["sk-a"])
                .with_workspace(
                    FakeWorkspace::new("ws-nightly", ["sk-nightly"]).with_limits(nightly),
                )
                .with_workspace(FakeWorkspace::new("ws-open", ["sk-open"])),
            FakeOrg::new("org-b", ["sk-b"]),
        ],
        ..config
    }
}

async fn error_message(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    body["error"]["message"]
        .as_str()
        .expect("message")
        .to_string()
}

#[tokio::test]
async fn a_limited_workspace_is_refused_on_its_own_bucket_while_the_org_has_room() {
    let fake = start(org_with_workspaces(12, 4)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());
    for remaining in ["3", "2", "1", "0"] {
        let response = post_as(&client, url.clone(), "sk-nightly", &message_body()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "anthropic-organization-id"), "org-a");
        assert_eq!(header(&response, "anthropic-workspace-id"), "ws-nightly");
        // The workspace's bucket has less left than the organization's: its limit is reported.
        assert_eq!(header(&response, "anthropic-ratelimit-requests-limit"), "4");
        assert_eq!(
            header(&response, "anthropic-ratelimit-requests-remaining"),
            remaining
        );
        assert_eq!(
            header(&response, "anthropic-ratelimit-input-tokens-limit"),
            "100000"
        );
        assert_eq!(
            header(&response, "anthropic-ratelimit-tokens-limit"),
            "300000"
        );
    }
    let response = post_as(&client, url.clone(), "sk-nightly", &message_body()).await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "anthropic-workspace-id"), "ws-nightly");
    assert_eq!(header(&response, "anthropic-ratelimit-requests-limit"), "4");
    let retry_after: u64 = header(&response, "retry-after").parse().expect("number");
    assert!((1..=15).contains(&retry_after), "{retry_after}");
    let message = error_message(response).await;
    assert!(
        message.contains("your workspace's rate limit of 4 requests per minute"),
        "{message}"
    );

    // The organization's default key still goes, on what the workspace left of its 12.
    for remaining in (0..8).rev() {
        let response = post_as(&client, url.clone(), "sk-a", &message_body()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "anthropic-workspace-id"), "wrkspc_org-a");
        assert_eq!(
            header(&response, "anthropic-ratelimit-requests-limit"),
            "12"
        );
        assert_eq!(
            header(&response, "anthropic-ratelimit-requests-remaining"),
            remaining.to_string()
        );
        assert_eq!(
            header(&response, "anthropic-ratelimit-input-tokens-limit"),
            "1000000"
        );
    }
    let response = post_as(&client, url.clone(), "sk-a", &message_body()).await;
    assert_eq!(response.status(), 429);
    assert_eq!(
        header(&response, "anthropic-ratelimit-requests-limit"),
        "12"
    );
    let message = error_message(response).await;
    assert!(
        message.contains("your organization's rate limit of 12 requests per minute"),
        "{message}"
    );
    // Another organization is untouched.
    let response = post_as(&client, url, "sk-b", &message_body()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "anthropic-workspace-id"), "wrkspc_org-b");

    let a = fake.org_stats("org-a");
    assert_eq!((a.messages_accepted, a.rate_limited_429), (12, 2));
    let nightly = fake.workspace_stats("org-a", "ws-nightly");
    assert_eq!(
        (nightly.messages_accepted, nightly.rate_limited_429),
        (4, 1)
    );
    let default = fake.workspace_stats("org-a", "wrkspc_org-a");
    assert_eq!(
        (default.messages_accepted, default.rate_limited_429),
        (8, 1)
    );
    assert_eq!(
        a.input_tokens,
        nightly.input_tokens + default.input_tokens,
        "a workspace's calls are its organization's"
    );
    assert_eq!(
        fake.workspace_stats("org-a", "ws-open"),
        OrgStats::default()
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn a_workspaces_calls_draw_on_the_orgs_bucket_which_then_binds() {
    let fake = start(org_with_workspaces(6, 4)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());
    for _ in 0..4 {
        let response = post_as(&client, url.clone(), "sk-a", &message_body()).await;
        assert_eq!(response.status(), 200);
    }
    // The organization has 2 left, the workspace 4: the organization's bucket is reported.
    for remaining in ["1", "0"] {
        let response = post_as(&client, url.clone(), "sk-nightly", &message_body()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "anthropic-workspace-id"), "ws-nightly");
        assert_eq!(header(&response, "anthropic-ratelimit-requests-limit"), "6");
        assert_eq!(
            header(&response, "anthropic-ratelimit-requests-remaining"),
            remaining
        );
        // Input tokens: the workspace's 100,000 has less left than the organization's 1,000,000.
        assert_eq!(
            header(&response, "anthropic-ratelimit-input-tokens-limit"),
            "100000"
        );
    }
    // The workspace has 2 of its own left, but the organization has none.
    let response = post_as(&client, url.clone(), "sk-nightly", &message_body()).await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "anthropic-ratelimit-requests-limit"), "6");
    let message = error_message(response).await;
    assert!(
        message.contains("your organization's rate limit of 6 requests per minute"),
        "{message}"
    );
    assert_eq!(fake.org_stats("org-a").messages_accepted, 6);
    assert_eq!(
        fake.workspace_stats("org-a", "ws-nightly")
            .messages_accepted,
        2
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn a_workspace_without_limits_shares_the_orgs_bucket_only() {
    let fake = start(org_with_workspaces(3, 1)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());
    for (key, workspace, remaining) in [
        ("sk-open", "ws-open", "2"),
        ("sk-a", "wrkspc_org-a", "1"),
        ("sk-open", "ws-open", "0"),
    ] {
        let response = post_as(&client, url.clone(), key, &message_body()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "anthropic-organization-id"), "org-a");
        assert_eq!(header(&response, "anthropic-workspace-id"), workspace);
        assert_eq!(header(&response, "anthropic-ratelimit-requests-limit"), "3");
        assert_eq!(
            header(&response, "anthropic-ratelimit-requests-remaining"),
            remaining
        );
    }
    for key in ["sk-open", "sk-a", "sk-nightly"] {
        let response = post_as(&client, url.clone(), key, &message_body()).await;
        assert_eq!(response.status(), 429, "{key}");
        let message = error_message(response).await;
        assert!(
            message.contains("your organization's rate limit of 3 requests per minute"),
            "{key}: {message}"
        );
    }
    let open = fake.workspace_stats("org-a", "ws-open");
    assert_eq!((open.messages_accepted, open.rate_limited_429), (2, 1));
    fake.shutdown().await;
}

#[tokio::test]
async fn workspace_limits_change_at_run_time_and_the_rest_stays_per_org() {
    let fake = start(FakeConfig {
        orgs: vec![
            FakeOrg::new("org-a", ["sk-a"]).with_workspace(FakeWorkspace::new("ws-x", ["sk-x"])),
        ],
        batch: BatchSettings {
            processing_time: Duration::from_millis(50),
            ..BatchSettings::default()
        },
        ..FakeConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let base = fake.base_url();
    let url = format!("{base}/v1/messages");
    assert_eq!(fake.workspace_limits("org-a", "ws-x"), None);
    let response = post_as(&client, url.clone(), "sk-x", &message_body()).await;
    assert_eq!(response.status(), 200);
    assert!(!has_header(&response, "anthropic-ratelimit-requests-limit"));

    // Limits of its own, though the organization has none.
    let one = FakeLimits {
        rpm: 1,
        itpm: 1_000_000,
        otpm: 200_000,
        burst_seconds: 60.0,
    };
    fake.set_workspace_limits("org-a", "ws-x", Some(one));
    assert_eq!(fake.workspace_limits("org-a", "ws-x"), Some(one));
    let response = post_as(&client, url.clone(), "sk-x", &message_body()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "anthropic-ratelimit-requests-limit"), "1");
    let response = post_as(&client, url.clone(), "sk-x", &message_body()).await;
    assert_eq!(response.status(), 429);
    let message = error_message(response).await;
    assert!(
        message.contains("your workspace's rate limit of 1 requests"),
        "{message}"
    );
    let response = post_as(&client, url.clone(), "sk-a", &message_body()).await;
    assert_eq!(
        response.status(),
        200,
        "the default workspace has no such limit"
    );
    assert!(!has_header(&response, "anthropic-ratelimit-requests-limit"));
    fake.set_workspace_limits("org-a", "ws-x", None);
    let response = post_as(&client, url.clone(), "sk-x", &message_body()).await;
    assert_eq!(response.status(), 200);
    assert!(!has_header(&response, "anthropic-ratelimit-requests-limit"));

    // A batch created through the workspace's key is its organization's.
    let response = post_as(
        &client,
        format!("{base}/v1/messages/batches"),
        "sk-x",
        &batch_body(2),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "anthropic-workspace-id"), "ws-x");
    let batch: Value = response.json().await.expect("json");
    let id = batch["id"].as_str().expect("id");
    let response = get_as(&client, format!("{base}/v1/messages/batches/{id}"), "sk-a").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "anthropic-workspace-id"), "wrkspc_org-a");
    let x = fake.workspace_stats("org-a", "ws-x");
    assert_eq!((x.messages_accepted, x.rate_limited_429), (3, 1));
    assert_eq!((x.batches_created, x.batch_requests), (1, 2));
    let a = fake.org_stats("org-a");
    assert_eq!((a.messages_accepted, a.batches_created), (4, 1));
    fake.shutdown().await;
}

#[tokio::test]
#[should_panic(expected = "default workspace")]
async fn the_default_workspace_cannot_get_limits_of_its_own() {
    let fake = start(org_with_workspaces(10, 5)).await;
    fake.set_workspace_limits("org-a", "wrkspc_org-a", fake.limits());
}

#[tokio::test]
async fn a_key_of_a_workspace_given_to_the_org_too_is_refused_at_start() {
    let config = FakeConfig {
        orgs: vec![FakeOrg::new("a", ["k"]).with_workspace(FakeWorkspace::new("w", ["k"]))],
        ..FakeConfig::default()
    };
    let error = FakeApi::start(config, "127.0.0.1:0".parse().expect("valid address"))
        .await
        .err()
        .expect("refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}
