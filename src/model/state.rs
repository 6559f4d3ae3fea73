//! States as the database stores them: each enum maps to and from the string in its column
//! (`items.state`, `items.lane`, `attempts.outcome`, `batches.state`).

use std::fmt;
use std::str::FromStr;

/// Where an item is in its life. Mirrors `items.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemState {
    Pending,
    InFlight,
    Succeeded,
    Errored,
    Expired,
    Canceled,
}

impl ItemState {
    pub const ALL: [ItemState; 6] = [
        ItemState::Pending,
        ItemState::InFlight,
        ItemState::Succeeded,
        ItemState::Errored,
        ItemState::Expired,
        ItemState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::InFlight => "in_flight",
            ItemState::Succeeded => "succeeded",
            ItemState::Errored => "errored",
            ItemState::Expired => "expired",
            ItemState::Canceled => "canceled",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, ItemState::Pending | ItemState::InFlight)
    }
}

impl FromStr for ItemState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ItemState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown item state {s:?}"))
    }
}

impl fmt::Display for ItemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two ways to the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Realtime,
    Batch,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Realtime => "realtime",
            Lane::Batch => "batch",
        }
    }
}

/// How one attempt ended. Mirrors `attempts.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttemptOutcome {
    Succeeded,
    /// A rate-limit 429: waited out, not a failure.
    RateLimited,
    /// The account is refused (spend cap, usage limit, key): paused, not a failure.
    Blocked,
    /// A 5xx, 529, 408 or 409: backed off and sent again.
    Retryable,
    /// The connection failed before the request went out: it never reached the API.
    NotSent,
    /// Sent, but no usable answer came back: the API may have run it. The safe reading of an
    /// attempt not yet classified.
    #[default]
    Unknown,
    /// The request itself is wrong.
    Fatal,
    /// A batch expired before processing it.
    Expired,
    /// Its batch (or job) was canceled.
    Canceled,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::RateLimited => "rate_limited",
            AttemptOutcome::Blocked => "blocked",
            AttemptOutcome::Retryable => "retryable",
            AttemptOutcome::NotSent => "not_sent",
            AttemptOutcome::Unknown => "unknown",
            AttemptOutcome::Fatal => "fatal",
            AttemptOutcome::Expired => "expired",
            AttemptOutcome::Canceled => "canceled",
        }
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a batch is in its life. Mirrors `batches.state`: `submitting` (the intent, before the
/// API has it), then the API's `processing_status` as last seen, or `failed` (refused, given up,
/// dropped). A status this build does not know (the API may add one) is `Unrecognized`: the batch
/// is polled on until it says `ended`, and nothing else is done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    Submitting,
    InProgress,
    Canceling,
    Ended,
    Failed,
    Unrecognized,
}

impl BatchState {
    pub const ALL: [BatchState; 5] = [
        BatchState::Submitting,
        BatchState::InProgress,
        BatchState::Canceling,
        BatchState::Ended,
        BatchState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Submitting => "submitting",
            BatchState::InProgress => "in_progress",
            BatchState::Canceling => "canceling",
            BatchState::Ended => "ended",
            BatchState::Failed => "failed",
            BatchState::Unrecognized => "unrecognized",
        }
    }

    pub fn parse(s: &str) -> BatchState {
        BatchState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .unwrap_or(BatchState::Unrecognized)
    }
}

impl fmt::Display for BatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_states_round_trip_their_strings() {
        for s in BatchState::ALL {
            assert_eq!(BatchState::parse(s.as_str()), s);
        }
        assert_eq!(BatchState::parse("archived"), BatchState::Unrecognized);
    }

    #[test]
    fn item_states_round_trip_their_strings() {
        for s in ItemState::ALL {
            assert_eq!(s.as_str().parse::<ItemState>(), Ok(s));
        }
    }
}
