//! The cached prefix a request asks for, as nightshift reckons it before sending: the prompt in
//! the cache's order (each tool, the system prompt, each message's content blocks) up to its last
//! `cache_control` breakpoint. Requests with the same prefix share one cache entry at the API, so
//! the prefix is named by a hash of what it holds (its `cache_control` marks left out, so a
//! prefix marked in one request is the same as in one that marks a later block).

use serde_json::Value;

/// The prefix a request marks for the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePrefix {
    /// A hash of the prefix's blocks (stable across runs: FNV-1a of their JSON).
    pub key: i64,
    /// Its size in the units of the input estimate (a token per four bytes).
    pub tokens: u64,
    /// How long the API keeps it from its last use: 5 minutes, or an hour (`"ttl": "1h"`).
    pub ttl_ms: u64,
}

const FIVE_MINUTES_MS: u64 = 5 * 60 * 1000;
const ONE_HOUR_MS: u64 = 60 * 60 * 1000;

/// The prefix of a request body (`params` as written), or None when it marks none. The top-level
/// form (`cache_control` beside `messages`) marks the last block, so the whole prompt.
pub fn prefix(params: &str) -> Option<CachePrefix> {
    if !params.contains("\"cache_control\"") {
        return None; // the common case, without parsing
    }
    let params: Value = serde_json::from_str(params).ok()?;
    let mut blocks: Vec<(&'static str, &Value)> = Vec::new();
    if let Some(tools) = params.get("tools").and_then(Value::as_array) {
        blocks.extend(tools.iter().map(|t| ("tool", t)));
    }
    match params.get("system") {
        Some(Value::Array(system)) => blocks.extend(system.iter().map(|b| ("system", b))),
        Some(system @ Value::String(_)) => blocks.push(("system", system)),
        _ => {}
    }
    for message in params
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = match message.get("role").and_then(Value::as_str) {
            Some("assistant") => "assistant",
            _ => "user",
        };
        match message.get("content") {
            Some(Value::Array(content)) => blocks.extend(content.iter().map(|b| (role, b))),
            Some(content) => blocks.push((role, content)),
            None => {}
        }
    }
    let marked = |b: &Value| b.get("cache_control").cloned();
    let (end, control) = match blocks.iter().rposition(|(_, b)| marked(b).is_some()) {
        Some(i) => (i, marked(blocks[i].1)?),
        None => (
            blocks.len().checked_sub(1)?,
            params.get("cache_control")?.clone(),
        ),
    };
    let ttl_ms = match control.get("ttl").and_then(Value::as_str) {
        Some("1h") => ONE_HOUR_MS,
        _ => FIVE_MINUTES_MS,
    };
    let (mut hash, mut bytes) = (FNV_OFFSET, 0u64);
    for (kind, block) in &blocks[..=end] {
        let mut bare = (*block).clone();
        if let Some(object) = bare.as_object_mut() {
            object.remove("cache_control");
        }
        let json = bare.to_string();
        bytes += json.len() as u64;
        hash = fnv(fnv(hash, kind.as_bytes()), json.as_bytes());
    }
    Some(CachePrefix {
        key: hash as i64,
        tokens: bytes.div_ceil(4),
        ttl_ms,
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(question: &str, ttl: &str) -> String {
        format!(
            r#"{{"model":"claude-sonnet-5-5","max_tokens":5,"system":[{{"type":"text","text":"{}","cache_control":{{"type":"ephemeral","ttl":"{ttl}"}}}}],"messages":[{{"role":"user","content":"{question}"}}]}}"#,
            "rubric ".repeat(100)
        )
    }

    #[test]
    fn requests_sharing_a_marked_prefix_share_its_key_whatever_follows() {
        let a = prefix(&body("first?", "1h")).expect("marked");
        let b = prefix(&body("a much longer second question?", "1h")).expect("marked");
        assert_eq!(a.key, b.key);
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.ttl_ms, 3_600_000);
        assert!((170..200).contains(&a.tokens), "{}", a.tokens);
        let five = prefix(&body("first?", "5m")).expect("marked");
        assert_eq!(five.key, a.key, "the mark is not part of the prefix");
        assert_eq!(five.ttl_ms, 300_000);
        let other = prefix(&body("first?", "1h").replace("rubric", "policy")).expect("marked");
        assert_ne!(other.key, a.key);
    }

    #[test]
    fn unmarked_requests_have_none_and_the_top_level_form_takes_the_whole_prompt() {
        let plain = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(prefix(plain), None);
        let auto = r#"{"model":"m","max_tokens":5,"cache_control":{"type":"ephemeral"},"messages":[{"role":"user","content":"hi"}]}"#;
        let whole = prefix(auto).expect("marked");
        assert_eq!(whole.ttl_ms, 300_000);
        assert_eq!(whole.tokens, 1, "\"hi\" is 4 bytes of JSON");
    }
}
