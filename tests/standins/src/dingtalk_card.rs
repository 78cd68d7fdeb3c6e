//! DingTalk's card API on the platforms' stand-in, as the AI card streaming guide and the
//! official Stream SDK (`card_replier.py`) use it: `POST /v1.0/card/instances/createAndDeliver`
//! creates a card instance named by the caller's `outTrackId` and delivers it to an open space
//! (`dtv1.card//IM_GROUP.<conversation>` with `imGroupOpenDeliverModel.robotCode`, or
//! `dtv1.card//IM_ROBOT.<staff id>` with `imRobotOpenDeliverModel.spaceType`), and
//! `PUT /v1.0/card/streaming` writes one variable of it (`key`, `content`, `isFull` replaces,
//! else appends; `isFinalize` ends the stream). Both take the app's token in
//! `x-acs-dingtalk-access-token` (401 `InvalidAuthentication` otherwise) and answer errors the
//! v1.0 way: HTTP 4xx with `{code, message, requestid}`. On demand the app lacks the card
//! permissions (403 `Forbidden.AccessDenied.AccessTokenPermissionDenied`); writes to one
//! conversation beyond its limit answer 403 `Forbidden.AccessDenied.QpsLimitForApi`. A card is
//! keyed by its `outTrackId`: creating it again does not deliver a second one.
use crate::platforms::{api, PlatformStandin};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::Router;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Instant;

/// One card instance as the chat shows it.
#[derive(Debug, Clone)]
pub struct DingtalkCard {
    pub out_track_id: String,
    /// The open space it was delivered to (`dtv1.card//IM_GROUP.cid…`).
    pub space: String,
    pub template_id: String,
    /// The card's variables (`cardParamMap`, then every streaming write).
    pub params: HashMap<String, String>,
    /// A streaming write with `isFinalize` arrived.
    pub finalized: bool,
    pub created: Instant,
}

/// The card API's state.
#[derive(Debug, Default)]
pub struct DingtalkCards {
    cards: HashMap<String, DingtalkCard>,
    /// The app lacks `Card.Instance.Write` / `Card.Streaming.Write`.
    refused: bool,
}

pub(crate) fn routes(router: Router<PlatformStandin>) -> Router<PlatformStandin> {
    router
        .route(
            "/v1.0/card/instances/createAndDeliver",
            post(create_and_deliver),
        )
        .route("/v1.0/card/streaming", put(streaming))
}

impl PlatformStandin {
    /// Whether the app lacks the card permissions (every card call answers 403).
    pub fn refuse_dingtalk_cards(&self, refused: bool) {
        self.dingtalk_cards_state().refused = refused;
    }

    /// Every card delivered, oldest first.
    pub fn dingtalk_cards(&self) -> Vec<DingtalkCard> {
        let mut all: Vec<_> = self
            .dingtalk_cards_state()
            .cards
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|c| c.created);
        all
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "code": code, "message": message, "requestid": "standin-request" });
    (status, axum::Json(body)).into_response()
}

/// A string field of a body ("" when absent).
fn field(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn bad(code: &str) -> Response {
    error(StatusCode::BAD_REQUEST, code, code)
}

/// The token and permission checks both calls share.
fn admitted(p: &PlatformStandin, headers: &HeaderMap) -> Option<Response> {
    let token = headers
        .get("x-acs-dingtalk-access-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if p.token_state("dingtalk", token) != Some(true) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthentication",
            "不合法的access_token",
        ));
    }
    if p.dingtalk_cards_state().refused {
        return Some(error(
            StatusCode::FORBIDDEN,
            "Forbidden.AccessDenied.AccessTokenPermissionDenied",
            "没有调用该接口的权限，接口权限申请参考：https://open.dingtalk.com/document/orgapp-server/add-api-permission",
        ));
    }
    None
}

fn limited(p: &PlatformStandin, space: &str) -> Option<Response> {
    p.over_limit(api::DINGTALK_CARD, space).then(|| {
        error(
            StatusCode::FORBIDDEN,
            "Forbidden.AccessDenied.QpsLimitForApi",
            "请求被流控",
        )
    })
}

/// The open space a create names, if it fits its deliver model.
fn space_of(v: &Value) -> Option<String> {
    let space = v
        .get("openSpaceId")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let group = v
        .pointer("/imGroupOpenDeliverModel/robotCode")
        .and_then(Value::as_str);
    let robot = v
        .pointer("/imRobotOpenDeliverModel/spaceType")
        .and_then(Value::as_str);
    let kind = space
        .strip_prefix("dtv1.card//")
        .and_then(|k| k.split_once('.'));
    let fits = match kind {
        Some(("IM_GROUP", cid)) => !cid.is_empty() && group.is_some_and(|r| !r.is_empty()),
        Some(("IM_ROBOT", staff)) => !staff.is_empty() && robot == Some("IM_ROBOT"),
        _ => false,
    };
    fits.then(|| space.to_owned())
}

async fn create_and_deliver(
    State(p): State<PlatformStandin>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = p.arrive(api::DINGTALK_CARD) {
        return r;
    }
    if let Some(r) = admitted(&p, &headers) {
        return r;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = |k: &str| field(&v, k);
    let (template_id, out_track_id) = (text("cardTemplateId"), text("outTrackId"));
    if template_id.is_empty() {
        return bad("param.cardTemplateIdEmpty");
    }
    if out_track_id.is_empty() {
        return bad("param.outTrackIdEmpty");
    }
    let Some(space) = space_of(&v) else {
        return bad("param.openSpaceModelInvalid");
    };
    if let Some(r) = limited(&p, &space) {
        return r;
    }
    let params: HashMap<String, String> = v
        .pointer("/cardData/cardParamMap")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let shown = params.values().next().cloned().unwrap_or_default();
    let new = {
        let mut g = p.dingtalk_cards_state();
        let new = !g.cards.contains_key(&out_track_id);
        g.cards.entry(out_track_id.clone()).or_insert(DingtalkCard {
            out_track_id: out_track_id.clone(),
            space: space.clone(),
            template_id,
            params,
            finalized: false,
            created: Instant::now(),
        });
        new
    };
    if new {
        p.record(api::DINGTALK_CARD, &space, &shown, None, None, v);
    }
    let (space_type, space_id) = space
        .trim_start_matches("dtv1.card//")
        .split_once('.')
        .unwrap_or_default();
    axum::Json(
        json!({ "success": true, "result": { "outTrackId": out_track_id,
        "deliverResults": [{ "spaceType": space_type, "spaceId": space_id, "success": true,
                             "carrierId": format!("carrier-{out_track_id}") }] } }),
    )
    .into_response()
}

async fn streaming(State(p): State<PlatformStandin>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = p.arrive(api::DINGTALK_CARD_STREAMING) {
        return r;
    }
    p.held(api::DINGTALK_CARD_STREAMING).await;
    if let Some(r) = admitted(&p, &headers) {
        return r;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = |k: &str| field(&v, k);
    let (out_track_id, key, guid) = (text("outTrackId"), text("key"), text("guid"));
    let (Some(full), Some(finalize)) = (
        v.get("isFull").and_then(Value::as_bool),
        v.get("isFinalize").and_then(Value::as_bool),
    ) else {
        return bad("param.invalid");
    };
    if key.is_empty() || guid.is_empty() {
        return bad("param.invalid");
    }
    let Some(space) = p
        .dingtalk_cards_state()
        .cards
        .get(&out_track_id)
        .map(|c| c.space.clone())
    else {
        return bad("param.cardInstanceNotExist");
    };
    if let Some(r) = limited(&p, &space) {
        return r;
    }
    let shown = {
        let mut g = p.dingtalk_cards_state();
        let Some(card) = g.cards.get_mut(&out_track_id) else {
            return bad("param.cardInstanceNotExist");
        };
        let value = card.params.entry(key).or_default();
        if full {
            *value = text("content");
        } else {
            value.push_str(&text("content"));
        }
        card.finalized |= finalize;
        value.clone()
    };
    p.record(
        api::DINGTALK_CARD_STREAMING,
        &out_track_id,
        &shown,
        None,
        None,
        v,
    );
    axum::Json(json!({ "success": true, "result": true })).into_response()
}
