//! Asking the app whether a subscriber may subscribe.
//!
//! A topic with `auth = "/auth/sse"` is not served to anyone the app has not
//! admitted. Before a subscription starts, the proxy sends the app a `GET` to
//! that endpoint carrying what identifies the subscriber (its `Cookie`,
//! `Authorization`, `Origin`, address in `X-Forwarded-For`, `Last-Event-ID`)
//! and the topic instance it asked for (`X-SSE-Topic: /events/users/42`).
//! A `2xx` admits; a `401` or `403` is passed on to the subscriber as it is
//! (an EventSource stops on it, which is right for "not allowed"); anything
//! else, or no answer in time, refuses that one subscriber with `503`:
//! an auth endpoint that is down is never an open door.
//!
//! The upstream stream itself never carries a subscriber's credentials: it is
//! shared by every subscriber of the topic.
//!
//! Decisions can be cached per credentials and topic instance for
//! `auth_cache` (off by default), so a reconnect storm does not become an
//! auth storm. The cache is bounded (`[limits] auth_cache_size`, oldest out
//! first) and keyed by a SHA-256 of the credentials, never the credentials.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use ring::digest;

use crate::config::AuthTarget;
use crate::origin::ConnectSettings;

/// The header that names the topic instance being asked for.
pub const X_SSE_TOPIC: &str = "x-sse-topic";

/// The most of a `401`/`403` body passed on to the subscriber.
const MAX_DENIAL_BODY: usize = 4 * 1024;

/// What identifies a subscriber to the app.
#[derive(Debug, Clone, Default)]
pub struct AuthRequest {
    /// The topic instance (`/events/users/42`).
    pub topic: String,
    pub cookie: Option<String>,
    pub authorization: Option<String>,
    pub origin: Option<String>,
    /// The subscriber's `X-Forwarded-For`, with its own address appended.
    pub forwarded_for: Option<String>,
    pub last_event_id: Option<String>,
}

/// The app's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `2xx`: serve the subscription.
    Allow,
    /// `401` or `403`: pass it on.
    Deny(Denial),
    /// No usable answer (unreachable, timed out, another status): `503`.
    Unavailable(String),
}

/// A refusal from the app, passed on to the subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// Cached decisions, bounded, oldest evicted first.
struct DecisionCache {
    entries: HashMap<[u8; 32], (Decision, Instant)>,
    order: VecDeque<[u8; 32]>,
    capacity: usize,
}

impl DecisionCache {
    fn get(&mut self, key: &[u8; 32]) -> Option<Decision> {
        match self.entries.get(key) {
            Some((decision, expires)) if *expires > Instant::now() => Some(decision.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, key: [u8; 32], decision: Decision, ttl: Duration) {
        if self
            .entries
            .insert(key, (decision, Instant::now() + ttl))
            .is_none()
        {
            self.order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
        // Keys already removed (expired) linger in `order`; drop them.
        if self.order.len() > self.capacity * 2 {
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
        }
    }
}

/// Asks auth endpoints, with a bounded decision cache.
pub struct Authorizer {
    connector: Arc<Connector>,
    connect: ConnectSettings,
    cache: Mutex<DecisionCache>,
}

impl Authorizer {
    pub fn new(
        connector: Arc<Connector>,
        connect: ConnectSettings,
        cache_size: usize,
    ) -> Authorizer {
        Authorizer {
            connector,
            connect,
            cache: Mutex::new(DecisionCache {
                entries: HashMap::new(),
                order: VecDeque::new(),
                capacity: cache_size,
            }),
        }
    }

    /// The app's decision for `request` at `target`, from the cache when
    /// `ttl` is not zero and a fresh decision is there.
    pub async fn decide(
        &self,
        target: &AuthTarget,
        ttl: Duration,
        request: &AuthRequest,
    ) -> Decision {
        let key = cache_key(target, request);
        if !ttl.is_zero() {
            if let Some(decision) = self
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
            {
                return decision;
            }
        }
        let decision =
            match tokio::time::timeout(self.connect.connect_timeout, self.ask(target, request))
                .await
            {
                Ok(decision) => decision,
                Err(_) => Decision::Unavailable(format!(
                    "no answer within {:?}",
                    self.connect.connect_timeout
                )),
            };
        if !ttl.is_zero() && !matches!(decision, Decision::Unavailable(_)) {
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put(key, decision.clone(), ttl);
        }
        decision
    }

    async fn ask(&self, target: &AuthTarget, request: &AuthRequest) -> Decision {
        let peer = match target.origin.peer(&self.connect).await {
            Ok(peer) => peer,
            Err(e) => return Decision::Unavailable(e.0),
        };
        let (mut session, _) = match self.connector.get_http_session(&peer).await {
            Ok(session) => session,
            Err(e) => return Decision::Unavailable(format!("cannot connect: {e}")),
        };
        let Ok(mut head) = RequestHeader::build("GET", target.path.as_bytes(), None) else {
            return Decision::Unavailable(format!("invalid auth path {:?}", target.path));
        };
        let authority = target.origin.authority();
        let fields = [
            (header::HOST.as_str(), Some(authority.as_str())),
            (header::COOKIE.as_str(), request.cookie.as_deref()),
            (
                header::AUTHORIZATION.as_str(),
                request.authorization.as_deref(),
            ),
            (header::ORIGIN.as_str(), request.origin.as_deref()),
            ("x-forwarded-for", request.forwarded_for.as_deref()),
            (X_SSE_TOPIC, Some(request.topic.as_str())),
            ("last-event-id", request.last_event_id.as_deref()),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                if head.insert_header(name, value).is_err() {
                    return Decision::Unavailable(format!("cannot send header {name}"));
                }
            }
        }
        let exchange = async {
            session.write_request_header(Box::new(head)).await?;
            session.finish_request_body().await?;
            session.read_response_header().await
        };
        if let Err(e) = exchange.await {
            return Decision::Unavailable(format!("request failed: {e}"));
        }
        let Some(response) = session.response_header() else {
            return Decision::Unavailable("no response".into());
        };
        let status = response.status.as_u16();
        let text = |name: header::HeaderName| {
            response
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        match status {
            200..=299 => Decision::Allow,
            401 | 403 => {
                let www_authenticate = text(header::WWW_AUTHENTICATE);
                let content_type = text(header::CONTENT_TYPE);
                let mut body = BytesMut::new();
                while body.len() < MAX_DENIAL_BODY {
                    match session.read_response_body().await {
                        Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
                body.truncate(MAX_DENIAL_BODY);
                Decision::Deny(Denial {
                    status,
                    www_authenticate,
                    content_type,
                    body: body.freeze(),
                })
            }
            other => Decision::Unavailable(format!("auth endpoint answered {other}")),
        }
    }
}

/// SHA-256 of the auth target, topic and credentials: decisions are shared
/// only between requests that would send the app the same thing.
fn cache_key(target: &AuthTarget, request: &AuthRequest) -> [u8; 32] {
    let mut context = digest::Context::new(&digest::SHA256);
    for part in [
        Some(target.origin.to_string().as_str()),
        Some(target.path.as_str()),
        Some(request.topic.as_str()),
        request.cookie.as_deref(),
        request.authorization.as_deref(),
        request.origin.as_deref(),
    ] {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        let bytes = part.unwrap_or("").as_bytes();
        context.update(&(bytes.len() as u64).to_le_bytes());
        context.update(&[u8::from(part.is_some())]);
        context.update(bytes);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(context.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::Origin;

    fn target() -> AuthTarget {
        AuthTarget {
            origin: Origin::parse("127.0.0.1:1").unwrap(),
            path: "/auth".into(),
        }
    }

    fn request(cookie: &str, topic: &str) -> AuthRequest {
        AuthRequest {
            topic: topic.into(),
            cookie: Some(cookie.into()),
            ..AuthRequest::default()
        }
    }

    #[test]
    fn cache_key_depends_on_credentials_and_topic() {
        let a = cache_key(&target(), &request("s=1", "/t/1"));
        assert_eq!(a, cache_key(&target(), &request("s=1", "/t/1")));
        assert_ne!(a, cache_key(&target(), &request("s=2", "/t/1")));
        assert_ne!(a, cache_key(&target(), &request("s=1", "/t/2")));
    }

    #[test]
    fn cache_is_bounded_and_forgets_the_oldest() {
        let mut cache = DecisionCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: 2,
        };
        for n in 0u8..3 {
            cache.put([n; 32], Decision::Allow, Duration::from_secs(60));
        }
        assert_eq!(cache.entries.len(), 2);
        assert_eq!(cache.get(&[0; 32]), None);
        assert_eq!(cache.get(&[2; 32]), Some(Decision::Allow));
    }

    #[test]
    fn expired_decisions_are_not_served() {
        let mut cache = DecisionCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: 2,
        };
        cache.put([1; 32], Decision::Allow, Duration::ZERO);
        assert_eq!(cache.get(&[1; 32]), None);
    }
}
