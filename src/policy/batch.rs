//! What a line of a batch's results means for its item, and what becomes of an item that comes back
//! from a batch without a final outcome (expired, a retryable error, a canceled or refused batch):
//! it ends, or the planner decides its lane again. Pure.

use super::outcome::AttemptRecord;
use crate::model::answer::Usage;
use crate::model::results::{self, ResultHead};
use crate::model::state::{AttemptOutcome, ItemState};

/// Error types that say the request itself is at fault: sending it again as it is cannot help.
const REQUEST_AT_FAULT: [&str; 5] = [
    "invalid_request_error",
    "not_found_error",
    "permission_error",
    "authentication_error",
    "billing_error",
];

/// What one result line means for its item.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Final, succeeded: `line` is the API's own line (already in the results format, with the
    /// job's custom_id), made compact; `usage` is billed.
    Succeeded { usage: Usage, line: String },
    /// Final, errored by the API for a fault of the request: its error body is kept in `line`.
    Fatal {
        record: AttemptRecord,
        line: String,
        error: String,
    },
    /// Not final: back to the planner, recorded with `outcome` and `why`.
    SendBack {
        outcome: AttemptOutcome,
        why: String,
    },
}

/// Reads the `result` of a batch's line for item `custom_id` (`line` is the whole line, `head`
/// its result, None when unreadable); `api_id` is the batch's id, the request id of its calls.
pub fn judge(custom_id: &str, line: &str, head: Option<ResultHead>, api_id: &str) -> Verdict {
    let send_back = |outcome, why: &str| Verdict::SendBack {
        outcome,
        why: why.to_owned(),
    };
    let Some(head) = head else {
        return send_back(AttemptOutcome::Unknown, "its result line could not be read");
    };
    match head.kind.as_str() {
        "succeeded" => Verdict::Succeeded {
            usage: head.message.map(|m| m.usage).unwrap_or_default(),
            line: results::compact_line(line),
        },
        "errored" => {
            let error = head.error.unwrap_or_default();
            let kind = error["error"]["type"].as_str().unwrap_or("api_error");
            let message = error["error"]["message"]
                .as_str()
                .unwrap_or("errored in the batch");
            if !REQUEST_AT_FAULT.contains(&kind) {
                return send_back(AttemptOutcome::Retryable, &format!("{kind}: {message}"));
            }
            Verdict::Fatal {
                record: AttemptRecord {
                    outcome: AttemptOutcome::Fatal,
                    request_id: Some(api_id.to_owned()),
                    error: Some(message.to_owned()),
                    ..Default::default()
                },
                line: results::api_errored_line(Some(custom_id), &error),
                error: format!("{kind}: {message}"),
            }
        }
        "expired" => send_back(
            AttemptOutcome::Expired,
            "expired before the batch processed it",
        ),
        "canceled" => send_back(AttemptOutcome::Canceled, "its batch was canceled"),
        other => send_back(
            AttemptOutcome::Unknown,
            &format!("unknown result type {other:?}"),
        ),
    }
}

/// What is known of an item coming back from a batch.
#[derive(Debug, Clone, Copy)]
pub struct Returning<'a> {
    pub custom_id: &'a str,
    /// Failed attempts before, counting this one if it uses one up.
    pub failures: i64,
    pub job_canceled: bool,
    pub max_attempts: i64,
}

/// How a returning item ends, when it does.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub state: ItemState,
    pub line: String,
    pub error: String,
}

/// An item back from a batch ends canceled (its job was canceled), or `expired` / `errored` once it
/// has used up its attempts; otherwise (None) the planner decides its lane again.
pub fn ending(item: &Returning<'_>, outcome: AttemptOutcome, why: &str) -> Option<Ending> {
    let custom_id = Some(item.custom_id);
    if item.job_canceled {
        return Some(Ending {
            state: ItemState::Canceled,
            line: results::canceled_line(custom_id),
            error: "canceled by nightshift cancel".into(),
        });
    }
    if item.failures + 1 < item.max_attempts {
        return None;
    }
    let message = format!(
        "gave up after {} attempts; the last came back from a batch: {why}",
        item.failures + 1
    );
    Some(if outcome == AttemptOutcome::Expired {
        Ending {
            state: ItemState::Expired,
            line: results::expired_line(custom_id),
            error: message,
        }
    } else {
        Ending {
            state: ItemState::Errored,
            line: results::errored_line(custom_id, "api_error", &message, None),
            error: message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::results::BatchResultLine;

    fn judged(line: &str) -> Verdict {
        let parsed = BatchResultLine::read(line).expect("a result line");
        judge(
            &parsed.custom_id,
            line,
            ResultHead::read(parsed.result),
            "msgbatch_1",
        )
    }

    #[test]
    fn each_result_type_has_its_meaning() {
        let ok = judged(
            r#"{"custom_id":"a","result":{"type":"succeeded","message":{"type":"message","usage":{"input_tokens":3,"output_tokens":4}}}}"#,
        );
        let Verdict::Succeeded { usage, line } = ok else {
            panic!("{ok:?}")
        };
        assert_eq!((usage.input_tokens, usage.output_tokens), (3, 4));
        assert!(line.starts_with(r#"{"custom_id":"a""#), "{line}");
        let fatal = judged(
            r#"{"custom_id":"b","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}}}"#,
        );
        assert!(
            matches!(&fatal, Verdict::Fatal { error, .. } if error == "invalid_request_error: bad"),
            "{fatal:?}"
        );
        let overloaded = judged(
            r#"{"custom_id":"c","result":{"type":"errored","error":{"type":"error","error":{"type":"overloaded_error","message":"busy"}}}}"#,
        );
        assert!(
            matches!(
                overloaded,
                Verdict::SendBack {
                    outcome: AttemptOutcome::Retryable,
                    ..
                }
            ),
            "a passing error goes back to the planner"
        );
        assert!(matches!(
            judged(r#"{"custom_id":"d","result":{"type":"expired"}}"#),
            Verdict::SendBack {
                outcome: AttemptOutcome::Expired,
                ..
            }
        ));
        assert!(matches!(
            judged(r#"{"custom_id":"e","result":"garbage"}"#),
            Verdict::SendBack {
                outcome: AttemptOutcome::Unknown,
                ..
            }
        ));
    }

    #[test]
    fn a_returning_item_ends_only_when_canceled_or_out_of_attempts() {
        let item = |failures, job_canceled| Returning {
            custom_id: "a",
            failures,
            job_canceled,
            max_attempts: 3,
        };
        assert_eq!(ending(&item(0, false), AttemptOutcome::Expired, "x"), None);
        let canceled = ending(&item(0, true), AttemptOutcome::Expired, "x").expect("ends");
        assert_eq!(canceled.state, ItemState::Canceled);
        let expired = ending(&item(2, false), AttemptOutcome::Expired, "x").expect("ends");
        assert_eq!(expired.state, ItemState::Expired);
        let errored = ending(&item(2, false), AttemptOutcome::Retryable, "x").expect("ends");
        assert_eq!(errored.state, ItemState::Errored);
        assert!(
            errored.error.contains("gave up after 3 attempts"),
            "{}",
            errored.error
        );
    }
}
