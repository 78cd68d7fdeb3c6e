//! Secrets and secret references. A configured secret is written literally, as `env:NAME`, or as
//! `file:PATH`, and is resolved once when the config loads. The resolved value is wrapped so that
//! `Debug`, `Display` and serialisation never show it; code that needs the value calls
//! [`Secret::expose`], and nothing that exposes it may reach a log line.
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use std::fmt;

/// A resolved secret value. Cloning is cheap enough for config use.
#[derive(Clone)]
pub struct Secret(SecretString);

/// Why a secret reference could not be resolved. Never contains the secret itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("cannot read secret file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("the secret is empty")]
    Empty,
}

impl Secret {
    /// Wraps a value that is already resolved (tests, derived secrets).
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// Resolves `env:NAME`, `file:PATH` or a literal value.
    pub fn resolve(reference: &str) -> Result<Self, SecretError> {
        let value = resolve_reference(reference)?;
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self::new(value))
    }

    /// Resolves every `env:NAME` / `file:PATH` reference embedded in a larger string, such as
    /// the value of a URL's query parameter (`...send?key=env:OPS_ROBOT_KEY`). A reference runs
    /// from its prefix to the next `&`, `#` or end of string.
    pub fn resolve_embedded(template: &str) -> Result<Self, SecretError> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        loop {
            let next = ["env:", "file:"]
                .iter()
                .filter_map(|p| find_reference(rest, p).map(|i| (i, *p)))
                .min_by_key(|(i, _)| *i);
            let Some((start, _)) = next else {
                out.push_str(rest);
                break;
            };
            out.push_str(&rest[..start]);
            let tail = &rest[start..];
            let end = tail.find(['&', '#']).unwrap_or(tail.len());
            out.push_str(&resolve_reference(&tail[..end])?);
            rest = &tail[end..];
        }
        Ok(Self::new(out))
    }

    /// The secret's value. Callers must not log it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// A reference starts at the string's start or right after `=` (a query value), so that words
/// like `environment:` in a path are not taken for one.
fn find_reference(s: &str, prefix: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find(prefix) {
        let at = from + i;
        if at == 0 || s.as_bytes()[at - 1] == b'=' {
            return Some(at);
        }
        from = at + prefix.len();
    }
    None
}

fn resolve_reference(reference: &str) -> Result<String, SecretError> {
    if let Some(name) = reference.strip_prefix("env:") {
        std::env::var(name).map_err(|_| SecretError::MissingEnv(name.to_owned()))
    } else if let Some(path) = reference.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
            .map_err(|e| SecretError::File {
                path: path.to_owned(),
                reason: e.kind().to_string(),
            })
    } else {
        Ok(reference.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let reference = String::deserialize(d)?;
        Secret::resolve(&reference).map_err(serde::de::Error::custom)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.expose()
            .as_bytes()
            .ct_eq(other.expose().as_bytes())
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_env_and_file_references_resolve() {
        assert_eq!(Secret::resolve("plain").unwrap().expose(), "plain");
        std::env::set_var("SB_TEST_SECRET_A", "from-env");
        assert_eq!(
            Secret::resolve("env:SB_TEST_SECRET_A").unwrap().expose(),
            "from-env"
        );
        let path = std::env::temp_dir().join(format!("sb-secret-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let r = format!("file:{}", path.display());
        assert_eq!(Secret::resolve(&r).unwrap().expose(), "from-file");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn missing_env_names_the_variable_not_a_value() {
        let e = Secret::resolve("env:SB_TEST_SURELY_UNSET").unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable SB_TEST_SURELY_UNSET is not set"
        );
    }

    #[test]
    fn embedded_references_in_urls_resolve() {
        std::env::set_var("SB_TEST_ROBOT_KEY", "k-123");
        let s = Secret::resolve_embedded("https://h/send?key=env:SB_TEST_ROBOT_KEY&x=1").unwrap();
        assert_eq!(s.expose(), "https://h/send?key=k-123&x=1");
        let s = Secret::resolve_embedded("https://h/environment:a?b=c").unwrap();
        assert_eq!(s.expose(), "https://h/environment:a?b=c");
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}{s}").contains("hunter2"));
    }
}
