//! An HTTP/2 connection, served by the front door's own loop over the `h2`
//! crate (the one Pingora's HTTP/2 sessions are built on).
//!
//! ```text
//!  connection task ─┬─ h2 Connection: reads frames, writes every queued frame, flushes once
//!                   ├─ proxied stream ─▶ its own task: Pingora's HttpProxy (a ServerSession)
//!                   └─ topic streams  ─▶ futures owned by this task (no task each):
//!                                        admission, then subscriber::serve on an H2EventStream
//! ```
//!
//! Pingora's own accept loop spawns a task for every stream. An event
//! stream lives for hours and mostly waits, so that task (its cell, its
//! session, its request) is most of what an idle subscriber costs, and every
//! delivery wakes it and then the connection's task. Here the topic streams
//! of a connection are futures inside the connection's task: a topic's new
//! event wakes the connection once, its streams queue their frames, and the
//! connection writes them in one go (one TLS record, one system call). The
//! streams the proxy forwards keep a task each, as in Pingora, since they
//! are short and do their own waiting on the app.
//!
//! The loop keeps the rest of Pingora's: a graceful `GOAWAY` on shutdown
//! while the open streams finish, a budget of malformed streams, and the
//! idle timeout once no stream is open. Its settings are read when the
//! connection starts, so a reload applies them to new connections.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{H2Accept, H2Options, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use super::{forward, RequestSorter};
use crate::hub::TopicRoute;
use crate::topic_request::TopicMethod;

/// Streams a connection may have refused as malformed (Pingora answers
/// them) before it is closed: Pingora's own bound, which its accept loop
/// keeps and `from_h2_conn` alone does not.
const MALFORMED_STREAMS_PER_CONNECTION: usize = 32;

/// How long the topic streams of a connection that ended get to notice it
/// and write their access-log lines.
const STREAMS_NOTICE_END: Duration = Duration::from_secs(1);

/// What the config says about an HTTP/2 connection, read when it starts.
pub(super) struct H2Settings {
    /// Streams open at once.
    pub max_concurrent_streams: u32,
    /// The largest request header block, decoded.
    pub max_header_bytes: usize,
    /// How long a connection with no open stream is kept.
    pub idle_timeout: Duration,
    /// How long the HTTP/2 handshake (the client's SETTINGS) may take.
    pub handshake_timeout: Duration,
}

impl H2Settings {
    /// The `h2` server settings.
    fn options(&self) -> H2Options {
        let mut options = pingora::protocols::http::v2::server::default_h2_options();
        options.max_concurrent_streams(self.max_concurrent_streams);
        options.max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX));
        options
    }
}

/// A topic stream, served inside the connection's task.
type TopicStream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves the HTTP/2 connection on `stream` (its preface not yet read by
/// `h2`) until it closes.
pub(super) async fn serve(
    stream: Stream,
    sorter: &Arc<RequestSorter>,
    settings: H2Settings,
    shutdown: &ShutdownWatch,
) {
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let handshake = settings.options().handshake(stream);
    let mut connection =
        match tokio::time::timeout(settings.handshake_timeout, Box::pin(handshake)).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                log::debug!("HTTP/2 handshake failed: {e}");
                return;
            }
            Err(_) => {
                log::debug!("HTTP/2 handshake timed out");
                return;
            }
        };
    let mut topic_streams: FuturesUnordered<TopicStream> = FuturesUnordered::new();
    let proxied = Arc::new(ProxiedStreams::default());
    let mut shutdown = shutdown.clone();
    let mut shutting_down = false;
    let mut malformed = 0;
    let idle_timeout = settings.idle_timeout;
    loop {
        let idle = topic_streams.is_empty();
        tokio::select! {
            // The streams first: what they queue goes out when the
            // connection is driven just below, in one write. Unconstrained:
            // a hundred streams' wake-ups would spend the task's tokio
            // budget, and the socket write after them would be put off to
            // the task's next turn (p99 at 20000 subscribers: 292 → 159 ms).
            // Their work per wake-up is bounded by the stream cap.
            biased;
            Some(()) = tokio::task::unconstrained(topic_streams.next()), if !topic_streams.is_empty() => {}
            _ = shutdown.changed(), if !shutting_down => {
                connection.graceful_shutdown();
                shutting_down = true;
            }
            accepted = HttpSession::from_h2_conn(&mut connection, digest.clone()) => match accepted {
                Ok(Some(H2Accept::Session(session))) => match sorter.topic_route(&session) {
                    Some((method, route)) => {
                        // Opening (admission, auth, the response head) is
                        // boxed on its own and freed once done: the future
                        // an open stream keeps holds only what serving needs.
                        let sorter = sorter.clone();
                        let opening = Box::pin(async move {
                            sorter.topics.open_h2(session, method, route).await
                        });
                        topic_streams.push(Box::pin(async move {
                            if let Some(stream) = opening.await {
                                stream.serve().await;
                            }
                        }));
                    }
                    None => {
                        let guard = proxied.start();
                        let policy = sorter.forwarder.policy();
                        let lean = forward::eligible_h2(session.req_header(), session.is_body_empty(), &policy);
                        let sorter = sorter.clone();
                        let shutdown = shutdown.clone();
                        // Both ways of serving the stream are futures of
                        // kilobytes (the pipeline's, tens): boxed, so that the
                        // task spawned for every stream, which tokio moves by
                        // value several times while it starts and ends it,
                        // is a few pointers (callgrind: the copies had cost
                        // 130k instructions per request).
                        tokio::spawn(async move {
                            let _guard = guard;
                            let mut session = ServerSession::new_http2(session);
                            // A client that stops reading its answer (its
                            // flow-control window stays shut) is cut.
                            session.set_write_timeout(Some(idle_timeout));
                            if lean {
                                Box::pin(sorter.forwarder.forward_h2(session)).await;
                            } else {
                                Box::pin(sorter.proxy.process_new_http(session, &shutdown)).await;
                            }
                        });
                    }
                },
                Ok(Some(H2Accept::Rejected)) => {
                    malformed += 1;
                    if malformed > MALFORMED_STREAMS_PER_CONNECTION {
                        log::debug!("HTTP/2 connection closed after {malformed} malformed streams");
                        break;
                    }
                }
                // A clean close, after a GOAWAY and the last stream.
                Ok(None) => break,
                // Often a client that closed TCP without a GOAWAY.
                Err(e) => {
                    log::debug!("HTTP/2 connection ended: {e}");
                    break;
                }
            },
            () = proxied.idle_for(settings.idle_timeout), if idle => break,
        }
    }
    // The streams still open see the connection's end at once (a reset or
    // an error on their next wait); they log it and let go of their places.
    let _ = tokio::time::timeout(STREAMS_NOTICE_END, async {
        while topic_streams.next().await.is_some() {}
    })
    .await;
}

impl RequestSorter {
    /// Where an HTTP/2 stream, its header read, goes: a `GET` or `OPTIONS`
    /// on a topic path to the topic flow; `None`: to the proxy.
    fn topic_route(&self, session: &HttpSession) -> Option<(TopicMethod, TopicRoute)> {
        let request = session.req_header();
        let method = TopicMethod::of(&request.method)?;
        Some((method, self.topics.hub.find(request.uri.path())?))
    }
}

/// The connection's proxied streams, counted for the idle timeout.
#[derive(Default)]
struct ProxiedStreams {
    open: AtomicUsize,
    /// Told when the last one ends.
    none_left: Notify,
}

impl ProxiedStreams {
    /// Counts a stream until the guard is dropped.
    fn start(self: &Arc<Self>) -> ProxiedGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        ProxiedGuard(self.clone())
    }

    /// Completes once no proxied stream has been open for `idle_timeout`
    /// (the caller makes sure no topic stream is open either).
    async fn idle_for(&self, idle_timeout: Duration) {
        while self.open.load(Ordering::Acquire) != 0 {
            self.none_left.notified().await;
        }
        tokio::time::sleep(idle_timeout).await;
    }
}

/// One proxied stream, counted while it lives.
struct ProxiedGuard(Arc<ProxiedStreams>);

impl Drop for ProxiedGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_one();
        }
    }
}
