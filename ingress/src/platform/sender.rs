//! The sending side of the platforms, for tests and load generation: a [`SignedRequest`] is a
//! request as a platform would build it (method, query, headers, raw body), made by each
//! platform module's `request…` helpers with that module's own `sign`/`encrypt` functions.
//! It can be sent with any HTTP client to `/hooks/{source}`, or turned into a [`HookRequest`]
//! for a unit test. Nothing here verifies or reads requests.
use super::HookRequest;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use bytes::Bytes;
use chrono::{DateTime, Utc};

/// A request as a platform sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    pub method: Method,
    /// The query string, URL-encoded, without `?`.
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl SignedRequest {
    pub fn new(method: Method, body: impl Into<Bytes>) -> Self {
        Self {
            method,
            query: None,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the query from pairs, URL-encoding them.
    pub fn with_query(mut self, pairs: &[(&str, &str)]) -> Self {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
        self.query = Some(q.finish());
        self
    }

    /// `path?query`, for a client that takes a URL.
    pub fn path_and_query(&self, path: &str) -> String {
        match &self.query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        }
    }

    /// A header's value, if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request as the ingress reads it, received at `now`. Header lines that HTTP could
    /// not carry are left out.
    pub fn to_hook_request(&self, now: DateTime<Utc>) -> HookRequest {
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.append(k, v);
            }
        }
        HookRequest {
            method: self.method.clone(),
            query: self.query.clone(),
            headers,
            body: self.body.clone(),
            now,
        }
    }
}
