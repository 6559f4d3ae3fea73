//! The API keys: loaded from a file, the systemd credential or the environment, one per route;
//! never printed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::config::{ApiSettings, Config, DEFAULT_ROUTE, KeySource, RouteConfig};

/// The API key. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// From `api.api_key_file`, else the systemd credential `anthropic-api-key`, else
    /// `ANTHROPIC_API_KEY`. The error names what to set.
    #[allow(clippy::disallowed_methods)] // the key is read at the edge, here, and nowhere else
    pub fn load(settings: &ApiSettings) -> anyhow::Result<ApiKey> {
        if let Some(path) = &settings.api_key_file {
            return read_key_file(path, "`api.api_key_file`");
        }
        if let Ok(dir) = std::env::var("CREDENTIALS_DIRECTORY") {
            let path = Path::new(&dir).join("anthropic-api-key");
            // Absent: the key comes from elsewhere. There but unreadable: say so, not "no key".
            match std::fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                _ => return read_key_file(&path, "systemd's credential `anthropic-api-key`"),
            }
        }
        match std::env::var("ANTHROPIC_API_KEY") {
            Ok(key) if !key.trim().is_empty() => Ok(ApiKey(key.trim().to_owned())),
            _ => anyhow::bail!(
                "no API key: set ANTHROPIC_API_KEY, or `api.api_key_file` in the config, \
                 or give systemd the credential `anthropic-api-key`"
            ),
        }
    }

    /// The last four characters, to tell keys apart in diagnostics without revealing them (nothing
    /// at all of a key too short to spare four).
    pub fn fingerprint(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        if chars.len() < 16 {
            return "(short key)".to_owned();
        }
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("…{tail}")
    }

    /// The raw key, for tests that check it leaks nowhere.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The keys of the routes, by route name.
#[derive(Clone, Default)]
pub struct RouteKeys(BTreeMap<String, ApiKey>);

impl RouteKeys {
    /// The key of `route`, if it was loaded.
    pub fn get(&self, route: &str) -> Option<&ApiKey> {
        self.0.get(route)
    }

    /// Keys by route name (tests; an in-process daemon).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (impl Into<String>, ApiKey)>) -> RouteKeys {
        RouteKeys(pairs.into_iter().map(|(r, k)| (r.into(), k)).collect())
    }
}

/// One key for the route of a config without `[routes]` ([`DEFAULT_ROUTE`]): the demo, the
/// benchmarks and the tests run in-process daemons so.
impl From<ApiKey> for RouteKeys {
    fn from(key: ApiKey) -> RouteKeys {
        RouteKeys::from_pairs([(DEFAULT_ROUTE, key)])
    }
}

/// Route names and the keys' fingerprints only.
impl fmt::Debug for RouteKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(r, k)| (r, k.fingerprint())))
            .finish()
    }
}

/// The key of every route of `config` ([`load_route_key`] for each). The first route whose key
/// cannot be had stops it.
pub fn load_route_keys(config: &Config) -> anyhow::Result<RouteKeys> {
    let mut keys = BTreeMap::new();
    for route in &config.routes {
        keys.insert(route.name.clone(), load_route_key(config, route)?);
    }
    Ok(RouteKeys(keys))
}

/// The key of one route, from where its [`KeySource`] says. The error is a
/// [`crate::config::ConfigError`] (a configuration error, exit 78) naming the setting: the
/// route's `key_env` or `key_file`, or for the default route `api.api_key_file` or
/// `ANTHROPIC_API_KEY`.
#[allow(clippy::disallowed_methods)] // the key is read at the edge, here, and nowhere else
pub fn load_route_key(config: &Config, route: &RouteConfig) -> anyhow::Result<ApiKey> {
    let name = &route.name;
    let (setting, loaded) = match &route.key {
        KeySource::Env(var) => (
            format!("routes.{name}.key_env"),
            match std::env::var(var) {
                Ok(key) if !key.trim().is_empty() => Ok(ApiKey(key.trim().to_owned())),
                Err(std::env::VarError::NotUnicode(_)) => Err(anyhow::anyhow!(
                    "route `{name}`: {var} (its key_env) is not valid text"
                )),
                _ => Err(anyhow::anyhow!("route `{name}`: set {var} (its key_env)")),
            },
        ),
        KeySource::File(path) => (
            format!("routes.{name}.key_file"),
            read_key_file(path, &format!("route `{name}`'s key_file")),
        ),
        KeySource::Default => (
            if config.api.api_key_file.is_some() {
                "api.api_key_file"
            } else {
                "ANTHROPIC_API_KEY"
            }
            .to_owned(),
            ApiKey::load(&config.api),
        ),
    };
    loaded.map_err(|e| {
        config
            .invalid(&setting, format!("gives no key: {e}"))
            .into()
    })
}

fn read_key_file(path: &Path, what: &str) -> anyhow::Result<ApiKey> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the API key file {} ({what}): {e}; nightshift's user (uid {}) needs to read it",
            path.display(),
            rustix::process::geteuid().as_raw()
        )
    })?;
    let key = text.trim();
    anyhow::ensure!(
        !key.is_empty(),
        "the API key file {} ({what}) is empty",
        path.display()
    );
    Ok(ApiKey(key.to_owned()))
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_never_prints() {
        let key = ApiKey::new("sk-ant-secret-1234");
        assert_eq!(format!("{key:?}"), "ApiKey([redacted])");
        assert_eq!(key.fingerprint(), "…1234");
        assert_eq!(ApiKey::new("abcd").fingerprint(), "(short key)");
    }

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/ns/c.toml"), &Default::default()).expect("config")
    }

    #[test]
    fn route_keys_print_fingerprints_only() {
        let keys = RouteKeys::from_pairs([
            ("main", ApiKey::new("sk-ant-api03-secret-main-AAAA")),
            ("overflow", ApiKey::new("sk-ant-api03-secret-over-BBBB")),
        ]);
        assert_eq!(
            format!("{keys:?}"),
            r#"{"main": "…AAAA", "overflow": "…BBBB"}"#
        );
        assert_eq!(
            keys.get("main").map(ApiKey::fingerprint).as_deref(),
            Some("…AAAA")
        );
        assert!(keys.get("default").is_none());
        let one: RouteKeys = ApiKey::new("sk-test-key-0123456789").into();
        assert_eq!(
            one.get(DEFAULT_ROUTE).map(ApiKey::expose),
            Some("sk-test-key-0123456789")
        );
    }

    #[test]
    fn a_route_key_comes_from_its_file_and_errors_name_the_route() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("main"), "  sk-ant-api03-from-file-MAIN\n").expect("key");
        std::fs::write(dir.path().join("empty"), "\n").expect("key");
        let config = Config::parse(
            "[routes.main]\nkey_file = \"main\"\n\
             [routes.spare]\nkey_file = \"empty\"\n\
             [routes.gone]\nkey_file = \"missing\"\n",
            &dir.path().join("c.toml"),
            &Default::default(),
        )
        .expect("config");
        let route = |name: &str| {
            config
                .routes
                .iter()
                .find(|r| r.name == name)
                .expect("route")
        };
        let key = load_route_key(&config, route("main")).expect("key");
        assert_eq!(key.expose(), "sk-ant-api03-from-file-MAIN");

        let err = load_route_key(&config, route("spare")).expect_err("empty");
        assert!(
            err.downcast_ref::<crate::config::ConfigError>().is_some(),
            "exit 78"
        );
        let text = err.to_string();
        assert!(text.contains("`routes.spare.key_file`"), "{text}");
        assert!(text.contains("route `spare`"), "{text}");
        assert!(text.contains("is empty"), "{text}");

        let err = load_route_keys(&config)
            .expect_err("one key is missing")
            .to_string();
        assert!(err.contains("`routes.gone.key_file`"), "{err}");
        assert!(err.contains("route `gone`"), "{err}");
        assert!(
            err.contains(&dir.path().join("missing").display().to_string()),
            "{err}"
        );
        assert!(err.contains("uid "), "{err}");
    }

    #[test]
    fn an_unset_key_env_names_the_variable_and_the_route() {
        // A variable no environment sets.
        let config =
            config("[routes.overflow]\nkey_env = \"NIGHTSHIFT_TEST_KEY_NEVER_SET_3F9A\"\n");
        let err = load_route_keys(&config).expect_err("unset").to_string();
        assert!(
            err.contains("route `overflow`: set NIGHTSHIFT_TEST_KEY_NEVER_SET_3F9A (its key_env)"),
            "{err}"
        );
        assert!(err.contains("`routes.overflow.key_env`"), "{err}");
    }
}
