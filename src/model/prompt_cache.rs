//! The cached prefix a request asks for, as nightshift reckons it before sending: the prompt in
//! the cache's order (each tool, the system prompt, each message's content blocks) up to its last
//! `cache_control` breakpoint. Requests with the same prefix share one cache entry at the API, so
//! the prefix is named by a hash of what it holds (its `cache_control` marks left out, so a
//! prefix marked in one request is the same as in one that marks a later block).

use std::collections::HashMap;

use serde_json::Value;

use super::line::ValidLine;

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
pub const ONE_HOUR_MS: u64 = 60 * 60 * 1000;

/// The mark [`add_breakpoint`] writes for 5 minutes, and for an hour.
const MARK_5M: &str = r#""cache_control":{"type":"ephemeral"}"#;
const MARK_1H: &str = r#""cache_control":{"type":"ephemeral","ttl":"1h"}"#;

/// The blocks of a request in the cache's order, each with its kind (what the hash mixes in).
fn blocks(params: &Value) -> Vec<(&'static str, &Value)> {
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
    blocks
}

/// After each block: the hash of the prefix up to it and its size in bytes of JSON (the
/// blocks' `cache_control` marks left out).
fn prefix_ends(blocks: &[(&'static str, &Value)]) -> Vec<(u64, u64)> {
    let (mut hash, mut bytes) = (FNV_OFFSET, 0u64);
    blocks
        .iter()
        .map(|(kind, block)| {
            let json = match block.get("cache_control") {
                Some(_) => {
                    let mut bare = (*block).clone();
                    if let Some(object) = bare.as_object_mut() {
                        object.remove("cache_control");
                    }
                    bare.to_string()
                }
                None => block.to_string(),
            };
            bytes += json.len() as u64;
            hash = fnv(fnv(hash, kind.as_bytes()), json.as_bytes());
            (hash, bytes)
        })
        .collect()
}

/// The prefix of a request body (`params` as written), or None when it marks none. The top-level
/// form (`cache_control` beside `messages`) marks the last block, so the whole prompt.
pub fn prefix(params: &str) -> Option<CachePrefix> {
    if !params.contains("\"cache_control\"") {
        return None; // the common case, without parsing
    }
    prefix_of(&serde_json::from_str(params).ok()?)
}

/// [`prefix`] of a body already parsed.
fn prefix_of(params: &Value) -> Option<CachePrefix> {
    let blocks = blocks(params);
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
    let (hash, bytes) = prefix_ends(&blocks[..=end])[end];
    Some(CachePrefix {
        key: hash as i64,
        tokens: bytes.div_ceil(4),
        ttl_ms,
    })
}

/// After each block of a request: the hash of the prefix up to it (and the model: caches are per
/// model), its bytes, and whether the block may carry a breakpoint.
pub type PrefixEnds = Vec<(u64, u64, bool)>;

/// Whether the API takes `cache_control` on a block: not on thinking blocks, nor on an empty
/// text (which it refuses anyway, marked or not).
fn markable(block: &Value) -> bool {
    match block {
        Value::String(text) => !text.is_empty(),
        Value::Object(object) => match object.get("type").and_then(Value::as_str) {
            Some("thinking" | "redacted_thinking") | None => false,
            Some("text") => object
                .get("text")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty()),
            Some(_) => true,
        },
        _ => false,
    }
}

/// `cache = "auto"`: the prefixes a request of `model` could share, after each block, for
/// [`choose_marks`]. None for a request that marks the cache itself (left as written), one too
/// short to hold a prefix of `min_tokens`, or one that cannot be read.
pub fn candidate_ends(params: &str, model: &str, min_tokens: u64) -> Option<PrefixEnds> {
    if (params.len() as u64) < min_tokens * 4 || params.contains("\"cache_control\"") {
        return None; // too short to cache anything, or marked already: without parsing
    }
    let params: Value = serde_json::from_str(params).ok()?;
    let blocks = blocks(&params);
    Some(
        prefix_ends(&blocks)
            .into_iter()
            .zip(&blocks)
            .map(|((hash, bytes), (_, block))| {
                (fnv(hash, model.as_bytes()), bytes, markable(block))
            })
            .collect(),
    )
}

/// What [`choose_marks`] remembers of a prefix marked in earlier chunks of a job: how many
/// requests marked it, and how many of those were known to share it with enough others for a
/// 1-hour mark ([`ONE_HOUR_MARK_MIN_SHARERS`]; the rest go unmarked in a batch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    pub marked: u32,
    pub hour_marked: u32,
}

/// For each request of a job (its [`candidate_ends`], with its model's minimum cacheable size
/// in tokens), the block to mark and how many requests would share an hour's entry of the
/// prefix up to it: the last block of the longest prefix it shares with another request of the
/// job on the same model, when that prefix is at least the minimum (a token per four bytes) and
/// its last block may carry a breakpoint. The sharers are the chunk's requests holding the
/// prefix and the earlier chunks' requests that marked it for an hour (those marked by fewer
/// go unmarked in a batch, so they write nothing a later request could read). `known` carries
/// the prefixes marked in earlier chunks, so a request shares with those too.
pub fn choose_marks(
    requests: &[Option<(PrefixEnds, u64)>],
    known: &mut HashMap<u64, Known>,
) -> Vec<Option<(usize, u32)>> {
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for (ends, _) in requests.iter().flatten() {
        for (hash, ..) in ends {
            *seen.entry(*hash).or_default() += 1;
        }
    }
    let marks: Vec<Option<(usize, u32)>> = requests
        .iter()
        .map(|request| {
            let (ends, min_tokens) = request.as_ref()?;
            let shared = |hash: &u64| {
                let here = seen.get(hash).copied().unwrap_or(0);
                let before = known.get(hash).copied().unwrap_or_default();
                (here >= 2 || before.marked > 0).then_some(here + before.hour_marked)
            };
            ends.iter()
                .enumerate()
                .rev()
                .find_map(|(block, (hash, bytes, markable))| {
                    if !*markable || bytes.div_ceil(4) < *min_tokens {
                        return None;
                    }
                    Some((block, shared(hash)?))
                })
        })
        .collect();
    for (request, mark) in requests.iter().zip(&marks) {
        if let (Some((ends, _)), Some((block, sharers))) = (request, mark) {
            let entry = known.entry(ends[*block].0).or_default();
            entry.marked += 1;
            entry.hour_marked += u32::from(*sharers >= ONE_HOUR_MARK_MIN_SHARERS);
        }
    }
    marks
}

/// Fewest requests sharing a prefix for a 1-hour mark to pay: it is written at 2× the input
/// price and read at 0.1× (less on some models), so n requests cost 2 + 0.1·(n − 1) input-prices
/// against n uncached: two requests pay more cached (2.1 against 2), three pay less. A 5-minute
/// mark (1.25×) pays from two.
pub const ONE_HOUR_MARK_MIN_SHARERS: u32 = 3;

/// `cache = "auto"` over one job's requests, chunk by chunk, in file order: it remembers the
/// prefixes found shared so far, which later chunks' requests share too.
#[derive(Debug, Default)]
pub struct AutoMarker {
    known: HashMap<u64, Known>,
}

impl AutoMarker {
    /// Puts a breakpoint, for 5 minutes, on each line of a chunk that shares a long enough prefix
    /// with another of the job's requests ([`choose_marks`]); [`for_batches`] makes it an hour
    /// once the line's lane is known. A line whose prefix only one other request is known to
    /// share keeps its body as written beside (`unmarked`), for the batch lane.
    pub fn mark(&mut self, lines: &mut [&mut ValidLine]) {
        let requests: Vec<_> = lines
            .iter()
            .map(|v| {
                let min = crate::model::catalog::min_cacheable_tokens(&v.model);
                candidate_ends(&v.params, &v.model, min).map(|ends| (ends, min))
            })
            .collect();
        let marks = choose_marks(&requests, &mut self.known);
        for (line, mark) in lines.iter_mut().zip(marks) {
            let Some((block, sharers)) = mark else {
                continue;
            };
            if let Some((params, prefix)) = add_breakpoint(&line.params, block, false) {
                let as_written = std::mem::replace(&mut line.params, params);
                line.unmarked = (sharers < ONE_HOUR_MARK_MIN_SHARERS).then_some(as_written);
                line.cache = Some(prefix);
                line.cache_added = true;
            }
        }
    }
}

/// A breakpoint `cache = "auto"` added, for the batch lane: made an hour long (a batch can take
/// longer than 5 minutes to reach every request, and the docs recommend the hour; the prefix
/// keeps its key, which leaves the mark out), or taken away when too few requests share the
/// prefix for an hour's write to pay ([`ONE_HOUR_MARK_MIN_SHARERS`]).
pub fn for_batches(line: &mut ValidLine) {
    if !line.cache_added {
        return;
    }
    if let Some(as_written) = line.unmarked.take() {
        line.params = as_written;
        line.cache = None;
        line.cache_added = false;
    } else if let Some(params) = to_one_hour(&line.params) {
        line.params = params;
        if let Some(cache) = &mut line.cache {
            cache.ttl_ms = ONE_HOUR_MS;
        }
    }
}

/// A body [`add_breakpoint`] marked for 5 minutes, marked for an hour instead (a string
/// replacement: the body had no other `cache_control`). None if it holds no such mark.
pub fn to_one_hour(params: &str) -> Option<String> {
    params
        .contains(MARK_5M)
        .then(|| params.replacen(MARK_5M, MARK_1H, 1))
}

/// The request with a `cache_control` breakpoint on block `block` (in [`blocks`] order), for an
/// hour or 5 minutes, and the prefix it now marks; a string system prompt or message content
/// becomes one text block to carry it. None if the body cannot be read or has no such block.
pub fn add_breakpoint(params: &str, block: usize, one_hour: bool) -> Option<(String, CachePrefix)> {
    let mut params: Value = serde_json::from_str(params).ok()?;
    let mut control = serde_json::json!({"type": "ephemeral"});
    if one_hour {
        control["ttl"] = "1h".into();
    }
    let mut left = block;
    // Each place a block can be, in order: a list of blocks, or one string to turn into a block.
    // `counted`: a value that is neither is a block of its own (message content), or none.
    let mark = |slot: &mut Value, left: &mut usize, counted: bool| -> Option<bool> {
        match slot {
            Value::Array(items) => {
                if *left < items.len() {
                    items[*left]
                        .as_object_mut()?
                        .insert("cache_control".into(), control.clone());
                    return Some(true);
                }
                *left -= items.len();
                Some(false)
            }
            Value::String(text) if *left == 0 => {
                *slot =
                    serde_json::json!([{"type": "text", "text": text, "cache_control": control}]);
                Some(true)
            }
            Value::String(_) => {
                *left -= 1;
                Some(false)
            }
            _ if counted && *left == 0 => None,
            _ => {
                *left -= usize::from(counted);
                Some(false)
            }
        }
    };
    let object = params.as_object_mut()?;
    let mut found = false;
    for key in ["tools", "system"] {
        if let Some(slot) = object.get_mut(key)
            && !found
        {
            found = mark(slot, &mut left, false)?;
        }
    }
    for message in object.get_mut("messages")?.as_array_mut()? {
        if let Some(slot) = message.get_mut("content")
            && !found
        {
            found = mark(slot, &mut left, true)?;
        }
    }
    if !found {
        return None;
    }
    Some((serde_json::to_string(&params).ok()?, prefix_of(&params)?))
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

    fn plain(system: &str, question: &str) -> String {
        serde_json::json!({
            "model": "claude-sonnet-5-5", "max_tokens": 5, "system": system,
            "messages": [{"role": "user", "content": question}]
        })
        .to_string()
    }

    #[test]
    fn auto_marks_the_longest_prefix_two_requests_share_when_it_is_long_enough() {
        let rubric = "rubric ".repeat(1_000); // ~1,750 tokens
        let requests: Vec<String> = vec![
            plain(&rubric, "first?"),
            plain(&rubric, "second?"),
            plain("short", "third?"),
            plain("short", "fourth?"),
            plain(&"lonely ".repeat(1_000), "fifth?"),
        ];
        let ends: Vec<_> = requests
            .iter()
            .map(|r| candidate_ends(r, "claude-sonnet-5-5", 1_024).map(|e| (e, 1_024)))
            .collect();
        assert!(ends[2].is_none(), "too short to hold a cacheable prefix");
        let mut known = HashMap::new();
        let marks = choose_marks(&ends, &mut known);
        // The rubric (block 0) is shared by the first two; the fifth shares nothing.
        assert_eq!(marks, vec![Some((0, 2)), Some((0, 2)), None, None, None]);
        // A later chunk's request with the same rubric is marked by what was found before.
        let later = vec![
            candidate_ends(&plain(&rubric, "sixth?"), "claude-sonnet-5-5", 1_024)
                .map(|e| (e, 1_024)),
        ];
        assert_eq!(
            choose_marks(&later, &mut known),
            vec![Some((0, 1))],
            "marked, but the first two go unmarked in a batch: an hour's entry would be its own"
        );
        // The mark: the string system prompt becomes a block that carries it.
        let (marked, p) = add_breakpoint(&requests[0], 0, true).expect("marked");
        let value: Value = serde_json::from_str(&marked).expect("json");
        assert_eq!(value["system"][0]["text"], rubric.as_str());
        assert_eq!(value["system"][0]["cache_control"]["ttl"], "1h");
        let (five, _) = add_breakpoint(&requests[0], 0, false).expect("marked");
        assert_eq!(to_one_hour(&five).as_deref(), Some(marked.as_str()));
        assert_eq!(
            value["messages"],
            serde_json::from_str::<Value>(&requests[0]).expect("json")["messages"]
        );
        // The prefix it returns is the one the marked body names.
        assert_eq!(prefix(&marked), Some(p));
        assert_eq!(p.ttl_ms, 3_600_000);
        let (_, other) = add_breakpoint(&requests[1], 0, false).expect("marked");
        assert_eq!(p.key, other.key);
        // Requests that mark the cache themselves are left to themselves.
        assert_eq!(candidate_ends(&marked, "claude-sonnet-5-5", 1_024), None);
        // The same rubric on another model shares nothing with it (caches are per model).
        let other_model = requests[0].replace("claude-sonnet-5-5", "claude-opus-5-5");
        let pair = vec![
            candidate_ends(&requests[0], "claude-sonnet-5-5", 1_024).map(|e| (e, 1_024)),
            candidate_ends(&other_model, "claude-opus-5-5", 1_024).map(|e| (e, 1_024)),
        ];
        assert_eq!(choose_marks(&pair, &mut HashMap::new()), vec![None, None]);
        // A shared thinking block is not marked: the mark goes on the shared block before it.
        let thinking = |question: &str| {
            serde_json::json!({
                "model": "claude-sonnet-5-5", "max_tokens": 5, "system": rubric,
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]},
                    {"role": "user", "content": question}
                ]
            })
            .to_string()
        };
        let turns = vec![
            candidate_ends(&thinking("a?"), "claude-sonnet-5-5", 1_024).map(|e| (e, 1_024)),
            candidate_ends(&thinking("b?"), "claude-sonnet-5-5", 1_024).map(|e| (e, 1_024)),
        ];
        assert_eq!(
            choose_marks(&turns, &mut HashMap::new()),
            vec![Some((1, 2)), Some((1, 2))]
        );
        // A message block can carry it too: block 1 is the first message's content.
        let (in_message, _) = add_breakpoint(&requests[0], 1, false).expect("marked");
        let value: Value = serde_json::from_str(&in_message).expect("json");
        assert_eq!(
            value["messages"][0]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
        assert_eq!(add_breakpoint(&requests[0], 2, false), None);
    }

    fn valid(custom_id: &str, params: &str) -> ValidLine {
        let line = format!(r#"{{"custom_id":"{custom_id}","params":{params}}}"#);
        let defaults = crate::model::job::JobDefaults::default();
        match crate::model::line::parse_line(
            line.as_bytes(),
            1,
            &crate::model::line::LineContext::test(&defaults, 1_796_212_800_000),
        ) {
            crate::model::line::ParsedLine::Valid(v) => v,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_prefix_two_requests_share_is_marked_for_real_time_but_not_for_an_hour_in_a_batch() {
        let rubric = "rubric ".repeat(1_000);
        let (one, two) = (plain(&rubric, "first?"), plain(&rubric, "second?"));
        let mut pair = [valid("a", &one), valid("b", &two)];
        let mut marker = AutoMarker::default();
        marker.mark(&mut pair.iter_mut().collect::<Vec<_>>());
        assert!(pair.iter().all(|v| v.cache_added && v.cache.is_some()));
        assert_eq!(pair[0].cache.map(|c| c.ttl_ms), Some(300_000));
        // In real time the 5-minute mark stays; in a batch the line goes as written.
        let mut batch = pair[1].clone();
        for_batches(&mut batch);
        assert_eq!(batch.params, two);
        assert_eq!((batch.cache, batch.cache_added), (None, false));
        // A third request sharing it, in a later chunk: the first two wrote nothing in a batch,
        // so its hour's write would be read by none: it goes as written there too.
        let mut third = [valid("c", &plain(&rubric, "third?"))];
        marker.mark(&mut third.iter_mut().collect::<Vec<_>>());
        assert!(third[0].cache_added && third[0].unmarked.is_some());
        // Three in one chunk: every one gets the hour in a batch, and so does a later one.
        let policy = "policy ".repeat(1_000);
        let mut many: Vec<ValidLine> = (0..3)
            .map(|i| valid(&format!("m{i}"), &plain(&policy, &format!("{i}?"))))
            .collect();
        marker.mark(&mut many.iter_mut().collect::<Vec<_>>());
        let mut later = [valid("m3", &plain(&policy, "3?"))];
        marker.mark(&mut later.iter_mut().collect::<Vec<_>>());
        for mut v in many.into_iter().chain(later) {
            assert_eq!(v.unmarked, None);
            for_batches(&mut v);
            assert!(v.params.contains(MARK_1H) && v.cache_added, "{}", v.params);
            assert_eq!(v.cache.map(|c| c.ttl_ms), Some(ONE_HOUR_MS));
        }
    }
}
