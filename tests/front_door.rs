//! The front door: HTTPS with ALPN, h2c, and the reverse proxy to the app,
//! over real sockets on 127.0.0.1 against the real `sse-fanout` binary.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use common::app::{pattern_byte, App, GREETING};
use common::client::{body_bytes, Client, Protocol};
use common::{free_port, Proxy, PATIENCE};

/// Bodies this size cross several HTTP/2 windows and TLS records.
const LARGE_BODY: usize = 1024 * 1024 + 12_345;

#[tokio::test]
async fn tls_client_offering_h2_gets_http2_and_the_app_response() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut client = Client::tls(proxy.tls_addr, &proxy.certs, &["h2", "http/1.1"]).await;
    assert_eq!(client.protocol, Protocol::Http2);
    let response = client.get("/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(body_bytes(response).await, GREETING);
}

#[tokio::test]
async fn tls_client_asking_for_http1_gets_http1_and_the_app_response() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut client = Client::tls(proxy.tls_addr, &proxy.certs, &["http/1.1"]).await;
    assert_eq!(client.protocol, Protocol::Http1);
    let response = client.get("/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert_eq!(body_bytes(response).await, GREETING);
}

#[tokio::test]
async fn plaintext_listener_serves_h2c_with_prior_knowledge_and_http1() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut h2c = Client::h2c(proxy.plain_addr).await;
    let response = h2c.get("/").await;
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(body_bytes(response).await, GREETING);
    let mut h1 = Client::h1(proxy.plain_addr).await;
    let response = h1.get("/").await;
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert_eq!(body_bytes(response).await, GREETING);
}

#[tokio::test]
async fn large_post_body_is_proxied_intact_both_ways_over_h2() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut client = Client::tls(proxy.tls_addr, &proxy.certs, &["h2"]).await;
    let sent: Vec<u8> = (0..LARGE_BODY).map(|i| (i * 7 % 251) as u8).collect();
    let request = client
        .request("POST", "/echo")
        .body(Full::new(Bytes::from(sent.clone())))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let received = body_bytes(response).await;
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "echoed body differs from the one sent");
}

#[tokio::test]
async fn large_post_body_is_proxied_intact_both_ways_over_http1() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut client = Client::tls(proxy.tls_addr, &proxy.certs, &["http/1.1"]).await;
    let sent: Vec<u8> = (0..LARGE_BODY).map(|i| (i * 13 % 251) as u8).collect();
    let request = client
        .request("POST", "/echo")
        .body(Full::new(Bytes::from(sent.clone())))
        .unwrap();
    let received = body_bytes(client.send(request).await.unwrap()).await;
    assert!(received == sent, "echoed body differs from the one sent");
}

#[tokio::test]
async fn large_get_response_arrives_intact() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut client = Client::tls(proxy.tls_addr, &proxy.certs, &["h2"]).await;
    let body = body_bytes(client.get(&format!("/big?bytes={LARGE_BODY}")).await).await;
    assert_eq!(body.len(), LARGE_BODY);
    assert!(body.iter().enumerate().all(|(i, b)| *b == pattern_byte(i)));
}

#[tokio::test]
async fn streamed_response_reaches_the_client_before_the_app_finishes() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    for (round, alpn) in ["h2", "http/1.1"].into_iter().enumerate() {
        let mut client = Client::tls(proxy.tls_addr, &proxy.certs, &[alpn]).await;
        let mut body = client.get("/slow").await.into_body();
        let first = timeout(PATIENCE, body.frame())
            .await
            .expect("first chunk arrives while the app still holds the response")
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "first\n");
        assert_eq!(
            app.state.slow_finished.load(Ordering::SeqCst),
            round,
            "app already finished"
        );
        app.state.release();
        let rest = timeout(PATIENCE, body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(rest, "second\n");
    }
}

#[tokio::test]
async fn hop_by_hop_headers_from_the_app_never_reach_an_http2_client() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut client = Client::tls(proxy.tls_addr, &proxy.certs, &["h2"]).await;
    // hyper's HTTP/2 client refuses a response carrying connection-specific
    // headers, so reaching the assertions already shows they were removed.
    let response = client.get("/hop").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "x-private-hop",
    ] {
        assert!(headers.get(name).is_none(), "{name} reached the client");
    }
    assert_eq!(headers.get("x-end-to-end").unwrap(), "kept");
}

#[tokio::test]
async fn hop_by_hop_headers_from_the_app_never_reach_an_http1_client() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut client = Client::h1(proxy.plain_addr).await;
    let response = client.get("/hop").await;
    let headers = response.headers();
    for name in ["keep-alive", "proxy-connection", "x-private-hop"] {
        assert!(headers.get(name).is_none(), "{name} reached the client");
    }
    assert_ne!(
        headers
            .get("connection")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("x-private-hop".to_string())
    );
    assert_eq!(headers.get("x-end-to-end").unwrap(), "kept");
    assert_eq!(response.version(), http::Version::HTTP_11);
}

/// The request headers the app saw, as `name: value` lines.
async fn headers_seen_by_app(client: &mut Client) -> String {
    let body = body_bytes(client.get("/headers").await).await;
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn app_sees_forwarded_headers_and_the_original_host_over_h2() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut client = Client::tls(proxy.tls_addr, &proxy.certs, &["h2"]).await;
    let seen = headers_seen_by_app(&mut client).await;
    let host = format!("localhost:{}", proxy.tls_addr.port());
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: https\n"), "{seen}");
    assert!(
        seen.contains(&format!("x-forwarded-host: {host}\n")),
        "{seen}"
    );
    assert!(seen.contains(&format!("host: {host}\n")), "{seen}");
}

#[tokio::test]
async fn forwarded_for_is_the_socket_address_not_the_clients_own_list_over_plain_http1() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut client = Client::h1(proxy.plain_addr).await;
    let request = client
        .request("GET", "/headers")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::default())
        .unwrap();
    let body = body_bytes(client.send(request).await.unwrap()).await;
    let seen = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        seen.contains("x-forwarded-for: 127.0.0.1\n") && !seen.contains("203.0.113.9"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(
        seen.contains(&format!("host: {}\n", proxy.plain_addr)),
        "{seen}"
    );
}

#[tokio::test]
async fn app_down_gets_502_and_the_next_request_after_it_returns_succeeds() {
    let app_addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = Proxy::start(app_addr, "");
    let mut client = Client::tls(proxy.tls_addr, &proxy.certs, &["h2"]).await;
    let response = client.get("/").await;
    assert_eq!(response.status(), 502);
    let body = body_bytes(response).await;
    assert!(
        String::from_utf8_lossy(&body).contains("not reachable"),
        "{body:?}"
    );

    let _app = App::start_on(app_addr).await;
    let response = client.get("/").await;
    assert_eq!(response.status(), 200, "same connection, app back");
    assert_eq!(body_bytes(response).await, GREETING);
    assert!(
        proxy.log().contains("unreachable"),
        "the 502 was not logged"
    );
}

#[tokio::test]
async fn websocket_upgrade_passes_through_to_the_app() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut stream = TcpStream::connect(proxy.plain_addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        proxy.plain_addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = timeout(PATIENCE, stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "connection closed before the 101 ended");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    stream.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = vec![0u8; b"ping through the tunnel".len()];
    timeout(PATIENCE, stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, b"ping through the tunnel");
}

#[tokio::test]
async fn access_log_has_one_line_per_request_with_protocol_and_status() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut client = Client::tls(proxy.tls_addr, &proxy.certs, &["h2"]).await;
    body_bytes(client.get("/?probe=access-log").await).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let log = proxy.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("/?probe=access-log"))
            .collect();
        if let [line] = lines[..] {
            assert!(
                line.contains("\"GET /?probe=access-log HTTP/2\" 200"),
                "{line}"
            );
            assert!(line.contains(&format!("{}B", GREETING.len())), "{line}");
            break;
        }
        assert!(lines.len() < 2, "more than one access line: {lines:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no access-log line in:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- HTTP/1.1 on the wire --------------------------------------------------------

/// One HTTP/1.1 response read off a raw connection.
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 response (framed by `Content-Length` or chunks) from
/// `stream`, keeping bytes past its end in `pending` for the next one.
async fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> RawResponse {
    async fn more(stream: &mut TcpStream, pending: &mut Vec<u8>) {
        let mut chunk = [0u8; 4096];
        let n = timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("the answer stalled")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-answer: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    }
    let head_end = loop {
        if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        more(stream, pending).await;
    };
    let head = String::from_utf8(pending.drain(..head_end).collect()).unwrap();
    let status = head[9..12].parse().unwrap();
    let header = |name: &str| {
        head.lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .map(|l| l[name.len() + 1..].trim().to_string())
    };
    let mut body = Vec::new();
    if let Some(length) = header("content-length") {
        let length: usize = length.parse().unwrap();
        while pending.len() < length {
            more(stream, pending).await;
        }
        body.extend(pending.drain(..length));
    } else if header("transfer-encoding").is_some() {
        loop {
            let line_end = loop {
                if let Some(at) = pending.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                more(stream, pending).await;
            };
            let size_line = String::from_utf8(pending.drain(..line_end + 2).collect()).unwrap();
            let size =
                usize::from_str_radix(size_line.trim().split(';').next().unwrap(), 16).unwrap();
            while pending.len() < size + 2 {
                more(stream, pending).await;
            }
            body.extend(pending.drain(..size));
            pending.drain(..2);
            if size == 0 {
                break;
            }
        }
    }
    RawResponse { status, head, body }
}

#[tokio::test]
async fn pipelined_http1_requests_in_one_write_are_answered_in_order() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut stream = TcpStream::connect(proxy.plain_addr).await.unwrap();
    stream
        .write_all(
            b"GET /big?bytes=10 HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
              GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let mut pending = Vec::new();
    let first = read_response(&mut stream, &mut pending).await;
    assert_eq!(first.status, 200, "{}", first.head);
    assert_eq!(first.body, (0..10).map(pattern_byte).collect::<Vec<_>>());
    let second = read_response(&mut stream, &mut pending).await;
    assert_eq!(second.status, 200, "{}", second.head);
    assert_eq!(second.body, b"hello");
    let third = read_response(&mut stream, &mut pending).await;
    assert_eq!(third.status, 200, "{}", third.head);
    assert_eq!(third.body, GREETING.as_bytes());
}

#[tokio::test]
async fn request_pipelined_while_the_first_is_still_answered_waits_its_turn() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut stream = TcpStream::connect(proxy.plain_addr).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The first half of the slow answer is out: the app holds the rest.
    let mut pending = Vec::new();
    while !String::from_utf8_lossy(&pending).contains("first\n") {
        let mut chunk = [0u8; 4096];
        let n = timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        pending.extend_from_slice(&chunk[..n]);
    }
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    app.state.release();
    let slow = read_response(&mut stream, &mut pending).await;
    assert_eq!(slow.status, 200, "{}", slow.head);
    assert_eq!(slow.body, b"first\nsecond\n");
    let next = read_response(&mut stream, &mut pending).await;
    assert_eq!(next.body, GREETING.as_bytes());
}

/// A request head of exactly `len` bytes, padded with a cookie.
fn head_of_length(len: usize) -> Vec<u8> {
    let start = "GET / HTTP/1.1\r\nHost: x\r\nCookie: ";
    let end = "\r\n\r\n";
    let mut head = start.as_bytes().to_vec();
    head.resize(len - end.len(), b'c');
    head.extend_from_slice(end.as_bytes());
    head
}

#[tokio::test]
async fn http1_header_limit_is_exact() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "[limits]\nmax_header_bytes = \"4KiB\"\n");
    let mut pending = Vec::new();
    let mut stream = TcpStream::connect(proxy.plain_addr).await.unwrap();
    stream.write_all(&head_of_length(4096)).await.unwrap();
    let at_the_limit = read_response(&mut stream, &mut pending).await;
    assert_eq!(at_the_limit.status, 200, "{}", at_the_limit.head);
    assert_eq!(at_the_limit.body, GREETING.as_bytes());

    let mut stream = TcpStream::connect(proxy.plain_addr).await.unwrap();
    stream.write_all(&head_of_length(4097)).await.unwrap();
    let over = read_response(&mut stream, &mut Vec::new()).await;
    assert_eq!(over.status, 431, "{}", over.head);
}

#[tokio::test]
async fn http1_header_over_the_default_32_kib_gets_431_even_under_64_kib() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    for kib in [33, 40, 63] {
        let mut stream = TcpStream::connect(proxy.plain_addr).await.unwrap();
        // One write: the whole head arrives at once.
        stream.write_all(&head_of_length(kib * 1024)).await.unwrap();
        let answer = read_response(&mut stream, &mut Vec::new()).await;
        assert_eq!(answer.status, 431, "{kib} KiB: {}", answer.head);
    }
    let stats = proxy.stats().await;
    assert_eq!(stats["connections"]["headers_too_large"], 3);
}

#[tokio::test]
async fn request_with_a_chunked_body_is_answered_then_the_connection_closes() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut stream = TcpStream::connect(proxy.plain_addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut pending = Vec::new();
    let answer = read_response(&mut stream, &mut pending).await;
    assert_eq!(answer.body, b"hello");
    // Where a chunked body ends is Pingora's to find, so nothing is read
    // after it: the answer says so, and the connection closes.
    assert!(
        answer
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        answer.head
    );
    let mut rest = Vec::new();
    let closed = timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
}
