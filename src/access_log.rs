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
    if let Some(request) = RequestLine::of(entry.session) {
        request.record(
            entry.client,
            entry.status,
            entry.session.body_bytes_sent(),
            entry.duration,
        );
    }
}

/// The request as its access-log line names it (method, target,
/// protocol), taken when it arrives: an HTTP/2 event stream lets go of its
/// request once its response has started, and lives on for hours.
pub struct RequestLine {
    method: http::Method,
    target: Box<str>,
    protocol: &'static str,
}

impl RequestLine {
    /// The request line of `session`'s request; `None` when the access log
    /// is off (nothing is kept then).
    pub fn of(session: &ServerSession) -> Option<RequestLine> {
        if !log::log_enabled!(target: "access", log::Level::Info) {
            return None;
        }
        let request = session.req_header();
        Some(RequestLine {
            method: request.method.clone(),
            target: request
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .into(),
            protocol: protocol(session),
        })
    }

    /// Writes the line for this request, answered with `status` (0: no
    /// answer) and `bytes_sent` body bytes after `duration`.
    pub fn record(
        &self,
        client: Option<IpAddr>,
        status: u16,
        bytes_sent: usize,
        duration: Duration,
    ) {
        let client = client.map_or_else(|| "-".to_string(), |ip| ip.to_string());
        log::info!(
            target: "access",
            "{client} \"{} {} {}\" {} {}B {}ms",
            self.method,
            self.target,
            self.protocol,
            status,
            bytes_sent,
            duration.as_millis(),
        );
    }
}
