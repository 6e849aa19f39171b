//! Who sent a request: its address, its headers as text, and the
//! `X-Forwarded-For` the proxy passes on (to the app, and to auth
//! endpoints). One place, so the proxy, admission, the caps and the access
//! log agree.
//!
//! The **peer** is the address a connection comes from: the socket's, or on
//! a `proxy_protocol` listener the source address of the PROXY header the
//! balancer wrote (the front door makes it the connection's peer address
//! before anything else reads it, see `front_door/proxy_header.rs`).
//!
//! A client's own `X-Forwarded-For` (whose leftmost entries anyone can
//! write), `Forwarded` and `X-Real-IP` are never believed nor passed on:
//! the app learns the peer address. The exception is a peer in
//! `[server] trusted_proxies` (a proxy the operator runs): its
//! `X-Forwarded-For` is read from the right, skipping the entries that are
//! trusted proxies too, and the first one that is not is the client (if
//! every entry is trusted, the leftmost). The proxy passes on the chain from
//! that client rightwards, with the peer appended, so an app that takes the
//! leftmost entry gets the same client; what the client wrote left of it is
//! dropped.
//!
//! The per-address caps count an IPv6 client by its /64 ([`counted_as`]):
//! one household or one phone has a whole /64 and may use any address in it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::header::HeaderName;
use ipnet::IpNet;
use pingora::protocols::http::ServerSession;

/// `X-Forwarded-For`: the client addresses a request passed through.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Headers that claim who the client is, which a client may write itself:
/// removed from what the proxy passes on (`X-Forwarded-For` is replaced).
pub const CLAIMED_IDENTITY: [&str; 3] = [X_FORWARDED_FOR, "forwarded", "x-real-ip"];

/// The bits of an IPv6 address that name one subscriber's network (a /64).
const IPV6_SUBSCRIBER_PREFIX: u32 = 64;

/// `[server] trusted_proxies`: the peers whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    /// The ranges; empty trusts no one. Shared by every request path.
    nets: Arc<Vec<IpNet>>,
}

impl TrustedProxies {
    pub fn new(nets: &[IpNet]) -> TrustedProxies {
        TrustedProxies {
            nets: Arc::new(nets.to_vec()),
        }
    }

    /// Whether `ip` (an IPv4 address may come IPv4-mapped) is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// Who a request came from, as far as the proxy can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the peer's, or, from a trusted proxy, the one
    /// its `X-Forwarded-For` names. `None` when the connection has no IP
    /// address (never on a TCP listener).
    pub ip: Option<IpAddr>,
    /// The `X-Forwarded-For` to send on: the client and the trusted proxies
    /// after it, the peer last.
    pub forwarded_for: Option<String>,
}

impl Client {
    /// Who sent the request on `session`.
    pub fn of(session: &ServerSession, trusted: &TrustedProxies) -> Client {
        let Some(peer) = peer(session) else {
            return Client {
                ip: None,
                forwarded_for: None,
            };
        };
        if !trusted.contains(peer) {
            return Client {
                ip: Some(peer),
                forwarded_for: Some(peer.to_string()),
            };
        }
        let values: Vec<&str> = session
            .req_header()
            .headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        believe_forwarded_for(&values, peer, trusted)
    }
}

/// The client a trusted `peer`'s `X-Forwarded-For` header lines (`values`,
/// in order) name: the rightmost entry that is not a trusted proxy; if all
/// are, the leftmost. An entry that is not an address ends the walk (only a
/// client writes such a thing), at the last address read.
fn believe_forwarded_for(values: &[&str], peer: IpAddr, trusted: &TrustedProxies) -> Client {
    // From the peer leftwards: the hops that are believed, the client last.
    let mut believed: Vec<IpAddr> = Vec::new();
    let entries = values.iter().rev().flat_map(|v| v.rsplit(','));
    for entry in entries {
        let Some(ip) = entry_address(entry) else {
            break;
        };
        believed.push(ip);
        if !trusted.contains(ip) {
            break;
        }
    }
    let client = believed.last().copied().unwrap_or(peer);
    let mut chain: Vec<String> = believed.iter().rev().map(IpAddr::to_string).collect();
    chain.push(peer.to_string());
    Client {
        ip: Some(client),
        forwarded_for: Some(chain.join(", ")),
    }
}

/// One `X-Forwarded-For` entry as an address: `1.2.3.4`, `2001:db8::1`, or
/// with a port (`1.2.3.4:5678`, `[2001:db8::1]:5678`), as some proxies write.
fn entry_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The peer's address: the socket's, or the PROXY header's on a
/// `proxy_protocol` listener (an IPv4 client of a dual-stack listener as
/// IPv4).
pub fn peer(session: &ServerSession) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
}

/// What the per-address caps count `ip` as: an IPv4 address as itself, an
/// IPv6 address as its /64.
pub fn counted_as(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mask = u128::MAX << (128 - IPV6_SUBSCRIBER_PREFIX);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
    }
}

/// A request header as text, when present and valid.
pub fn header(session: &ServerSession, name: impl AsRef<str>) -> Option<String> {
    let name = HeaderName::from_bytes(name.as_ref().as_bytes()).ok()?;
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        let nets: Vec<IpNet> = nets.iter().map(|n| n.parse().unwrap()).collect();
        TrustedProxies::new(&nets)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client_and_the_chain_starts_there() {
        let trusted = trusted(&["10.0.0.0/8"]);
        let client = believe_forwarded_for(
            &["6.6.6.6, 203.0.113.7, 10.0.0.2"],
            ip("10.0.0.1"),
            &trusted,
        );
        assert_eq!(client.ip, Some(ip("203.0.113.7")));
        assert_eq!(
            client.forwarded_for.as_deref(),
            Some("203.0.113.7, 10.0.0.2, 10.0.0.1"),
            "what the client wrote left of itself is dropped"
        );
    }

    #[test]
    fn header_lines_are_one_list_in_order() {
        let trusted = trusted(&["10.0.0.0/8"]);
        let client = believe_forwarded_for(
            &["6.6.6.6", "203.0.113.7,10.0.0.2"],
            ip("10.0.0.1"),
            &trusted,
        );
        assert_eq!(client.ip, Some(ip("203.0.113.7")));
    }

    #[test]
    fn when_every_entry_is_trusted_the_leftmost_is_the_client() {
        let trusted = trusted(&["10.0.0.0/8", "fd00::/8"]);
        let client = believe_forwarded_for(&["10.1.1.1, fd00::5"], ip("10.0.0.1"), &trusted);
        assert_eq!(client.ip, Some(ip("10.1.1.1")));
        let alone = believe_forwarded_for(&[], ip("10.0.0.1"), &trusted);
        assert_eq!(alone.ip, Some(ip("10.0.0.1")), "no header: the peer");
        assert_eq!(alone.forwarded_for.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn garbage_ends_the_walk_at_the_last_address_read() {
        let trusted = trusted(&["10.0.0.0/8"]);
        let client =
            believe_forwarded_for(&["1.2.3.4, evil\r, 10.0.0.9"], ip("10.0.0.1"), &trusted);
        assert_eq!(client.ip, Some(ip("10.0.0.9")));
        assert_eq!(client.forwarded_for.as_deref(), Some("10.0.0.9, 10.0.0.1"));
    }

    #[test]
    fn entries_with_ports_and_mapped_addresses_are_read_as_addresses() {
        let trusted = trusted(&["10.0.0.0/8"]);
        let client = believe_forwarded_for(
            &["[2001:db8::1]:443, ::ffff:10.0.0.3, 10.0.0.4:80"],
            ip("10.0.0.1"),
            &trusted,
        );
        assert_eq!(client.ip, Some(ip("2001:db8::1")));
        assert_eq!(
            client.forwarded_for.as_deref(),
            Some("2001:db8::1, 10.0.0.3, 10.0.0.4, 10.0.0.1")
        );
    }

    #[test]
    fn trusted_ranges_match_ipv4_mapped_peers() {
        let trusted = trusted(&["10.0.0.0/8"]);
        assert!(trusted.contains(ip("::ffff:10.1.2.3")));
        assert!(!trusted.contains(ip("11.0.0.1")));
        assert!(!TrustedProxies::default().contains(ip("10.0.0.1")));
    }

    #[test]
    fn ipv6_addresses_are_counted_by_their_64_and_ipv4_by_themselves() {
        assert_eq!(
            counted_as(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            counted_as(ip("2001:db8:1:2::1")),
            counted_as(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            counted_as(ip("2001:db8:1:2::1")),
            counted_as(ip("2001:db8:1:3::1"))
        );
        assert_eq!(counted_as(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(counted_as(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
