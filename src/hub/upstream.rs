//! The one upstream reader of a topic.
//!
//! It opens the topic's stream with Pingora's connector (`GET` with
//! `Accept: text/event-stream`), feeds the body through the SSE parser,
//! encodes each event once and publishes it to the topic. When the stream
//! fails (connect error, a non-200 answer, a wrong content type, an end, a
//! stall, bytes that break the parser's bounds) it reconnects with the
//! `Last-Event-ID` of the last event it saw, after an exponential backoff with
//! jitter. Subscribers never see any of this as an error: they keep their
//! streams and the topic's heartbeats. Only a `204 No Content` ends the topic.
//!
//! Each change of state is logged once (connected, failing, connected
//! again), never once per retry, let alone once per subscriber.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;

use super::topic::{CloseReason, Topic, UpstreamState};
use crate::origin::{ConnectSettings, Origin};
use crate::sse::{self, Item, Limits, Parser};

/// The first reconnect waits between half this and this (full jitter on the
/// upper half), so a restarted app is retried within a second.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Sent as `User-Agent` on upstream requests, so the app can tell us apart.
const USER_AGENT: &str = concat!("sse-fanout/", env!("CARGO_PKG_VERSION"));

/// `Last-Event-ID`, the header a resuming SSE client sends.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// Reads one topic's upstream stream for as long as the topic lives.
pub struct UpstreamReader {
    /// Where events go.
    pub topic: Arc<Topic>,
    /// The upstream server.
    pub origin: Origin,
    /// Path and query of the stream on that server.
    pub path: String,
    /// Extra request headers from the topic's `upstream_headers`.
    pub extra_headers: Vec<(String, String)>,
    /// Connect timeout and TLS verification.
    pub connect: ConnectSettings,
    /// Pingora's connector, shared by every topic.
    pub connector: Arc<Connector>,
}

/// How one connection ended.
enum StreamEnd {
    /// `204 No Content`: the app says the topic is over.
    NoContent,
    /// The stream ended or failed; reconnect.
    Lost {
        /// What happened, for logs and stats.
        reason: String,
        /// Whether the connection delivered any bytes (then backoff resets).
        delivered: bool,
        /// Whether the app closed the stream itself after serving it (some
        /// apps end streams on purpose): worth a note, not a warning.
        clean: bool,
    },
}

/// Exponential backoff with jitter, capped.
struct Backoff {
    /// The base of the next delay.
    next: Duration,
    /// The longest base.
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff {
            next: FIRST_RETRY.min(max),
            max,
        }
    }

    fn reset(&mut self) {
        self.next = FIRST_RETRY.min(self.max);
    }

    /// A delay between half the current base and the base; doubles the base.
    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(0.5 + 0.5 * fastrand::f64())
    }
}

impl UpstreamReader {
    /// Reads, reconnects and publishes until the topic ends (or the task is
    /// aborted by the hub when the topic is reclaimed).
    pub async fn run(self) {
        let mut backoff = Backoff::new(self.topic.settings.backoff_max);
        let mut attempt: u32 = 1;
        let mut failing = false;
        loop {
            self.topic
                .set_upstream(UpstreamState::Connecting { attempt });
            let end = self.stream_once(&mut failing, attempt).await;
            let (reason, delivered, clean) = match end {
                StreamEnd::NoContent => {
                    log::info!(
                        "topic {}: upstream {} answered 204 No Content; the topic has ended",
                        self.topic.key,
                        self.topic.upstream_url
                    );
                    self.topic.close(CloseReason::Ended);
                    return;
                }
                StreamEnd::Lost {
                    reason,
                    delivered,
                    clean,
                } => (reason, delivered, clean),
            };
            if delivered {
                backoff.reset();
                attempt = 1;
            }
            if clean && !failing {
                log::info!(
                    "topic {}: upstream {} closed the stream; reopening it",
                    self.topic.key,
                    self.topic.upstream_url
                );
            } else if !failing {
                log::warn!(
                    "topic {}: upstream {} lost: {reason}; reconnecting with backoff (subscribers stay connected)",
                    self.topic.key,
                    self.topic.upstream_url
                );
                failing = true;
            } else {
                log::debug!(
                    "topic {}: upstream attempt {attempt} failed: {reason}",
                    self.topic.key
                );
            }
            self.topic.set_upstream(UpstreamState::BackingOff {
                attempt,
                error: reason,
            });
            tokio::time::sleep(backoff.next_delay()).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// One connection: connect, check the answer, read until it ends.
    async fn stream_once(&self, failing: &mut bool, attempt: u32) -> StreamEnd {
        let lost = |reason: String| StreamEnd::Lost {
            reason,
            delivered: false,
            clean: false,
        };
        let mut session = match self.open().await {
            Ok(session) => session,
            Err(reason) => return lost(reason),
        };
        let Some(response) = session.response_header() else {
            return lost("no response header".into());
        };
        let status = response.status.as_u16();
        if status == 204 {
            return StreamEnd::NoContent;
        }
        if status != 200 {
            return lost(format!("answered {status} instead of 200"));
        }
        let content_type = response
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_event_stream(content_type) {
            return lost(format!(
                "answered with content type {content_type:?} instead of text/event-stream"
            ));
        }

        self.topic.set_upstream(UpstreamState::Connected);
        self.topic
            .counters
            .upstream_connects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if *failing {
            log::info!(
                "topic {}: upstream {} connected again after {attempt} attempt(s)",
                self.topic.key,
                self.topic.upstream_url
            );
            *failing = false;
        } else {
            log::info!(
                "topic {}: upstream {} connected",
                self.topic.key,
                self.topic.upstream_url
            );
        }
        self.read_events(&mut session).await
    }

    /// Connects and sends the request; returns the session with the response
    /// header read.
    async fn open(&self) -> Result<HttpSession, String> {
        let peer = self.origin.peer(&self.connect).await.map_err(|e| e.0)?;
        let (mut session, _reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let mut request = RequestHeader::build("GET", self.path.as_bytes(), None)
            .map_err(|e| format!("invalid upstream path {:?}: {e}", self.path))?;
        let authority = self.origin.authority();
        let mut headers = vec![
            (header::HOST.as_str(), authority.as_str()),
            (header::ACCEPT.as_str(), "text/event-stream"),
            (header::CACHE_CONTROL.as_str(), "no-cache"),
            (header::USER_AGENT.as_str(), USER_AGENT),
        ];
        let last_event_id = self.topic.last_event_id();
        if let Some(id) = &last_event_id {
            headers.push((LAST_EVENT_ID, id));
        }
        let extra = self
            .extra_headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()));
        for (name, value) in headers.into_iter().chain(extra) {
            request
                .insert_header(name.to_string(), value)
                .map_err(|e| format!("invalid upstream header {name}: {e}"))?;
        }
        let exchange = async {
            session.write_request_header(Box::new(request)).await?;
            session.finish_request_body().await?;
            session.read_response_header().await
        };
        // The app must answer (at least the header) as promptly as it accepts.
        match tokio::time::timeout(self.connect.connect_timeout, exchange).await {
            Ok(Ok(())) => Ok(session),
            Ok(Err(e)) => Err(format!("request failed: {e}")),
            Err(_) => Err(format!(
                "no response header within {:?}",
                self.connect.connect_timeout
            )),
        }
    }

    /// Parses and publishes until the stream ends.
    async fn read_events(&self, session: &mut HttpSession) -> StreamEnd {
        let settings = self.topic.settings;
        let mut parser = Parser::new(Limits {
            max_line_len: settings.max_event_size,
            max_event_size: settings.max_event_size,
        });
        let mut items = Vec::new();
        let mut delivered = false;
        // After a reconnect, events the app replays that the window already
        // holds are dropped, until the first new id shows up.
        let mut catching_up = true;
        let lost = |reason: String, delivered: bool| StreamEnd::Lost {
            reason,
            delivered,
            clean: false,
        };
        loop {
            let read = session.read_response_body();
            let chunk = match settings.upstream_idle_timeout {
                None => read.await,
                Some(limit) => match tokio::time::timeout(limit, read).await {
                    Ok(chunk) => chunk,
                    Err(_) => {
                        return lost(
                            format!("sent nothing for {limit:?} (upstream_idle_timeout)"),
                            delivered,
                        )
                    }
                },
            };
            let bytes: Bytes = match chunk {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    return StreamEnd::Lost {
                        reason: "the app ended the stream".into(),
                        delivered,
                        clean: delivered,
                    }
                }
                Err(e) => return lost(format!("read failed: {e}"), delivered),
            };
            delivered |= !bytes.is_empty();
            parser.feed(&bytes, &mut items);
            for item in items.drain(..) {
                if let Item::Event(event) = item {
                    self.publish(event, &mut catching_up);
                }
            }
        }
    }

    /// Encodes an event once and hands it to the topic.
    fn publish(&self, event: sse::Event, catching_up: &mut bool) {
        if let Some(id) = event.id().filter(|id| !id.is_empty()) {
            if *catching_up && self.topic.has_id(id) {
                return;
            }
            *catching_up = false;
        }
        if let Some(retry) = event.retry() {
            self.topic.set_retry(retry);
        }
        self.topic
            .publish(event.encode(), event.id().map(Arc::from));
    }
}

/// `text/event-stream`, with or without parameters, in any letter case.
fn is_event_stream(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_stream_content_type_allows_parameters_and_case() {
        assert!(is_event_stream("text/event-stream"));
        assert!(is_event_stream("Text/Event-Stream; charset=utf-8"));
        assert!(!is_event_stream("text/plain"));
        assert!(!is_event_stream(""));
    }

    #[test]
    fn first_retry_is_under_a_second_and_delays_grow_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(4));
        let first = backoff.next_delay();
        assert!(first < Duration::from_secs(1) && first >= FIRST_RETRY / 2);
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)));
        assert!(delays.last().unwrap() >= &Duration::from_secs(2));
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_secs(1));
    }
}
