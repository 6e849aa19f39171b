//! Who sent a request: its address, its headers as text, and the
//! `X-Forwarded-For` chain the proxy passes on (to the app, and to auth
//! endpoints). One place, so the proxy, admission and the access log agree.

use std::net::IpAddr;

use http::header::HeaderName;
use pingora::protocols::http::ServerSession;

/// `X-Forwarded-For`: the client addresses a request passed through.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

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

/// The `X-Forwarded-For` to send on: the client's own list (if any) with
/// its address appended.
pub fn forwarded_for(session: &ServerSession) -> Option<String> {
    let earlier = header(session, X_FORWARDED_FOR).filter(|e| !e.trim().is_empty());
    match (earlier, ip(session)) {
        (Some(earlier), Some(ip)) => Some(format!("{earlier}, {ip}")),
        (None, Some(ip)) => Some(ip.to_string()),
        (earlier, None) => earlier,
    }
}
