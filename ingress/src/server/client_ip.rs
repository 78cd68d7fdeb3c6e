//! Who a request comes from, and whether a source lets it in (pure; the server passes the peer
//! address and the headers in). The peer address is the client unless it is a trusted proxy
//! (`ingress.trusted_proxies`); then `X-Forwarded-For` is read from the right, each trusted
//! proxy skipped, and the first address that is not one is the client: everything to its left
//! was written by the client itself and proves nothing. A source's `allow_ips` is checked
//! against that address. Addresses are compared in their canonical form (an IPv4 peer seen on
//! an IPv6 socket as `::ffff:a.b.c.d` is `a.b.c.d`).
use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// The client's address as far as the trusted proxies vouch for it.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Several X-Forwarded-For headers are one list, in order.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    // The last address a trusted party vouched for: the peer, then each trusted hop.
    let mut vouched = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            // Garbage in the chain: nothing to its left can be placed; the client is unknown
            // beyond the last trusted hop, which is then the answer.
            return vouched;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        vouched = ip;
    }
    vouched
}

/// One `X-Forwarded-For` entry: an address, or an address with a port (`1.2.3.4:5678`,
/// `[::1]:5678`), as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Whether a source with `allow_ips` lets `client` in (an empty list lets everyone in).
pub fn allowed(client: IpAddr, allow_ips: &[IpNet]) -> bool {
    allow_ips.is_empty()
        || allow_ips
            .iter()
            .any(|net| net.contains(&client.to_canonical()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn who_the_client_is() {
        let proxies = nets(&["10.0.0.0/8", "fd00::/8"]);
        let cases: &[(&str, &[&str], &[IpNet], &str)] = &[
            // No trusted proxy: the header is the client's own word.
            ("203.0.113.9", &["198.51.100.1"], &[], "203.0.113.9"),
            // A peer that is not trusted: its header is ignored.
            ("203.0.113.9", &["198.51.100.1"], &proxies, "203.0.113.9"),
            // Behind one trusted proxy: the right-most entry.
            ("10.0.0.2", &["198.51.100.1"], &proxies, "198.51.100.1"),
            // The client prepended a lie: the right-most untrusted entry wins.
            (
                "10.0.0.2",
                &["1.1.1.1, 198.51.100.1"],
                &proxies,
                "198.51.100.1",
            ),
            // Two trusted proxies in a row.
            (
                "10.0.0.2",
                &["198.51.100.1, 10.0.0.7"],
                &proxies,
                "198.51.100.1",
            ),
            // Several headers are one list.
            (
                "10.0.0.2",
                &["1.1.1.1", "198.51.100.1, 10.0.0.7"],
                &proxies,
                "198.51.100.1",
            ),
            // Ports and IPv6 forms.
            ("10.0.0.2", &["198.51.100.1:4711"], &proxies, "198.51.100.1"),
            ("10.0.0.2", &["[2001:db8::1]:443"], &proxies, "2001:db8::1"),
            ("fd00::1", &["2001:db8::1"], &proxies, "2001:db8::1"),
            // Everyone trusted: the furthest trusted hop.
            ("10.0.0.2", &["10.9.9.9, 10.0.0.7"], &proxies, "10.9.9.9"),
            // No header: the proxy itself.
            ("10.0.0.2", &[], &proxies, "10.0.0.2"),
            // Garbage stops the walk at the last vouched address.
            (
                "10.0.0.2",
                &["198.51.100.1, nonsense"],
                &proxies,
                "10.0.0.2",
            ),
            ("10.0.0.2", &["nonsense, 10.0.0.7"], &proxies, "10.0.0.7"),
            // An IPv4 peer seen on an IPv6 socket.
            (
                "::ffff:10.0.0.2",
                &["198.51.100.1"],
                &proxies,
                "198.51.100.1",
            ),
            ("::ffff:203.0.113.9", &[], &[], "203.0.113.9"),
        ];
        for (peer, xff, trusted, want) in cases {
            let mut headers = HeaderMap::new();
            for v in *xff {
                headers.append("x-forwarded-for", v.parse().unwrap());
            }
            assert_eq!(
                client_ip(ip(peer), &headers, trusted),
                ip(want),
                "{peer} {xff:?}"
            );
        }
    }

    #[test]
    fn which_clients_a_source_lets_in() {
        let allow = nets(&["198.51.100.0/24", "2001:db8::/32"]);
        let cases = [
            ("198.51.100.7", &allow[..], true),
            ("198.51.101.7", &allow[..], false),
            ("2001:db8::5", &allow[..], true),
            ("::ffff:198.51.100.7", &allow[..], true),
            ("203.0.113.1", &[][..], true),
        ];
        for (client, list, want) in cases {
            assert_eq!(allowed(ip(client), list), want, "{client}");
        }
    }
}
