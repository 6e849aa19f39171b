//! Which listener a connection came in on, and the TLS handshake of the
//! TLS ones.
//!
//! Pingora's listeners all accept plain TCP for the front door; the front
//! door terminates TLS itself, with Pingora's acceptor (rustls, the same
//! settings), so that the handshake has the deadline the config gives it
//! (`[limits] tls_handshake_timeout`; Pingora's own is a fixed minute) and
//! so that a connection refused by a cap costs no handshake. A connection's
//! listener is found by its local address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::{Peek, Ssl, Stream, ALPN};

use crate::acme::{Challenges, ACME_TLS_ALPN};

/// How connections on one listener begin.
pub enum Transport {
    /// Plaintext: HTTP/1.1, or HTTP/2 with prior knowledge (h2c).
    Plain,
    /// A TLS handshake with this acceptor first.
    Tls(Arc<Acceptor>),
}

/// The listeners, by address.
pub struct Listeners {
    /// Each `[[listen]]` address and how its connections begin.
    entries: Vec<(SocketAddr, Transport)>,
    /// The ACME `http-01` answers, when a listener's certificate is proved
    /// that way: given on any HTTP/1.1 connection, before routing.
    http01: Option<Arc<Challenges>>,
}

/// How a TLS handshake ended.
pub(super) enum Handshake {
    /// The TLS stream, its ALPN chosen.
    Done(Stream),
    /// Not finished within the deadline.
    TimedOut,
    /// The client broke it off or spoke no acceptable TLS.
    Failed(String),
    /// The client closed before its first byte: a balancer's TCP check,
    /// not a failed handshake.
    Gone,
    /// An ACME CA's `tls-alpn-01` validation: the handshake (with the
    /// challenge certificate) was the whole answer; the connection closes.
    AcmeValidation,
}

/// Whether the handshake chose ALPN `acme-tls/1`, which only a CA's
/// validation offers (RFC 8737: nothing is sent after the handshake).
fn is_acme_validation(tls: &impl Ssl) -> bool {
    matches!(
        tls.selected_alpn_proto(),
        Some(ALPN::Custom(custom)) if custom.protocol() == ACME_TLS_ALPN
    )
}

impl Listeners {
    pub fn new(entries: Vec<(SocketAddr, Transport)>) -> Listeners {
        Listeners {
            entries,
            http01: None,
        }
    }

    /// Answers ACME `http-01` validation requests from `challenges`.
    pub fn with_http01(mut self, challenges: Arc<Challenges>) -> Listeners {
        self.http01 = Some(challenges);
        self
    }

    /// The answer to an ACME `http-01` validation request, if `head` is one
    /// an order waits for.
    pub(super) async fn http01_answer(&self, head: &[u8]) -> Option<Vec<u8>> {
        let challenges = self.http01.as_ref()?;
        let (method, target) = super::head::request_line(head)?;
        challenges.http01_answer(method, target).await
    }

    /// The transport of the listener that accepted a connection on `local`
    /// (see [`listener_at`]).
    pub(super) fn transport(&self, local: SocketAddr) -> Option<&Transport> {
        listener_at(&self.entries, local)
    }
}

/// What `entries` (one per `[[listen]]` address) say about the listener that
/// accepted a connection on `local`: the listener with that exact address,
/// else one on that port bound to an unspecified address (`0.0.0.0`, `[::]`).
/// An IPv4 client of a dual-stack `[::]` listener has a mapped local address
/// (`::ffff:10.1.2.3`), which matches the IPv4 listener it stands for.
pub fn listener_at<T>(entries: &[(SocketAddr, T)], local: SocketAddr) -> Option<&T> {
    let local_ip = local.ip().to_canonical();
    let same_port = || {
        entries
            .iter()
            .filter(move |(addr, _)| addr.port() == local.port())
    };
    same_port()
        .find(|(addr, _)| addr.ip() == local_ip || addr.ip() == local.ip())
        .or_else(|| same_port().find(|(addr, _)| addr.ip().is_unspecified()))
        .map(|(_, value)| value)
}

/// Runs the TLS handshake on an accepted connection, within `deadline`.
pub(super) async fn handshake(
    acceptor: &Acceptor,
    stream: Stream,
    deadline: Duration,
) -> Handshake {
    // Pingora's listeners hand over their TCP stream boxed; the acceptor
    // needs it as itself.
    let mut tcp = match stream.into_any().downcast::<TcpStream>() {
        Ok(tcp) => tcp,
        Err(_) => return Handshake::Failed("not a TCP connection".into()),
    };
    let handshake = async {
        // The first byte, put back for the handshake: a connection closed
        // before it sent one is a TCP check, not a failed handshake.
        match tcp.try_peek(&mut [0u8; 1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Handshake::Gone,
            Err(e) => return Handshake::Failed(e.to_string()),
        }
        match acceptor.tls_handshake(*tcp).await {
            Err(e) => Handshake::Failed(e.to_string()),
            Ok(tls) if is_acme_validation(&tls) => Handshake::AcmeValidation,
            Ok(tls) => Handshake::Done(Box::new(tls)),
        }
    };
    tokio::time::timeout(deadline, handshake)
        .await
        .unwrap_or(Handshake::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listeners() -> Listeners {
        Listeners::new(vec![
            ("127.0.0.1:8443".parse().unwrap(), Transport::Plain),
            ("0.0.0.0:8080".parse().unwrap(), Transport::Plain),
            ("[::]:9000".parse().unwrap(), Transport::Plain),
        ])
    }

    #[test]
    fn a_connection_finds_its_listener_by_exact_or_unspecified_address() {
        let listeners = listeners();
        assert!(listeners
            .transport("127.0.0.1:8443".parse().unwrap())
            .is_some());
        assert!(listeners
            .transport("10.1.2.3:8080".parse().unwrap())
            .is_some());
        assert!(listeners
            .transport("[::ffff:10.1.2.3]:9000".parse().unwrap())
            .is_some());
        assert!(listeners
            .transport("10.1.2.3:8443".parse().unwrap())
            .is_none());
        assert!(listeners
            .transport("127.0.0.1:1".parse().unwrap())
            .is_none());
    }
}
