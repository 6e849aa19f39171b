//! The client connections the process holds: the opt-in cap per client
//! address, and the counters `/stats` shows.
//!
//! Every accepted connection takes an [`OpenConnection`] first, before any
//! byte is read or any TLS work is done, and gives it back when it closes.
//! `[limits] max_connections_per_ip` is off by default: thousands of browsers
//! can share one address (a NAT, a company proxy, a load balancer in front
//! of sse-fanout). When it is set and binds, the connection is closed at
//! once; refusals are counted, and the first is logged (a state change), so
//! a flood does not become a flood of log lines.
//!
//! The other counters record why connections were closed early by the
//! front door's bounds: TLS handshakes that failed or took too long, heads
//! that took too long or were too large, and HTTP/2 connections closed for
//! protocol abuse, and connections to a `proxy_protocol` listener that did
//! not start with a valid PROXY header.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::client;
use crate::config::ConnectionLimits;

/// Why the front door closed a connection early, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyClose {
    /// The TLS handshake took longer than `tls_handshake_timeout`.
    TlsHandshakeTimeout,
    /// The TLS handshake failed (no common version or cipher, not TLS at all).
    TlsHandshakeFailed,
    /// A request head (or an HTTP/2 preface) took longer than `header_timeout`.
    HeaderTimeout,
    /// An HTTP/1.1 request head was larger than `max_header_bytes` (`431`).
    HeaderTooLarge,
}

/// The counters, as numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Client connections open now.
    pub open: u64,
    /// Connections closed because their address had `max_connections_per_ip`.
    pub refused_per_ip: u64,
    /// TLS handshakes that took longer than `tls_handshake_timeout`.
    pub tls_handshake_timeouts: u64,
    /// TLS handshakes that failed.
    pub tls_handshake_failures: u64,
    /// Request heads (or HTTP/2 prefaces) not finished within `header_timeout`.
    pub header_timeouts: u64,
    /// HTTP/1.1 request heads over `max_header_bytes`.
    pub headers_too_large: u64,
    /// HTTP/2 connections closed for protocol abuse (a flood of stream
    /// resets, or an error the HTTP/2 layer answered with `GOAWAY`).
    pub h2_abuse_closures: u64,
    /// Connections to a `proxy_protocol` listener closed because they did
    /// not start with a valid PROXY header.
    pub proxy_header_invalid: u64,
}

/// The process's client connections: counters and the per-address cap.
pub struct Connections {
    /// `[limits] max_connections_per_ip`; `None` is no cap.
    /// (`usize::MAX` stands for no cap, so a reload can change it without
    /// a lock.)
    per_ip_cap: AtomicUsize,
    /// Open connections per client address; only kept when capped, and only
    /// for addresses with a connection open (so bounded by them).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Client connections open now.
    open: AtomicU64,
    refused_per_ip: AtomicU64,
    tls_handshake_timeouts: AtomicU64,
    tls_handshake_failures: AtomicU64,
    header_timeouts: AtomicU64,
    headers_too_large: AtomicU64,
    h2_abuse_closures: AtomicU64,
    proxy_header_invalid: AtomicU64,
    /// Whether the per-address cap's first refusal was logged.
    cap_logged: AtomicBool,
    /// Whether the first HTTP/2 abuse closure was logged.
    abuse_logged: AtomicBool,
    /// Whether the first connection without a valid PROXY header was logged.
    proxy_header_logged: AtomicBool,
}

/// A connection's place among the open ones; dropping it gives it back.
pub struct OpenConnection {
    connections: Arc<Connections>,
    /// The address counted against the cap (none when there is no cap).
    counted: Option<IpAddr>,
}

impl Connections {
    pub fn new(limits: &ConnectionLimits) -> Arc<Connections> {
        Arc::new(Connections {
            per_ip_cap: AtomicUsize::new(cap_value(limits)),
            per_ip: Mutex::new(HashMap::new()),
            open: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
            tls_handshake_timeouts: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
            headers_too_large: AtomicU64::new(0),
            h2_abuse_closures: AtomicU64::new(0),
            proxy_header_invalid: AtomicU64::new(0),
            cap_logged: AtomicBool::new(false),
            abuse_logged: AtomicBool::new(false),
            proxy_header_logged: AtomicBool::new(false),
        })
    }

    /// The per-address cap now.
    fn per_ip_cap(&self) -> Option<usize> {
        Some(self.per_ip_cap.load(Ordering::Relaxed)).filter(|&cap| cap != usize::MAX)
    }

    /// Applies `limits`' per-address cap to connections opened from now on
    /// (a reload); connections open already keep their place.
    pub fn set_limits(&self, limits: &ConnectionLimits) {
        self.per_ip_cap.store(cap_value(limits), Ordering::Relaxed);
    }

    fn per_ip(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a new connection from `address`, or `None` when the
    /// address already holds `max_connections_per_ip` (counted, and logged
    /// the first time).
    /// An IPv6 address is counted by its /64 ([`client::counted_as`]).
    pub fn open(self: &Arc<Self>, address: Option<IpAddr>) -> Option<OpenConnection> {
        let address = address.map(client::counted_as);
        let counted = match (self.per_ip_cap(), address) {
            (Some(cap), Some(address)) => {
                let mut per_ip = self.per_ip();
                let open = per_ip.entry(address).or_insert(0);
                if *open >= cap {
                    drop(per_ip);
                    self.refused_per_ip.fetch_add(1, Ordering::Relaxed);
                    if !self.cap_logged.swap(true, Ordering::Relaxed) {
                        log::warn!(
                            "max_connections_per_ip ({cap}) reached by {address}: its new connections are closed; \
                             further refusals are only counted (connections.refused_per_ip in /stats)"
                        );
                    }
                    return None;
                }
                *open += 1;
                Some(address)
            }
            _ => None,
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(OpenConnection {
            connections: self.clone(),
            counted,
        })
    }

    /// Counts a connection the front door closed early.
    pub fn record(&self, close: EarlyClose) {
        let counter = match close {
            EarlyClose::TlsHandshakeTimeout => &self.tls_handshake_timeouts,
            EarlyClose::TlsHandshakeFailed => &self.tls_handshake_failures,
            EarlyClose::HeaderTimeout => &self.header_timeouts,
            EarlyClose::HeaderTooLarge => &self.headers_too_large,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an HTTP/2 connection closed for protocol abuse; the first one
    /// is logged.
    pub fn record_h2_abuse(&self, peer: Option<IpAddr>, why: &str) {
        self.h2_abuse_closures.fetch_add(1, Ordering::Relaxed);
        if !self.abuse_logged.swap(true, Ordering::Relaxed) {
            let peer = peer.map_or_else(|| "a client".to_string(), |p| p.to_string());
            log::warn!(
                "closed an HTTP/2 connection from {peer} for protocol abuse ({why}); \
                 further closures are only counted (connections.h2_abuse_closures in /stats)"
            );
        }
    }

    /// Counts a connection to a `proxy_protocol` listener closed for not
    /// starting with a valid PROXY header; the first one is logged.
    pub fn record_proxy_header_invalid(&self, peer: Option<IpAddr>, why: &str) {
        self.proxy_header_invalid.fetch_add(1, Ordering::Relaxed);
        if !self.proxy_header_logged.swap(true, Ordering::Relaxed) {
            let peer = peer.map_or_else(|| "a peer".to_string(), |p| p.to_string());
            log::warn!(
                "closed a connection from {peer} to a proxy_protocol listener: {why}; \
                 every connection there must start with a PROXY header (is the balancer set to \
                 send-proxy or send-proxy-v2, and is the listener reachable only through it?); \
                 further closures are only counted (connections.proxy_header_invalid in /stats)"
            );
        }
    }

    /// The counters now.
    pub fn counts(&self) -> ConnectionCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ConnectionCounts {
            open: get(&self.open),
            refused_per_ip: get(&self.refused_per_ip),
            tls_handshake_timeouts: get(&self.tls_handshake_timeouts),
            tls_handshake_failures: get(&self.tls_handshake_failures),
            header_timeouts: get(&self.header_timeouts),
            headers_too_large: get(&self.headers_too_large),
            h2_abuse_closures: get(&self.h2_abuse_closures),
            proxy_header_invalid: get(&self.proxy_header_invalid),
        }
    }
}

/// `limits`' per-address cap as [`Connections::per_ip_cap`] keeps it.
fn cap_value(limits: &ConnectionLimits) -> usize {
    limits.max_connections_per_ip.unwrap_or(usize::MAX)
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("per_ip_cap", &self.per_ip_cap())
            .field("counts", &self.counts())
            .finish()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(address) = self.counted {
            let mut per_ip = self.connections.per_ip();
            if let Some(open) = per_ip.get_mut(&address) {
                *open -= 1;
                if *open == 0 {
                    per_ip.remove(&address);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn connections(cap: Option<usize>) -> Arc<Connections> {
        Connections::new(&ConnectionLimits {
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections_per_ip: cap,
        })
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn without_a_cap_one_address_may_open_any_number() {
        let connections = connections(None);
        let held: Vec<_> = (0..10_000)
            .map(|_| connections.open(ip(1)).unwrap())
            .collect();
        assert_eq!(connections.counts().open, 10_000);
        assert!(connections.per_ip().is_empty(), "nothing kept per address");
        drop(held);
        assert_eq!(connections.counts().open, 0);
    }

    #[test]
    fn the_cap_refuses_only_the_address_that_reached_it_and_counts() {
        let connections = connections(Some(2));
        let first = connections.open(ip(1)).unwrap();
        let _second = connections.open(ip(1)).unwrap();
        assert!(connections.open(ip(1)).is_none());
        assert!(connections.open(ip(2)).is_some(), "another address");
        assert_eq!(connections.counts().refused_per_ip, 1);
        drop(first);
        assert!(connections.open(ip(1)).is_some(), "a place came back");
    }

    #[test]
    fn closed_connections_leave_no_address_behind() {
        let connections = connections(Some(5));
        drop(connections.open(ip(7)).unwrap());
        assert!(connections.per_ip().is_empty());
        assert_eq!(connections.counts().open, 0);
    }
}
