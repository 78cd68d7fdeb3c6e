//! The persistent-connection platforms the connector fault runs against, each as its gateway
//! stand-in: DingTalk Stream mode, Slack Socket Mode and Feishu's long connection. What differs
//! between them, and only that, lives here: the source block that points a stream source at the
//! stand-in, how an event is pushed (a robot message in a `CALLBACK` frame; an Events API
//! envelope; a binary `event` data frame), what counts as its acknowledgement on that protocol
//! (DingTalk: an answer frame with `code` 200 and the `messageId`; Slack: `{"envelope_id"}` of
//! the envelope; Feishu: the event's own frame sent back with `{"code":200}`), how often it went
//! out, and which API of the platform stand-in takes the replies. Each stand-in delivers again
//! whatever was not acknowledged, after `REDELIVER_AFTER` or at once when its connection is gone,
//! as the platforms do. The scenario itself is `connector`'s.
use ingress::platform::{dingtalk, feishu, slack};
use standins::feishu_ws::FeishuWsStandin;
use standins::platforms::{api, creds, PlatformStandin};
use standins::slack_socket::SlackSocketStandin;
use standins::stream::DingtalkStreamStandin;
use std::time::Duration;

/// How long a gateway waits for an ack before it delivers the event again.
const REDELIVER_AFTER: Duration = Duration::from_secs(2);

const DINGTALK_CLIENT_ID: &str = "faults-ding-app";
const DINGTALK_CLIENT_SECRET: &str = "faults-ding-secret";
const SLACK_APP_TOKEN: &str = "xapp-1-A0FAULTS-1-socketsecret";
/// The Feishu stand-in asks the connector for a ping frame every this many seconds.
const FEISHU_PING_SECS: u64 = 1;

/// A platform with a persistent connection whose events are acknowledged and redelivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Dingtalk,
    Slack,
    Feishu,
}

impl Platform {
    /// The word the fault's name and messages use.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Dingtalk => "dingtalk-stream",
            Platform::Slack => "slack-socket",
            Platform::Feishu => "feishu-ws",
        }
    }
}

/// One platform's gateway stand-in, running.
pub enum Gateway {
    Dingtalk(DingtalkStreamStandin),
    Slack(SlackSocketStandin),
    Feishu(FeishuWsStandin),
}

impl Gateway {
    /// Starts `platform`'s gateway; the replies it passes on go to the platform stand-in `p`.
    pub async fn start(platform: Platform, p: &PlatformStandin) -> Self {
        match platform {
            Platform::Dingtalk => Gateway::Dingtalk(
                DingtalkStreamStandin::start(
                    DINGTALK_CLIENT_ID,
                    DINGTALK_CLIENT_SECRET,
                    REDELIVER_AFTER,
                )
                .await
                .expect("the DingTalk Stream gateway"),
            ),
            Platform::Slack => Gateway::Slack(
                SlackSocketStandin::start(
                    SLACK_APP_TOKEN,
                    Some(p.slack_api_base()),
                    REDELIVER_AFTER,
                )
                .await
                .expect("the Slack Socket Mode endpoint"),
            ),
            Platform::Feishu => Gateway::Feishu(
                FeishuWsStandin::start(
                    (creds::FEISHU_APP_ID, creds::FEISHU_APP_SECRET),
                    FEISHU_PING_SECS,
                    Some(p.base_url()),
                    REDELIVER_AFTER,
                )
                .await
                .expect("the Feishu long-connection endpoint"),
            ),
        }
    }

    /// The `[[sources]]` block of a stream source of app `support` on this gateway.
    pub fn source(&self, p: &PlatformStandin) -> String {
        match self {
            Gateway::Dingtalk(gw) => format!(
                r#"
[[sources]]
id = "ding-stream"
platform = "dingtalk"
mode = "stream"
app = "support"
reply = true
client_id = "{DINGTALK_CLIENT_ID}"
client_secret = "{DINGTALK_CLIENT_SECRET}"
api_base = "{gw}"
session_webhook_origins = ["{platform}"]
"#,
                gw = gw.api_base(),
                platform = p.base_url(),
            ),
            Gateway::Slack(gw) => format!(
                r#"
[[sources]]
id = "slack-socket"
platform = "slack"
mode = "stream"
app = "support"
reply = true
app_token = "{SLACK_APP_TOKEN}"
api_base = "{gw}"
bot_token = "{bot}"
bot_user_id = "UBOT"
"#,
                gw = gw.api_base(),
                bot = creds::SLACK_BOT_TOKEN,
            ),
            Gateway::Feishu(gw) => format!(
                r#"
[[sources]]
id = "feishu-ws"
platform = "feishu"
mode = "stream"
app = "support"
reply = true
app_id = "{id}"
app_secret = "{secret}"
api_base = "{gw}"
"#,
                id = creds::FEISHU_APP_ID,
                secret = creds::FEISHU_APP_SECRET,
                gw = gw.api_base(),
            ),
        }
    }

    /// Pushes event `i` (text `event {i}`, its own platform id) to one connection; returns the
    /// key the gateway knows it by.
    pub fn push(&self, p: &PlatformStandin, i: usize) -> String {
        let text = format!("event {i}");
        match self {
            Gateway::Dingtalk(gw) => {
                let (session, expires) = p.dingtalk_session(chrono::Duration::hours(1));
                gw.push(&dingtalk::text_message(
                    &format!("faults-stream-{i}"),
                    "cidFaults",
                    false,
                    "staff1",
                    &text,
                    &session,
                    expires,
                ))
            }
            Gateway::Slack(gw) => gw.push_event(&slack::event_callback(
                &format!("EvFaults{i}"),
                slack::message_event("D0FAULTS", "im", "U0USER", &text, "1700000000.000100"),
            )),
            Gateway::Feishu(gw) => gw.push(&feishu::text_event_v2(
                &format!("ev-faults-{i}"),
                "",
                "oc_faults",
                false,
                "ou_faults",
                &format!("om_faults_{i}"),
                &text,
            )),
        }
    }

    /// The platform stand-in's API that takes the replies to this gateway's events.
    pub fn reply_api(&self) -> &'static str {
        match self {
            Gateway::Dingtalk(_) => api::DINGTALK_SESSION,
            Gateway::Slack(_) => api::SLACK_API,
            Gateway::Feishu(_) => api::FEISHU_REPLY,
        }
    }

    /// Connections open at the gateway now.
    pub fn connections(&self) -> usize {
        match self {
            Gateway::Dingtalk(gw) => gw.connections(),
            Gateway::Slack(gw) => gw.connections(),
            Gateway::Feishu(gw) => gw.connections(),
        }
    }

    /// Events pushed and not acknowledged yet (the gateway still delivers them again).
    pub fn unacked(&self) -> usize {
        match self {
            Gateway::Dingtalk(gw) => gw.unacked(),
            Gateway::Slack(gw) => gw.unacked(),
            Gateway::Feishu(gw) => gw.unacked(),
        }
    }

    /// How many acknowledgements came for the event `key` (Slack: for any of its envelopes).
    pub fn acks(&self, key: &str) -> u32 {
        match self {
            Gateway::Dingtalk(gw) => gw.acks(key),
            Gateway::Slack(gw) => gw.acks(key),
            Gateway::Feishu(gw) => gw.acks(key),
        }
    }

    /// How many times the event `key` went out: first delivery and redeliveries.
    pub fn deliveries(&self, key: &str) -> usize {
        match self {
            Gateway::Dingtalk(gw) => gw.deliveries(key) as usize,
            Gateway::Slack(gw) => gw.deliveries(key).len(),
            Gateway::Feishu(gw) => gw.deliveries(key) as usize,
        }
    }

    pub fn shutdown(&self) {
        match self {
            Gateway::Dingtalk(gw) => gw.shutdown(),
            Gateway::Slack(gw) => gw.shutdown(),
            Gateway::Feishu(gw) => gw.shutdown(),
        }
    }
}
