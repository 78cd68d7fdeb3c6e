//! Dotted paths into a JSON document (`data.customer.email`, `items.0.sku`): the one syntax the
//! config uses to name a field of a webhook's body (a source's `text_field`, an app's `inputs`
//! mapping). A path is parsed once when the config loads ([`JsonPath::parse`]); looking it up is
//! a walk over the already-parsed body, no allocation. Object keys by name, array items by index.
use serde_json::Value;
use std::fmt;

/// A parsed path; empty is the whole document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JsonPath {
    segments: Vec<String>,
}

impl JsonPath {
    /// Parses `a.b.0.c`; an empty string is the whole document. Refuses empty segments (`a..b`,
    /// `.a`, `a.`).
    pub fn parse(path: &str) -> Result<Self, String> {
        if path.is_empty() {
            return Ok(Self::default());
        }
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!("{path:?} has an empty path segment"));
        }
        Ok(Self { segments })
    }

    /// The value at this path in `doc`, if there is one.
    pub fn lookup<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        self.segments.iter().try_fold(doc, |v, segment| match v {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
            _ => None,
        })
    }

    /// The value at this path, unless it is absent or `null`.
    pub fn present<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        self.lookup(doc).filter(|v| !v.is_null())
    }

    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_walk_objects_and_arrays() {
        let doc =
            json!({"data": {"customer": {"email": "a@b.c"}, "items": [{"sku": "x"}], "n": null}});
        let at = |p: &str| JsonPath::parse(p).unwrap().present(&doc).cloned();
        assert_eq!(at("data.customer.email"), Some(json!("a@b.c")));
        assert_eq!(at("data.items.0.sku"), Some(json!("x")));
        assert_eq!(at("data.items.1.sku"), None);
        assert_eq!(at("data.items.x"), None);
        assert_eq!(at("data.n"), None);
        assert_eq!(at("data.customer.email.deeper"), None);
        assert_eq!(at(""), Some(doc.clone()));
        for bad in ["a..b", ".a", "a."] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            JsonPath::parse("data.customer").unwrap().to_string(),
            "data.customer"
        );
    }
}
