//! Issue 14 end to end: Discord's interactions endpoint through the real ingress, broker, worker
//! and dispatcher, with the Discord stand-in sending interactions signed as Discord signs them
//! and standing in for Discord's API. A signed slash command is answered "thinking…" (type 5)
//! within Discord's 3 s, and its answer then arrives as the edit of that response; Discord's
//! retry of the interaction calls Dify no second time; a long answer is the edit plus follow-ups,
//! in order; `@everyone` in the answer pings nobody; a PING is answered `{"type":1}`; one
//! tampered byte gets 401 and enqueues nothing.
use crate::common::*;
use crate::kit::*;
use serde_json::json;
use standins::discord::{route, DiscordStandin, BOT_TOKEN};
use std::time::Duration;

async fn spawn() -> (TestApp, DiscordStandin) {
    let d = DiscordStandin::start().await.expect("discord stand-in");
    let app = TestApp::spawn(Options {
        extra: format!(
            r#"
[[sources]]
id = "discord"
platform = "discord"
app = "support"
reply = true
public_key = "{key}"
application_id = "{app_id}"
bot_token = "{BOT_TOKEN}"
api_base = "{api}"
"#,
            key = d.public_key_hex(),
            app_id = standins::discord::APPLICATION_ID,
            api = d.api_base(),
        ),
        ..Options::default()
    })
    .await;
    (app, d)
}

fn hook(app: &TestApp) -> String {
    format!("{}/hooks/discord", app.base)
}

async fn messages_at(d: &DiscordStandin, route_name: &'static str, n: usize) {
    let d2 = d.clone();
    eventually(&format!("{n} message(s) at {route_name}"), move || {
        d2.messages_to(route_name).len() >= n
    })
    .await;
}

#[tokio::test]
async fn discord_a_signed_command_is_deferred_then_answered_and_a_tampered_one_refused() {
    let (app, d) = spawn().await;
    let url = hook(&app);

    // Discord's checks when the URL is saved: a PING, and a request with a bad signature.
    let ping = json!({ "id": "1", "application_id": standins::discord::APPLICATION_ID, "type": 1, "token": "p", "version": 1 });
    assert_eq!(
        d.interact(&url, &ping, false).await.unwrap(),
        (200, json!({ "type": 1 }))
    );
    let forged = d.slash_command(Some("g1"), "c1", "forged question");
    let (status, body) = d.interact(&url, &forged, true).await.unwrap();
    assert_eq!(
        (status, body),
        (401, json!({ "error": "bad_signature" })),
        "one byte changed after signing"
    );

    let command = d.slash_command(Some("g1"), "c1", "hello discord");
    let (status, body) = d.interact(&url, &command, false).await.unwrap();
    assert_eq!((status, body), (200, json!({ "type": 5 })));
    let sent = d.interactions();
    let answered_in = sent.last().unwrap().answer.as_ref().unwrap().2;
    assert!(
        answered_in < Duration::from_secs(3),
        "deferred within Discord's 3 s: {answered_in:?}"
    );
    messages_at(&d, route::EDIT_ORIGINAL, 1).await;
    let edit = &d.messages_to(route::EDIT_ORIGINAL)[0];
    assert_eq!(
        (
            edit.interaction_id.as_deref(),
            edit.channel_id.as_str(),
            edit.content.as_str()
        ),
        (command["id"].as_str(), "c1", "echo: hello discord")
    );

    // Discord retrying the same interaction: answered again, Dify not called again.
    assert_eq!(
        d.interact(&url, &command, false).await.unwrap(),
        (200, json!({ "type": 5 }))
    );
    let dify = app.dify.clone();
    assert!(
        quiet(|| dify.calls() == 1).await,
        "Dify calls: {} (the forged one and the retry made none)",
        app.dify.calls()
    );
    assert_eq!(
        d.messages().len(),
        1,
        "one answer, no follow-up, no channel message"
    );
    assert!(d.early_requests().is_empty());
    app.shutdown().await;
    d.shutdown();
}

#[tokio::test]
async fn discord_a_long_answer_is_the_edit_then_follow_ups_in_order_and_pings_nobody() {
    let (app, d) = spawn().await;
    let words: Vec<String> = (0..600).map(|i| format!("w{i:04}")).collect();
    let question = format!("@everyone {}", words.join(" "));
    let command = d.slash_command(None, "dm1", &question);
    assert_eq!(
        d.interact(&hook(&app), &command, false).await.unwrap(),
        (200, json!({ "type": 5 }))
    );
    // "echo: @everyone w0000 … w0599": 3 615 characters, two messages of at most 2 000.
    messages_at(&d, route::FOLLOWUP, 1).await;
    let got = d.messages();
    assert_eq!(
        got.iter().map(|m| m.route).collect::<Vec<_>>(),
        [route::EDIT_ORIGINAL, route::FOLLOWUP],
        "the first part edits the deferred response, the rest follow"
    );
    let mut seen = Vec::new();
    for (i, m) in got.iter().enumerate() {
        assert!(m.content.chars().count() <= 2000);
        assert!(m.content.starts_with(&format!("({}/2) ", i + 1)));
        assert_eq!(m.interaction_id.as_deref(), command["id"].as_str());
        assert_eq!(m.body["allowed_mentions"], json!({ "parse": [] }));
        assert!(!m.pinged_everyone, "part {} pinged @everyone", i + 1);
        seen.extend(m.content.split_whitespace().skip(1).map(str::to_owned));
    }
    let want: Vec<String> = format!("echo: {question}")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(seen, want, "every word once, in order");
    app.shutdown().await;
    d.shutdown();
}

/// Issue 11 item 11 for Discord: a slash command's interaction token (it alone lets anyone write
/// as the bot into that conversation) never reaches the broker. Dify refuses the command, so it
/// becomes a dead letter: neither the letter, nor `dlq list`, nor the queued event holds the
/// token; the ingress kept it in Redis under the event id. Replayed, the answer still edits the
/// original deferred response, with the token put back from Redis.
#[tokio::test]
async fn discord_the_interaction_token_stays_out_of_the_broker_and_a_replay_still_edits_the_response(
) {
    let (app, d) = spawn().await;
    app.dify.fail_next(1, 400, "invalid_param");
    let command = d.slash_command(Some("g1"), "c7", "kept aside");
    let token = command["token"].as_str().unwrap().to_owned();
    assert_eq!(
        d.interact(&hook(&app), &command, false).await.unwrap(),
        (200, json!({ "type": 5 }))
    );

    let letters = dead_letters_at_least(&app, 1).await;
    assert_eq!(letters.len(), 1);
    let letter = String::from_utf8(shared::envelope::encode(&letters[0])).unwrap();
    assert!(
        !letter.contains(&token),
        "the token in a dead letter: {letter}"
    );
    assert!(
        letter.contains("token_expires_at"),
        "the handle still says a token was given: {letter}"
    );
    let (_, shown, _) = dlq(&app, &["list"]).await;
    assert!(!shown.contains(&token), "the token in `dlq list`");
    let kept = reply_credential_keys(&app).await;
    assert_eq!(kept.len(), 1, "{kept:?}");

    let (ok, out, err) = dlq(&app, &["replay", "--all", "--yes", "--allow-unverified"]).await;
    assert!(ok, "{out}{err}");
    messages_at(&d, route::EDIT_ORIGINAL, 1).await;
    let edit = &d.messages_to(route::EDIT_ORIGINAL)[0];
    assert_eq!(
        (edit.interaction_id.as_deref(), edit.content.as_str()),
        (command["id"].as_str(), "echo: kept aside"),
        "the replay edited the command's own response through its token"
    );
    assert!(d.messages_to(route::CHANNEL).is_empty());
    app.shutdown().await;
    d.shutdown();
}
