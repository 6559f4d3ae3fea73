//! The Messages endpoint's pure parts: model ids, request validation, token counting and
//! the generated answer.

use serde_json::{Value, json};

use super::cache::{self, CacheUsage, Layout};

/// Model ids the fake serves (fact sheet §0; `claude-sonnet-4-5` retired on 2026-11-30, §11),
/// each with its rate-limit class.
///
/// Opus 4.x models share one bucket, Sonnet 4.x models share one; every other model has its
/// own bucket (its class is its own id).
const MODELS: &[(&str, &str)] = &[
    ("claude-fable-5-2", "claude-fable-5-2"),
    ("claude-mythos-5-2", "claude-mythos-5-2"),
    ("claude-haiku-5-5", "claude-haiku-5-5"),
    ("claude-sonnet-5-5", "claude-sonnet-5-5"),
    ("claude-fable-5-1", "claude-fable-5-1"),
    ("claude-opus-5-5", "claude-opus-5-5"),
    ("claude-mythos-5-1", "claude-mythos-5-1"),
    ("claude-sonnet-5", "claude-sonnet-5"),
    ("claude-fable-5", "claude-fable-5"),
    ("claude-mythos-5", "claude-mythos-5"),
    ("claude-opus-5", "claude-opus-5"),
    ("claude-opus-4-8", "claude-opus-4.x"),
    ("claude-opus-4-7", "claude-opus-4.x"),
    ("claude-opus-4-6", "claude-opus-4.x"),
    ("claude-opus-4-5", "claude-opus-4.x"),
    ("claude-sonnet-4-6", "claude-sonnet-4.x"),
    ("claude-haiku-4-5", "claude-haiku-4-5"),
];

/// The rate-limit class of a model id (dated forms like `claude-opus-4-8-20260101` included),
/// or `None` when the model is unknown or retired.
pub fn model_class(model: &str) -> Option<&'static str> {
    let base = strip_date_suffix(model);
    MODELS
        .iter()
        .find(|(id, _)| *id == base)
        .map(|(_, class)| *class)
}

/// `claude-x-1-20260101` -> `claude-x-1`; anything else unchanged.
pub(crate) fn strip_date_suffix(model: &str) -> &str {
    match model.rsplit_once('-') {
        Some((base, date)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => model,
    }
}

/// The API versions the fake accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApiVersion {
    V2023_06_01,
    V2026_10_21,
}

impl ApiVersion {
    pub(crate) fn parse(value: &str) -> Option<ApiVersion> {
        match value {
            "2023-06-01" => Some(ApiVersion::V2023_06_01),
            "2026-10-21" => Some(ApiVersion::V2026_10_21),
            _ => None,
        }
    }
}

/// Why a Messages body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ParamsError {
    /// 400 `invalid_request_error`.
    Invalid(String),
    /// 404 `not_found_error` (unknown or retired model).
    UnknownModel(String),
}

impl ParamsError {
    pub(crate) fn status_and_type(&self) -> (u16, &'static str) {
        match self {
            ParamsError::Invalid(_) => (400, "invalid_request_error"),
            ParamsError::UnknownModel(_) => (404, "not_found_error"),
        }
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            ParamsError::Invalid(m) | ParamsError::UnknownModel(m) => m,
        }
    }
}

/// What the fake needs from a valid Messages body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ValidParams {
    pub model: String,
    pub class: &'static str,
    pub max_tokens: u64,
    /// The prompt as the cache sees it; `layout.total` is its input tokens.
    pub layout: Layout,
}

fn invalid(message: impl Into<String>) -> ParamsError {
    ParamsError::Invalid(message.into())
}

/// Checks a Messages body the way the real API does (field-named messages).
pub(crate) fn validate_params(
    params: &Value,
    version: ApiVersion,
) -> Result<ValidParams, ParamsError> {
    let Some(object) = params.as_object() else {
        return Err(invalid("Input should be a valid dictionary"));
    };
    let model = match object.get("model") {
        None => return Err(invalid("model: Field required")),
        Some(Value::String(model)) => model.clone(),
        Some(_) => return Err(invalid("model: Input should be a valid string")),
    };
    let max_tokens = match object.get("max_tokens") {
        None => return Err(invalid("max_tokens: Field required")),
        Some(value) => match value.as_i64() {
            None => return Err(invalid("max_tokens: Input should be a valid integer")),
            Some(n) if n < 1 => {
                return Err(invalid(
                    "max_tokens: Input should be greater than or equal to 1",
                ));
            }
            Some(n) => n as u64,
        },
    };
    validate_messages(object.get("messages"))?;
    validate_system(object.get("system"))?;
    if version == ApiVersion::V2026_10_21 {
        for field in ["temperature", "top_p", "top_k"] {
            if object.contains_key(field) {
                return Err(invalid(format!(
                    "{field}: Extra inputs are not permitted on anthropic-version 2026-10-21"
                )));
            }
        }
    }
    if object.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(invalid("stream: the built-in fake does not stream"));
    }
    let Some(class) = model_class(&model) else {
        return Err(ParamsError::UnknownModel(format!("model: {model}")));
    };
    model_rules(&model, object)?;
    let layout = cache::layout(params).map_err(ParamsError::Invalid)?;
    Ok(ValidParams {
        model,
        class,
        max_tokens,
        layout,
    })
}

/// Checks a `count_tokens` body: the Messages input fields only (no `max_tokens`, sampling or
/// metadata). Returns the count the Messages endpoint would bill.
pub(crate) fn validate_count_params(params: &Value) -> Result<u64, ParamsError> {
    const TAKEN: [&str; 9] = [
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "cache_control",
        "mcp_servers",
    ];
    let Some(object) = params.as_object() else {
        return Err(invalid("Input should be a valid dictionary"));
    };
    if let Some(extra) = object.keys().find(|k| !TAKEN.contains(&k.as_str())) {
        return Err(invalid(format!("{extra}: Extra inputs are not permitted")));
    }
    let model = match object.get("model") {
        None => return Err(invalid("model: Field required")),
        Some(Value::String(model)) => model,
        Some(_) => return Err(invalid("model: Input should be a valid string")),
    };
    validate_messages(object.get("messages"))?;
    validate_system(object.get("system"))?;
    if model_class(model).is_none() {
        return Err(ParamsError::UnknownModel(format!("model: {model}")));
    }
    model_rules(model, object)?;
    Ok(cache::layout(params).map_err(ParamsError::Invalid)?.total)
}

/// The request rules that differ per model (fact sheet §11): Opus 5.5 and Fable 5.1 refuse
/// setting thinking; they and Sonnet 5.5 refuse forced tool use.
fn model_rules(model: &str, object: &serde_json::Map<String, Value>) -> Result<(), ParamsError> {
    let base = strip_date_suffix(model);
    let kind = |field: &str| {
        object
            .get(field)
            .and_then(|v| v.get("type"))
            .and_then(Value::as_str)
    };
    let thinking_fixed = ["claude-opus-5-5", "claude-fable-5-1"].contains(&base);
    if thinking_fixed && matches!(kind("thinking"), Some("disabled" | "enabled")) {
        return Err(invalid(format!(
            "thinking.type: {model} does not support setting thinking; omit it"
        )));
    }
    let no_forced = ["claude-opus-5-5", "claude-fable-5-1", "claude-sonnet-5-5"].contains(&base);
    if no_forced && matches!(kind("tool_choice"), Some("any" | "tool")) {
        return Err(invalid(format!(
            "tool_choice.type: {model} does not support forced tool use"
        )));
    }
    Ok(())
}

fn validate_messages(messages: Option<&Value>) -> Result<(), ParamsError> {
    let messages = match messages {
        None => return Err(invalid("messages: Field required")),
        Some(Value::Array(messages)) => messages,
        Some(_) => return Err(invalid("messages: Input should be a valid list")),
    };
    if messages.is_empty() {
        return Err(invalid(
            "messages: List should have at least 1 item after validation, not 0",
        ));
    }
    for (i, message) in messages.iter().enumerate() {
        let Some(message) = message.as_object() else {
            return Err(invalid(format!(
                "messages.{i}: Input should be a valid dictionary"
            )));
        };
        match message.get("role") {
            None => return Err(invalid(format!("messages.{i}.role: Field required"))),
            Some(Value::String(role)) if role == "user" || role == "assistant" => {}
            Some(_) => {
                return Err(invalid(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                )));
            }
        }
        match message.get("content") {
            None => return Err(invalid(format!("messages.{i}.content: Field required"))),
            Some(Value::String(_)) => {}
            Some(Value::Array(blocks)) => {
                for (j, block) in blocks.iter().enumerate() {
                    if !block.get("type").is_some_and(Value::is_string) {
                        return Err(invalid(format!(
                            "messages.{i}.content.{j}.type: Field required"
                        )));
                    }
                    if empty_text(block) {
                        return Err(invalid(format!(
                            "messages.{i}.content.{j}.text: text content blocks must be non-empty"
                        )));
                    }
                }
            }
            Some(_) => {
                return Err(invalid(format!(
                    "messages.{i}.content: Input should be a valid string or list"
                )));
            }
        }
    }
    Ok(())
}

fn validate_system(system: Option<&Value>) -> Result<(), ParamsError> {
    match system {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(blocks)) => {
            for (j, block) in blocks.iter().enumerate() {
                if block.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(invalid(format!("system.{j}.type: Input should be 'text'")));
                }
                if !block.get("text").is_some_and(Value::is_string) {
                    return Err(invalid(format!("system.{j}.text: Field required")));
                }
                if empty_text(block) {
                    return Err(invalid(format!(
                        "system.{j}.text: text content blocks must be non-empty"
                    )));
                }
            }
            Ok(())
        }
        Some(_) => Err(invalid("system: Input should be a valid string or list")),
    }
}

/// A text block whose text is empty, which the API refuses.
fn empty_text(block: &Value) -> bool {
    block.get("type").and_then(Value::as_str) == Some("text")
        && block.get("text").and_then(Value::as_str) == Some("")
}

/// Deterministic input-token count (what `count_tokens` answers): about 4 characters a token,
/// block by block over the tools, the system prompt and the messages, plus 3 per message and 7
/// per request (see [`cache::layout`]). 0 for a body whose breakpoints the API refuses.
pub fn count_input_tokens(params: &Value) -> u64 {
    cache::layout(params).map_or(0, |layout| layout.total)
}

/// FNV-1a, used to derive deterministic answers from a request.
pub(crate) fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The answer's length and stop reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Generation {
    pub output_tokens: u64,
    pub clipped: bool,
}

/// Between 5 and 300 tokens picked by `hash`, clipped by `max_tokens`.
pub(crate) fn plan_generation(hash: u64, max_tokens: u64) -> Generation {
    let natural = 5 + hash % 296;
    Generation {
        output_tokens: natural.min(max_tokens),
        clipped: natural > max_tokens,
    }
}

const WORDS: &[&str] = &[
    "the", "cat", "sat", "on", "a", "warm", "mat", "while", "night", "shift", "ran", "its", "jobs",
    "and", "every", "queue", "moved", "along", "slowly", "but", "surely", "toward", "dawn", "with",
    "tokens", "to", "spare", "so", "all", "was", "well",
];

/// Plausible text of about 4 characters per token.
pub(crate) fn generate_text(hash: u64, tokens: u64) -> String {
    let target = (tokens * 4) as usize;
    let mut rng = fastrand::Rng::with_seed(hash);
    let mut text = String::with_capacity(target + 8);
    while text.len() + 1 < target {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(WORDS[rng.usize(..WORDS.len())]);
    }
    if !text.is_empty() {
        text.push('.');
    }
    text
}

/// A Messages response object.
pub(crate) fn message_json(
    id: &str,
    model: &str,
    cache: CacheUsage,
    hash: u64,
    generation: Generation,
    service_tier: &str,
) -> Value {
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": generate_text(hash, generation.output_tokens)}],
        "stop_reason": if generation.clipped { "max_tokens" } else { "end_turn" },
        "stop_sequence": null,
        "usage": {
            "input_tokens": cache.uncached,
            "cache_creation_input_tokens": cache.written(),
            "cache_read_input_tokens": cache.read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cache.write_5m,
                "ephemeral_1h_input_tokens": cache.write_1h,
            },
            "output_tokens": generation.output_tokens,
            "service_tier": service_tier,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Value {
        json!({
            "model": "claude-haiku-4-5",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "Hello there!"}]
        })
    }

    #[test]
    fn model_classes() {
        assert_eq!(model_class("claude-opus-4-8"), Some("claude-opus-4.x"));
        assert_eq!(
            model_class("claude-opus-4-5-20251101"),
            Some("claude-opus-4.x")
        );
        assert_eq!(model_class("claude-sonnet-4-6"), Some("claude-sonnet-4.x"));
        assert_eq!(model_class("claude-opus-5"), Some("claude-opus-5"));
        assert_eq!(model_class("claude-3-5-haiku-20241022"), None);
        assert_eq!(model_class("claude-opus-5-2026"), None);
    }

    #[test]
    fn counts_tokens() {
        // "Hello there!" = 12 chars -> 3, + 3 per message + 7.
        assert_eq!(count_input_tokens(&body()), 13);
        let with_system = json!({
            "system": [{"type": "text", "text": "abcd"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "abcde"}]},
                {"role": "assistant", "content": "x"}
            ]
        });
        // Block by block: 4 -> 1, 5 -> 2, 1 -> 1; + 6 + 7.
        assert_eq!(count_input_tokens(&with_system), 17);
    }

    #[test]
    fn validation_names_fields() {
        let v = ApiVersion::V2023_06_01;
        let mut b = body();
        b.as_object_mut().expect("object").remove("max_tokens");
        assert_eq!(
            validate_params(&b, v),
            Err(ParamsError::Invalid("max_tokens: Field required".into()))
        );
        let mut b = body();
        b["messages"][0]["role"] = json!("system");
        assert_eq!(
            validate_params(&b, v),
            Err(ParamsError::Invalid(
                "messages.0.role: Input should be 'user' or 'assistant'".into()
            ))
        );
        let mut b = body();
        b["temperature"] = json!(0.5);
        assert!(validate_params(&b, v).is_ok());
        assert!(matches!(
            validate_params(&b, ApiVersion::V2026_10_21),
            Err(ParamsError::Invalid(m)) if m.starts_with("temperature:")
        ));
        let mut b = body();
        b["model"] = json!("claude-2");
        assert_eq!(
            validate_params(&b, v),
            Err(ParamsError::UnknownModel("model: claude-2".into()))
        );
        let ok = validate_params(&body(), v).expect("valid");
        assert_eq!(ok.class, "claude-haiku-4-5");
        assert_eq!(ok.layout.total, 13);
        let mut b = body();
        b["messages"][0]["content"] = json!([{"type": "text", "text": ""}]);
        assert_eq!(
            validate_params(&b, v),
            Err(ParamsError::Invalid(
                "messages.0.content.0.text: text content blocks must be non-empty".into()
            ))
        );
    }

    #[test]
    fn generation_is_bounded() {
        for h in 0..1000u64 {
            let g = plan_generation(hash_bytes(1, &h.to_le_bytes()), 100);
            assert!((5..=100).contains(&g.output_tokens));
            assert_eq!(g.clipped, g.output_tokens == 100 && g.clipped);
        }
        let g = plan_generation(0, 3);
        assert_eq!(g.output_tokens, 3);
        assert!(g.clipped);
        let text = generate_text(7, 50);
        assert!((190..=205).contains(&text.len()), "{}", text.len());
    }
}
