//! A load generator playing "interactive traffic on the same org": Messages requests at a
//! steady rate, never retried, as a user-facing app would send them.
//!
//! Meant for the fake (to see how a workload and interactive users share the rate limits),
//! but it speaks to any Messages endpoint. Its key picks the organization it draws on, so with
//! [`super::FakeConfig::orgs`] it can drain one organization and leave the others be.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long [`run_load`] waits for the requests still out once sending has stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// E.g. `http://127.0.0.1:PORT`; requests go to `{base_url}/v1/messages`.
    pub base_url: String,
    /// Sent as `x-api-key`; in a fake with organizations, the organization it belongs to is
    /// the one whose buckets the load drains.
    pub api_key: String,
    pub model: String,
    /// Steady request rate: one request every `60 / rpm` seconds (none when not positive).
    pub rpm: f64,
    /// How long to keep sending.
    pub duration: Duration,
    pub max_tokens: u64,
    /// Approximate length of the single user message.
    pub prompt_chars: usize,
}

/// What happened to the requests sent. `sent == ok + rate_limited_429 + other_errors`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    pub rate_limited_429: u64,
    /// Other statuses, transport errors, and requests still unanswered after the drain
    /// timeout (30 s).
    pub other_errors: u64,
    /// `usage` summed over the successful answers.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Over the successful requests, from sending to the end of the body; 0 when none.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

/// How one request ended.
enum Outcome {
    Ok {
        latency: Duration,
        input_tokens: u64,
        output_tokens: u64,
    },
    RateLimited,
    OtherError,
}

/// Accumulates outcomes into a [`LoadReport`].
#[derive(Default)]
struct Tally {
    report: LoadReport,
    latencies_ms: Vec<f64>,
}

impl Tally {
    fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok {
                latency,
                input_tokens,
                output_tokens,
            } => {
                self.report.ok += 1;
                self.report.input_tokens += input_tokens;
                self.report.output_tokens += output_tokens;
                self.latencies_ms.push(latency.as_secs_f64() * 1000.0);
            }
            Outcome::RateLimited => self.report.rate_limited_429 += 1,
            Outcome::OtherError => self.report.other_errors += 1,
        }
    }

    /// Records a finished task; a task that panicked or was aborted counts as an error.
    fn record_joined(&mut self, joined: Result<Outcome, tokio::task::JoinError>) {
        self.record(joined.unwrap_or(Outcome::OtherError));
    }

    fn finish(mut self) -> LoadReport {
        self.latencies_ms.sort_by(f64::total_cmp);
        self.report.latency_p50_ms = percentile(&self.latencies_ms, 50.0);
        self.report.latency_p99_ms = percentile(&self.latencies_ms, 99.0);
        self.report
    }
}

/// Sends Messages requests at evenly spaced instants until `spec.duration` has passed or
/// `stop` is cancelled, then waits (at most 30 s) for the requests still out.
///
/// Each request runs in its own task, so a slow answer never delays the next start, and
/// none is retried: a 429 is counted as the user of an interactive app would feel it.
pub async fn run_load(spec: LoadSpec, stop: CancellationToken) -> LoadReport {
    let client = match reqwest::Client::builder().build() {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(%error, "load generator: could not build an HTTP client");
            return LoadReport::default();
        }
    };
    let url = format!("{}/v1/messages", spec.base_url.trim_end_matches('/'));
    let period = (spec.rpm.is_finite() && spec.rpm > 0.0).then(|| 60.0 / spec.rpm);
    let start = Instant::now();
    // A duration too long to represent means "until stopped" (a century will do).
    let deadline = start
        .checked_add(spec.duration)
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600));

    let mut tally = Tally::default();
    let mut in_flight = JoinSet::new();
    let mut index: u64 = 0;
    loop {
        // Without a rate, idle until the end.
        let next = match period {
            Some(period) => Duration::try_from_secs_f64(index as f64 * period)
                .ok()
                .and_then(|offset| start.checked_add(offset))
                .unwrap_or(deadline),
            None => deadline,
        };
        if next >= deadline {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = stop.cancelled() => {}
            }
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.cancelled() => break,
        }
        let request = client
            .post(&url)
            .header("x-api-key", &spec.api_key)
            .header("anthropic-version", "2023-06-01")
            .json(&request_body(&spec, index));
        in_flight.spawn(send(request));
        tally.report.sent += 1;
        index += 1;
        while let Some(joined) = in_flight.try_join_next() {
            tally.record_joined(joined);
        }
    }

    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(joined) = in_flight.join_next().await {
            tally.record_joined(joined);
        }
    })
    .await;
    if drained.is_err() {
        let unanswered = in_flight.len() as u64;
        tracing::warn!(
            unanswered,
            "load generator: requests still out after the drain timeout"
        );
        in_flight.abort_all();
        tally.report.other_errors += unanswered;
    }
    tally.finish()
}

/// The Messages body of request number `index`: one user message of about
/// `spec.prompt_chars` characters, numbered so that answers differ.
fn request_body(spec: &LoadSpec, index: u64) -> Value {
    const FILLER: &str = "Please summarize the night shift log in a few lines.";
    let mut prompt = format!("Request {index}.");
    while prompt.len() < spec.prompt_chars {
        prompt.push(' ');
        prompt.push_str(FILLER);
    }
    // All ASCII, so any byte index is a char boundary. The numbered prefix is always kept.
    prompt.truncate(spec.prompt_chars.max(prompt.find('.').map_or(0, |i| i + 1)));
    json!({
        "model": spec.model,
        "max_tokens": spec.max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    })
}

/// Sends one request and reads the whole answer.
async fn send(request: reqwest::RequestBuilder) -> Outcome {
    let sent_at = Instant::now();
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%error, "load generator: request failed");
            return Outcome::OtherError;
        }
    };
    let status = response.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Outcome::RateLimited;
    }
    if !status.is_success() {
        tracing::debug!(%status, "load generator: error answer");
        return Outcome::OtherError;
    }
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(error) => {
            tracing::debug!(%error, "load generator: answer body lost");
            return Outcome::OtherError;
        }
    };
    let latency = sent_at.elapsed();
    let usage = serde_json::from_slice::<Value>(&body)
        .ok()
        .map(|message| message["usage"].clone())
        .unwrap_or_default();
    Outcome::Ok {
        latency,
        input_tokens: usage["input_tokens"].as_u64().unwrap_or(0),
        output_tokens: usage["output_tokens"].as_u64().unwrap_or(0),
    }
}

/// Nearest-rank percentile of ascending `sorted` values; 0 when empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_api::{FakeApi, FakeConfig, FakeLimits};

    async fn start(limits: Option<FakeLimits>) -> FakeApi {
        let config = FakeConfig {
            limits,
            ..FakeConfig::default()
        };
        FakeApi::start(config, "127.0.0.1:0".parse().expect("valid address"))
            .await
            .expect("fake starts")
    }

    fn rpm_limit(rpm: u64) -> FakeLimits {
        FakeLimits {
            rpm,
            itpm: 10_000_000,
            otpm: 10_000_000,
            burst_seconds: 60.0,
        }
    }

    fn spec(fake: &FakeApi, rpm: f64, duration: Duration) -> LoadSpec {
        LoadSpec {
            base_url: fake.base_url(),
            api_key: "sk-load".to_string(),
            model: "claude-sonnet-4-6".to_string(),
            rpm,
            duration,
            max_tokens: 100,
            prompt_chars: 400,
        }
    }

    #[test]
    fn percentile_is_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&values[..10], 99.0), 10.0);
    }

    #[test]
    fn prompt_has_about_the_requested_length() {
        let fake_spec = |prompt_chars| LoadSpec {
            base_url: String::new(),
            api_key: String::new(),
            model: "claude-sonnet-4-6".to_string(),
            rpm: 1.0,
            duration: Duration::ZERO,
            max_tokens: 10,
            prompt_chars,
        };
        let prompt = |spec: &LoadSpec, index| {
            request_body(spec, index)["messages"][0]["content"]
                .as_str()
                .expect("text content")
                .to_string()
        };
        assert_eq!(prompt(&fake_spec(1000), 3).len(), 1000);
        assert_ne!(prompt(&fake_spec(1000), 3), prompt(&fake_spec(1000), 4));
        assert_eq!(prompt(&fake_spec(0), 12), "Request 12.");
    }

    #[tokio::test]
    async fn without_limits_every_request_succeeds() {
        let fake = start(None).await;
        // One request every 100 ms for 2 s.
        let report = run_load(
            spec(&fake, 600.0, Duration::from_secs(2)),
            CancellationToken::new(),
        )
        .await;
        assert!((19..=21).contains(&report.sent), "{report:?}");
        assert_eq!(report.ok, report.sent, "{report:?}");
        assert_eq!(report.rate_limited_429 + report.other_errors, 0);
        assert!(report.input_tokens >= 50 * report.ok, "{report:?}");
        assert!(report.output_tokens > 0);
        assert!(report.latency_p50_ms > 0.0);
        assert!(report.latency_p99_ms >= report.latency_p50_ms);
        assert_eq!(fake.stats().messages_accepted, report.ok);
    }

    #[tokio::test]
    async fn a_tiny_rpm_limit_shows_as_429s() {
        // Capacity 3 requests, refilling at one per 20 s.
        let fake = start(Some(rpm_limit(3))).await;
        let report = run_load(
            spec(&fake, 600.0, Duration::from_secs(1)),
            CancellationToken::new(),
        )
        .await;
        assert!((9..=11).contains(&report.sent), "{report:?}");
        assert_eq!(report.ok, 3, "{report:?}");
        assert_eq!(report.rate_limited_429, report.sent - 3, "{report:?}");
        assert_eq!(report.other_errors, 0);
        assert_eq!(fake.stats().rate_limited_429, report.rate_limited_429);
    }

    #[tokio::test]
    async fn lowering_the_limit_mid_run_brings_429s() {
        let fake = start(Some(rpm_limit(10_000))).await;
        let load = tokio::spawn(run_load(
            spec(&fake, 1200.0, Duration::from_millis(1500)),
            CancellationToken::new(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        fake.set_limits(Some(rpm_limit(1)));
        let report = load.await.expect("load task");
        // About 10 requests before the change, 20 after: at most one of those gets in.
        assert!(report.ok >= 8, "{report:?}");
        assert!(report.rate_limited_429 >= 15, "{report:?}");
        assert_eq!(report.ok + report.rate_limited_429, report.sent);
    }

    #[tokio::test]
    async fn stop_ends_the_run_early() {
        let fake = start(None).await;
        let stop = CancellationToken::new();
        let load = tokio::spawn(run_load(
            spec(&fake, 600.0, Duration::from_secs(60)),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(350)).await;
        stop.cancel();
        let report = tokio::time::timeout(Duration::from_secs(5), load)
            .await
            .expect("stopped in time")
            .expect("load task");
        assert!((3..=5).contains(&report.sent), "{report:?}");
        assert_eq!(report.ok, report.sent);
    }
}
