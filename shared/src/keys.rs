//! The one reader of a block's own keys: a source's platform keys (read by the ingress for the
//! platform and by the dispatcher for the reply channel) and a target's kind keys. Every problem
//! is collected and named by its full key (`sources.wecom.corp_secret`), so that one config check
//! reports them all. Secrets are resolved here (`env:`/`file:`, also embedded in URLs) and come
//! out as [`Secret`]s; no value is ever put into a problem's text.
//!
//! **One rule for an empty value.** A plain value set to `""` is the same as leaving the key out:
//! a template or an override that blanked a key means "not set", and a required key so blanked is
//! reported missing. A secret set to `""`, or whose reference resolves to nothing, is an error,
//! never "not set": reading it as absent could switch a check off (Feishu's `encrypt_key`). The
//! one key whose empty value means something — WeCom's `receive_id`, `""` for an AI bot — is read
//! with [`Keys::required_str_may_be_empty`].
//!
//! Which keys a block may hold is declared by whoever reads it: a target kind checks its own with
//! [`Keys::only`]; a source block is read by two roles, so the binary checks it against the union
//! of what both declare ([`unknown`]).
use crate::config::{ConfigIssue, SourceConfig, TargetConfig};
use crate::Secret;

/// Reads one block's keys, collecting problems.
pub struct Keys<'a> {
    table: &'a toml::Table,
    /// The block's path: `sources.<id>` or `targets.<id>`.
    owner: String,
    /// Whose keys these are, for messages: "platform `wecom`", "kind `slack`".
    what: String,
    issues: Vec<ConfigIssue>,
}

/// The keys of `table` that are not in `known`, each a problem naming it: a typo must not pass
/// silently.
pub fn unknown(owner: &str, what: &str, table: &toml::Table, known: &[&str]) -> Vec<ConfigIssue> {
    let listed = if known.is_empty() {
        "none".to_owned()
    } else {
        known.join(", ")
    };
    table
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| ConfigIssue {
            key: format!("{owner}.{k}"),
            problem: format!("is not a key of {what} (known: {listed})"),
        })
        .collect()
}

impl<'a> Keys<'a> {
    /// `owner` is the block's config path; `what` says whose keys they are, for messages.
    pub fn new(owner: impl Into<String>, what: impl Into<String>, table: &'a toml::Table) -> Self {
        Self {
            table,
            owner: owner.into(),
            what: what.into(),
            issues: Vec::new(),
        }
    }

    /// A source's keys, as its platform reads them.
    pub fn source(source: &'a SourceConfig) -> Self {
        Self::new(
            format!("sources.{}", source.id),
            format!("platform `{}`", source.platform),
            &source.settings,
        )
    }

    /// A source's keys, as its reply channel (`reply = true`) reads them.
    pub fn reply(source: &'a SourceConfig) -> Self {
        Self::new(
            format!("sources.{}", source.id),
            "replies (`reply = true`)",
            &source.settings,
        )
    }

    /// A target's keys, as its kind reads them.
    pub fn target(target: &'a TargetConfig) -> Self {
        Self::new(
            format!("targets.{}", target.id),
            format!("kind `{}`", target.kind),
            &target.settings,
        )
    }

    /// The full name of a key, as problems print it.
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.owner)
    }

    /// Records a problem with a key.
    pub fn issue(&mut self, key: &str, problem: impl Into<String>) {
        let key = self.key(key);
        self.issues.push(ConfigIssue {
            key,
            problem: problem.into(),
        });
    }

    /// Whether a problem with the key was recorded already.
    pub fn has_problem(&self, key: &str) -> bool {
        let key = self.key(key);
        self.issues.iter().any(|i| i.key == key)
    }

    /// Refuses keys not in `known` (see [`unknown`]).
    pub fn only(&mut self, known: &[&str]) {
        let mut found = unknown(&self.owner, &self.what, self.table, known);
        self.issues.append(&mut found);
    }

    /// The key's value, an empty string counting as absent (the module's one rule).
    pub fn value(&self, key: &str) -> Option<&'a toml::Value> {
        match self.table.get(key)? {
            toml::Value::String(s) if s.is_empty() => None,
            v => Some(v),
        }
    }

    /// Whether the key is set (to anything but an empty string).
    pub fn has(&self, key: &str) -> bool {
        self.value(key).is_some()
    }

    fn required(&mut self, key: &str) {
        let problem = format!("is required for {}", self.what);
        self.issue(key, problem);
    }

    /// An optional string.
    pub fn str(&mut self, key: &str) -> Option<String> {
        match self.value(key)? {
            toml::Value::String(s) => Some(s.clone()),
            other => {
                self.issue(key, format!("must be a string, not {}", other.type_str()));
                None
            }
        }
    }

    /// A required string; absent or empty is a problem.
    pub fn required_str(&mut self, key: &str) -> Option<String> {
        if !self.has(key) {
            self.required(key);
            return None;
        }
        self.str(key)
    }

    /// A required string that may be empty: the one exception to the module's rule, for a key
    /// whose empty value means something (WeCom's `receive_id`: `""` for an AI bot).
    pub fn required_str_may_be_empty(&mut self, key: &str) -> Option<String> {
        match self.table.get(key) {
            Some(toml::Value::String(s)) if s.is_empty() => Some(String::new()),
            Some(_) => self.required_str(key),
            None => {
                self.required(key);
                None
            }
        }
    }

    /// A string or an integer, as text (ids written either way: `agent_id = 1000002`).
    pub fn id(&mut self, key: &str) -> Option<String> {
        match self.value(key)? {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(i) => Some(i.to_string()),
            other => {
                let problem = format!("must be a string or an integer, not {}", other.type_str());
                self.issue(key, problem);
                None
            }
        }
    }

    pub fn required_id(&mut self, key: &str) -> Option<String> {
        if !self.has(key) {
            self.required(key);
            return None;
        }
        self.id(key)
    }

    /// `false` when absent.
    pub fn bool(&mut self, key: &str) -> bool {
        match self.value(key) {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(other) => {
                let problem = format!("must be true or false, not {}", other.type_str());
                self.issue(key, problem);
                false
            }
        }
    }

    /// A list of strings, empty when absent.
    pub fn list(&mut self, key: &str) -> Vec<String> {
        match self.value(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => {
                let strings: Vec<String> = items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect();
                if strings.len() != items.len() {
                    self.issue(key, "must be a list of strings");
                }
                strings
            }
            Some(other) => {
                let problem = format!("must be a list of strings, not {}", other.type_str());
                self.issue(key, problem);
                Vec::new()
            }
        }
    }

    /// One of `choices`, `choices[0]` when absent.
    pub fn choice(&mut self, key: &str, choices: &[&'static str]) -> &'static str {
        let default = choices.first().copied().unwrap_or_default();
        match self.str(key) {
            None => default,
            Some(s) => match choices.iter().find(|c| **c == s) {
                Some(c) => c,
                None => {
                    self.issue(key, format!("`{s}` is not one of: {}", choices.join(", ")));
                    default
                }
            },
        }
    }

    /// An optional secret (`env:`/`file:` reference or literal); set but empty is a problem.
    pub fn secret(&mut self, key: &str) -> Option<Secret> {
        let reference = match self.table.get(key)? {
            toml::Value::String(s) => s.clone(),
            other => {
                self.issue(key, format!("must be a string, not {}", other.type_str()));
                return None;
            }
        };
        match Secret::resolve(&reference) {
            Ok(s) => Some(s),
            Err(e) => {
                self.issue(key, e.to_string());
                None
            }
        }
    }

    /// A required secret.
    pub fn required_secret(&mut self, key: &str) -> Option<Secret> {
        if !self.table.contains_key(key) {
            self.required(key);
            return None;
        }
        self.secret(key)
    }

    /// A required http(s) URL that may carry a credential (`...?key=env:NAME`), kept as a secret.
    pub fn secret_url(&mut self, key: &str) -> Option<Secret> {
        let raw = self.required_str(key)?;
        match Secret::resolve_embedded(&raw) {
            Ok(s) if is_http_url(s.expose()) => Some(s),
            Ok(_) => {
                self.issue(key, "must be an http:// or https:// URL");
                None
            }
            Err(e) => {
                self.issue(key, e.to_string());
                None
            }
        }
    }

    /// A base URL without a trailing `/`, `default` when absent.
    pub fn base_url(&mut self, key: &str, default: &str) -> String {
        let v = self.str(key).unwrap_or_else(|| default.to_owned());
        if !is_http_url(&v) {
            self.issue(key, "must be an http:// or https:// URL");
        }
        v.trim_end_matches('/').to_owned()
    }

    /// The built value if no problem was found, else every problem. `value` should be `None`
    /// only when a problem was recorded; if it is not, the block is reported incomplete.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, Vec<ConfigIssue>> {
        match value {
            Some(v) if self.issues.is_empty() => Ok(v),
            _ if !self.issues.is_empty() => Err(self.issues),
            _ => Err(vec![ConfigIssue {
                key: self.owner,
                problem: "is incomplete".into(),
            }]),
        }
    }
}

fn is_http_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn problems_are_collected_and_named_by_full_key() {
        let t = table(
            r#"
            url = "ftp://x"
            msgtype = "gif"
            mentioned_list = [1]
            secret = "env:SB_SURELY_UNSET_KEYS_TEST"
            tpyo = 1
            "#,
        );
        let mut k = Keys::new("targets.ops", "kind `wecom_robot`", &t);
        k.only(&["url", "msgtype", "mentioned_list", "secret"]);
        k.secret_url("url");
        assert_eq!(k.choice("msgtype", &["text", "markdown"]), "text");
        k.list("mentioned_list");
        k.secret("secret");
        k.required_str("agent");
        let issues = k.finish(Some(())).unwrap_err();
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "targets.ops.tpyo",
                "targets.ops.url",
                "targets.ops.msgtype",
                "targets.ops.mentioned_list",
                "targets.ops.secret",
                "targets.ops.agent"
            ]
        );
        assert_eq!(
            issues[0].problem,
            "is not a key of kind `wecom_robot` (known: url, msgtype, mentioned_list, secret)"
        );
        assert_eq!(issues[5].problem, "is required for kind `wecom_robot`");
    }

    #[test]
    fn an_empty_value_is_absent_but_an_empty_secret_is_a_mistake() {
        let t = table(
            r#"
            title = ""
            channel = ""
            agent_id = ""
            api_base = ""
            on = ""
            to = ""
            receive_id = ""
            url = ""
            encrypt_key = ""
            "#,
        );
        let mut k = Keys::new("sources.s", "platform `x`", &t);
        assert_eq!(
            k.str("title"),
            None,
            "an optional value left empty is unset"
        );
        assert!(!k.has("title"));
        assert_eq!(k.id("agent_id"), None);
        assert!(!k.bool("on"));
        assert!(k.list("to").is_empty());
        assert_eq!(
            k.base_url("api_base", "https://api.example.com/"),
            "https://api.example.com"
        );
        assert_eq!(
            k.required_str_may_be_empty("receive_id").as_deref(),
            Some("")
        );
        assert_eq!(k.required_str("channel"), None);
        assert!(k.secret_url("url").is_none());
        assert!(k.secret("encrypt_key").is_none());
        let issues = k.finish(Some(())).unwrap_err();
        let got: Vec<(&str, &str)> = issues
            .iter()
            .map(|i| (i.key.as_str(), i.problem.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("sources.s.channel", "is required for platform `x`"),
                ("sources.s.url", "is required for platform `x`"),
                ("sources.s.encrypt_key", "the secret is empty"),
            ]
        );
        let mut k = Keys::new("sources.s", "platform `x`", &t);
        assert_eq!(k.required_str_may_be_empty("absent"), None);
        assert_eq!(k.required_secret("absent_secret").map(|_| ()), None);
        assert_eq!(k.finish(Some(())).unwrap_err().len(), 2);
    }

    #[test]
    fn embedded_secrets_resolve_and_never_show_in_problems() {
        std::env::set_var("SB_KEYS_TEST_ROBOT", "k-very-secret");
        let t = table(r#"url = "https://h/cgi-bin/webhook/send?key=env:SB_KEYS_TEST_ROBOT""#);
        let mut k = Keys::new("targets.ops", "kind `wecom_robot`", &t);
        let url = k.secret_url("url");
        let url = k.finish(url).unwrap();
        assert_eq!(
            url.expose(),
            "https://h/cgi-bin/webhook/send?key=k-very-secret"
        );
        assert!(!format!("{url:?}").contains("k-very-secret"));
    }

    #[test]
    fn unknown_keys_name_whose_keys_are_known() {
        let t = table("token = \"t\"\nsekret = \"x\"");
        let issues = unknown("sources.s", "platform `bearer`", &t, &["token"]);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].key, "sources.s.sekret");
        assert_eq!(
            issues[0].problem,
            "is not a key of platform `bearer` (known: token)"
        );
        assert_eq!(
            unknown("sources.s", "platform `x`", &t, &[])[0].problem,
            "is not a key of platform `x` (known: none)"
        );
        let k = Keys::new("sources.s", "platform `x`", &t);
        assert_eq!(
            k.finish::<()>(None).unwrap_err()[0].problem,
            "is incomplete"
        );
    }
}
