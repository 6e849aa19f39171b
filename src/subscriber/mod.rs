//! Serves one subscription on one event stream.
//!
//! A browser's `GET` on a topic path becomes: a `200` with `text/event-stream`
//! (written by `topic_request.rs`), the topic's `retry:` and either its
//! replay or an id-priming frame, then live frames as the topic publishes
//! them and heartbeats when it is quiet. The loop ends when the browser goes
//! away (TCP close, `RST_STREAM`: noticed while waiting, without needing a
//! write), when it falls too far behind (its stream is ended and it resumes
//! with `Last-Event-ID`), or when the topic closes (`204` upstream, or
//! shutdown).
//!
//! The stream is an [`EventSink`]: an HTTP/1.1 session (Pingora's), or an
//! HTTP/2 stream that its connection's own task serves ([`H2EventStream`],
//! see `front_door/h2_connection.rs`), so that the subscribers of one
//! connection cost no task each and their frames leave in one write.
//!
//! Frames arrive as `Bytes` handles shared with every other subscriber; this
//! module writes them as they are.

mod h2;

use std::future::Future;

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::HeaderName;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorType};

use crate::event_stream;
use crate::hub::{CloseReason, Next, Subscription};

pub use h2::H2EventStream;

/// Where a subscription's frames go once its response head is written.
pub trait EventSink {
    /// Writes one frame; pending while the client cannot take it (most
    /// writes complete at once).
    fn write(&mut self, frame: Bytes) -> impl Future<Output = pingora::Result<()>> + Send;
    /// Pending until the client closes the stream (or its connection).
    fn closed(&mut self) -> impl Future<Output = ()> + Send;
    /// Ends the stream cleanly.
    fn finish(&mut self) -> impl Future<Output = pingora::Result<()>> + Send;
}

/// An HTTP/1.1 event stream: Pingora's session, chunked.
impl EventSink for ServerSession {
    fn write(&mut self, frame: Bytes) -> impl Future<Output = pingora::Result<()>> + Send {
        // Boxed: one small allocation per write, rather than ~550 more bytes
        // in every subscription's state for its whole life (memory per idle
        // subscriber is the figure that matters at scale).
        Box::pin(self.write_response_body(frame, false))
    }

    async fn closed(&mut self) {
        // (with `abort_on_close`, a closed connection ends the wait)
        let _ = self.read_body_or_idle(true).await;
    }

    fn finish(&mut self) -> impl Future<Output = pingora::Result<()>> + Send {
        self.finish_body()
    }
}

/// How a subscription ended, for logs and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The browser closed the stream.
    ClientGone,
    /// The browser fell too far behind; its stream was ended so it resumes.
    TooSlow,
    /// Its catch-up stopped part way; its stream was ended so it resumes
    /// from the last event it got.
    Resume,
    /// The topic closed (upstream `204`, or shutdown).
    Closed(CloseReason),
}

/// Answers `204 No Content`: the browser's signal to stop reconnecting, for
/// a topic whose upstream has ended.
pub async fn respond_ended(
    session: &mut ServerSession,
    cors: &[(HeaderName, String)],
) -> pingora::Result<()> {
    let mut response = ResponseHeader::build(204, Some(cors.len()))?;
    for (name, value) in cors {
        response.insert_header(name.clone(), value)?;
    }
    session.set_keepalive(None);
    session.write_response_header(Box::new(response)).await?;
    session.finish_body().await
}

/// Serves `subscription` on `sink`, whose response head is written, until
/// it ends.
pub async fn serve<S: EventSink>(
    sink: &mut S,
    mut subscription: Subscription,
) -> pingora::Result<Ending> {
    let mut frames: Vec<Bytes> = Vec::new();
    subscription.take_opening(&mut frames);
    let ending = loop {
        if !frames.is_empty() {
            if write_frames(sink, &mut subscription, &mut frames).await? == Written::Abandoned {
                // A frame is half written: no clean end is possible. Fail the
                // stream so it is dropped (reset) without finishing it.
                return Err(Error::explain(
                    ErrorType::WriteError,
                    format!("subscriber of {} stopped reading (past its lag bound, or no write completed within two heartbeats)", subscription.topic().key),
                )
                .into_down());
            }
            continue;
        }
        match subscription.next(&mut frames) {
            Next::Write => {}
            Next::TooSlow => break Ending::TooSlow,
            Next::Resume => break Ending::Resume,
            Next::Closed(reason) => break Ending::Closed(reason),
            Next::Wait => {
                tokio::select! {
                    _ = subscription.changed() => {}
                    _ = sink.closed() => break Ending::ClientGone,
                }
            }
        }
    };
    let settings = subscription.topic().settings();
    drop(subscription);
    if ending != Ending::ClientGone {
        // A clean end: the browser reconnects after `retry` (with
        // `Last-Event-ID`), or stops if the topic ended. A client that cannot
        // take these last bytes within a heartbeat interval is not waited for.
        // Boxed: needed once per subscription, it should not enlarge the
        // state every open subscription keeps.
        let last_words = async {
            if let Ending::Closed(CloseReason::ShuttingDown | CloseReason::Removed) = ending {
                // Come back later, and not all at the same moment.
                sink.write(event_stream::jittered_retry_line(settings.retry))
                    .await?;
            }
            sink.finish().await
        };
        match Box::pin(tokio::time::timeout(settings.heartbeat, last_words)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::explain(
                    ErrorType::WriteTimedout,
                    "subscriber did not take the end of its stream",
                )
                .into_down())
            }
        }
    }
    Ok(ending)
}

/// Whether [`write_frames`] wrote everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    All,
    /// A write was given up because the client stopped reading.
    Abandoned,
}

/// Writes `frames` (draining it). A write the client does not take is
/// abandoned as soon as the subscriber falls past its lag bound, or when it
/// has not completed within two heartbeat intervals (a client that stopped
/// reading on a quiet topic, where the lag never grows, or an HTTP/2 client
/// that keeps its window shut), so a client that stopped reading is cut off
/// rather than waited for.
async fn write_frames<S: EventSink>(
    sink: &mut S,
    subscription: &mut Subscription,
    frames: &mut Vec<Bytes>,
) -> pingora::Result<Written> {
    for frame in frames.drain(..) {
        let mut write = std::pin::pin!(sink.write(frame));
        // Most writes complete at once.
        if let Some(result) = (&mut write).now_or_never() {
            result?;
            continue;
        }
        // Only a stuck one pays for a timer and a watch (boxed: rare, and
        // inline it would enlarge every open subscription's state).
        if Box::pin(finish_stuck_write(write, subscription)).await? == Written::Abandoned {
            // (dropping the drain discards the frames left)
            return Ok(Written::Abandoned);
        }
    }
    subscription.delivered();
    Ok(Written::All)
}

/// Waits for a write the client did not take at once, giving up when the
/// subscriber falls past its lag bound or after two heartbeat intervals.
async fn finish_stuck_write(
    mut write: std::pin::Pin<&mut impl Future<Output = pingora::Result<()>>>,
    subscription: &mut Subscription,
) -> pingora::Result<Written> {
    let write_timeout = subscription.topic().settings().heartbeat.saturating_mul(2);
    let deadline = tokio::time::sleep(write_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            result = &mut write => { result?; return Ok(Written::All); }
            _ = subscription.changed() => {
                if subscription.is_too_slow() {
                    return Ok(Written::Abandoned);
                }
            }
            _ = &mut deadline => {
                subscription.write_timed_out();
                return Ok(Written::Abandoned);
            }
        }
    }
}
