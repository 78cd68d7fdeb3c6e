//! The connector role (`switchboard connector`, also inside `all`): for every source with
//! `mode = "stream"` it holds outbound WebSocket connections to the platform, which pushes
//! events over them, so no public callback URL is needed. Each pushed event takes the
//! ingress's own path (the platform module's normalisation into the same `InboundEvent` with
//! the same dedup key, door dedup, publish with the broker's confirm). Where the platform has
//! acks (DingTalk), an event is acknowledged on the connection only once kept: what could not
//! be kept is not acknowledged, and the platform delivers it again. Where it has none and does
//! not redeliver (Discord's Gateway), what the broker could not take is held in memory and
//! published later (`hold`). The protocols are pluggable (`protocol`); a connection's I/O is
//! `link`'s, keeping it up is `slot`'s, the reconnect timing `backoff`'s, `/readyz` per
//! connection `status`'s.
#![forbid(unsafe_code)]

pub mod backoff;
mod hold;
mod link;
pub mod protocol;
mod slot;
pub mod status;

use anyhow::Context as _;
use ingress::keep::{Door, Keeper};
use ingress::server::inbound_rate::InboundRates;
use shared::config::{Config, ConfigIssue, SourceConfig, SourceMode};
use shared::Services;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use status::{ConnectorReadiness, LinkState, Status};

/// The sources the connector serves.
pub fn stream_sources(config: &Config) -> impl Iterator<Item = &SourceConfig> {
    config
        .sources
        .iter()
        .filter(|s| s.mode == SourceMode::Stream)
}

/// The keys a source's block holds for its connection (none for an HTTP source).
pub fn keys(source: &SourceConfig) -> &'static [&'static str] {
    match source.mode {
        SourceMode::Stream => protocol::keys(&source.platform).unwrap_or(&[]),
        SourceMode::Http => &[],
    }
}

/// Every problem in the stream sources' connection keys and the `[connector]` section.
pub fn validate(config: &Config) -> Vec<ConfigIssue> {
    let mut issues: Vec<ConfigIssue> = stream_sources(config)
        .filter_map(|s| protocol::build(s).err())
        .flatten()
        .collect();
    let c = &config.connector;
    let mut issue = |key: &str, problem: &str| {
        issues.push(ConfigIssue {
            key: format!("connector.{key}"),
            problem: problem.into(),
        })
    };
    if c.connections == 0 {
        issue("connections", "must be at least 1");
    }
    if c.hold_limit == 0 {
        issue("hold_limit", "must be at least 1");
    }
    for (key, value) in [
        ("heartbeat", c.heartbeat),
        ("backoff_initial", c.backoff_initial),
        ("open_timeout", c.open_timeout),
        ("refused_retry", c.refused_retry),
    ] {
        if value.is_zero() {
            issue(key, "must be more than 0s");
        }
    }
    if c.backoff_max < c.backoff_initial {
        issue("backoff_max", "must be at least backoff_initial");
    }
    issues
}

/// Holds every stream source's connections until `shutdown`; events in flight finish and are
/// acknowledged before their connections close, and held events get a last attempt. `status`
/// is what `/readyz` reads.
pub async fn run(
    config: Arc<Config>,
    services: Services,
    status: Status,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let keeper = Keeper::new(services, config.ingress.dedup_ttl, Door::Connector);
    let rates = Arc::new(InboundRates::new(&config));
    let http = reqwest::Client::builder()
        .timeout(config.connector.open_timeout)
        .build()
        .context("cannot build the HTTP client")?;
    let mut slots = tokio::task::JoinSet::new();
    // Held events outlive the connections: their tasks stop after every slot closed.
    let (hold_stop, mut holds) = (CancellationToken::new(), tokio::task::JoinSet::new());
    for source in stream_sources(&config) {
        let acks = protocol::build(source)
            .map_err(shared::config::ConfigError)?
            .acks();
        let platform = ingress::platform::build(source).map_err(shared::config::ConfigError)?;
        let hold = (!acks).then(|| {
            let keep = Arc::new(hold::SourceKeeper {
                keeper: keeper.clone(),
                source: source.id.clone(),
                platform: platform.name(),
            });
            let c = &config.connector;
            let (hold, task) = hold::Hold::start(
                &source.id,
                keep,
                c.hold_limit,
                hold::backoff(c.backoff_initial, c.backoff_max),
                hold_stop.clone(),
            );
            holds.spawn(task);
            hold
        });
        let ctx = Arc::new(link::SourceCtx {
            source_id: source.id.clone(),
            platform,
            keeper: keeper.clone(),
            heartbeat: config.connector.heartbeat.max(Duration::from_millis(10)),
            hold,
            rates: rates.clone(),
        });
        for n in 0..config.connector.connections.max(1) {
            let name = format!("{}#{n}", source.id);
            status.set(&name, &source.id, LinkState::Connecting(None));
            // One per slot: what a protocol remembers between connections is the slot's.
            let protocol: Arc<dyn protocol::Protocol> = protocol::build(source)
                .map_err(shared::config::ConfigError)?
                .into();
            let slot = slot::Slot {
                name,
                protocol,
                ctx: ctx.clone(),
                http: http.clone(),
                status: status.clone(),
                config: config.connector.clone(),
            };
            slots.spawn(slot.run(shutdown.clone()));
        }
    }
    tracing::info!(connections = slots.len(), "connector started");
    if slots.is_empty() {
        shutdown.cancelled().await;
    }
    while slots.join_next().await.is_some() {}
    hold_stop.cancel();
    while holds.join_next().await.is_some() {}
    keeper.settle().await;
    tracing::info!("connector stopped");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml(&format!(
            r#"
[broker]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
[redis]
url = "redis://127.0.0.1:6379"
[[apps]]
id = "support"
base_url = "http://127.0.0.1:1"
api_key = "app-x"
kind = "chat"
{extra}
"#
        ))
        .expect("config")
    }

    fn issue_keys(issues: &[ConfigIssue]) -> Vec<String> {
        issues.iter().map(|i| i.key.clone()).collect()
    }

    #[test]
    fn stream_sources_name_every_missing_key_and_unsupported_platform() {
        let c = config(
            r#"
[connector]
connections = 0
hold_limit = 0
backoff_initial = "2s"
backoff_max = "1s"
[[sources]]
id = "ding"
platform = "dingtalk"
mode = "stream"
app = "support"
[[sources]]
id = "dc"
platform = "discord"
mode = "stream"
app = "support"
[[sources]]
id = "tg"
platform = "telegram"
mode = "stream"
app = "support"
secret_token = "x"
[[sources]]
id = "http-ding"
platform = "dingtalk"
app = "support"
app_secret = "s"
"#,
        );
        assert_eq!(
            issue_keys(&validate(&c)),
            [
                "sources.ding.client_id",
                "sources.ding.client_secret",
                "sources.dc.bot_token",
                "sources.tg.mode",
                "connector.connections",
                "connector.hold_limit",
                "connector.backoff_max",
            ]
        );
        assert_eq!(stream_sources(&c).count(), 3);
        let http = c.sources.iter().find(|s| s.id == "http-ding").unwrap();
        assert!(
            keys(http).is_empty(),
            "an HTTP source has no connection keys"
        );
    }

    #[test]
    fn a_complete_stream_source_is_valid_and_shows_no_secret() {
        let c = config(
            r#"
[[sources]]
id = "ding"
platform = "dingtalk"
mode = "stream"
app = "support"
client_id = "dingabc"
client_secret = "zzsecretzz"
"#,
        );
        assert!(validate(&c).is_empty());
        let built = protocol::build(&c.sources[0]).unwrap();
        assert_eq!(built.name(), "dingtalk");
        assert!(!format!("{built:?}").contains("zzsecretzz"));
        assert_eq!(keys(&c.sources[0]), protocol::dingtalk::KEYS);
    }

    #[test]
    fn a_discord_gateway_source_needs_only_its_bot_token() {
        let c = config(
            r#"
[[sources]]
id = "dc"
platform = "discord"
mode = "stream"
app = "support"
reply = true
bot_token = "zzsecretzz"
"#,
        );
        assert!(validate(&c).is_empty());
        let built = protocol::build(&c.sources[0]).unwrap();
        assert_eq!(built.name(), "discord");
        assert!(!built.acks(), "Discord has no acks");
        assert!(!format!("{built:?}").contains("zzsecretzz"));
        assert_eq!(keys(&c.sources[0]), protocol::discord::KEYS);
        // The ingress's Discord module takes it without a public key.
        assert!(ingress::platform::build(&c.sources[0]).is_ok());
    }
}
