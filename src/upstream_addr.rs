//! Where the app lives: scheme, host and port of an upstream server.
//!
//! The config names the app as `127.0.0.1:8080`, `http://app.internal:8080` or
//! `https://app.internal`, and a topic may name its own upstream with a full
//! URL. This module parses those and turns them into Pingora [`HttpPeer`]s,
//! the connection targets the reverse proxy, the auth requests and the topic
//! upstream readers hand to Pingora's connector.
//!
//! A host name is resolved within a deadline (`[app] connect_timeout`), and
//! its address reused for [`DNS_CACHE_TTL`], so a changed record is picked up
//! within seconds while a busy proxy does not ask the resolver for every
//! request, nor waits on a resolver that does not answer. The cache is
//! process-wide and holds at most [`DNS_CACHE_ENTRIES`] names (the config
//! names only a few).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;

use crate::trusted_ca::TrustedCa;
use tokio::time::Instant;

/// How long a resolved address is reused before the name is resolved again.
pub const DNS_CACHE_TTL: Duration = Duration::from_secs(5);

/// The most host names the resolver cache keeps.
pub const DNS_CACHE_ENTRIES: usize = 64;

/// The scheme, host and port of an upstream HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddr {
    /// Connect with TLS (`https://`).
    pub tls: bool,
    /// Host name or IP address, without brackets for IPv6.
    pub host: String,
    /// TCP port; defaults to 80 or 443 by scheme.
    pub port: u16,
}

/// How the proxy connects to an [`UpstreamAddr`]; from the `[app]` config table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSettings {
    /// Give up on a TCP (and TLS) connect after this long.
    pub connect_timeout: Duration,
    /// Verify the origin's certificate and host name when `tls` is on.
    pub tls_verify: bool,
    /// Verify against these CAs instead of the system's (`[app] ca`).
    pub ca: Option<TrustedCa>,
}

/// Why an origin could not be parsed (or, from [`UpstreamAddr::peer`], resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddrError(pub String);

impl fmt::Display for UpstreamAddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UpstreamAddrError {}

/// Why a host name gave no address to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// The resolver did not answer within the deadline.
    TimedOut {
        /// The name asked for.
        host: String,
        /// The deadline.
        after: Duration,
    },
    /// The resolver answered with an error (unknown name, server failure).
    Failed {
        /// The name asked for.
        host: String,
        /// The resolver's words.
        reason: String,
    },
    /// The resolver answered, with no address.
    NoAddress {
        /// The name asked for.
        host: String,
    },
}

impl ResolveError {
    /// Whether asking again soon may help: a slow or failing resolver may
    /// recover; an empty answer stays empty until the record changes.
    pub fn retryable(&self) -> bool {
        !matches!(self, ResolveError::NoAddress { .. })
    }
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::TimedOut { host, after } => {
                write!(f, "cannot resolve {host}: no answer within {after:?}")
            }
            ResolveError::Failed { host, reason } => write!(f, "cannot resolve {host}: {reason}"),
            ResolveError::NoAddress { host } => write!(f, "cannot resolve {host}: no address"),
        }
    }
}

impl std::error::Error for ResolveError {}

impl From<ResolveError> for UpstreamAddrError {
    fn from(e: ResolveError) -> UpstreamAddrError {
        UpstreamAddrError(e.to_string())
    }
}

/// Recently resolved names: (host, port) → the address and when it expires.
struct NameCache {
    /// The entries, at most `capacity`.
    entries: HashMap<(String, u16), (SocketAddr, Instant)>,
    /// How many entries it may hold.
    capacity: usize,
    /// How long an entry is used.
    ttl: Duration,
}

impl NameCache {
    fn new(capacity: usize, ttl: Duration) -> NameCache {
        NameCache {
            entries: HashMap::new(),
            capacity,
            ttl,
        }
    }

    /// The address of `host:port`, if resolved less than `ttl` ago.
    fn get(&self, host: &str, port: u16, now: Instant) -> Option<SocketAddr> {
        self.entries
            .get(&(host.to_string(), port))
            .filter(|(_, expires)| *expires > now)
            .map(|(addr, _)| *addr)
    }

    /// Keeps an address for `ttl`; when full, drops expired entries, then
    /// the one closest to expiry.
    fn put(&mut self, host: &str, port: u16, addr: SocketAddr, now: Instant) {
        let key = (host.to_string(), port);
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, expires)| *expires > now);
            if self.entries.len() >= self.capacity {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(key, _)| key.clone());
                if let Some(oldest) = oldest {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries.insert(key, (addr, now + self.ttl));
    }
}

/// The process's resolver cache.
static RESOLVED: LazyLock<Mutex<NameCache>> =
    LazyLock::new(|| Mutex::new(NameCache::new(DNS_CACHE_ENTRIES, DNS_CACHE_TTL)));

/// Resolves `host:port` through `cache`, asking `lookup` (within `deadline`)
/// only when the cache has no fresh address. The lock is never held across
/// the lookup.
async fn resolve_cached<F, Fut>(
    cache: &Mutex<NameCache>,
    host: &str,
    port: u16,
    deadline: Duration,
    lookup: F,
) -> Result<SocketAddr, ResolveError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = std::io::Result<Vec<SocketAddr>>>,
{
    let lock = || cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(addr) = lock().get(host, port, Instant::now()) {
        return Ok(addr);
    }
    let addrs = match tokio::time::timeout(deadline, lookup()).await {
        Err(_) => {
            return Err(ResolveError::TimedOut {
                host: host.to_string(),
                after: deadline,
            })
        }
        Ok(Err(e)) => {
            return Err(ResolveError::Failed {
                host: host.to_string(),
                reason: e.to_string(),
            })
        }
        Ok(Ok(addrs)) => addrs,
    };
    let addr = addrs
        .first()
        .copied()
        .ok_or_else(|| ResolveError::NoAddress {
            host: host.to_string(),
        })?;
    lock().put(host, port, addr, Instant::now());
    Ok(addr)
}

const HTTP_PORT: u16 = 80;
const HTTPS_PORT: u16 = 443;

impl UpstreamAddr {
    /// Parses `host:port`, `http://host[:port]` or `https://host[:port]`, with
    /// no path.
    pub fn parse(text: &str) -> Result<UpstreamAddr, UpstreamAddrError> {
        let (origin, path) = Self::parse_url(text)?;
        if !path.is_empty() && path != "/" {
            return Err(UpstreamAddrError(format!(
                "{text:?} must be an origin without a path, like \"127.0.0.1:8080\" or \"https://app.internal\""
            )));
        }
        Ok(origin)
    }

    /// Parses an origin followed by an optional path: `https://host:port/path?q`.
    /// Returns the origin and the path-and-query (empty when there is none).
    pub fn parse_url(text: &str) -> Result<(UpstreamAddr, &str), UpstreamAddrError> {
        let (tls, rest, scheme_given) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest, true)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest, true)
        } else if text.contains("://") {
            return Err(UpstreamAddrError(format!(
                "{text:?}: only http:// and https:// are supported"
            )));
        } else {
            (false, text, false)
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        };
        let (host, port) = split_host_port(authority).ok_or_else(|| {
            UpstreamAddrError(format!(
                "{text:?} is not host:port, http://host[:port] or https://host[:port]"
            ))
        })?;
        let port = match port {
            Some(port) => port,
            None if scheme_given => {
                if tls {
                    HTTPS_PORT
                } else {
                    HTTP_PORT
                }
            }
            None => {
                return Err(UpstreamAddrError(format!(
                    "{text:?} needs a port, like \"127.0.0.1:8080\" (or give a scheme: \"http://{text}\")"
                )))
            }
        };
        Ok((
            UpstreamAddr {
                tls,
                host: host.to_string(),
                port,
            },
            path,
        ))
    }

    /// `host:port` as it goes in a `Host` header (IPv6 in brackets; the port
    /// left out when it is the scheme's default).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { HTTPS_PORT } else { HTTP_PORT };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Whether two origins are the same server: same scheme and port, host
    /// names equal ignoring case.
    pub fn same_as(&self, other: &UpstreamAddr) -> bool {
        self.tls == other.tls
            && self.port == other.port
            && self.host.eq_ignore_ascii_case(&other.host)
    }

    /// The address to connect to: an IP literal as it is; a name resolved
    /// within `deadline`, or taken from the cache when it was resolved less
    /// than [`DNS_CACHE_TTL`] ago.
    pub async fn resolve(&self, deadline: Duration) -> Result<SocketAddr, ResolveError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let (host, port) = (self.host.as_str(), self.port);
        resolve_cached(&RESOLVED, host, port, deadline, || async move {
            tokio::net::lookup_host((host, port))
                .await
                .map(|addrs| addrs.collect())
        })
        .await
    }

    /// Resolves the host (within `connect_timeout`) and builds a Pingora peer
    /// for one connection.
    pub async fn http_peer(&self, settings: &ConnectSettings) -> Result<HttpPeer, ResolveError> {
        let addr = self.resolve(settings.connect_timeout).await?;
        // An IP address is the name too: rustls checks the certificate
        // against it (and sends no SNI for it). An empty name would make
        // Pingora's rustls connector fail every handshake ("invalid dns
        // name") and skip verification.
        let mut peer = HttpPeer::new(addr, self.tls, self.host.clone());
        peer.options.connection_timeout = Some(settings.connect_timeout);
        peer.options.verify_cert = settings.tls_verify;
        peer.options.verify_hostname = settings.tls_verify;
        peer.options.ca = settings.ca.as_ref().map(TrustedCa::certificates);
        Ok(peer)
    }

    /// [`http_peer`](Self::http_peer), with the error as text for callers
    /// that only report it.
    pub async fn peer(&self, settings: &ConnectSettings) -> Result<HttpPeer, UpstreamAddrError> {
        Ok(self.http_peer(settings).await?)
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; `None` when malformed.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let close = rest.find(']')?;
        let host = &rest[..close];
        host.parse::<std::net::Ipv6Addr>().ok()?;
        match &rest[close + 1..] {
            "" => (host, None),
            port => (host, Some(port.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let valid_host = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !valid_host {
        return None;
    }
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_https_upstream_named_by_ip_address_is_verified_against_that_address() {
        let addr = UpstreamAddr::parse("https://127.0.0.1:8443").unwrap();
        let settings = ConnectSettings {
            connect_timeout: Duration::from_secs(1),
            tls_verify: true,
            ca: None,
        };
        let peer = addr.http_peer(&settings).await.unwrap();
        // Not empty: Pingora's rustls connector refuses an empty name.
        assert_eq!(peer.sni, "127.0.0.1");
        assert!(peer.options.verify_cert && peer.options.verify_hostname);
    }

    #[test]
    fn bare_host_port_is_plain_http() {
        let o = UpstreamAddr::parse("127.0.0.1:8080").unwrap();
        assert_eq!((o.tls, o.host.as_str(), o.port), (false, "127.0.0.1", 8080));
    }

    #[test]
    fn https_defaults_to_port_443() {
        let o = UpstreamAddr::parse("https://app.internal").unwrap();
        assert_eq!((o.tls, o.port), (true, 443));
        assert_eq!(o.authority(), "app.internal");
    }

    #[test]
    fn ipv6_literals_keep_brackets_in_authority() {
        let o = UpstreamAddr::parse("http://[::1]:9000").unwrap();
        assert_eq!(o.host, "::1");
        assert_eq!(o.authority(), "[::1]:9000");
    }

    #[test]
    fn url_splits_origin_and_path() {
        let (o, path) = UpstreamAddr::parse_url("http://127.0.0.1:9/s/{id}?x=1").unwrap();
        assert_eq!(o.port, 9);
        assert_eq!(path, "/s/{id}?x=1");
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_resolved_name_is_reused_until_its_ttl_ends() {
        let cache = Mutex::new(NameCache::new(4, Duration::from_secs(5)));
        let lookups = std::sync::atomic::AtomicUsize::new(0);
        let resolve = || {
            resolve_cached(&cache, "app.internal", 80, Duration::from_secs(1), || {
                lookups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { Ok(vec![addr("10.0.0.1:80")]) }
            })
        };
        assert_eq!(resolve().await, Ok(addr("10.0.0.1:80")));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(resolve().await, Ok(addr("10.0.0.1:80")));
        assert_eq!(lookups.load(std::sync::atomic::Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(resolve().await, Ok(addr("10.0.0.1:80")));
        assert_eq!(lookups.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resolver_that_does_not_answer_is_given_up_on_at_the_deadline() {
        let cache = Mutex::new(NameCache::new(4, Duration::from_secs(5)));
        let result = resolve_cached(&cache, "slow.internal", 80, Duration::from_secs(2), || {
            std::future::pending::<std::io::Result<Vec<SocketAddr>>>()
        })
        .await;
        assert_eq!(
            result,
            Err(ResolveError::TimedOut {
                host: "slow.internal".into(),
                after: Duration::from_secs(2)
            })
        );
        assert!(result.unwrap_err().retryable());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_and_empty_answers_are_typed_and_not_cached() {
        let cache = Mutex::new(NameCache::new(4, Duration::from_secs(5)));
        let failed = resolve_cached(
            &cache,
            "gone.internal",
            80,
            Duration::from_secs(1),
            || async { Err(std::io::Error::other("no such name")) },
        )
        .await;
        assert!(matches!(failed, Err(ResolveError::Failed { .. })));
        let empty = resolve_cached(
            &cache,
            "gone.internal",
            80,
            Duration::from_secs(1),
            || async { Ok(vec![]) },
        )
        .await;
        assert_eq!(
            empty,
            Err(ResolveError::NoAddress {
                host: "gone.internal".into()
            })
        );
        assert!(cache.lock().unwrap().entries.is_empty());
    }

    #[test]
    fn the_name_cache_never_holds_more_than_its_capacity() {
        let mut cache = NameCache::new(2, Duration::from_secs(5));
        let now = Instant::now();
        for (i, host) in ["a", "b", "c", "d"].iter().enumerate() {
            cache.put(
                host,
                80,
                addr("10.0.0.1:80"),
                now + Duration::from_millis(i as u64),
            );
            assert!(cache.entries.len() <= 2);
        }
        let later = now + Duration::from_millis(10);
        assert!(cache.get("d", 80, later).is_some());
        assert!(cache.get("a", 80, later).is_none());
    }

    #[test]
    fn same_origin_ignores_host_case_but_not_scheme_or_port() {
        let app = UpstreamAddr::parse("http://App.Internal:8080").unwrap();
        assert!(app.same_as(&UpstreamAddr::parse("app.internal:8080").unwrap()));
        assert!(!app.same_as(&UpstreamAddr::parse("https://app.internal:8080").unwrap()));
        assert!(!app.same_as(&UpstreamAddr::parse("app.internal:8081").unwrap()));
    }

    #[test]
    fn malformed_origins_are_refused() {
        for bad in [
            "localhost",
            "ftp://x:1",
            "http://:80",
            "http://x:0",
            "http://x:99999",
            "x y:1",
            "http://x:1/path",
        ] {
            assert!(UpstreamAddr::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
