//! The public rate-limit tables per usage tier, as presets for models the config does not list.

use super::class::{ModelLimits, limit_class};

/// Rate-limit tiers from the public tables (`../shared/anthropic-api.md` §2.4–2.5, read
/// 2026-09-01): (rpm, itpm, otpm) for a model under a tier, if the table gives it.
pub const TIER_TABLES_AS_OF: &str = "2026-09-01";

pub fn tier_limits(tier: &str, model: &str) -> Option<ModelLimits> {
    let class = limit_class(model);
    let fable = class.starts_with("claude-fable-5");
    let haiku35 = class.starts_with("claude-3-5-haiku");
    let (rpm, itpm, otpm) = match tier {
        // Current scheme.
        "start" if fable => (1_000, 500_000, 100_000),
        "build" if fable => (2_000, 1_500_000, 300_000),
        "scale" if fable => (4_000, 4_000_000, 800_000),
        "start" if haiku35 => (1_000, 100_000, 20_000),
        "build" if haiku35 => (2_000, 200_000, 40_000),
        "scale" if haiku35 => (4_000, 400_000, 80_000),
        "start" => (1_000, 2_000_000, 400_000),
        "build" => (5_000, 5_000_000, 1_000_000),
        "scale" => (10_000, 10_000_000, 2_000_000),
        // The older scheme (2025), Opus/Sonnet 4.x and by default.
        "tier1" if class == "claude-haiku-4-5" => (50, 50_000, 10_000),
        "tier3" if class == "claude-haiku-4-5" => (2_000, 1_000_000, 200_000),
        "tier4" if class == "claude-haiku-4-5" => (4_000, 4_000_000, 800_000),
        "tier1" => (50, 30_000, 8_000),
        "tier2" => (1_000, 450_000, 90_000),
        "tier3" => (2_000, 800_000, 160_000),
        "tier4" => (4_000, 2_000_000, 400_000),
        _ => return None,
    };
    Some(ModelLimits {
        rpm: Some(rpm),
        itpm: Some(itpm),
        otpm: Some(otpm),
    })
}

/// The tier names [`tier_limits`] knows.
pub const TIERS: [&str; 7] = [
    "start", "build", "scale", "tier1", "tier2", "tier3", "tier4",
];
