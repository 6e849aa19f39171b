//! Serves one subscription on one downstream session.
//!
//! A browser's `GET` on a topic path becomes: a `200` with `text/event-stream`
//! (chunked on HTTP/1.1, nothing hop-by-hop on HTTP/2), the topic's `retry:`
//! and either its replay or an id-priming frame, then live frames as the
//! topic publishes them and heartbeats when it is quiet. The loop ends when
//! the browser goes away (TCP close, `RST_STREAM`: noticed while waiting,
//! without needing a write), when it falls too far behind (its stream is
//! ended and it resumes with `Last-Event-ID`), or when the topic closes
//! (`204` upstream, or shutdown).
//!
//! Frames arrive as `Bytes` handles shared with every other subscriber; this
//! module writes them as they are.

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::HeaderName;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorType};

use crate::event_stream;
use crate::hub::{CloseReason, Next, Subscription};

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

/// Serves `subscription` on `session` until it ends; `cors` are the headers
/// the request's origin gets.
pub async fn serve(
    session: &mut ServerSession,
    mut subscription: Subscription,
    cors: &[(HeaderName, String)],
) -> pingora::Result<Ending> {
    let key = subscription.topic().key.clone();
    session.set_keepalive(None);
    // Notice a closed HTTP/1.1 connection while idle instead of waiting
    // for the next write to fail.
    session.set_abort_on_close(true);
    let mut head = event_stream::response_head(session)?;
    for (name, value) in cors {
        head.insert_header(name.clone(), value)?;
    }
    session.write_response_header(Box::new(head)).await?;

    let mut frames: Vec<Bytes> = Vec::new();
    subscription.take_opening(&mut frames);
    let ending = loop {
        if !frames.is_empty() {
            if write_frames(session, &mut subscription, &mut frames).await? == Written::Abandoned {
                // A frame is half written: no clean end is possible. Fail the
                // request so Pingora drops the connection without finishing it.
                return Err(Error::explain(
                    ErrorType::WriteError,
                    format!("subscriber of {key} stopped reading (past its lag bound, or no write completed within two heartbeats)"),
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
                    _ = session.read_body_or_idle(true) => break Ending::ClientGone,
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
                session
                    .write_response_body(event_stream::jittered_retry_line(settings.retry), false)
                    .await?;
            }
            session.finish_body().await
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
async fn write_frames(
    session: &mut ServerSession,
    subscription: &mut Subscription,
    frames: &mut Vec<Bytes>,
) -> pingora::Result<Written> {
    let write_timeout = subscription.topic().settings().heartbeat.saturating_mul(2);
    for frame in frames.drain(..) {
        // Boxed: one small allocation per write, rather than ~550 more bytes
        // in every subscription's state for its whole life (memory per idle
        // subscriber is the figure that matters at scale).
        let mut write = Box::pin(session.write_response_body(frame, false));
        // Most writes complete at once; only a stuck one pays for a watch.
        if let Some(result) = (&mut write).now_or_never() {
            result?;
            continue;
        }
        // Only a stuck write pays for a timer.
        let deadline = tokio::time::sleep(write_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                result = &mut write => { result?; break; }
                _ = subscription.changed() => {
                    if subscription.is_too_slow() {
                        // (dropping the drain discards the frames left)
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
    subscription.delivered();
    Ok(Written::All)
}
