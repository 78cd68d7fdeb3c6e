//! A Feishu / Lark reply that streams (`stream = true`) into a CardKit card: the first update
//! creates a card entity (`POST /open-apis/cardkit/v1/cards`, card JSON 2.0 with
//! `config.streaming_mode` and one markdown element, [`ELEMENT`]) and replies to the question
//! with it by id (`im/v1/messages/{message_id}/reply`, `msg_type` `interactive`, content
//! `{"type":"card","data":{"card_id":…}}`); every later update replaces the element's whole text
//! (`PUT …/cards/{card_id}/elements/{ELEMENT}/content`). The final answer replaces the whole card
//! (`PUT …/cards/{card_id}`) with the answer and streaming mode off, in one write that holds in
//! any state: element writes need streaming mode on, so a final answer repeated after a crash
//! could not go as one once the first had turned it off.
//!
//! Every write to a card carries a `sequence` that must grow with each operation on the card;
//! it is one Redis counter per card (`cardkit_seq:<card_id>`), so every dispatcher's writes
//! order. A reply names one card: its `card_id` is kept under `cardkit:<job id>` before the card
//! is sent, and the reply's `uuid` (Feishu's de-duplication of a send, one hour) is the job id,
//! so a create repeated after a crash sends the same card once. The app needs the
//! `cardkit:card:write` scope; a refusal is permanent and the reply falls back to one message.
use super::super::super::parts::{local_outcome, PROGRESS_TTL};
use super::super::super::{send, Answer, Context, Outcome, Verdict};
use super::{classify, FeishuReply, ERRCODES};
use crate::stream::{Grow, Reply};
use crate::tokens;
use async_trait::async_trait;
use deadpool_redis::redis::{self, AsyncCommands};
use serde_json::{json, Value};
use shared::envelope::{Destination, DispatchJob, ReplyHandle};
use shared::units::Rate;

/// The element the answer streams into.
pub const ELEMENT: &str = "answer";
/// The card's writes came out of order (`sequence` not above the last): the next one passes.
const SEQUENCE_NOT_INCREASING: &str = "300317";

/// The card's JSON 2.0 (pure): `text` in [`ELEMENT`], streaming mode on or off.
pub fn card_json(text: &str, streaming: bool) -> Value {
    json!({
        "schema": "2.0",
        // Streaming needs a card shared by everyone in the chat (`update_multi`).
        "config": { "streaming_mode": streaming, "update_multi": true },
        "body": { "elements": [{ "tag": "markdown", "element_id": ELEMENT, "content": text }] },
    })
}

/// `POST /open-apis/cardkit/v1/cards`'s body (pure): the card JSON as a string.
pub fn create_body(text: &str) -> Value {
    json!({ "type": "card_json", "data": card_json(text, true).to_string() })
}

/// The reply that sends the card by id (pure); `uuid` de-duplicates a repeated send.
pub fn send_body(card_id: &str, uuid: &str) -> Value {
    let content = json!({ "type": "card", "data": { "card_id": card_id } }).to_string();
    json!({ "msg_type": "interactive", "content": content, "uuid": uuid })
}

/// The element's whole text at `sequence` (pure).
pub fn content_body(text: &str, sequence: i64) -> Value {
    json!({ "content": text, "sequence": sequence })
}

/// The whole card at `sequence` (pure): the final answer, streaming mode off.
pub fn final_body(text: &str, sequence: i64) -> Value {
    let card = json!({ "type": "card_json", "data": card_json(text, false).to_string() });
    json!({ "card": card, "sequence": sequence })
}

/// CardKit's answer: as Feishu's other APIs ([`classify`]: 99991400 waits, a token code
/// refreshes, other codes are permanent — `cardkit:card:write` missing, card not found,
/// expired), except a `sequence` that did not grow, which another write passes: retry.
pub fn classify_card(answer: &Answer) -> Verdict {
    if ERRCODES.code(&answer.body).as_deref() == Some(SEQUENCE_NOT_INCREASING) {
        return Verdict::Retry { retry_after: None };
    }
    classify(answer)
}

fn handle_of<'a>(reply: &Reply<'a>) -> Option<(&'a str, &'a str)> {
    match reply.destination {
        Destination::Reply {
            handle:
                ReplyHandle::Feishu {
                    message_id,
                    chat_id,
                    ..
                },
        } => Some((message_id, chat_id)),
        _ => None,
    }
}

/// A local outcome for Redis trouble: the write waits rather than guessing.
fn store_trouble(e: impl std::fmt::Display) -> Outcome {
    local_outcome(
        Verdict::Retry { retry_after: None },
        format!("the card's record is unavailable: {e}"),
    )
}

impl FeishuReply {
    /// One CardKit (or message) call with the tenant token; `Ok`: the answer's `data`.
    async fn card_call(
        &self,
        ctx: &Context,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> Result<Value, Outcome> {
        let url = format!("{}{path}", self.token.api_base);
        // The last answer's `data` (the closure may run twice: once more after a token refresh).
        let data = std::sync::Mutex::new(Value::Null);
        let outcome = tokens::send_with_token(ctx, &self.token, |token| {
            let request = ctx
                .http
                .request(method.clone(), &url)
                .bearer_auth(token.expose())
                .json(body);
            let data = &data;
            Box::pin(async move {
                let (outcome, answer) = send(ctx, request, classify_card).await;
                let got = answer
                    .and_then(|a| serde_json::from_slice::<Value>(&a.body).ok())
                    .and_then(|v| v.get("data").cloned())
                    .unwrap_or(Value::Null);
                if let Ok(mut d) = data.lock() {
                    *d = got;
                }
                outcome
            })
        })
        .await;
        match outcome.verdict {
            Verdict::Delivered => Ok(data.into_inner().unwrap_or_default()),
            _ => Err(outcome),
        }
    }

    /// The reply's card: the one kept for the job, else a new entity (kept before it is sent).
    async fn card_of(&self, ctx: &Context, job: &str, text: &str) -> Result<String, Outcome> {
        let key = ctx.store.key(&["cardkit", job]);
        let mut conn = ctx.store.conn().await.map_err(store_trouble)?;
        let kept: Option<String> = conn.get(&key).await.map_err(store_trouble)?;
        if let Some(card) = kept {
            return Ok(card);
        }
        let data = self
            .card_call(
                ctx,
                reqwest::Method::POST,
                "/open-apis/cardkit/v1/cards",
                &create_body(text),
            )
            .await?;
        let Some(card) = data.get("card_id").and_then(Value::as_str) else {
            return Err(local_outcome(
                Verdict::Permanent,
                "the card entity came without card_id",
            ));
        };
        let _: () = conn
            .set_ex(&key, card, PROGRESS_TTL.as_secs())
            .await
            .map_err(store_trouble)?;
        Ok(card.to_owned())
    }

    /// The next `sequence` of a card's writes, shared by every dispatcher.
    async fn next_sequence(&self, ctx: &Context, card: &str) -> Result<i64, Outcome> {
        let key = ctx.store.key(&["cardkit_seq", card]);
        let mut conn = ctx.store.conn().await.map_err(store_trouble)?;
        let (seq, _): (i64, i64) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .expire(&key, PROGRESS_TTL.as_secs() as i64)
            .query_async(&mut conn)
            .await
            .map_err(store_trouble)?;
        Ok(seq)
    }

    /// One write to the card at the next sequence: `path` under the card, `body` for it.
    async fn write(
        &self,
        ctx: &Context,
        card: &str,
        path: &str,
        body: impl Fn(i64) -> Value,
    ) -> Outcome {
        let sequence = match self.next_sequence(ctx, card).await {
            Ok(s) => s,
            Err(o) => return o,
        };
        let path = format!("/open-apis/cardkit/v1/cards/{card}{path}");
        match self
            .card_call(ctx, reqwest::Method::PUT, &path, &body(sequence))
            .await
        {
            Ok(_) => local_outcome(Verdict::Delivered, "written"),
            Err(o) => o,
        }
    }
}

#[async_trait]
impl Grow for FeishuReply {
    async fn create(&self, reply: Reply<'_>, ctx: &Context, text: &str) -> Result<String, Outcome> {
        let Some((message_id, _)) = handle_of(&reply) else {
            return Err(super::super::wrong_handle("feishu"));
        };
        let job = DispatchJob::job_id_of_event(reply.payload.event_id, reply.destination);
        let job = job.simple().to_string();
        let card = self.card_of(ctx, &job, text).await?;
        let path = format!("/open-apis/im/v1/messages/{message_id}/reply");
        self.card_call(ctx, reqwest::Method::POST, &path, &send_body(&card, &job))
            .await?;
        Ok(card)
    }

    async fn edit(&self, _reply: Reply<'_>, ctx: &Context, card: &str, text: &str) -> Outcome {
        let path = format!("/elements/{ELEMENT}/content");
        self.write(ctx, card, &path, |seq| content_body(text, seq))
            .await
    }

    async fn end(&self, _reply: Reply<'_>, ctx: &Context, card: &str, text: &str) -> Outcome {
        self.write(ctx, card, "", |seq| final_body(text, seq)).await
    }

    async fn send_part(
        &self,
        reply: Reply<'_>,
        ctx: &Context,
        _index: usize,
        part: &str,
    ) -> Outcome {
        let Some((message_id, _)) = handle_of(&reply) else {
            return super::super::wrong_handle("feishu");
        };
        self.send_text(ctx, message_id, part).await
    }

    fn chat_rate(&self, reply: Reply<'_>) -> Option<(String, Vec<Rate>)> {
        let (_, chat) = handle_of(&reply)?;
        // Feishu takes 5 messages a second in one chat; a card's writes stay within the same.
        Some((chat.to_owned(), vec![Rate::per_second(5)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;
    use std::time::Duration;

    #[test]
    fn the_card_streams_in_one_element_and_is_sent_by_id() {
        let created = create_body("Hel");
        assert_eq!(created["type"], "card_json");
        let card: Value = serde_json::from_str(created["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            card,
            json!({
                "schema": "2.0",
                "config": { "streaming_mode": true, "update_multi": true },
                "body": { "elements": [{ "tag": "markdown", "element_id": "answer", "content": "Hel" }] },
            })
        );
        let sent = send_body("7355439197428236291", "job1");
        assert_eq!(
            (&sent["msg_type"], &sent["uuid"]),
            (&json!("interactive"), &json!("job1"))
        );
        let content: Value = serde_json::from_str(sent["content"].as_str().unwrap()).unwrap();
        assert_eq!(
            content,
            json!({ "type": "card", "data": { "card_id": "7355439197428236291" } })
        );
        assert_eq!(
            content_body("Hello", 3),
            json!({ "content": "Hello", "sequence": 3 })
        );
        let last = final_body("Hello.", 4);
        assert_eq!(
            (&last["sequence"], &last["card"]["type"]),
            (&json!(4), &json!("card_json"))
        );
        let card: Value = serde_json::from_str(last["card"]["data"].as_str().unwrap()).unwrap();
        assert_eq!(card, card_json("Hello.", false));
        assert_eq!(card["config"]["streaming_mode"], false);
        assert_eq!(card["body"]["elements"][0]["content"], "Hello.");
    }

    #[test]
    fn cardkit_answers_are_classified() {
        let answer = |status: u16, body: Value| Answer {
            status,
            headers: HeaderMap::new(),
            body: body.to_string().into(),
        };
        let code = |c: i64| json!({ "code": c, "msg": "m", "data": {} });
        let cases = [
            (answer(200, code(0)), Verdict::Delivered),
            (
                answer(400, code(300317)),
                Verdict::Retry { retry_after: None },
            ),
            (
                answer(400, code(99991400)),
                Verdict::Wait {
                    wait: Duration::from_secs(1),
                },
            ),
            (answer(400, code(99991663)), Verdict::TokenInvalid),
            // cardkit:card:write missing, card entity gone, expired: permanent (fall back).
            (answer(400, code(99991672)), Verdict::Permanent),
            (answer(400, code(200740)), Verdict::Permanent),
            (answer(400, code(200750)), Verdict::Permanent),
        ];
        for (a, want) in cases {
            assert_eq!(
                classify_card(&a),
                want,
                "{}",
                String::from_utf8_lossy(&a.body)
            );
        }
    }
}
