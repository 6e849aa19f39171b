//! The lean forwarding path: an ordinary HTTP/1.1 request with no body
//! (`GET` or `HEAD` of a page, an API call, an asset), forwarded to the app
//! by the front door itself on Pingora's HTTP/1 sessions, without the proxy
//! pipeline's phases.
//!
//! Pingora's `HttpProxy` serves any request (bodies both ways, upgrades,
//! retries, caching, modules), and pays for it on every one: channels and a
//! duplex of futures for the bodies, a dozen boxed hook futures, contexts
//! for features that are off, and an upstream pool that spawns a task to
//! watch each idle connection and wakes it on each reuse. A request that
//! needs none of that is most of a site's traffic, so it takes this path:
//!
//! ```text
//!  client ── head (parsed by the front door) ── eligible? ──no──▶ HttpProxy (proxy.rs)
//!                                                  │yes
//!  ServerSession ◀── response head, body ── HttpSession (Pingora's HTTP/1 client)
//!       │                                          ▲ the connection this client
//!       └── next request within HOLD ──────────────┘ connection held, else the pool
//! ```
//!
//! The upstream connection stays with the client connection while its
//! requests keep coming ([`Held`]), so a busy keep-alive connection reuses
//! one app connection with no pool in between; when the client goes quiet
//! for [`HOLD`], the app connection goes back to Pingora's pool, so idle
//! browsers do not hold app connections. A held connection the app closed
//! meanwhile is found when it is used: the request (bodiless, idempotent)
//! is sent once more on a fresh one.
//!
//! Everything the pipeline does to such a request is done here with the
//! same code ([`ProxyPolicy`]): the headers only the proxy may set removed,
//! `X-Forwarded-*` and `Host`, hop-by-hop headers kept from crossing, the
//! listener's HSTS, `502` when the app cannot be reached, the access log
//! and the metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderName};
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora::connectors::TransportConnector;
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession as AppSession;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::upstreams::peer::{HttpPeer, Peer};

use super::pipelining::Bodiless;
use crate::access_log::{self, AccessRecord};
use crate::client::Client;
use crate::metrics;
use crate::proxy::{connection_nominated, ProxyPolicy};

/// How long a client connection keeps its app connection while it sends no
/// next request; then the app connection goes back to the pool.
pub(super) const HOLD: Duration = Duration::from_millis(250);

/// How many headers the proxy adds to the app's request at most
/// (`X-Forwarded-For`, `-Proto`, `-Host`, and `Host` for HTTP/2).
const ADDED_HEADERS: usize = 4;

/// How long an app connection waits in the pool for its next request.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Request headers that describe one connection, never the message (RFC
/// 9110 §7.6.1), removed with those `Connection` nominates.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Forwards eligible requests to the app.
pub struct Forwarder {
    /// The proxy's policy (the app, the headers, HSTS), as the last reload
    /// left it; each request keeps the one it started with.
    policy: Arc<ArcSwap<ProxyPolicy>>,
    /// App connections: new ones, and the pool of idle ones.
    connector: TransportConnector,
}

/// The app connection a client connection holds between its requests.
pub(super) struct Held {
    /// The connection, ready for its next request.
    stream: Stream,
    /// The peer it was made for: reused only for the same one.
    peer: HttpPeer,
}

/// Whether `request` can take the lean path: `GET` or `HEAD`, HTTP/1.1, an
/// origin-form target and one `Host`, no body (it is [`Bodiless`]), no
/// `Expect`. (Anything else, and whatever the pipeline answers itself, goes
/// to it.)
pub(super) fn eligible(request: &Bodiless<'_>, policy: &ProxyPolicy) -> bool {
    (request.method == "GET" || request.method == "HEAD")
        && request.http11
        && request.target.starts_with('/')
        && request.hosts == 1
        && !request.expect
        && !policy.is_closed(request.target)
}

/// [`eligible`] for an HTTP/2 stream: `GET` or `HEAD`, its `HEADERS`
/// ending the stream (no body), not a path the pipeline answers itself.
/// (HTTP/2 has no upgrade, `Expect` or `Host` ambiguity to rule out; the
/// app gets the `:authority` as `Host`.)
pub(super) fn eligible_h2(request: &RequestHeader, body_empty: bool, policy: &ProxyPolicy) -> bool {
    (request.method == http::Method::GET || request.method == http::Method::HEAD)
        && body_empty
        && request.uri.path().starts_with('/')
        && request
            .uri
            .path_and_query()
            .is_some_and(|target| !policy.is_closed(target.as_str()))
}

/// Why forwarding a request stopped short.
enum Failure {
    /// The app could not be reached or broke off before its response head:
    /// `502` if nothing was sent yet.
    App(pingora::BError),
    /// The client went away, or the app broke off mid-response: the
    /// connection just ends.
    Broken,
}

impl Forwarder {
    pub fn new(policy: Arc<ArcSwap<ProxyPolicy>>) -> Forwarder {
        Forwarder {
            policy,
            connector: TransportConnector::new(None),
        }
    }

    /// The policy requests start with now.
    pub(super) fn policy(&self) -> Arc<ProxyPolicy> {
        self.policy.load_full()
    }

    /// Gives a held app connection back to the pool.
    pub(super) fn release(&self, held: Held) {
        self.connector
            .release_stream(held.stream, held.peer.reuse_hash(), Some(POOL_IDLE));
    }

    /// Forwards the one request of `session` (eligible, its head not read
    /// yet) to the app, on `held` if it is for the same app; leaves the app
    /// connection in `held` when it can serve another request. The client
    /// connection back, when it can serve another request.
    pub(super) async fn forward(
        &self,
        mut session: ServerSession,
        held: &mut Option<Box<Held>>,
    ) -> Option<ReusedHttpStream> {
        let started = Instant::now();
        match session.read_request().await {
            Ok(true) => {}
            // As the pipeline answers a head Pingora cannot read.
            Err(e) if e.etype == pingora::ErrorType::InvalidHTTPHeader => {
                let _ = session.respond_error(400).await;
                return None;
            }
            _ => return None,
        }
        let policy = self.policy();
        let client = policy.client(&session);
        let outcome = self.exchange(&mut session, &policy, &client, held).await;
        let reusable = match outcome {
            Ok(()) => true,
            Err(Failure::App(e)) => {
                if session.response_written().is_none() {
                    policy.bad_gateway(&mut session, &e).await;
                }
                false
            }
            Err(Failure::Broken) => false,
        };
        let status = session
            .response_written()
            .map_or(0, |response| response.status.as_u16());
        let duration = started.elapsed();
        metrics::proxied(status, duration);
        access_log::record(AccessRecord {
            session: &session,
            client: client.ip,
            status,
            duration,
        });
        if !reusable {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }

    /// Forwards an HTTP/2 stream's request (eligible) to the app, on an
    /// app connection from the pool that goes back to it after.
    pub(super) async fn forward_h2(&self, session: ServerSession) {
        let mut held = None;
        let _ = self.forward(session, &mut held).await;
        if let Some(held) = held {
            self.release(*held);
        }
    }

    /// The request to the app and its answer to the client.
    async fn exchange(
        &self,
        session: &mut ServerSession,
        policy: &ProxyPolicy,
        client: &Client,
        held: &mut Option<Box<Held>>,
    ) -> Result<(), Failure> {
        let app = policy.app();
        let peer = app.origin.http_peer(&app.connect).await.map_err(|e| {
            Failure::App(pingora::Error::explain(
                pingora::ErrorType::ConnectNoRoute,
                e.to_string(),
            ))
        })?;
        // A held connection for another app (a reload moved it) goes back.
        if let Some(previous) = held.take_if(|h| h.peer.reuse_hash() != peer.reuse_hash()) {
            self.release(*previous);
        }
        let (mut app_session, mut reused) = match held.take() {
            Some(held) => (session_on(held.stream, &peer), true),
            None => self.connect(&peer).await?,
        };
        let mut retries = 0;
        let response = loop {
            let request = upstream_request(session, policy, client).map_err(Failure::App)?;
            let sent = app_session.write_request_header(request).await;
            let answered = match sent {
                Ok(_) => app_session.read_resp_header_parts().await,
                Err(e) => Err(e),
            };
            match answered {
                Ok(response) => break response,
                // A reused connection the app had closed: once more on a
                // fresh one (the request has no body and is idempotent).
                Err(_) if reused && retries < 2 => {
                    retries += 1;
                    (app_session, reused) = self.connect(&peer).await?;
                }
                Err(e) => return Err(Failure::App(e)),
            }
        };
        let mut response = response;
        if response.status.is_informational() {
            // No `Expect` and no upgrade was sent: an early hint at most,
            // which browsers can do without.
            return Err(Failure::App(pingora::Error::explain(
                pingora::ErrorType::InvalidHTTPHeader,
                format!("an informational {} answer", response.status),
            )));
        }
        policy
            .response(session, &mut response)
            .map_err(|_| Failure::Broken)?;
        session
            .write_response_header(response)
            .await
            .map_err(|_| Failure::Broken)?;
        while let Some(chunk) = app_session
            .read_body_bytes()
            .await
            .map_err(|_| Failure::Broken)?
        {
            session
                .write_response_body(chunk, false)
                .await
                .map_err(|_| Failure::Broken)?;
        }
        session
            .write_response_body(Bytes::new(), true)
            .await
            .map_err(|_| Failure::Broken)?;
        app_session.respect_keepalive();
        if let Some(stream) = app_session.reuse().await {
            *held = Some(Box::new(Held { stream, peer }));
        }
        Ok(())
    }

    /// An app connection: one from the pool, or a new one.
    async fn connect(&self, peer: &HttpPeer) -> Result<(AppSession, bool), Failure> {
        // Boxed: connecting (Pingora's connector, TLS included) is a future
        // of kilobytes, which inline would size every forwarding future,
        // and with it the state of every HTTP/1.1 connection.
        let (stream, reused) = Box::pin(self.connector.get_stream(peer))
            .await
            .map_err(Failure::App)?;
        Ok((session_on(stream, peer), reused))
    }
}

/// An HTTP/1.1 client session for one request on an app connection.
fn session_on(stream: Stream, peer: &HttpPeer) -> AppSession {
    let mut session = AppSession::new_with_options(stream, peer);
    session.read_timeout = peer.options.read_timeout;
    session.write_timeout = peer.options.write_timeout;
    session
}

/// The request the app gets: the client's, HTTP/1.1, without hop-by-hop
/// headers (and those `Connection` nominates) and those only the proxy may
/// set, with what the proxy adds. Built in one pass, sized for what is
/// added, rather than cloned and trimmed: a clone is sized for the
/// client's headers alone and grows (both of Pingora's header maps) at the
/// first header added, and every removal is a lookup in both.
fn upstream_request(
    session: &ServerSession,
    policy: &ProxyPolicy,
    client: &Client,
) -> pingora::Result<Box<RequestHeader>> {
    let original = session.req_header();
    let nominated = connection_nominated(&original.headers);
    let passes = |name: &HeaderName| {
        !HOP_BY_HOP.contains(name) && !nominated.contains(name) && policy.passes(name)
    };
    let capacity = Some(original.headers.len() + ADDED_HEADERS);
    let method = original.method.clone();
    let target = if original.version == http::Version::HTTP_11 {
        // The target as the client sent it.
        original.raw_path()
    } else {
        // An HTTP/2 request goes to the app as HTTP/1.1, its target in
        // origin form (its `:authority` becomes `Host`, below).
        original
            .uri
            .path_and_query()
            .map_or("/", |target| target.as_str())
            .as_bytes()
    };
    let mut request = if original.has_case() {
        // The header names in the client's case (Pingora keeps it for
        // HTTP/1.1); both maps list every line, in the same order.
        let mut request = RequestHeader::build(method, target, capacity)?;
        let names = original.headers.iter().map(|(name, _)| name);
        for (name, (case, value)) in names.zip(original.case_header_iter()) {
            if passes(name) {
                request.append_header(case.clone(), value.clone())?;
            }
        }
        request
    } else {
        let mut request = RequestHeader::build_no_case(method, target, capacity)?;
        for (name, value) in original.headers.iter().filter(|(name, _)| passes(name)) {
            request.append_header(name.clone(), value.clone())?;
        }
        request
    };
    request.set_version(http::Version::HTTP_11);
    policy.add_forwarded(session, client, &mut request)?;
    Ok(Box::new(request))
}
