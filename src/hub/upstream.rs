//! The one upstream reader of a topic, and the request both it and the
//! topic's catch-ups send.
//!
//! An [`UpstreamSource`] says where a topic's stream lives and opens it with
//! Pingora's connector: `GET` with `Accept: text/event-stream`,
//! `Accept-Encoding: identity`, the topic's `upstream_headers` and, when the
//! caller has one, a `Last-Event-ID`. [`EventReader`] reads the answer's body
//! through the SSE parser with a deadline on every read.
//!
//! The [`UpstreamReader`] is the topic's shared stream: it encodes each event
//! once and publishes it to the topic. The `Last-Event-ID` it sends is only
//! ever the id of the last event the topic itself received: never a
//! subscriber's (a resuming subscriber gets a catch-up of its own, see
//! `catch_up.rs`). When the stream fails it reconnects; how soon depends on
//! what failed ([`UpstreamError::retry`]): quickly (sub-second, with jitter)
//! for the first seconds of an outage, so an app that restarts is reached as
//! soon as it is back, then with an exponential backoff up to
//! `upstream_backoff_max`; at once the backoff's longest wait for answers
//! that retrying will not change (a wrong content type, a compressed body).
//! Subscribers never see any of this as an error: they keep their streams and
//! the topic's heartbeats. Only a `204 No Content` ends the topic.
//!
//! Each change of state is logged once (connected, failing, connected
//! again), never once per retry, let alone once per subscriber.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::TcpKeepalive;
use tokio::time::Instant;

use super::topic::{CloseReason, Topic, UpstreamState};
use crate::event_stream::{is_event_stream, last_event_id_header, LAST_EVENT_ID};
use crate::sse::{self, Item, ParseError, Parser, ParserLimits};
use crate::upstream_addr::{ConnectSettings, ResolveError, UpstreamAddr};

/// Sent as `User-Agent` on upstream requests, so the app can tell us apart.
const USER_AGENT: &str = concat!("sse-fanout/", env!("CARGO_PKG_VERSION"));

/// TCP keepalive on upstream connections: a NAT or balancer that silently
/// drops the app's stream is noticed within about two minutes even when
/// `upstream_idle_timeout` is off.
const UPSTREAM_KEEPALIVE: TcpKeepalive = TcpKeepalive {
    idle: Duration::from_secs(60),
    interval: Duration::from_secs(10),
    count: 5,
    #[cfg(target_os = "linux")]
    user_timeout: Duration::from_secs(120),
};

/// For this long after a stream is lost, reconnects are tried quickly: an
/// app that restarts is usually back within a few seconds.
const FAST_RETRY_WINDOW: Duration = Duration::from_secs(5);

/// The wait between quick reconnects: between half this and this.
const FAST_RETRY: Duration = Duration::from_millis(400);

/// The first wait once the quick reconnects are over; it doubles from here
/// up to `upstream_backoff_max`.
const SLOW_RETRY: Duration = Duration::from_secs(1);

/// Why an upstream stream could not be opened, or ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// The request could not be built (an `upstream_headers` value, a
    /// `Last-Event-ID` that is no header value).
    InvalidRequest(String),
    /// The app's host name gave no address.
    Resolve(ResolveError),
    /// No connection: connect, TLS, or sending the request.
    Connect(String),
    /// The app accepted but did not answer within `connect_timeout`.
    NoAnswer(Duration),
    /// The app answered a status other than `200` or `204`.
    Status(u16),
    /// The app answered `200` with something other than an event stream.
    ContentType(String),
    /// The app compressed the stream although it was asked for `identity`.
    ContentEncoding(String),
    /// Reading the stream failed (reset, broken framing).
    Read(String),
    /// The app sent nothing, not even a comment, for `upstream_idle_timeout`.
    Idle(Duration),
    /// The app ended the stream.
    Ended,
}

/// What retrying an [`UpstreamError`] can achieve, as Pingora's `RetryType`
/// says for its own errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Transient (the app restarts, a connection dropped): retry with the
    /// backoff, quickly at first.
    Transient,
    /// The answer will not change until the app or the config does: retry,
    /// but only after the backoff's longest wait.
    Persistent,
}

impl UpstreamError {
    /// Whether retrying soon can help.
    pub fn retry(&self) -> Retry {
        match self {
            UpstreamError::InvalidRequest(_)
            | UpstreamError::ContentType(_)
            | UpstreamError::ContentEncoding(_) => Retry::Persistent,
            UpstreamError::Resolve(e) if !e.retryable() => Retry::Persistent,
            UpstreamError::Status(status) if (400..500).contains(status) => Retry::Persistent,
            _ => Retry::Transient,
        }
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::InvalidRequest(why) => write!(f, "cannot build the request: {why}"),
            UpstreamError::Resolve(e) => e.fmt(f),
            UpstreamError::Connect(why) => f.write_str(why),
            UpstreamError::NoAnswer(limit) => write!(f, "no response header within {limit:?}"),
            UpstreamError::Status(status) => write!(f, "answered {status} instead of 200"),
            UpstreamError::ContentType(content_type) => write!(
                f,
                "answered with content type {content_type:?} instead of text/event-stream"
            ),
            UpstreamError::ContentEncoding(encoding) => write!(
                f,
                "answered with Content-Encoding {encoding:?} although asked for identity"
            ),
            UpstreamError::Read(why) => write!(f, "read failed: {why}"),
            UpstreamError::Idle(limit) => {
                write!(f, "sent nothing for {limit:?} (upstream_idle_timeout)")
            }
            UpstreamError::Ended => f.write_str("the app ended the stream"),
        }
    }
}

/// How an open request was answered.
pub enum Opened {
    /// `200` with an event stream: read it with an [`EventReader`].
    Stream(Box<HttpSession>),
    /// `204 No Content`: the app says the topic is over.
    NoContent,
}

/// Where a topic's stream comes from and how to ask for it; shared by the
/// topic's reader and its catch-ups.
pub struct UpstreamSource {
    /// The upstream server.
    pub origin: UpstreamAddr,
    /// Path and query of the stream on that server.
    pub path: String,
    /// The full URL, for logs and stats.
    pub url: String,
    /// Extra request headers from the topic's `upstream_headers`.
    pub extra_headers: Vec<(String, String)>,
    /// Connect timeout and TLS verification.
    pub connect: ConnectSettings,
    /// Pingora's connector, shared by every topic.
    pub connector: Arc<Connector>,
}

impl UpstreamSource {
    /// Whether `other` asks for the same stream the same way (a reload that
    /// leaves it so keeps the topic's stream open).
    pub fn same_stream_as(&self, other: &UpstreamSource) -> bool {
        self.origin == other.origin
            && self.path == other.path
            && self.extra_headers == other.extra_headers
            && self.connect == other.connect
    }

    /// Connects, sends the request (with `last_event_id` as `Last-Event-ID`
    /// when given) and checks the answer's head.
    pub async fn open(&self, last_event_id: Option<&str>) -> Result<Opened, UpstreamError> {
        let mut peer = self
            .origin
            .http_peer(&self.connect)
            .await
            .map_err(UpstreamError::Resolve)?;
        peer.options.tcp_keepalive = Some(UPSTREAM_KEEPALIVE);
        let request = self.request(last_event_id)?;
        let (mut session, _reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| UpstreamError::Connect(format!("cannot connect: {e}")))?;
        let exchange = async {
            session.write_request_header(request).await?;
            session.finish_request_body().await?;
            session.read_response_header().await
        };
        // The app must answer (at least the header) as promptly as it accepts.
        let limit = self.connect.connect_timeout;
        match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(UpstreamError::Connect(format!("request failed: {e}"))),
            Err(_) => return Err(UpstreamError::NoAnswer(limit)),
        }
        let Some(response) = session.response_header() else {
            return Err(UpstreamError::Read("no response header".into()));
        };
        match response.status.as_u16() {
            200 => {}
            204 => return Ok(Opened::NoContent),
            status => return Err(UpstreamError::Status(status)),
        }
        let text = |name: header::HeaderName| {
            response
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let content_type = text(header::CONTENT_TYPE).unwrap_or_default();
        if !is_event_stream(&content_type) {
            return Err(UpstreamError::ContentType(content_type));
        }
        if let Some(encoding) = text(header::CONTENT_ENCODING) {
            if !encoding.trim().eq_ignore_ascii_case("identity") {
                return Err(UpstreamError::ContentEncoding(encoding));
            }
        }
        Ok(Opened::Stream(Box::new(session)))
    }

    /// The request head.
    fn request(&self, last_event_id: Option<&str>) -> Result<Box<RequestHeader>, UpstreamError> {
        let invalid = |what: &str, e: &dyn fmt::Display| {
            UpstreamError::InvalidRequest(format!("{what}: {e}"))
        };
        let mut request = RequestHeader::build("GET", self.path.as_bytes(), None)
            .map_err(|e| invalid(&format!("path {:?}", self.path), &e))?;
        let authority = self.origin.authority();
        let fixed = [
            (header::HOST, authority.as_str()),
            (header::ACCEPT, "text/event-stream"),
            (header::ACCEPT_ENCODING, "identity"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::USER_AGENT, USER_AGENT),
        ];
        for (name, value) in fixed {
            request
                .insert_header(name.clone(), value)
                .map_err(|e| invalid(name.as_str(), &e))?;
        }
        if let Some(id) = last_event_id {
            let value = last_event_id_header(id).ok_or_else(|| {
                UpstreamError::InvalidRequest(format!("Last-Event-ID {id:?} is no header value"))
            })?;
            request
                .insert_header(LAST_EVENT_ID, value)
                .map_err(|e| invalid(LAST_EVENT_ID, &e))?;
        }
        for (name, value) in &self.extra_headers {
            request
                .insert_header(name.clone(), value.as_str())
                .map_err(|e| invalid(name, &e))?;
        }
        Ok(Box::new(request))
    }
}

/// Reads an open stream's body through the SSE parser.
pub struct EventReader {
    session: Box<HttpSession>,
    parser: Parser,
    /// A read that waits longer than this fails with [`UpstreamError::Idle`].
    idle_timeout: Option<Duration>,
}

impl EventReader {
    pub fn new(
        session: Box<HttpSession>,
        limits: ParserLimits,
        idle_timeout: Option<Duration>,
    ) -> Self {
        EventReader {
            session,
            parser: Parser::new(limits),
            idle_timeout,
        }
    }

    /// Reads the next chunk and appends what it completes to `items`.
    pub async fn read(&mut self, items: &mut Vec<Item>) -> Result<(), UpstreamError> {
        let read = self.session.read_response_body();
        let chunk = match self.idle_timeout {
            None => read.await,
            Some(limit) => tokio::time::timeout(limit, read)
                .await
                .map_err(|_| UpstreamError::Idle(limit))?,
        };
        let bytes: Bytes = match chunk {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(UpstreamError::Ended),
            Err(e) => return Err(UpstreamError::Read(e.to_string())),
        };
        self.parser.feed(&bytes, items);
        Ok(())
    }
}

/// When to try again after an upstream stream was lost: quickly for the
/// first seconds of an outage, then exponentially longer up to a cap, with
/// jitter throughout so topics do not reconnect in step.
#[derive(Debug)]
pub struct Backoff {
    /// When the current outage began; `None` while the stream delivers.
    outage_since: Option<Instant>,
    /// The base of the next slow delay.
    next: Duration,
    /// The longest base (`upstream_backoff_max`).
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            outage_since: None,
            next: SLOW_RETRY.min(max),
            max,
        }
    }

    /// The stream delivered an event: the next outage starts afresh.
    pub fn reset(&mut self) {
        self.outage_since = None;
        self.next = SLOW_RETRY.min(self.max);
    }

    /// The wait before the next attempt after a failure `retry` says
    /// something of, at `now`.
    pub fn next_delay(&mut self, retry: Retry, now: Instant) -> Duration {
        let since = *self.outage_since.get_or_insert(now);
        let base = match retry {
            Retry::Persistent => self.max,
            Retry::Transient if now.duration_since(since) < FAST_RETRY_WINDOW => {
                FAST_RETRY.min(self.max)
            }
            Retry::Transient => {
                let base = self.next;
                self.next = self.next.saturating_mul(2).min(self.max);
                base
            }
        };
        base.mul_f64(0.5 + 0.5 * fastrand::f64())
    }
}

/// Reads one topic's upstream stream for as long as the topic lives, from
/// the topic's source as it is at each connection (a reload may move it).
pub struct UpstreamReader {
    /// Where events go.
    pub topic: Arc<Topic>,
}

/// How one connection ended.
enum StreamEnd {
    /// `204 No Content`: the app says the topic is over.
    NoContent,
    /// A reload moved the topic's upstream: reopen there at once.
    Moved,
    /// The stream ended or failed; reconnect.
    Lost {
        /// What happened.
        error: UpstreamError,
        /// Whether the connection published an event (then the backoff
        /// resets: bytes alone, such as an event the parser skips, do not).
        published: bool,
    },
}

impl UpstreamReader {
    /// Reads, reconnects and publishes until the topic ends (or the task is
    /// aborted by the topic's driver when the topic is reclaimed).
    pub async fn run(self) {
        let mut backoff = Backoff::new(self.topic.settings().backoff_max);
        let mut attempt: u32 = 1;
        let mut failing = false;
        let mut connected_before = false;
        let mut told_routine = false;
        // After the app refused the topic's last id (a 4xx), the next attempt
        // goes without it: the topic continues live rather than not at all.
        let mut send_id = true;
        loop {
            let source = self.topic.source();
            self.topic
                .set_upstream(UpstreamState::Connecting { attempt });
            let sent_id = send_id.then(|| self.topic.last_event_id()).flatten();
            let end = self
                .stream_once(
                    &source,
                    sent_id.as_deref(),
                    &mut failing,
                    &mut connected_before,
                    attempt,
                )
                .await;
            let (error, published) = match end {
                StreamEnd::NoContent => {
                    log::info!(
                        "topic {}: upstream {} answered 204 No Content; the topic has ended",
                        self.topic.key,
                        source.url
                    );
                    self.topic.close(CloseReason::Ended);
                    return;
                }
                StreamEnd::Moved => {
                    log::info!(
                        "topic {}: the reloaded config moved its upstream to {}; reopening it there",
                        self.topic.key,
                        self.topic.source().url
                    );
                    backoff.reset();
                    attempt = 1;
                    continue;
                }
                StreamEnd::Lost { error, published } => (error, published),
            };
            send_id = true;
            if published {
                backoff.reset();
                attempt = 1;
            }
            if let (UpstreamError::Status(status), Some(id)) = (&error, &sent_id) {
                if (400..500).contains(status) {
                    log::warn!(
                        "topic {}: upstream {} answered {status} to Last-Event-ID {id:?}; reconnecting without it (events after that id may be missing)",
                        self.topic.key,
                        source.url
                    );
                    send_id = false;
                }
            }
            // An app that ends its streams on purpose, or a quiet topic
            // reopened after `upstream_idle_timeout`, is routine: said once.
            let routine = matches!(error, UpstreamError::Idle(_))
                || (published && error == UpstreamError::Ended);
            if routine && !failing {
                if !told_routine {
                    log::info!(
                        "topic {}: upstream {}: {error}; reopening it (said once; later reopenings are logged at debug level)",
                        self.topic.key,
                        source.url
                    );
                    told_routine = true;
                } else {
                    log::debug!("topic {}: upstream: {error}; reopening it", self.topic.key);
                }
            } else if !failing {
                log::warn!(
                    "topic {}: upstream {} lost: {error}; reconnecting (subscribers stay connected)",
                    self.topic.key,
                    source.url
                );
                failing = true;
            } else {
                log::debug!(
                    "topic {}: upstream attempt {attempt} failed: {error}",
                    self.topic.key
                );
            }
            let retry = if send_id {
                error.retry()
            } else {
                Retry::Transient
            };
            let delay = backoff.next_delay(retry, Instant::now());
            self.topic
                .set_upstream(UpstreamState::BackingOff { attempt, error });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // Moved elsewhere: try there at once.
                _ = self.topic.reopen_upstream.notified() => {}
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// One connection: connect, check the answer, read until it ends.
    async fn stream_once(
        &self,
        source: &UpstreamSource,
        last_event_id: Option<&str>,
        failing: &mut bool,
        connected_before: &mut bool,
        attempt: u32,
    ) -> StreamEnd {
        let lost = |error| StreamEnd::Lost {
            error,
            published: false,
        };
        let session = match source.open(last_event_id).await {
            Ok(Opened::Stream(session)) => session,
            Ok(Opened::NoContent) => return StreamEnd::NoContent,
            Err(error) => return lost(error),
        };
        self.topic.set_upstream(UpstreamState::Connected);
        self.topic
            .counters
            .upstream_connects
            .fetch_add(1, Ordering::Relaxed);
        if *failing {
            log::info!(
                "topic {}: upstream {} connected again after {attempt} attempt(s)",
                self.topic.key,
                source.url
            );
            *failing = false;
        } else if !*connected_before {
            log::info!(
                "topic {}: upstream {} connected",
                self.topic.key,
                source.url
            );
        } else {
            log::debug!("topic {}: upstream connected", self.topic.key);
        }
        *connected_before = true;
        self.read_events(session).await
    }

    /// Parses and publishes until the stream ends.
    async fn read_events(&self, session: Box<HttpSession>) -> StreamEnd {
        let settings = self.topic.settings();
        let mut reader = EventReader::new(
            session,
            ParserLimits {
                max_line_len: settings.max_event_size,
                max_event_size: settings.max_event_size,
            },
            settings.upstream_idle_timeout,
        );
        let mut items = Vec::new();
        let mut published = false;
        // After a reconnect, events the app replays that the window already
        // holds are dropped, until the first new id shows up.
        let mut catching_up = true;
        // Asked without `Last-Event-ID`, an upstream may open with a block
        // that fires nothing and carries its last id: priming, as another
        // sse-fanout does for a late joiner. It is the topic's position,
        // not an event: taken, never forwarded (a data-less block would be
        // an empty event in clients that dispatch every block).
        let mut may_be_primed = self.topic.last_event_id().is_none();
        loop {
            let read = tokio::select! {
                read = reader.read(&mut items) => read,
                // The stream is abandoned, so a read cut short loses nothing.
                _ = self.topic.reopen_upstream.notified() => return StreamEnd::Moved,
            };
            if let Err(error) = read {
                return StreamEnd::Lost { error, published };
            }
            for item in items.drain(..) {
                match item {
                    Item::Event(event) if std::mem::take(&mut may_be_primed) => {
                        if !self.adopt_priming(&event) {
                            published |= self.publish(event, &mut catching_up);
                        }
                    }
                    Item::Event(event) => published |= self.publish(event, &mut catching_up),
                    Item::Skipped(error) => self.skipped(error),
                    Item::Comment(_) => {}
                }
            }
        }
    }

    /// Takes a priming block (an id, maybe a `retry`, no data) as the
    /// topic's position; false for anything else.
    fn adopt_priming(&self, event: &sse::Event) -> bool {
        let Some(id) = event.id().filter(|_| !event.fires_event()) else {
            return false;
        };
        if let Some(retry) = event.retry() {
            self.topic.set_retry(retry);
        }
        self.topic.adopt_last_event_id(Arc::from(id));
        true
    }

    /// Encodes an event once and hands it to the topic; false when it was
    /// dropped as one the window already holds.
    fn publish(&self, event: sse::Event, catching_up: &mut bool) -> bool {
        if let Some(id) = event.id().filter(|id| !id.is_empty()) {
            if *catching_up && self.topic.has_id(id) {
                return false;
            }
            *catching_up = false;
        }
        if let Some(retry) = event.retry() {
            self.topic.set_retry(retry);
        }
        self.topic
            .publish(event.encode(), event.id().map(Arc::from));
        true
    }

    /// An event over the topic's bounds was dropped: counted, logged once.
    fn skipped(&self, error: ParseError) {
        let before = self
            .topic
            .counters
            .events_skipped
            .fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            log::warn!(
                "topic {}: upstream {} sent an event over the topic's bounds ({error}); it was skipped, and further skips are only counted (events_skipped in /stats)",
                self.topic.key,
                self.topic.source().url
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_are_quick_for_the_first_seconds_of_an_outage() {
        let start = Instant::now();
        let mut backoff = Backoff::new(Duration::from_secs(30));
        let mut at = start;
        while at.duration_since(start) < FAST_RETRY_WINDOW {
            let delay = backoff.next_delay(Retry::Transient, at);
            assert!(delay <= FAST_RETRY && delay >= FAST_RETRY / 2, "{delay:?}");
            at += delay;
        }
    }

    #[test]
    fn after_the_quick_window_delays_double_up_to_the_cap() {
        let start = Instant::now();
        let mut backoff = Backoff::new(Duration::from_secs(4));
        backoff.next_delay(Retry::Transient, start);
        let later = start + FAST_RETRY_WINDOW;
        let delays: Vec<Duration> = (0..8)
            .map(|_| backoff.next_delay(Retry::Transient, later))
            .collect();
        assert!(delays[0] >= SLOW_RETRY / 2 && delays[0] <= SLOW_RETRY);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)));
        assert!(delays.last().unwrap() >= &Duration::from_secs(2));
    }

    #[test]
    fn a_published_event_starts_the_next_outage_afresh() {
        let start = Instant::now();
        let mut backoff = Backoff::new(Duration::from_secs(30));
        backoff.next_delay(Retry::Transient, start);
        let much_later = start + Duration::from_secs(60);
        assert!(backoff.next_delay(Retry::Transient, much_later) >= SLOW_RETRY / 2);
        backoff.reset();
        assert!(backoff.next_delay(Retry::Transient, much_later) <= FAST_RETRY);
    }

    #[test]
    fn answers_that_retrying_cannot_change_wait_the_longest() {
        let mut backoff = Backoff::new(Duration::from_secs(30));
        let delay = backoff.next_delay(
            UpstreamError::ContentType("text/html".into()).retry(),
            Instant::now(),
        );
        assert!(delay >= Duration::from_secs(15));
        assert_eq!(UpstreamError::Status(404).retry(), Retry::Persistent);
        assert_eq!(UpstreamError::Status(503).retry(), Retry::Transient);
        assert_eq!(UpstreamError::Ended.retry(), Retry::Transient);
    }
}
