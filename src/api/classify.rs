//! The pure classification of the API's answers: a status, headers and body become an
//! [`Outcome`] the lanes act on. No I/O, so it is unit-tested on its own.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::answer::{DimHeaders, Origin, Outcome, RateLimitHeaders, Usage};
use crate::policy::outcome::account_blocked;

/// The `anthropic-ratelimit-*` headers of an answer; values past any plausible limit are dropped.
pub fn rate_limit_headers(headers: &HeaderMap, now: SystemTime) -> RateLimitHeaders {
    const PLAUSIBLE: u64 = 1_000_000_000_000;
    let text = |name: String| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let num = |name: String| text(name)?.parse::<u64>().ok().filter(|n| *n < PLAUSIBLE);
    let reset = |name: String| -> Option<f64> {
        let at: jiff::Timestamp = text(name)?.parse().ok()?;
        let now_ms = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis() as i64;
        let secs = (at.as_millisecond() - now_ms) as f64 / 1000.0;
        // A reset more than a day out is not a per-minute bucket's: ignore it.
        (secs <= 86_400.0).then_some(secs.max(0.0))
    };
    let dim = |prefix: &str| DimHeaders {
        limit: num(format!("anthropic-ratelimit-{prefix}-limit")),
        remaining: num(format!("anthropic-ratelimit-{prefix}-remaining")),
        reset_in: reset(format!("anthropic-ratelimit-{prefix}-reset")),
    };
    RateLimitHeaders {
        dims: [dim("requests"), dim("input-tokens"), dim("output-tokens")],
    }
}

/// `retry-after-ms` (what the SDKs read first), else `retry-after` as seconds or an HTTP date.
/// Garbage, negative or absurd values (over a day) are ignored.
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    const MAX: Duration = Duration::from_secs(86_400);
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|t| t.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
        && ms <= MAX.as_millis() as f64
    {
        return Some(Duration::from_micros((ms * 1000.0) as u64));
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 && secs <= MAX.as_secs_f64() {
            return Some(Duration::from_millis((secs * 1000.0) as u64));
        }
        return None;
    }
    // An HTTP date, e.g. "Wed, 21 Oct 2026 07:28:00 GMT".
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(at.as_millisecond().max(0) as u64);
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    (wait <= MAX).then_some(wait)
}

/// Who answered, from the headers: `anthropic-organization-id` and `anthropic-workspace-id`
/// (trimmed; empty, unreadable or over 200 characters: None), and whether the answer bore the
/// API's marks (`request-id` or any `anthropic-*` header).
pub fn origin(headers: &HeaderMap) -> Origin {
    let id = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.chars().count() <= 200)
            .map(str::to_owned)
    };
    let anthropic = headers
        .keys()
        .any(|name| name == "request-id" || name.as_str().starts_with("anthropic-"));
    Origin {
        organization_id: id("anthropic-organization-id"),
        workspace_id: id("anthropic-workspace-id"),
        request_id: id("request-id"),
        anthropic,
    }
}

#[derive(Deserialize)]
struct MessageHead {
    #[serde(rename = "type")]
    kind: String,
    usage: Usage,
}

/// Whether an error's `error.details.error_code` names the tier's spend cap.
pub fn spend_cap(error_code: &str) -> bool {
    error_code == "enforced_spend_limit_reached"
}

/// Classifies an answer. Pure: the lane's decisions are tested through it.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Outcome {
    let request_id = headers
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let retry_after = parse_retry_after(headers, now);
    let limits = rate_limit_headers(headers, now);
    if status == 200 {
        return match std::str::from_utf8(body) {
            Ok(text) => match serde_json::from_str::<MessageHead>(text) {
                Ok(head) if head.kind == "message" => Outcome::Succeeded {
                    message: text.to_owned(),
                    usage: head.usage,
                    request_id,
                    limits,
                },
                _ => Outcome::Unknown {
                    message: format!("200 answer is not a message (request-id {request_id:?})"),
                },
            },
            Err(_) => Outcome::Unknown {
                message: "200 answer is not UTF-8".into(),
            },
        };
    }
    let body_json: Value = serde_json::from_slice(body).unwrap_or_else(|_| {
        // Proxies and load balancers answer with HTML or nothing; keep it readable.
        let text = String::from_utf8_lossy(body);
        let text: String = text.chars().take(300).collect();
        json!({"type": "error", "error": {"type": "api_error", "message": format!("HTTP {status}: {text}")}})
    });
    let message = body_json["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"));
    let error_code = body_json["error"]["details"]["error_code"]
        .as_str()
        .unwrap_or_default();
    let should_retry = headers.get("x-should-retry").and_then(|v| v.to_str().ok());
    match status {
        // A refused key, a usage limit or the spend cap stops every call alike: pause, do not
        // fail each item.
        _ if account_blocked(status, &message, spend_cap(error_code)) => Outcome::Blocked {
            status,
            request_id,
            message,
        },
        429 => Outcome::RateLimited {
            retry_after,
            request_id,
            message,
            limits,
        },
        _ if should_retry == Some("false") => Outcome::Fatal {
            status,
            request_id,
            body: body_json,
        },
        408 | 409 | 500..=599 => Outcome::Retryable {
            status: Some(status),
            retry_after,
            request_id,
            message,
        },
        _ if should_retry == Some("true") => Outcome::Retryable {
            status: Some(status),
            retry_after,
            request_id,
            message,
        },
        _ => Outcome::Fatal {
            status,
            request_id,
            body: body_json,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    #[test]
    fn success_carries_usage_and_request_id() {
        let body = br#"{"id":"msg_1","type":"message","content":[],"usage":{"input_tokens":12,"output_tokens":7,"cache_creation_input_tokens":3}}"#;
        let out = classify(200, &headers(&[("request-id", "req_1")]), body, NOW);
        let Outcome::Succeeded {
            usage, request_id, ..
        } = out
        else {
            panic!("{out:?}")
        };
        assert_eq!(usage.input_tokens, 12);
        assert_eq!(usage.rate_limited_input(), 15);
        assert_eq!(request_id.as_deref(), Some("req_1"));
    }

    #[test]
    fn the_three_kinds_of_429_and_529() {
        let rl = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
        let out = classify(429, &headers(&[("retry-after", "7")]), rl, NOW);
        assert!(
            matches!(out, Outcome::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(7))
        );

        let cap = br#"{"type":"error","error":{"type":"rate_limit_error","message":"cap","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
        assert!(matches!(
            classify(429, &headers(&[]), cap, NOW),
            Outcome::Blocked { status: 429, .. }
        ));

        let own = br#"{"type":"error","error":{"type":"invalid_request_error","message":"You have reached your specified API usage limits. You will regain access on 2026-12-01"}}"#;
        assert!(matches!(
            classify(400, &headers(&[]), own, NOW),
            Outcome::Blocked { status: 400, .. }
        ));

        let over =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(matches!(
            classify(529, &headers(&[]), over, NOW),
            Outcome::Retryable {
                status: Some(529),
                ..
            }
        ));
    }

    #[test]
    fn other_4xx_are_fatal_with_the_api_body() {
        let bad = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"},"request_id":"req_9"}"#;
        let Outcome::Fatal { status, body, .. } = classify(400, &headers(&[]), bad, NOW) else {
            panic!()
        };
        assert_eq!(status, 400);
        assert_eq!(body["error"]["message"], "max_tokens: too big");
        assert!(matches!(
            classify(500, &headers(&[]), b"<html>", NOW),
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            classify(404, &headers(&[]), b"<html>not found</html>", NOW),
            Outcome::Fatal { status: 404, .. }
        ));
        assert!(matches!(
            classify(400, &headers(&[("x-should-retry", "true")]), b"{}", NOW),
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            classify(503, &headers(&[("x-should-retry", "false")]), b"{}", NOW),
            Outcome::Fatal { .. }
        ));
    }

    #[test]
    fn rate_limit_headers_parse_and_survive_garbage() {
        let h = headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "1970-01-01T00:00:02Z"),
            ("anthropic-ratelimit-input-tokens-limit", "30000"),
            ("anthropic-ratelimit-input-tokens-remaining", "-5"),
            ("anthropic-ratelimit-input-tokens-reset", "soon"),
            (
                "anthropic-ratelimit-output-tokens-limit",
                "99999999999999999999",
            ),
            ("anthropic-ratelimit-output-tokens-remaining", "8000"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "1969-12-31T23:59:00Z",
            ),
        ]);
        let r = rate_limit_headers(&h, NOW);
        assert_eq!(
            r.dims[0],
            DimHeaders {
                limit: Some(50),
                remaining: Some(49),
                reset_in: Some(2.0)
            }
        );
        assert_eq!(
            r.dims[1],
            DimHeaders {
                limit: Some(30000),
                remaining: None,
                reset_in: None
            }
        );
        assert_eq!(
            r.dims[2],
            DimHeaders {
                limit: None,
                remaining: Some(8000),
                reset_in: Some(0.0)
            }
        );
        assert_eq!(
            rate_limit_headers(&headers(&[]), NOW),
            RateLimitHeaders::default()
        );
    }

    #[test]
    fn origin_names_who_answered() {
        let api = origin(&headers(&[
            ("request-id", "req_1"),
            ("anthropic-organization-id", " org-123 "),
            ("anthropic-workspace-id", "wrkspc_9"),
        ]));
        assert_eq!(
            api,
            Origin {
                organization_id: Some("org-123".into()),
                workspace_id: Some("wrkspc_9".into()),
                request_id: Some("req_1".into()),
                anthropic: true,
            }
        );

        // A 429 from a gateway: none of the API's marks.
        let gateway = origin(&headers(&[("retry-after", "3"), ("x-gateway", "g")]));
        assert_eq!(gateway, Origin::default());
        assert!(!gateway.anthropic);

        // Any anthropic-* header is a mark; request-id alone is one too.
        assert!(origin(&headers(&[("anthropic-ratelimit-requests-limit", "5")])).anthropic);
        assert!(origin(&headers(&[("request-id", "req_2")])).anthropic);

        let long = "o".repeat(201);
        let odd = origin(&headers(&[
            ("anthropic-organization-id", "   "),
            ("anthropic-workspace-id", &long),
        ]));
        assert_eq!(odd.organization_id, None, "empty");
        assert_eq!(odd.workspace_id, None, "over 200 characters");
        assert!(odd.anthropic);
        let just = "w".repeat(200);
        assert_eq!(
            origin(&headers(&[("anthropic-workspace-id", &just)])).workspace_id,
            Some(just)
        );
    }

    #[test]
    fn a_garbled_200_is_an_unknown_outcome() {
        assert!(matches!(
            classify(200, &headers(&[]), b"{\"ty", NOW),
            Outcome::Unknown { .. }
        ));
    }

    #[test]
    fn retry_after_forms() {
        let at = |pairs: &[(&'static str, &str)]| parse_retry_after(&headers(pairs), NOW);
        assert_eq!(at(&[("retry-after", "3")]), Some(Duration::from_secs(3)));
        assert_eq!(
            at(&[("retry-after", "0.5")]),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            at(&[("retry-after-ms", "250"), ("retry-after", "9")]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(at(&[("retry-after", "-1")]), None);
        assert_eq!(at(&[("retry-after", "soon")]), None);
        assert_eq!(at(&[("retry-after", "1e300")]), None);
        assert_eq!(at(&[("retry-after", "NaN")]), None);
        assert_eq!(
            parse_retry_after(
                &headers(&[("retry-after", "Thu, 01 Jan 1970 00:00:10 GMT")]),
                NOW
            ),
            Some(Duration::from_secs(10))
        );
    }
}
