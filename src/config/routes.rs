//! `[routes.<name>]`: where calls go, with which key and headers, and for which tenants.
//!
//! Without a `[routes]` table there is one route, [`DEFAULT_ROUTE`], that behaves exactly as
//! nightshift did before routes: `[api] base_url`, and the key from `[api] api_key_file`, the
//! systemd credential or `ANTHROPIC_API_KEY`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// The name of the one route a config without `[routes]` has.
pub const DEFAULT_ROUTE: &str = "default";

/// Headers nightshift sets itself, which a route may not set.
pub const RESERVED_HEADERS: [&str; 6] = [
    "x-api-key",
    "authorization",
    "anthropic-version",
    "content-type",
    "content-length",
    "host",
];

/// `[routes.<name>]` as written. Its `Debug` (below) leaves the header values out: they may be
/// a gateway's token.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    kind: Option<String>,
    key_env: Option<String>,
    key_file: Option<PathBuf>,
    base_url: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    tenants: Option<Vec<String>>,
}

impl std::fmt::Debug for RawRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRoute")
            .field("kind", &self.kind)
            .field("key_env", &self.key_env)
            .field("key_file", &self.key_file)
            .field("base_url", &self.base_url)
            .field(
                "headers",
                &self.headers.as_ref().map(|h| h.keys().collect::<Vec<_>>()),
            )
            .field("tenants", &self.tenants)
            .finish()
    }
}

/// One route: an endpoint, the key to call it with, extra headers, and who may use it.
#[derive(Clone, PartialEq)]
pub struct RouteConfig {
    /// The table's name (`[routes.<name>]`), or [`DEFAULT_ROUTE`].
    pub name: String,
    pub key: KeySource,
    /// Without a trailing slash; `[api] base_url` unless the route sets its own.
    pub base_url: String,
    /// Extra headers sent on every request of the route (names lowercased, sorted). The values
    /// may be secrets: they are never logged or printed, and `Debug` shows the names only.
    pub headers: Vec<(String, String)>,
    pub tenants: Tenants,
    pub kind: RouteKind,
}

/// Where a route's key comes from. Only `api::key` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `key_env`: the environment variable that holds the key.
    Env(String),
    /// `key_file`: a file holding the key (resolved against the config's folder).
    File(PathBuf),
    /// The route of a config without `[routes]`: `[api] api_key_file`, else the systemd
    /// credential `anthropic-api-key`, else `ANTHROPIC_API_KEY`.
    Default,
}

/// Who may use a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenants {
    /// `["*"]`, or no `tenants` key.
    All,
    /// These tenants (sorted, without duplicates; never empty).
    Only(Vec<String>),
}

/// What kind of endpoint a route is. Only the Anthropic API's shape (and gateways that speak
/// it) is implemented; Bedrock and Vertex would be further kinds (see the README's "Provider
/// routes (later)").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteKind {
    #[default]
    Anthropic,
}

impl RouteConfig {
    /// The route of a config without `[routes]`: today's key chain and `[api] base_url`.
    pub fn default_route(base_url: &str) -> RouteConfig {
        RouteConfig {
            name: DEFAULT_ROUTE.to_owned(),
            key: KeySource::Default,
            base_url: base_url.to_owned(),
            headers: Vec::new(),
            tenants: Tenants::All,
            kind: RouteKind::Anthropic,
        }
    }

    /// Whether `tenant` may use this route.
    pub fn allows(&self, tenant: &str) -> bool {
        match &self.tenants {
            Tenants::All => true,
            Tenants::Only(names) => names.iter().any(|n| n == tenant),
        }
    }
}

/// Header values may be secrets (a gateway's token): only their names are shown.
impl fmt::Debug for RouteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("RouteConfig")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("base_url", &self.base_url)
            .field("headers", &header_names)
            .field("tenants", &self.tenants)
            .field("kind", &self.kind)
            .finish()
    }
}

/// Checks `[routes]` and fills in the defaults; the routes come back sorted by name, never
/// empty. `api_base_url` is `[api] base_url` (already checked), `api_key_file` whether
/// `[api] api_key_file` is set, `resolve` makes a path relative to the config's folder absolute.
pub(super) fn routes_from_raw(
    raw: Option<BTreeMap<String, RawRoute>>,
    api_base_url: &str,
    api_key_file: bool,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Vec<RouteConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(vec![RouteConfig::default_route(api_base_url)]);
    };
    if raw.is_empty() {
        return Err(invalid(
            "routes",
            "is empty; add a route (e.g. [routes.main] with key_env = \"ANTHROPIC_API_KEY\"), \
             or leave [routes] out for the one default route"
                .into(),
        ));
    }
    if api_key_file {
        return Err(invalid(
            "api.api_key_file",
            "is set, and so is [routes]: give each route its key (key_env or key_file) and \
             remove api.api_key_file"
                .into(),
        ));
    }
    // A BTreeMap: the routes come out sorted by name.
    raw.into_iter()
        .map(|(name, route)| route_from_raw(name, route, api_base_url, resolve, invalid))
        .collect()
}

fn route_from_raw(
    name: String,
    raw: RawRoute,
    api_base_url: &str,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<RouteConfig, ConfigError> {
    let name_ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(invalid(
            &format!("routes.{name:?}"),
            "is not a route name: 1 to 32 letters, digits, `_` or `-`".into(),
        ));
    }
    let key = |field: &str| format!("routes.{name}.{field}");

    let kind = match raw.kind.as_deref() {
        None | Some("anthropic") => RouteKind::Anthropic,
        Some(other @ ("bedrock" | "vertex")) => {
            return Err(invalid(
                &key("kind"),
                format!(
                    "is {other:?}: not implemented yet; see the README's section on provider routes"
                ),
            ));
        }
        Some(other) => {
            return Err(invalid(
                &key("kind"),
                format!("is {other:?}; the kind implemented is \"anthropic\""),
            ));
        }
    };

    let key_source = match (raw.key_env, raw.key_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                &key("key_env"),
                "and key_file are both set; give exactly one of them".into(),
            ));
        }
        (None, None) => {
            return Err(invalid(
                &key("key_env"),
                "is missing; give the route its key with key_env (an environment variable) \
                 or key_file"
                    .into(),
            ));
        }
        (Some(var), None) => {
            let var_ok = var
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !var_ok {
                return Err(invalid(
                    &key("key_env"),
                    format!(
                        "is {var:?}; it must name an environment variable (letters, digits and \
                         `_`, not starting with a digit)"
                    ),
                ));
            }
            KeySource::Env(var)
        }
        (None, Some(path)) => {
            if path.as_os_str().is_empty() {
                return Err(invalid(
                    &key("key_file"),
                    "is empty; it must name the file holding the key".into(),
                ));
            }
            KeySource::File(resolve(path))
        }
    };

    let base_url = match raw.base_url {
        None => api_base_url.to_owned(),
        Some(url) => {
            let url = url.trim_end_matches('/').to_owned();
            let host = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
                return Err(invalid(
                    &key("base_url"),
                    format!(
                        "is {url:?}; it must start with https:// (or http:// for a local fake) \
                         and name a host"
                    ),
                ));
            }
            url
        }
    };

    let mut headers: Vec<(String, String)> = Vec::new();
    for (header, value) in raw.headers.unwrap_or_default() {
        let field = format!("routes.{name}.headers.{header:?}");
        if !is_header_name(&header) {
            return Err(invalid(
                &field,
                "is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)".into(),
            ));
        }
        let lower = header.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(invalid(
                &field,
                format!(
                    "is a header nightshift sets itself; a route may not set {}",
                    RESERVED_HEADERS.join(", ")
                ),
            ));
        }
        if !is_header_value(&value) {
            // The value may be a secret: it is not quoted.
            return Err(invalid(
                &field,
                "has a value a header cannot hold (visible ASCII, spaces and tabs only; \
                 the value is not shown)"
                    .into(),
            ));
        }
        if headers.iter().any(|(n, _)| *n == lower) {
            return Err(invalid(
                &field,
                "is set twice (header names ignore case)".into(),
            ));
        }
        headers.push((lower, value));
    }
    headers.sort();

    let tenants = match raw.tenants {
        None => Tenants::All,
        Some(list) if list.is_empty() => {
            return Err(invalid(
                &key("tenants"),
                "is empty; list the tenants who may use the route, or [\"*\"] for everyone".into(),
            ));
        }
        Some(list) if list.iter().all(|t| t == "*") => Tenants::All,
        Some(list) if list.iter().any(|t| t == "*") => {
            return Err(invalid(
                &key("tenants"),
                "mixes \"*\" (everyone) with tenant names; give [\"*\"] alone, or the names".into(),
            ));
        }
        Some(mut list) => {
            for tenant in &list {
                crate::model::job::check_tenant(tenant).map_err(|e| invalid(&key("tenants"), e))?;
            }
            list.sort();
            list.dedup();
            Tenants::Only(list)
        }
    };

    Ok(RouteConfig {
        name,
        key: key_source,
        base_url,
        headers,
        tenants,
        kind,
    })
}

/// An HTTP header name: a token (RFC 9110 §5.6.2).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value the HTTP client takes from text: visible ASCII, spaces and tabs.
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, Env};
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/ns/nightshift.toml"), &Env::default())
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("must be refused").to_string()
    }

    const EXAMPLE: &str = r#"
        [routes.main]
        key_env = "ANTHROPIC_API_KEY"
        [routes.overflow]
        key_env = "NIGHTSHIFT_KEY_OVERFLOW"
        tenants = ["support-team"]
    "#;

    #[test]
    fn the_readme_example_parses_with_defaults_filled() {
        let config = parse(EXAMPLE).expect("valid");
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["main", "overflow"]);
        let main = &config.routes[0];
        assert_eq!(main.key, KeySource::Env("ANTHROPIC_API_KEY".into()));
        assert_eq!(main.base_url, DEFAULT_BASE);
        assert!(main.headers.is_empty());
        assert_eq!(main.tenants, Tenants::All);
        assert_eq!(main.kind, RouteKind::Anthropic);
        let overflow = &config.routes[1];
        assert_eq!(
            overflow.key,
            KeySource::Env("NIGHTSHIFT_KEY_OVERFLOW".into())
        );
        assert_eq!(overflow.tenants, Tenants::Only(vec!["support-team".into()]));
    }

    const DEFAULT_BASE: &str = "https://api.anthropic.com";

    #[test]
    fn every_key_of_a_route_parses() {
        let config = parse(
            r#"
            [api]
            base_url = "http://127.0.0.1:9999"
            [routes.gw]
            kind = "anthropic"
            key_file = "keys/gw"
            base_url = "https://gateway.example.com/anthropic/"
            headers = { "X-Gateway-Tenant" = "nightly", "x-b" = "" }
            tenants = ["b", "a", "b"]
            [routes.local]
            key_file = "/run/credentials/nightshift.service/local"
            tenants = ["*"]
            "#,
        )
        .expect("valid");
        let gw = &config.routes[0];
        assert_eq!(gw.key, KeySource::File("/etc/ns/keys/gw".into()));
        assert_eq!(gw.base_url, "https://gateway.example.com/anthropic");
        assert_eq!(
            gw.headers,
            vec![
                ("x-b".to_owned(), String::new()),
                ("x-gateway-tenant".to_owned(), "nightly".to_owned())
            ]
        );
        assert_eq!(gw.tenants, Tenants::Only(vec!["a".into(), "b".into()]));
        let local = &config.routes[1];
        assert_eq!(local.name, "local");
        assert_eq!(local.base_url, "http://127.0.0.1:9999", "[api] base_url");
        assert_eq!(
            local.key,
            KeySource::File("/run/credentials/nightshift.service/local".into())
        );
        assert_eq!(local.tenants, Tenants::All);
    }

    #[test]
    fn without_routes_there_is_one_default_route_as_before() {
        let config = parse("").expect("valid");
        assert_eq!(config.routes.len(), 1);
        let route = &config.routes[0];
        assert_eq!(route.name, DEFAULT_ROUTE);
        assert_eq!(route.key, KeySource::Default);
        assert_eq!(route.base_url, DEFAULT_BASE);
        assert!(route.headers.is_empty());
        assert_eq!(route.tenants, Tenants::All);

        let env = Env {
            anthropic_base_url: Some("http://127.0.0.1:7/".into()),
            ..Env::default()
        };
        let config = Config::parse("", Path::new("c.toml"), &env).expect("valid");
        assert_eq!(config.routes[0].base_url, "http://127.0.0.1:7");
        assert_eq!(config.routes[0].base_url, config.api.base_url);
        let config = Config::locate(None, &env).expect("built-in defaults");
        assert_eq!(config.routes[0].name, DEFAULT_ROUTE);
    }

    #[test]
    fn each_mistake_names_its_setting() {
        let cases = [
            ("[routes]", "`routes`"),
            (
                "[api]\napi_key_file = \"k\"\n[routes.a]\nkey_env = \"K\"",
                "`api.api_key_file`",
            ),
            ("[routes.a]\nbase_url = \"https://x\"", "`routes.a.key_env`"),
            (
                "[routes.a]\nkey_env = \"K\"\nkey_file = \"f\"",
                "`routes.a.key_env`",
            ),
            ("[routes.a]\nkey_env = \"1K\"", "`routes.a.key_env`"),
            ("[routes.a]\nkey_env = \"\"", "`routes.a.key_env`"),
            ("[routes.a]\nkey_file = \"\"", "`routes.a.key_file`"),
            ("[routes.\"a b\"]\nkey_env = \"K\"", "`routes.\"a b\"`"),
            (
                "[routes.abcdefghijabcdefghijabcdefghijabc]\nkey_env = \"K\"",
                "`routes.\"abcdefghijabcdefghijabcdefghijabc\"`",
            ),
            (
                "[routes.a]\nkey_env = \"K\"\nbase_url = \"ftp://x\"",
                "`routes.a.base_url`",
            ),
            (
                "[routes.a]\nkey_env = \"K\"\nbase_url = \"https://\"",
                "`routes.a.base_url`",
            ),
            (
                "[routes.a]\nkey_env = \"K\"\nheaders = { \"x y\" = \"v\" }",
                "`routes.a.headers.\"x y\"`",
            ),
            (
                "[routes.a]\nkey_env = \"K\"\nheaders = { \"x-a\" = \"1\", \"X-A\" = \"2\" }",
                "`routes.a.headers.\"x-a\"`",
            ),
            (
                "[routes.a]\nkey_env = \"K\"\ntenants = []",
                "`routes.a.tenants`",
            ),
            (
                "[routes.a]\nkey_env = \"K\"\ntenants = [\"*\", \"acme\"]",
                "`routes.a.tenants`",
            ),
            (
                "[routes.a]\nkey_env = \"K\"\ntenants = [\"\"]",
                "`routes.a.tenants`",
            ),
            (
                "[routes.a]\nkey_env = \"K\"\nkind = \"azure\"",
                "`routes.a.kind`",
            ),
        ];
        for (text, key) in cases {
            let err = error(text);
            assert!(err.contains(key), "{text:?} should name {key}: {err}");
        }
    }

    #[test]
    fn headers_nightshift_sets_are_refused_by_name() {
        for header in [
            "x-api-key",
            "Authorization",
            "anthropic-version",
            "Content-Type",
            "content-length",
            "Host",
        ] {
            let err = error(&format!(
                "[routes.a]\nkey_env = \"K\"\nheaders = {{ \"{header}\" = \"v\" }}"
            ));
            assert!(
                err.contains(&format!("`routes.a.headers.\"{header}\"`")),
                "{err}"
            );
            assert!(err.contains("nightshift sets itself"), "{err}");
        }
    }

    #[test]
    fn a_bad_header_value_is_not_quoted() {
        let err =
            error("[routes.a]\nkey_env = \"K\"\nheaders = { \"x-token\" = \"secret\\nvalue\" }");
        assert!(err.contains("`routes.a.headers.\"x-token\"`"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn unknown_fields_and_kinds_are_errors() {
        let err = error("[routes.a]\nkey_env = \"K\"\nkey = \"sk-ant-secret\"");
        assert!(err.contains("unknown field `key`"), "{err}");
        assert!(!err.contains("sk-ant-secret"), "{err}");
        for kind in ["bedrock", "vertex"] {
            let err = error(&format!("[routes.a]\nkey_env = \"K\"\nkind = \"{kind}\""));
            assert!(err.contains("`routes.a.kind`"), "{err}");
            assert!(err.contains("not implemented yet"), "{err}");
            assert!(err.contains("provider routes"), "{err}");
        }
    }

    #[test]
    fn debug_shows_header_names_not_values() {
        let config = parse(
            "[routes.gw]\nkey_env = \"K\"\nheaders = { \"x-gateway-token\" = \"gw-secret-123\" }",
        )
        .expect("valid");
        for text in [
            format!("{:?}", config.routes[0]),
            format!("{:#?}", config.routes[0]),
            format!("{config:?}"),
        ] {
            assert!(text.contains("x-gateway-token"), "{text}");
            assert!(!text.contains("gw-secret-123"), "{text}");
        }
    }

    #[test]
    fn allows_follows_tenants() {
        let config = parse(EXAMPLE).expect("valid");
        let (main, overflow) = (&config.routes[0], &config.routes[1]);
        assert!(main.allows("anyone"));
        assert!(overflow.allows("support-team"));
        assert!(!overflow.allows("support"));
        assert!(!overflow.allows("default"));
    }
}
