//! Whether a subscription request is served, and what it is told if not.
//!
//! Every `GET` on a topic path passes here before the hub sees it, in this
//! order (cheapest first, so a flood is turned away before it costs an auth
//! request):
//!
//! 1. the request's inputs: template parameters (length and characters) and
//!    `Last-Event-ID` (too long or unusable counts as absent);
//! 2. the caps of [`Limits`]: total subscriptions, per client address, rate
//!    of new subscriptions per address;
//! 3. the topic's `auth` endpoint, when it has one ([`Authorizer`]).
//!
//! An admitted request leaves with a [`Ticket`]: its place under the caps
//! and its resume point. A refused one gets an answer a
//! browser handles as intended: `400` for bad input, the app's `401`/`403`,
//! `503` with `Retry-After` when the auth endpoint cannot be asked, and for a
//! cap the configured answer — by default `200` with a jittered `retry:` and
//! a clean end, so an EventSource backs off and comes back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;

use crate::auth::{AuthRequest, Authorizer, Decision, Denial};
use crate::client;
use crate::config::{OverLimit, TopicConfig};
use crate::limits::{Admitted, Limit, Limits};
use crate::route::TopicMatch;
use crate::sse;
use crate::subscriber;

/// An admitted subscription request.
pub struct Ticket {
    /// Its place under the caps, held for the stream's life.
    pub place: Admitted,
    /// Where it resumes (`Last-Event-ID`), if anywhere.
    pub last_event_id: Option<String>,
}

/// Why a subscription request is not served.
#[derive(Debug)]
pub enum Refused {
    /// Malformed input (a template parameter): `400`.
    BadRequest(String),
    /// The auth endpoint said no: its `401`/`403`, passed on.
    Denied(Denial),
    /// The auth endpoint could not be asked: `503`.
    AuthUnavailable(String),
    /// A cap was reached.
    OverLimit(Limit),
}

/// Decides on subscription requests.
pub struct Admission {
    pub limits: Arc<Limits>,
    pub authorizer: Authorizer,
}

impl Admission {
    /// Checks a subscription request for `route` of the topic `topic`.
    pub async fn check(
        &self,
        session: &ServerSession,
        route: &TopicMatch,
        topic: &TopicConfig,
    ) -> Result<Ticket, Refused> {
        let limits = self.limits.settings();
        route
            .check_params(limits.max_param_len)
            .map_err(|e| Refused::BadRequest(e.0))?;
        let last_event_id = subscriber::last_event_id(session, limits.max_last_event_id);
        let place = self
            .limits
            .admit(client::ip(session))
            .map_err(Refused::OverLimit)?;
        if let Some(target) = &topic.access.auth {
            let request = AuthRequest {
                topic: route.key.clone(),
                cookie: client::header(session, header::COOKIE),
                authorization: client::header(session, header::AUTHORIZATION),
                origin: client::header(session, header::ORIGIN),
                forwarded_for: client::forwarded_for(session),
                last_event_id: last_event_id.clone(),
            };
            match self
                .authorizer
                .decide(target, topic.access.auth_cache, &request)
                .await
            {
                Decision::Allow => {}
                Decision::Deny(denial) => return Err(Refused::Denied(denial)),
                Decision::Unavailable(reason) => {
                    log::warn!(
                        "auth for {} unavailable: {reason}; refusing with 503",
                        route.key
                    );
                    return Err(Refused::AuthUnavailable(reason));
                }
            }
        }
        Ok(Ticket {
            place,
            last_event_id,
        })
    }
}

/// Seconds to put in `Retry-After`: the topic's `retry`, at least a second.
fn retry_after(retry: Duration) -> String {
    retry.as_secs().max(1).to_string()
}

/// Answers a refused subscription request. `retry` is the topic's
/// reconnection time, `over_limit` how caps are answered, `cors` the CORS
/// headers the answer needs so a cross-origin page can read it.
pub async fn respond(
    session: &mut ServerSession,
    refused: Refused,
    retry: Duration,
    over_limit: OverLimit,
    cors: &[(HeaderName, String)],
) -> pingora::Result<()> {
    session.set_keepalive(None);
    let (status, mut extra, body): (u16, Vec<(HeaderName, String)>, Bytes) = match refused {
        Refused::BadRequest(reason) => (
            400,
            vec![],
            Bytes::from(format!("400 Bad Request: {reason}\n")),
        ),
        Refused::Denied(denial) => {
            let mut headers = Vec::new();
            if let Some(challenge) = denial.www_authenticate {
                headers.push((header::WWW_AUTHENTICATE, challenge));
            }
            if let Some(content_type) = denial.content_type {
                headers.push((header::CONTENT_TYPE, content_type));
            }
            (denial.status, headers, denial.body)
        }
        Refused::AuthUnavailable(_) => (
            503,
            vec![(header::RETRY_AFTER, retry_after(retry))],
            Bytes::from_static(b"503 Service Unavailable: cannot check this subscription now\n"),
        ),
        Refused::OverLimit(limit) => {
            log::info!("subscription refused: {} reached", limit.key());
            match over_limit {
                OverLimit::Retry => return retry_later(session, limit, retry, cors).await,
                OverLimit::TooManyRequests => (
                    429,
                    vec![(header::RETRY_AFTER, retry_after(retry))],
                    Bytes::from(format!("429 Too Many Requests: {} reached\n", limit.key())),
                ),
                OverLimit::Unavailable => (
                    503,
                    vec![(header::RETRY_AFTER, retry_after(retry))],
                    Bytes::from(format!(
                        "503 Service Unavailable: {} reached\n",
                        limit.key()
                    )),
                ),
            }
        }
    };
    if !extra.iter().any(|(n, _)| n == header::CONTENT_TYPE) {
        extra.push((header::CONTENT_TYPE, "text/plain; charset=utf-8".into()));
    }
    let mut response = ResponseHeader::build(status, Some(extra.len() + cors.len() + 1))?;
    for (name, value) in extra.iter().chain(cors) {
        response.insert_header(name.clone(), value)?;
    }
    response.insert_header(header::CONTENT_LENGTH, body.len())?;
    session.write_response_header(Box::new(response)).await?;
    session.write_response_body(body, true).await
}

/// The EventSource-friendly answer to a cap: a stream that only says when to
/// come back (a jittered `retry:`, between one and two times the topic's, so
/// a crowd does not return at once) and ends cleanly.
async fn retry_later(
    session: &mut ServerSession,
    limit: Limit,
    retry: Duration,
    cors: &[(HeaderName, String)],
) -> pingora::Result<()> {
    let base = retry.as_millis().max(1) as u64;
    let jittered = base + fastrand::u64(0..=base);
    let mut response = subscriber::stream_header(session)?;
    for (name, value) in cors {
        response.insert_header(name.clone(), value)?;
    }
    session.write_response_header(Box::new(response)).await?;
    session
        .write_response_body(sse::retry_frame(jittered), false)
        .await?;
    session
        .write_response_body(
            sse::comment_frame(&format!(" over limit: {}; come back later", limit.key())),
            false,
        )
        .await?;
    session.finish_body().await
}
