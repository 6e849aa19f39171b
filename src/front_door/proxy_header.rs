//! The PROXY protocol header a TCP balancer writes before a connection's own
//! bytes, on a `[[listen]]` with `proxy_protocol = true`.
//!
//! A layer-4 balancer (HAProxy `mode tcp` with `send-proxy` or
//! `send-proxy-v2`, nginx `stream` with `proxy_protocol on`, cloud network
//! balancers) connects to sse-fanout itself, so the socket's peer is the
//! balancer. It says who the client is in one header at the very start of
//! the connection, before the TLS handshake on a TLS listener:
//!
//! ```text
//! v1 (text, at most 107 bytes):  PROXY TCP4 203.0.113.7 10.0.0.11 51234 443\r\n
//! v2 (binary, 16 + length):      \r\n\r\n\0\r\nQUIT\n, version/command, family, length, addresses, TLVs
//! ```
//!
//! [`read`] reads it within `[limits] header_timeout` of the accept, at most
//! [`MAX_HEADER`] bytes (the v2 header with its TLVs, which are skipped).
//! Bytes read past the header (a TLS `ClientHello`, an HTTP request) are put
//! back on the stream, so the handshake and the request read them as if the
//! header had never been there. [`claim`] then makes the header's source
//! address the connection's peer address, in the socket digest every session
//! on the connection reports (`session.client_addr()`): the access log, the
//! `X-Forwarded-For` the app and auth endpoints get, and the per-address
//! caps all see the client, with nothing else to change.
//!
//! A header that names no client leaves the socket's address: a v2 `LOCAL`
//! (the balancer's own health check), a v1 `UNKNOWN`, a v2 `UNSPEC` or
//! `UNIX` family. Anything else (no header, a malformed or oversized one)
//! closes the connection: a `proxy_protocol` listener that served
//! connections without one would let whoever reaches it directly be taken
//! for the balancer.
//!
//! The parsing is the `ppp` crate's (a parser of bytes, no I/O, widely used,
//! that tells an incomplete header from an invalid one); the reading, the
//! bounds and what a header means for the connection are here.

use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::time::Duration;

use pingora::protocols::l4::socket::SocketAddr as PingoraSocketAddr;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use ppp::{v1, v2, PartialResult};
use tokio::io::AsyncReadExt;

/// The most bytes a PROXY header may take: a v2 header of 16 bytes and up
/// to 520 of addresses and TLVs (the spec's 536-byte receive buffer). A v1
/// header is at most 107 bytes by definition.
pub const MAX_HEADER: usize = 536;

/// The longest v1 header, line end included (the spec's bound).
const V1_MAX: usize = 107;

/// The fixed part of a v2 header, before its length's worth of addresses
/// and TLVs.
const V2_FIXED: usize = 16;

/// What the start of a connection said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A header with the client's address.
    Client(SocketAddr),
    /// A header that names no client (v2 `LOCAL`, v1 `UNKNOWN`, a v2
    /// family without an IP address): the socket's address stands.
    Socket,
    /// Not a valid PROXY header: why, for the log.
    Invalid(String),
    /// The connection closed before its first byte (a balancer's TCP
    /// health check connects and closes).
    Gone,
    /// The header was not complete within the deadline.
    TimedOut,
}

/// What a prefix of the connection's bytes makes of a header.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Parsed {
    /// Could still become a valid header with more bytes.
    Incomplete,
    /// A whole header of `len` bytes, naming `client` (or no client).
    Done {
        len: usize,
        client: Option<SocketAddr>,
    },
    /// Can never become a valid header.
    Invalid(String),
}

/// Parses the PROXY header at the start of `bytes`. The version is told by
/// the first byte; a v1 header is handed to the parser only once its line
/// end is in (the parser would take a line cut after a space for a
/// malformed one), a v2 header as soon as its fixed part says its length.
fn parse(bytes: &[u8]) -> Parsed {
    match bytes.first() {
        None => Parsed::Incomplete,
        Some(b'P') => parse_v1(bytes),
        Some(b'\r') => parse_v2(bytes),
        Some(_) => Parsed::Invalid("not a PROXY header".into()),
    }
}

/// A v1 (text) header: `PROXY TCP4|TCP6|UNKNOWN ...\r\n`.
fn parse_v1(bytes: &[u8]) -> Parsed {
    let within = bytes.get(..V1_MAX.min(bytes.len())).unwrap_or_default();
    let Some(end) = within.iter().position(|&b| b == b'\n') else {
        let start = bytes.get(..v1::PROTOCOL_PREFIX.len()).unwrap_or(bytes);
        if !v1::PROTOCOL_PREFIX.as_bytes().starts_with(start) {
            return Parsed::Invalid("not a PROXY header".into());
        }
        if bytes.len() >= V1_MAX {
            return Parsed::Invalid(format!("no line end in the first {V1_MAX} bytes"));
        }
        return Parsed::Incomplete;
    };
    let line = within.get(..=end).unwrap_or_default();
    match v1::Header::try_from(line) {
        Ok(header) if header.header.len() == line.len() => Parsed::Done {
            len: line.len(),
            client: match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            },
        },
        Ok(_) => Parsed::Invalid("a PROXY header with a stray CR".into()),
        Err(e) => Parsed::Invalid(format!("not a PROXY header: {e}")),
    }
}

/// A v2 (binary) header: the signature, version and command, family,
/// length, then that many bytes of addresses and TLVs.
fn parse_v2(bytes: &[u8]) -> Parsed {
    let header = v2::Header::try_from(bytes);
    if header.is_incomplete() {
        // A v2 header says its length up front: one that cannot fit is
        // refused now rather than waited for.
        if let Err(v2::ParseError::Partial(_, length)) = header {
            if V2_FIXED + length > MAX_HEADER {
                return Parsed::Invalid(format!(
                    "a v2 header of {} bytes, over the {MAX_HEADER} accepted",
                    V2_FIXED + length
                ));
            }
        }
        return Parsed::Incomplete;
    }
    let header = match header {
        Ok(header) => header,
        Err(e) => return Parsed::Invalid(format!("not a PROXY v2 header: {e}")),
    };
    if header.len() > MAX_HEADER {
        return Parsed::Invalid(format!(
            "a v2 header of {} bytes, over the {MAX_HEADER} accepted",
            header.len()
        ));
    }
    let client = match (header.command, header.addresses) {
        (v2::Command::Local, _) => None,
        (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
            Some(SocketAddr::from((a.source_address, a.source_port)))
        }
        (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
            Some(SocketAddr::from((a.source_address, a.source_port)))
        }
        (v2::Command::Proxy, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
    };
    Parsed::Done {
        len: header.len(),
        client,
    }
}

/// Reads the PROXY header at the start of `tcp`, within `deadline`; bytes
/// read past it are put back on the stream.
pub async fn read(tcp: &mut TcpStream, deadline: Duration) -> ProxyHeader {
    // On the heap: a connection's future should not carry this buffer for
    // its whole life.
    let mut buf = vec![0u8; MAX_HEADER];
    let reading = async {
        let mut filled = 0;
        loop {
            let Some(free) = buf.get_mut(filled..).filter(|free| !free.is_empty()) else {
                return ProxyHeader::Invalid(format!(
                    "no whole PROXY header in the first {MAX_HEADER} bytes"
                ));
            };
            let n = match tcp.read(free).await {
                Ok(0) if filled == 0 => return ProxyHeader::Gone,
                Ok(0) => {
                    return ProxyHeader::Invalid(format!(
                        "the connection closed {filled} bytes into its PROXY header"
                    ))
                }
                Ok(n) => n,
                Err(_) if filled == 0 => return ProxyHeader::Gone,
                Err(e) => return ProxyHeader::Invalid(format!("reading the PROXY header: {e}")),
            };
            filled += n;
            let read = buf.get(..filled).unwrap_or_default();
            match parse(read) {
                Parsed::Incomplete => continue,
                Parsed::Invalid(why) => return ProxyHeader::Invalid(why),
                Parsed::Done { len, client } => {
                    tcp.rewind(read.get(len..).unwrap_or_default());
                    return match client {
                        Some(client) => ProxyHeader::Client(client),
                        None => ProxyHeader::Socket,
                    };
                }
            }
        }
    };
    match tokio::time::timeout(deadline, reading).await {
        Ok(header) => header,
        Err(_) => ProxyHeader::TimedOut,
    }
}

/// Makes `client` the connection's peer address: every session on `tcp`
/// (through TLS and the front door's wrappers, which ask the stream they
/// wrap) reports it as `client_addr()`. The local address stays the
/// socket's, so the connection keeps its listener.
pub fn claim(tcp: &mut TcpStream, client: SocketAddr) {
    let local = tcp
        .get_socket_digest()
        .and_then(|digest| digest.local_addr().cloned());
    let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
    // Fresh cells: neither is set yet, so neither `set` can fail.
    let _ = digest.peer_addr.set(Some(PingoraSocketAddr::Inet(client)));
    if let Some(local) = local {
        let _ = digest.local_addr.set(Some(local));
    }
    tcp.set_socket_digest(digest);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The v2 signature.
    const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut header = SIG.to_vec();
        header.push(0x20 | command);
        header.push(family);
        header.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        header.extend_from_slice(payload);
        header
    }

    fn v2_ipv4(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut payload = src.to_vec();
        payload.extend_from_slice(&[10, 0, 0, 11]);
        payload.extend_from_slice(&port.to_be_bytes());
        payload.extend_from_slice(&443u16.to_be_bytes());
        v2(0x1, 0x11, &payload)
    }

    fn done(len: usize, client: &str) -> Parsed {
        Parsed::Done {
            len,
            client: Some(client.parse().unwrap()),
        }
    }

    #[test]
    fn v1_tcp4_and_tcp6_name_the_client_and_end_at_the_crlf() {
        let header = b"PROXY TCP4 203.0.113.7 10.0.0.11 51234 443\r\n";
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(parse(&bytes), done(header.len(), "203.0.113.7:51234"));
        let header = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n";
        assert_eq!(parse(header), done(header.len(), "[2001:db8::7]:51234"));
    }

    #[test]
    fn v1_unknown_leaves_the_socket_address() {
        let header = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
        assert_eq!(
            parse(header),
            Parsed::Done {
                len: header.len(),
                client: None
            }
        );
        assert!(matches!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Done { client: None, .. }
        ));
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.11 51234 443\r\n";
        for end in 0..v1.len() {
            assert_eq!(parse(&v1[..end]), Parsed::Incomplete, "v1 cut at {end}");
        }
        let v2 = v2_ipv4([203, 0, 113, 7], 51234);
        for end in 0..v2.len() {
            assert_eq!(parse(&v2[..end]), Parsed::Incomplete, "v2 cut at {end}");
        }
    }

    #[test]
    fn garbage_and_plain_requests_are_invalid() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PROXY TCP4 203.0.113.7 10.0.0.11 51234 443\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.11 51234 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.11 99999 443\r\n",
            b"PROXY TCP5 203.0.113.7 10.0.0.11 1 443\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x0c",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Invalid(_)),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_v1_header_longer_than_107_bytes_is_invalid() {
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(120, b'1');
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
    }

    #[test]
    fn v2_proxy_names_the_client_and_tlvs_are_skipped() {
        let header = v2_ipv4([203, 0, 113, 7], 51234);
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(parse(&bytes), done(header.len(), "203.0.113.7:51234"));

        let mut payload = [0x20, 0x01, 0x0d, 0xb8].to_vec();
        payload.extend_from_slice(&[0; 11]);
        payload.push(7);
        payload.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        payload.extend_from_slice(&[0; 11]);
        payload.push(1);
        payload.extend_from_slice(&51234u16.to_be_bytes());
        payload.extend_from_slice(&443u16.to_be_bytes());
        // TLVs: ALPN "h2", a unique id.
        payload.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        payload.extend_from_slice(&[0x05, 0x00, 0x03, 1, 2, 3]);
        let header = v2(0x1, 0x21, &payload);
        assert_eq!(parse(&header), done(header.len(), "[2001:db8::7]:51234"));
    }

    #[test]
    fn v2_local_and_unspecified_leave_the_socket_address() {
        let local = v2(0x0, 0x00, &[]);
        assert_eq!(
            parse(&local),
            Parsed::Done {
                len: 16,
                client: None
            }
        );
        // LOCAL with addresses (HAProxy may send them): still no client.
        let mut local_ipv4 = v2_ipv4([203, 0, 113, 7], 1);
        local_ipv4[12] = 0x20;
        assert!(matches!(
            parse(&local_ipv4),
            Parsed::Done { client: None, .. }
        ));
        let unspecified = v2(0x1, 0x00, &[]);
        assert!(matches!(
            parse(&unspecified),
            Parsed::Done { client: None, .. }
        ));
    }

    #[test]
    fn a_v2_header_longer_than_the_bound_is_refused_before_it_is_read() {
        let mut start = SIG.to_vec();
        start.extend_from_slice(&[0x21, 0x11]);
        start.extend_from_slice(&((MAX_HEADER - V2_FIXED + 1) as u16).to_be_bytes());
        assert!(matches!(parse(&start), Parsed::Invalid(_)));
        start.truncate(14);
        start.extend_from_slice(&((MAX_HEADER - V2_FIXED) as u16).to_be_bytes());
        assert_eq!(parse(&start), Parsed::Incomplete, "at the bound: wait");
    }

    #[test]
    fn v2_with_a_bad_version_command_or_short_addresses_is_invalid() {
        let mut version1 = v2_ipv4([1, 2, 3, 4], 1);
        version1[12] = 0x11;
        assert!(matches!(parse(&version1), Parsed::Invalid(_)));
        let mut command = v2_ipv4([1, 2, 3, 4], 1);
        command[12] = 0x2f;
        assert!(matches!(parse(&command), Parsed::Invalid(_)));
        let short = v2(0x1, 0x11, &[1, 2, 3, 4]);
        assert!(matches!(parse(&short), Parsed::Invalid(_)));
    }
}
