//! List prices of Claude models, USD per million tokens, as published on the pricing page
//! (`../shared/anthropic-api.md` §7, read 2026-10). Batches cost half. Cache writes are priced at
//! the 5-minute rate (1.25× input); cache reads at the model's own rate (0.1× input, but 0.025× on
//! Fable 5.1 and 0.05× on Opus 5.5 and Sonnet 5.5).

/// Prices of one model, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_write: f64,
    pub cache_read: f64,
}

/// The date the table was read.
pub const PRICES_AS_OF: &str = "2026-10-24";

/// The Message Batches API's discount on all usage.
pub const BATCH_FACTOR: f64 = 0.5;

/// The list price of a model (dated ids such as `claude-haiku-4-5-20251001` included), or None
/// when the model is not in the table: never silently zero.
pub fn price(model: &str) -> Option<Price> {
    let base = strip_date(model);
    let (input, output) = match base {
        "claude-fable-5-1" => (10.0, 50.0),
        "claude-opus-5-5" => (4.0, 20.0),
        "claude-opus-5" | "claude-opus-4-8" | "claude-opus-4-7" | "claude-opus-4-6"
        | "claude-opus-4-5" => (5.0, 25.0),
        "claude-sonnet-5-5" | "claude-sonnet-5" => (2.0, 10.0),
        "claude-sonnet-4-6" | "claude-sonnet-4-5" => (3.0, 15.0),
        // Prompts up to 100K tokens; longer ones cost 5x (not modelled here).
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
        cache_read: input * read_factor,
    })
}

/// The cost of a call's usage in millionths of a dollar (exact sums in the ledger); `batch` halves
/// it. None when the model is not in the table.
pub fn cost_micro_usd(model: &str, usage: &crate::api::Usage, batch: bool) -> Option<i64> {
    let p = price(model)?;
    // Prices are per million tokens, so tokens × price is already in millionths of a dollar.
    let full = usage.input_tokens as f64 * p.input
        + usage.output_tokens as f64 * p.output
        + usage.cache_creation_input_tokens.unwrap_or(0) as f64 * p.cache_write
        + usage.cache_read_input_tokens.unwrap_or(0) as f64 * p.cache_read;
    let factor = if batch { BATCH_FACTOR } else { 1.0 };
    Some((full * factor).round() as i64)
}

fn strip_date(model: &str) -> &str {
    match model.rsplit_once('-') {
        Some((base, date)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => model,
    }
}

/// The cost of a call in USD; `batch` halves it.
pub fn cost(model: &str, input_tokens: u64, output_tokens: u64, batch: bool) -> Option<f64> {
    let p = price(model)?;
    let full = (input_tokens as f64 * p.input + output_tokens as f64 * p.output) / 1_000_000.0;
    Some(if batch { full * BATCH_FACTOR } else { full })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_models_are_priced_and_batches_cost_half() {
        assert_eq!(cost("claude-sonnet-4-5", 1_000_000, 0, false), Some(3.0));
        assert_eq!(
            cost("claude-sonnet-4-5-20250929", 0, 1_000_000, true),
            Some(7.5)
        );
        assert_eq!(
            cost("claude-haiku-5-5", 2_000_000, 1_000_000, false),
            Some(0.7)
        );
    }

    #[test]
    fn cache_tokens_are_priced_and_sums_are_in_millionths() {
        let usage = crate::api::Usage {
            input_tokens: 1_000,
            output_tokens: 100,
            cache_creation_input_tokens: Some(2_000),
            cache_read_input_tokens: Some(10_000),
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
    }

    #[test]
    fn unknown_models_are_not_priced_at_zero() {
        assert_eq!(price("claude-unknown-9"), None);
        assert_eq!(cost("gpt-4", 10, 10, false), None);
    }
}
