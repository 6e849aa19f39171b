//! Where the app lives: scheme, host and port of an upstream server.
//!
//! The config names the app as `127.0.0.1:8080`, `http://app.internal:8080` or
//! `https://app.internal`, and a topic may name its own upstream with a full
//! URL. This module parses those and turns them into Pingora [`HttpPeer`]s,
//! the connection targets both the reverse proxy and the topic upstream
//! readers hand to Pingora's connector.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;

/// The scheme, host and port of an upstream HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Connect with TLS (`https://`).
    pub tls: bool,
    /// Host name or IP address, without brackets for IPv6.
    pub host: String,
    /// TCP port; defaults to 80 or 443 by scheme.
    pub port: u16,
}

/// How the proxy connects to an [`Origin`]; from the `[app]` config table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSettings {
    /// Give up on a TCP (and TLS) connect after this long.
    pub connect_timeout: Duration,
    /// Verify the origin's certificate and host name when `tls` is on.
    pub tls_verify: bool,
}

/// Why an origin could not be parsed or resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginError(pub String);

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OriginError {}

const HTTP_PORT: u16 = 80;
const HTTPS_PORT: u16 = 443;

impl Origin {
    /// Parses `host:port`, `http://host[:port]` or `https://host[:port]`, with
    /// no path.
    pub fn parse(text: &str) -> Result<Origin, OriginError> {
        let (origin, path) = Self::parse_url(text)?;
        if !path.is_empty() && path != "/" {
            return Err(OriginError(format!(
                "{text:?} must be an origin without a path, like \"127.0.0.1:8080\" or \"https://app.internal\""
            )));
        }
        Ok(origin)
    }

    /// Parses an origin followed by an optional path: `https://host:port/path?q`.
    /// Returns the origin and the path-and-query (empty when there is none).
    pub fn parse_url(text: &str) -> Result<(Origin, &str), OriginError> {
        let (tls, rest, scheme_given) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest, true)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest, true)
        } else if text.contains("://") {
            return Err(OriginError(format!(
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
            OriginError(format!(
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
                return Err(OriginError(format!(
                    "{text:?} needs a port, like \"127.0.0.1:8080\" (or give a scheme: \"http://{text}\")"
                )))
            }
        };
        Ok((
            Origin {
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

    /// Resolves the host and builds a Pingora peer for one connection.
    ///
    /// IP literals need no lookup; names are resolved on every call so a
    /// changed DNS record is picked up without a restart.
    pub async fn peer(&self, settings: &ConnectSettings) -> Result<HttpPeer, OriginError> {
        let addr = match self.host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, self.port),
            Err(_) => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| OriginError(format!("cannot resolve {}", self.host)))?,
        };
        let sni = if self.host.parse::<IpAddr>().is_ok() {
            String::new()
        } else {
            self.host.clone()
        };
        let mut peer = HttpPeer::new(addr, self.tls, sni);
        peer.options.connection_timeout = Some(settings.connect_timeout);
        peer.options.verify_cert = settings.tls_verify;
        peer.options.verify_hostname = settings.tls_verify;
        Ok(peer)
    }
}

impl fmt::Display for Origin {
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

    #[test]
    fn bare_host_port_is_plain_http() {
        let o = Origin::parse("127.0.0.1:8080").unwrap();
        assert_eq!((o.tls, o.host.as_str(), o.port), (false, "127.0.0.1", 8080));
    }

    #[test]
    fn https_defaults_to_port_443() {
        let o = Origin::parse("https://app.internal").unwrap();
        assert_eq!((o.tls, o.port), (true, 443));
        assert_eq!(o.authority(), "app.internal");
    }

    #[test]
    fn ipv6_literals_keep_brackets_in_authority() {
        let o = Origin::parse("http://[::1]:9000").unwrap();
        assert_eq!(o.host, "::1");
        assert_eq!(o.authority(), "[::1]:9000");
    }

    #[test]
    fn url_splits_origin_and_path() {
        let (o, path) = Origin::parse_url("http://127.0.0.1:9/s/{id}?x=1").unwrap();
        assert_eq!(o.port, 9);
        assert_eq!(path, "/s/{id}?x=1");
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
            assert!(Origin::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
