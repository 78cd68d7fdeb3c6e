//! A DingTalk reply that streams (`stream = true`) into an AI card: the first update creates
//! and delivers a card instance of the source's template (`POST /v1.0/card/instances/
//! createAndDeliver`) to the conversation — the group (`IM_GROUP`) or the robot's one-to-one
//! chat with the sender (`IM_ROBOT`) — with the text so far under the template's streaming
//! variable (`card_key`); every later update, and the final answer, replaces that variable's
//! whole text (`PUT /v1.0/card/streaming`, `isFull`), the final answer with `isFinalize`. The
//! card's `outTrackId` is derived from the reply job's id, so every dispatcher and every retry
//! names the same card. Both calls take the app's access token (`x-acs-dingtalk-access-token`)
//! and need the app's `Card.Instance.Write` and `Card.Streaming.Write` permissions; a refusal
//! (403 `Forbidden.AccessDenied…`) is permanent, which makes the reply fall back to a single
//! message. A part of a long answer beyond the card goes as an ordinary message.
//! Keys: `card_template_id` (required with `stream`), `card_key` (default `content`).
use super::super::super::parts::local_outcome;
use super::super::super::{send, Answer, Context, Outcome, Verdict};
use super::{classify_robot_api, DingtalkReply};
use crate::stream::{Grow, Reply};
use crate::tokens;
use async_trait::async_trait;
use serde_json::{json, Value};
use shared::envelope::{ChatType, Destination, DispatchJob, ReplyHandle};
use shared::keys::Keys;
use shared::units::Rate;
use uuid::Uuid;

pub const CREATE_PATH: &str = "/v1.0/card/instances/createAndDeliver";
pub const STREAMING_PATH: &str = "/v1.0/card/streaming";
/// The streaming variable of DingTalk's AI card templates.
pub const DEFAULT_KEY: &str = "content";

/// The card a streamed reply grows in: the source's template and its streaming variable.
#[derive(Debug, Clone, PartialEq)]
pub struct CardTemplate {
    pub template_id: String,
    pub key: String,
}

/// Reads `card_template_id` and `card_key` for a source that streams; `has_app`: whether the
/// app's key and secret (the card API's token) are configured.
pub fn from_keys(k: &mut Keys, has_app: bool) -> Option<CardTemplate> {
    let template_id = k.str("card_template_id");
    let key = k.str("card_key").unwrap_or_else(|| DEFAULT_KEY.to_owned());
    if template_id.is_none() {
        k.issue(
            "card_template_id",
            "is required with `stream = true`: the id of the AI card template the answer streams \
             into (DingTalk developer console, card platform; its streaming variable is \
             `card_key`, default `content`)",
        );
    }
    if !has_app {
        k.issue(
            "app_key",
            "is required with `stream = true` (with app_secret): the card API takes the app's \
             access token",
        );
    }
    template_id.map(|template_id| CardTemplate { template_id, key })
}

/// The card's `outTrackId` for a reply job (pure): the same for every try of the reply, so a
/// create repeated after a crash names the card already delivered.
pub fn out_track_id(job_id: Uuid) -> String {
    format!("switchboard-{}", job_id.simple())
}

/// `createAndDeliver`'s body (pure): the card in the group, or in the robot's chat with the
/// sender; `Err`: why the reply cannot be a card.
pub fn create_body(
    card: &CardTemplate,
    out_track_id: &str,
    handle: &ReplyHandle,
    chat_type: ChatType,
    robot_code: &str,
    text: &str,
) -> Result<Value, &'static str> {
    let ReplyHandle::Dingtalk {
        conversation_id,
        sender_staff_id,
        ..
    } = handle
    else {
        return Err("the job's reply handle is not a `dingtalk` handle");
    };
    let mut body = json!({
        "cardTemplateId": card.template_id,
        "outTrackId": out_track_id,
        "cardData": { "cardParamMap": { card.key.as_str(): text } },
        // Card callbacks (buttons) come back over Stream mode; the answer card has none.
        "callbackType": "STREAM",
        "imGroupOpenSpaceModel": { "supportForward": true },
        "imRobotOpenSpaceModel": { "supportForward": true },
    });
    match chat_type {
        ChatType::Group => {
            body["openSpaceId"] = json!(format!("dtv1.card//IM_GROUP.{conversation_id}"));
            body["imGroupOpenDeliverModel"] = json!({ "robotCode": robot_code });
        }
        ChatType::Single => {
            let Some(staff) = sender_staff_id else {
                return Err("a one-to-one card needs the sender's staff id, which is unknown");
            };
            body["openSpaceId"] = json!(format!("dtv1.card//IM_ROBOT.{staff}"));
            body["imRobotOpenDeliverModel"] = json!({ "spaceType": "IM_ROBOT" });
        }
    }
    Ok(body)
}

/// `card/streaming`'s body (pure): the variable's whole text (`isFull`), so an update that is
/// dropped or repeated leaves the card right; `finalize` for the final answer.
pub fn streaming_body(
    out_track_id: &str,
    guid: &str,
    key: &str,
    text: &str,
    finalize: bool,
) -> Value {
    json!({
        "outTrackId": out_track_id,
        "guid": guid,
        "key": key,
        "content": text,
        "isFull": true,
        "isFinalize": finalize,
        "isError": false,
    })
}

/// The card API's answer: as the robot API's (401 refresh the token, throttling retries, a
/// 403 permission refusal or another 4xx is permanent, 5xx retries), and a create whose
/// delivery to the conversation failed (`result.deliverResults[].success = false`) permanent.
pub fn classify_card(answer: &Answer) -> Verdict {
    let verdict = classify_robot_api(answer);
    if verdict != Verdict::Delivered {
        return verdict;
    }
    let v: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    let undelivered = v
        .pointer("/result/deliverResults")
        .and_then(Value::as_array)
        .is_some_and(|all| {
            all.iter()
                .any(|d| d.get("success").and_then(Value::as_bool) == Some(false))
        });
    if v.get("success").and_then(Value::as_bool) == Some(false) || undelivered {
        return Verdict::Permanent;
    }
    Verdict::Delivered
}

impl DingtalkReply {
    /// One call of the card API with the app's token.
    async fn card_call(&self, ctx: &Context, put: bool, path: &str, body: &Value) -> Outcome {
        let Some(app) = &self.app else {
            return local_outcome(Verdict::Permanent, "no app_key for the card API");
        };
        let url = format!("{}{path}", self.api_base);
        tokens::send_with_token(ctx, app, |token| {
            let request = if put {
                ctx.http.put(&url)
            } else {
                ctx.http.post(&url)
            };
            let request = request
                .header("x-acs-dingtalk-access-token", token.expose())
                .json(body);
            Box::pin(async move { send(ctx, request, classify_card).await.0 })
        })
        .await
    }

    /// Replaces the card's text; `finalize` ends its streaming.
    async fn stream_to(&self, ctx: &Context, card: &str, text: &str, finalize: bool) -> Outcome {
        let Some(template) = &self.card else {
            return local_outcome(Verdict::Permanent, "no card_template_id");
        };
        let guid = Uuid::now_v7().to_string();
        let body = streaming_body(card, &guid, &template.key, text, finalize);
        self.card_call(ctx, true, STREAMING_PATH, &body).await
    }
}

fn handle_of<'a>(reply: &Reply<'a>) -> Option<&'a ReplyHandle> {
    match reply.destination {
        Destination::Reply {
            handle: h @ ReplyHandle::Dingtalk { .. },
        } => Some(h),
        _ => None,
    }
}

#[async_trait]
impl Grow for DingtalkReply {
    async fn create(&self, reply: Reply<'_>, ctx: &Context, text: &str) -> Result<String, Outcome> {
        let (Some(template), Some(handle)) = (&self.card, handle_of(&reply)) else {
            return Err(super::super::wrong_handle("dingtalk"));
        };
        let job_id = DispatchJob::job_id_of_event(reply.payload.event_id, reply.destination);
        let id = out_track_id(job_id);
        let robot_code = self.robot_code_for(handle);
        let chat_type = reply.payload.conversation.chat_type;
        let body = create_body(template, &id, handle, chat_type, &robot_code, text)
            .map_err(|why| local_outcome(Verdict::Permanent, why))?;
        let outcome = self.card_call(ctx, false, CREATE_PATH, &body).await;
        match outcome.verdict {
            Verdict::Delivered => Ok(id),
            _ => Err(outcome),
        }
    }

    async fn edit(&self, _reply: Reply<'_>, ctx: &Context, card: &str, text: &str) -> Outcome {
        self.stream_to(ctx, card, text, false).await
    }

    async fn end(&self, _reply: Reply<'_>, ctx: &Context, card: &str, text: &str) -> Outcome {
        self.stream_to(ctx, card, text, true).await
    }

    async fn send_part(
        &self,
        reply: Reply<'_>,
        ctx: &Context,
        _index: usize,
        part: &str,
    ) -> Outcome {
        let Some(handle) = handle_of(&reply) else {
            return super::super::wrong_handle("dingtalk");
        };
        let chat_type = reply.payload.conversation.chat_type;
        self.send_one(ctx, handle, chat_type, part).await
    }

    fn chat_rate(&self, reply: Reply<'_>) -> Option<(String, Vec<Rate>)> {
        let ReplyHandle::Dingtalk {
            conversation_id, ..
        } = handle_of(&reply)?
        else {
            return None;
        };
        // DingTalk publishes no per-card figure; the card API's calls share the app's QPS.
        // One write a second per conversation keeps a busy chat from spending it.
        Some((conversation_id.clone(), vec![Rate::per_second(1)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;
    use shared::config::SourceConfig;

    fn template() -> CardTemplate {
        CardTemplate {
            template_id: "tpl.schema".into(),
            key: "content".into(),
        }
    }

    fn handle(staff: Option<&str>) -> ReplyHandle {
        ReplyHandle::Dingtalk {
            session_webhook: None,
            session_webhook_expires_at: None,
            conversation_id: "cidG1".into(),
            robot_code: None,
            sender_staff_id: staff.map(str::to_owned),
        }
    }

    #[test]
    fn the_card_goes_to_the_group_or_the_robot_chat_with_the_sender() {
        let group = create_body(
            &template(),
            "switchboard-1",
            &handle(Some("staff7")),
            ChatType::Group,
            "dingrobot",
            "Hel",
        )
        .unwrap();
        assert_eq!(
            group,
            json!({
                "cardTemplateId": "tpl.schema",
                "outTrackId": "switchboard-1",
                "cardData": { "cardParamMap": { "content": "Hel" } },
                "callbackType": "STREAM",
                "imGroupOpenSpaceModel": { "supportForward": true },
                "imRobotOpenSpaceModel": { "supportForward": true },
                "openSpaceId": "dtv1.card//IM_GROUP.cidG1",
                "imGroupOpenDeliverModel": { "robotCode": "dingrobot" },
            })
        );
        let single = create_body(
            &template(),
            "switchboard-1",
            &handle(Some("staff7")),
            ChatType::Single,
            "dingrobot",
            "Hel",
        )
        .unwrap();
        assert_eq!(single["openSpaceId"], "dtv1.card//IM_ROBOT.staff7");
        assert_eq!(
            single["imRobotOpenDeliverModel"],
            json!({ "spaceType": "IM_ROBOT" })
        );
        assert!(single.get("imGroupOpenDeliverModel").is_none());
        assert!(create_body(&template(), "x", &handle(None), ChatType::Single, "r", "t").is_err());
        assert_eq!(
            streaming_body("switchboard-1", "g1", "content", "Hello", true),
            json!({ "outTrackId": "switchboard-1", "guid": "g1", "key": "content",
                    "content": "Hello", "isFull": true, "isFinalize": true, "isError": false })
        );
    }

    #[test]
    fn one_reply_names_one_card_whoever_creates_it() {
        let job = Uuid::now_v7();
        assert_eq!(out_track_id(job), out_track_id(job));
        assert_ne!(out_track_id(job), out_track_id(Uuid::now_v7()));
        assert!(out_track_id(job).len() <= 64);
    }

    #[test]
    fn card_api_answers_are_classified() {
        let answer = |status: u16, body: Value| Answer {
            status,
            headers: HeaderMap::new(),
            body: body.to_string().into(),
        };
        let delivered = json!({ "success": true, "result": { "outTrackId": "o",
            "deliverResults": [{ "spaceType": "IM_GROUP", "spaceId": "cid", "success": true, "carrierId": "c" }] } });
        let undelivered = json!({ "success": true, "result": { "outTrackId": "o",
            "deliverResults": [{ "spaceType": "IM_GROUP", "spaceId": "cid", "success": false, "errorMsg": "robot not in group" }] } });
        let cases = [
            (answer(200, delivered), Verdict::Delivered),
            (
                answer(200, json!({ "success": true, "result": true })),
                Verdict::Delivered,
            ),
            (answer(200, undelivered), Verdict::Permanent),
            (
                answer(
                    403,
                    json!({ "code": "Forbidden.AccessDenied.AccessTokenPermissionDenied", "message": "没有调用该接口的权限" }),
                ),
                Verdict::Permanent,
            ),
            (
                answer(
                    403,
                    json!({ "code": "Forbidden.AccessDenied.QpsLimitForApi", "message": "qps" }),
                ),
                Verdict::Retry { retry_after: None },
            ),
            (
                answer(
                    401,
                    json!({ "code": "InvalidAuthentication", "message": "bad token" }),
                ),
                Verdict::TokenInvalid,
            ),
            (
                answer(400, json!({ "code": "param.invalid" })),
                Verdict::Permanent,
            ),
            (answer(503, json!({})), Verdict::Retry { retry_after: None }),
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

    #[test]
    fn a_streaming_source_names_its_template_and_has_the_app_key() {
        let build = |extra: &str| {
            let s: SourceConfig = toml::from_str(&format!(
                "id = \"dt\"\nplatform = \"dingtalk\"\napp = \"a\"\nreply = true\nstream = true\n{extra}"
            ))
            .unwrap();
            DingtalkReply::from_source(&s)
                .map_err(|e| e.into_iter().map(|i| i.key).collect::<Vec<_>>())
        };
        let ok = build("app_key = \"k\"\napp_secret = \"s\"\ncard_template_id = \"tpl\"").unwrap();
        assert_eq!(
            ok.card,
            Some(CardTemplate {
                template_id: "tpl".into(),
                key: "content".into()
            })
        );
        let keyed = build(
            "app_key = \"k\"\napp_secret = \"s\"\ncard_template_id = \"tpl\"\ncard_key = \"msg\"",
        )
        .unwrap();
        assert_eq!(keyed.card.unwrap().key, "msg");
        assert_eq!(
            build("app_key = \"k\"\napp_secret = \"s\"").unwrap_err(),
            ["sources.dt.card_template_id"]
        );
        assert_eq!(
            build("card_template_id = \"tpl\"").unwrap_err(),
            ["sources.dt.app_key"]
        );
        // In Stream mode the connection's client id and secret are the app's key and secret.
        let stream_mode = build(
            "mode = \"stream\"\nclient_id = \"k\"\nclient_secret = \"s\"\ncard_template_id = \"tpl\"",
        );
        assert_eq!(stream_mode.unwrap().card.unwrap().template_id, "tpl");
    }
}
