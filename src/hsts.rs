//! HTTP Strict Transport Security: the `Strict-Transport-Security` header a
//! TLS listener with `hsts = "max-age=..."` puts on every answer.
//!
//! A browser that saw the header once on an HTTPS answer refuses plain HTTP
//! to that host (and, with `includeSubDomains`, its subdomains) for
//! `max-age` seconds, so a network attacker cannot strip TLS from its next
//! visit. It is per listener: it is only ever sent over TLS (the config
//! refuses it on a plaintext listener; browsers ignore it there anyway).
//!
//! Which listener a session came in on is found from the session's local
//! address, as the front door finds a connection's listener, so every
//! answer path (the reverse proxy, subscription streams and their refusals,
//! preflights, the front door's own `431`) asks the same [`Hsts`] table.
//! An app that sends its own `Strict-Transport-Security` keeps it: the
//! proxy adds the header only where there is none.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, STRICT_TRANSPORT_SECURITY};
use pingora::protocols::http::ServerSession;

use crate::config::Listener;
use crate::front_door::listener_at;

/// The `Strict-Transport-Security` value of every listener that has one.
#[derive(Debug, Clone, Default)]
pub struct Hsts {
    /// Each `[[listen]]` address, and its header value if it sends one.
    /// Shared: every answer path holds the same table.
    by_listener: Arc<Vec<(SocketAddr, Option<HeaderValue>)>>,
}

impl Hsts {
    /// The table of `listeners` (values already checked by the config).
    pub fn new(listeners: &[Listener]) -> Hsts {
        let by_listener = listeners
            .iter()
            .map(|l| {
                let value = l
                    .hsts
                    .as_deref()
                    .and_then(|v| HeaderValue::from_str(v).ok());
                (l.addr, value)
            })
            .collect();
        Hsts {
            by_listener: Arc::new(by_listener),
        }
    }

    /// The value for a connection accepted on `local`, if its listener sends one.
    pub fn for_local(&self, local: Option<SocketAddr>) -> Option<&HeaderValue> {
        if self.by_listener.iter().all(|(_, v)| v.is_none()) {
            return None;
        }
        listener_at(&self.by_listener, local?)?.as_ref()
    }

    /// The value for `session`'s listener, if it sends one.
    pub fn for_session(&self, session: &ServerSession) -> Option<&HeaderValue> {
        self.for_local(session.server_addr().and_then(|a| a.as_inet()).copied())
    }

    /// The header (name and value) for `session`, as the extra headers the
    /// answers on topic paths carry.
    pub fn header_for(&self, session: &ServerSession) -> Option<(HeaderName, String)> {
        let value = self.for_session(session)?.to_str().ok()?;
        Some((STRICT_TRANSPORT_SECURITY, value.to_string()))
    }
}

/// The longest `max-age` accepted, in digits: more is surely a typo (ten
/// digits are three centuries).
const MAX_AGE_DIGITS: usize = 10;

/// Checks an `hsts` value: `max-age=<seconds>`, then optionally
/// `; includeSubDomains` and `; preload`, in that order (RFC 6797 §6.1;
/// directive names in any letter case). The error says what to write.
pub fn check(value: &str) -> Result<(), String> {
    let usage =
        "write e.g. \"max-age=63072000\" or \"max-age=63072000; includeSubDomains; preload\"";
    let mut directives = value.split(';').map(str::trim);
    let max_age = directives.next().unwrap_or_default();
    let seconds = max_age
        .split_once('=')
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("max-age"))
        .map(|(_, seconds)| seconds.trim())
        .ok_or_else(|| format!("{value:?} must start with max-age=<seconds>; {usage}"))?;
    if seconds.is_empty()
        || seconds.len() > MAX_AGE_DIGITS
        || !seconds.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "max-age in {value:?} must be a number of seconds (at most {MAX_AGE_DIGITS} digits); {usage}"
        ));
    }
    let mut allowed = ["includeSubDomains", "preload"].into_iter();
    for directive in directives {
        if !allowed.any(|name| directive.eq_ignore_ascii_case(name)) {
            return Err(format!(
                "{directive:?} in {value:?} is not allowed here: after max-age come only includeSubDomains, then preload; {usage}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_with_optional_include_subdomains_and_preload_is_accepted() {
        for good in [
            "max-age=63072000",
            "max-age=0",
            "max-age=31536000; includeSubDomains",
            "max-age=31536000; includeSubDomains; preload",
            "max-age=31536000; preload",
            "Max-Age=10;includesubdomains",
            " max-age = 10 ",
        ] {
            assert_eq!(check(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_what_to_write() {
        for bad in [
            "",
            "63072000",
            "max-age=",
            "max-age=-1",
            "max-age=1e9",
            "max-age=12345678901",
            "max-age=10; preload; includeSubDomains",
            "max-age=10; includeSubDomains; includeSubDomains",
            "max-age=10; always",
            "max-age=10;",
            "includeSubDomains; max-age=10",
            "max-age=10\r\nX-Evil: 1",
        ] {
            let error = check(bad).expect_err(bad);
            assert!(error.contains("max-age=63072000"), "{bad:?}: {error}");
        }
    }

    fn listener(addr: &str, hsts: Option<&str>) -> Listener {
        Listener {
            addr: addr.parse().unwrap(),
            tls: None,
            proxy_protocol: false,
            hsts: hsts.map(str::to_string),
        }
    }

    #[test]
    fn the_value_is_the_listeners_that_accepted_the_connection() {
        let hsts = Hsts::new(&[
            listener("0.0.0.0:8443", Some("max-age=10")),
            listener("127.0.0.1:8080", None),
        ]);
        let at = |a: &str| hsts.for_local(Some(a.parse().unwrap())).cloned();
        assert_eq!(
            at("10.0.0.1:8443"),
            Some(HeaderValue::from_static("max-age=10"))
        );
        assert_eq!(at("127.0.0.1:8080"), None);
        assert_eq!(at("127.0.0.1:9999"), None);
        assert_eq!(hsts.for_local(None), None);
    }
}
