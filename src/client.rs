//! Who sent a request: its address, its headers as text, and the
//! `X-Forwarded-For` the proxy passes on (to the app, and to auth
//! endpoints). One place, so the proxy, admission and the access log agree.
//!
//! Until trusted proxies can be configured, the client's own
//! `X-Forwarded-For` (whose leftmost entries anyone can write), `Forwarded`
//! and `X-Real-IP` are never believed nor passed on: the app learns the
//! socket address, the only one the proxy knows to be true.

use std::net::IpAddr;

use http::header::HeaderName;
use pingora::protocols::http::ServerSession;

/// `X-Forwarded-For`: the client addresses a request passed through.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Headers that claim who the client is, which a client may write itself:
/// removed from what the proxy passes on (`X-Forwarded-For` is replaced).
pub const CLAIMED_IDENTITY: [&str; 3] = [X_FORWARDED_FOR, "forwarded", "x-real-ip"];

/// The client's address, from the session's socket.
pub fn ip(session: &ServerSession) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
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

/// The `X-Forwarded-For` to send on: the socket address alone, whatever
/// the client sent (`None` when the socket has no IP address).
pub fn forwarded_for(session: &ServerSession) -> Option<String> {
    ip(session).map(|ip| ip.to_string())
}
