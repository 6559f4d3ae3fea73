//! The results format: one line per request, as the Message Batches API writes its results
//! (`{"custom_id": ..., "result": {"type": "succeeded" | "errored" | "canceled" | "expired", ...}}`),
//! so the official SDKs read nightshift's results files as they read a batch's.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// `{"custom_id": ..., "result": {"type": "succeeded", "message": ...}}`; `message` is raw JSON
/// (made compact first if it spans lines, as a proxy's pretty-printing would).
pub fn succeeded_line(custom_id: &str, message_json: &str) -> String {
    let message = message_json.trim();
    let compact;
    let message = if message.contains('\n') {
        compact = serde_json::from_str::<Value>(message)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| message.replace(['\n', '\r'], " "));
        compact.as_str()
    } else {
        message
    };
    format!(
        "{{\"custom_id\":{},\"result\":{{\"type\":\"succeeded\",\"message\":{}}}}}",
        Value::String(custom_id.to_owned()),
        message
    )
}

/// `{"custom_id": ..., "result": {"type": "canceled"}}`.
pub fn canceled_line(custom_id: Option<&str>) -> String {
    json!({"custom_id": custom_id, "result": {"type": "canceled"}}).to_string()
}

/// `{"custom_id": ..., "result": {"type": "expired"}}`.
pub fn expired_line(custom_id: Option<&str>) -> String {
    json!({"custom_id": custom_id, "result": {"type": "expired"}}).to_string()
}

/// An `errored` line carrying the API's own error body (`{"type":"error","error":{...},...}`).
pub fn api_errored_line(custom_id: Option<&str>, error_body: &Value) -> String {
    json!({"custom_id": custom_id, "result": {"type": "errored", "error": error_body}}).to_string()
}

/// An `errored` line for an error nightshift found itself (invalid input, attempts exhausted).
/// `details` says more for programs (file, line, field).
pub fn errored_line(
    custom_id: Option<&str>,
    error_type: &str,
    message: &str,
    details: Option<Value>,
) -> String {
    let mut inner = json!({"type": error_type, "message": message});
    if let Some(details) = details {
        inner["details"] = details;
    }
    api_errored_line(custom_id, &json!({"type": "error", "error": inner}))
}

/// The `custom_id` of the result line of a file line whose own cannot be used (unreadable, or a
/// repeat of an earlier line's): `nightshift:line:N`. The colon is outside the characters a
/// custom_id may hold (`A-Z a-z 0-9 _ -`), so it never collides with one of the job's, and every
/// line carries a string `custom_id`, as the SDKs' result types require.
pub fn line_custom_id(line_no: u64) -> String {
    format!("{LINE_ID_PREFIX}{line_no}")
}

/// See [`line_custom_id`].
pub const LINE_ID_PREFIX: &str = "nightshift:line:";

pub fn results_path(results_dir: &Path, job_name: &str) -> PathBuf {
    results_dir.join(format!("{job_name}.jsonl"))
}

/// One line of a batch's results as the API wrote it, read only as far as routing it needs: whose
/// it is, and its `result` still as raw JSON.
#[derive(Debug, serde::Deserialize)]
pub struct BatchResultLine<'a> {
    pub custom_id: String,
    #[serde(borrow)]
    pub result: &'a serde_json::value::RawValue,
}

impl<'a> BatchResultLine<'a> {
    /// None: not a result line at all.
    pub fn read(line: &'a str) -> Option<BatchResultLine<'a>> {
        serde_json::from_str(line).ok()
    }
}

/// The head of a `result`: its type, the usage of a succeeded message, the error body of an
/// errored one.
#[derive(Debug, serde::Deserialize)]
pub struct ResultHead {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub message: Option<MessageUsage>,
    #[serde(default)]
    pub error: Option<Value>,
}

impl ResultHead {
    /// None: the result cannot be read.
    pub fn read(result: &serde_json::value::RawValue) -> Option<ResultHead> {
        serde_json::from_str(result.get()).ok()
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct MessageUsage {
    pub usage: crate::model::answer::Usage,
}

/// A result line on one line: a line that spans several (a proxy's pretty-printing) is made
/// compact, so a results file keeps one line per result.
pub fn compact_line(line: &str) -> String {
    if line.contains('\n') {
        serde_json::from_str::<Value>(line)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| line.replace('\n', " "))
    } else {
        line.trim().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_batch_results_shape() {
        let line = succeeded_line("a-1", r#"{"id":"msg_1","type":"message"}"#);
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["custom_id"], "a-1");
        assert_eq!(v["result"]["type"], "succeeded");
        assert_eq!(v["result"]["message"]["id"], "msg_1");

        let line = errored_line(
            None,
            "invalid_request_error",
            "x.jsonl line 3: bad",
            Some(json!({"line": 3})),
        );
        let v: Value = serde_json::from_str(&line).expect("json");
        assert!(v["custom_id"].is_null());
        assert_eq!(v["result"]["type"], "errored");
        assert_eq!(v["result"]["error"]["type"], "error");
        assert_eq!(
            v["result"]["error"]["error"]["type"],
            "invalid_request_error"
        );
        assert_eq!(v["result"]["error"]["error"]["details"]["line"], 3);
    }
}
