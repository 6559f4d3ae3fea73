//! The fake's answers: the API's error shapes and JSON replies with its headers.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::Value;

use super::batches::BatchError;
use super::orgs::spend_cap_resumes_at;

/// What every handler answers.
pub(super) type Reply = Response<Full<Bytes>>;

/// An error answer, turned into a [`Reply`] once the request id is known.
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) kind: &'static str,
    pub(super) message: String,
    pub(super) headers: Vec<(&'static str, String)>,
    /// `error.details.error_code`, when the error has one.
    pub(super) error_code: Option<&'static str>,
    /// Given by a gateway in front of the API, not by the API: see [`gateway_reply`].
    pub(super) from_gateway: bool,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        kind: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            headers: Vec::new(),
            error_code: None,
            from_gateway: false,
        }
    }

    pub(super) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub(super) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    pub(super) fn rate_limited(message: impl Into<String>, retry_after: u64) -> ApiError {
        let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message);
        error.headers.push(("retry-after", retry_after.to_string()));
        error
    }

    /// The tier's spend cap (fact sheet §2.3): a 429 `rate_limit_error` with
    /// `error.details.error_code = "enforced_spend_limit_reached"` and no `retry-after`, as
    /// retrying cannot succeed before the 1st of next month.
    pub(super) fn spend_cap(wall_now: jiff::Timestamp) -> ApiError {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "Your organization has reached its monthly spend limit. Access resumes at 00:00 UTC on {}.",
                spend_cap_resumes_at(wall_now)
            ),
        );
        error.error_code = Some("enforced_spend_limit_reached");
        error
    }

    /// A gateway's 429 (see [`gateway_reply`]).
    pub(super) fn gateway_quota() -> ApiError {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "gateway",
            "gateway: tenant request quota exceeded",
        );
        error.from_gateway = true;
        error
    }

    /// The answer: the API's error shape with `request_id`, or a gateway's answer.
    pub(super) fn into_reply(self, request_id: &str) -> Reply {
        if self.from_gateway {
            return gateway_reply(self.status, &self.message);
        }
        let mut error = serde_json::json!({"type": self.kind, "message": self.message});
        if let Some(code) = self.error_code {
            error["details"] = serde_json::json!({ "error_code": code });
        }
        let body = serde_json::json!({
            "type": "error",
            "error": error,
            "request_id": request_id,
        });
        reply(
            self.status,
            request_id,
            "application/json",
            Bytes::from(body.to_string()),
            &self.headers,
        )
    }
}

impl From<BatchError> for ApiError {
    fn from(error: BatchError) -> ApiError {
        match error {
            BatchError::NotFound(message) => ApiError::not_found(message),
            BatchError::Invalid(message) => ApiError::invalid(message),
        }
    }
}

/// An answer of the API, with its `request-id` and `extra_headers` (the organization's headers
/// are added by [`stamp_org`] once the answer is made).
pub(super) fn reply(
    status: StatusCode,
    request_id: &str,
    content_type: &'static str,
    body: Bytes,
    extra_headers: &[(&'static str, String)],
) -> Reply {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    insert_header(headers, "request-id", request_id);
    for (name, value) in extra_headers {
        insert_header(headers, name, value);
    }
    response
}

/// Adds `anthropic-organization-id: org_id` and `anthropic-workspace-id: workspace_id` to an
/// answer of the API (never to a gateway's: it has no `request-id`).
pub(super) fn stamp_org(reply: &mut Reply, org_id: &str, workspace_id: &str) {
    let headers = reply.headers_mut();
    if headers.contains_key("request-id") {
        insert_header(headers, "anthropic-organization-id", org_id);
        insert_header(headers, "anthropic-workspace-id", workspace_id);
    }
}

/// What a gateway in front of the API answers when it refuses a request itself: a body not in
/// the API's error shape, `retry-after: 1` on a 429, and none of the API's headers
/// (`request-id`, `anthropic-*`).
pub(super) fn gateway_reply(status: StatusCode, message: &str) -> Reply {
    let body = serde_json::json!({"error": {"message": message}});
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::TOO_MANY_REQUESTS {
        insert_header(headers, "retry-after", "1");
    }
    response
}

/// `name` must be a lowercase static header name.
pub(super) fn insert_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// A JSON answer of the API.
pub(super) fn json_reply(status: StatusCode, request_id: &str, body: &Value) -> Reply {
    reply(
        status,
        request_id,
        "application/json",
        Bytes::from(body.to_string()),
        &[],
    )
}
