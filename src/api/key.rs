//! The API key: loaded from a file, the systemd credential or the environment; never printed.

use std::fmt;
use std::path::Path;

use crate::config::ApiSettings;

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
        "the API key file {} is empty",
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
}
