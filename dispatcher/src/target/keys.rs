//! Reading a kind's own config keys (a target's or a reply source's `settings`) with every
//! problem collected and named by its full key (`targets.ops.msgtype`), so that one config check
//! reports them all. Secrets are resolved here (`env:`/`file:`, also embedded in URLs) and come
//! out as [`Secret`]s; no value is ever put into a problem's text.
use shared::config::ConfigIssue;
use shared::Secret;

pub(crate) struct Keys<'a> {
    table: &'a toml::Table,
    owner: String,
    issues: Vec<ConfigIssue>,
}

impl<'a> Keys<'a> {
    /// `owner` is the config path of the table: `targets.<id>` or `sources.<id>`.
    pub fn new(owner: impl Into<String>, table: &'a toml::Table) -> Self {
        Self {
            table,
            owner: owner.into(),
            issues: Vec::new(),
        }
    }

    pub fn issue(&mut self, key: &str, problem: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: format!("{}.{key}", self.owner),
            problem: problem.into(),
        });
    }

    /// Refuses keys the kind does not know (typos must not pass silently).
    pub fn only(&mut self, kind: &str, known: &[&str]) {
        let unknown: Vec<String> = self
            .table
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            self.issue(
                &k,
                format!(
                    "is not a key of kind `{kind}` (known: {})",
                    known.join(", ")
                ),
            );
        }
    }

    pub fn str(&mut self, key: &str) -> Option<String> {
        match self.table.get(key) {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.issue(key, format!("must be a string, not {}", other.type_str()));
                None
            }
        }
    }

    pub fn required_str(&mut self, key: &str) -> Option<String> {
        let v = self.str(key);
        if v.is_none() && !self.table.contains_key(key) {
            self.issue(key, "is required");
        }
        v
    }

    /// A string or an integer, as text (ids written either way: `agent_id = 1000002`).
    pub fn id(&mut self, key: &str) -> Option<String> {
        match self.table.get(key) {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(toml::Value::Integer(i)) => Some(i.to_string()),
            Some(other) => {
                self.issue(
                    key,
                    format!("must be a string or an integer, not {}", other.type_str()),
                );
                None
            }
        }
    }

    pub fn required_id(&mut self, key: &str) -> Option<String> {
        let v = self.id(key);
        if v.is_none() && !self.table.contains_key(key) {
            self.issue(key, "is required");
        }
        v
    }

    pub fn bool(&mut self, key: &str) -> bool {
        match self.table.get(key) {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(other) => {
                self.issue(
                    key,
                    format!("must be true or false, not {}", other.type_str()),
                );
                false
            }
        }
    }

    pub fn list(&mut self, key: &str) -> Vec<String> {
        match self.table.get(key) {
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
                self.issue(
                    key,
                    format!("must be a list of strings, not {}", other.type_str()),
                );
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

    /// A secret (`env:`/`file:` reference or literal).
    pub fn secret(&mut self, key: &str) -> Option<Secret> {
        let r = self.str(key)?;
        match Secret::resolve(&r) {
            Ok(s) => Some(s),
            Err(e) => {
                self.issue(key, e.to_string());
                None
            }
        }
    }

    pub fn required_secret(&mut self, key: &str) -> Option<Secret> {
        if !self.table.contains_key(key) {
            self.issue(key, "is required");
            return None;
        }
        self.secret(key)
    }

    /// An http(s) URL that may carry a credential (`...?key=env:NAME`), kept as a secret.
    pub fn secret_url(&mut self, key: &str) -> Option<Secret> {
        let Some(raw) = self.str(key) else {
            if !self.table.contains_key(key) {
                self.issue(key, "is required");
            }
            return None;
        };
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

    /// The built value if no problem was found, else every problem.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, Vec<ConfigIssue>> {
        match value {
            Some(v) if self.issues.is_empty() => Ok(v),
            _ => Err(self.issues),
        }
    }
}

fn is_http_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_collected_and_named_by_full_key() {
        let table: toml::Table = toml::from_str(
            r#"
            url = "ftp://x"
            msgtype = "gif"
            mentioned_list = [1]
            secret = "env:SB_SURELY_UNSET_KEYS_TEST"
            tpyo = 1
            "#,
        )
        .unwrap();
        let mut k = Keys::new("targets.ops", &table);
        k.only(
            "wecom_robot",
            &["url", "msgtype", "mentioned_list", "secret"],
        );
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
    }

    #[test]
    fn embedded_secrets_resolve_and_never_show_in_problems() {
        std::env::set_var("SB_KEYS_TEST_ROBOT", "k-very-secret");
        let table: toml::Table =
            toml::from_str(r#"url = "https://h/cgi-bin/webhook/send?key=env:SB_KEYS_TEST_ROBOT""#)
                .unwrap();
        let mut k = Keys::new("targets.ops", &table);
        let url = k.secret_url("url");
        let url = k.finish(url).unwrap();
        assert_eq!(
            url.expose(),
            "https://h/cgi-bin/webhook/send?key=k-very-secret"
        );
        assert!(!format!("{url:?}").contains("k-very-secret"));
    }
}
