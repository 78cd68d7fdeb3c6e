//! The auditors' part of the configuration: `[audit]` (the key every role seals with, see
//! [`crate::seal`]) and `[console]` (the web console's listener, users and API tokens), and
//! [`AuditorConfig`], the lighter view of the same file that `switchboard dlq …` and
//! `switchboard console` load: only `[broker]`, `[redis]`, `[audit]`, `[console]`,
//! `[telemetry]` and the ids of sources and targets. Sections it does not read are not parsed,
//! so their `env:`/`file:` secrets (Dify keys, platform secrets) need not be resolvable where
//! the auditors' tools run. Owns these types, their defaults and their checks; never what the
//! console does with them.
use crate::config::{
    figment_of, BrokerConfig, ConfigError, ConfigIssue, RedisConfig, TelemetryConfig,
};
use crate::seal::{Keyring, MIN_KEY_BYTES};
use crate::secret::Secret;
use crate::units;
use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// `[audit]`: sealing what the roles publish and the replay record.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The key every role seals events, jobs, dead letters and replay records with (at least
    /// 32 bytes; `env:`/`file:` as every secret). Unset: nothing is sealed or checked.
    pub key: Option<Secret>,
    /// Keys that sealed earlier records: they still verify, never seal (key rotation).
    pub previous_keys: Vec<Secret>,
    /// Workers and dispatchers refuse (dead-letter unprocessed) a message whose seal does not
    /// verify. Turn off only while queues still hold messages from before `key` was set.
    pub require_seals: bool,
    /// A checkpoint record is added to the replay record at least this often.
    #[serde(with = "units::duration")]
    pub checkpoint_every: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            key: None,
            previous_keys: Vec::new(),
            require_seals: true,
            checkpoint_every: Duration::from_secs(24 * 3600),
        }
    }
}

impl AuditConfig {
    /// The keyring, when a key is configured.
    pub fn keyring(&self) -> Option<Keyring> {
        self.key
            .as_ref()
            .map(|k| Keyring::new(k, &self.previous_keys, self.require_seals))
    }

    /// Problems with the keys.
    pub fn issues(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let short = |s: &Secret| s.expose().len() < MIN_KEY_BYTES;
        if self.key.as_ref().is_some_and(short) {
            issues.push(ConfigIssue {
                key: "audit.key".into(),
                problem: format!(
                    "must be at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -base64 32`)"
                ),
            });
        }
        if self.previous_keys.iter().any(short) {
            issues.push(ConfigIssue {
                key: "audit.previous_keys".into(),
                problem: format!("each must be at least {MIN_KEY_BYTES} bytes"),
            });
        }
        if self.key.is_none() && !self.previous_keys.is_empty() {
            issues.push(ConfigIssue {
                key: "audit.previous_keys".into(),
                problem: "needs audit.key (the key that seals from now on)".into(),
            });
        }
        if self.checkpoint_every < Duration::from_secs(60) {
            issues.push(ConfigIssue {
                key: "audit.checkpoint_every".into(),
                problem: "must be at least 1m".into(),
            });
        }
        issues
    }
}

/// What a console user or API token may do; each role may do everything the one before may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleRole {
    /// Read everything: letters, stats, exports, the replay record, where an event is.
    Viewer,
    /// And replay (with a dry-run preview).
    Replayer,
    /// And replay what was already replayed (`force`) or what does not verify.
    Admin,
}

impl ConsoleRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleRole::Viewer => "viewer",
            ConsoleRole::Replayer => "replayer",
            ConsoleRole::Admin => "admin",
        }
    }
}

/// One `[[console.users]]` login.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleUser {
    pub name: String,
    pub role: ConsoleRole,
    /// An argon2 PHC string (`switchboard console hash-password` makes one), or a reference
    /// to one (`env:`/`file:`).
    pub password_hash: Secret,
}

/// One `[[console.tokens]]` API token, kept as its SHA-256 only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleToken {
    /// Who the token is for, as the replay record names it (`token:<name>`).
    pub name: String,
    pub role: ConsoleRole,
    /// Hex SHA-256 of the token (`switchboard console new-token` prints both).
    pub sha256: String,
}

/// `[console]`: the auditors' web console and API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    pub listen: SocketAddr,
    /// Session cookies carry `Secure`. Turn off only to use the console over plain HTTP on
    /// localhost (browsers then drop a Secure cookie).
    pub secure_cookies: bool,
    /// A session lasts this long after sign-in.
    #[serde(with = "units::duration")]
    pub session_ttl: Duration,
    /// Failed sign-ins allowed per user (and, four times that, per client address) in
    /// `login_window`; more get 429 until the window passes.
    pub login_attempts: u32,
    #[serde(with = "units::duration")]
    pub login_window: Duration,
    /// Rows on one page of the list.
    pub page_size: usize,
    pub users: Vec<ConsoleUser>,
    pub tokens: Vec<ConsoleToken>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9093)),
            secure_cookies: true,
            session_ttl: Duration::from_secs(12 * 3600),
            login_attempts: 5,
            login_window: Duration::from_secs(15 * 60),
            page_size: 50,
            users: Vec::new(),
            tokens: Vec::new(),
        }
    }
}

impl ConsoleConfig {
    pub fn issues(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut push = |key: String, problem: &str| {
            issues.push(ConfigIssue {
                key,
                problem: problem.into(),
            })
        };
        let mut names = std::collections::HashSet::new();
        for u in &self.users {
            if u.name.trim().is_empty() || u.name.contains(':') {
                push(
                    "console.users.name".into(),
                    "must be non-empty, without `:`",
                );
            } else if !names.insert(u.name.as_str()) {
                push(format!("console.users.{}", u.name), "is listed twice");
            }
            if !u.password_hash.expose().starts_with("$argon2") {
                push(
                    format!("console.users.{}.password_hash", u.name),
                    "must be an argon2 hash (`switchboard console hash-password` makes one)",
                );
            }
        }
        for t in &self.tokens {
            if t.sha256.len() != 64 || !t.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                push(
                    format!("console.tokens.{}.sha256", t.name),
                    "must be 64 hex digits (`switchboard console new-token` prints it)",
                );
            }
        }
        if self.login_attempts == 0 {
            push("console.login_attempts".into(), "must be at least 1");
        }
        if !(1..=1000).contains(&self.page_size) {
            push("console.page_size".into(), "must be 1 to 1000");
        }
        issues
    }
}

/// A `[[sources]]` entry as the auditors see it: where its answers go, nothing secret.
#[derive(Debug, Clone, Deserialize)]
pub struct SourceRef {
    pub id: String,
    #[serde(default)]
    pub reply: bool,
    #[serde(default)]
    pub targets: Vec<String>,
}

/// A `[[targets]]` entry as the auditors see it: its id.
#[derive(Debug, Clone, Deserialize)]
pub struct TargetRef {
    pub id: String,
}

/// The part of the config the auditors' tools load (see the module doc). Top-level sections
/// it does not know are skipped, not refused: the full [`crate::Config`] checks those.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditorConfig {
    pub broker: BrokerConfig,
    pub redis: RedisConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub sources: Vec<SourceRef>,
    #[serde(default)]
    pub targets: Vec<TargetRef>,
}

impl From<&crate::Config> for AuditorConfig {
    /// The auditors' view of a whole config (`switchboard all`, tests).
    fn from(c: &crate::Config) -> Self {
        Self {
            broker: c.broker.clone(),
            redis: c.redis.clone(),
            audit: c.audit.clone(),
            console: c.console.clone(),
            telemetry: c.telemetry.clone(),
            sources: c
                .sources
                .iter()
                .map(|s| SourceRef {
                    id: s.id.clone(),
                    reply: s.reply,
                    targets: s.targets.clone(),
                })
                .collect(),
            targets: c
                .targets
                .iter()
                .map(|t| TargetRef { id: t.id.clone() })
                .collect(),
        }
    }
}

impl AuditorConfig {
    /// Loads the auditors' sections of a config file, with the same `SWITCHBOARD_…`
    /// overrides as [`crate::Config::load`], and checks them.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::one(
                "--config",
                format!("no config file at {}", path.display()),
            ));
        }
        Self::from_figment(Figment::from(Toml::file(path)))
    }

    /// The same from TOML text (tests).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Self = figment_of(figment)?;
        let mut issues = config.audit.issues();
        if let Some(c) = &config.console {
            issues.extend(c.issues());
        }
        for (key, prefix) in [
            ("broker.prefix", &config.broker.prefix),
            ("redis.prefix", &config.redis.prefix),
        ] {
            if prefix.is_empty() {
                issues.push(ConfigIssue {
                    key: key.into(),
                    problem: "must not be empty".into(),
                });
            }
        }
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(issues))
        }
    }

    /// Every destination name a job of `source` may have had: `reply` and the source's
    /// targets (all targets when the source is no longer configured).
    pub fn destinations_of(&self, source: &str) -> Vec<String> {
        let mut out = vec!["reply".to_owned()];
        match self.sources.iter().find(|s| s.id == source) {
            Some(s) => out.extend(s.targets.iter().cloned()),
            None => out.extend(self.targets.iter().map(|t| t.id.clone())),
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [broker]
        url = "amqp://guest:guest@127.0.0.1:5672/%2f"
        [redis]
        url = "redis://127.0.0.1:6379"
        [[apps]]
        id = "support"
        base_url = "http://127.0.0.1:5001/v1"
        api_key = "env:SB_TEST_AUDITORS_SURELY_UNSET_DIFY_KEY"
        kind = "chat"
        [[sources]]
        id = "crm"
        platform = "bearer"
        token = "env:SB_TEST_AUDITORS_SURELY_UNSET_TOKEN"
        app = "support"
        targets = ["hook"]
        [[targets]]
        id = "hook"
        kind = "webhook"
        url = "http://127.0.0.1:9/x"
    "#;

    #[test]
    fn the_auditors_view_needs_none_of_the_platforms_secrets() {
        // The full config cannot load: the Dify key's variable is not set.
        assert!(crate::Config::from_toml(BASE).is_err());
        let c = AuditorConfig::from_toml(BASE).unwrap();
        assert!(c.audit.key.is_none() && c.console.is_none());
        assert_eq!(c.destinations_of("crm"), vec!["reply", "hook"]);
        assert_eq!(c.destinations_of("gone"), vec!["reply", "hook"]);
    }

    #[test]
    fn audit_and_console_sections_are_checked() {
        let text = format!(
            "{BASE}\n[audit]\nkey = \"short\"\n[console]\npage_size = 0\n[[console.users]]\nname = \"a\"\nrole = \"viewer\"\npassword_hash = \"plain\"\n[[console.tokens]]\nname = \"t\"\nrole = \"admin\"\nsha256 = \"xyz\""
        );
        let e = AuditorConfig::from_toml(&text).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "audit.key",
                "console.users.a.password_hash",
                "console.tokens.t.sha256",
                "console.page_size"
            ],
            "{e}"
        );
        let e = AuditorConfig::from_toml(&format!("{BASE}\n[console]\nlisen = \"x\"")).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
    }

    #[test]
    fn a_key_makes_a_keyring_and_roles_are_ordered() {
        let text = format!(
            "{BASE}\n[audit]\nkey = \"0123456789abcdef0123456789abcdef\"\nrequire_seals = false"
        );
        let c = AuditorConfig::from_toml(&text).unwrap();
        let ring = c.audit.keyring().unwrap();
        assert!(!ring.requires_seals());
        assert!(ConsoleRole::Viewer < ConsoleRole::Replayer);
        assert!(ConsoleRole::Replayer < ConsoleRole::Admin);
    }
}
