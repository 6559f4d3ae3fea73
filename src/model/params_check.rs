//! What the API's JSON parser refuses, or reads differently from what was meant, checked on each
//! line of a job file at intake: a number no double can hold (`1e999`), nesting deeper than [`MAX_DEPTH`], and a key
//! written twice in one object (`"max_tokens": 0, "max_tokens": 16`: parsers differ on which one
//! wins). In a batch, one such request makes the API refuse the whole create call; here it errors
//! only its own line, naming the field. Pure.

use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// The deepest nesting of objects and arrays taken in a line (the line's object is level 1,
/// `params` level 2). The API does not publish its parser's limit; real requests stay far below
/// this one.
pub const MAX_DEPTH: usize = 64;

/// One step of a path into the line.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Why a line would not reach the API as written: the field (`params.messages[0].content`) and
/// the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamsProblem {
    pub field: String,
    pub reason: String,
}

/// Checks a line exactly as written (a JSON object already).
pub fn check(line: &str) -> Result<(), ParamsProblem> {
    let mut walk = Walk {
        path: Vec::new(),
        problem: None,
    };
    let mut de = serde_json::Deserializer::from_str(line);
    let outcome = Node { walk: &mut walk }.deserialize(&mut de);
    match (outcome, walk.problem) {
        (_, Some(reason)) => Err(ParamsProblem {
            field: field_of(&walk.path),
            reason,
        }),
        (Err(e), None) => Err(ParamsProblem {
            field: field_of(&walk.path),
            reason: describe(&e),
        }),
        (Ok(()), None) => Ok(()),
    }
}

fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.contains("number out of range") {
        "is a number out of the range of a double (the API cannot read it)".into()
    } else if text.contains("recursion limit") {
        format!("nests deeper than {MAX_DEPTH} levels")
    } else {
        format!("cannot be read: {text}")
    }
}

fn field_of(path: &[Step]) -> String {
    let mut field = String::new();
    for step in path {
        match step {
            Step::Key(key) => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
            }
            Step::Index(i) => {
                use fmt::Write as _;
                let _ = write!(field, "[{i}]");
            }
        }
    }
    field
}

struct Walk {
    /// Where the walk is; on a problem, where it was found.
    path: Vec<Step>,
    problem: Option<String>,
}

impl Walk {
    fn fail<E: serde::de::Error>(&mut self, reason: String) -> E {
        self.problem = Some(reason);
        E::custom("params problem")
    }
}

/// One value of the line, walked without being kept.
struct Node<'w> {
    walk: &'w mut Walk,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(self
                .walk
                .fail("is a number out of the range of a double (the API cannot read it)".into()))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.walk.path.len() + 1 > MAX_DEPTH {
            return Err(self
                .walk
                .fail(format!("nests deeper than {MAX_DEPTH} levels")));
        }
        let mut i = 0;
        loop {
            self.walk.path.push(Step::Index(i));
            if seq.next_element_seed(Node { walk: self.walk })?.is_none() {
                self.walk.path.pop();
                return Ok(());
            }
            self.walk.path.pop();
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.walk.path.len() + 1 > MAX_DEPTH {
            return Err(self
                .walk
                .fail(format!("nests deeper than {MAX_DEPTH} levels")));
        }
        // A set: a line may hold an object of millions of keys.
        let mut keys: std::collections::HashSet<String> = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let repeated = keys.contains(&key);
            self.walk.path.push(Step::Key(key.clone()));
            if repeated {
                return Err(self.walk.fail(
                    "is written twice in one object; write it once (which one the API would take is not defined)"
                        .into(),
                ));
            }
            map.next_value_seed(Node { walk: self.walk })?;
            self.walk.path.pop();
            keys.insert(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(params: &str) -> String {
        format!(r#"{{"custom_id":"a","params":{params}}}"#)
    }

    fn problem(params: &str) -> ParamsProblem {
        check(&line(params)).expect_err("a problem")
    }

    fn fine(params: &str) {
        check(&line(params)).expect("no problem");
    }

    #[test]
    fn an_ordinary_request_passes() {
        fine(
            r#"{"model":"m","max_tokens":16,"temperature":0.5,"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"metadata":{"user_id":"u"}}"#,
        );
        fine(r#"{"a":1e308,"b":-1.5e-320,"c":18446744073709551615,"d":-9223372036854775808}"#);
    }

    #[test]
    fn a_number_no_double_holds_is_named_by_its_field() {
        let p = problem(r#"{"model":"m","temperature":1e999}"#);
        assert_eq!(p.field, "params.temperature");
        assert!(p.reason.contains("out of the range"), "{p:?}");
        let p = problem(r#"{"messages":[{"content":[1,2,-1e400]}]}"#);
        assert_eq!(p.field, "params.messages[0].content[2]");
        let digits = format!(r#"{{"n":1{}}}"#, "0".repeat(400));
        assert_eq!(problem(&digits).field, "params.n");
    }

    #[test]
    fn nesting_past_the_limit_is_refused_and_at_the_limit_taken() {
        // The line is level 1 and `params` level 2: MAX_DEPTH - 2 arrays inside it reach the
        // limit exactly.
        let at = format!(
            r#"{{"x":{}{}}}"#,
            "[".repeat(MAX_DEPTH - 2),
            "]".repeat(MAX_DEPTH - 2)
        );
        fine(&at);
        let past = format!(
            r#"{{"x":{}{}}}"#,
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(problem(&past).reason.contains("deeper"));
        let deep = format!(r#"{{"x":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        let p = problem(&deep);
        assert!(p.reason.contains("deeper than 64"), "{p:?}");
        assert!(p.field.starts_with("params.x[0][0]"), "{p:?}");
        assert!(
            p.field.len() < 400,
            "the path stops at the limit: {}",
            p.field.len()
        );
    }

    #[test]
    fn a_key_written_twice_is_named() {
        let p = problem(r#"{"model":"m","max_tokens":0,"max_tokens":16}"#);
        assert_eq!(p.field, "params.max_tokens");
        assert!(p.reason.contains("twice"), "{p:?}");
        let p = problem(r#"{"messages":[{"role":"user","role":"assistant"}]}"#);
        assert_eq!(p.field, "params.messages[0].role");
        // The same key in two objects is fine.
        fine(r#"{"a":{"k":1},"b":{"k":2}}"#);
        let twice = check(r#"{"custom_id":"a","custom_id":"b","params":{}}"#).expect_err("twice");
        assert_eq!(twice.field, "custom_id");
    }
}
