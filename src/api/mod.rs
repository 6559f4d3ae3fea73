//! The HTTP client for the Claude API: Messages ([`messages`]), Message Batches ([`batches`]),
//! the pure classification of answers ([`classify`]) and the key ([`key`]), which never prints.

pub mod batches;
pub mod classify;
pub mod key;
pub mod messages;

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};

use crate::config::ApiSettings;
use crate::model::answer::Outcome;

pub use key::ApiKey;

/// Sends Messages requests.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    messages_url: String,
    version: HeaderValue,
    key: HeaderValue,
}

impl ApiClient {
    pub fn new(settings: &ApiSettings, key: &ApiKey) -> anyhow::Result<ApiClient> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1024)
            .user_agent(concat!("nightshift/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut key = HeaderValue::from_str(key.expose()).map_err(|_| {
            anyhow::anyhow!("the API key contains characters not allowed in a header")
        })?;
        key.set_sensitive(true);
        Ok(ApiClient {
            http,
            messages_url: format!("{}/v1/messages", settings.base_url),
            version: HeaderValue::from_str(&settings.anthropic_version)?,
            key,
        })
    }

    /// POSTs a JSON body. Err: no status came back (the outcome says whether it was sent), or a
    /// 200 whose body was cut off. A failed status whose body was lost comes back with an empty
    /// body: the status alone tells what happened.
    pub(crate) async fn post(
        &self,
        url: &str,
        body: String,
    ) -> Result<(u16, HeaderMap, bytes::Bytes), Outcome> {
        let response = self
            .http
            .post(url)
            .header("x-api-key", self.key.clone())
            .header("anthropic-version", self.version.clone())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return Err(Outcome::Retryable {
                    status: None,
                    retry_after: None,
                    request_id: None,
                    message: format!("could not connect: {}", error_chain(&e)),
                });
            }
            Err(e) => {
                return Err(Outcome::Unknown {
                    message: format!("no answer after sending: {}", error_chain(&e)),
                });
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        match response.bytes().await {
            Ok(body) => Ok((status, headers, body)),
            Err(e) if status == 200 => Err(Outcome::Unknown {
                message: format!("answer cut off while reading: {}", error_chain(&e)),
            }),
            Err(_) => Ok((status, headers, bytes::Bytes::new())),
        }
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
