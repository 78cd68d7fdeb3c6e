//! The console's pages as server-rendered HTML (maud): a layout with the navigation and the
//! signed-in user, and one module per page. Pages read without JavaScript: filters are GET
//! forms, selections are checkboxes in POST forms, a running replay's page refreshes itself
//! with a meta tag. Every form that changes something carries the session's CSRF token. Pure:
//! data in, markup out.
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use shared::seal::Verdict;

use crate::auth::Principal;

pub mod events;
pub mod letters;
pub mod replays;
pub mod stats;

/// The stylesheet, built into the binary.
pub const CSS: &str = include_str!("../../assets/console.css");

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Letters,
    Stats,
    Replays,
    Events,
}

/// A whole page: head, navigation, the user, and `body`.
pub fn page(title: &str, who: &Principal, nav: Nav, refresh: bool, body: Markup) -> Markup {
    let link = |n: Nav, href: &str, label: &str| {
        html! { a href=(href) class=[(n == nav).then_some("here")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh { meta http-equiv="refresh" content="2"; }
                title { (title) " · Switchboard console" }
                link rel="stylesheet" href="/assets/console.css";
            }
            body {
                header {
                    span.brand { "Switchboard" }
                    (link(Nav::Letters, "/letters", "Dead letters"))
                    (link(Nav::Stats, "/stats", "Stats"))
                    (link(Nav::Replays, "/replays", "Replay record"))
                    (link(Nav::Events, "/events", "Where is my event"))
                    span.who {
                        (who.name) " (" (who.role.as_str()) ") "
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(who.csrf());
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page for an error, without the navigation (the user may not be known).
pub fn error_page(status: StatusCode, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (status.as_u16()) " · Switchboard console" }
                   link rel="stylesheet" href="/assets/console.css"; }
            body { main {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p.error { (message) }
                p { a href="/letters" { "Back to the dead letters" } }
            } }
        }
    }
}

/// The sign-in page.
pub fn login(error: Option<&str>, login_csrf: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Sign in · Switchboard console" }
                   link rel="stylesheet" href="/assets/console.css"; }
            body {
                form.login method="post" action="/login" {
                    h1 { "Switchboard console" }
                    @if let Some(e) = error { p.error id="login-error" { (e) } }
                    input type="hidden" name="login_csrf" value=(login_csrf);
                    label { "User" input type="text" name="user" id="user" autocomplete="username" required autofocus; }
                    label { "Password" input type="password" name="password" id="password" autocomplete="current-password" required; }
                    button.primary type="submit" id="sign-in" { "Sign in" }
                }
            }
        }
    }
}

/// Times in pages: UTC to the second; the epoch means "unknown".
pub fn time(t: DateTime<Utc>) -> String {
    deadletters::render::time(t)
}

/// A seal's state as a badge.
pub fn seal(v: Option<&Verdict>) -> Markup {
    match v {
        None => {
            html! { span.badge.warn title="no [audit] key: seals are not checked" { "not checked" } }
        }
        Some(v) if v.is_verified() => html! { span.badge.ok title=(v.explain()) { "verified" } },
        Some(v) => html! { span.badge.bad title=(v.explain()) { (v.word()) } },
    }
}

/// JSON, pretty, as a preformatted block.
pub fn json_block(v: &serde_json::Value) -> Markup {
    html! { pre.mono { (serde_json::to_string_pretty(v).unwrap_or_default()) } }
}

/// Text that is already safe HTML (only the built-in chart).
pub fn raw(s: String) -> Markup {
    PreEscaped(s)
}
