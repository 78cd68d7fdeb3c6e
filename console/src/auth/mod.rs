//! Who is asking: a signed-in user (session cookie) or a script (API token), with the role the
//! config gives them now, and the checks every change goes through (role, CSRF token). Cookies
//! are HttpOnly, SameSite=Strict and Secure (named `__Host-…` then), unless `[console]
//! secure_cookies = false` (allowed only on a loopback listener). A bearer token is not sent
//! by browsers on their own, so a request carrying one needs no CSRF token; a cookie is, so
//! every change made with one must carry the session's CSRF token.
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use shared::config::{ConsoleConfig, ConsoleRole};
use shared::secret::Secret;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

pub mod password;
pub mod session;

use crate::error::{ApiError, ConsoleError, PageError};
use crate::state::Console;
use password::{same, token_sha256, verify_password};
use session::{Session, Sessions};

/// Someone the console knows.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: ConsoleRole,
    /// The session, when signed in with a cookie (`None`: an API token).
    pub session: Option<Session>,
    /// The session id (to sign out).
    pub sid: Option<String>,
}

impl Principal {
    /// How the replay record names them: the user, or `token:<name>`.
    pub fn actor(&self) -> String {
        match self.session {
            Some(_) => self.name.clone(),
            None => format!("token:{}", self.name),
        }
    }

    /// How the replay record says the actor is known.
    pub fn via(&self) -> String {
        match self.session {
            Some(_) => format!("console (signed in, {})", self.role.as_str()),
            None => format!("console (API token, {})", self.role.as_str()),
        }
    }

    /// Refuses one whose role is below `role`.
    pub fn require(&self, role: ConsoleRole) -> Result<(), ConsoleError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(format!(
                "{} is a {}: this needs the {} role",
                self.name,
                self.role.as_str(),
                role.as_str()
            )))
        }
    }

    /// Refuses a change made with a session cookie without the session's CSRF token.
    pub fn check_csrf(&self, given: Option<&str>) -> Result<(), ConsoleError> {
        match (&self.session, given) {
            (None, _) => Ok(()),
            (Some(s), Some(g)) if same(&s.csrf, g) => Ok(()),
            (Some(_), _) => Err(ConsoleError::Forbidden(
                "missing or wrong CSRF token: reload the page and try again".into(),
            )),
        }
    }

    /// The CSRF token forms carry (empty for tokens).
    pub fn csrf(&self) -> &str {
        self.session.as_ref().map_or("", |s| s.csrf.as_str())
    }
}

/// The configured users and tokens, the sessions, and the cookie's shape.
pub struct Auth {
    users: HashMap<String, (ConsoleRole, Secret)>,
    tokens: Vec<(String, ConsoleRole, String)>,
    pub sessions: Sessions,
    secure: bool,
    /// Checked for unknown users, so that their sign-in takes as long.
    dummy_hash: String,
}

impl Auth {
    pub fn new(config: &ConsoleConfig, sessions: Sessions) -> Self {
        Self {
            users: config
                .users
                .iter()
                .map(|u| (u.name.clone(), (u.role, u.password_hash.clone())))
                .collect(),
            tokens: config
                .tokens
                .iter()
                .map(|t| (t.name.clone(), t.role, t.sha256.to_lowercase()))
                .collect(),
            sessions,
            secure: config.secure_cookies,
            dummy_hash: password::hash_password(&password::random_token()).unwrap_or_default(),
        }
    }

    /// The session cookie's name: `__Host-` needs Secure.
    pub fn cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-sb_session"
        } else {
            "sb_session"
        }
    }

    /// A `Set-Cookie` value for a session (empty value and Max-Age=0 to clear it).
    pub fn cookie(&self, sid: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
            self.cookie_name()
        )
    }

    /// Who sent these headers, if anyone the console knows.
    pub async fn principal(&self, headers: &HeaderMap) -> Result<Option<Principal>, ConsoleError> {
        if let Some(token) = bearer(headers) {
            let sha = token_sha256(token);
            let found = self.tokens.iter().find(|(_, _, h)| same(h, &sha));
            return match found {
                Some((name, role, _)) => Ok(Some(Principal {
                    name: name.clone(),
                    role: *role,
                    session: None,
                    sid: None,
                })),
                None => Err(ConsoleError::Unauthorized),
            };
        }
        let Some(sid) = cookie(headers, self.cookie_name()) else {
            return Ok(None);
        };
        let Some(session) = self.sessions.get(&sid).await? else {
            return Ok(None);
        };
        // The config decides the role now: a user removed or demoted loses it at once.
        let Some((role, _)) = self.users.get(&session.user) else {
            return Ok(None);
        };
        Ok(Some(Principal {
            name: session.user.clone(),
            role: *role,
            session: Some(session),
            sid: Some(sid),
        }))
    }

    /// Signs a user in: refused past the attempt limit, counted when the password is wrong.
    pub async fn sign_in(
        &self,
        user: &str,
        password: &str,
        addr: Option<IpAddr>,
    ) -> Result<(String, Session), ConsoleError> {
        self.sessions.check_limit(user, addr).await?;
        let hash = match self.users.get(user) {
            Some((_, h)) => h.expose().to_owned(),
            None => self.dummy_hash.clone(),
        };
        let known = self.users.contains_key(user);
        let given = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || verify_password(&given, &hash))
            .await
            .unwrap_or(false);
        if !(ok && known) {
            self.sessions.failed(user, addr).await?;
            return Err(ConsoleError::Forbidden(
                "wrong user name or password".into(),
            ));
        }
        self.sessions.succeeded(user).await?;
        self.sessions.start(user).await
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// A cookie's value from the `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The signed-in principal of an API request (401 JSON otherwise).
pub struct ApiUser(pub Principal);

/// The signed-in principal of a page request (to the sign-in page otherwise).
pub struct PageUser(pub Principal);

async fn extract(parts: &Parts, state: &Arc<Console>) -> Result<Principal, ConsoleError> {
    state
        .auth
        .principal(&parts.headers)
        .await?
        .ok_or(ConsoleError::Unauthorized)
}

impl FromRequestParts<Arc<Console>> for ApiUser {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        Ok(ApiUser(extract(parts, state).await?))
    }
}

impl FromRequestParts<Arc<Console>> for PageUser {
    type Rejection = PageError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        Ok(PageUser(extract(parts, state).await?))
    }
}
