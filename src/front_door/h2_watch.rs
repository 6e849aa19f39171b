//! An HTTP/2 connection as the front door watches it: the frames each side
//! sends are followed (their 9-byte headers only; payloads are skipped),
//! so that protocol abuse is stopped and counted.
//!
//! - **Rapid reset** (CVE-2023-44487): a client opens streams and cancels
//!   them (`RST_STREAM`) at once, in a loop. Each cancelled stream is no
//!   longer "concurrent", so `max_concurrent_streams` does not bound it,
//!   while each costs the proxy a task, routing, and for a topic an
//!   admission and a subscription. The h2 crate catches it only when the
//!   resets arrive before the proxy has accepted the streams; the proxy
//!   accepts fast, so it rarely does. Here every connection gets a budget
//!   of client resets: `max_concurrent_streams` per second, with a burst
//!   of twice that (a browser closing every stream of a page at once, twice
//!   in a second, stays well inside it). A connection past its budget gets
//!   a `GOAWAY` with `ENHANCE_YOUR_CALM` and is closed.
//! - **Anything the HTTP/2 layer closes a connection for** (a `GOAWAY` it
//!   sends with an error code: a protocol error, a flow-control error, its
//!   own reset and frame floods) is counted too.
//!
//! Both are counted in `/stats` (`connections.h2_abuse_closures`) and the
//! first is logged. The wrapper also hands h2 the bytes the front door read
//! to recognise the connection (the client preface) before the rest.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use pingora::protocols::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::connections::Connections;
use super::greeting::H2_PREFACE;
use super::io::pass_through_connection_info;

/// Every HTTP/2 frame starts with this many bytes (RFC 9113 §4.1).
const FRAME_HEADER_LEN: usize = 9;
/// Frame types the watcher acts on (RFC 9113 §6).
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
/// The part of a `GOAWAY` payload that matters: last stream id, error code.
const GOAWAY_FIXED_LEN: usize = 8;
/// `NO_ERROR`: a `GOAWAY` with it is a graceful close, not a complaint.
const NO_ERROR: u32 = 0x0;
/// `ENHANCE_YOUR_CALM` (RFC 9113 §7): the peer is generating excessive load.
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// How many seconds' worth of resets a connection may spend at once.
const RESET_BURST_SECONDS: f64 = 2.0;

/// Something a [`FrameScanner`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A frame header: its type and stream.
    Frame { kind: u8, stream: u32 },
    /// A `GOAWAY` frame's error code.
    GoAway { error: u32 },
}

/// Follows one direction of an HTTP/2 connection frame by frame, across
/// reads or writes of any size.
#[derive(Debug)]
struct FrameScanner {
    /// Bytes of the client preface still to pass (the client's side only).
    preface_left: usize,
    /// The frame header being read, and how much of it has come.
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    /// The current frame's type, and how much of its payload is still to pass.
    kind: u8,
    payload_left: usize,
    /// The start of a `GOAWAY` payload, and how much of it has come.
    goaway: [u8; GOAWAY_FIXED_LEN],
    goaway_len: usize,
}

impl FrameScanner {
    fn new(preface: bool) -> FrameScanner {
        FrameScanner {
            preface_left: if preface { H2_PREFACE.len() } else { 0 },
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            kind: 0,
            payload_left: 0,
            goaway: [0; GOAWAY_FIXED_LEN],
            goaway_len: 0,
        }
    }

    /// Whether the next byte starts a frame.
    fn between_frames(&self) -> bool {
        self.preface_left == 0 && self.header_len == 0 && self.payload_left == 0
    }

    fn scan(&mut self, mut bytes: &[u8], mut on: impl FnMut(Seen)) {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                split_off(&mut bytes, n);
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                let payload = split_off(&mut bytes, n);
                if self.kind == GOAWAY && self.goaway_len < GOAWAY_FIXED_LEN {
                    let take = n.min(GOAWAY_FIXED_LEN - self.goaway_len);
                    fill(&mut self.goaway, self.goaway_len, payload, take);
                    self.goaway_len += take;
                    if self.goaway_len == GOAWAY_FIXED_LEN {
                        let error = u32::from_be_bytes([
                            self.goaway[4],
                            self.goaway[5],
                            self.goaway[6],
                            self.goaway[7],
                        ]);
                        on(Seen::GoAway { error });
                    }
                }
                self.payload_left -= n;
            } else {
                let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
                let part = split_off(&mut bytes, n);
                fill(&mut self.header, self.header_len, part, n);
                self.header_len += n;
                if self.header_len == FRAME_HEADER_LEN {
                    let h = self.header;
                    self.header_len = 0;
                    self.kind = h[3];
                    self.payload_left =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    self.goaway_len = 0;
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    on(Seen::Frame {
                        kind: self.kind,
                        stream,
                    });
                }
            }
        }
    }
}

/// Takes the first `n` bytes off `bytes` (all of them if there are fewer).
fn split_off<'a>(bytes: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = bytes.split_at_checked(n).unwrap_or((bytes, &[]));
    *bytes = tail;
    head
}

/// Copies the first `n` bytes of `from` into `into` at `at`, as far as both
/// reach (the callers keep them in bounds: a frame header, a `GOAWAY`'s
/// fixed part).
fn fill(into: &mut [u8], at: usize, from: &[u8], n: usize) {
    let from = from.get(..n).unwrap_or(from);
    if let Some(into) = into.get_mut(at..at + from.len()) {
        into.copy_from_slice(from);
    }
}

/// How many stream resets a client may still send: a token bucket filled at
/// `rate` per second up to `burst`.
#[derive(Debug)]
struct ResetBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl ResetBudget {
    /// The budget of a connection allowed `max_concurrent_streams` streams.
    fn for_streams(max_concurrent_streams: u32, now: Instant) -> ResetBudget {
        let rate = f64::from(max_concurrent_streams.max(1));
        let burst = rate * RESET_BURST_SECONDS;
        ResetBudget {
            rate,
            burst,
            tokens: burst,
            refilled: now,
        }
    }

    /// Spends one reset; `false` when the budget is gone.
    fn spend(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// An HTTP/2 connection's stream, watched (see the module docs).
#[derive(Debug)]
pub(super) struct WatchedH2 {
    inner: Stream,
    /// Bytes read before h2 took over (the client preface and what came
    /// with it), handed to h2 first.
    replay: BytesMut,
    /// The client's frames.
    incoming: FrameScanner,
    /// The proxy's frames.
    outgoing: FrameScanner,
    /// The client's stream resets still allowed.
    resets: ResetBudget,
    /// The highest stream the client opened (for our `GOAWAY`).
    last_stream: u32,
    /// Whether this connection was counted as abusive (it is, once).
    counted: bool,
    /// Set once the watcher closes the connection for a reset flood: every
    /// read and write fails from then on, which ends h2's connection.
    cut: bool,
    /// Who to count it with, and the client's address for the log.
    connections: Arc<Connections>,
    peer: Option<IpAddr>,
}

impl WatchedH2 {
    pub(super) fn new(
        inner: Stream,
        replay: BytesMut,
        max_concurrent_streams: u32,
        connections: Arc<Connections>,
        peer: Option<IpAddr>,
    ) -> WatchedH2 {
        WatchedH2 {
            inner,
            replay,
            incoming: FrameScanner::new(true),
            outgoing: FrameScanner::new(false),
            resets: ResetBudget::for_streams(max_concurrent_streams, Instant::now()),
            last_stream: 0,
            counted: false,
            cut: false,
            connections,
            peer,
        }
    }

    /// Follows bytes the client sent; `false` when it has gone past its
    /// reset budget.
    fn client_sent(&mut self, bytes: &[u8]) -> bool {
        let mut within_budget = true;
        let now = Instant::now();
        let Self {
            incoming,
            resets,
            last_stream,
            ..
        } = self;
        incoming.scan(bytes, |seen| match seen {
            Seen::Frame {
                kind: RST_STREAM, ..
            } => within_budget &= resets.spend(now),
            Seen::Frame {
                kind: HEADERS,
                stream,
            } if stream % 2 == 1 => *last_stream = (*last_stream).max(stream),
            _ => {}
        });
        within_budget
    }

    /// Follows bytes the proxy wrote; counts a `GOAWAY` with an error.
    fn proxy_sent(&mut self, bytes: &[u8]) {
        let mut complaint = None;
        self.outgoing.scan(bytes, |seen| {
            if let Seen::GoAway { error } = seen {
                if error != NO_ERROR {
                    complaint = Some(error);
                }
            }
        });
        if let Some(error) = complaint {
            self.count_abuse(&format!("sent GOAWAY {}", error_name(error)));
        }
    }

    fn count_abuse(&mut self, why: &str) {
        if !self.counted {
            self.counted = true;
            self.connections.record_h2_abuse(self.peer, why);
        }
    }

    /// Closes the connection for a reset flood: a best-effort `GOAWAY`
    /// (written only between frames, so it never splits one of h2's), then
    /// an error that ends h2's connection.
    fn close_for_resets(&mut self, cx: &mut Context<'_>) -> io::Error {
        self.count_abuse("too many stream resets");
        self.cut = true;
        if self.outgoing.between_frames() {
            let mut goaway = [0u8; FRAME_HEADER_LEN + GOAWAY_FIXED_LEN];
            goaway[2] = GOAWAY_FIXED_LEN as u8;
            goaway[3] = GOAWAY;
            goaway[9..13].copy_from_slice(&self.last_stream.to_be_bytes());
            goaway[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
            if let Poll::Ready(Ok(n)) = Pin::new(&mut self.inner).poll_write(cx, &goaway) {
                self.outgoing
                    .scan(goaway.get(..n).unwrap_or(&goaway), |_| {});
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
        }
        abuse_error()
    }
}

/// The name of an HTTP/2 error code (RFC 9113 §7), for the log.
fn error_name(code: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("error {code:#x}"), |name| name.to_string())
}

fn abuse_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "HTTP/2 connection closed for protocol abuse",
    )
}

impl AsyncRead for WatchedH2 {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(Err(abuse_error()));
        }
        let before = buf.filled().len();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(this.replay.get(..n).unwrap_or_default());
            this.replay.advance(n);
            if this.replay.is_empty() {
                // Give its memory back: the connection may live for hours.
                this.replay = BytesMut::new();
            }
        } else {
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        }
        if !this.client_sent(buf.filled().get(before..).unwrap_or_default()) {
            return Poll::Ready(Err(this.close_for_resets(cx)));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WatchedH2 {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.cut {
            return Poll::Ready(Err(abuse_error()));
        }
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.proxy_sent(buf.get(..n).unwrap_or(buf));
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.cut {
            return Poll::Ready(Err(abuse_error()));
        }
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for slice in bufs {
            if left == 0 {
                break;
            }
            let take = left.min(slice.len());
            self.proxy_sent(slice.get(..take).unwrap_or(slice));
            left -= take;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait::async_trait]
impl pingora::protocols::Peek for WatchedH2 {
    /// Pingora peeks for the h2c preface on plaintext connections: it is in
    /// the replayed bytes.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.replay.len() < buf.len() {
            return Ok(false);
        }
        buf.copy_from_slice(&self.replay[..buf.len()]);
        Ok(true)
    }
}

pass_through_connection_info!(WatchedH2);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut bytes = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn seen_in_steps(scanner: &mut FrameScanner, bytes: &[u8], step: usize) -> Vec<Seen> {
        let mut seen = Vec::new();
        for chunk in bytes.chunks(step) {
            scanner.scan(chunk, |s| seen.push(s));
        }
        seen
    }

    #[test]
    fn frames_are_followed_across_any_split_after_the_preface() {
        let mut bytes = H2_PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, &[0; 6])); // SETTINGS
        bytes.extend(frame(HEADERS, 1, b"hpack"));
        bytes.extend(frame(RST_STREAM, 1, &[0, 0, 0, 8]));
        for step in [1, 2, 7, 9, 100] {
            let seen = seen_in_steps(&mut FrameScanner::new(true), &bytes, step);
            assert_eq!(
                seen,
                vec![
                    Seen::Frame {
                        kind: 0x4,
                        stream: 0
                    },
                    Seen::Frame {
                        kind: HEADERS,
                        stream: 1
                    },
                    Seen::Frame {
                        kind: RST_STREAM,
                        stream: 1
                    },
                ],
                "by {step}"
            );
        }
    }

    #[test]
    fn a_goaway_shows_its_error_code() {
        let mut payload = 7u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        payload.extend_from_slice(b"too_many_resets");
        let bytes = frame(GOAWAY, 0, &payload);
        for step in [1, 5, 100] {
            let seen = seen_in_steps(&mut FrameScanner::new(false), &bytes, step);
            assert_eq!(
                seen.last(),
                Some(&Seen::GoAway {
                    error: ENHANCE_YOUR_CALM
                })
            );
        }
    }

    #[test]
    fn resets_are_allowed_in_bursts_and_refill_with_time() {
        let start = Instant::now();
        let mut budget = ResetBudget::for_streams(100, start);
        assert!(
            (0..200).all(|_| budget.spend(start)),
            "a burst of twice the streams"
        );
        assert!(!budget.spend(start), "then no more at once");
        let later = start + Duration::from_millis(500);
        assert!(
            (0..50).all(|_| budget.spend(later)),
            "half a second refills half"
        );
        assert!(!budget.spend(later));
    }
}
