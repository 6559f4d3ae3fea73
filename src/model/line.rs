//! One line of a job file: a request in the Message Batches format (`custom_id`, `params`) with
//! nightshift's optional fields (`tenant`, `priority`, `mode`, `deadline`), validated into a
//! [`ValidLine`] or an error naming the line and the field. Pure: bytes in, a verdict out.

use std::collections::HashMap;
use std::fmt;

use serde_json::value::RawValue;

use super::job::{Deadline, JobDefaults, Mode, Priority, check_tenant};
use super::{catalog, params_check};

/// The fields a line may carry.
const LINE_FIELDS: [&str; 6] = [
    "custom_id",
    "params",
    "tenant",
    "priority",
    "mode",
    "deadline",
];

/// Why one line of a job file is not a valid request.
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    pub line: u64,
    /// The field at fault, as a path (`params.max_tokens`), when one is.
    pub field: Option<String>,
    pub reason: String,
}

impl LineError {
    pub fn new(line: u64, field: Option<&str>, reason: impl Into<String>) -> LineError {
        LineError {
            line,
            field: field.map(str::to_owned),
            reason: reason.into(),
        }
    }

    /// The message people read: file, line and field.
    pub fn message(&self, file: &str) -> String {
        match &self.field {
            Some(field) => format!(
                "{file} line {}: field `{field}`: {}",
                self.line, self.reason
            ),
            None => format!("{file} line {}: {}", self.line, self.reason),
        }
    }
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message("job file"))
    }
}

/// A line that passed validation, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidLine {
    pub custom_id: String,
    /// The `params` object exactly as written.
    pub params: String,
    pub model: String,
    pub max_tokens: u64,
    pub input_estimate: u64,
    /// The prefix it marks for the prompt cache, if any.
    pub cache: Option<crate::model::prompt_cache::CachePrefix>,
    /// `cache = "auto"` put a breakpoint in `params` (which are then what is sent).
    pub cache_added: bool,
    /// The body as written, kept beside the one `cache = "auto"` marked while only two requests
    /// are known to share its prefix: the batch lane sends it (an hour's write would not pay).
    pub unmarked: Option<String>,
    pub tenant: String,
    pub priority: Priority,
    pub mode: Mode,
    pub deadline_at: Option<i64>,
}

/// One line of a job file after validation.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedLine {
    Valid(ValidLine),
    /// Invalid; `custom_id` is kept when it could be read (its result then carries it).
    Invalid {
        custom_id: Option<String>,
        error: LineError,
    },
}

/// Whether a custom_id is acceptable to the Message Batches API: `^[a-zA-Z0-9_-]{1,64}$`.
pub fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A rough input-token estimate before sending: a token per four bytes of the request body. It errs
/// high (JSON punctuation counts too), which keeps pacing on the safe side.
pub fn estimate_input_tokens(params: &str) -> u64 {
    (params.len() as u64).div_ceil(4).max(1)
}

/// The UTF-8 byte order mark some editors put before the first line.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What a line is judged against besides itself.
#[derive(Debug, Clone)]
pub struct LineContext<'a> {
    pub defaults: &'a JobDefaults,
    /// When the job was taken in (Unix ms): resolves relative deadlines.
    pub intake_ms: i64,
    /// The `anthropic-version` nightshift sends (`api.anthropic_version`).
    pub api_version: &'a str,
    /// The UTC day of `intake_ms` (YYYY-MM-DD), which dates the model table (a model retires on
    /// a day); worked out once, not per line.
    pub today: String,
}

impl<'a> LineContext<'a> {
    pub fn new(defaults: &'a JobDefaults, intake_ms: i64, api_version: &'a str) -> LineContext<'a> {
        LineContext {
            defaults,
            intake_ms,
            api_version,
            today: catalog::day_of(intake_ms),
        }
    }

    /// For tests: `defaults` and `intake_ms` on the default API version.
    #[cfg(test)]
    pub fn test(defaults: &'a JobDefaults, intake_ms: i64) -> LineContext<'a> {
        LineContext::new(defaults, intake_ms, "2023-06-01")
    }
}

/// Validates one line (without its newline) in `ctx`. A byte order mark before line 1 is not
/// part of it.
pub fn parse_line(bytes: &[u8], line: u64, ctx: &LineContext<'_>) -> ParsedLine {
    let (defaults, intake_ms) = (ctx.defaults, ctx.intake_ms);
    let bytes = match bytes.strip_prefix(BOM) {
        Some(rest) if line == 1 => rest,
        _ => bytes,
    };
    let invalid =
        |custom_id: Option<String>, field: Option<&str>, reason: String| ParsedLine::Invalid {
            custom_id,
            error: LineError::new(line, field, reason),
        };
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            return invalid(
                None,
                None,
                format!(
                    "is not valid UTF-8 (bad byte at column {})",
                    e.valid_up_to() + 1
                ),
            );
        }
    };
    if text.trim().is_empty() {
        return invalid(
            None,
            None,
            "is empty; each line must be one JSON request".into(),
        );
    }
    let fields: HashMap<String, &RawValue> = match serde_json::from_str(text) {
        Ok(fields) => fields,
        Err(e) if e.is_data() => {
            return invalid(None, None, "is not a JSON object".into());
        }
        Err(e) => {
            return invalid(
                None,
                None,
                format!(
                    "is not valid JSON ({} at column {})",
                    describe_json_error(&e),
                    e.column()
                ),
            );
        }
    };

    // custom_id first, so that later errors can still carry it.
    let custom_id = match fields.get("custom_id") {
        None => return invalid(None, Some("custom_id"), "is missing".into()),
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(id) if valid_custom_id(&id) => id,
            Ok(id) => {
                return invalid(
                    None,
                    Some("custom_id"),
                    format!(
                        "must be 1-64 characters of A-Z, a-z, 0-9, _ and -; got {:?}",
                        truncate(&id, 80)
                    ),
                );
            }
            Err(_) => return invalid(None, Some("custom_id"), "must be a string".into()),
        },
    };
    let fail = |field: &str, reason: String| invalid(Some(custom_id.clone()), Some(field), reason);
    if let Err(problem) = params_check::check(text) {
        return fail(&problem.field, problem.reason);
    }

    let mut unknown: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|k| !LINE_FIELDS.contains(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return fail(
            unknown[0],
            format!("is not a known field (allowed: {})", LINE_FIELDS.join(", ")),
        );
    }

    let tenant = match optional(&fields, "tenant", check_tenant) {
        Ok(t) => t.unwrap_or_else(|| defaults.tenant.clone()),
        Err((field, reason)) => return fail(field, reason),
    };
    let priority = match optional(&fields, "priority", str::parse::<Priority>) {
        Ok(p) => p.unwrap_or(defaults.priority),
        Err((field, reason)) => return fail(field, reason),
    };
    let mode = match optional(&fields, "mode", str::parse::<Mode>) {
        Ok(m) => m.unwrap_or(defaults.mode),
        Err((field, reason)) => return fail(field, reason),
    };
    let deadline = match optional(&fields, "deadline", str::parse::<Deadline>) {
        Ok(d) => d.or(defaults.deadline.as_ref().map(|(_, d)| *d)),
        Err((field, reason)) => return fail(field, reason),
    };

    let Some(params_raw) = fields.get("params") else {
        return fail("params", "is missing".into());
    };
    let params: HashMap<String, &RawValue> = match serde_json::from_str(params_raw.get()) {
        Ok(p) => p,
        Err(_) => {
            return fail(
                "params",
                "must be an object (a Messages request body)".into(),
            );
        }
    };
    let model = match params
        .get("model")
        .map(|raw| serde_json::from_str::<String>(raw.get()))
    {
        None => return fail("params.model", "is missing".into()),
        Some(Ok(m)) if !m.trim().is_empty() => m,
        Some(_) => return fail("params.model", "must be a non-empty string".into()),
    };
    let max_tokens = match params
        .get("max_tokens")
        .map(|raw| serde_json::from_str::<u64>(raw.get()))
    {
        None => return fail("params.max_tokens", "is missing".into()),
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => {
            return fail(
                "params.max_tokens",
                "must be an integer of at least 1".into(),
            );
        }
    };
    match params
        .get("messages")
        .map(|raw| serde_json::from_str::<Vec<&RawValue>>(raw.get()))
    {
        None => return fail("params.messages", "is missing".into()),
        Some(Ok(list)) if !list.is_empty() => {}
        Some(Ok(_)) => return fail("params.messages", "must not be empty".into()),
        Some(Err(_)) => return fail("params.messages", "must be an array of messages".into()),
    }

    let field = |name: &str| {
        params
            .get(name)
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
    };
    if let Err((field, reason)) =
        catalog::check_request(&model, max_tokens, &field, ctx.api_version, &ctx.today)
    {
        return fail(&field, reason);
    }

    let params = params_raw.get().to_owned();
    ParsedLine::Valid(ValidLine {
        input_estimate: estimate_input_tokens(&params),
        cache: crate::model::prompt_cache::prefix(&params),
        cache_added: false,
        unmarked: None,
        custom_id,
        params,
        model,
        max_tokens,
        tenant,
        priority,
        mode,
        deadline_at: deadline.map(|d| d.resolve(intake_ms)),
    })
}

/// An optional string field of a line, parsed by `parse`; the error is (field, reason).
fn optional<'f, T>(
    fields: &HashMap<String, &RawValue>,
    name: &'f str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, (&'f str, String)> {
    let Some(raw) = fields.get(name) else {
        return Ok(None);
    };
    let text: String =
        serde_json::from_str(raw.get()).map_err(|_| (name, "must be a string".to_owned()))?;
    parse(&text).map(Some).map_err(|reason| (name, reason))
}

fn describe_json_error(e: &serde_json::Error) -> String {
    // serde_json's text ends with " at line L column C"; the line is always 1 here.
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max_chars).collect();
        t.push('…');
        t
    }
}

/// A job name: the file's stem, usable as a file name.
pub fn valid_job_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> ParsedLine {
        parse_line(
            line.as_bytes(),
            7,
            &LineContext::test(&JobDefaults::default(), 1_000),
        )
    }

    fn error_of(line: &str) -> (Option<String>, LineError) {
        match parse(line) {
            ParsedLine::Invalid { custom_id, error } => (custom_id, error),
            ParsedLine::Valid(v) => panic!("expected an error, got {v:?}"),
        }
    }

    const GOOD: &str = r#"{"custom_id":"a-1","params":{"model":"claude-haiku-5-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}}"#;

    #[test]
    fn a_batch_request_line_is_valid_unchanged() {
        let ParsedLine::Valid(v) = parse(GOOD) else {
            panic!("valid")
        };
        assert_eq!(v.custom_id, "a-1");
        assert_eq!(v.model, "claude-haiku-5-5");
        assert_eq!(v.max_tokens, 64);
        assert_eq!(v.tenant, "default");
        assert_eq!(v.priority, Priority::Nightly);
        assert_eq!(v.mode, Mode::Auto);
        assert!(v.params.starts_with(r#"{"model""#));
        assert!(v.input_estimate > 0);
    }

    #[test]
    fn optional_fields_override_the_defaults() {
        let line = r#"{"custom_id":"x","tenant":"acme","priority":"high","mode":"realtime","deadline":"1h","params":{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"q"}]}}"#;
        let ParsedLine::Valid(v) = parse(line) else {
            panic!("valid")
        };
        assert_eq!(v.tenant, "acme");
        assert_eq!(v.priority, Priority::High);
        assert_eq!(v.mode, Mode::Realtime);
        assert_eq!(v.deadline_at, Some(1_000 + 3_600_000));
    }

    #[test]
    fn each_problem_names_line_and_field() {
        let cases: [(&str, Option<&str>, &str); 12] = [
            ("{not json", None, "not valid JSON"),
            ("[1,2]", None, "not a JSON object"),
            ("   ", None, "empty"),
            (r#"{"params":{}}"#, Some("custom_id"), "missing"),
            (
                r#"{"custom_id":"bad id!","params":{}}"#,
                Some("custom_id"),
                "1-64",
            ),
            (
                r#"{"custom_id":5,"params":{}}"#,
                Some("custom_id"),
                "string",
            ),
            (r#"{"custom_id":"a"}"#, Some("params"), "missing"),
            (
                r#"{"custom_id":"a","params":{"max_tokens":5,"messages":[1]}}"#,
                Some("params.model"),
                "missing",
            ),
            (
                r#"{"custom_id":"a","params":{"model":"m","messages":[1]}}"#,
                Some("params.max_tokens"),
                "missing",
            ),
            (
                r#"{"custom_id":"a","params":{"model":"m","max_tokens":0,"messages":[1]}}"#,
                Some("params.max_tokens"),
                "at least 1",
            ),
            (
                r#"{"custom_id":"a","params":{"model":"m","max_tokens":5,"messages":[]}}"#,
                Some("params.messages"),
                "empty",
            ),
            (
                r#"{"custom_id":"a","colour":"red","params":{}}"#,
                Some("colour"),
                "not a known field",
            ),
        ];
        for (line, field, words) in cases {
            let (_, err) = error_of(line);
            assert_eq!(err.line, 7, "{line}");
            assert_eq!(err.field.as_deref(), field, "{line}: {err:?}");
            assert!(err.reason.contains(words), "{line}: {err:?}");
            let msg = err.message("jobs/x.jsonl");
            assert!(msg.starts_with("jobs/x.jsonl line 7"), "{msg}");
        }
    }

    #[test]
    fn what_the_api_cannot_read_is_an_error_of_the_line_with_its_custom_id() {
        let cases = [
            (
                r#"{"custom_id":"t","params":{"model":"m","max_tokens":5,"temperature":1e999,"messages":[1]}}"#
                    .to_owned(),
                "params.temperature",
            ),
            (
                r#"{"custom_id":"t","params":{"model":"m","max_tokens":0,"max_tokens":16,"messages":[1]}}"#
                    .to_owned(),
                "params.max_tokens",
            ),
            (
                format!(
                    r#"{{"custom_id":"t","params":{{"model":"m","max_tokens":5,"messages":[1],"metadata":{}{}}}}}"#,
                    "[".repeat(10_000),
                    "]".repeat(10_000)
                ),
                "params.metadata[0]",
            ),
        ];
        for (line, field) in cases {
            let (id, err) = error_of(&line);
            assert_eq!(id.as_deref(), Some("t"), "{err:?}");
            let got = err.field.clone().unwrap_or_default();
            assert!(got.starts_with(field), "{field}: {err:?}");
        }
    }

    #[test]
    fn a_byte_order_mark_before_line_1_is_skipped_and_elsewhere_refused() {
        let with_bom = [BOM, GOOD.as_bytes()].concat();
        let parsed = parse_line(&with_bom, 1, &LineContext::test(&JobDefaults::default(), 0));
        assert!(matches!(parsed, ParsedLine::Valid(_)), "{parsed:?}");
        let parsed = parse_line(&with_bom, 2, &LineContext::test(&JobDefaults::default(), 0));
        assert!(matches!(parsed, ParsedLine::Invalid { .. }), "{parsed:?}");
    }

    #[test]
    fn a_readable_custom_id_is_kept_on_an_invalid_line() {
        let (id, _) = error_of(r#"{"custom_id":"keep-me","params":{"model":"m"}}"#);
        assert_eq!(id.as_deref(), Some("keep-me"));
        let (id, _) = error_of(r#"{"custom_id":"","params":{}}"#);
        assert_eq!(id, None);
    }

    #[test]
    fn non_utf8_is_reported_with_its_column() {
        let ParsedLine::Invalid { error, .. } = parse_line(
            b"{\"a\xff",
            3,
            &LineContext::test(&JobDefaults::default(), 0),
        ) else {
            panic!("invalid")
        };
        assert!(error.reason.contains("UTF-8"), "{error:?}");
        assert!(error.reason.contains("column 4"), "{error:?}");
    }

    #[test]
    fn custom_id_rules_match_the_batch_api() {
        assert!(valid_custom_id("a"));
        assert!(valid_custom_id(&"x".repeat(64)));
        assert!(!valid_custom_id(&"x".repeat(65)));
        assert!(!valid_custom_id(""));
        assert!(!valid_custom_id("a.b"));
        assert!(!valid_custom_id("é"));
    }

    #[test]
    fn job_names_are_safe_file_names() {
        assert!(valid_job_name("nightly-2026.11.23"));
        assert!(!valid_job_name(".hidden"));
        assert!(!valid_job_name("a b"));
        assert!(!valid_job_name(""));
    }
}
