//! HTTP/1.1 pipelining: requests a client sends before it has its answers
//! are answered, in order.
//!
//! The front door reads each request head itself (to route it), and a read
//! may bring more than one request: `GET /a ...\r\n\r\nGET /b ...\r\n\r\n`
//! in one write. Pingora, given all of that, would take the second request
//! for bytes sent after the end of the first and drop the connection
//! without an answer to it (and if the second request arrives while the
//! first is being answered, Pingora calls it an error and drops both).
//!
//! So Pingora is given one request at a time: its head, and a stream
//! ([`OneRequest`]) that ends where that request ends, as Pingora itself
//! frames it (its `Content-Length`, or no body). What the client sends after
//! it is kept, bounded by `max_header_bytes`, and becomes the start of the
//! next request, read when Pingora hands the connection back. The end of a
//! request is found with Pingora's own parser, so the two never disagree
//! about where a body ends: most requests have no body and no framing
//! header at all, and for them httparse (the parser Pingora calls, called
//! as it calls it) is enough ([`bodiless`]); any other head is parsed by a
//! Pingora session ([`extent_of`]).
//!
//! Two kinds of request have no end the front door can hold Pingora to: an
//! upgrade (`Upgrade:`, `CONNECT`), whose connection becomes a tunnel, and a
//! body in chunks (`Transfer-Encoding`). Their stream is not bounded; a
//! chunked request's answer says `Connection: close`, so a client never
//! waits for an answer to a request pipelined behind it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use http::header::{HeaderName, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING, UPGRADE};
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::common::is_upgrade_req;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::io::pass_through_connection_info;

/// How many bytes of the next request one read past the end of this one
/// takes at most.
const NEXT_READ: usize = 4096;

/// Where a request ends, as Pingora frames it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Extent {
    /// After its head and this many body bytes.
    Length(u64),
    /// Nowhere known: an upgrade or `CONNECT` (the connection becomes a
    /// tunnel), or a request Pingora will refuse.
    Open,
    /// After a body in chunks: unbounded, and the connection closes after it.
    Chunked,
}

/// As many header lines as Pingora's parser takes (more, and it refuses the
/// head).
const MAX_HEADERS: usize = 256;

/// A request head that ends with itself: httparse reads it whole and it has
/// none of what frames a body or turns the connection into something else
/// (`Content-Length`, `Transfer-Encoding`, `Upgrade`, `CONNECT`). What the
/// front door needs to know of such a request, read without building a
/// Pingora session for it.
#[derive(Debug)]
pub(super) struct Bodiless<'a> {
    pub method: &'a str,
    /// The request target as sent (origin form starts with `/`).
    pub target: &'a str,
    /// HTTP/1.1 (else 1.0).
    pub http11: bool,
    /// How many `Host` lines it has.
    pub hosts: usize,
    /// Whether it has an `Expect` line.
    pub expect: bool,
}

/// `head` as a [`Bodiless`] request, or `None` when Pingora's session must
/// parse it ([`extent_of`]): a head httparse refuses as it stands (Pingora
/// may repair its target and take it), a head with a body or an upgrade.
/// Where both read a head, they read it alike: Pingora frames a request
/// without `Content-Length` and `Transfer-Encoding` as ending with its head
/// (RFC 9112 §6.3), and a head httparse takes but Pingora's session refuses
/// is refused on the connection itself.
pub(super) fn bodiless(head: &[u8]) -> Option<Bodiless<'_>> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut lines);
    if !request.parse(head).ok()?.is_complete() {
        return None;
    }
    let (method, target, version) = (request.method?, request.path?, request.version?);
    let (mut hosts, mut expect) = (0, false);
    for line in request.headers.iter() {
        let is = |name: &HeaderName| line.name.eq_ignore_ascii_case(name.as_str());
        if is(&CONTENT_LENGTH) || is(&TRANSFER_ENCODING) || is(&UPGRADE) {
            return None;
        }
        hosts += usize::from(is(&HOST));
        expect |= is(&EXPECT);
    }
    (method != "CONNECT").then_some(Bodiless {
        method,
        target,
        http11: version == 1,
        hosts,
        expect,
    })
}

/// Where the request whose head is `head` ends, parsed by a Pingora session
/// as the connection's own will parse it.
pub(super) async fn extent_of(head: &[u8]) -> Extent {
    let mut session = ServerSession::new_http1(Box::new(std::io::Cursor::new(head.to_vec())));
    match session.read_request().await {
        Ok(true) => extent_of_header(session.req_header()),
        // Pingora refuses it on the real connection too (and closes it).
        _ => Extent::Open,
    }
}

fn extent_of_header(request: &RequestHeader) -> Extent {
    if request.method == http::Method::CONNECT || is_upgrade_req(request) {
        return Extent::Open;
    }
    if request.headers.contains_key(TRANSFER_ENCODING) {
        return Extent::Chunked;
    }
    // As Pingora reconciles Content-Length (RFC 9110 §8.6): every value,
    // comma-separated or repeated, must be the same number.
    let mut length = None;
    for value in request.headers.get_all(CONTENT_LENGTH) {
        let Ok(value) = value.to_str() else {
            return Extent::Open;
        };
        for part in value.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Extent::Open;
            }
            match (length, part.parse::<u64>()) {
                (_, Err(_)) => return Extent::Open,
                (None, Ok(n)) => length = Some(n),
                (Some(previous), Ok(n)) if previous != n => return Extent::Open,
                (Some(_), Ok(_)) => {}
            }
        }
    }
    Extent::Length(length.unwrap_or(0))
}

/// A connection as Pingora sees it while it serves one HTTP/1.1 request:
/// reading ends where the request ends; later bytes are kept for the next.
#[derive(Debug)]
pub(super) struct OneRequest {
    inner: Stream,
    /// Body bytes of this request not read yet; `None`: unbounded.
    body_left: Option<u64>,
    /// What the client sent after this request: the next one's start.
    next: BytesMut,
    /// The most `next` holds; past it the client is not read until then.
    next_limit: usize,
    /// The client closed its side after `next`.
    closed: bool,
}

impl OneRequest {
    /// Splits what was read of a connection (`read`: a head of `head_len`
    /// bytes, then whatever followed it) into the bytes Pingora gets first
    /// (the head and the start of its body) and the stream it reads the rest
    /// from.
    pub(super) fn split(
        inner: Stream,
        mut read: BytesMut,
        head_len: usize,
        extent: Extent,
        next_limit: usize,
    ) -> (BytesMut, OneRequest) {
        let (body_left, next) = match extent {
            Extent::Length(body) => {
                let available = (read.len() - head_len) as u64;
                let taken = body.min(available);
                // `taken` is at most what was read, so it fits in usize.
                let next = read.split_off(head_len + taken as usize);
                (Some(body - taken), next)
            }
            Extent::Open | Extent::Chunked => (None, BytesMut::new()),
        };
        let stream = OneRequest {
            inner,
            body_left,
            next,
            next_limit,
            closed: false,
        };
        (read, stream)
    }

    /// The connection, what the client sent after this request, and whether
    /// it closed its side after that.
    pub(super) fn into_parts(self) -> (Stream, BytesMut, bool) {
        (self.inner, self.next, self.closed)
    }

    /// After this request: reads what the client sends into `next` (so its
    /// closing is noticed), and tells Pingora nothing but a close.
    fn poll_after_request(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.closed || self.next.len() >= self.next_limit {
                // Nothing more for this request, ever: the caller's other
                // work (the answer) goes on.
                return Poll::Pending;
            }
            let mut scratch = [0u8; NEXT_READ];
            let room = NEXT_READ.min(self.next_limit - self.next.len());
            let Some(room) = scratch.get_mut(..room) else {
                return Poll::Pending;
            };
            let mut read = ReadBuf::new(room);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                if self.next.is_empty() {
                    // The client closed with nothing pending: Pingora may
                    // stop answering.
                    return Poll::Ready(Ok(()));
                }
                self.closed = true;
            }
            self.next.extend_from_slice(read.filled());
        }
    }
}

impl AsyncRead for OneRequest {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.body_left {
            None => Pin::new(&mut this.inner).poll_read(cx, buf),
            Some(0) => this.poll_after_request(cx),
            Some(left) => {
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let got = (buf.filled().len() - before) as u64;
                if got > left {
                    // The rest is the next request's: keep it for then.
                    let end = before + left as usize;
                    this.next
                        .extend_from_slice(buf.filled().get(end..).unwrap_or_default());
                    buf.set_filled(end);
                    this.body_left = Some(0);
                } else {
                    this.body_left = Some(left - got);
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for OneRequest {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

/// Peeking is for telling protocols apart, long done by now.
impl pingora::protocols::Peek for OneRequest {}

pass_through_connection_info!(OneRequest);

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(head: &str) -> Extent {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(extent_of(head.as_bytes()))
    }

    #[test]
    fn a_request_without_a_body_ends_with_its_head() {
        assert_eq!(
            extent("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Extent::Length(0)
        );
    }

    #[test]
    fn content_length_frames_the_body_as_pingora_reconciles_it() {
        assert_eq!(
            extent("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n"),
            Extent::Length(12)
        );
        assert_eq!(
            extent(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n"
            ),
            Extent::Length(5)
        );
        assert_eq!(
            extent("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Extent::Open,
            "Pingora refuses it"
        );
    }

    #[test]
    fn chunked_bodies_and_upgrades_have_no_known_end() {
        assert_eq!(
            extent("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            Extent::Chunked
        );
        assert_eq!(
            extent(
                "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            ),
            Extent::Open
        );
    }

    #[test]
    fn a_head_without_framing_headers_is_bodiless_as_pingora_frames_it() {
        let head = "GET /a?b HTTP/1.1\r\nhost: x\r\nExpect: 100-continue\r\n\r\n";
        let request = bodiless(head.as_bytes()).expect("bodiless");
        assert_eq!((request.method, request.target), ("GET", "/a?b"));
        assert!(request.http11 && request.expect);
        assert_eq!(request.hosts, 1);
        assert_eq!(extent(head), Extent::Length(0), "Pingora agrees");
        let head = "DELETE /a HTTP/1.0\nHost: x\nHOST: y\n\n";
        let request = bodiless(head.as_bytes()).expect("bodiless");
        assert!(!request.http11);
        assert_eq!(request.hosts, 2);
    }

    #[test]
    fn heads_with_a_body_an_upgrade_or_that_httparse_refuses_go_to_pingoras_parse() {
        for head in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\ncontent-length: 3\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            // A space in the target: Pingora escapes it and takes the head.
            "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n",
        ] {
            assert!(bodiless(head.as_bytes()).is_none(), "{head:?}");
        }
        assert_eq!(
            extent("GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"),
            Extent::Length(0)
        );
    }

    #[test]
    fn what_follows_a_request_is_kept_for_the_next() {
        let read = BytesMut::from(
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n"[..],
        );
        let head_len = 38;
        let inner: Stream = Box::new(std::io::Cursor::new(Vec::new()));
        let (first, stream) = OneRequest::split(inner, read, head_len, Extent::Length(3), 1024);
        assert_eq!(&first[head_len..], b"abc");
        let (_, next, closed) = stream.into_parts();
        assert_eq!(&next[..], b"GET / HTTP/1.1\r\n\r\n");
        assert!(!closed);
    }
}
