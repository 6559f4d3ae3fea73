//! The models nightshift knows, as dated data ([`AS_OF`], from `../shared/anthropic-api.md` §7
//! and §11): each id with its lifecycle (deprecated with a retirement date and a replacement, or
//! retired), its output ceiling where one is known, and the request rules that differ per model.
//! Intake refuses what the API would refuse (a retired model, a rule broken), each naming the
//! field; `plan`, `job` and the log warn of a deprecated model. An id not in the table is not
//! refused (new ids appear monthly): `plan --check` and the batch lane's preflight ask the API.
//! Pure: the day is passed in.

use serde_json::Value;

/// When the table was last checked against the API's documentation.
pub const AS_OF: &str = "2026-12-01";

/// No model takes more output in one request than this (the batch-only 300K output beta is the
/// most any endpoint allows).
pub const MAX_OUTPUT_ANY: u64 = 300_000;

/// The `anthropic-version` that refuses sampling parameters, even at their defaults.
pub const VERSION_WITHOUT_SAMPLING: &str = "2026-10-21";

/// Where a model stands, by date (YYYY-MM-DD, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Active,
    /// Still served until `retires`.
    Deprecated {
        since: &'static str,
        retires: &'static str,
        replacement: &'static str,
    },
    /// No longer served on the first-party API (`on`: when, where known).
    Retired {
        on: Option<&'static str>,
        replacement: &'static str,
    },
}

/// One model of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: &'static str,
    pub lifecycle: Lifecycle,
    /// The most `max_tokens` it takes, where known; else [`MAX_OUTPUT_ANY`] applies.
    pub max_output: Option<u64>,
    /// Thinking is always on: `thinking.type` "disabled" and "enabled" both answer 400.
    pub thinking_fixed: bool,
    /// Forced tool use (`tool_choice.type` "any" or "tool") answers 400.
    pub no_forced_tools: bool,
}

const fn active(id: &'static str) -> ModelInfo {
    ModelInfo {
        id,
        lifecycle: Lifecycle::Active,
        max_output: None,
        thinking_fixed: false,
        no_forced_tools: false,
    }
}

const fn with_output(model: ModelInfo, max_output: u64) -> ModelInfo {
    ModelInfo {
        max_output: Some(max_output),
        ..model
    }
}

/// The table. Output ceilings are given only for models older than the 300K output beta, from
/// the 2025 models overview; the rest take up to [`MAX_OUTPUT_ANY`].
pub const MODELS: &[ModelInfo] = &[
    ModelInfo {
        thinking_fixed: true,
        no_forced_tools: true,
        ..active("claude-fable-5-1")
    },
    active("claude-fable-5-2"),
    active("claude-fable-5"),
    active("claude-mythos-5-1"),
    active("claude-mythos-5-2"),
    active("claude-mythos-5"),
    ModelInfo {
        thinking_fixed: true,
        no_forced_tools: true,
        ..active("claude-opus-5-5")
    },
    active("claude-opus-5"),
    active("claude-opus-4-8"),
    active("claude-opus-4-7"),
    active("claude-opus-4-6"),
    with_output(
        ModelInfo {
            lifecycle: Lifecycle::Deprecated {
                since: "2026-11-23",
                retires: "2027-01-22",
                replacement: "claude-opus-5-5",
            },
            ..active("claude-opus-4-5")
        },
        64_000,
    ),
    with_output(
        ModelInfo {
            lifecycle: Lifecycle::Retired {
                on: None,
                replacement: "claude-opus-5-5",
            },
            ..active("claude-opus-4-1")
        },
        32_000,
    ),
    with_output(
        ModelInfo {
            lifecycle: Lifecycle::Retired {
                on: None,
                replacement: "claude-opus-5-5",
            },
            ..active("claude-opus-4-0")
        },
        32_000,
    ),
    with_output(
        ModelInfo {
            lifecycle: Lifecycle::Retired {
                on: None,
                replacement: "claude-opus-5-5",
            },
            // `claude-opus-4-20250514`, the dated form of claude-opus-4-0.
            ..active("claude-opus-4")
        },
        32_000,
    ),
    ModelInfo {
        no_forced_tools: true,
        ..active("claude-sonnet-5-5")
    },
    active("claude-sonnet-5"),
    active("claude-sonnet-4-6"),
    with_output(
        ModelInfo {
            lifecycle: Lifecycle::Retired {
                on: Some("2026-11-30"),
                replacement: "claude-sonnet-5-5",
            },
            ..active("claude-sonnet-4-5")
        },
        64_000,
    ),
    active("claude-haiku-5-5"),
    with_output(active("claude-haiku-4-5"), 64_000),
    ModelInfo {
        lifecycle: Lifecycle::Retired {
            on: None,
            replacement: "claude-haiku-5-5",
        },
        ..active("claude-3-5-haiku")
    },
];

/// The model of an id, its dated forms (`claude-opus-4-5-20251101`) included.
pub fn lookup(model: &str) -> Option<&'static ModelInfo> {
    let base = strip_date_suffix(model);
    MODELS.iter().find(|m| m.id == base)
}

/// `claude-x-1-20260101` -> `claude-x-1`; anything else unchanged.
pub fn strip_date_suffix(model: &str) -> &str {
    match model.rsplit_once('-') {
        Some((base, date)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => model,
    }
}

/// Where a model stands on `today` (YYYY-MM-DD): a deprecated model past its date is retired.
fn standing(info: &ModelInfo, today: &str) -> Lifecycle {
    match info.lifecycle {
        Lifecycle::Deprecated {
            retires,
            replacement,
            ..
        } if today >= retires => Lifecycle::Retired {
            on: Some(retires),
            replacement,
        },
        // Served until its retirement day.
        Lifecycle::Retired { on: Some(on), .. } if today < on => Lifecycle::Active,
        other => other,
    }
}

/// The fewest tokens a prefix must have for the API to cache it: 1,024 on most models, more on
/// some Haiku and Opus versions (fact sheet §11 gives no figures for those; these are the
/// built-in fake's, 2,048 and 4,096).
pub fn min_cacheable_tokens(model: &str) -> u64 {
    match strip_date_suffix(model) {
        "claude-haiku-4-5" | "claude-opus-4-5" => 4096,
        "claude-haiku-5-5" => 2048,
        _ => 1024,
    }
}

/// A warning for a model that is deprecated on `today`, for `plan`, `job` and the log.
pub fn deprecation(model: &str, today: &str) -> Option<String> {
    let info = lookup(model)?;
    match standing(info, today) {
        Lifecycle::Deprecated {
            since,
            retires,
            replacement,
        } => Some(format!(
            "{model} is deprecated since {since} and retires on {retires}; move to {replacement}"
        )),
        _ => None,
    }
}

/// The deprecated models a job uses, each looked up once.
#[derive(Debug, Default)]
pub struct Deprecations {
    seen: std::collections::BTreeMap<String, Option<String>>,
}

impl Deprecations {
    /// Notes a request's model on `today`; its warning the first time a deprecated one is met.
    pub fn note(&mut self, model: &str, today: &str) -> Option<&str> {
        if self.seen.contains_key(model) {
            return None;
        }
        let warning = deprecation(model, today);
        self.seen
            .entry(model.to_owned())
            .or_insert(warning)
            .as_deref()
    }

    /// One warning per deprecated model met, by model name.
    pub fn warnings(self) -> Vec<String> {
        self.seen.into_values().flatten().collect()
    }
}

/// Checks a request against the table and the API version: `Err((field, reason))` for what the
/// API would refuse. `field` gives a top-level field of the request body, if it has it; `today`
/// is YYYY-MM-DD (UTC).
pub fn check_request(
    model: &str,
    max_tokens: u64,
    field: &dyn Fn(&str) -> Option<Value>,
    api_version: &str,
    today: &str,
) -> Result<(), (String, String)> {
    let refuse = |field: &str, reason: String| Err((field.to_owned(), reason));
    if api_version == VERSION_WITHOUT_SAMPLING {
        for name in ["temperature", "top_p", "top_k"] {
            if field(name).is_some() {
                return refuse(
                    &format!("params.{name}"),
                    format!(
                        "is refused by the API on anthropic-version {VERSION_WITHOUT_SAMPLING} (even at its default); remove it, or set api.anthropic_version = \"2023-06-01\""
                    ),
                );
            }
        }
    }
    let info = lookup(model);
    let ceiling = info.and_then(|m| m.max_output).unwrap_or(MAX_OUTPUT_ANY);
    if max_tokens > ceiling {
        return refuse(
            "params.max_tokens",
            format!(
                "is {max_tokens}, above the {ceiling} output tokens {} takes",
                if info.and_then(|m| m.max_output).is_some() {
                    model
                } else {
                    "any model"
                }
            ),
        );
    }
    let Some(info) = info else { return Ok(()) };
    if let Lifecycle::Retired { on, replacement } = standing(info, today) {
        let when = on.map_or("already".to_owned(), |d| format!("on {d}"));
        return refuse(
            "params.model",
            format!(
                "{model} was retired {when}: the API no longer serves it; use {replacement} (nightshift's model table, as of {AS_OF})"
            ),
        );
    }
    let kind = |name: &str| {
        field(name)
            .as_ref()
            .and_then(|v| v.get("type"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if info.thinking_fixed
        && let Some(kind) = kind("thinking").filter(|k| k == "disabled" || k == "enabled")
    {
        return refuse(
            "params.thinking.type",
            format!(
                "is {kind:?}, which {model} refuses (its thinking is always on and cannot be set); leave `thinking` out"
            ),
        );
    }
    if info.no_forced_tools
        && let Some(kind) = kind("tool_choice").filter(|k| k == "any" || k == "tool")
    {
        return refuse(
            "params.tool_choice.type",
            format!(
                "is {kind:?}: {model} refuses forced tool use; use \"auto\" (or leave tool_choice out)"
            ),
        );
    }
    Ok(())
}

/// The UTC day (YYYY-MM-DD) of a Unix-ms time.
pub fn day_of(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%d")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(
        model: &str,
        max_tokens: u64,
        params: Value,
        version: &str,
        today: &str,
    ) -> Result<(), (String, String)> {
        let map = params.as_object().cloned().unwrap_or_default();
        check_request(model, max_tokens, &|f| map.get(f).cloned(), version, today)
    }

    #[test]
    fn a_retired_model_is_refused_naming_its_replacement() {
        let e = check(
            "claude-sonnet-4-5-20250929",
            100,
            json!({}),
            "2023-06-01",
            "2026-12-02",
        )
        .expect_err("retired");
        assert_eq!(e.0, "params.model");
        assert!(
            e.1.contains("retired on 2026-11-30") && e.1.contains("claude-sonnet-5-5"),
            "{}",
            e.1
        );
        // The day before, it was served.
        assert!(
            check(
                "claude-sonnet-4-5",
                100,
                json!({}),
                "2023-06-01",
                "2026-11-29"
            )
            .is_ok()
        );
    }

    #[test]
    fn a_deprecated_model_warns_until_its_retirement_day() {
        let w = deprecation("claude-opus-4-5", "2026-12-02").expect("deprecated");
        assert!(
            w.contains("retires on 2027-01-22") && w.contains("claude-opus-5-5"),
            "{w}"
        );
        assert!(
            check(
                "claude-opus-4-5",
                100,
                json!({}),
                "2023-06-01",
                "2026-12-02"
            )
            .is_ok()
        );
        assert_eq!(
            deprecation("claude-opus-4-5", "2027-01-22"),
            None,
            "retired by then"
        );
        assert!(
            check(
                "claude-opus-4-5",
                100,
                json!({}),
                "2023-06-01",
                "2027-01-22"
            )
            .is_err()
        );
        assert_eq!(deprecation("claude-haiku-5-5", "2026-12-02"), None);
        assert_eq!(deprecation("claude-unknown-9", "2026-12-02"), None);
    }

    #[test]
    fn each_deprecated_model_is_warned_of_once() {
        let mut seen = Deprecations::default();
        assert!(seen.note("claude-opus-4-5", "2026-12-02").is_some());
        assert_eq!(seen.note("claude-opus-4-5", "2026-12-02"), None, "once");
        assert_eq!(seen.note("claude-haiku-5-5", "2026-12-02"), None);
        assert_eq!(seen.warnings().len(), 1);
    }

    #[test]
    fn output_ceilings_per_model_and_for_any() {
        let e = check(
            "claude-haiku-4-5",
            64_001,
            json!({}),
            "2023-06-01",
            "2026-12-02",
        )
        .expect_err("ceiling");
        assert_eq!(e.0, "params.max_tokens");
        assert!(
            e.1.contains("64000") && e.1.contains("claude-haiku-4-5"),
            "{}",
            e.1
        );
        assert!(
            check(
                "claude-haiku-5-5",
                300_000,
                json!({}),
                "2023-06-01",
                "2026-12-02"
            )
            .is_ok()
        );
        let e = check(
            "claude-new-9",
            1_000_000_000_000,
            json!({}),
            "2023-06-01",
            "2026-12-02",
        )
        .expect_err("any");
        assert!(e.1.contains("any model"), "{}", e.1);
    }

    #[test]
    fn per_model_rules_and_the_new_version() {
        let (old, new) = ("2023-06-01", "2026-10-21");
        // (model, params, version, the field refused or None)
        let cases = [
            (
                "claude-opus-5-5",
                json!({"thinking": {"type": "disabled"}}),
                old,
                Some("params.thinking.type"),
            ),
            (
                "claude-fable-5-1",
                json!({"thinking": {"type": "enabled"}}),
                old,
                Some("params.thinking.type"),
            ),
            (
                "claude-opus-5-5",
                json!({"thinking": {"type": "adaptive"}}),
                old,
                None,
            ),
            (
                "claude-opus-4-8",
                json!({"thinking": {"type": "disabled"}}),
                old,
                None,
            ),
            (
                "claude-sonnet-5-5",
                json!({"tool_choice": {"type": "any"}}),
                old,
                Some("params.tool_choice.type"),
            ),
            (
                "claude-opus-5-5",
                json!({"tool_choice": {"type": "tool", "name": "t"}}),
                old,
                Some("params.tool_choice.type"),
            ),
            (
                "claude-sonnet-5-5",
                json!({"tool_choice": {"type": "auto"}}),
                old,
                None,
            ),
            (
                "claude-haiku-5-5",
                json!({"temperature": 1.0}),
                new,
                Some("params.temperature"),
            ),
            (
                "claude-haiku-5-5",
                json!({"top_k": 5}),
                new,
                Some("params.top_k"),
            ),
            ("claude-haiku-5-5", json!({"temperature": 1.0}), old, None),
        ];
        for (model, params, version, refused) in cases {
            let got = check(model, 10, params.clone(), version, "2026-12-02")
                .err()
                .map(|e| e.0);
            assert_eq!(got.as_deref(), refused, "{model} {params} on {version}");
        }
    }

    #[test]
    fn dated_ids_and_days() {
        assert_eq!(
            lookup("claude-opus-4-5-20251101").map(|m| m.id),
            Some("claude-opus-4-5")
        );
        assert_eq!(lookup("claude-nothing"), None);
        assert_eq!(day_of(1_795_500_000_000), "2026-11-24");
    }
}
