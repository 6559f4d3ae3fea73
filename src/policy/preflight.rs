//! The preflight of a batch: the API validates a batch's requests only once the batch has ended
//! (hours later), but its free `count_tokens` endpoint answers the same 400s and 404s for a
//! request's shape at once. So before a batch is created, one request per distinct shape (the
//! model, tools, system and every other top-level field; everything but the conversation and
//! `max_tokens`) is counted, and the requests of a shape the API refuses are errored in seconds.
//! Pure: the lane makes the calls.

use std::collections::HashMap;

/// Shapes counted before one batch is created, at most; the rest go unchecked (the API still
/// validates them, when the batch ends). Jobs whose every request has its own system prompt
/// would otherwise cost a call per request.
pub const MAX_SHAPES_PER_BATCH: usize = 32;

/// The fields of a request that are not its shape: the conversation and the output size, which
/// differ per request, and fields `count_tokens` does not take or check.
const NOT_SHAPE: [&str; 3] = ["messages", "max_tokens", "metadata"];

/// A request's shape key: the sha256 (hex) of its body without [`NOT_SHAPE`], as written. None
/// for a body that is not a JSON object (intake lets none through).
pub fn shape_key(params: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(params).ok()?;
    for field in NOT_SHAPE {
        map.remove(field);
    }
    let digest = Sha256::digest(serde_json::to_string(&map).ok()?.as_bytes());
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// Shapes remembered at most; past that the memory starts afresh (they are counted again).
pub const MAX_SHAPES_KNOWN: usize = 10_000;

/// What the API said of a shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeVerdict {
    Accepted,
    /// Refused: every request of this shape would be (the API's status, error type and message).
    Refused {
        status: u16,
        kind: String,
        message: String,
    },
}

/// What a 4xx answer to a count means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The API refuses the request: its error type and message.
    Refused { kind: String, message: String },
    /// Not the API's judgement of a request (a gateway without the endpoint, an HTML page, a 404
    /// that names no model): the preflight cannot be trusted here and is switched off.
    NotTheApi,
}

/// Reads a 400/404/422 answer to `count_tokens`: the API's own refusals are JSON errors of type
/// `invalid_request_error`, or `not_found_error` naming the model.
pub fn refusal(status: u16, body: &serde_json::Value) -> Refusal {
    let (Some(kind), Some(message)) = (
        body["error"]["type"].as_str(),
        body["error"]["message"].as_str(),
    ) else {
        return Refusal::NotTheApi;
    };
    let api_refusal = match (status, kind) {
        (400 | 422, "invalid_request_error") => true,
        (404, "not_found_error") => message.contains("model"),
        _ => false,
    };
    if !api_refusal {
        return Refusal::NotTheApi;
    }
    Refusal::Refused {
        kind: kind.to_owned(),
        message: message.to_owned(),
    }
}

/// The request with its conversation replaced by one short user turn: counting it tells a shape
/// the API refuses from one request whose own conversation it refuses (too many cache
/// breakpoints in it, a tool result without its tool use, …).
pub fn minimal_conversation(params: &str) -> Option<String> {
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(params).ok()?;
    map.insert(
        "messages".into(),
        serde_json::json!([{"role": "user", "content": "."}]),
    );
    serde_json::to_string(&map).ok()
}

/// What to count to tell whether a refusal of `params` (answered `message`) is its shape's: the
/// same request with one short turn for its conversation; None when the message names the
/// request's own `messages` (then it is that request's alone).
pub fn shape_probe(params: &str, message: &str) -> Option<String> {
    match blame(message) {
        Blame::Request => None,
        Blame::Shape => minimal_conversation(params),
    }
}

/// Whose fault a refusal of the counted request is: its shape (the field named is not in the
/// conversation; every request of the shape would meet it), or the one request counted (the
/// message names its `messages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Shape,
    Request,
}

pub fn blame(message: &str) -> Blame {
    if message.trim_start().starts_with("messages") {
        Blame::Request
    } else {
        Blame::Shape
    }
}

/// The shapes of a batch's requests, each with the index of the request to count for it (its
/// first), in order of first appearance, at most [`MAX_SHAPES_PER_BATCH`] not yet `known`.
pub fn shapes_to_check<'a>(
    keys: &'a [Option<String>],
    known: &HashMap<String, ShapeVerdict>,
) -> Vec<(&'a str, usize)> {
    let mut seen: HashMap<&str, ()> = HashMap::new();
    let mut out = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let Some(key) = key.as_deref() else { continue };
        if known.contains_key(key) || seen.insert(key, ()).is_some() {
            continue;
        }
        out.push((key, i));
        if out.len() == MAX_SHAPES_PER_BATCH {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_is_everything_but_the_conversation_and_the_output_size() {
        let a = shape_key(
            r#"{"model":"m","max_tokens":5,"system":"s","messages":[{"role":"user","content":"1"}]}"#,
        );
        let b = shape_key(
            r#"{"model":"m","max_tokens":9,"system":"s","messages":[{"role":"user","content":"2"}],"metadata":{"user_id":"u"}}"#,
        );
        let c = shape_key(r#"{"model":"m","max_tokens":5,"system":"t","messages":[]}"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(shape_key("[1]"), None);
    }

    #[test]
    fn each_unknown_shape_is_counted_once_by_its_first_request() {
        let keys: Vec<Option<String>> = ["x", "y", "x", "z", "y"]
            .iter()
            .map(|k| Some((*k).to_owned()))
            .collect();
        let mut known = HashMap::new();
        known.insert("z".to_owned(), ShapeVerdict::Accepted);
        assert_eq!(shapes_to_check(&keys, &known), vec![("x", 0), ("y", 1)]);
    }

    #[test]
    fn only_the_apis_own_refusals_count() {
        let body = |kind: &str, message: &str| serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
        assert!(matches!(
            refusal(404, &body("not_found_error", "model: claude-x")),
            Refusal::Refused { .. }
        ));
        assert!(matches!(
            refusal(400, &body("invalid_request_error", "system.0.type: …")),
            Refusal::Refused { .. }
        ));
        assert_eq!(
            refusal(404, &body("not_found_error", "Not Found")),
            Refusal::NotTheApi,
            "no such endpoint"
        );
        assert_eq!(
            refusal(404, &serde_json::json!("<html>")),
            Refusal::NotTheApi
        );
        assert_eq!(
            refusal(400, &body("billing_error", "x")),
            Refusal::NotTheApi
        );
    }

    #[test]
    fn the_probe_keeps_the_shape_and_drops_the_conversation() {
        let probe = minimal_conversation(
            r#"{"model":"m","system":"s","messages":[{"role":"user","content":"long"}]}"#,
        )
        .expect("object");
        assert_eq!(
            shape_key(&probe),
            shape_key(r#"{"model":"m","system":"s","messages":[]}"#)
        );
        assert!(probe.contains(r#""content":".""#));
    }

    #[test]
    fn a_refusal_naming_the_conversation_blames_the_request() {
        assert_eq!(blame("messages.0.content: Field required"), Blame::Request);
        assert_eq!(blame("tool_choice.type: forced tool use"), Blame::Shape);
        assert_eq!(blame("model: claude-x"), Blame::Shape);
    }
}
