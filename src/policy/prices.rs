//! List prices of Claude models, USD per million tokens, as published on the pricing page
//! (`../shared/anthropic-api.md` §7, read 2026-10). Batches cost half. Cache writes are priced by
//! their lifetime, as `usage.cache_creation` splits them: 5 minutes at 1.25× input, an hour at 2×
//! (writes the split does not cover at the 5-minute rate); cache reads at the model's own rate
//! (0.1× input, but 0.025× on Fable 5.1 and 0.05× on Opus 5.5 and Sonnet 5.5).

use std::collections::BTreeMap;

use crate::model::answer::Usage;

/// Prices of one model, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// A 5-minute cache write.
    pub cache_write: f64,
    /// A 1-hour cache write.
    pub cache_write_1h: f64,
    pub cache_read: f64,
    /// A request whose prompt (input, cache write and cache read tokens) is above this many
    /// tokens costs this factor on every token (Haiku 5.5 over 100K: 5×).
    pub long_prompt: Option<(u64, f64)>,
}

impl Price {
    /// `full` (millionths of a dollar at the base rates) for a request with `prompt` tokens of
    /// prompt, in its lane.
    fn charge(&self, prompt: u64, full: f64, batch: bool) -> i64 {
        let long = match self.long_prompt {
            Some((above, factor)) if prompt > above => factor,
            _ => 1.0,
        };
        let lane = if batch { BATCH_FACTOR } else { 1.0 };
        (full * long * lane).round() as i64
    }
}

/// The date the table was read.
pub const PRICES_AS_OF: &str = "2026-10-24";

/// The Message Batches API's discount on all usage.
pub const BATCH_FACTOR: f64 = 0.5;

/// The prices in force: the built-in list, overridden or extended per model by the config's
/// `[prices."model"]` tables. A model in neither has no price: its calls are flagged in the ledger,
/// never counted as free.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    overrides: BTreeMap<String, Price>,
}

impl PriceTable {
    pub fn new(overrides: BTreeMap<String, Price>) -> PriceTable {
        PriceTable { overrides }
    }

    /// The price of `model`: an override for the exact id, then for the id without its date, then
    /// the list price.
    pub fn price(&self, model: &str) -> Option<Price> {
        self.overrides
            .get(model)
            .or_else(|| self.overrides.get(strip_date(model)))
            .copied()
            .or_else(|| list_price(model))
    }

    /// The cost of a call's usage in millionths of a dollar (exact sums in the ledger); `batch`
    /// halves it. None when the model has no price.
    pub fn cost_micro_usd(&self, model: &str, usage: &Usage, batch: bool) -> Option<i64> {
        let p = self.price(model)?;
        let (write_5m, write_1h) = usage.cache_writes();
        let read = usage.cache_read_input_tokens.unwrap_or(0);
        // Prices are per million tokens, so tokens × price is already in millionths of a dollar.
        let full = usage.input_tokens as f64 * p.input
            + usage.output_tokens as f64 * p.output
            + write_5m as f64 * p.cache_write
            + write_1h as f64 * p.cache_write_1h
            + read as f64 * p.cache_read;
        Some(p.charge(usage.input_tokens + write_5m + write_1h + read, full, batch))
    }

    /// What the prompt cache saved on a call, in millionths of a dollar: its cost had every token
    /// it wrote to or read from the cache been plain input, less its cost. Negative when a write
    /// cost more than the reads saved. None when the model has no price.
    pub fn cache_saved_micro_usd(&self, model: &str, usage: &Usage, batch: bool) -> Option<i64> {
        let uncached = Usage {
            input_tokens: usage.input_tokens
                + usage.cache_creation_input_tokens.unwrap_or(0)
                + usage.cache_read_input_tokens.unwrap_or(0),
            output_tokens: usage.output_tokens,
            ..Default::default()
        };
        Some(
            self.cost_micro_usd(model, &uncached, batch)?
                - self.cost_micro_usd(model, usage, batch)?,
        )
    }

    /// The most a request can cost, in millionths of a dollar: its input (priced as a 1-hour cache
    /// write, 2× input, when it asks for caching: the dearest case) and all of its `max_tokens`.
    pub fn worst_case_micro_usd(
        &self,
        model: &str,
        input_tokens: u64,
        max_tokens: u64,
        caches: bool,
        batch: bool,
    ) -> Option<i64> {
        let p = self.price(model)?;
        let input_price = if caches {
            p.cache_write.max(p.cache_write_1h)
        } else {
            p.input
        };
        let full = input_tokens as f64 * input_price + max_tokens as f64 * p.output;
        Some(p.charge(input_tokens, full, batch))
    }

    /// The cost of a call in USD; `batch` halves it.
    pub fn cost(
        &self,
        model: &str,
        input_tokens: u64,
        output_tokens: u64,
        batch: bool,
    ) -> Option<f64> {
        let usage = Usage {
            input_tokens,
            output_tokens,
            ..Default::default()
        };
        Some(self.cost_micro_usd(model, &usage, batch)? as f64 / 1e6)
    }
}

/// "$1.2345", "-$0.0100": dollars to four places, as every view prints them.
pub fn format_usd(usd: f64) -> String {
    if usd < 0.0 {
        format!("-${:.4}", -usd)
    } else {
        format!("${usd:.4}")
    }
}

/// The prompt cache's hit rate: the share of cache tokens read rather than written (None when the
/// cache was not used).
pub fn cache_hit_ratio(read_tokens: i64, written_tokens: i64) -> Option<f64> {
    let all = read_tokens + written_tokens;
    (all > 0).then(|| read_tokens as f64 / all as f64)
}

/// The list price of a model (dated ids such as `claude-haiku-4-5-20251001` included), or None
/// when the model is not in the table.
pub fn list_price(model: &str) -> Option<Price> {
    let base = strip_date(model);
    let (input, output) = match base {
        "claude-fable-5-1" => (10.0, 50.0),
        "claude-opus-5-5" => (4.0, 20.0),
        "claude-opus-5" | "claude-opus-4-8" | "claude-opus-4-7" | "claude-opus-4-6"
        | "claude-opus-4-5" => (5.0, 25.0),
        "claude-sonnet-5-5" | "claude-sonnet-5" => (2.0, 10.0),
        "claude-sonnet-4-6" | "claude-sonnet-4-5" => (3.0, 15.0),
        // Prompts over 100K tokens cost 5x on every token (`long_prompt` below).
        "claude-haiku-5-5" => (0.10, 0.50),
        "claude-haiku-4-5" => (1.0, 5.0),
        _ => return None,
    };
    let read_factor = match base {
        "claude-fable-5-1" => 0.025,
        "claude-opus-5-5" | "claude-sonnet-5-5" => 0.05,
        _ => 0.1,
    };
    Some(Price {
        input,
        output,
        cache_write: input * 1.25,
        cache_write_1h: input * 2.0,
        cache_read: input * read_factor,
        long_prompt: (base == "claude-haiku-5-5").then_some((100_000, 5.0)),
    })
}

fn strip_date(model: &str) -> &str {
    match model.rsplit_once('-') {
        Some((base, date)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => model,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(model: &str, input: u64, output: u64, batch: bool) -> Option<f64> {
        PriceTable::default().cost(model, input, output, batch)
    }

    fn cost_micro_usd(model: &str, usage: &Usage, batch: bool) -> Option<i64> {
        PriceTable::default().cost_micro_usd(model, usage, batch)
    }

    #[test]
    fn known_models_are_priced_and_batches_cost_half() {
        assert_eq!(cost("claude-sonnet-4-5", 1_000_000, 0, false), Some(3.0));
        assert_eq!(
            cost("claude-sonnet-4-5-20250929", 0, 1_000_000, true),
            Some(7.5)
        );
        assert_eq!(
            cost("claude-haiku-5-5", 2_000_000, 1_000_000, false),
            Some(3.5),
            "a prompt over 100K tokens costs 5x"
        );
    }

    #[test]
    fn cache_tokens_are_priced_and_sums_are_in_millionths() {
        let usage = crate::model::answer::Usage {
            input_tokens: 1_000,
            output_tokens: 100,
            cache_creation_input_tokens: Some(2_000),
            cache_read_input_tokens: Some(10_000),
            cache_creation: None,
        };
        // Sonnet 4.5: 3 in, 15 out, 3.75 write, 0.30 read per MTok.
        assert_eq!(
            cost_micro_usd("claude-sonnet-4-5", &usage, false),
            Some(3_000 + 1_500 + 7_500 + 3_000)
        );
        assert_eq!(
            cost_micro_usd("claude-sonnet-4-5", &usage, true),
            Some(7_500)
        );
        assert_eq!(cost_micro_usd("claude-mystery-1", &usage, false), None);
        // Split by lifetime: 1,500 of the writes for an hour (6 per MTok), 500 for 5 minutes.
        let split = crate::model::answer::Usage {
            cache_creation: Some(crate::model::answer::CacheCreation {
                ephemeral_5m_input_tokens: 500,
                ephemeral_1h_input_tokens: 1_500,
            }),
            ..usage
        };
        assert_eq!(split.cache_writes(), (500, 1_500));
        assert_eq!(
            cost_micro_usd("claude-sonnet-4-5", &split, false),
            Some(3_000 + 1_500 + 1_875 + 9_000 + 3_000)
        );
        // Opus 5.5 reads at 0.05x: 10,000 × 0.20 = 2,000.
        assert_eq!(
            cost_micro_usd("claude-opus-5-5", &split, false),
            Some(4_000 + 2_000 + 2_500 + 12_000 + 2_000)
        );
        // Saved: the 12,000 cache tokens as plain input (36,000) against what they cost
        // (1,875 + 9,000 + 3,000); halved in a batch.
        let saved = |u: &Usage, batch| {
            PriceTable::default().cache_saved_micro_usd("claude-sonnet-4-5", u, batch)
        };
        assert_eq!(saved(&split, false), Some(36_000 - 13_875));
        assert_eq!(
            saved(&split, true),
            Some(20_250 - 9_188),
            "each side rounded"
        );
        // A write no read repays costs more than it saves.
        let write_only = Usage {
            input_tokens: 10,
            cache_creation_input_tokens: Some(1_000),
            ..Default::default()
        };
        assert_eq!(saved(&write_only, false), Some(3_030 - 3_780));
        assert_eq!(saved(&Usage::default(), false), Some(0));
        assert_eq!(
            PriceTable::default().cache_saved_micro_usd("claude-mystery-1", &split, false),
            None
        );
    }

    #[test]
    fn unknown_models_are_not_priced_at_zero() {
        assert_eq!(list_price("claude-unknown-9"), None);
        assert_eq!(cost("gpt-4", 10, 10, false), None);
    }

    #[test]
    fn long_haiku_5_5_prompts_cost_five_times_on_every_token() {
        // 100,000 input tokens: base rates ($0.10 / $0.50 per MTok).
        assert_eq!(
            cost("claude-haiku-5-5", 100_000, 1_000, false),
            Some(0.0105)
        );
        // One token more: 5x on everything.
        let long = cost("claude-haiku-5-5", 100_001, 1_000, false).expect("priced");
        assert_eq!(long, 0.052501, "52,500.5 millionths, rounded");
        // Cache reads count toward the prompt's length.
        let usage = Usage {
            input_tokens: 50_000,
            cache_read_input_tokens: Some(60_000),
            ..Default::default()
        };
        assert_eq!(
            cost_micro_usd("claude-haiku-5-5", &usage, false),
            Some(((50_000.0 * 0.10 + 60_000.0 * 0.01) * 5.0_f64).round() as i64)
        );
    }

    #[test]
    fn config_prices_override_and_extend_the_list() {
        let custom = Price {
            input: 1.0,
            output: 2.0,
            cache_write: 1.25,
            cache_write_1h: 2.0,
            cache_read: 0.1,
            long_prompt: None,
        };
        let table = PriceTable::new(BTreeMap::from([
            ("claude-sonnet-4-5".to_owned(), custom),
            ("claude-house-1".to_owned(), custom),
        ]));
        // The override covers dated ids of the model too.
        assert_eq!(table.price("claude-sonnet-4-5-20250929"), Some(custom));
        assert_eq!(table.cost("claude-house-1", 1_000_000, 0, false), Some(1.0));
        assert_eq!(
            table.price("claude-haiku-4-5"),
            list_price("claude-haiku-4-5")
        );
        assert_eq!(table.price("claude-other-2"), None);
    }

    #[test]
    fn worst_case_counts_all_max_tokens_and_caching_input_at_the_write_price() {
        let table = PriceTable::default();
        // Sonnet 4.5: 1,000 input × 3 + 500 output × 15 = 10,500 millionths.
        assert_eq!(
            table.worst_case_micro_usd("claude-sonnet-4-5", 1_000, 500, false, false),
            Some(10_500)
        );
        assert_eq!(
            table.worst_case_micro_usd("claude-sonnet-4-5", 1_000, 500, true, false),
            Some(6_000 + 7_500),
            "a 1-hour cache write costs 2x input"
        );
        assert_eq!(
            table.worst_case_micro_usd("claude-sonnet-4-5", 1_000, 500, false, true),
            Some(5_250)
        );
    }
}
