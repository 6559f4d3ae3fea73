//! The fake's answers: the API's error shapes and JSON replies with its headers.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::Value;

use super::batches::BatchError;

/// Every answer's `anthropic-organization-id`.
pub(super) const ORGANIZATION_ID: &str = "6d1f2c3a-8b4e-4f5a-9c7d-0e1f2a3b4c5d";

/// What every handler answers.
pub(super) type Reply = Response<Full<Bytes>>;

/// An error answer, turned into a [`Reply`] once the request id is known.
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) kind: &'static str,
    pub(super) message: String,
    pub(super) headers: Vec<(&'static str, String)>,
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

    pub(super) fn into_reply(self, request_id: &str) -> Reply {
        let body = serde_json::json!({
            "type": "error",
            "error": {"type": self.kind, "message": self.message},
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
    headers.insert(
        HeaderName::from_static("anthropic-organization-id"),
        HeaderValue::from_static(ORGANIZATION_ID),
    );
    insert_header(headers, "request-id", request_id);
    for (name, value) in extra_headers {
        insert_header(headers, name, value);
    }
    response
}

/// `name` must be a lowercase static header name.
pub(super) fn insert_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

pub(super) fn json_reply(status: StatusCode, request_id: &str, body: &Value) -> Reply {
    reply(
        status,
        request_id,
        "application/json",
        Bytes::from(body.to_string()),
        &[],
    )
}
