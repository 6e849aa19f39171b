//! The flow of one request on a topic path, once the front door has sorted
//! it there: a `GET` is admitted (inputs, caps, auth), subscribed to its
//! topic instance and served until it ends; an `OPTIONS` is a CORS
//! preflight, answered here. Either way one access-log line records it.
//!
//! ```text
//!  GET /events/news ─▶ Admission::check ─▶ Hub::subscribe ─▶ subscriber::serve ─▶ access log
//!                        │ rejected          │ 204 / full
//!                        ▼                   ▼
//!                      admission::respond  subscriber::respond_ended / admission::respond
//!  OPTIONS /events/news ─▶ cors::preflight_headers ─▶ 204
//! ```
//!
//! The front door (`front_door.rs`) decides that a request is one of these;
//! this module decides what the subscriber gets.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use http::header::HeaderName;
use pingora::http::ResponseHeader;
use pingora::protocols::http::v2::server::HttpSession as H2Session;
use pingora::protocols::http::ServerSession;

use crate::access_log::RequestLine;
use crate::admission::{self, Admission, Rejection};
use crate::client::{self, Client};
use crate::cors;
use crate::event_stream;
use crate::front_door::DoorPolicy;
use crate::hub::{Hub, SubscribeError, Subscription, Topic, TopicRoute};
use crate::limits::Admitted;
use crate::subscriber::{self, Ending, H2EventStream};

/// What a request to a topic path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicMethod {
    /// A subscription.
    Get,
    /// A CORS preflight.
    Options,
}

impl TopicMethod {
    /// The topic method `method` is, if any (other methods are proxied, and
    /// the proxy answers `405` on topic paths).
    pub fn of(method: &http::Method) -> Option<TopicMethod> {
        match *method {
            http::Method::GET => Some(TopicMethod::Get),
            http::Method::OPTIONS => Some(TopicMethod::Options),
            _ => None,
        }
    }
}

/// Serves requests on topic paths: the topics, and who may subscribe.
pub struct TopicRequests {
    /// The topics.
    pub hub: Hub,
    /// Inputs, caps and auth for subscription requests.
    pub admission: Admission,
    /// Whose `X-Forwarded-For` names the client, and each listener's
    /// `Strict-Transport-Security`; replaced by a reload.
    pub policy: Arc<ArcSwap<DoorPolicy>>,
}

/// A subscription admitted, its response head written: what its stream
/// needs until it ends.
struct Opened {
    /// The topic, for the logs.
    topic: Arc<Topic>,
    /// Its place under the caps, held while it is open.
    _place: Admitted,
    /// For the access log, taken when the request arrived.
    client: Option<IpAddr>,
    request: Option<RequestLine>,
    started: Instant,
}

impl Opened {
    /// Logs how the stream ended, and writes its access-log line.
    fn close(self, ending: pingora::Result<Ending>, bytes_sent: usize) -> pingora::Result<Ending> {
        let key = &self.topic.key;
        match &ending {
            Ok(ending) => log::debug!("subscription to {key} ended: {ending:?}"),
            Err(e) => log::debug!("subscription to {key} failed: {e}"),
        }
        if let Some(request) = &self.request {
            request.record(self.client, 200, bytes_sent, self.started.elapsed());
        }
        ending
    }
}

/// An HTTP/2 event stream, its response head written: all it keeps while
/// it is open.
pub struct OpenH2Stream {
    stream: H2EventStream,
    subscription: Subscription,
    opened: Opened,
}

impl OpenH2Stream {
    /// Serves the stream until it ends; a stream that cannot end cleanly is
    /// reset.
    pub async fn serve(self) {
        let OpenH2Stream {
            mut stream,
            subscription,
            opened,
        } = self;
        let ending = subscriber::serve(&mut stream, subscription).await;
        if ending.is_err() {
            stream.cancel();
        }
        let _ = opened.close(ending, stream.bytes_sent());
    }
}

impl TopicRequests {
    /// Serves one HTTP/1.1 request whose header has been read.
    pub async fn serve(
        &self,
        session: &mut ServerSession,
        method: TopicMethod,
        route: &TopicRoute,
    ) {
        match method {
            TopicMethod::Get => {
                // Admission (with its auth request) and refusals are
                // short-lived and boxed: inline, their futures would enlarge
                // this one, which every open subscription keeps for its whole
                // life.
                let Some((subscription, opened)) = Box::pin(self.open(session, route)).await else {
                    return;
                };
                // Notice a closed connection while idle instead of waiting
                // for the next write to fail.
                session.set_abort_on_close(true);
                let ending = subscriber::serve(session, subscription).await;
                let _ = opened.close(ending, session.body_bytes_sent());
            }
            // Boxed: a preflight is rare and short-lived; inline, its future
            // would enlarge every subscription's.
            TopicMethod::Options => Box::pin(self.serve_preflight(session, route)).await,
        }
    }

    /// Answers one HTTP/2 stream on a topic path: a preflight, a refusal,
    /// or an event stream whose response head is written, returned to be
    /// served in its connection's task (`front_door/h2_connection.rs`). The
    /// session and its request are let go here: an open stream keeps only
    /// its send half.
    pub async fn open_h2(
        &self,
        session: H2Session,
        method: TopicMethod,
        route: TopicRoute,
    ) -> Option<OpenH2Stream> {
        let mut session = ServerSession::new_http2(session);
        let (subscription, opened) = match method {
            TopicMethod::Get => self.open(&mut session, &route).await?,
            TopicMethod::Options => {
                self.serve_preflight(&mut session, &route).await;
                return None;
            }
        };
        let ServerSession::H2(mut session) = session else {
            return None;
        };
        let send = session.take_response_body_writer()?;
        Some(OpenH2Stream {
            stream: H2EventStream::new(send),
            subscription,
            opened,
        })
    }

    /// Reads an HTTP/1.1 request (replayed by the front door) and serves it;
    /// the connection is not reused afterwards.
    pub async fn serve_http1(
        &self,
        mut session: ServerSession,
        method: TopicMethod,
        route: &TopicRoute,
    ) {
        match session.read_request().await {
            Ok(true) => self.serve(&mut session, method, route).await,
            Ok(false) => {}
            Err(e) => {
                log::debug!("bad request on a topic path: {e}");
                let _ = session.respond_error(400).await;
            }
        }
    }

    /// Admits a subscription request and writes its response head; or
    /// answers its refusal, writes its access-log line and returns `None`.
    async fn open(
        &self,
        session: &mut ServerSession,
        route: &TopicRoute,
    ) -> Option<(Subscription, Opened)> {
        let started = Instant::now();
        // Read while no await can hold it.
        let policy = self.policy.load();
        let client = Client::of(session, &policy.trusted);
        // The headers every answer to this request carries, the stream or
        // a refusal: CORS for the request's origin, and the listener's HSTS.
        let mut headers = cors::response_headers(
            &route.config.access.cors,
            client::header(session, http::header::ORIGIN).as_deref(),
        );
        headers.extend(policy.hsts.header_for(session));
        drop(policy);
        let request = RequestLine::of(session);
        let refused = |session: &ServerSession| {
            if let Some(request) = &request {
                let status = session.response_written().map_or(0, |r| r.status.as_u16());
                request.record(
                    client.ip,
                    status,
                    session.body_bytes_sent(),
                    started.elapsed(),
                );
            }
        };
        let Some((subscription, place)) = self
            .open_subscription(session, &client, route, &headers)
            .await
        else {
            refused(session);
            return None;
        };
        session.set_keepalive(None);
        let head = async {
            let mut head = event_stream::response_head(session)?;
            for (name, value) in &headers {
                head.insert_header(name.clone(), value)?;
            }
            session.write_response_header(Box::new(head)).await
        };
        if let Err(e) = head.await {
            log::debug!("opening the stream of {} failed: {e}", route.key);
            refused(session);
            return None;
        }
        let topic = subscription.topic().clone();
        Some((
            subscription,
            Opened {
                topic,
                _place: place,
                client: client.ip,
                request,
                started,
            },
        ))
    }

    /// Admits the request and subscribes it, or answers the rejection (and
    /// returns `None`).
    async fn open_subscription(
        &self,
        session: &mut ServerSession,
        client: &Client,
        route: &TopicRoute,
        cors: &[(HeaderName, String)],
    ) -> Option<(Subscription, Admitted)> {
        let topic = &route.config;
        let rejection = match self.admission.check(session, client, route, topic).await {
            Err(rejection) => rejection,
            Ok(ticket) => match self.hub.subscribe(route, ticket.last_event_id) {
                Ok(subscription) => return Some((subscription, ticket.place)),
                Err(SubscribeError::Full(limit)) => Rejection::OverLimit(limit),
                Err(SubscribeError::Draining) => Rejection::Draining,
                Err(SubscribeError::Ended) => {
                    if let Err(e) = subscriber::respond_ended(session, cors).await {
                        log::debug!("answering 204 for {} failed: {e}", route.key);
                    }
                    return None;
                }
            },
        };
        let over_limit = self.admission.limits.settings().over_limit;
        if let Err(e) =
            admission::respond(session, rejection, topic.settings.retry, over_limit, cors).await
        {
            log::debug!("refusing a subscription to {} failed: {e}", route.key);
        }
        None
    }

    /// Answers a CORS preflight on a topic path.
    async fn serve_preflight(&self, session: &mut ServerSession, route: &TopicRoute) {
        let topic = &route.config;
        let origin = client::header(session, http::header::ORIGIN);
        let mut headers = cors::preflight_headers(&topic.access.cors, origin.as_deref());
        headers.extend(self.policy.load().hsts.header_for(session));
        let answer = async {
            let mut response = ResponseHeader::build(204, Some(headers.len()))?;
            for (name, value) in headers {
                response.insert_header(name, value)?;
            }
            session.set_keepalive(None);
            session.write_response_header(Box::new(response)).await?;
            session.finish_body().await
        };
        if let Err(e) = answer.await {
            log::debug!("preflight for {} failed: {e}", route.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `make` would return, without calling it.
    fn future_size<Fut>(_make: impl FnOnce() -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every open HTTP/2 subscription keeps this state for its whole life
    /// (its connection's task holds it): the opening (admission, auth, the
    /// session and its request) must stay boxed out of it.
    #[test]
    #[allow(unreachable_code, unused_variables, clippy::diverging_sub_expression)]
    fn an_open_http2_event_stream_keeps_under_two_kib_of_state() {
        let size = future_size(|| {
            let stream: OpenH2Stream = todo!();
            stream.serve()
        });
        assert!(size < 2048, "{size} bytes");
    }
}
