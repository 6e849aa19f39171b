//! One access-log line per request.
//!
//! Lines go to the `log` facade under the target `access`, so operators
//! choose where they go and how much with `RUST_LOG` (for example
//! `RUST_LOG=info,access=off` keeps the proxy's own messages and drops the
//! access log). The format is close to nginx's combined log, with the
//! protocol and the duration added:
//!
//! ```text
//! 127.0.0.1 "GET /events/news HTTP/2" 200 5120B 1503ms
//! ```

use std::net::IpAddr;
use std::time::Duration;

use pingora::protocols::http::ServerSession;

/// What one finished request looked like.
pub struct AccessRecord<'a> {
    /// The downstream session, for method, path and bytes.
    pub session: &'a ServerSession,
    /// The client's address ([`crate::client::Client`]): the peer's, the PROXY
    /// header's, or a trusted proxy's `X-Forwarded-For` entry.
    pub client: Option<IpAddr>,
    /// The status sent to the client; 0 when none was sent.
    pub status: u16,
    /// Time from the request's arrival to the end of its response.
    pub duration: Duration,
}

/// The protocol of a downstream session as it is usually written in logs.
pub fn protocol(session: &ServerSession) -> &'static str {
    if session.is_http2() {
        return "HTTP/2";
    }
    match session.req_header().version {
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// Writes the access-log line for one request.
pub fn record(entry: AccessRecord<'_>) {
    // Formatting the line costs on every request: only when it is kept.
    if !log::log_enabled!(target: "access", log::Level::Info) {
        return;
    }
    let session = entry.session;
    let request = session.req_header();
    let client = entry
        .client
        .map_or_else(|| "-".to_string(), |ip| ip.to_string());
    log::info!(
        target: "access",
        "{client} \"{} {} {}\" {} {}B {}ms",
        request.method,
        request.uri.path_and_query().map_or("/", |p| p.as_str()),
        protocol(session),
        entry.status,
        session.body_bytes_sent(),
        entry.duration.as_millis(),
    );
}
