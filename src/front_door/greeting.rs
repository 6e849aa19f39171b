//! A connection's first bytes: which protocol it speaks, within deadlines.
//!
//! A TLS connection has said it in ALPN (`h2` or `http/1.1`). A plaintext
//! one says it with its first bytes: HTTP/2 with prior knowledge (h2c)
//! starts with the 24-byte preface `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`,
//! anything else is HTTP/1.x. The decision is taken on the first byte that
//! differs from the preface, so a request shorter than the preface
//! (`GET / HTTP/1.0\r\n\r\n`, a load balancer's health check) is answered,
//! not kept waiting for bytes that never come.
//!
//! Every wait has a deadline: the first byte may take `idle_timeout` (the
//! connection is idle until then), the rest of a preface `header_timeout`,
//! as the rest of an HTTP/1.1 head does. The bytes read are kept and handed
//! on, so nothing is read twice or lost.

use bytes::BytesMut;
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// What a client sends first on an HTTP/2 connection (RFC 9113 §3.4).
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Room for a typical first read: a request head, or a preface and SETTINGS.
const FIRST_READ_CAPACITY: usize = 1024;

/// What a connection may speak, as far as is known before its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    /// HTTP/2 only: TLS with ALPN `h2`.
    Http2,
    /// HTTP/1.x only: TLS with ALPN `http/1.1` or none, or plaintext without h2c.
    Http1,
    /// Plaintext with h2c allowed: the first bytes tell.
    Either,
}

/// How the first bytes of a connection were taken.
#[derive(Debug)]
pub(super) enum Greeting {
    /// HTTP/2: `read` holds the client's preface and whatever followed it.
    Http2 { read: BytesMut },
    /// HTTP/1.x: `read` holds the first bytes of its first request, whose
    /// head must be complete by `deadline`.
    Http1 { read: BytesMut, deadline: Instant },
    /// Nothing was said within the idle timeout, or the client closed.
    Silent,
    /// The preface did not arrive within the header timeout.
    TimedOut,
    /// A connection that had to speak HTTP/2 sent something else.
    NotHttp2,
}

/// What the bytes read so far decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Http1,
    Http2,
    NotHttp2,
    /// A prefix of the preface so far: more bytes decide.
    Undecided,
}

fn decide(read: &[u8], expect: Expect) -> Decision {
    let common = read.len().min(H2_PREFACE.len());
    let prefix_matches = read.get(..common) == H2_PREFACE.get(..common);
    match expect {
        Expect::Http1 => Decision::Http1,
        Expect::Either if !prefix_matches => Decision::Http1,
        Expect::Http2 if !prefix_matches => Decision::NotHttp2,
        Expect::Either | Expect::Http2 if read.len() >= H2_PREFACE.len() => Decision::Http2,
        Expect::Either | Expect::Http2 => Decision::Undecided,
    }
}

/// Waits up to `idle_timeout` for a connection's (or a kept-alive
/// connection's next request's) first bytes, appending them to `read`.
/// `false` when none came, or the client closed.
pub(super) async fn first_bytes(
    stream: &mut Stream,
    read: &mut BytesMut,
    idle_timeout: std::time::Duration,
) -> bool {
    read.reserve(FIRST_READ_CAPACITY);
    matches!(
        tokio::time::timeout(idle_timeout, stream.read_buf(read)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// Reads a connection's first bytes until they tell its protocol.
pub(super) async fn read_greeting(
    stream: &mut Stream,
    expect: Expect,
    idle_timeout: std::time::Duration,
    header_timeout: std::time::Duration,
) -> Greeting {
    let mut read = BytesMut::with_capacity(FIRST_READ_CAPACITY);
    if !first_bytes(stream, &mut read, idle_timeout).await {
        return Greeting::Silent;
    }
    let deadline = Instant::now() + header_timeout;
    loop {
        match decide(&read, expect) {
            Decision::Http1 => return Greeting::Http1 { read, deadline },
            Decision::Http2 => return Greeting::Http2 { read },
            Decision::NotHttp2 => return Greeting::NotHttp2,
            Decision::Undecided => {}
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut read)).await {
            Err(_) => return Greeting::TimedOut,
            Ok(Ok(0) | Err(_)) => return Greeting::Silent,
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plaintext_request_is_http1_from_its_first_differing_byte() {
        assert_eq!(decide(b"G", Expect::Either), Decision::Http1);
        assert_eq!(
            decide(b"OPTIONS / HTTP/1.0\r\n\r\n", Expect::Either),
            Decision::Http1
        );
        assert_eq!(decide(b"P", Expect::Either), Decision::Undecided);
        assert_eq!(decide(b"PO", Expect::Either), Decision::Http1);
        assert_eq!(decide(b"PRI * HTTP/1.1", Expect::Either), Decision::Http1);
    }

    #[test]
    fn the_whole_preface_is_http2() {
        assert_eq!(
            decide(&H2_PREFACE[..23], Expect::Either),
            Decision::Undecided
        );
        assert_eq!(decide(H2_PREFACE, Expect::Either), Decision::Http2);
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        assert_eq!(decide(&more, Expect::Either), Decision::Http2);
    }

    #[test]
    fn an_alpn_h2_connection_must_send_the_preface() {
        assert_eq!(decide(b"PRI * ", Expect::Http2), Decision::Undecided);
        assert_eq!(decide(H2_PREFACE, Expect::Http2), Decision::Http2);
        assert_eq!(
            decide(b"GET / HTTP/1.1\r\n", Expect::Http2),
            Decision::NotHttp2
        );
    }

    #[test]
    fn an_http1_connection_needs_no_look() {
        assert_eq!(decide(b"P", Expect::Http1), Decision::Http1);
    }
}
