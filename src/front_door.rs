//! The front door: the Pingora app every listener hands its connections to.
//!
//! It decides, per request, whether a request is a topic subscription (served
//! by [`TopicRequests`] from the [`Hub`]) or an ordinary request
//! (handed to the reverse proxy, [`Proxy`] inside Pingora's `HttpProxy`). It
//! decides *before* the proxy pipeline starts, so a subscriber costs only its
//! session and its subscription, not the state of Pingora's proxy pipeline
//! (per-request session, cache and module contexts, the proxy future), which
//! an idle stream would otherwise carry for its whole life.
//!
//! ```text
//!  connection ─▶ FrontDoor (connection level)
//!   ├─ PROXY header, within header_timeout           (proxy_header; proxy_protocol listeners)
//!   ├─ a place under max_connections_per_ip          (connections)
//!   ├─ TLS handshake, within tls_handshake_timeout   (listeners)
//!   ├─ first bytes: HTTP/2 or HTTP/1.x               (greeting)
//!   ├─ HTTP/2 (ALPN h2, or h2c preface) ─▶ frames watched (h2_watch) ─▶ own accept loop (h2_connection)
//!   │     ├─ topic streams: served in the connection's task ─▶ TopicRequests
//!   │     └─ other streams: a task each ─┬─ bodiless GET/HEAD ─▶ forward (lean path)
//!   │                                     └─ anything else ─▶ HttpProxy
//!   └─ HTTP/1.1 ─▶ read the request head (head) ─┬─ GET/OPTIONS on a topic ─▶ TopicRequests
//!                    (kept, and replayed         ├─ bodiless GET/HEAD ─▶ forward (lean path), app connection held
//!                     to the session)            └─ anything else  ─▶ HttpProxy, one request at a time (pipelining)
//! ```
//!
//! An HTTP/2 stream arrives with its header read, so the [`RequestSorter`]
//! routes it at once (see `h2_connection` for why topic streams get no task
//! of their own). An HTTP/1.1 request has not been read when
//! Pingora hands over the connection, so the front door reads its head
//! itself (bounded by `[limits] max_header_bytes`, and within
//! `header_timeout` of its first byte, so a client that never finishes its
//! head is dropped), looks at the request line, then gives Pingora a
//! session that replays those bytes before the rest of the stream: nothing
//! is lost or read twice.
//!
//! On a `proxy_protocol` listener the connection's first bytes are a PROXY
//! protocol header from the balancer in front; its client address becomes
//! the connection's peer address before anything else looks (see
//! `proxy_header`), so the caps, the access log and `X-Forwarded-For` all
//! see the client.
//!
//! Every wait on a client has a deadline: the PROXY header
//! (`header_timeout`), the TLS handshake
//! (`tls_handshake_timeout`), the first byte of a connection or of the next
//! request on it, and an HTTP/2 connection with no open stream
//! (`idle_timeout`), a request head or a preface (`header_timeout`).
//!
//! What happens to a request on a topic path (admission, the subscription,
//! a CORS preflight) is `topic_request.rs`'s business.

mod connections;
mod forward;
mod greeting;
mod h2_connection;
mod h2_watch;
mod head;
mod io;
mod listeners;
mod pipelining;
mod proxy_header;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::admission::Admission;
use crate::client::TrustedProxies;
use crate::config::{Config, ConnectionLimits};
use crate::hsts::Hsts;
use crate::hub::{Hub, TopicRoute};
use crate::proxy::Proxy;
use crate::topic_request::{TopicMethod, TopicRequests};

pub use connections::{ConnectionCounts, Connections, EarlyClose};
pub use forward::Forwarder;
pub use listeners::{listener_at, Listeners, Transport};

use forward::Held;
use greeting::{Expect, Greeting};
use h2_connection::H2Settings;
use h2_watch::WatchedH2;
use head::Head;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pipelining::{Extent, OneRequest};
use proxy_header::ProxyHeader;

/// How long a refused HTTP/1.1 client may keep sending before the close.
const LINGER_ON_REFUSAL: Duration = Duration::from_secs(1);

/// The answer to an HTTP/1.1 header over `[limits] max_header_bytes`.
const HEADER_TOO_LARGE: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Sorts one request: a `GET` or `OPTIONS` on a topic path to the topic
/// flow ([`TopicRequests`]), everything else to the reverse proxy.
pub struct RequestSorter {
    /// The reverse proxy for ordinary requests.
    proxy: Arc<HttpProxy<Proxy>>,
    /// The lean path for ordinary HTTP/1.1 requests that need none of the
    /// proxy's phases.
    forwarder: Forwarder,
    /// The flow of requests on topic paths.
    topics: TopicRequests,
}

/// The listeners' app: sorts connections by protocol and HTTP/1.1 requests by
/// their request line.
pub struct FrontDoor {
    sorter: Arc<RequestSorter>,
    /// Which listener a connection came in on, and its TLS acceptor.
    listeners: Listeners,
    /// The open connections: the per-address cap and the counters.
    connections: Arc<Connections>,
    /// The connection deadlines, HSTS and trusted proxies; replaced by a
    /// reload (each connection keeps the deadlines it started with).
    policy: Arc<ArcSwap<DoorPolicy>>,
    /// HTTP/2 streams a connection may have open at once (sets its budget
    /// of stream resets).
    max_concurrent_streams: u32,
    /// Per listener: whether its connections start with a PROXY header.
    proxy_protocol: Vec<(SocketAddr, bool)>,
}

/// What the config says about client connections, swapped whole by a reload.
pub struct DoorPolicy {
    /// The connection deadlines.
    pub limits: ConnectionLimits,
    /// Per listener: the `Strict-Transport-Security` of every answer.
    pub hsts: Hsts,
    /// Peers whose `X-Forwarded-For` is believed, and which the per-address
    /// connection cap does not count: each carries many clients.
    pub trusted: TrustedProxies,
}

impl DoorPolicy {
    /// The policy `config` describes.
    pub fn new(config: &Config) -> DoorPolicy {
        DoorPolicy {
            limits: config.connections,
            hsts: Hsts::new(&config.listeners),
            trusted: TrustedProxies::new(&config.server.trusted_proxies),
        }
    }
}

impl FrontDoor {
    pub fn new(
        (proxy, forwarder): (HttpProxy<Proxy>, Forwarder),
        hub: Hub,
        admission: Admission,
        listeners: Listeners,
        connections: Arc<Connections>,
        policy: Arc<ArcSwap<DoorPolicy>>,
        config: &Config,
    ) -> FrontDoor {
        FrontDoor {
            sorter: Arc::new(RequestSorter {
                proxy: Arc::new(proxy),
                forwarder,
                topics: TopicRequests {
                    hub,
                    admission,
                    policy: policy.clone(),
                },
            }),
            listeners,
            connections,
            policy,
            max_concurrent_streams: config.server.max_concurrent_streams,
            proxy_protocol: config
                .listeners
                .iter()
                .map(|l| (l.addr, l.proxy_protocol))
                .collect(),
        }
    }

    /// How long a client may take to send a request head (`[limits]
    /// header_timeout`), as the limits say now.
    fn header_timeout(&self) -> Duration {
        self.sorter
            .topics
            .admission
            .limits
            .settings()
            .header_timeout
    }

    /// On a `proxy_protocol` listener: the connection once its PROXY header
    /// is read, with the client's address as its peer (`None` when it is
    /// closed instead: no valid header within `header_timeout`). Elsewhere
    /// the connection as it is.
    async fn read_proxy_header(&self, stream: Stream) -> Option<Stream> {
        let expected = local_addr(&stream)
            .and_then(|local| listener_at(&self.proxy_protocol, local).copied())
            .unwrap_or(false);
        if !expected {
            return Some(stream);
        }
        let socket_peer = peer_ip(&stream);
        let Ok(mut tcp) = stream.into_any().downcast::<TcpStream>() else {
            log::error!("a connection to a proxy_protocol listener is not TCP; closed");
            return None;
        };
        let deadline = self.header_timeout();
        // Boxed: needed once per connection, it should not enlarge the
        // state every open connection keeps.
        match Box::pin(proxy_header::read(&mut tcp, deadline)).await {
            ProxyHeader::Client(client) => proxy_header::claim(&mut tcp, client),
            ProxyHeader::Socket => {}
            ProxyHeader::Invalid(why) => {
                self.connections
                    .record_proxy_header_invalid(socket_peer, &why);
                return None;
            }
            ProxyHeader::TimedOut => {
                self.connections.record(EarlyClose::HeaderTimeout);
                return None;
            }
            ProxyHeader::Gone => return None,
        }
        Some(tcp)
    }

    /// The connection as it speaks HTTP: the TLS stream after a handshake
    /// on a TLS listener, the TCP stream on a plaintext one; `None` when it
    /// is closed instead.
    async fn open_transport(&self, stream: Stream) -> Option<Stream> {
        let local = local_addr(&stream);
        match local.and_then(|local| self.listeners.transport(local)) {
            Some(Transport::Plain) => Some(stream),
            Some(Transport::Tls(acceptor)) => {
                match listeners::handshake(
                    acceptor,
                    stream,
                    self.policy.load().limits.tls_handshake_timeout,
                )
                .await
                {
                    listeners::Handshake::Done(tls) => Some(tls),
                    listeners::Handshake::TimedOut => {
                        self.connections.record(EarlyClose::TlsHandshakeTimeout);
                        None
                    }
                    listeners::Handshake::Failed(e) => {
                        log::debug!("TLS handshake failed: {e}");
                        self.connections.record(EarlyClose::TlsHandshakeFailed);
                        None
                    }
                    listeners::Handshake::Gone => None,
                    listeners::Handshake::AcmeValidation => {
                        log::debug!("answered an ACME tls-alpn-01 validation");
                        None
                    }
                }
            }
            None => {
                log::error!("a connection to {local:?} matches no [[listen]] address; closed");
                None
            }
        }
    }

    /// What the connection may speak before its first byte says more.
    fn expect(&self, stream: &Stream) -> Expect {
        if stream.get_ssl_digest().is_some() {
            return match stream.selected_alpn_proto() {
                Some(ALPN::H2) => Expect::Http2,
                _ => Expect::Http1,
            };
        }
        if self.sorter.server_options().is_some_and(|o| o.h2c) {
            Expect::Either
        } else {
            Expect::Http1
        }
    }

    /// A fresh HTTP/1.1 session on `stream`, with what the previous request
    /// on the connection carried over.
    fn http1_session(
        &self,
        stream: Stream,
        previous: Option<HttpPersistentSettings>,
        shutdown: &ShutdownWatch,
    ) -> ServerSession {
        let mut session = ServerSession::new_http1(stream);
        // Pingora's own defaults for a fresh HTTP/1.1 session ...
        session.set_keepalive(
            (!*shutdown.borrow()).then_some(whole_seconds(self.policy.load().limits.idle_timeout)),
        );
        session.set_keepalive_reuses_remaining(
            self.sorter
                .server_options()
                .and_then(|o| o.keepalive_request_limit),
        );
        // ... then what the previous request on this connection carried.
        if let Some(previous) = previous {
            previous.apply_to_session(&mut session);
        }
        session
    }

    /// Serves HTTP/1.1 requests on one connection until it is not reused;
    /// `read` holds the first request's first bytes, whose head must be
    /// complete by `deadline`.
    async fn serve_http1(
        &self,
        mut stream: Stream,
        mut read: BytesMut,
        mut deadline: tokio::time::Instant,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = self.sorter.topics.admission.limits.settings();
        let mut settings: Option<HttpPersistentSettings> = None;
        // The app connection the lean path keeps while requests keep coming.
        let mut held: Option<Box<Held>> = None;
        loop {
            // A request whose first bytes came is read and answered even if
            // a stop began meanwhile: its client is sending it, and after a
            // graceful upgrade no other process ever sees this connection.
            let head =
                head::read_request_head(&mut stream, read, limits.max_header_bytes, deadline).await;
            let (head, head_len) = match head {
                Head::Complete { buf, len } => (buf, len),
                Head::TooLarge => {
                    self.connections.record(EarlyClose::HeaderTooLarge);
                    let answer =
                        header_too_large(self.policy.load().hsts.for_local(local_addr(&stream)));
                    refuse_and_close(&mut stream, &answer, limits.max_header_bytes).await;
                    return None;
                }
                Head::TimedOut => {
                    self.connections.record(EarlyClose::HeaderTimeout);
                    return None;
                }
                Head::Gone => return None,
            };
            let request_head = head.get(..head_len).unwrap_or_default();
            if let Some(answer) = self.listeners.http01_answer(request_head).await {
                log::debug!("answered an ACME http-01 validation");
                refuse_and_close(&mut stream, &answer, limits.max_header_bytes).await;
                return None;
            }
            if let Some((method, route)) = topic_request(&self.sorter.topics.hub, request_head) {
                // A subscription (or a preflight) is the connection's last
                // request: it is not reused after it.
                let mut session = self.http1_session(stream, settings.take(), shutdown);
                session.set_pipelined_prefix(head);
                self.sorter
                    .topics
                    .serve_http1(session, method, &route)
                    .await;
                return None;
            }
            // Pingora gets this request alone (see `pipelining`).
            let (extent, lean) = match pipelining::bodiless(request_head) {
                Some(request) => (
                    Extent::Length(0),
                    forward::eligible(&request, &self.sorter.forwarder.policy()),
                ),
                None => (pipelining::extent_of(request_head).await, false),
            };
            let (first, one_request) =
                OneRequest::split(stream, head, head_len, extent, limits.max_header_bytes);
            let mut session = self.http1_session(Box::new(one_request), settings.take(), shutdown);
            // A client that stops reading its answer is cut (and the app
            // connection the answer comes on freed).
            session.set_write_timeout(Some(self.policy.load().limits.idle_timeout));
            if extent == Extent::Chunked {
                session.set_keepalive_reuses_remaining(Some(0));
            }
            session.set_pipelined_prefix(first);
            // The pipeline's future is boxed: inline, it would size the
            // state every HTTP/1.1 connection keeps for its whole life, an
            // idle subscriber's included. The lean path's stays inline
            // (boxed, it cost 12k instructions per request) and is kept
            // small instead (see `Forwarder::connect`): 12.5 KB of state
            // per connection before, 6.6 KB now.
            let reused = if lean {
                self.sorter.forwarder.forward(session, &mut held).await
            } else {
                Box::pin(self.sorter.proxy.process_new_http(session, shutdown)).await
            };
            let Some(reused) = reused else {
                if let Some(held) = held.take() {
                    self.sorter.forwarder.release(*held);
                }
                return None;
            };
            let (connection, next_settings) = reused.consume();
            // Pingora hands back the stream it was given.
            let one_request = connection.into_any().downcast::<OneRequest>().ok()?;
            let (connection, next, closed) = one_request.into_parts();
            stream = connection;
            settings = next_settings;
            read = next;
            if read.is_empty() {
                // Idle between requests: the next one's first byte may take
                // the idle timeout to come. A held app connection goes back
                // to the pool if it does not come within `HOLD`.
                let idle_timeout = self.policy.load().limits.idle_timeout;
                let came = !closed && {
                    let first = greeting::first_bytes(&mut stream, &mut read, idle_timeout);
                    tokio::pin!(first);
                    let hold = tokio::time::sleep(forward::HOLD);
                    tokio::pin!(hold);
                    loop {
                        tokio::select! {
                            came = &mut first => break came,
                            _ = &mut hold, if held.is_some() => {
                                if let Some(held) = held.take() {
                                    self.sorter.forwarder.release(*held);
                                }
                            }
                            _ = wait_for_shutdown(shutdown.clone()) => break false,
                        }
                    }
                };
                if !came {
                    if let Some(held) = held.take() {
                        self.sorter.forwarder.release(*held);
                    }
                    return None;
                }
            }
            deadline = tokio::time::Instant::now() + limits.header_timeout;
        }
    }
}

/// Pingora counts keep-alive in whole seconds; round up, never to zero
/// (which Pingora takes as "forever").
fn whole_seconds(duration: Duration) -> u64 {
    (duration.as_secs() + u64::from(duration.subsec_nanos() > 0)).max(1)
}

/// The connection's peer address: the socket's, or once a PROXY header was
/// read, the client's it names.
fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    stream.get_socket_digest().and_then(|d| {
        d.peer_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_canonical())
    })
}

/// The address the connection was accepted on, which names its listener.
fn local_addr(stream: &Stream) -> Option<SocketAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())
}

/// The `431` answer, with the listener's `Strict-Transport-Security` if it
/// sends one.
fn header_too_large(hsts: Option<&http::HeaderValue>) -> Vec<u8> {
    let Some(hsts) = hsts else {
        return HEADER_TOO_LARGE.to_vec();
    };
    let mut answer = HEADER_TOO_LARGE
        .strip_suffix(b"\r\n")
        .unwrap_or(HEADER_TOO_LARGE)
        .to_vec();
    answer.extend_from_slice(b"Strict-Transport-Security: ");
    answer.extend_from_slice(hsts.as_bytes());
    answer.extend_from_slice(b"\r\n\r\n");
    answer
}

/// Writes a final answer, then reads (and drops) what the client is still
/// sending, a bounded amount for a bounded time, before closing: closing with
/// unread input would reset the connection and the client would lose the
/// answer.
async fn refuse_and_close(stream: &mut Stream, answer: &[u8], drain_limit: usize) {
    if stream.write_all(answer).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut drained = 0;
        // On the heap: an array here would be held in the state of every
        // HTTP/1.1 connection, which may come to refuse.
        let mut scratch = vec![0u8; 4096];
        while drained < drain_limit {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_ON_REFUSAL, drain).await;
}

async fn wait_for_shutdown(mut shutdown: ShutdownWatch) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The topic an HTTP/1.1 request head (`GET /events/news?x HTTP/1.1 ...`)
/// asks for, and how; `None` for anything the proxy handles.
fn topic_request(hub: &Hub, head: &[u8]) -> Option<(TopicMethod, TopicRoute)> {
    let (method, target) = head::request_line(head)?;
    let method = match method {
        "GET" => TopicMethod::Get,
        "OPTIONS" => TopicMethod::Options,
        _ => return None,
    };
    let path = target.split(['?', '#']).next()?;
    Some((method, hub.find(path)?))
}

impl RequestSorter {
    /// Pingora's server options for the proxy (h2c, keep-alive limits).
    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.proxy.server_options()
    }
}

#[async_trait]
impl ServerApp for FrontDoor {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // First on the wire, before any TLS: the PROXY header, on the
        // listeners that expect one (its address is the peer from here on).
        let stream = self.read_proxy_header(stream).await?;
        let peer = peer_ip(&stream);
        // Held until the connection closes. A trusted proxy's connections
        // carry many clients: they are not capped per address.
        let (trusted_peer, idle_timeout) = {
            let policy = self.policy.load();
            let trusted = peer.is_some_and(|p| policy.trusted.contains(p));
            (trusted, policy.limits.idle_timeout)
        };
        let counted = peer.filter(|_| !trusted_peer);
        let _place = self.connections.open(counted)?;
        // The handshake and the greeting are boxed: they are over in a
        // moment, and inline they would size the state every open connection
        // keeps for its whole life.
        let mut stream = Box::pin(self.open_transport(stream)).await?;
        let expect = self.expect(&stream);
        let header_timeout = self.header_timeout();
        // Not cut short by a stop: this connection was accepted, so its
        // client is about to send a request (after a graceful upgrade, the
        // successor never sees this connection). The greeting's own
        // deadlines bound the wait.
        let greeting = Box::pin(greeting::read_greeting(
            &mut stream,
            expect,
            idle_timeout,
            header_timeout,
        ))
        .await;
        match greeting {
            Greeting::Http2 { read } => {
                let watched = WatchedH2::new(
                    stream,
                    read,
                    self.max_concurrent_streams,
                    self.connections.clone(),
                    peer,
                );
                let settings = H2Settings {
                    max_concurrent_streams: self.max_concurrent_streams,
                    max_header_bytes: self
                        .sorter
                        .topics
                        .admission
                        .limits
                        .settings()
                        .max_header_bytes,
                    idle_timeout,
                    handshake_timeout: header_timeout,
                };
                // Each protocol's loop is boxed: inline, the larger one
                // (HTTP/1.1's) would size every connection's state.
                Box::pin(h2_connection::serve(
                    Box::new(watched),
                    &self.sorter,
                    settings,
                    shutdown,
                ))
                .await;
                None
            }
            Greeting::Http1 { read, deadline } => {
                Box::pin(self.serve_http1(stream, read, deadline, shutdown)).await
            }
            Greeting::TimedOut => {
                self.connections.record(EarlyClose::HeaderTimeout);
                None
            }
            Greeting::Silent | Greeting::NotHttp2 => None,
        }
    }

    async fn cleanup(&self) {
        self.sorter.proxy.http_cleanup().await
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
        let (method, route) = topic_request(
            &hub(),
            b"GET /events/news?lastEventId=4 HTTP/1.1\r\nHost: x\r\n",
        )
        .unwrap();
        assert_eq!(method, TopicMethod::Get);
        assert_eq!(route.key, "/events/news");
    }

    #[test]
    fn options_on_a_topic_path_is_a_preflight() {
        let (method, _) = topic_request(&hub(), b"OPTIONS /events/news HTTP/1.1\r\n").unwrap();
        assert_eq!(method, TopicMethod::Options);
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
