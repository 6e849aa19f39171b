//! The Pingora proxy service: every request that is not a subscription goes to the app.
//!
//! [`Proxy`] implements Pingora's [`ProxyHttp`]. Subscriptions (`GET` on a
//! topic path) never get here: the [`FrontDoor`](crate::front_door) serves
//! them from the hub; another method on a topic path (in any spelling of it)
//! is answered `405`. Paths the app must not be asked for by clients
//! ([`ClosedPaths`]) are answered `404` (a topic's upstream stream) or `400`
//! (a spelling a lenient app could take for a topic). For every other request
//! it chooses the app as the upstream peer, removes the headers only the
//! proxy may set (the topics' `upstream_headers`, `X-SSE-Topic`, and any
//! claim of who the client is), adds the `X-Forwarded-*` headers, keeps
//! hop-by-hop headers from crossing the proxy, answers `502` with a short text
//! when the app cannot be reached, adds the listener's
//! `Strict-Transport-Security` to every answer (keeping the app's own), and
//! writes one access-log line per request and counts it in the metrics
//! (status class and duration).
//! Request and response bodies stream through Pingora untouched and
//! unbuffered, WebSocket upgrades included.
//!
//! Bodiless `GET`s and `HEAD`s mostly never get here either: the front
//! door forwards them itself (`front_door/forward.rs`), with the same rules,
//! which live in [`ProxyPolicy`] for both paths.
//!
//! It wires things and holds no policy: topics and replay live in the hub,
//! where the app is and how to reach it in [`AppSettings`].

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use crate::access_log::{self, AccessRecord};
use crate::auth::X_SSE_TOPIC;
use crate::client::{Client, TrustedProxies, CLAIMED_IDENTITY, X_FORWARDED_FOR};
use crate::config::{AppSettings, Config};
use crate::hsts::Hsts;
use crate::hub::Hub;
use crate::metrics;
use crate::route::{ClosedPath, ClosedPaths};
use crate::upstream_addr::ResolveError;

/// `X-Forwarded-Proto`: `https` or `http`, as the client connected.
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
/// `X-Forwarded-Host`: the host the client asked for.
const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// Response headers that describe one connection, never the message
/// (RFC 9110 §7.6.1); HTTP/2 forbids them outright (RFC 9113 §8.2.2).
/// `Transfer-Encoding` is not here: Pingora owns body framing, dropping it on
/// HTTP/2 and re-framing on HTTP/1.1.
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
];

/// The body of the `404` for a topic's upstream path.
const NOT_FOUND_BODY: &str = "404 Not Found\n";

/// The body of the `400` for a path a lenient app could take for a topic.
const AMBIGUOUS_PATH_BODY: &str =
    "400 Bad Request: this path could name an event stream; ask for it by its exact path\n";

/// The body of the `502` sent when the app cannot be reached.
const BAD_GATEWAY_BODY: &str = "502 Bad Gateway: the app behind sse-fanout is not reachable.\n";

/// Headers a topic's `upstream_headers` may name that are still passed on
/// from clients: they carry each client's own credentials to the app, which
/// checks their values anyway.
const CLIENT_CREDENTIALS: [&str; 2] = ["authorization", "cookie"];

/// The reverse proxy in front of the app.
pub struct Proxy {
    /// The topics, served here rather than proxied.
    hub: Hub,
    /// What the config says about proxied requests; a reload replaces it
    /// whole, and each request keeps the one it started with.
    policy: Arc<ArcSwap<ProxyPolicy>>,
}

/// What the config says about proxied requests.
pub struct ProxyPolicy {
    /// Where ordinary requests go.
    app: AppSettings,
    /// Paths never passed to the app.
    closed: ClosedPaths,
    /// Request headers only the proxy may set (lower case): removed from
    /// every proxied request, so a client cannot pose as the proxy.
    private_headers: Vec<HeaderName>,
    /// Whose `X-Forwarded-For` names the client.
    trusted: TrustedProxies,
    /// The `Strict-Transport-Security` of each listener that sends one.
    hsts: Hsts,
}

/// Per-request state shared by the proxy's phases.
pub struct RequestCtx {
    /// When the request arrived, for the access log.
    started: Instant,
    /// The policy in force when the request arrived.
    policy: Arc<ProxyPolicy>,
}

impl ProxyPolicy {
    /// The policy of `config`: its app, and what its topics close.
    pub fn new(config: &Config) -> ProxyPolicy {
        let mut private_headers = vec![HeaderName::from_static(X_SSE_TOPIC)];
        let secrets = config
            .topics
            .iter()
            .flat_map(|t| &t.access.upstream_headers)
            .filter_map(|(name, _)| HeaderName::from_bytes(name.as_bytes()).ok());
        for name in secrets {
            if !CLIENT_CREDENTIALS.contains(&name.as_str()) && !private_headers.contains(&name) {
                private_headers.push(name);
            }
        }
        ProxyPolicy {
            app: config.app.clone(),
            closed: ClosedPaths::new(config),
            private_headers,
            trusted: TrustedProxies::new(&config.server.trusted_proxies),
            hsts: Hsts::new(&config.listeners),
        }
    }

    /// Where ordinary requests go.
    pub fn app(&self) -> &AppSettings {
        &self.app
    }

    /// Whether a request target is one the app must not be asked for by
    /// clients (answered by the proxy pipeline, never forwarded as is).
    pub fn is_closed(&self, target: &str) -> bool {
        self.closed.check(target).is_some()
    }

    /// The client of `session`, as the trusted proxies say.
    pub fn client(&self, session: &ServerSession) -> Client {
        Client::of(session, &self.trusted)
    }

    /// The request the app gets for `session`'s: without the headers only
    /// the proxy may set, with `X-Forwarded-For`, `-Proto` and `-Host`, and
    /// a `Host` (HTTP/2 clients send `:authority` instead).
    pub fn upstream_request(
        &self,
        session: &ServerSession,
        client: &Client,
        upstream_request: &mut RequestHeader,
    ) -> Result<()> {
        for name in self.private_headers.iter() {
            upstream_request.remove_header(name);
        }
        for name in CLAIMED_IDENTITY {
            upstream_request.remove_header(name);
        }
        self.add_forwarded(session, client, upstream_request)
    }

    /// Whether a client's request header `name` may reach the app: not one
    /// only the proxy may set ([`upstream_request`](Self::upstream_request)
    /// removes those).
    pub fn passes(&self, name: &HeaderName) -> bool {
        !self.private_headers.contains(name)
            && !CLAIMED_IDENTITY.iter().any(|claimed| name == claimed)
    }

    /// What the proxy adds to the app's request: `X-Forwarded-For`,
    /// `-Proto` and `-Host`, and a `Host` if the client sent `:authority`.
    pub fn add_forwarded(
        &self,
        session: &ServerSession,
        client: &Client,
        upstream_request: &mut RequestHeader,
    ) -> Result<()> {
        if let Some(forwarded_for) = &client.forwarded_for {
            upstream_request.insert_header(X_FORWARDED_FOR, forwarded_for)?;
        }
        let proto = if is_tls(session) { "https" } else { "http" };
        upstream_request.insert_header(X_FORWARDED_PROTO, proto)?;
        if let Some(host) = requested_host(session.req_header()) {
            upstream_request.insert_header(X_FORWARDED_HOST, &host)?;
            // HTTP/2 clients send `:authority` instead of `Host`; the app
            // still sees the host the browser asked for.
            if upstream_request.headers.get(header::HOST).is_none() {
                upstream_request.insert_header(header::HOST, host)?;
            }
        }
        Ok(())
    }

    /// The app's response as the client gets it: this proxy's HTTP version,
    /// the listener's HSTS (unless the app sent its own), no hop-by-hop
    /// headers (but on an HTTP/1.1 `101`, whose upgrade needs them).
    pub fn response(
        &self,
        session: &ServerSession,
        upstream_response: &mut ResponseHeader,
    ) -> Result<()> {
        // A proxy speaks its own HTTP version (RFC 9110 §6.2), whatever the
        // app answered with; Pingora sets HTTP/2 itself on HTTP/2 sessions.
        if !session.is_http2() {
            upstream_response.set_version(http::Version::HTTP_11);
        }
        // The listener's HSTS, unless the app sent its own (which it keeps).
        if upstream_response
            .headers
            .get(header::STRICT_TRANSPORT_SECURITY)
            .is_none()
        {
            self.add_hsts(session, upstream_response)?;
        }
        // A 101 on HTTP/1.1 is a WebSocket (or other) upgrade: its
        // `Connection: upgrade` and `Upgrade` must reach the client.
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS && !session.is_http2()
        {
            return Ok(());
        }
        // Headers the app nominated as hop-by-hop in `Connection` go too.
        for name in connection_nominated(&upstream_response.headers) {
            upstream_response.remove_header(&name);
        }
        for name in HOP_BY_HOP {
            upstream_response.remove_header(name);
        }
        Ok(())
    }

    /// Answers `502` because the app cannot be reached, and logs why.
    pub async fn bad_gateway(
        &self,
        session: &mut ServerSession,
        why: &(dyn std::fmt::Display + Sync),
    ) {
        let request = session.req_header();
        let what = format!("{} {}", request.method, request.uri.path());
        log::warn!("app {} unreachable for {what}: {why}", self.app.origin);
        let hsts = self.hsts.for_session(session).cloned();
        if let Err(write_error) = send_bad_gateway(session, hsts.as_ref()).await {
            log::debug!("could not send the 502 for {what}: {write_error}");
        }
    }

    /// The listener's `Strict-Transport-Security`, on an answer the proxy
    /// writes itself.
    fn add_hsts(&self, session: &ServerSession, response: &mut ResponseHeader) -> Result<()> {
        if let Some(hsts) = self.hsts.for_session(session) {
            response.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts)?;
        }
        Ok(())
    }

    /// Answers an error `status` of the proxy's own with `body`.
    async fn respond_error(&self, session: &mut Session, status: u16, body: Bytes) -> Result<()> {
        let mut response = ServerSession::generate_error(status);
        if !body.is_empty() {
            response.set_content_length(body.len())?;
        }
        self.add_hsts(session.as_downstream(), &mut response)?;
        session
            .as_downstream_mut()
            .write_error_response(response, body)
            .await
    }
}

impl Proxy {
    /// The proxy to the app `policy` names, now and after each reload.
    pub fn new(hub: Hub, policy: Arc<ArcSwap<ProxyPolicy>>) -> Self {
        Proxy { hub, policy }
    }
}

/// Answers `405` for a method a topic path does not serve.
async fn method_not_allowed(session: &mut Session, hsts: Option<&HeaderValue>) -> Result<()> {
    let mut response = ResponseHeader::build(405, Some(3))?;
    response.insert_header(header::ALLOW, "GET")?;
    response.insert_header(header::CONTENT_LENGTH, 0)?;
    if let Some(hsts) = hsts {
        response.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts)?;
    }
    session.set_keepalive(None);
    session
        .write_response_header(Box::new(response), true)
        .await
}

/// The headers a message's `Connection` names as hop-by-hop (RFC 9110
/// §7.6.1): they go with `Connection` itself when it crosses the proxy.
pub fn connection_nominated(headers: &http::HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Whether the client reached us over TLS.
fn is_tls(session: &ServerSession) -> bool {
    session
        .digest()
        .is_some_and(|digest| digest.ssl_digest.is_some())
}

/// The host the client asked for: `Host` on HTTP/1.1, `:authority` on HTTP/2.
fn requested_host(request: &RequestHeader) -> Option<String> {
    request
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri.authority().map(|a| a.to_string()))
}

/// Answers `502` with a short plain-text explanation.
async fn send_bad_gateway(session: &mut ServerSession, hsts: Option<&HeaderValue>) -> Result<()> {
    let mut response = ResponseHeader::build(502, Some(4))?;
    response.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    response.insert_header(header::CONTENT_LENGTH, BAD_GATEWAY_BODY.len())?;
    response.insert_header(header::CACHE_CONTROL, "no-store")?;
    if let Some(hsts) = hsts {
        response.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts)?;
    }
    session
        .write_error_response(response, Bytes::from_static(BAD_GATEWAY_BODY.as_bytes()))
        .await
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            policy: self.policy.load_full(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let policy = &ctx.policy;
        // Judge the target the app would get (Pingora passes the raw request
        // target on, absolute-form and all), not its parsed path.
        let target = String::from_utf8_lossy(session.req_header().raw_path()).into_owned();
        // The front door serves every GET on a topic path; what reaches the
        // proxy on one is another method, which topics do not serve.
        if self.hub.find(&target).is_some() {
            let hsts = policy.hsts.for_session(session.as_downstream()).cloned();
            method_not_allowed(session, hsts.as_ref()).await?;
            return Ok(true);
        }
        if let Some(closed) = policy.closed.check(&target) {
            log::debug!("refused {closed:?}: {target}");
            let (status, body) = match closed {
                ClosedPath::TopicUpstream => (404, NOT_FOUND_BODY),
                ClosedPath::TopicSpelling => (400, AMBIGUOUS_PATH_BODY),
            };
            policy
                .respond_error(session, status, Bytes::from_static(body.as_bytes()))
                .await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let app = &ctx.policy.app;
        let peer = app.origin.http_peer(&app.connect).await.map_err(|e| {
            let kind = match e {
                ResolveError::TimedOut { .. } => ErrorType::ConnectTimedout,
                _ => ErrorType::ConnectNoRoute,
            };
            // The app cannot be reached: `502`, not retried here (the
            // lookup already had its deadline).
            Error::explain(kind, e.to_string()).into_up()
        })?;
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client = ctx.policy.client(session);
        ctx.policy
            .upstream_request(session, &client, upstream_request)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.policy.response(session, upstream_response)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let policy = &ctx.policy;
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    // the client is gone: nobody to answer
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        let request = session.req_header();
        let what = format!("{} {}", request.method, request.uri.path());
        if code == 502 && session.response_written().is_some() {
            log::warn!(
                "app {} broke off its response to {what}: {e}",
                policy.app.origin
            );
        } else if code == 502 {
            policy.bad_gateway(session.as_downstream_mut(), e).await;
        } else if code > 0 {
            if let Err(write_error) = policy.respond_error(session, code, Bytes::new()).await {
                log::debug!("could not send the {code} for {what}: {write_error}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // Unreachable apps are logged once, in plain words, by fail_to_proxy;
        // clients that go away or stop reading are routine, not errors.
        let client_gone = error.esource() == &ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::WriteError
                    | ErrorType::WriteTimedout
                    | ErrorType::ReadError
                    | ErrorType::ConnectionClosed
            );
        if client_gone {
            log::debug!("client went away: {error}");
        }
        error.esource() == &ErrorSource::Upstream || client_gone
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map_or(0, |response| response.status.as_u16());
        let duration = ctx.started.elapsed();
        metrics::proxied(status, duration);
        access_log::record(AccessRecord {
            session: session.as_downstream(),
            client: Client::of(session.as_downstream(), &ctx.policy.trusted).ip,
            status,
            duration,
        });
    }
}
