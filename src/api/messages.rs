//! `POST /v1/messages` and its free `count_tokens` endpoint.

use std::time::SystemTime;

use serde::Deserialize;
use serde_json::Value;

use super::classify::{classify, origin};
use super::{ApiClient, Sent};
use crate::model::answer::Outcome;

impl ApiClient {
    /// Sends one Messages request (`params` as written in the job file), classifies the answer
    /// and says who answered.
    pub async fn send_message(&self, params: &str) -> Sent {
        match self.post(&self.messages_url, without_stream(params)).await {
            Ok((status, headers, body)) => Sent {
                outcome: classify(status, &headers, &body, SystemTime::now()),
                origin: origin(&headers),
            },
            Err(outcome) => Sent {
                outcome,
                origin: Default::default(),
            },
        }
    }

    /// Counts a request's input tokens with the free `count_tokens` endpoint (its own RPM). The
    /// body keeps only the fields that endpoint takes (no `max_tokens`, sampling or metadata).
    /// Err: the call's outcome when it did not answer with a count.
    pub async fn count_tokens(&self, params: &str) -> Result<u64, Outcome> {
        let url = format!("{}/count_tokens", self.messages_url);
        #[derive(Deserialize)]
        struct Count {
            input_tokens: u64,
        }
        match self.post(&url, count_tokens_body(params)).await {
            Ok((200, _, body)) => serde_json::from_slice::<Count>(&body)
                .map(|c| c.input_tokens)
                .map_err(|e| Outcome::Unknown {
                    message: format!("count_tokens answered without a count: {e}"),
                }),
            Ok((status, headers, body)) => {
                Err(classify(status, &headers, &body, SystemTime::now()))
            }
            Err(outcome) => Err(outcome),
        }
    }
}

/// The fields `count_tokens` takes, from a Messages body.
pub fn count_tokens_body(params: &str) -> String {
    const COUNTED: [&str; 8] = [
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "cache_control",
    ];
    match serde_json::from_str::<Value>(params) {
        Ok(Value::Object(mut object)) => {
            object.retain(|k, _| COUNTED.contains(&k.as_str()));
            Value::Object(object).to_string()
        }
        _ => params.to_owned(),
    }
}

/// nightshift collects whole messages, so a `stream: true` in the job file is dropped before
/// sending (the results format holds complete messages).
pub fn without_stream(params: &str) -> String {
    if !params.contains("\"stream\"") {
        return params.to_owned();
    }
    match serde_json::from_str::<serde_json::Map<String, Value>>(params) {
        Ok(mut map) => {
            map.remove("stream");
            Value::Object(map).to_string()
        }
        Err(_) => params.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_dropped_before_sending() {
        let p = r#"{"model":"m","stream":true,"max_tokens":5}"#;
        let v: Value = serde_json::from_str(&without_stream(p)).expect("json");
        assert!(v.get("stream").is_none());
        assert_eq!(v["max_tokens"], 5);
        assert_eq!(without_stream(r#"{"model":"m"}"#), r#"{"model":"m"}"#);
    }
}
