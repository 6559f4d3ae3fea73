//! A Message Batch as the API reports it: its status and request counts.

/// The API's `request_counts`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchCounts {
    pub processing: i64,
    pub succeeded: i64,
    pub errored: i64,
    pub canceled: i64,
    pub expired: i64,
}

impl BatchCounts {
    pub fn total(&self) -> i64 {
        self.processing + self.succeeded + self.errored + self.canceled + self.expired
    }
}

/// What the API said of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiState {
    pub api_id: String,
    pub status: String,
    pub counts: BatchCounts,
    pub created_at: Option<i64>,
    pub ended_at: Option<i64>,
}
