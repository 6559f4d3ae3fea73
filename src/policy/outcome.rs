//! The words both lanes' outcome decisions share: what a finished attempt records, what becomes
//! of its item, and when the account itself is refused.

use std::time::Duration;

use crate::model::answer::Usage;
use crate::model::state::{AttemptOutcome, ItemState};

/// How long a lane pauses when the account is blocked (spend cap, usage limit, key refused):
/// sending more cannot succeed until a person acts.
pub const BLOCKED_WAIT: Duration = Duration::from_secs(300);

/// Whether an HTTP 400's message says the account cannot be used now: its own usage limit is
/// reached (the API answers so, not with a 429, when a self-set limit in the Console is hit), or
/// its prepaid credit is used up ("Your credit balance is too low to access the Anthropic API").
pub fn usage_limit_reached(message: &str) -> bool {
    (message.contains("reached your specified") && message.contains("usage limits"))
        || message.contains("credit balance is too low")
}

/// Whether a refusal stops every call of the account alike (key refused, usage limit, the tier's
/// spend cap: a 429 whose `error.details.error_code` is `enforced_spend_limit_reached`, said by
/// `spend_cap`), so a lane should pause the route rather than fail items. Both lanes' answers are
/// read by it (`api::classify` for Messages, `api::batches` for the batch endpoints).
pub fn account_blocked(status: u16, message: &str, spend_cap: bool) -> bool {
    match status {
        401 | 403 => true,
        400 => usage_limit_reached(message),
        429 => spend_cap,
        _ => false,
    }
}

/// What a finished attempt did to its item.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemUpdate {
    /// The item is done: its final state, results line, and error message for people.
    Final {
        state: ItemState,
        result_line: String,
        error: Option<String>,
    },
    /// Send again, not before `not_before`; `failed` counts it toward the attempt cap.
    Retry { not_before: i64, failed: bool },
}

/// The facts of one finished attempt, for the `attempts` table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptRecord {
    pub outcome: AttemptOutcome,
    pub http_status: Option<u16>,
    pub request_id: Option<String>,
    pub retry_after_ms: Option<i64>,
    pub error: Option<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// The API's usage of a call it ran; a billed call gets a ledger row.
    pub usage: Option<Usage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_credit_balance_blocks_the_account() {
        let credit = "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.";
        assert!(account_blocked(400, credit, false));
        assert!(account_blocked(
            400,
            "You have reached your specified API usage limits.",
            false
        ));
        assert!(!account_blocked(
            400,
            "messages.0.content: Field required",
            false
        ));
        assert!(account_blocked(401, "invalid x-api-key", false));
        assert!(account_blocked(403, "forbidden", false));
        // A 429 blocks only as the spend cap; any other is a rate limit, waited out.
        assert!(account_blocked(429, "spend cap", true));
        assert!(!account_blocked(429, "slow down", false));
        assert!(!account_blocked(404, "not found", false));
    }
}
