//! The official Python SDK's `MessageBatchIndividualResponse` (anthropic 2.17.0,
//! `anthropic/types/messages/message_batch_individual_response.py` and the types it names),
//! mirrored in serde: the fields it requires, with their types, and its discriminated unions with
//! the tags it knows. Extra fields are allowed, as the SDK's models allow them. Every test that
//! reads a results file checks its lines with [`assert_sdk_readable`]; `.ci/run` also validates
//! the demo's results with the SDK itself (`.ci/sdk_check.py`), so the mirror cannot drift
//! unnoticed.

use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[allow(dead_code)] // read by serde: what the SDK requires
struct IndividualResponse {
    custom_id: String,
    result: BatchResult,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(dead_code)]
enum BatchResult {
    Succeeded { message: Message },
    Errored { error: ErrorResponse },
    Canceled {},
    Expired {},
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Message {
    id: String,
    content: Vec<ContentBlock>,
    model: String,
    role: Assistant,
    stop_reason: Option<StopReason>,
    stop_sequence: Option<String>,
    #[serde(rename = "type")]
    kind: MessageType,
    usage: Usage,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Assistant {
    Assistant,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum MessageType {
    Message,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum StopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
    PauseTurn,
    Refusal,
    ModelContextWindowExceeded,
}

/// The blocks nightshift's answers can hold (the SDK knows more kinds; an answer of those would
/// fail here, not in the SDK: the mirror errs strict).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(dead_code)]
enum ContentBlock {
    Text {
        text: String,
    },
    Thinking {
        thinking: String,
        signature: String,
    },
    RedactedThinking {
        data: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Map<String, Value>,
    },
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Usage {
    input_tokens: i64,
    output_tokens: i64,
    cache_creation_input_tokens: Option<i64>,
    cache_read_input_tokens: Option<i64>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct ErrorResponse {
    error: ErrorObject,
    request_id: Option<String>,
    #[serde(rename = "type")]
    kind: ErrorType,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ErrorType {
    Error,
}

/// `ErrorObject`: a union over these `type`s, each with a `message`.
#[derive(Deserialize)]
#[allow(clippy::enum_variant_names)] // the SDK's tags
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(dead_code)]
enum ErrorObject {
    InvalidRequestError { message: String },
    AuthenticationError { message: String },
    BillingError { message: String },
    PermissionError { message: String },
    NotFoundError { message: String },
    RateLimitError { message: String },
    TimeoutError { message: String },
    ApiError { message: String },
    OverloadedError { message: String },
}

/// Panics naming each results line the SDK's type would refuse.
pub fn assert_sdk_readable(lines: &[Value]) {
    let refused: Vec<String> = lines
        .iter()
        .filter_map(|line| {
            serde_json::from_value::<IndividualResponse>(line.clone())
                .err()
                .map(|e| format!("{e}: {line}"))
        })
        .collect();
    assert!(
        refused.is_empty(),
        "{} of {} results lines are not MessageBatchIndividualResponse:\n{}",
        refused.len(),
        lines.len(),
        refused.join("\n")
    );
}

#[test]
fn the_mirror_refuses_what_the_sdk_refuses() {
    let ok = serde_json::json!({"custom_id": "a", "result": {"type": "expired"}});
    assert_sdk_readable(&[ok]);
    for bad in [
        serde_json::json!({"custom_id": null, "result": {"type": "expired"}}),
        serde_json::json!({"custom_id": "a", "result": {"type": "errored", "error": {"type": "error", "error": {"type": "budget_exceeded_error", "message": "x"}}}}),
        serde_json::json!({"custom_id": "a", "result": {"type": "succeeded", "message": {"id": "m", "content": [], "model": "x", "role": "assistant", "stop_reason": "end_turn", "stop_sequence": null, "type": "message", "usage": {"input_tokens": 1}}}}),
    ] {
        assert!(
            serde_json::from_value::<IndividualResponse>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}
