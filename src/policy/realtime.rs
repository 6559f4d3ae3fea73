//! What an answer to a real-time call means for its item: final (with its result line), or sent
//! again after a backoff or `retry-after` (counting toward the attempt cap or not). Pure: the
//! backoff and the time are passed in.

use std::time::Duration;

use backon::BackoffBuilder;

use super::outcome::{AttemptRecord, ItemUpdate};
use crate::model::answer::Outcome;
use crate::model::results;
use crate::model::state::{AttemptOutcome, ItemState};

/// What the decision needs to know of the call.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub custom_id: &'a str,
    /// Failed attempts before this one.
    pub failures: i64,
    /// Failed attempts allowed in all (`realtime.max_attempts`).
    pub max_attempts: u32,
}

/// The delay before retry number `failures + 1`: exponential from `backoff_min`, capped at
/// `backoff_max`, with jitter (backon's: up to one more step at random).
pub fn backoff_delay(min: Duration, max: Duration, failures: u32) -> Duration {
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(failures as usize + 1)
        .build()
        .nth(failures as usize)
        .unwrap_or(max)
        .min(max)
}

/// Decides what an outcome means for the item. Pure: `backoff` and `now` (Unix ms) are given.
pub fn decide(
    attempt: &Attempt<'_>,
    outcome: &Outcome,
    backoff: Duration,
    now: i64,
) -> (AttemptRecord, ItemUpdate) {
    let ms = |d: Duration| d.as_millis() as i64;
    let custom_id = attempt.custom_id;
    let mut record = AttemptRecord {
        request_id: outcome.request_id().map(str::to_owned),
        ..Default::default()
    };
    // A failure that counts toward the cap: retry after the backoff (or retry-after, if longer),
    // unless this was the last attempt allowed.
    let failed = |record: &mut AttemptRecord,
                  status: Option<u16>,
                  retry_after: Option<Duration>,
                  why: &str| {
        let failures = attempt.failures + 1;
        if failures >= i64::from(attempt.max_attempts) {
            let message = format!("gave up after {failures} failed attempts; the last: {why}");
            let update = ItemUpdate::Final {
                state: ItemState::Errored,
                result_line: results::errored_line(
                    Some(custom_id),
                    error_type(status),
                    &message,
                    None,
                ),
                error: Some(message),
            };
            return update;
        }
        record.retry_after_ms = retry_after.map(ms);
        let wait = retry_after.map_or(backoff, |r| r.max(backoff));
        ItemUpdate::Retry {
            not_before: now + ms(wait),
            failed: true,
        }
    };
    let update = match outcome {
        Outcome::Succeeded { message, usage, .. } => {
            record.outcome = AttemptOutcome::Succeeded;
            record.http_status = Some(200);
            record.input_tokens = Some(usage.input_tokens);
            record.output_tokens = Some(usage.output_tokens);
            record.usage = Some(*usage);
            ItemUpdate::Final {
                state: ItemState::Succeeded,
                result_line: results::succeeded_line(custom_id, message),
                error: None,
            }
        }
        Outcome::RateLimited {
            retry_after,
            message,
            ..
        } => {
            record.outcome = AttemptOutcome::RateLimited;
            record.http_status = Some(429);
            record.retry_after_ms = retry_after.map(ms);
            record.error = Some(message.clone());
            // Waiting out a rate limit is not a failure: it does not use up attempts.
            ItemUpdate::Retry {
                not_before: now + ms(retry_after.unwrap_or(backoff)),
                failed: false,
            }
        }
        Outcome::Blocked {
            status, message, ..
        } => {
            record.outcome = AttemptOutcome::Blocked;
            record.http_status = Some(*status);
            record.error = Some(message.clone());
            // The refusal is the route's (or its organization's), not the item's: the route is
            // paused, and the item may go at once on another route its tenant may use.
            ItemUpdate::Retry {
                not_before: now,
                failed: false,
            }
        }
        // The call never reached the API (connection refused, DNS, connect timeout, TLS): it is
        // no attempt, however long the outage (the lane's circuit keeps it from spinning).
        Outcome::Retryable {
            status: None,
            message,
            ..
        } => {
            record.outcome = AttemptOutcome::NotSent;
            record.error = Some(message.clone());
            ItemUpdate::Retry {
                not_before: now + ms(backoff),
                failed: false,
            }
        }
        Outcome::Retryable {
            status,
            retry_after,
            message,
            ..
        } => {
            record.outcome = AttemptOutcome::Retryable;
            record.http_status = *status;
            record.error = Some(message.clone());
            failed(&mut record, *status, *retry_after, message)
        }
        Outcome::Unknown { message } => {
            record.outcome = AttemptOutcome::Unknown;
            record.error = Some(message.clone());
            failed(&mut record, None, None, message)
        }
        Outcome::Fatal { status, body, .. } => {
            record.outcome = AttemptOutcome::Fatal;
            record.http_status = Some(*status);
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("request rejected")
                .to_owned();
            record.error = Some(message.clone());
            ItemUpdate::Final {
                state: ItemState::Errored,
                result_line: results::api_errored_line(Some(custom_id), body),
                error: Some(format!("HTTP {status}: {message}")),
            }
        }
    };
    (record, update)
}

fn error_type(status: Option<u16>) -> &'static str {
    match status {
        Some(529) => "overloaded_error",
        Some(504) => "timeout_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::answer::Usage;
    use serde_json::json;

    fn attempt(failures: i64) -> Attempt<'static> {
        Attempt {
            custom_id: "c-1",
            failures,
            max_attempts: 3,
        }
    }

    const BACKOFF: Duration = Duration::from_secs(2);

    #[test]
    fn success_is_final_with_the_message() {
        let out = Outcome::Succeeded {
            message: r#"{"type":"message","id":"msg_1"}"#.into(),
            usage: Usage {
                input_tokens: 5,
                output_tokens: 6,
                ..Default::default()
            },
            request_id: Some("req_1".into()),
            limits: Default::default(),
        };
        let (record, update) = decide(&attempt(0), &out, BACKOFF, 1000);
        assert_eq!(record.outcome, AttemptOutcome::Succeeded);
        assert_eq!(record.output_tokens, Some(6));
        let ItemUpdate::Final {
            state, result_line, ..
        } = update
        else {
            panic!()
        };
        assert_eq!(state, ItemState::Succeeded);
        assert!(result_line.contains("\"custom_id\":\"c-1\""));
    }

    #[test]
    fn rate_limits_wait_retry_after_without_using_attempts() {
        let out = Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
            request_id: None,
            message: "slow".into(),
            limits: Default::default(),
        };
        let (record, update) = decide(&attempt(2), &out, BACKOFF, 1000);
        assert_eq!(record.retry_after_ms, Some(7000));
        assert_eq!(
            update,
            ItemUpdate::Retry {
                not_before: 8000,
                failed: false
            }
        );
    }

    #[test]
    fn server_errors_back_off_and_give_up_at_the_cap() {
        let out = Outcome::Retryable {
            status: Some(529),
            retry_after: None,
            request_id: None,
            message: "Overloaded".into(),
        };
        let (_, update) = decide(&attempt(0), &out, BACKOFF, 1000);
        assert_eq!(
            update,
            ItemUpdate::Retry {
                not_before: 3000,
                failed: true
            }
        );
        let (_, update) = decide(&attempt(2), &out, BACKOFF, 1000);
        let ItemUpdate::Final {
            state,
            result_line,
            error,
        } = update
        else {
            panic!()
        };
        assert_eq!(state, ItemState::Errored);
        assert!(result_line.contains("overloaded_error"));
        assert!(error.expect("message").contains("gave up after 3"));
    }

    #[test]
    fn a_call_that_never_reached_the_api_is_no_attempt() {
        let out = Outcome::Retryable {
            status: None,
            retry_after: None,
            request_id: None,
            message: "could not connect: connection refused".into(),
        };
        // Past the cap of failed attempts: still only waits.
        let (record, update) = decide(&attempt(5), &out, BACKOFF, 1000);
        assert_eq!(record.outcome, AttemptOutcome::NotSent);
        assert_eq!(
            update,
            ItemUpdate::Retry {
                not_before: 3000,
                failed: false
            }
        );
    }

    #[test]
    fn a_longer_retry_after_wins_over_the_backoff() {
        let out = Outcome::Retryable {
            status: Some(503),
            retry_after: Some(Duration::from_secs(10)),
            request_id: None,
            message: "down".into(),
        };
        let (_, update) = decide(&attempt(0), &out, BACKOFF, 0);
        assert_eq!(
            update,
            ItemUpdate::Retry {
                not_before: 10_000,
                failed: true
            }
        );
    }

    #[test]
    fn unknown_outcomes_are_recorded_and_retried() {
        let out = Outcome::Unknown {
            message: "connection closed".into(),
        };
        let (record, update) = decide(&attempt(0), &out, BACKOFF, 0);
        assert_eq!(record.outcome, AttemptOutcome::Unknown);
        assert!(matches!(update, ItemUpdate::Retry { failed: true, .. }));
    }

    #[test]
    fn fatal_errors_keep_the_api_body() {
        let body = json!({"type":"error","error":{"type":"not_found_error","message":"model: x"},"request_id":"req_2"});
        let out = Outcome::Fatal {
            status: 404,
            request_id: Some("req_2".into()),
            body,
        };
        let (_, update) = decide(&attempt(0), &out, BACKOFF, 0);
        let ItemUpdate::Final {
            result_line, error, ..
        } = update
        else {
            panic!()
        };
        assert!(result_line.contains("not_found_error"));
        assert_eq!(error.as_deref(), Some("HTTP 404: model: x"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(60));
        let first = backoff_delay(min, max, 0);
        assert!(
            first >= Duration::from_millis(500) && first <= Duration::from_millis(1000),
            "{first:?}"
        );
        let fourth = backoff_delay(min, max, 3);
        assert!(
            fourth >= Duration::from_secs(4) && fourth <= Duration::from_secs(8),
            "{fourth:?}"
        );
        assert_eq!(backoff_delay(min, max, 30), Duration::from_secs(60));
    }
}
