//! Prompt caching as the API documents it (fact sheet §11 and the `usage` fields of §1), pure,
//! time passed in.
//!
//! A request is laid out as blocks in the cache's order — each tool definition, then the system
//! prompt (a string is one block), then each message's content blocks (a string is one) — each
//! block ending a prefix of so many tokens, named by a hash of everything up to it
//! ([`layout`]). `cache_control` on a block, or once at the top level (the automatic form, on the
//! last block), marks a breakpoint: at most 4, and a 1-hour one never after a 5-minute one.
//!
//! [`Cache::serve`] reads the longest prefix cached at a breakpoint or up to 20 blocks before
//! one (the lookback), then writes the prefixes up to the breakpoints past it. A prefix shorter
//! than the model's minimum is neither read nor written, and no error is given. An entry lives
//! 5 minutes or an hour from its last use and is readable only once the response that wrote it
//! has begun: identical requests sent at once all pay the write. Entries are per model, in one
//! cache per organization.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::messages::{hash_bytes, strip_date_suffix};

/// How far before a breakpoint a hit is looked for, in blocks.
pub(crate) const LOOKBACK_BLOCKS: usize = 20;
/// Most breakpoints in one request.
pub(crate) const MAX_BREAKPOINTS: usize = 4;

/// The two lifetimes an entry may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Ttl {
    FiveMinutes,
    OneHour,
}

impl Ttl {
    pub(crate) fn duration(self) -> Duration {
        match self {
            Ttl::FiveMinutes => Duration::from_secs(5 * 60),
            Ttl::OneHour => Duration::from_secs(60 * 60),
        }
    }
}

/// A breakpoint: the prefix up to and including block `block` is to be cached for `ttl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Breakpoint {
    pub block: usize,
    pub ttl: Ttl,
}

/// A request as the cache sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// For each block, the prompt's tokens up to and including it, and the hash of that prefix.
    pub ends: Vec<(u64, u64)>,
    pub breakpoints: Vec<Breakpoint>,
    /// The whole prompt's tokens (what `count_tokens` answers).
    pub total: u64,
}

/// Tokens every request carries, and each message.
const REQUEST_OVERHEAD: u64 = 7;
const MESSAGE_OVERHEAD: u64 = 3;

/// Lays out a request (a body that passed validation, or a `count_tokens` body). Tokens are about
/// 4 characters each, block by block: a text block's text, any other block's JSON (without its
/// `cache_control`); plus 3 per message and 7 per request. Err: the 400's message for breakpoints
/// the API refuses.
pub(crate) fn layout(params: &Value) -> Result<Layout, String> {
    let mut walk = Walk {
        layout: Layout::default(),
        tokens: REQUEST_OVERHEAD,
        hash: hash_bytes(0, b"prompt"),
    };
    if let Some(tools) = params.get("tools").and_then(Value::as_array) {
        for tool in tools {
            walk.block(b"tool", tool, false)?;
        }
    }
    match params.get("system") {
        Some(Value::String(text)) => walk.text(b"system", text),
        Some(Value::Array(blocks)) => {
            for block in blocks {
                walk.block(b"system", block, true)?;
            }
        }
        _ => {}
    }
    if let Some(messages) = params.get("messages").and_then(Value::as_array) {
        for message in messages {
            walk.tokens += MESSAGE_OVERHEAD;
            let role = match message.get("role").and_then(Value::as_str) {
                Some("assistant") => &b"assistant"[..],
                _ => &b"user"[..],
            };
            walk.hash = hash_bytes(walk.hash, role);
            match message.get("content") {
                Some(Value::String(text)) => walk.text(role, text),
                Some(Value::Array(blocks)) => {
                    for block in blocks {
                        walk.block(role, block, true)?;
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(control) = params.get("cache_control") {
        let ttl = ttl_of(control)?;
        let last = walk.layout.ends.len().checked_sub(1);
        if let Some(block) = last
            && !walk.layout.breakpoints.iter().any(|b| b.block == block)
        {
            walk.layout.breakpoints.push(Breakpoint { block, ttl });
        }
    }
    let mut layout = walk.layout;
    layout.total = walk.tokens;
    let found = layout.breakpoints.len();
    if found > MAX_BREAKPOINTS {
        return Err(format!(
            "A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {found}."
        ));
    }
    if layout
        .breakpoints
        .windows(2)
        .any(|w| w[0].ttl == Ttl::FiveMinutes && w[1].ttl == Ttl::OneHour)
    {
        return Err(
            "cache_control: a ttl='1h' cache_control block must not come after a ttl='5m' one"
                .into(),
        );
    }
    Ok(layout)
}

struct Walk {
    layout: Layout,
    tokens: u64,
    hash: u64,
}

impl Walk {
    fn text(&mut self, kind: &[u8], text: &str) {
        self.end_block(kind, text.as_bytes(), text.chars().count() as u64);
    }

    /// A block: a text block counts its text (`text_blocks`), any other its JSON; what is
    /// hashed leaves `cache_control` out, so that a prefix marked in one request is the same
    /// prefix in another that marks a later block.
    fn block(&mut self, kind: &[u8], block: &Value, text_blocks: bool) -> Result<(), String> {
        let control = block.get("cache_control");
        let mut bare = block.clone();
        if let Some(object) = bare.as_object_mut() {
            object.remove("cache_control");
        }
        let json = bare.to_string();
        let is_text = block.get("type").and_then(Value::as_str) == Some("text");
        let chars = match block.get("text") {
            Some(Value::String(text)) if is_text && text_blocks => text.chars().count() as u64,
            _ => json.len() as u64,
        };
        self.end_block(kind, json.as_bytes(), chars);
        if let Some(control) = control {
            let ttl = ttl_of(control)?;
            let block = self.layout.ends.len() - 1;
            self.layout.breakpoints.push(Breakpoint { block, ttl });
        }
        Ok(())
    }

    fn end_block(&mut self, kind: &[u8], bytes: &[u8], chars: u64) {
        self.tokens += chars.div_ceil(4);
        self.hash = hash_bytes(hash_bytes(self.hash, kind), bytes);
        self.layout.ends.push((self.tokens, self.hash));
    }
}

/// The lifetime a `cache_control` object asks for.
fn ttl_of(control: &Value) -> Result<Ttl, String> {
    if control.get("type").and_then(Value::as_str) != Some("ephemeral") {
        return Err("cache_control.type: Input should be 'ephemeral'".into());
    }
    match control.get("ttl") {
        None => Ok(Ttl::FiveMinutes),
        Some(Value::String(t)) if t == "5m" => Ok(Ttl::FiveMinutes),
        Some(Value::String(t)) if t == "1h" => Ok(Ttl::OneHour),
        Some(_) => Err("cache_control.ttl: Input should be '5m' or '1h'".into()),
    }
}

/// The fewest tokens a prefix must have to be cached, per model (the fact sheet: 1,024 on most
/// models, more on some Haiku and Opus versions; the figures for those are the fake's choice).
pub(crate) fn min_cacheable_tokens(model: &str) -> u64 {
    match strip_date_suffix(model) {
        "claude-haiku-4-5" | "claude-opus-4-5" => 4096,
        "claude-haiku-5-5" => 2048,
        _ => 1024,
    }
}

/// What a request read and wrote, as `usage` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheUsage {
    /// Prompt tokens neither read nor written (`input_tokens`).
    pub uncached: u64,
    pub read: u64,
    pub write_5m: u64,
    pub write_1h: u64,
}

impl CacheUsage {
    pub(crate) fn written(&self) -> u64 {
        self.write_5m + self.write_1h
    }
}

struct Entry {
    ttl: Ttl,
    readable_at: Instant,
    expires_at: Instant,
}

/// The entries of one organization, keyed by model and prefix hash.
#[derive(Default)]
pub(crate) struct Cache {
    entries: HashMap<(String, u64), Entry>,
}

/// What serving a request will read and write, found before it is admitted (a request refused
/// with a 429 changes nothing) and carried out by [`Cache::commit`].
pub(crate) struct Plan {
    pub usage: CacheUsage,
    model: String,
    /// The entry read, refreshed on commit for the longer of its lifetime and that of the
    /// breakpoint that found it.
    read: Option<(u64, Ttl)>,
    /// The prefixes written, each with its lifetime.
    writes: Vec<(u64, Ttl)>,
}

impl Cache {
    /// What a request of `model` laid out as `layout` reads and writes at `now`.
    pub(crate) fn plan(&mut self, model: &str, layout: &Layout, now: Instant) -> Plan {
        let model = strip_date_suffix(model).to_owned();
        let minimum = min_cacheable_tokens(&model);
        let mut plan = Plan {
            usage: CacheUsage {
                uncached: layout.total,
                ..Default::default()
            },
            model,
            read: None,
            writes: Vec::new(),
        };
        let eligible: Vec<Breakpoint> = layout
            .breakpoints
            .iter()
            .copied()
            .filter(|b| layout.ends[b.block].0 >= minimum)
            .collect();
        if eligible.is_empty() {
            return plan;
        }
        self.entries.retain(|_, e| e.expires_at > now);
        // The longest prefix cached and readable, at a breakpoint or in its lookback.
        let mut hit: Option<(usize, Ttl)> = None;
        for b in &eligible {
            let from = b.block.saturating_sub(LOOKBACK_BLOCKS - 1);
            for block in (from..=b.block).rev() {
                if hit.is_some_and(|(h, _)| h >= block) {
                    break;
                }
                let key = (plan.model.clone(), layout.ends[block].1);
                if self.entries.get(&key).is_some_and(|e| e.readable_at <= now) {
                    hit = Some((block, b.ttl));
                    break;
                }
            }
        }
        let hit_block = hit.map(|(block, _)| block);
        let mut covered = 0;
        if let Some((block, ttl)) = hit {
            plan.read = Some((layout.ends[block].1, ttl));
            plan.usage.read = layout.ends[block].0;
            covered = plan.usage.read;
        }
        for b in eligible
            .iter()
            .filter(|b| hit_block.is_none_or(|h| b.block > h))
        {
            let (tokens, hash) = layout.ends[b.block];
            let written = tokens - covered;
            match b.ttl {
                Ttl::FiveMinutes => plan.usage.write_5m += written,
                Ttl::OneHour => plan.usage.write_1h += written,
            }
            covered = tokens;
            plan.writes.push((hash, b.ttl));
        }
        plan.usage.uncached = layout.total - covered;
        plan
    }

    /// Carries out `plan` for a request served at `now` whose response begins at `begins_at`:
    /// the entry read lives on from now, those written are readable from `begins_at`.
    pub(crate) fn commit(&mut self, plan: &Plan, now: Instant, begins_at: Instant) -> CacheUsage {
        if let Some((hash, ttl)) = plan.read
            && let Some(entry) = self.entries.get_mut(&(plan.model.clone(), hash))
        {
            entry.ttl = entry.ttl.max(ttl);
            entry.expires_at = entry.expires_at.max(now + entry.ttl.duration());
        }
        for &(hash, ttl) in &plan.writes {
            let expires_at = begins_at + ttl.duration();
            self.entries
                .entry((plan.model.clone(), hash))
                .and_modify(|e| {
                    e.ttl = e.ttl.max(ttl);
                    e.expires_at = e.expires_at.max(expires_at);
                    e.readable_at = e.readable_at.min(begins_at);
                })
                .or_insert(Entry {
                    ttl,
                    readable_at: begins_at,
                    expires_at,
                });
        }
        plan.usage
    }

    /// [`Cache::plan`] and [`Cache::commit`] at once.
    pub(crate) fn serve(
        &mut self,
        model: &str,
        layout: &Layout,
        now: Instant,
        begins_at: Instant,
    ) -> CacheUsage {
        let plan = self.plan(model, layout, now);
        self.commit(&plan, now, begins_at)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A request whose system prompt is `prefix_chars` characters, marked for the cache.
    fn marked(prefix_chars: usize, ttl: Option<&str>, question: &str) -> Value {
        let mut control = json!({"type": "ephemeral"});
        if let Some(ttl) = ttl {
            control["ttl"] = json!(ttl);
        }
        json!({
            "model": "claude-sonnet-5-5",
            "max_tokens": 10,
            "system": [{"type": "text", "text": "r".repeat(prefix_chars), "cache_control": control}],
            "messages": [{"role": "user", "content": question}]
        })
    }

    fn serve(cache: &mut Cache, params: &Value, now: Instant) -> CacheUsage {
        let layout = layout(params).expect("layout");
        cache.serve("claude-sonnet-5-5", &layout, now, now)
    }

    #[test]
    fn a_marked_prefix_is_written_then_read_and_the_rest_stays_uncached() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        // 7 + 2,000 tokens of system prompt; the question: 3 + 1.
        let first = serve(&mut cache, &marked(8_000, None, "why?"), t0);
        assert_eq!(
            first,
            CacheUsage {
                uncached: 4,
                read: 0,
                write_5m: 2_007,
                write_1h: 0
            }
        );
        let second = serve(&mut cache, &marked(8_000, None, "and how?"), t0);
        assert_eq!(
            (second.read, second.written(), second.uncached),
            (2_007, 0, 5)
        );
        let layout = layout(&marked(8_000, None, "why?")).expect("layout");
        assert_eq!(layout.total, first.uncached + first.written());
    }

    #[test]
    fn identical_requests_sent_at_once_all_write() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        let begins = t0 + Duration::from_millis(800);
        let layout = layout(&marked(8_000, Some("1h"), "q")).expect("layout");
        let a = cache.serve("claude-sonnet-5-5", &layout, t0, begins);
        let b = cache.serve("claude-sonnet-5-5", &layout, t0, begins);
        assert_eq!((a.write_1h, b.write_1h), (2_007, 2_007));
        assert_eq!((a.read, b.read), (0, 0));
        // Once the first response has begun, the entry is read.
        let c = cache.serve("claude-sonnet-5-5", &layout, begins, begins);
        assert_eq!((c.read, c.written()), (2_007, 0));
    }

    #[test]
    fn a_prefix_under_the_models_minimum_is_not_cached() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        // 2,007 tokens: enough on Sonnet 5.5 (1,024), not on Haiku 5.5 (2,048).
        let short = marked(8_000, None, "q");
        let layout_short = layout(&short).expect("layout");
        let on_haiku = cache.serve("claude-haiku-5-5", &layout_short, t0, t0);
        assert_eq!(on_haiku.written(), 0, "2,048 are needed on Haiku 5.5");
        assert_eq!(on_haiku.uncached, layout_short.total);
        let small = marked(100, None, "q");
        assert_eq!(serve(&mut cache, &small, t0).written(), 0);
        assert_eq!(serve(&mut cache, &small, t0).read, 0);
    }

    #[test]
    fn entries_expire_after_their_ttl_unless_read_and_each_read_refreshes() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        let req = marked(8_000, None, "q");
        serve(&mut cache, &req, t0);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(serve(&mut cache, &req, at(299)).read > 0, "alive at 4:59");
        // Refreshed at 4:59: alive until 9:59.
        assert!(serve(&mut cache, &req, at(590)).read > 0);
        assert_eq!(serve(&mut cache, &req, at(590 + 301)).read, 0, "expired");
        let long = marked(8_000, Some("1h"), "q");
        serve(&mut cache, &long, at(1_000));
        assert!(serve(&mut cache, &long, at(1_000 + 3_500)).read > 0);
        assert_eq!(serve(&mut cache, &long, at(1_000 + 3_500 + 3_601)).read, 0);
    }

    #[test]
    fn caches_are_per_model() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        let layout = layout(&marked(8_000, None, "q")).expect("layout");
        cache.serve("claude-sonnet-5-5", &layout, t0, t0);
        assert_eq!(cache.serve("claude-opus-5-5", &layout, t0, t0).read, 0);
        assert!(
            cache
                .serve("claude-sonnet-5-5-20260928", &layout, t0, t0)
                .read
                > 0
        );
    }

    #[test]
    fn five_breakpoints_and_a_1h_after_a_5m_are_refused() {
        let block = |ttl: &str| json!({"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": ttl}});
        let five = json!({"model": "m", "max_tokens": 1, "system": [block("1h"), block("1h"), block("1h"), block("1h"), block("1h")], "messages": []});
        assert_eq!(
            layout(&five).unwrap_err(),
            "A maximum of 4 blocks with cache_control may be provided. Found 5."
        );
        let order = json!({"model": "m", "max_tokens": 1, "system": [block("5m"), block("1h")], "messages": []});
        assert!(layout(&order).unwrap_err().contains("must not come after"));
        let fine = json!({"model": "m", "max_tokens": 1, "system": [block("1h"), block("5m")], "messages": []});
        assert_eq!(layout(&fine).expect("layout").breakpoints.len(), 2);
    }

    #[test]
    fn a_later_breakpoint_reads_what_an_earlier_one_wrote_within_the_lookback() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        let doc = "d".repeat(8_000);
        let conversation = |turns: usize, mark_at: usize| {
            let mut messages = Vec::new();
            for i in 0..turns {
                let mut content = json!([{"type": "text", "text": format!("turn {i}")}]);
                if i == mark_at {
                    content[0]["cache_control"] = json!({"type": "ephemeral"});
                }
                messages.push(json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": content}));
            }
            json!({"model": "claude-sonnet-5-5", "max_tokens": 5, "system": doc, "messages": messages})
        };
        let first = serve(&mut cache, &conversation(3, 2), t0);
        assert!(first.write_5m > 2_000);
        // The same conversation grown by 10 turns, marked at its end: the old mark is 10 blocks
        // back, within the lookback; what lies past it is written.
        let grown = serve(&mut cache, &conversation(13, 12), t0);
        assert_eq!(grown.read, first.write_5m);
        assert!(grown.write_5m > 0);
        // Grown by 30 more, the last mark is out of reach: all of it is written again.
        let far = serve(&mut cache, &conversation(43, 42), t0);
        assert_eq!(far.read, 0);
    }

    #[test]
    fn the_top_level_form_marks_the_last_block_and_tools_count() {
        let tools = json!([{"name": "lookup", "description": "d".repeat(8_000), "input_schema": {"type": "object"}}]);
        let auto = json!({
            "model": "claude-sonnet-5-5", "max_tokens": 5, "cache_control": {"type": "ephemeral"},
            "tools": tools, "messages": [{"role": "user", "content": "hi"}]
        });
        let layout = layout(&auto).expect("layout");
        assert_eq!(
            layout.breakpoints,
            vec![Breakpoint {
                block: 1,
                ttl: Ttl::FiveMinutes
            }]
        );
        assert!(
            layout.total > 1_000,
            "the tool's definition counts: {}",
            layout.total
        );
        let mut cache = Cache::default();
        let t0 = Instant::now();
        let usage = cache.serve("claude-sonnet-5-5", &layout, t0, t0);
        assert_eq!((usage.write_5m, usage.uncached), (layout.total, 0));
    }
}
