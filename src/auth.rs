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
//! A reconnect storm (a deploy brings every browser back at once) must not
//! become an auth storm, nor a port storm:
//!
//! - **Connections are reused.** An exchange whose answer was read to its end
//!   returns its connection to the connector's pool (Pingora's, bounded), where
//!   it waits at most [`AUTH_IDLE_TIMEOUT`]; a new TCP (and TLS) connection per
//!   subscription would leave one socket in `TIME_WAIT` per subscription and
//!   run the proxy out of ephemeral ports at a few hundred subscriptions a
//!   second. An app may close a pooled connection at any time, so a request
//!   that fails on a reused connection before any answer is sent again (it is
//!   an idempotent `GET`), at most [`STALE_RETRIES`] times.
//! - **Decisions are cached** per credentials and topic instance for
//!   `auth_cache` (5 s by default), so every tab and every retry of one
//!   session asks the app once. The cache is an exact LRU of
//!   `[limits] auth_cache_size` entries (`pingora-lru`), each with its expiry,
//!   keyed by a SHA-256 of the credentials, never the credentials.
//!
//! An endpoint that cannot be asked is logged once when it fails and once when
//! it answers again; every refusal in between is only counted (`/stats`).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use ring::digest;
use tokio::time::Instant;

use crate::config::AuthTarget;
use crate::upstream_addr::ConnectSettings;

/// The header that names the topic instance being asked for.
pub const X_SSE_TOPIC: &str = "x-sse-topic";

/// The most of a `401`/`403` body passed on to the subscriber.
const MAX_DENIAL_BODY: usize = 4 * 1024;

/// The most of any other answer's body read so that its connection can be
/// reused; a longer body closes the connection instead.
const MAX_DRAINED_BODY: usize = 4 * 1024;

/// How long an idle connection to an auth endpoint waits in the pool. Shorter
/// than the keep-alive timeout of most app servers (Node.js and uvicorn: 5 s),
/// so the proxy usually closes first; a storm keeps its connections busy.
pub const AUTH_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// How long the rest of an answer's body may take once its header is in
/// (outside `[app] connect_timeout`, which ends with the header). A body
/// still incomplete then closes the connection; a `401`/`403` is passed on
/// with what arrived.
pub const AUTH_BODY_TIMEOUT: Duration = Duration::from_secs(1);

/// How many times a request that failed on a reused connection is sent again
/// (the app may have closed the connection while it was idle).
pub const STALE_RETRIES: usize = 2;

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
    /// No usable answer: `503`, never cached.
    Unavailable(Unavailable),
}

/// A refusal from the app, passed on to the subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// Why the auth endpoint could not be asked. Every kind refuses the one
/// subscriber with `503` and `Retry-After` (the browser may come back, and by
/// then the endpoint may answer), and none is cached; only a request that
/// failed on a reused connection is sent again at once (see [`STALE_RETRIES`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// The endpoint's host name did not resolve (the resolver's words).
    Unresolved(String),
    /// No connection could be made: refused, unreachable, TLS failed.
    Unreachable(String),
    /// The request or the answer broke off (on a new connection, or on
    /// reused ones [`STALE_RETRIES`] times over).
    Broken(String),
    /// No whole answer within `[app] connect_timeout`.
    TimedOut(Duration),
    /// An answer other than `2xx`, `401` and `403`.
    Status(u16),
    /// The request could not be built (the auth path, or a header value).
    Unsendable(&'static str),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::Unresolved(e) => write!(f, "cannot resolve: {e}"),
            Unavailable::Unreachable(e) => write!(f, "cannot connect: {e}"),
            Unavailable::Broken(e) => write!(f, "request failed: {e}"),
            Unavailable::TimedOut(t) => write!(f, "no answer within {t:?}"),
            Unavailable::Status(s) => write!(f, "answered {s}"),
            Unavailable::Unsendable(what) => write!(f, "cannot send {what}"),
        }
    }
}

/// What the auth endpoints cost, since the process started (`/stats`).
pub struct AuthCounts {
    /// Requests sent to auth endpoints (each subscription not served from
    /// the cache).
    pub asked: AtomicU64,
    /// Subscriptions decided from the cache.
    pub cached: AtomicU64,
    /// Requests the app answered with a `2xx` (admitted).
    pub allowed: AtomicU64,
    /// Requests the app answered with a `401` or `403`.
    pub denied: AtomicU64,
    /// Requests with no usable answer (error, other status, no answer in
    /// time): the subscriber got a `503`.
    pub unavailable: AtomicU64,
    /// New connections opened to auth endpoints.
    pub connections_opened: AtomicU64,
    /// Requests sent on a pooled connection.
    pub connections_reused: AtomicU64,
}

impl AuthCounts {
    const fn new() -> AuthCounts {
        AuthCounts {
            asked: AtomicU64::new(0),
            cached: AtomicU64::new(0),
            allowed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            connections_reused: AtomicU64::new(0),
        }
    }
}

/// The process's auth counts, read by the admin listener.
pub static COUNTS: AuthCounts = AuthCounts::new();

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A cached decision and what it is for.
struct Cached {
    /// The whole key, so that two keys sharing their first 8 bytes (the
    /// LRU's key) are never taken for each other.
    key: [u8; 32],
    decision: Decision,
    /// When it stops being served.
    expires: Instant,
}

/// Cached decisions: an exact LRU of `capacity` entries, each with its own
/// expiry. Expired entries are dropped when looked up, or leave as the least
/// recently used; either way there are never more than `capacity`.
struct DecisionCache {
    /// By the first 8 bytes of the key.
    entries: HashMap<u64, Cached>,
    /// The order of use of `entries`' keys (each of weight 1, so the weight
    /// limit is the count); one shard, so eviction is exactly LRU.
    order: pingora_lru::Lru<u64, 1>,
}

/// The LRU's key for a cache key.
fn short_key(key: &[u8; 32]) -> u64 {
    let mut short = [0u8; 8];
    short.copy_from_slice(&key[..8]);
    u64::from_le_bytes(short)
}

impl DecisionCache {
    fn new(capacity: usize) -> DecisionCache {
        DecisionCache {
            entries: HashMap::new(),
            // The second argument only pre-allocates.
            order: pingora_lru::Lru::with_capacity(capacity, capacity.min(1024)),
        }
    }

    fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<Decision> {
        let short = short_key(key);
        let cached = self.entries.get(&short).filter(|c| c.key == *key)?;
        if cached.expires > now {
            let decision = cached.decision.clone();
            self.order.promote(short);
            return Some(decision);
        }
        self.entries.remove(&short);
        self.order.remove(short);
        None
    }

    fn put(&mut self, key: [u8; 32], decision: Decision, ttl: Duration, now: Instant) {
        let Some(expires) = now.checked_add(ttl) else {
            return;
        };
        let short = short_key(&key);
        self.entries.insert(
            short,
            Cached {
                key,
                decision,
                expires,
            },
        );
        self.order.admit(short, short, 1);
        for (evicted, _) in self.order.evict_to_limit() {
            self.entries.remove(&evicted);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// An answer whose header is in, the connection it came on, and the peer it
/// goes back to.
struct Answered {
    decision: Decision,
    session: HttpSession,
    peer: HttpPeer,
}

/// An auth endpoint that has not answered since `since`.
struct Outage {
    since: Instant,
    /// Subscribers refused with `503` since.
    refused: u64,
}

/// Asks auth endpoints, with a bounded decision cache.
pub struct Authorizer {
    /// Pingora's connector, whose pool keeps idle connections for reuse.
    connector: Arc<Connector>,
    /// How to reach the app's endpoints; replaced by a reload.
    connect: ArcSwap<ConnectSettings>,
    cache: Mutex<DecisionCache>,
    /// Endpoints that cannot be asked now, by URL: one log line when an
    /// outage starts, one when it ends. As many as configured endpoints.
    outages: Mutex<HashMap<String, Outage>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Authorizer {
    pub fn new(
        connector: Arc<Connector>,
        connect: ConnectSettings,
        cache_size: usize,
    ) -> Authorizer {
        Authorizer {
            connector,
            connect: ArcSwap::from_pointee(connect),
            cache: Mutex::new(DecisionCache::new(cache_size)),
            outages: Mutex::new(HashMap::new()),
        }
    }

    /// Applies a reloaded config: `connect` for requests from now on, and an
    /// empty cache of `cache_size` decisions, so none taken under the old
    /// config (another endpoint, another cache time) outlives it.
    pub fn reconfigure(&self, connect: ConnectSettings, cache_size: usize) {
        self.connect.store(Arc::new(connect));
        *lock(&self.cache) = DecisionCache::new(cache_size);
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
            if let Some(decision) = lock(&self.cache).get(&key, Instant::now()) {
                count(&COUNTS.cached);
                return decision;
            }
        }
        count(&COUNTS.asked);
        let deadline = self.connect.load().connect_timeout;
        let decision = match tokio::time::timeout(deadline, self.ask(target, request)).await {
            Ok(Ok(answered)) => self.finish(answered).await,
            Ok(Err(why)) => Decision::Unavailable(why),
            Err(_) => Decision::Unavailable(Unavailable::TimedOut(deadline)),
        };
        self.note_health(target, &decision);
        count(match decision {
            Decision::Allow => &COUNTS.allowed,
            Decision::Deny(_) => &COUNTS.denied,
            Decision::Unavailable(_) => &COUNTS.unavailable,
        });
        if !ttl.is_zero() && !matches!(decision, Decision::Unavailable(_)) {
            lock(&self.cache).put(key, decision.clone(), ttl, Instant::now());
        }
        decision
    }

    /// Logs an endpoint's outage when it starts and when it ends; counts
    /// the refusals in between.
    fn note_health(&self, target: &AuthTarget, decision: &Decision) {
        let url = || format!("{}{}", target.origin, target.path);
        let mut outages = lock(&self.outages);
        match decision {
            Decision::Unavailable(why) => match outages.get_mut(&url()) {
                Some(outage) => outage.refused += 1,
                None => {
                    log::warn!(
                        "auth endpoint {} unavailable ({why}); refusing its subscribers with 503 until it answers (counted in /stats)",
                        url()
                    );
                    outages.insert(
                        url(),
                        Outage {
                            since: Instant::now(),
                            refused: 1,
                        },
                    );
                }
            },
            _ if outages.is_empty() => {}
            _ => {
                if let Some(outage) = outages.remove(&url()) {
                    log::info!(
                        "auth endpoint {} answers again: {} subscribers refused with 503 in {:.1}s",
                        url(),
                        outage.refused,
                        outage.since.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }

    /// Sends the request (on a pooled connection when there is one) and
    /// reads the answer's header.
    async fn ask(
        &self,
        target: &AuthTarget,
        request: &AuthRequest,
    ) -> Result<Answered, Unavailable> {
        let peer = target
            .origin
            .peer(&self.connect.load_full())
            .await
            .map_err(|e| Unavailable::Unresolved(e.0))?;
        let head = request_head(target, request)?;
        let mut stale_left = STALE_RETRIES;
        let session = loop {
            let (mut session, reused) = self
                .connector
                .get_http_session(&peer)
                .await
                .map_err(|e| Unavailable::Unreachable(e.to_string()))?;
            count(if reused {
                &COUNTS.connections_reused
            } else {
                &COUNTS.connections_opened
            });
            match exchange(&mut session, head.clone()).await {
                Ok(()) => break session,
                // Closed by the app while it was idle in the pool: the app
                // has not answered this request; send it on another.
                Err(_) if reused && stale_left > 0 => stale_left -= 1,
                Err(e) => return Err(Unavailable::Broken(e.to_string())),
            }
        };
        let response = session
            .response_header()
            .ok_or_else(|| Unavailable::Broken("no response".into()))?;
        let status = response.status.as_u16();
        let text = |name: header::HeaderName| {
            response
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let decision = match status {
            200..=299 => Decision::Allow,
            401 | 403 => Decision::Deny(Denial {
                status,
                www_authenticate: text(header::WWW_AUTHENTICATE),
                content_type: text(header::CONTENT_TYPE),
                body: Bytes::new(),
            }),
            other => Decision::Unavailable(Unavailable::Status(other)),
        };
        Ok(Answered {
            decision,
            session,
            peer,
        })
    }

    /// Reads the rest of the answer (a denial's body is passed on) within
    /// [`AUTH_BODY_TIMEOUT`], then returns the connection to the pool if the
    /// answer was read to its end, and closes it otherwise: a pooled
    /// connection with half an answer in it would answer the next request.
    async fn finish(&self, answered: Answered) -> Decision {
        let Answered {
            decision,
            mut session,
            peer,
        } = answered;
        let limit = match decision {
            Decision::Deny(_) => MAX_DENIAL_BODY,
            _ => MAX_DRAINED_BODY,
        };
        let mut body = BytesMut::new();
        let read = read_body(&mut session, limit, &mut body);
        let _ = tokio::time::timeout(AUTH_BODY_TIMEOUT, read).await;
        if session.response_done() {
            // Returning it is immediate; only a connection the app asked to
            // close is shut down here, and that is bounded too.
            let release =
                self.connector
                    .release_http_session(session, &peer, Some(AUTH_IDLE_TIMEOUT));
            let _ = tokio::time::timeout(AUTH_BODY_TIMEOUT, release).await;
        }
        body.truncate(limit);
        match decision {
            Decision::Deny(denial) => Decision::Deny(Denial {
                body: body.freeze(),
                ..denial
            }),
            other => other,
        }
    }
}

/// The auth request for `request` at `target`.
fn request_head(target: &AuthTarget, request: &AuthRequest) -> Result<RequestHeader, Unavailable> {
    let Ok(mut head) = RequestHeader::build("GET", target.path.as_bytes(), None) else {
        return Err(Unavailable::Unsendable("the auth path"));
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
                return Err(Unavailable::Unsendable("a header value"));
            }
        }
    }
    Ok(head)
}

/// Sends the request and reads the answer's header.
async fn exchange(session: &mut HttpSession, head: RequestHeader) -> pingora::Result<()> {
    session.write_request_header(Box::new(head)).await?;
    session.finish_request_body().await?;
    session.read_response_header().await
}

/// Reads the answer's body into `body` until its end or past `limit` bytes.
async fn read_body(session: &mut HttpSession, limit: usize, body: &mut BytesMut) {
    while body.len() <= limit {
        match session.read_response_body().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
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
    use crate::upstream_addr::UpstreamAddr;

    fn target() -> AuthTarget {
        AuthTarget {
            origin: UpstreamAddr::parse("127.0.0.1:1").unwrap(),
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

    /// A distinct key per `n`.
    fn key(n: u8) -> [u8; 32] {
        [n; 32]
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn cache_key_depends_on_credentials_and_topic() {
        let a = cache_key(&target(), &request("s=1", "/t/1"));
        assert_eq!(a, cache_key(&target(), &request("s=1", "/t/1")));
        assert_ne!(a, cache_key(&target(), &request("s=2", "/t/1")));
        assert_ne!(a, cache_key(&target(), &request("s=1", "/t/2")));
    }

    #[tokio::test(start_paused = true)]
    async fn cache_is_bounded_and_forgets_the_least_recently_used() {
        let mut cache = DecisionCache::new(2);
        let now = Instant::now();
        cache.put(key(0), Decision::Allow, MINUTE, now);
        cache.put(key(1), Decision::Allow, MINUTE, now);
        // Using 0 makes 1 the least recently used.
        assert_eq!(cache.get(&key(0), now), Some(Decision::Allow));
        cache.put(key(2), Decision::Allow, MINUTE, now);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&key(1), now), None);
        assert_eq!(cache.get(&key(0), now), Some(Decision::Allow));
        assert_eq!(cache.get(&key(2), now), Some(Decision::Allow));
    }

    #[tokio::test(start_paused = true)]
    async fn decisions_are_served_until_their_ttl_and_not_after() {
        let mut cache = DecisionCache::new(10);
        cache.put(
            key(1),
            Decision::Allow,
            Duration::from_secs(5),
            Instant::now(),
        );
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert_eq!(cache.get(&key(1), Instant::now()), Some(Decision::Allow));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cache.get(&key(1), Instant::now()), None);
        assert_eq!(cache.len(), 0, "an expired decision was kept");
    }

    #[tokio::test(start_paused = true)]
    async fn keys_that_expire_and_come_back_leave_the_cache_at_its_bound() {
        let mut cache = DecisionCache::new(4);
        for _ in 0..1000 {
            cache.put(
                key(1),
                Decision::Allow,
                Duration::from_secs(1),
                Instant::now(),
            );
            tokio::time::advance(Duration::from_secs(2)).await;
            assert_eq!(cache.get(&key(1), Instant::now()), None);
        }
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.order.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_returning_key_is_not_evicted_for_its_stale_position() {
        let mut cache = DecisionCache::new(2);
        cache.put(
            key(1),
            Decision::Allow,
            Duration::from_secs(1),
            Instant::now(),
        );
        cache.put(key(2), Decision::Allow, MINUTE, Instant::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get(&key(1), Instant::now()), None);
        cache.put(key(1), Decision::Allow, MINUTE, Instant::now());
        cache.put(key(3), Decision::Allow, MINUTE, Instant::now());
        // 2 is the least recently used; 1 came back after it.
        assert_eq!(cache.get(&key(1), Instant::now()), Some(Decision::Allow));
        assert_eq!(cache.get(&key(2), Instant::now()), None);
        assert_eq!(cache.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_distinct_credentials_keeps_exactly_the_newest() {
        let mut cache = DecisionCache::new(100);
        for n in 0..10_000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&n.to_le_bytes());
            cache.put(k, Decision::Allow, MINUTE, Instant::now());
            assert!(cache.len() <= 100);
        }
        assert_eq!(cache.len(), 100);
        assert_eq!(cache.order.len(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_sharing_their_first_bytes_are_not_taken_for_each_other() {
        let mut cache = DecisionCache::new(10);
        let (mut a, mut b) = (key(7), key(7));
        a[31] = 1;
        b[31] = 2;
        cache.put(a, Decision::Allow, MINUTE, Instant::now());
        assert_eq!(cache.get(&b, Instant::now()), None);
        assert_eq!(cache.get(&a, Instant::now()), Some(Decision::Allow));
    }

    #[tokio::test(start_paused = true)]
    async fn an_absurd_ttl_is_not_an_overflow() {
        let mut cache = DecisionCache::new(10);
        cache.put(key(1), Decision::Allow, Duration::MAX, Instant::now());
        assert_eq!(cache.get(&key(1), Instant::now()), None);
    }
}
