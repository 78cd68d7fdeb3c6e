//! The configuration: one TOML file, overridden by `SWITCHBOARD_…` environment variables, with
//! secrets as `env:`/`file:` references. This module owns the types, their defaults, loading and
//! the cross-checks between sections ([`Config::validate`]). Platform-, app- and target-specific
//! keys are carried as a table ([`SourceConfig::settings`], [`TargetConfig::settings`]) and
//! checked by the role crate that understands them; this module never interprets them.
pub use crate::auditors::{AuditConfig, AuditorConfig, ConsoleConfig, ConsoleRole};
pub use crate::nodes::NodeUrls;
use crate::secret::Secret;
use crate::units::{self, Rate};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The whole configuration of one Switchboard process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The RabbitMQ broker that carries events and jobs between roles.
    pub broker: BrokerConfig,
    /// The Redis server that holds idempotency keys, conversations, rate limits and tokens.
    pub redis: RedisConfig,
    #[serde(default)]
    pub ingress: IngressConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub dispatcher: DispatcherConfig,
    /// The connector role: outbound connections of the sources with `mode = "stream"`.
    #[serde(default)]
    pub connector: ConnectorConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The key that seals what the roles publish and the replay record (see docs/CONSOLE.md).
    #[serde(default)]
    pub audit: AuditConfig,
    /// The auditors' web console (`switchboard console`; inside `all` when present).
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
    /// Dify apps the worker may call.
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    /// Who may send us events (`/hooks/{id}`).
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Where answers may go.
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// The scheduler role (`switchboard scheduler`; inside `all`).
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// Events made by the clock.
    #[serde(default)]
    pub schedules: Vec<ScheduleConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// `/metrics`, `/healthz` and `/readyz` of `switchboard scheduler`.
    pub admin_listen: SocketAddr,
    /// How often each process looks for due ticks.
    #[serde(with = "units::duration")]
    pub poll: Duration,
    /// How long a process's claim on a tick lasts before another may fire it (the claimer died
    /// between claiming and publishing).
    #[serde(with = "units::duration")]
    pub claim_lease: Duration,
    /// A tick is still fired normally (counted late) up to this long after its time; older
    /// ticks missed while no scheduler ran are the `catch_up` rule's.
    #[serde(with = "units::duration")]
    pub grace: Duration,
    /// Ticks with a delay above this are counted late.
    #[serde(with = "units::duration")]
    pub late_after: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9094)),
            poll: Duration::from_millis(250),
            claim_lease: Duration::from_secs(10),
            grace: Duration::from_secs(60),
            late_after: Duration::from_secs(5),
        }
    }
}

/// What happens to ticks missed while no scheduler ran (older than `scheduler.grace`).
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// None of them is fired.
    Skip,
    /// The newest one is fired, the others skipped.
    #[default]
    Latest,
    /// The newest `catch_up_limit` are fired (oldest first), the others skipped.
    All,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Names the schedule (and its events' source): letters, digits, `-`, `_`.
    pub id: String,
    /// 5 fields (minute hour day month weekday) or 6 (seconds first).
    pub cron: String,
    /// IANA zone name the expression is read in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// The `[[apps]]` id to run.
    pub app: String,
    /// Dify inputs: static values; strings may use the built-ins (`{{ date }}`, `{{ tick }}`, …).
    #[serde(default)]
    pub inputs: BTreeMap<String, serde_json::Value>,
    /// The query, for chat apps (built-ins allowed).
    #[serde(default)]
    pub query: Option<String>,
    /// Dify's `user` for these runs.
    #[serde(default)]
    pub user: Option<String>,
    /// Where the result goes.
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub catch_up: CatchUp,
    /// At most this many missed ticks are fired by `catch_up = "all"`.
    #[serde(default = "default_catch_up_limit")]
    pub catch_up_limit: usize,
}

/// The platform word of scheduled events (`InboundEvent::platform`).
pub const SCHEDULE_PLATFORM: &str = "schedule";

impl ScheduleConfig {
    /// The source the worker handles a scheduled event as: its app and targets, no reply.
    pub fn as_source(&self) -> SourceConfig {
        SourceConfig {
            id: self.id.clone(),
            platform: SCHEDULE_PLATFORM.into(),
            mode: SourceMode::default(),
            app: self.app.clone(),
            reply: false,
            targets: self.targets.clone(),
            max_skew_secs: 0,
            group_conversation: GroupConversation::Shared,
            rate: None,
            allow_ips: Vec::new(),
            stream: false,
            stream_interval: d_1s(),
            stream_min_chars: default_stream_min_chars(),
            text_field: None,
            settings: Settings::default(),
        }
    }
}

fn default_timezone() -> String {
    "UTC".into()
}
fn default_true() -> bool {
    true
}
fn default_catch_up_limit() -> usize {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// AMQP URL, or a list of them (one per node of a cluster); each may carry a password, so
    /// each is a secret.
    pub url: NodeUrls,
    /// Every exchange and queue name starts with this.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How long a publisher waits for the broker's confirm before giving up (ingress answers 503).
    #[serde(default = "d_5s", with = "units::duration")]
    pub publish_timeout: Duration,
    /// Confirm-mode channels shared by all publishers of the process.
    #[serde(default = "default_channel_pool")]
    pub channel_pool: usize,
    /// Deliveries of one message after which the broker gives up on it as poison.
    #[serde(default = "default_delivery_limit")]
    pub delivery_limit: u32,
    /// Dead letters older than this are dropped by the broker (stream retention).
    #[serde(default = "d_30d", with = "units::duration")]
    pub dead_letter_max_age: Duration,
    /// The dead-letter stream keeps at most this many bytes.
    #[serde(default = "default_dead_letter_bytes", with = "units::bytes")]
    pub dead_letter_max_bytes: u64,
    /// Replicas of each quorum queue (`x-quorum-initial-group-size`); 0 leaves it to the broker
    /// (every cluster member, on RabbitMQ 3.x). Unset: 3 when `url` lists at least 3 nodes,
    /// else left to the broker. See [`BrokerConfig::quorum_group_size`].
    #[serde(default)]
    pub quorum_group_size: Option<u32>,
}

impl BrokerConfig {
    /// The replicas to ask for when declaring a quorum queue (`None`: the broker's default).
    pub fn quorum_group_size(&self) -> Option<u32> {
        match self.quorum_group_size {
            Some(0) => None,
            Some(n) => Some(n),
            None if self.url.len() >= 3 => Some(3),
            None => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Redis URL; may carry a password, so it is a secret.
    pub url: Secret,
    /// Every key starts with this.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_redis_pool")]
    pub pool_size: usize,
    /// How long a command waits for Redis's reply before it fails. redis-rs's own default
    /// (500 ms) fails commands that a loaded machine executes a little late; the caller then
    /// cannot tell whether they ran.
    #[serde(default = "d_5s", with = "units::duration")]
    pub response_timeout: Duration,
    /// Redis Sentinel: ask these Sentinels which server is the master and follow failovers.
    /// `url` then gives only the master's credentials, database and TLS; its host is ignored.
    #[serde(default)]
    pub sentinel: Option<SentinelConfig>,
    /// Encrypts access tokens, recorded answers and reply credentials in Redis (AES-256-GCM;
    /// at least 32 bytes, `env:`/`file:` as every secret). Unset: stored as plain text.
    #[serde(default)]
    pub encryption_key: Option<Secret>,
    /// Older keys: what they encrypted is still read, nothing new is encrypted with them.
    #[serde(default)]
    pub previous_encryption_keys: Vec<Secret>,
}

impl RedisConfig {
    /// The vault that seals and opens stored values with these keys.
    pub fn vault(&self) -> crate::vault::Vault {
        crate::vault::Vault::new(self.encryption_key.as_ref(), &self.previous_encryption_keys)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The Sentinels' URLs (`redis://host:26379`, with a password if the Sentinels need one).
    pub urls: Vec<Secret>,
    /// The name the Sentinels monitor the master under.
    #[serde(default = "default_master_name")]
    pub master_name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// The public listener: `/hooks/{source}`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz` and `/readyz` (`switchboard ingress` and `all`): the metrics name
    /// every source id, which is every hook URL, so they stay off the public port.
    pub admin_listen: SocketAddr,
    /// Requests with a larger body get 413.
    #[serde(with = "units::bytes")]
    pub body_limit: u64,
    /// From the end of the body to the answer: not kept by then, 503 (platforms retry; we never
    /// 200 what we did not keep).
    #[serde(with = "units::duration")]
    pub request_timeout: Duration,
    /// Verified requests doing their Redis and broker work at once; one that finds no slot
    /// within `request_timeout` gets 503.
    pub max_concurrency: usize,
    /// How long a platform's retry of an enqueued event is recognised at the door.
    #[serde(with = "units::duration")]
    pub dedup_ttl: Duration,
    /// A connection that has not sent a whole request head by then (also an idle keep-alive
    /// connection, and the TLS handshake) is closed.
    #[serde(with = "units::duration")]
    pub header_timeout: Duration,
    /// A body not received in full by then gets 408.
    #[serde(with = "units::duration")]
    pub body_timeout: Duration,
    /// Connections open at once; more wait in the kernel's accept queue. Keep it below the
    /// process's open-files limit.
    pub max_connections: usize,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs): the client is the right-most address
    /// in it that is not one of them. Empty: the peer address is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Serve HTTPS on `listen` (TLS 1.2 and 1.3 only) instead of plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            body_limit: 1 << 20,
            request_timeout: Duration::from_secs(10),
            max_concurrency: 4096,
            dedup_ttl: Duration::from_secs(24 * 3600),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 8192,
            trusted_proxies: Vec::new(),
            tls: None,
        }
    }
}

/// The ingress's certificate: PEM files, read again when their content changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub cert_file: std::path::PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
    /// How often the files are compared with what is served (a renewed certificate is picked
    /// up without a restart).
    #[serde(default = "d_10s", with = "units::duration")]
    pub reload_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectorConfig {
    /// `/metrics`, `/healthz` and `/readyz` (one line per connection) when the connector runs
    /// on its own.
    pub admin_listen: SocketAddr,
    /// Connections each stream source holds from one process (the platform gives each event
    /// to one of them).
    pub connections: usize,
    /// How often a quiet connection is probed with a WebSocket ping; nothing heard for three
    /// times this and the connection is taken for dead and replaced.
    #[serde(with = "units::duration")]
    pub heartbeat: Duration,
    /// The first reconnect waits up to this (full jitter); each failure in a row doubles it…
    #[serde(with = "units::duration")]
    pub backoff_initial: Duration,
    /// …up to this.
    #[serde(with = "units::duration")]
    pub backoff_max: Duration,
    /// Credentials the platform refused are tried again after this (and a clear log line).
    #[serde(with = "units::duration")]
    pub refused_retry: Duration,
    /// Opening a connection (the ticket request and the WebSocket handshake) gives up after this.
    #[serde(with = "units::duration")]
    pub open_timeout: Duration,
    /// Events of a source without acks (Discord's Gateway) that the broker could not take are
    /// held in memory, at most this many per source and process, and published again.
    pub hold_limit: usize,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        Self {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9094)),
            connections: 1,
            heartbeat: Duration::from_secs(30),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            refused_retry: Duration::from_secs(300),
            open_timeout: Duration::from_secs(10),
            hold_limit: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// `/metrics`, `/healthz` and `/readyz` when the worker runs on its own.
    pub admin_listen: SocketAddr,
    /// Events handled at once by one process (also the broker prefetch).
    pub concurrency: usize,
    /// Delay before each attempt: the first is the initial attempt (normally `0s`).
    #[serde(with = "units::durations")]
    pub retry_schedule: Vec<Duration>,
    /// Fraction of each delay taken off at random so that retries spread out.
    pub jitter: f64,
    /// How long a worker's claim on an event lasts without renewal.
    #[serde(with = "units::duration")]
    pub lease: Duration,
    /// How long an event's recorded answer is kept for redeliveries and retries.
    #[serde(with = "units::duration")]
    pub answer_ttl: Duration,
    /// A conversation idle for longer starts a new Dify conversation.
    #[serde(with = "units::duration")]
    pub conversation_ttl: Duration,
    /// In-flight calls get this long to finish after SIGTERM before their events are returned.
    #[serde(with = "units::duration")]
    pub shutdown_grace: Duration,
    /// The most of an answer's text that is kept and delivered; a longer one is cut with a
    /// marker that says so (at most 16 MiB, Dify's whole answer).
    #[serde(with = "units::bytes")]
    pub max_answer_bytes: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            concurrency: 512,
            retry_schedule: ["0s", "2s", "10s", "1m", "5m", "15m"]
                .iter()
                .filter_map(|s| units::parse_duration(s).ok())
                .collect(),
            jitter: 0.2,
            lease: Duration::from_secs(30),
            answer_ttl: Duration::from_secs(24 * 3600),
            conversation_ttl: Duration::from_secs(7 * 24 * 3600),
            shutdown_grace: Duration::from_secs(60),
            max_answer_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherConfig {
    pub admin_listen: SocketAddr,
    /// Jobs delivered at once by one process (also the broker prefetch).
    pub concurrency: usize,
    /// Delay before each attempt; the Standard Webhooks schedule by default.
    #[serde(with = "units::durations")]
    pub retry_schedule: Vec<Duration>,
    pub jitter: f64,
    /// A receiver's answer must arrive within this.
    #[serde(with = "units::duration")]
    pub request_timeout: Duration,
    /// Private, loopback or link-local networks that targets may nevertheless call.
    pub allow_private: Vec<ipnet::IpNet>,
    /// How long a delivered job is remembered so that a redelivery is not posted again.
    #[serde(with = "units::duration")]
    pub delivered_ttl: Duration,
    /// How long a job may keep being told to wait (a platform's "slow down", a paused robot)
    /// from the first such answer; after it the job is dead-lettered as `exhausted`.
    #[serde(with = "units::duration")]
    pub wait_budget: Duration,
    #[serde(with = "units::duration")]
    pub shutdown_grace: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            concurrency: 256,
            retry_schedule: [
                "0s", "5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h",
            ]
            .iter()
            .filter_map(|s| units::parse_duration(s).ok())
            .collect(),
            jitter: 0.2,
            request_timeout: Duration::from_secs(15),
            allow_private: Vec::new(),
            delivered_ttl: Duration::from_secs(7 * 24 * 3600),
            wait_budget: Duration::from_secs(24 * 3600),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `human` or `json`. `RUST_LOG` sets the level.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    /// Chatbot, chatflow and agent apps: `POST /chat-messages`.
    Chat,
    /// `POST /workflows/run`.
    Workflow,
    /// Text generators: `POST /completion-messages`.
    Completion,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ResponseMode {
    Streaming,
    Blocking,
}

impl ResponseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Streaming => "streaming",
            Self::Blocking => "blocking",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub id: String,
    pub base_url: String,
    pub api_key: Secret,
    pub kind: AppKind,
    #[serde(default = "default_mode")]
    pub response_mode: ResponseMode,
    /// A call (or a whole stream) that takes longer is abandoned and retried.
    #[serde(default = "d_120s", with = "units::duration")]
    pub timeout: Duration,
    /// Calls in flight to this app from one worker process.
    #[serde(default = "default_app_concurrency")]
    pub concurrency: usize,
    /// Dify input name -> event field (`text`, `source`, `chat_id`, `sender_id`, `sender_name`,
    /// `chat_type`, `platform`, `event_id`, or `payload.<json.path>`).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// For workflow apps: which output holds the answer text (default: `answer`, else `text`,
    /// else the only string output).
    #[serde(default)]
    pub answer_output: Option<String>,
}

impl AppConfig {
    /// The body fields this app's `inputs` mapping requires: `(input name, path in the body)`
    /// for every `payload.<path>` entry not marked optional with a trailing `?`. The generic
    /// JSON sources refuse a body without one of them at the door. Entries that do not parse
    /// are the worker's `validate_inputs` to report.
    pub fn required_body_fields(&self) -> Vec<(String, crate::jsonpath::JsonPath)> {
        self.inputs
            .iter()
            .filter(|(_, field)| !field.ends_with('?'))
            .filter_map(|(name, field)| {
                let path = field.strip_prefix("payload.")?;
                Some((name.clone(), crate::jsonpath::JsonPath::parse(path).ok()?))
            })
            .collect()
    }
}

/// How group chats map to Dify conversations.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GroupConversation {
    /// Everyone in the group shares one conversation.
    Shared,
    /// Each sender in a group keeps a conversation of their own.
    #[default]
    PerSender,
}

/// How a source's events reach us.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceMode {
    /// The platform calls `POST /hooks/{source}` on the ingress.
    #[default]
    Http,
    /// The connector role holds an outbound WebSocket to the platform, which pushes events over
    /// it (DingTalk Stream mode, Slack Socket Mode, Feishu/Lark long connection, Discord's
    /// Gateway): no public URL needed.
    Stream,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SourceConfig {
    pub id: String,
    /// wecom | dingtalk | feishu | lark | slack | telegram | github | standard | hmac | bearer
    pub platform: String,
    /// `http` (the default: callbacks to the ingress) or `stream` (the connector role).
    #[serde(default)]
    pub mode: SourceMode,
    /// The Dify app that answers this source's events.
    pub app: String,
    /// Answer back into the conversation the event came from.
    #[serde(default)]
    pub reply: bool,
    /// Also send every answer to these targets.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Signed timestamps older or newer than this are refused; 0 disables the window.
    #[serde(default = "default_skew")]
    pub max_skew_secs: u64,
    #[serde(default)]
    pub group_conversation: GroupConversation,
    /// Verified requests from this source beyond this rate get 429 with `Retry-After` (per
    /// ingress process). None: no limit.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// Addresses the source's requests may come from (CIDRs; see `ingress.trusted_proxies`).
    /// Empty: any.
    #[serde(default)]
    pub allow_ips: Vec<ipnet::IpNet>,
    /// Replies grow in the chat as Dify writes them (one message created, then edited), where
    /// the platform can edit a message; off by default. Needs `reply = true`.
    #[serde(default)]
    pub stream: bool,
    /// With `stream`: at most one progress update per this long.
    #[serde(default = "d_1s", with = "units::duration")]
    pub stream_interval: Duration,
    /// With `stream`: a progress update only when at least this many characters are new.
    #[serde(default = "default_stream_min_chars")]
    pub stream_min_chars: usize,
    /// Generic JSON sources (`standard`, `hmac`, `bearer`, `github`): where the chat text is in
    /// the body (a dotted path such as `data.note`), or `""` for no text. Unset: the body's
    /// `text`, `message`, `content` or `query` string, if it has one.
    #[serde(default)]
    pub text_field: Option<String>,
    /// The platform's own keys (token, secrets, ids), checked by the ingress platform module.
    #[serde(flatten)]
    pub settings: Settings,
}

/// A platform's or target kind's own keys. `Debug` lists the key names only: values may be
/// literal secrets.
#[derive(Clone, Deserialize, Default)]
#[serde(transparent)]
pub struct Settings(pub toml::Table);

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl std::ops::Deref for Settings {
    type Target = toml::Table;
    fn deref(&self) -> &toml::Table {
        &self.0
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct TargetConfig {
    pub id: String,
    /// wecom_robot | dingtalk_robot | feishu_bot | lark_bot | slack | rocketchat | telegram | webhook
    pub kind: String,
    /// Overrides the kind's platform limit.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// Overrides the dispatcher's schedule for this target.
    #[serde(default, with = "opt_durations")]
    pub retry_schedule: Option<Vec<Duration>>,
    /// The kind's own keys (url, secret, …), checked by the dispatcher target module.
    #[serde(flatten)]
    pub settings: Settings,
}

mod opt_durations {
    use super::*;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<Duration>>, D::Error> {
        Ok(Some(units::durations::deserialize(d)?))
    }
}

fn default_prefix() -> String {
    "switchboard".into()
}
fn default_master_name() -> String {
    "mymaster".into()
}
fn default_channel_pool() -> usize {
    8
}
fn default_delivery_limit() -> u32 {
    20
}
fn default_dead_letter_bytes() -> u64 {
    10 << 30
}
fn default_redis_pool() -> usize {
    64
}
fn default_stream_min_chars() -> usize {
    20
}
fn default_skew() -> u64 {
    300
}
fn default_mode() -> ResponseMode {
    ResponseMode::Streaming
}
fn default_app_concurrency() -> usize {
    512
}
fn d_1s() -> Duration {
    Duration::from_secs(1)
}
fn d_5s() -> Duration {
    Duration::from_secs(5)
}
fn d_10s() -> Duration {
    Duration::from_secs(10)
}
fn d_120s() -> Duration {
    Duration::from_secs(120)
}
fn d_30d() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

/// One problem in a config, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The key, written as a path: `sources.wecom-support.app`.
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// Every problem found in a config; loading fails if there is any.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the configuration has {} problem(s):", self.0.len())?;
        for issue in &self.0 {
            writeln!(f, "  - {issue}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn one(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self(vec![ConfigIssue {
            key: key.into(),
            problem: problem.into(),
        }])
    }
}

/// Extracts a config type from a file's figment with the `SWITCHBOARD_SECTION__KEY` overrides,
/// every problem naming its key.
pub(crate) fn figment_of<T: serde::de::DeserializeOwned>(
    figment: Figment,
) -> Result<T, ConfigError> {
    let figment = figment.merge(
        Env::prefixed("SWITCHBOARD_")
            // Only SECTION__KEY names override: SWITCHBOARD_CONFIG, or a secret kept in
            // SWITCHBOARD_AMQP_URL and referenced as `env:SWITCHBOARD_AMQP_URL`, are not keys.
            .filter(|key| key.as_str().contains("__"))
            .split("__")
            .lowercase(true),
    );
    figment.extract().map_err(|errors| {
        ConfigError(
            errors
                .into_iter()
                .map(|e| ConfigIssue {
                    key: if e.path.is_empty() {
                        "(top level)".into()
                    } else {
                        e.path.join(".")
                    },
                    problem: e.kind.to_string(),
                })
                .collect(),
        )
    })
}

/// The environment variable that names the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "SWITCHBOARD_CONFIG";

impl Config {
    /// Loads a config file, applies `SWITCHBOARD_SECTION__KEY` overrides and validates it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::parse_file(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a config file with its overrides, without the cross-checks of
    /// [`Config::validate`] (so that `config check` can report those with every other problem).
    pub fn parse_file(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::one(
                "--config",
                format!("no config file at {}", path.display()),
            ));
        }
        Self::from_figment(Figment::from(Toml::file(path)))
    }

    /// Parses and validates a config from TOML text (tests), with the same overrides.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config = Self::from_figment(Figment::from(Toml::string(text)))?;
        config.validate()?;
        Ok(config)
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        figment_of(figment)
    }

    /// Cross-checks between sections that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut issues = Vec::new();
        let mut push = |key: String, problem: String| issues.push(ConfigIssue { key, problem });
        for (key, prefix) in [
            ("broker.prefix", &self.broker.prefix),
            ("redis.prefix", &self.redis.prefix),
        ] {
            if prefix.is_empty()
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                push(
                    key.into(),
                    format!("`{prefix}` must be non-empty letters, digits, `-`, `_` or `.`"),
                );
            }
        }
        if self.broker.url.is_empty() {
            push("broker.url".into(), "needs at least one AMQP URL".into());
        }
        for (i, url) in self.broker.url.iter().enumerate() {
            if !url.expose().starts_with("amqp://") && !url.expose().starts_with("amqps://") {
                let key = match self.broker.url.len() {
                    1 => "broker.url".to_owned(),
                    _ => format!("broker.url[{i}]"),
                };
                push(key, "must start with amqp:// or amqps://".into());
            }
        }
        let redis_scheme =
            |s: &Secret| s.expose().starts_with("redis://") || s.expose().starts_with("rediss://");
        if !redis_scheme(&self.redis.url) {
            push(
                "redis.url".into(),
                "must start with redis:// or rediss://".into(),
            );
        }
        let short = |k: &Secret| k.expose().len() < crate::vault::MIN_KEY_BYTES;
        if self.redis.encryption_key.as_ref().is_some_and(short) {
            push(
                "redis.encryption_key".into(),
                format!("must be at least {} bytes", crate::vault::MIN_KEY_BYTES),
            );
        }
        if self.redis.previous_encryption_keys.iter().any(short) {
            push(
                "redis.previous_encryption_keys".into(),
                format!(
                    "each must be at least {} bytes",
                    crate::vault::MIN_KEY_BYTES
                ),
            );
        }
        if self.redis.encryption_key.is_none() && !self.redis.previous_encryption_keys.is_empty() {
            push(
                "redis.previous_encryption_keys".into(),
                "needs redis.encryption_key (the key that encrypts from now on)".into(),
            );
        }
        if let Some(sentinel) = &self.redis.sentinel {
            if sentinel.urls.is_empty() {
                push(
                    "redis.sentinel.urls".into(),
                    "needs at least one Sentinel URL".into(),
                );
            }
            if sentinel.urls.iter().any(|u| !redis_scheme(u)) {
                push(
                    "redis.sentinel.urls".into(),
                    "each must start with redis:// or rediss://".into(),
                );
            }
        }
        if !(1024..=16 << 20).contains(&self.worker.max_answer_bytes) {
            push(
                "worker.max_answer_bytes".into(),
                format!(
                    "{} must be at least 1KiB and at most 16MiB",
                    self.worker.max_answer_bytes
                ),
            );
        }
        check_schedule(
            &mut push,
            "worker.retry_schedule",
            &self.worker.retry_schedule,
        );
        check_schedule(
            &mut push,
            "dispatcher.retry_schedule",
            &self.dispatcher.retry_schedule,
        );
        for (key, j) in [
            ("worker.jitter", self.worker.jitter),
            ("dispatcher.jitter", self.dispatcher.jitter),
        ] {
            if !(0.0..1.0).contains(&j) {
                push(key.into(), format!("{j} must be at least 0 and below 1"));
            }
        }
        for issue in self
            .audit
            .issues()
            .into_iter()
            .chain(self.console.iter().flat_map(|c| c.issues()))
        {
            push(issue.key, issue.problem);
        }
        if self.worker.concurrency == 0 {
            push("worker.concurrency".into(), "must be at least 1".into());
        }
        if self.dispatcher.concurrency == 0 {
            push("dispatcher.concurrency".into(), "must be at least 1".into());
        }
        for (key, n) in [
            ("ingress.max_concurrency", self.ingress.max_concurrency),
            ("ingress.max_connections", self.ingress.max_connections),
        ] {
            if n == 0 {
                push(key.into(), "must be at least 1".into());
            }
        }
        let mut timeouts = vec![
            ("ingress.header_timeout", self.ingress.header_timeout),
            ("ingress.body_timeout", self.ingress.body_timeout),
        ];
        if let Some(tls) = &self.ingress.tls {
            timeouts.push(("ingress.tls.reload_interval", tls.reload_interval));
        }
        for (key, d) in timeouts {
            if d.is_zero() {
                push(key.into(), "must be above zero".into());
            }
        }
        if self.ingress.admin_listen == self.ingress.listen && self.ingress.listen.port() != 0 {
            push(
                "ingress.admin_listen".into(),
                "must differ from ingress.listen (the metrics stay off the public port)".into(),
            );
        }

        let ids_ok = |id: &str| {
            !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        };
        let mut app_ids = HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            let key = format!("apps[{i}]");
            if !ids_ok(&app.id) {
                push(
                    format!("{key}.id"),
                    format!("`{}` must be letters, digits, `-` or `_`", app.id),
                );
            } else if !app_ids.insert(app.id.as_str()) {
                push(
                    format!("apps.{}.id", app.id),
                    "is used by more than one app".into(),
                );
            }
            if !(app.base_url.starts_with("http://") || app.base_url.starts_with("https://")) {
                push(
                    format!("apps.{}.base_url", app.id),
                    "must be an http:// or https:// URL".into(),
                );
            }
            if app.concurrency == 0 {
                push(
                    format!("apps.{}.concurrency", app.id),
                    "must be at least 1".into(),
                );
            }
        }
        let target_ids: HashSet<&str> = self.targets.iter().map(|t| t.id.as_str()).collect();
        let mut seen_targets = HashSet::new();
        for (i, target) in self.targets.iter().enumerate() {
            if !ids_ok(&target.id) {
                push(
                    format!("targets[{i}].id"),
                    format!("`{}` must be letters, digits, `-` or `_`", target.id),
                );
            } else if !seen_targets.insert(target.id.as_str()) {
                push(
                    format!("targets.{}.id", target.id),
                    "is used by more than one target".into(),
                );
            }
            if let Some(s) = &target.retry_schedule {
                check_schedule(
                    &mut push,
                    &format!("targets.{}.retry_schedule", target.id),
                    s,
                );
            }
        }
        let mut seen_sources = HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            if !ids_ok(&source.id) {
                push(
                    format!("sources[{i}].id"),
                    format!("`{}` must be letters, digits, `-` or `_`", source.id),
                );
                continue;
            }
            if !seen_sources.insert(source.id.as_str()) {
                push(
                    format!("sources.{}.id", source.id),
                    "is used by more than one source".into(),
                );
            }
            if !app_ids.contains(source.app.as_str()) {
                push(
                    format!("sources.{}.app", source.id),
                    format!("no [[apps]] has id `{}`", source.app),
                );
            }
            if source.stream && !source.reply {
                push(
                    format!("sources.{}.stream", source.id),
                    "streams the reply into the conversation: it needs `reply = true`".into(),
                );
            }
            if source.stream && source.stream_interval.is_zero() {
                push(
                    format!("sources.{}.stream_interval", source.id),
                    "must be above zero (every edit counts against the platform's limit)".into(),
                );
            }
            for t in &source.targets {
                if !target_ids.contains(t.as_str()) {
                    push(
                        format!("sources.{}.targets", source.id),
                        format!("no [[targets]] has id `{t}`"),
                    );
                }
            }
        }
        let mut seen_schedules = HashSet::new();
        for (i, schedule) in self.schedules.iter().enumerate() {
            if !ids_ok(&schedule.id) {
                push(
                    format!("schedules[{i}].id"),
                    format!("`{}` must be letters, digits, `-` or `_`", schedule.id),
                );
                continue;
            }
            let key = format!("schedules.{}", schedule.id);
            if !seen_schedules.insert(schedule.id.as_str()) {
                push(
                    format!("{key}.id"),
                    "is used by more than one schedule".into(),
                );
            }
            if seen_sources.contains(schedule.id.as_str()) {
                push(
                    format!("{key}.id"),
                    "is also a source's id (a schedule's events carry its id as their source)"
                        .into(),
                );
            }
            if !app_ids.contains(schedule.app.as_str()) {
                push(
                    format!("{key}.app"),
                    format!("no [[apps]] has id `{}`", schedule.app),
                );
            }
            for t in &schedule.targets {
                if !target_ids.contains(t.as_str()) {
                    push(
                        format!("{key}.targets"),
                        format!("no [[targets]] has id `{t}`"),
                    );
                }
            }
            if schedule.catch_up_limit == 0 {
                push(format!("{key}.catch_up_limit"), "must be at least 1".into());
            }
        }
        if self.redis.response_timeout.is_zero() {
            push("redis.response_timeout".into(), "must be above zero".into());
        }
        if self.scheduler.poll.is_zero() || self.scheduler.claim_lease.is_zero() {
            push(
                "scheduler".into(),
                "poll and claim_lease must be above zero".into(),
            );
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(issues))
        }
    }

    /// The schedule of that id.
    pub fn schedule(&self, id: &str) -> Option<&ScheduleConfig> {
        self.schedules.iter().find(|s| s.id == id)
    }

    pub fn app(&self, id: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.id == id)
    }

    pub fn source(&self, id: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.id == id)
    }

    pub fn target(&self, id: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.id == id)
    }
}

fn check_schedule(push: &mut impl FnMut(String, String), key: &str, schedule: &[Duration]) {
    if schedule.is_empty() {
        push(
            key.into(),
            "needs at least one entry (the first attempt, usually \"0s\")".into(),
        );
    } else if schedule.len() > 50 {
        push(key.into(), "has more than 50 attempts".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [broker]
        url = "amqp://guest:guest@127.0.0.1:5672/%2f"
        [redis]
        url = "redis://127.0.0.1:6379"
        [[apps]]
        id = "support"
        base_url = "http://127.0.0.1:5001/v1"
        api_key = "app-123"
        kind = "chat"
        [[sources]]
        id = "crm"
        platform = "bearer"
        token = "t"
        app = "support"
        targets = ["hook"]
        [[targets]]
        id = "hook"
        kind = "webhook"
        url = "http://127.0.0.1:9/x"
        rate = "20/min"
    "#;

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.broker.prefix, "switchboard");
        assert_eq!(c.dispatcher.retry_schedule.len(), 10);
        assert_eq!(c.worker.concurrency, 512);
        assert_eq!(
            c.sources[0].settings.get("token").and_then(|v| v.as_str()),
            Some("t")
        );
        assert_eq!(c.targets[0].rate.unwrap().count, 20);
    }

    #[test]
    fn only_section_key_variables_override() {
        std::env::set_var("SWITCHBOARD_TEST_ONLY_SECRET", "x");
        std::env::set_var("SWITCHBOARD_WORKER__JITTER", "0.5");
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.worker.jitter, 0.5);
        std::env::remove_var("SWITCHBOARD_WORKER__JITTER");
        std::env::remove_var("SWITCHBOARD_TEST_ONLY_SECRET");
    }

    #[test]
    fn a_partial_section_takes_defaults_for_the_rest() {
        let c = Config::from_toml(&format!(
            "{MINIMAL}\n[ingress]\nlisten = \"127.0.0.1:1\"\n[worker]\nlease = \"3s\""
        ))
        .unwrap();
        assert_eq!(c.ingress.max_concurrency, 4096);
        assert_eq!(c.worker.concurrency, 512);
    }

    #[test]
    fn redis_replies_are_awaited_five_seconds_unless_configured_and_never_zero() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.redis.response_timeout, Duration::from_secs(5));
        let with =
            |t: &str| MINIMAL.replace("[redis]", &format!("[redis]\nresponse_timeout = \"{t}\""));
        let c = Config::from_toml(&with("800ms")).unwrap();
        assert_eq!(c.redis.response_timeout, Duration::from_millis(800));
        let e = Config::from_toml(&with("0s")).unwrap_err();
        let keys: Vec<_> = e.0.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["redis.response_timeout"], "{e}");
    }

    #[test]
    fn unknown_references_name_the_exact_key() {
        let text = MINIMAL
            .replace("app = \"support\"", "app = \"nope\"")
            .replace("targets = [\"hook\"]", "targets = [\"gone\"]");
        let e = Config::from_toml(&text).unwrap_err();
        let keys: Vec<_> = e.0.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["sources.crm.app", "sources.crm.targets"], "{e}");
    }

    #[test]
    fn streaming_is_off_by_default_and_needs_a_reply_and_an_interval() {
        let c = Config::from_toml(MINIMAL).unwrap();
        let s = &c.sources[0];
        assert!(!s.stream);
        assert_eq!(
            (s.stream_interval, s.stream_min_chars),
            (Duration::from_secs(1), 20)
        );
        let text = MINIMAL.replace(
            "app = \"support\"",
            "app = \"support\"\nstream = true\nstream_interval = \"0s\"",
        );
        let e = Config::from_toml(&text).unwrap_err();
        let keys: Vec<_> = e.0.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            ["sources.crm.stream", "sources.crm.stream_interval"],
            "{e}"
        );
    }

    #[test]
    fn type_errors_and_typos_name_the_key() {
        let e =
            Config::from_toml(&MINIMAL.replace("[redis]", "[redis]\npool_sise = 3")).unwrap_err();
        assert!(e.to_string().contains("pool_sise"), "{e}");
        let e = Config::from_toml(&MINIMAL.replace("rate = \"20/min\"", "rate = \"lots\""))
            .unwrap_err();
        assert!(e.to_string().contains("rate"), "{e}");
    }

    #[test]
    fn broker_url_takes_a_list_and_sets_the_quorum_group_size() {
        let three = MINIMAL.replace(
            "url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"",
            "url = [\"amqp://n1:5672/%2f\", \"amqp://n2:5672/%2f\", \"amqp://n3:5672/%2f\"]",
        );
        let cases = [
            (MINIMAL.to_owned(), 1, None),
            (three.clone(), 3, Some(3)),
            (
                three.replace("[broker]", "[broker]\nquorum_group_size = 5"),
                3,
                Some(5),
            ),
            (
                three.replace("[broker]", "[broker]\nquorum_group_size = 0"),
                3,
                None,
            ),
            (
                MINIMAL.replace("[broker]", "[broker]\nquorum_group_size = 3"),
                1,
                Some(3),
            ),
        ];
        for (text, nodes, group) in cases {
            let c = Config::from_toml(&text).unwrap();
            assert_eq!(c.broker.url.len(), nodes);
            assert_eq!(c.broker.quorum_group_size(), group, "{text}");
        }
        let bad = three.replace("amqp://n2", "http://n2");
        let e = Config::from_toml(&bad).unwrap_err();
        assert_eq!(e.0[0].key, "broker.url[1]", "{e}");
    }

    #[test]
    fn redis_sentinel_needs_urls() {
        let with = |extra: &str| MINIMAL.replace("[[apps]]", &format!("{extra}\n[[apps]]"));
        let c = Config::from_toml(&with(
            "[redis.sentinel]\nurls = [\"redis://127.0.0.1:26379\"]\nmaster_name = \"sb\"",
        ))
        .unwrap();
        let s = c.redis.sentinel.unwrap();
        assert_eq!((s.urls.len(), s.master_name.as_str()), (1, "sb"));
        let e = Config::from_toml(&with("[redis.sentinel]\nurls = []")).unwrap_err();
        assert_eq!(e.0[0].key, "redis.sentinel.urls", "{e}");
        let e = Config::from_toml(&with("[redis.sentinel]\nurls = [\"http://x\"]")).unwrap_err();
        assert_eq!(e.0[0].key, "redis.sentinel.urls", "{e}");
    }

    #[test]
    fn ingress_limits_must_be_usable_and_metrics_off_the_public_port() {
        let with = |ingress: &str| {
            Config::from_toml(&format!("{MINIMAL}\n[ingress]\n{ingress}"))
                .map(|_| ())
                .map_err(|e| e.0.into_iter().map(|i| i.key).collect::<Vec<_>>())
        };
        assert_eq!(with("trusted_proxies = [\"10.0.0.0/8\"]"), Ok(()));
        let cases = [
            ("max_connections = 0", "ingress.max_connections"),
            ("header_timeout = \"0s\"", "ingress.header_timeout"),
            ("body_timeout = \"0s\"", "ingress.body_timeout"),
            (
                "listen = \"127.0.0.1:9090\"\nadmin_listen = \"127.0.0.1:9090\"",
                "ingress.admin_listen",
            ),
            (
                "tls = { cert_file = \"c\", key_file = \"k\", reload_interval = \"0s\" }",
                "ingress.tls.reload_interval",
            ),
            (
                "trusted_proxies = [\"nonsense\"]",
                "ingress.trusted_proxies.0",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(with(text), Err(vec![key.to_owned()]), "{text}");
        }
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.ingress.admin_listen.to_string(), "127.0.0.1:9090");
        assert!(c.ingress.tls.is_none() && c.sources[0].rate.is_none());
    }

    #[test]
    fn debug_output_does_not_show_secrets() {
        let c = Config::from_toml(
            &MINIMAL
                .replace("app-123", "app-very-secret")
                .replace("token = \"t\"", "token = \"tok-very-secret\""),
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("app-very-secret"));
        assert!(!dbg.contains("guest:guest"));
        assert!(!dbg.contains("tok-very-secret"));
        assert!(dbg.contains("\"token\""), "keys stay visible: {dbg}");
    }
}
