//! Feishu's CardKit on the platforms' stand-in, as its documents describe it: `POST
//! /open-apis/cardkit/v1/cards` creates a card entity from card JSON 2.0 (`type: card_json`,
//! `data`: the JSON as a string; streaming needs `config.update_multi`, 300302 otherwise) and
//! answers its `card_id`; a reply with `msg_type: interactive` and content
//! `{"type":"card","data":{"card_id":…}}` sends it (once: an entity is sent one time only; a
//! repeated `uuid` is the same send); `PUT …/cards/{card_id}/elements/{element_id}/content`
//! replaces an element's text while streaming mode is on (300309 otherwise), and
//! `PUT …/cards/{card_id}` replaces the whole card (`card: {type, data}`) in any mode. Every write carries a `sequence` that must exceed the card's last (300317
//! otherwise). Errors answer HTTP 400 with `{code, msg}`: 99991663 bad token, 99991672 the
//! `cardkit:card:write` scope missing (on demand), 200740 no such card, 99991400 beyond a card's
//! limit (with `x-ogw-ratelimit-reset`).
use crate::platforms::{api, PlatformStandin};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::Router;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Instant;

/// One card entity.
#[derive(Debug, Clone)]
pub struct FeishuCard {
    pub card_id: String,
    /// The message the card replied to, once sent.
    pub replied_to: Option<String>,
    /// Element id → its text.
    pub elements: HashMap<String, String>,
    pub streaming: bool,
    pub last_sequence: i64,
    pub created: Instant,
}

#[derive(Debug, Default)]
pub struct FeishuCards {
    cards: HashMap<String, FeishuCard>,
    /// Sends by `uuid`: the message id each made.
    sends: HashMap<String, String>,
    /// The app lacks `cardkit:card:write`.
    refused: bool,
    serial: u64,
}

/// A card JSON's elements with an id: id → text.
fn elements_of(card: &Value) -> HashMap<String, String> {
    card["body"]["elements"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|e| {
                    let id = e.get("element_id")?.as_str()?;
                    let text = e["content"].as_str().unwrap_or_default();
                    Some((id.to_owned(), text.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn routes(router: Router<PlatformStandin>) -> Router<PlatformStandin> {
    router
        .route("/open-apis/cardkit/v1/cards", post(create))
        .route(
            "/open-apis/cardkit/v1/cards/{card_id}/elements/{element_id}/content",
            put(content),
        )
        .route("/open-apis/cardkit/v1/cards/{card_id}", put(update))
}

impl PlatformStandin {
    /// Whether the app lacks the `cardkit:card:write` scope.
    pub fn refuse_feishu_cards(&self, refused: bool) {
        self.feishu_cards_state().refused = refused;
    }

    /// Every card entity, oldest first.
    pub fn feishu_cards(&self) -> Vec<FeishuCard> {
        let mut all: Vec<_> = self.feishu_cards_state().cards.values().cloned().collect();
        all.sort_by_key(|c| c.created);
        all
    }
}

fn code(code: i64, msg: &str) -> Response {
    let status = if code == 0 {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    (
        status,
        axum::Json(json!({ "code": code, "msg": msg, "data": {} })),
    )
        .into_response()
}

fn admitted(p: &PlatformStandin, headers: &HeaderMap) -> Option<Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if p.token_state("feishu", token) != Some(true) {
        return Some(code(99991663, "Invalid access token for authorization."));
    }
    if p.feishu_cards_state().refused {
        return Some(code(
            99991672,
            "Access denied. One of the following scopes is required: [cardkit:card:write].",
        ));
    }
    None
}

async fn create(State(p): State<PlatformStandin>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = p.arrive(api::FEISHU_CARD_CREATE) {
        return r;
    }
    if let Some(r) = admitted(&p, &headers) {
        return r;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let data = v.get("data").and_then(Value::as_str).unwrap_or_default();
    let Ok(card) = serde_json::from_str::<Value>(data) else {
        return code(200220, "Failed to generate card content");
    };
    if v.get("type").and_then(Value::as_str) != Some("card_json") || card["schema"] != "2.0" {
        return code(10002, "invalid request parameter");
    }
    let streaming = card["config"]["streaming_mode"] == true;
    if streaming && card["config"]["update_multi"] != true {
        return code(300302, "update_multi property is false");
    }
    let elements = elements_of(&card);
    let card_id = {
        let mut g = p.feishu_cards_state();
        g.serial += 1;
        let card_id = format!("73554391974282{:05}", g.serial);
        g.cards.insert(
            card_id.clone(),
            FeishuCard {
                card_id: card_id.clone(),
                replied_to: None,
                elements,
                streaming,
                last_sequence: 0,
                created: Instant::now(),
            },
        );
        card_id
    };
    axum::Json(json!({ "code": 0, "msg": "success", "data": { "card_id": card_id } }))
        .into_response()
}

/// A reply whose content is a card by id (called by the reply route for `interactive`).
pub(crate) fn reply_with_card(p: &PlatformStandin, message_id: &str, v: Value) -> Response {
    let content: Value =
        serde_json::from_str(v["content"].as_str().unwrap_or_default()).unwrap_or(Value::Null);
    let card_id = content["data"]["card_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if content["type"] != "card" || card_id.is_empty() {
        return code(230001, "invalid message content");
    }
    let uuid = v["uuid"].as_str().unwrap_or_default().to_owned();
    let reply_id = format!("om_card_{card_id}");
    let shown = {
        let mut g = p.feishu_cards_state();
        if let Some(sent) = g.sends.get(&uuid).filter(|_| !uuid.is_empty()) {
            let sent = sent.clone();
            return axum::Json(
                json!({ "code": 0, "msg": "success", "data": { "message_id": sent } }),
            )
            .into_response();
        }
        let Some(card) = g.cards.get_mut(&card_id) else {
            return code(200740, "The card entity does not exist");
        };
        if card.replied_to.is_some() {
            return code(
                230099,
                "Failed to create card content: the card entity was sent already",
            );
        }
        card.replied_to = Some(message_id.to_owned());
        let shown = card.elements.values().next().cloned().unwrap_or_default();
        if !uuid.is_empty() {
            g.sends.insert(uuid, reply_id.clone());
        }
        shown
    };
    p.record(
        api::FEISHU_CARD_REPLY,
        message_id,
        &shown,
        None,
        Some(message_id.to_owned()),
        v,
    );
    axum::Json(json!({ "code": 0, "msg": "success", "data": { "message_id": reply_id } }))
        .into_response()
}

/// The checks every write to a card shares: token, scope, card, order, limit. `Ok`: the
/// write's sequence.
fn writable(
    p: &PlatformStandin,
    headers: &HeaderMap,
    card_id: &str,
    v: &Value,
) -> Result<i64, Box<Response>> {
    if let Some(r) = admitted(p, headers) {
        return Err(Box::new(r));
    }
    let Some(sequence) = v
        .get("sequence")
        .and_then(Value::as_i64)
        .filter(|s| *s >= 1)
    else {
        return Err(Box::new(code(10002, "invalid request parameter: sequence")));
    };
    let last = p
        .feishu_cards_state()
        .cards
        .get(card_id)
        .map(|c| c.last_sequence);
    match last {
        None => return Err(Box::new(code(200740, "The card entity does not exist"))),
        Some(last) if sequence <= last => {
            return Err(Box::new(code(
                300317,
                "The sequence number for operating on the card did not increment consecutively",
            )))
        }
        Some(_) => {}
    }
    if p.over_limit(api::FEISHU_CARD, card_id) {
        let mut r = code(99991400, "request trigger frequency limit");
        r.headers_mut().insert("x-ogw-ratelimit-reset", 1.into());
        return Err(Box::new(r));
    }
    Ok(sequence)
}

async fn content(
    State(p): State<PlatformStandin>,
    Path((card_id, element_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::FEISHU_CARD_CONTENT) {
        return r;
    }
    p.held(api::FEISHU_CARD_CONTENT).await;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let sequence = match writable(&p, &headers, &card_id, &v) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let text = v["content"].as_str().unwrap_or_default().to_owned();
    {
        let mut g = p.feishu_cards_state();
        let Some(card) = g.cards.get_mut(&card_id) else {
            return code(200740, "The card entity does not exist");
        };
        if !card.streaming {
            return code(300309, "streaming mode is closed");
        }
        let Some(element) = card.elements.get_mut(&element_id) else {
            return code(10002, "invalid request parameter: element_id");
        };
        *element = text.clone();
        card.last_sequence = sequence;
    }
    p.record(api::FEISHU_CARD_CONTENT, &card_id, &text, None, None, v);
    code(0, "success")
}

async fn update(
    State(p): State<PlatformStandin>,
    Path(card_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::FEISHU_CARD_UPDATE) {
        return r;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let sequence = match writable(&p, &headers, &card_id, &v) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Ok(card) = serde_json::from_str::<Value>(v["card"]["data"].as_str().unwrap_or_default())
    else {
        return code(200220, "Failed to generate card content");
    };
    if v["card"]["type"] != "card_json" || card["schema"] != "2.0" {
        return code(10002, "invalid request parameter");
    }
    let streaming = card["config"]["streaming_mode"] == true;
    if card["config"]["update_multi"] != true {
        return code(300302, "update_multi property is false");
    }
    let elements = elements_of(&card);
    let shown = elements.get("answer").cloned().unwrap_or_default();
    if let Some(c) = p.feishu_cards_state().cards.get_mut(&card_id) {
        c.elements = elements;
        c.streaming = streaming;
        c.last_sequence = sequence;
    }
    p.record(api::FEISHU_CARD_UPDATE, &card_id, &shown, None, None, v);
    code(0, "success")
}
