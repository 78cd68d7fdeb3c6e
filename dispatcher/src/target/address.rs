//! A target's URL, parsed once when the config is read: a delivery hands the parsed URL to the
//! client instead of a string it would parse again for every request. The URL may carry a
//! credential (a robot's `key=`, a Discord webhook's token in its path), so its `Debug` shows
//! nothing of it, as a [`shared::Secret`]'s does not.
use shared::keys::Keys;

/// A target's parsed URL.
#[derive(Clone)]
pub struct TargetUrl(reqwest::Url);

impl TargetUrl {
    /// Reads `key` as an http(s) URL (see [`Keys::secret_url`]) and parses it; a URL that does not
    /// parse is a config issue at start-up, not a dead letter per job.
    pub fn read(k: &mut Keys, key: &str) -> Option<TargetUrl> {
        let raw = k.secret_url(key)?;
        match reqwest::Url::parse(raw.expose()) {
            Ok(url) => Some(TargetUrl(url)),
            // The parser's words name the fault, never the URL.
            Err(e) => {
                k.issue(key, format!("is not a valid URL: {e}"));
                None
            }
        }
    }

    /// The URL for one request (a copy: no parsing).
    pub fn get(&self) -> reqwest::Url {
        self.0.clone()
    }

    /// The URL as written (normalised by the parser).
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl std::fmt::Debug for TargetUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TargetUrl([redacted])")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use shared::config::TargetConfig;

    fn read(url: &str) -> Result<TargetUrl, Vec<shared::config::ConfigIssue>> {
        let t: TargetConfig = toml::from_str(&format!(
            "id = \"t\"\nkind = \"webhook\"\nurl = \"{url}\"\n"
        ))
        .unwrap();
        let mut k = Keys::target(&t);
        let url = TargetUrl::read(&mut k, "url");
        k.finish(url)
    }

    #[test]
    fn parsed_once_and_never_shown() {
        let url = read("https://hooks.example.com/send?key=s3cret").unwrap();
        assert_eq!(
            url.get().as_str(),
            "https://hooks.example.com/send?key=s3cret"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
    }

    #[test]
    fn a_url_that_does_not_parse_is_a_config_issue() {
        let issues = read("http://exa mple.com/x").unwrap_err();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(issues[0].problem.contains("URL"), "{issues:?}");
        assert!(!issues[0].problem.contains("exa mple"), "{issues:?}");
    }
}
