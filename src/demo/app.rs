//! The demo app: a small app that sse-fanout sits in front of, built on
//! Pingora's own HTTP server machinery (no second HTTP stack).
//!
//! It is what a real app would be behind the proxy: it serves the page, a
//! couple of ordinary endpoints, and the upstream event streams that the
//! proxy reads once per topic. Browsers reach all of it through the proxy.
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | the demo page (`page.html`) |
//! | `GET /demo/stats` | the proxy's `/stats` document (same origin as the page) plus the app's own count of open streams |
//! | `POST /demo/restart` | ends every open stream, as an app restart would; the proxy reconnects with `Last-Event-ID` |
//! | `GET /stream/clock` | an event every second |
//! | `GET /stream/quiet` | an event every ten seconds: the proxy's heartbeats show in between |
//! | `GET /stream/jobs/{id}` | a job's progress, 0 → 100 %, then the stream ends; `204` for a finished job |
//!
//! Each stream honours `Last-Event-ID` exactly (see [`super::feed`]), so the
//! restart button loses no event. The app counts the streams it has open:
//! the page shows that number next to the proxy's subscriber count, which is
//! the whole point of sse-fanout in two numbers.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{header, Method};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde_json::json;
use tokio::sync::watch;

use super::feed::{self, Schedule, Start, CLOCK_PERIOD, QUIET_PERIOD};
use super::jobs::{JobBoard, JobError};
use sse_fanout::admin;
use sse_fanout::event_stream::LAST_EVENT_ID;
use sse_fanout::hub::Hub;
use sse_fanout::sse::{Event, EventError};

/// The page, served at `/`.
const PAGE: &str = include_str!("page.html");

/// Where the upstream streams live on the app; `conf/demo.toml` points the
/// topics here.
const STREAM_PREFIX: &str = "/stream/";

/// How long an idle keep-alive connection to the app stays open, in seconds
/// (as Pingora's own simple HTTP apps do).
const KEEPALIVE_SECONDS: u64 = 60;

/// The app's own state, shared by every request it serves.
pub struct DemoApp {
    /// The proxy's hub, whose stats the page shows.
    hub: Hub,
    /// When each job started.
    jobs: JobBoard,
    /// Bumped by `POST /demo/restart`; every open stream watches it and ends.
    restarts: watch::Sender<u64>,
    /// Streams open right now: with sse-fanout in front, one per topic
    /// instance, however many browsers subscribe.
    open_streams: AtomicUsize,
    /// Streams served since start (each upstream reconnect is one more).
    streams_served: AtomicU64,
}

/// The feeds the app streams.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Feed {
    /// `/stream/clock`.
    Clock,
    /// `/stream/quiet`.
    Quiet,
    /// `/stream/jobs/{id}`.
    Job(String),
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// `GET /`.
    Page,
    /// `GET /demo/stats`.
    Stats,
    /// `POST /demo/restart`.
    Restart,
    /// `GET /stream/...`.
    Stream(Feed),
    /// A known path with the wrong method; the one it takes.
    WrongMethod(&'static str),
    /// Anything else.
    NotFound,
}

impl Route {
    fn of(method: &Method, path: &str) -> Route {
        let (route, allowed) = match path {
            "/" => (Route::Page, Method::GET),
            "/demo/stats" => (Route::Stats, Method::GET),
            "/demo/restart" => (Route::Restart, Method::POST),
            _ => match path.strip_prefix(STREAM_PREFIX) {
                Some("clock") => (Route::Stream(Feed::Clock), Method::GET),
                Some("quiet") => (Route::Stream(Feed::Quiet), Method::GET),
                Some(rest) => match rest.strip_prefix("jobs/") {
                    Some(id) => (Route::Stream(Feed::Job(id.to_string())), Method::GET),
                    None => return Route::NotFound,
                },
                None => return Route::NotFound,
            },
        };
        if *method == allowed {
            route
        } else if allowed == Method::POST {
            Route::WrongMethod("POST")
        } else {
            Route::WrongMethod("GET")
        }
    }
}

/// Why a stream stopped early.
#[derive(Debug)]
enum StreamError {
    /// Writing to the proxy failed: it closed the connection (for example
    /// because the topic was reclaimed after its last subscriber left).
    Write(Box<pingora::Error>),
    /// An event could not be encoded (cannot happen with numeric ids and
    /// JSON data; reported rather than unwrapped).
    Encode(EventError),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Write(e) => write!(f, "the proxy went away: {e}"),
            StreamError::Encode(e) => write!(f, "an event could not be encoded: {e}"),
        }
    }
}

impl From<Box<pingora::Error>> for StreamError {
    fn from(e: Box<pingora::Error>) -> Self {
        StreamError::Write(e)
    }
}

/// Counts a stream as open while it lives.
struct OpenStream<'a>(&'a AtomicUsize);

impl<'a> OpenStream<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        OpenStream(count)
    }
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Now, as a duration since the Unix epoch (the feeds' time line).
fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A response with a whole body.
async fn reply(
    session: &mut ServerSession,
    status: u16,
    content_type: &str,
    body: Bytes,
) -> pingora::Result<()> {
    let mut response = ResponseHeader::build(status, Some(3))?;
    response.insert_header(header::CONTENT_TYPE, content_type)?;
    response.insert_header(header::CONTENT_LENGTH, body.len())?;
    response.insert_header(header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(response)).await?;
    session.write_response_body(body, true).await
}

/// A plain-text response.
async fn reply_text(session: &mut ServerSession, status: u16, text: String) -> pingora::Result<()> {
    reply(session, status, "text/plain; charset=utf-8", text.into()).await
}

/// The request's `Last-Event-ID`, when it is one of ours (a number).
fn resume_point(session: &ServerSession) -> Option<u64> {
    session
        .req_header()
        .headers
        .get(LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl DemoApp {
    /// The app, showing `hub`'s stats on its page.
    pub fn new(hub: Hub) -> DemoApp {
        DemoApp {
            hub,
            jobs: JobBoard::default(),
            restarts: watch::Sender::new(0),
            open_streams: AtomicUsize::new(0),
            streams_served: AtomicU64::new(0),
        }
    }

    /// The `/demo/stats` document.
    fn stats(&self) -> serde_json::Value {
        json!({
            "proxy": admin::stats(&self.hub),
            "app": {
                "open_streams": self.open_streams.load(Ordering::Relaxed),
                "streams_served": self.streams_served.load(Ordering::Relaxed),
                "restarts": *self.restarts.borrow(),
            },
        })
    }

    /// Ends every open stream, as a restart of the app would.
    fn restart(&self) -> serde_json::Value {
        let open = self.open_streams.load(Ordering::Relaxed);
        self.restarts.send_modify(|n| *n += 1);
        let restarts = *self.restarts.borrow();
        log::info!(
            "demo app: restart {restarts}: ending {open} open stream(s); the proxy reconnects with Last-Event-ID"
        );
        json!({ "restarts": restarts, "streams_ended": open })
    }

    /// Answers an ordinary (non-stream) request.
    async fn serve_plain(&self, session: &mut ServerSession, route: Route) -> pingora::Result<()> {
        match route {
            Route::Page => {
                let page = Bytes::from_static(PAGE.as_bytes());
                reply(session, 200, "text/html; charset=utf-8", page).await
            }
            Route::Stats => {
                let body = self.stats().to_string();
                reply(session, 200, "application/json", body.into()).await
            }
            Route::Restart => {
                session.drain_request_body().await?;
                let body = self.restart().to_string();
                reply(session, 200, "application/json", body.into()).await
            }
            Route::WrongMethod(allowed) => {
                reply_text(session, 405, format!("405: use {allowed}\n")).await
            }
            Route::NotFound | Route::Stream(_) => {
                reply_text(session, 404, "404: the demo app has no such page\n".into()).await
            }
        }
    }

    /// Serves one event stream until it ends, the proxy goes away, the
    /// restart button is pressed or the server shuts down.
    async fn serve_stream(
        &self,
        session: &mut ServerSession,
        feed: Feed,
        shutdown: &ShutdownWatch,
    ) -> Result<(), StreamError> {
        let schedule = match &feed {
            Feed::Clock => Schedule::ticker(CLOCK_PERIOD),
            Feed::Quiet => Schedule::ticker(QUIET_PERIOD),
            Feed::Job(id) => match self.jobs.start(id, now()) {
                Ok(started) => Schedule::job(started, feed::job_duration(id)),
                Err(e @ JobError::BadId) => {
                    return Ok(reply_text(session, 404, format!("404: {e}\n")).await?)
                }
                Err(e @ JobError::Full) => {
                    return Ok(reply_text(session, 503, format!("503: {e}\n")).await?)
                }
            },
        };
        let mut next = match schedule.start(resume_point(session), now()) {
            Start::At(id) => id,
            Start::Ended => {
                // 204 tells the proxy, and through it every browser, to stop.
                let response = ResponseHeader::build(204, Some(1))?;
                session.write_response_header(Box::new(response)).await?;
                session.write_response_body(Bytes::new(), true).await?;
                return Ok(());
            }
        };

        let mut response = ResponseHeader::build(200, Some(3))?;
        response.insert_header(header::CONTENT_TYPE, "text/event-stream")?;
        response.insert_header(header::CACHE_CONTROL, "no-cache")?;
        if !session.is_http2() {
            response.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
        session.write_response_header(Box::new(response)).await?;
        let _open = OpenStream::new(&self.open_streams);
        self.streams_served.fetch_add(1, Ordering::Relaxed);
        let mut restarts = self.restarts.subscribe();
        let mut shutdown = shutdown.clone();

        loop {
            let mut batch = BytesMut::new();
            let mut ended = false;
            while schedule.due(next) <= now() {
                batch.extend_from_slice(
                    &frame(&feed, &schedule, next).map_err(StreamError::Encode)?,
                );
                if schedule.is_last(next) {
                    ended = true;
                    break;
                }
                next += 1;
            }
            if !batch.is_empty() || ended {
                session.write_response_body(batch.freeze(), ended).await?;
            }
            if ended {
                return Ok(());
            }
            let wait = schedule.due(next).saturating_sub(now());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = restarts.changed() => break,
                _ = shutdown.changed() => break,
            }
        }
        session.write_response_body(Bytes::new(), true).await?;
        Ok(())
    }
}

/// Event `id` of `feed`, encoded.
fn frame(feed: &Feed, schedule: &Schedule, id: u64) -> Result<Bytes, EventError> {
    let data = match feed {
        Feed::Job(job) => json!({ "job": job, "percent": id }),
        Feed::Clock | Feed::Quiet => {
            let due = u64::try_from(schedule.due(id).as_millis()).unwrap_or(u64::MAX);
            json!({ "at": due })
        }
    };
    Ok(Event::builder()
        .id(id.to_string())
        .data(data.to_string())
        .build()?
        .encode())
}

#[async_trait]
impl HttpServerApp for DemoApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                log::debug!("demo app: could not read a request: {e}");
                return None;
            }
        }
        let route = Route::of(
            &session.req_header().method,
            session.req_header().uri.path(),
        );
        if let Route::Stream(feed) = route {
            let what = session.req_header().uri.path().to_string();
            if let Err(e) = self.serve_stream(&mut session, feed, shutdown).await {
                log::debug!("demo app: stream {what} stopped: {e}");
            }
            // A stream's connection is not reused: the proxy opens a new one.
            return None;
        }
        session.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE_SECONDS));
        if let Err(e) = self.serve_plain(&mut session, route).await {
            log::debug!(
                "demo app: could not answer {}: {e}",
                session.request_summary()
            );
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_the_table_in_the_module_docs() {
        assert_eq!(Route::of(&Method::GET, "/"), Route::Page);
        assert_eq!(Route::of(&Method::GET, "/demo/stats"), Route::Stats);
        assert_eq!(Route::of(&Method::POST, "/demo/restart"), Route::Restart);
        assert_eq!(
            Route::of(&Method::GET, "/demo/restart"),
            Route::WrongMethod("POST")
        );
        assert_eq!(
            Route::of(&Method::GET, "/stream/clock"),
            Route::Stream(Feed::Clock)
        );
        assert_eq!(
            Route::of(&Method::GET, "/stream/jobs/a-1"),
            Route::Stream(Feed::Job("a-1".into()))
        );
        assert_eq!(Route::of(&Method::GET, "/stream/nope"), Route::NotFound);
        assert_eq!(Route::of(&Method::GET, "/favicon.ico"), Route::NotFound);
    }

    #[test]
    fn job_events_carry_their_percentage_as_id_and_data() {
        let schedule = Schedule::job(Duration::ZERO, Duration::from_secs(10));
        let bytes = frame(&Feed::Job("a-1".into()), &schedule, 42).unwrap();
        assert_eq!(
            &bytes[..],
            b"id: 42\ndata: {\"job\":\"a-1\",\"percent\":42}\n\n"
        );
    }
}
