//! The HTTP client for the Claude API: Messages ([`messages`]), Message Batches ([`batches`]),
//! the pure classification of answers ([`classify`]) and the key ([`key`]), which never prints.

pub mod batches;
pub mod classify;
pub mod key;
pub mod messages;

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{ApiSettings, RouteConfig, RouteKind};
use crate::model::answer::{Origin, Outcome};

pub use key::{ApiKey, RouteKeys, load_route_key, load_route_keys};

/// Sends Messages requests (and the batch calls) along one route: its base URL, key and extra
/// headers.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    messages_url: String,
    version: HeaderValue,
    key: HeaderValue,
    route: String,
    key_id: String,
    host: String,
}

/// What a Messages call came to, and who answered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub outcome: Outcome,
    /// [`Origin::default`] when no answer came back.
    pub origin: Origin,
}

impl ApiClient {
    /// A client for `route`, with its key. `settings` gives the API version and the timeout (the
    /// base URL is the route's). The route's extra headers go with every request, marked
    /// sensitive, and are never logged.
    pub fn new(
        settings: &ApiSettings,
        route: &RouteConfig,
        key: &ApiKey,
    ) -> anyhow::Result<ApiClient> {
        // Only the Anthropic API's shape (and gateways that speak it) is built; Bedrock and
        // Vertex would be kinds of their own, with the model in the URL.
        match route.kind {
            RouteKind::Anthropic => {}
        }
        let name = &route.name;
        let url = reqwest::Url::parse(&route.base_url).map_err(|e| {
            anyhow::anyhow!(
                "route `{name}`: base_url {:?} is not a URL: {e}",
                route.base_url
            )
        })?;
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => anyhow::bail!(
                "route `{name}`: base_url {:?} names no host",
                route.base_url
            ),
        };
        let mut extra = HeaderMap::new();
        for (header, value) in &route.headers {
            let header = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                anyhow::anyhow!("route `{name}`: {header:?} is not a valid header name")
            })?;
            // The value is not quoted: it may be a secret.
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                anyhow::anyhow!(
                    "route `{name}`: the value of header {header} cannot be sent in a header"
                )
            })?;
            value.set_sensitive(true);
            extra.insert(header, value);
        }
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1024)
            .user_agent(concat!("nightshift/", env!("CARGO_PKG_VERSION")))
            .default_headers(extra)
            .build()?;
        let mut key_header = HeaderValue::from_str(key.expose()).map_err(|_| {
            anyhow::anyhow!(
                "route `{name}`: the API key contains characters not allowed in a header"
            )
        })?;
        key_header.set_sensitive(true);
        Ok(ApiClient {
            http,
            messages_url: format!("{}/v1/messages", route.base_url),
            version: HeaderValue::from_str(&settings.anthropic_version)?,
            key: key_header,
            route: name.clone(),
            key_id: key.fingerprint(),
            host,
        })
    }

    /// The name of the route this client calls along.
    pub fn route_name(&self) -> &str {
        &self.route
    }

    /// The key's fingerprint (`…WXYZ`), never the key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// `host[:port]` of the route's base URL, for diagnosis.
    pub fn host(&self) -> &str {
        &self.host
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::{Config, Env};

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/ns/nightshift.toml"), &Env::default()).expect("config")
    }

    #[test]
    fn a_client_names_its_route_key_and_host() {
        let config = config(
            "[routes.gw]\nkey_env = \"K\"\nbase_url = \"http://127.0.0.1:8080/anthropic\"\n\
             [routes.main]\nkey_env = \"K\"\n",
        );
        let key = ApiKey::new("sk-ant-api03-secret-WXYZ");
        let gw = ApiClient::new(&config.api, &config.routes[0], &key).expect("client");
        assert_eq!(gw.route_name(), "gw");
        assert_eq!(gw.key_id(), "…WXYZ");
        assert_eq!(gw.host(), "127.0.0.1:8080");
        assert_eq!(
            gw.messages_url,
            "http://127.0.0.1:8080/anthropic/v1/messages"
        );
        let main = ApiClient::new(&config.api, &config.routes[1], &key).expect("client");
        assert_eq!(main.host(), "api.anthropic.com");
    }

    /// One HTTP/1.1 exchange on a socket: the request as text, then `answer`.
    async fn answer_once(listener: tokio::net::TcpListener, answer: &'static str) -> String {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = socket.read(&mut chunk).await.expect("read");
            request.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&request).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if request.len() >= end + 4 + length {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        socket.write_all(answer.as_bytes()).await.expect("write");
        socket.shutdown().await.ok();
        String::from_utf8_lossy(&request).to_string()
    }

    #[tokio::test]
    async fn route_headers_are_sent_and_a_bare_429_is_not_the_apis() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let config = config(&format!(
            "[routes.gw]\nkey_env = \"K\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
             headers = {{ \"X-Gateway-Tenant\" = \"nightly\" }}\n"
        ));
        let client = ApiClient::new(
            &config.api,
            &config.routes[0],
            &ApiKey::new("sk-ant-api03-secret-WXYZ"),
        )
        .expect("client");
        let server = tokio::spawn(answer_once(
            listener,
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
             retry-after: 2\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        ));
        let sent = client.send_message(r#"{"model":"m","max_tokens":1}"#).await;
        let request = server.await.expect("server").to_ascii_lowercase();
        assert!(request.starts_with("post /v1/messages "), "{request}");
        assert!(
            request.contains("\r\nx-gateway-tenant: nightly\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nx-api-key: sk-ant-api03-secret-wxyz\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nanthropic-version: 2023-06-01\r\n"),
            "{request}"
        );
        assert!(
            matches!(sent.outcome, Outcome::RateLimited { .. }),
            "{:?}",
            sent.outcome
        );
        assert_eq!(
            sent.origin,
            Origin::default(),
            "no request-id, no anthropic-* header"
        );
    }

    #[tokio::test]
    async fn no_answer_has_the_default_origin() {
        // A port nothing listens on: bound, then closed.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let config = config(&format!(
            "[routes.a]\nkey_env = \"K\"\nbase_url = \"http://127.0.0.1:{port}\"\n"
        ));
        let client =
            ApiClient::new(&config.api, &config.routes[0], &ApiKey::new("sk-x")).expect("client");
        let sent = client.send_message("{}").await;
        assert!(
            matches!(sent.outcome, Outcome::Retryable { status: None, .. }),
            "{:?}",
            sent.outcome
        );
        assert_eq!(sent.origin, Origin::default());
    }
}
