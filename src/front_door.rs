//! The front door: the Pingora app every listener hands its connections to.
//!
//! It decides, per request, whether a request is a topic subscription (served
//! right here by [`subscriber::serve`] from the [`Hub`]) or an ordinary request
//! (handed to the reverse proxy, [`Proxy`] inside Pingora's `HttpProxy`). It
//! decides *before* the proxy pipeline starts, so a subscriber costs only its
//! session and its subscription, not the state of Pingora's proxy pipeline
//! (per-request session, cache and module contexts, the proxy future), which
//! an idle stream would otherwise carry for its whole life.
//!
//! ```text
//!  connection ─▶ FrontDoor (connection level)
//!                 ├─ HTTP/2 (ALPN h2, or h2c preface) ─▶ Pingora's h2 accept loop ─▶ Router, per stream
//!                 └─ HTTP/1.1 ─▶ read the request line ─┬─ GET on a topic ─▶ subscriber::serve
//!                                  (kept, and replayed  └─ anything else  ─▶ HttpProxy
//!                                   to the session)
//! ```
//!
//! An HTTP/2 stream arrives with its header read, so the [`Router`] routes it
//! as a Pingora `HttpServerApp`. An HTTP/1.1 request has not been read when
//! Pingora hands over the connection, so the front door reads just its request
//! line (method and path), then gives Pingora a session that replays those
//! bytes before the rest of the stream: nothing is lost or read twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp,
};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

use crate::access_log::{self, AccessRecord};
use crate::hub::Hub;
use crate::proxy::Proxy;
use crate::route::TopicMatch;
use crate::subscriber;

/// What a client sends first on an HTTP/2 connection without TLS (h2c).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request line longer than this is not looked at: it goes to the proxy,
/// which answers it (Pingora bounds the whole header).
const MAX_REQUEST_LINE: usize = 8 * 1024;

/// How long an HTTP/1.1 connection may sit idle before (and between)
/// requests: Pingora's own keep-alive timeout, in seconds.
const KEEPALIVE_SECONDS: u64 = 60;

/// Routes one request: a `GET` on a topic path to the hub, the rest to the proxy.
pub struct Router {
    /// The reverse proxy for ordinary requests.
    proxy: Arc<HttpProxy<Proxy>>,
    /// The topics.
    hub: Hub,
}

/// The listeners' app: sorts connections by protocol and HTTP/1.1 requests by
/// their request line.
pub struct FrontDoor {
    router: Arc<Router>,
}

impl FrontDoor {
    pub fn new(proxy: HttpProxy<Proxy>, hub: Hub) -> FrontDoor {
        FrontDoor {
            router: Arc::new(Router {
                proxy: Arc::new(proxy),
                hub,
            }),
        }
    }

    /// Whether the connection speaks HTTP/2: ALPN `h2` on TLS, or the h2c
    /// preface in plaintext (when the proxy allows h2c).
    async fn speaks_h2(&self, stream: &mut Stream) -> bool {
        if stream.get_ssl_digest().is_some() {
            return matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        }
        if !self.router.server_options().is_some_and(|o| o.h2c) {
            return false;
        }
        let mut preface = [0u8; H2_PREFACE.len()];
        // Peeking rewinds what it read; an error means the client is gone
        // (the HTTP/1.1 path will find that out too).
        matches!(stream.try_peek(&mut preface).await, Ok(true)) && preface == H2_PREFACE
    }

    /// Serves HTTP/1.1 requests on one connection until it is not reused.
    async fn serve_http1(&self, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            let request_line = tokio::select! {
                read = read_request_line(&mut stream) => read?,
                _ = wait_for_shutdown(shutdown.clone()) => return None,
            };
            let topic = topic_request(&self.router.hub, &request_line);
            let mut session = ServerSession::new_http1(stream);
            // Pingora's own defaults for a fresh HTTP/1.1 session ...
            session.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE_SECONDS));
            session.set_keepalive_reuses_remaining(
                self.router
                    .server_options()
                    .and_then(|o| o.keepalive_request_limit),
            );
            // ... then what the previous request on this connection carried.
            if let Some(settings) = settings.take() {
                settings.apply_to_session(&mut session);
            }
            session.set_pipelined_prefix(request_line);
            let reused = match topic {
                Some(route) => {
                    self.router.serve_http1_topic(session, &route).await;
                    None
                }
                None => self.router.proxy.process_new_http(session, shutdown).await,
            };
            let (next, next_settings) = reused?.consume();
            stream = next;
            settings = next_settings;
        }
    }
}

/// Reads at least the request line (up to its line end, or a bounded
/// amount) without parsing anything else; `None` when the client closes or
/// stays idle past the keep-alive timeout.
async fn read_request_line(stream: &mut Stream) -> Option<BytesMut> {
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            // Leading empty lines before a request are allowed (RFC 9112 §2.2).
            let start = buf
                .iter()
                .position(|b| *b != b'\r' && *b != b'\n')
                .unwrap_or(buf.len());
            if buf[start..].contains(&b'\n') || buf.len() >= MAX_REQUEST_LINE {
                return Some(());
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(KEEPALIVE_SECONDS), read)
        .await
        .ok()
        .flatten()?;
    Some(buf)
}

async fn wait_for_shutdown(mut shutdown: ShutdownWatch) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The topic a request line (`GET /events/news?x HTTP/1.1`) subscribes to.
fn topic_request(hub: &Hub, request_line: &[u8]) -> Option<TopicMatch> {
    let line = request_line
        .split(|b| *b == b'\n')
        .find(|l| !l.is_empty() && *l != b"\r")?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if parts.next()? != "GET" {
        return None;
    }
    let target = parts.next()?;
    let path = target.split(['?', '#']).next()?;
    hub.find(path)
}

impl Router {
    /// Serves a subscription and writes its access-log line.
    async fn serve_topic(&self, session: &mut ServerSession, route: &TopicMatch) {
        let started = Instant::now();
        match subscriber::serve(session, &self.hub, route).await {
            Ok(ending) => log::debug!("subscription to {} ended: {ending:?}", route.key),
            Err(e) => log::debug!("subscription to {} failed: {e}", route.key),
        }
        access_log::record(AccessRecord {
            session,
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            duration: started.elapsed(),
        });
    }

    /// Reads the (replayed) request and serves it as a subscription; the
    /// connection is not reused afterwards.
    async fn serve_http1_topic(&self, mut session: ServerSession, route: &TopicMatch) {
        match session.read_request().await {
            Ok(true) => self.serve_topic(&mut session, route).await,
            Ok(false) => {}
            Err(e) => {
                log::debug!("bad subscription request: {e}");
                let _ = session.respond_error(400).await;
            }
        }
    }
}

#[async_trait]
impl HttpServerApp for Router {
    /// One HTTP/2 stream, its header already read.
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let route = (session.req_header().method == http::Method::GET)
            .then(|| self.hub.find(session.req_header().uri.path()))
            .flatten();
        match route {
            Some(route) => {
                self.serve_topic(&mut session, &route).await;
                // Dropping the session ends the stream if it is not ended yet.
                None
            }
            None => self.proxy.process_new_http(session, shutdown).await,
        }
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.proxy.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.proxy.server_options()
    }

    async fn http_cleanup(&self) {
        self.proxy.http_cleanup().await
    }
}

#[async_trait]
impl ServerApp for FrontDoor {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.speaks_h2(&mut stream).await {
            // Pingora's HTTP/2 handling, with the router per stream.
            return self.router.process_new(stream, shutdown).await;
        }
        self.serve_http1(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.router.http_cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn hub() -> Hub {
        let config = Config::from_text(
            std::path::Path::new("t.toml"),
            "[[listen]]\naddr = \"127.0.0.1:1\"\n[app]\nupstream = \"127.0.0.1:2\"\n[[topic]]\npath = \"/events/{name}\"\nupstream = \"/s/{name}\"\n",
        )
        .unwrap();
        Hub::new(&config)
    }

    #[test]
    fn get_request_line_on_a_topic_path_is_a_subscription() {
        let route = topic_request(
            &hub(),
            b"GET /events/news?lastEventId=4 HTTP/1.1\r\nHost: x\r\n",
        )
        .unwrap();
        assert_eq!(route.key, "/events/news");
    }

    #[test]
    fn other_methods_and_paths_are_not_subscriptions() {
        assert!(topic_request(&hub(), b"POST /events/news HTTP/1.1\r\n").is_none());
        assert!(topic_request(&hub(), b"GET /other HTTP/1.1\r\n").is_none());
        assert!(topic_request(&hub(), b"\xff\xfe garbage\r\n").is_none());
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        assert!(topic_request(&hub(), b"\r\nGET /events/a HTTP/1.1\r\n").is_some());
    }
}
