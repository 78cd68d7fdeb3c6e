//! The SSRF guard: receivers are named by operators and by routes, so a URL could point the
//! dispatcher at our own network (loopback, private ranges, cloud metadata). This module owns
//! the address policy ([`forbidden`]), the outbound HTTP [`client`] whose resolver drops
//! forbidden addresses so that the connection goes to exactly the address that was checked (no
//! DNS-rebinding window between check and connect), [`check_url`] for IP-literal hosts,
//! which reqwest connects to without asking any resolver, and [`send`], the one way the
//! dispatcher sends a request (deliveries and access-token fetches alike), which applies both.
//! It never follows redirects and never puts a URL (whose query may carry a key) in an error.
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use shared::config::DispatcherConfig;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The longest a TCP (and TLS) connection may take to establish, whatever the request timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reasons, as they appear in errors and logs.
pub mod reason {
    pub const UNSPECIFIED: &str = "unspecified";
    pub const THIS_NETWORK: &str = "this network (0.0.0.0/8)";
    pub const LOOPBACK: &str = "loopback";
    pub const PRIVATE: &str = "private";
    pub const CGNAT: &str = "shared address space (CGNAT)";
    pub const LINK_LOCAL: &str = "link-local";
    pub const METADATA: &str = "cloud metadata";
    pub const IETF: &str = "IETF protocol assignments";
    pub const DOCUMENTATION: &str = "documentation";
    pub const BENCHMARK: &str = "benchmarking";
    pub const RELAY: &str = "6to4 relay anycast";
    pub const MULTICAST: &str = "multicast";
    pub const BROADCAST: &str = "broadcast";
    pub const RESERVED: &str = "reserved";
    pub const UNIQUE_LOCAL: &str = "unique-local";
    pub const SITE_LOCAL: &str = "site-local (deprecated)";
    pub const DISCARD: &str = "discard-only";
    pub const NAT64_LOCAL: &str = "local-use NAT64";
    pub const SRV6: &str = "SRv6 segment identifiers";
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

#[allow(clippy::too_many_arguments)]
const fn v6(a: u16, b: u16, c: u16, d: u16, e: u16, f: u16, g: u16, h: u16, len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

/// Cloud metadata endpoints: refused even inside an allowed network unless the allow-list
/// names the address itself (a /32 or /128), because they hand out instance credentials.
const METADATA: &[IpAddr] = &[
    // AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle: IMDS.
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    // AWS ECS task metadata.
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    // Alibaba Cloud metadata (inside CGNAT space).
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // Azure WireServer: a public address that only ever means the host platform.
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    // AWS IMDS over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// IPv4 ranges no receiver may be on, first match wins (narrow before broad).
const V4_RANGES: &[(Ipv4Net, &str)] = &[
    (v4(0, 0, 0, 0, 32), reason::UNSPECIFIED),
    // Linux connects 0.x.x.x to the local host.
    (v4(0, 0, 0, 0, 8), reason::THIS_NETWORK),
    (v4(10, 0, 0, 0, 8), reason::PRIVATE),
    (v4(100, 64, 0, 0, 10), reason::CGNAT),
    (v4(127, 0, 0, 0, 8), reason::LOOPBACK),
    (v4(169, 254, 0, 0, 16), reason::LINK_LOCAL),
    (v4(172, 16, 0, 0, 12), reason::PRIVATE),
    (v4(192, 0, 0, 0, 24), reason::IETF),
    (v4(192, 0, 2, 0, 24), reason::DOCUMENTATION),
    (v4(192, 88, 99, 0, 24), reason::RELAY),
    (v4(192, 168, 0, 0, 16), reason::PRIVATE),
    (v4(198, 18, 0, 0, 15), reason::BENCHMARK),
    (v4(198, 51, 100, 0, 24), reason::DOCUMENTATION),
    (v4(203, 0, 113, 0, 24), reason::DOCUMENTATION),
    (v4(224, 0, 0, 0, 4), reason::MULTICAST),
    (v4(255, 255, 255, 255, 32), reason::BROADCAST),
    (v4(240, 0, 0, 0, 4), reason::RESERVED),
];

/// IPv6 ranges no receiver may be on (the forms that embed an IPv4 address are handled first).
const V6_RANGES: &[(Ipv6Net, &str)] = &[
    (v6(0, 0, 0, 0, 0, 0, 0, 0, 128), reason::UNSPECIFIED),
    (v6(0, 0, 0, 0, 0, 0, 0, 1, 128), reason::LOOPBACK),
    (v6(0x64, 0xff9b, 1, 0, 0, 0, 0, 0, 48), reason::NAT64_LOCAL),
    (v6(0x100, 0, 0, 0, 0, 0, 0, 0, 64), reason::DISCARD),
    // Includes Teredo (2001::/32), whose embedded IPv4 is obfuscated: refuse it whole.
    (v6(0x2001, 0, 0, 0, 0, 0, 0, 0, 23), reason::IETF),
    (
        v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0, 32),
        reason::DOCUMENTATION,
    ),
    (v6(0x3fff, 0, 0, 0, 0, 0, 0, 0, 20), reason::DOCUMENTATION),
    (v6(0x5f00, 0, 0, 0, 0, 0, 0, 0, 16), reason::SRV6),
    (v6(0xfc00, 0, 0, 0, 0, 0, 0, 0, 7), reason::UNIQUE_LOCAL),
    (v6(0xfe80, 0, 0, 0, 0, 0, 0, 0, 10), reason::LINK_LOCAL),
    (v6(0xfec0, 0, 0, 0, 0, 0, 0, 0, 10), reason::SITE_LOCAL),
    (v6(0xff00, 0, 0, 0, 0, 0, 0, 0, 8), reason::MULTICAST),
];

/// The IPv4 address an IPv6 address stands for, when it is one of the forms that reach an IPv4
/// host: IPv4-mapped `::ffff:a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d` (SIIT, RFC 2765),
/// IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and 6to4 `2002:AABB:CCDD::`. (The
/// local-use NAT64 prefix `64:ff9b:1::/48`, whose IPv4 may sit at any of RFC 6052's positions,
/// and Teredo are refused whole, in `V6_RANGES`.)
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(tail),
        // `::` and `::1` are themselves, not IPv4-compatible addresses.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Why `ip` may not be called, or `None` when it may. An address inside a network of `allow`
/// (the config's `allow_private`) may be called, except cloud metadata endpoints, which only an
/// entry naming exactly that address admits. IPv6 forms that embed an IPv4 address are judged
/// as that IPv4 address (and admitted by an allowed IPv4 network).
pub fn forbidden(ip: IpAddr, allow: &[IpNet]) -> Option<&'static str> {
    let inner = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    let judged = inner.unwrap_or(ip);
    let reason = reason_for(ip)?;
    let allowed = |net: &IpNet| {
        [Some(ip), inner]
            .into_iter()
            .flatten()
            .any(|a| net.contains(&a))
    };
    if METADATA.contains(&judged) {
        // Only an exact entry admits a metadata endpoint; 10.0.0.0/8-style entries never do.
        let exact = allow
            .iter()
            .any(|n| n.prefix_len() == n.max_prefix_len() && allowed(n));
        return (!exact).then_some(reason);
    }
    if allow.iter().any(allowed) {
        return None;
    }
    Some(reason)
}

/// The policy without the allow-list.
fn reason_for(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => {
            if METADATA.contains(&ip) {
                return Some(reason::METADATA);
            }
            V4_RANGES
                .iter()
                .find(|(net, _)| net.contains(&a))
                .map(|(_, r)| *r)
        }
        IpAddr::V6(a) => {
            if METADATA.contains(&ip) {
                return Some(reason::METADATA);
            }
            if let Some(inner) = embedded_v4(a) {
                return reason_for(IpAddr::V4(inner));
            }
            V6_RANGES
                .iter()
                .find(|(net, _)| net.contains(&a))
                .map(|(_, r)| *r)
        }
    }
}

/// A URL or an address the dispatcher will not call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    #[error("address {addr} is forbidden ({reason})")]
    Address { addr: IpAddr, reason: &'static str },
    #[error("scheme `{0}` is not allowed (http or https only)")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
}

/// Checks what can be checked before sending: the scheme, and the host when it is an IP literal
/// (reqwest connects to literals without asking the resolver). Names are checked by the
/// client's resolver at connect time. Call it before every send.
pub fn check_url(url: &url::Url, allow: &[IpNet]) -> Result<(), Forbidden> {
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(Forbidden::Scheme(other.to_owned())),
    }
    let addr = match url.host() {
        None => return Err(Forbidden::NoHost),
        Some(url::Host::Domain(_)) => return Ok(()),
        Some(url::Host::Ipv4(a)) => IpAddr::V4(a),
        Some(url::Host::Ipv6(a)) => IpAddr::V6(a),
    };
    match forbidden(addr, allow) {
        Some(reason) => Err(Forbidden::Address { addr, reason }),
        None => Ok(()),
    }
}

/// Why [`send`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The request could not be built (a bad URL or header): it never will be.
    #[error("cannot build the request: {}", crate::target::describe_transport_error(.0))]
    Build(reqwest::Error),
    /// The URL names an address the guard refuses: it will not change by retrying.
    #[error("refused by the SSRF guard: {0}")]
    Refused(Forbidden),
    /// Sending failed (a connection, a name the guarded resolver emptied, a timeout).
    #[error("{}", crate::target::describe_transport_error(.0))]
    Transport(reqwest::Error),
}

/// The one way the dispatcher sends a request: built on the client that made it (the guarded
/// [`client`], whose resolver checks names), its URL checked with [`check_url`] (IP literals,
/// which no resolver sees), then executed. Deliveries and access-token fetches both come here,
/// so an `api_base` from the config is guarded like a receiver's URL.
pub async fn send(
    request: reqwest::RequestBuilder,
    allow: &[IpNet],
) -> Result<reqwest::Response, SendError> {
    let (client, request) = request.build_split();
    let request = request.map_err(SendError::Build)?;
    check_url(request.url(), allow).map_err(SendError::Refused)?;
    client.execute(request).await.map_err(SendError::Transport)
}

/// Why a name gave no address the dispatcher may connect to.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error("every address of `{host}` is forbidden: {}", list(.refused))]
    Refused {
        host: String,
        refused: Vec<(IpAddr, &'static str)>,
    },
    #[error("`{host}` did not resolve: {error}")]
    Lookup { host: String, error: String },
    #[error("`{host}` has no address")]
    NoAddress { host: String },
}

fn list(refused: &[(IpAddr, &'static str)]) -> String {
    let mut s = String::new();
    for (i, (addr, why)) in refused.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(s, "{sep}{addr} ({why})");
    }
    s
}

/// Where names come from.
#[derive(Debug, Clone)]
enum Lookup {
    /// The system resolver (getaddrinfo on a blocking thread).
    System,
    /// A fixed table, for tests: a name not in it does not resolve.
    Static(Arc<HashMap<String, Vec<IpAddr>>>),
}

/// A reqwest resolver that resolves a name, drops every forbidden address and fails when none
/// remains. reqwest connects to the addresses it returns and only those, so what was checked is
/// what is connected to.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allow: Arc<[IpNet]>,
    lookup: Lookup,
}

impl GuardedResolver {
    /// Resolves through the system resolver.
    pub fn new(allow: &[IpNet]) -> Self {
        Self {
            allow: allow.into(),
            lookup: Lookup::System,
        }
    }

    /// Resolves from a fixed table (names compared without case and trailing dot).
    pub fn with_static<N: AsRef<str>>(
        allow: &[IpNet],
        table: impl IntoIterator<Item = (N, Vec<IpAddr>)>,
    ) -> Self {
        let table = table
            .into_iter()
            .map(|(n, a)| (normalise(n.as_ref()), a))
            .collect();
        Self {
            allow: allow.into(),
            lookup: Lookup::Static(Arc::new(table)),
        }
    }

    /// The addresses of `host` that may be called.
    pub async fn resolve_host(&self, host: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let found: Vec<IpAddr> = match &self.lookup {
            Lookup::System => tokio::net::lookup_host((host, 0u16))
                .await
                .map_err(|e| ResolveError::Lookup {
                    host: host.to_owned(),
                    error: e.to_string(),
                })?
                .map(|sa| sa.ip())
                .collect(),
            Lookup::Static(table) => table.get(&normalise(host)).cloned().unwrap_or_default(),
        };
        if found.is_empty() {
            return Err(ResolveError::NoAddress {
                host: host.to_owned(),
            });
        }
        let (mut ok, mut refused) = (Vec::new(), Vec::new());
        for ip in found {
            match forbidden(ip, &self.allow) {
                None => ok.push(SocketAddr::new(ip, 0)),
                Some(why) => refused.push((ip, why)),
            }
        }
        if !refused.is_empty() {
            tracing::warn!(host, refused = %list(&refused), "ssrf guard dropped addresses");
        }
        if ok.is_empty() {
            return Err(ResolveError::Refused {
                host: host.to_owned(),
                refused,
            });
        }
        Ok(ok)
    }
}

fn normalise(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        Box::pin(async move {
            // Port 0 is replaced by the URL's port (or the scheme's) by reqwest.
            let addrs = this.resolve_host(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The outbound client of the dispatcher, guarded with the system resolver and the config's
/// `allow_private`. Fails only if the TLS backend cannot start (a startup error).
pub fn client(cfg: &DispatcherConfig) -> Result<reqwest::Client, reqwest::Error> {
    client_with_resolver(cfg, GuardedResolver::new(&cfg.allow_private))
}

/// [`client`] with a given resolver (tests use [`GuardedResolver::with_static`]).
pub fn client_with_resolver(
    cfg: &DispatcherConfig,
    resolver: GuardedResolver,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        // A 3xx is a failed attempt that an operator fixes; following it would reach unchecked hosts.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve and connect on our behalf, past the guard.
        .no_proxy()
        .dns_resolver(Arc::new(resolver))
        // The whole attempt (connect, send, answer) must fit the receiver's time budget.
        .timeout(cfg.request_timeout)
        .connect_timeout(CONNECT_TIMEOUT.min(cfg.request_timeout))
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()
}
