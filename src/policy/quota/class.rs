//! Limit classes: which models share one set of limits, and the limits a class starts from.

use serde::Deserialize;

/// Per-model limits, per minute, as the API's rate-limit tables give them. A dimension left out is
/// not paced locally (the API's own 429s and headers still are honoured).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    pub rpm: Option<u64>,
    pub itpm: Option<u64>,
    pub otpm: Option<u64>,
}

/// The limits a class starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClassLimits {
    pub limits: ModelLimits,
    /// Explicit numbers from the config are a ceiling the API's headers cannot raise; a tier
    /// preset is only a first guess, replaced by what the headers say.
    pub is_ceiling: bool,
}

impl ClassLimits {
    pub fn ceiling(limits: ModelLimits) -> ClassLimits {
        ClassLimits {
            limits,
            is_ceiling: true,
        }
    }
}

/// The rate-limit class of a model: models that share one limit at the API share it here too
/// ("Opus 4.x" covers Opus 4.5–4.8, "Sonnet 4.x" covers Sonnet 4.5 and 4.6; §2.1 of the fact
/// sheet). A date suffix (`-20250929`) is dropped; every other model is its own class.
pub fn limit_class(model: &str) -> String {
    let base = match model.rsplit_once('-') {
        Some((base, date)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => model,
    };
    for (family, class) in [
        ("claude-opus-4-", "claude-opus-4.x"),
        ("claude-sonnet-4-", "claude-sonnet-4.x"),
    ] {
        if let Some(minor) = base.strip_prefix(family)
            && minor.parse::<u32>().is_ok_and(|m| m >= 5)
        {
            return class.to_owned();
        }
    }
    base.to_owned()
}
