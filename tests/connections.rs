//! Connections, before and between requests: which protocol a connection
//! speaks, how long it may stay silent or slow, how many one address may
//! hold, and the signals the process takes, over real sockets against the
//! real binary.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use common::app::{App, GREETING};
use common::sse_app::SseApp;
use common::{read_until_closed, Proxy, PATIENCE};

/// Short connection deadlines, so tests see them pass.
const QUICK: &str = r#"
[limits]
idle_timeout = "300ms"
header_timeout = "300ms"
tls_handshake_timeout = "300ms"
"#;

/// A TLS connection to the proxy offering `alpn`, with nothing sent on it yet.
async fn tls_connection(proxy: &Proxy, alpn: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(proxy.certs.root_store())
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    let tcp = TcpStream::connect(proxy.tls_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// An HTTP/2 connection over TLS, and the task driving it, which ends when
/// the connection closes.
async fn h2_connection(proxy: &Proxy) -> (h2::client::SendRequest<Bytes>, JoinHandle<()>) {
    let tls = tls_connection(proxy, "h2").await;
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, driver)
}

fn get(proxy: &Proxy, path: &str) -> http::Request<()> {
    http::Request::builder()
        .uri(format!("https://localhost:{}{path}", proxy.tls_addr.port()))
        .body(())
        .unwrap()
}

/// Waits until the connection driven by `driver` has closed.
async fn closed(driver: JoinHandle<()>) {
    timeout(PATIENCE, driver)
        .await
        .expect("the proxy kept the HTTP/2 connection open")
        .unwrap();
}

// --- the first bytes ---------------------------------------------------------

#[tokio::test]
async fn plaintext_http10_request_shorter_than_the_h2_preface_is_answered() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut stream = TcpStream::connect(proxy.plain_addr).await.unwrap();
    // 18 bytes: fewer than the 24 of the HTTP/2 preface.
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200") && answer.ends_with(GREETING.as_bytes()),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn load_balancer_health_check_of_22_bytes_is_answered() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut stream = TcpStream::connect(proxy.plain_addr).await.unwrap();
    // HAProxy's default `option httpchk`.
    stream
        .write_all(b"OPTIONS / HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn plaintext_connection_that_says_nothing_is_closed_after_the_idle_timeout() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, QUICK);
    let mut stream = TcpStream::connect(proxy.plain_addr).await.unwrap();
    assert!(read_until_closed(&mut stream).await.is_empty());
}

#[tokio::test]
async fn plaintext_client_that_stops_inside_the_h2_preface_is_closed_after_the_header_timeout() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, QUICK);
    let mut stream = TcpStream::connect(proxy.plain_addr).await.unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(read_until_closed(&mut stream).await.is_empty());
    proxy
        .wait_for_stats("the slow preface counted", |s| {
            s["connections"]["header_timeouts"] == 1
        })
        .await;
}

#[tokio::test]
async fn h2c_still_works_when_the_preface_arrives_in_pieces() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut stream = TcpStream::connect(proxy.plain_addr).await.unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    stream.flush().await.unwrap();
    tokio::task::yield_now().await;
    // The rest of the preface arrives later; h2 takes it from here.
    let (mut client, connection) = h2::client::handshake(PrefaceDone(stream)).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::builder()
        .uri(format!("http://{}/", proxy.plain_addr))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = timeout(PATIENCE, response).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
}

/// A TCP stream whose first 16 preface bytes were already sent: h2's
/// client writes the whole preface, so the first 16 bytes it writes are
/// swallowed.
struct PrefaceDone(TcpStream);

impl tokio::io::AsyncRead for PrefaceDone {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PrefaceDone {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        const SENT: &[u8] = b"PRI * HTTP/2.0\r\n";
        if buf.starts_with(SENT) {
            return std::pin::Pin::new(&mut self.0)
                .poll_write(cx, &buf[SENT.len()..])
                .map_ok(|n| n + SENT.len());
        }
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

// --- TLS ---------------------------------------------------------------------

#[tokio::test]
async fn tls_handshake_that_never_finishes_is_closed_after_its_deadline() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, QUICK);
    let mut stream = TcpStream::connect(proxy.tls_addr).await.unwrap();
    // The start of a TLS record, and then nothing.
    stream.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    read_until_closed(&mut stream).await;
    proxy
        .wait_for_stats("the handshake timeout counted", |s| {
            s["connections"]["tls_handshake_timeouts"] == 1
        })
        .await;
}

#[tokio::test]
async fn a_tcp_check_on_a_tls_listener_is_not_a_failed_handshake() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, QUICK);
    // A balancer's TCP check: connect, close. (The harness's own readiness
    // probe was one too.)
    for _ in 0..3 {
        drop(TcpStream::connect(proxy.tls_addr).await.unwrap());
    }
    // Accepted after the checks: a client that speaks no TLS at all.
    let mut stream = TcpStream::connect(proxy.tls_addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    read_until_closed(&mut stream).await;
    let stats = proxy
        .wait_for_stats("the failed handshake counted", |s| {
            s["connections"]["tls_handshake_failures"].as_u64() >= Some(1)
        })
        .await;
    assert_eq!(stats["connections"]["tls_handshake_failures"], 1, "{stats}");
    assert_eq!(stats["connections"]["tls_handshake_timeouts"], 0, "{stats}");
}

#[tokio::test]
async fn tls_connection_that_asks_nothing_after_its_handshake_is_closed_after_the_idle_timeout() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, QUICK);
    for alpn in ["http/1.1", "h2"] {
        let mut tls = tls_connection(&proxy, alpn).await;
        // For h2 not even the client preface comes.
        assert!(read_until_closed(&mut tls).await.is_empty(), "{alpn}");
    }
}

// --- HTTP/2 idle connections ---------------------------------------------------

#[tokio::test]
async fn http2_connection_whose_streams_all_ended_is_closed_after_the_idle_timeout() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, QUICK);
    let (client, driver) = h2_connection(&proxy).await;
    let (response, _) = client
        .ready()
        .await
        .unwrap()
        .send_request(get(&proxy, "/"), true)
        .unwrap();
    let mut body = response.await.unwrap().into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    closed(driver).await;
}

#[tokio::test]
async fn http2_connection_waiting_on_a_proxied_response_is_never_cut_by_the_idle_timeout() {
    // The app streams on any path that is not a topic's; this one is
    // proxied, and the app says nothing for a while.
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, QUICK);
    let (client, driver) = h2_connection(&proxy).await;
    let (response, _) = client
        .ready()
        .await
        .unwrap()
        .send_request(get(&proxy, "/stream/slow"), true)
        .unwrap();
    let response = timeout(PATIENCE, response).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // A second connection with nothing to do is closed: the idle timeout
    // has run out at least once since the first one went quiet.
    let (_idle, idle_driver) = h2_connection(&proxy).await;
    closed(idle_driver).await;
    app.publish("/stream/slow", "1", "still here");
    let chunk = timeout(PATIENCE, body.data())
        .await
        .expect("the proxied stream went quiet")
        .expect("the proxied stream ended")
        .expect("the proxied stream broke");
    assert!(String::from_utf8_lossy(&chunk).contains("still here"));
    assert!(!driver.is_finished(), "the connection was cut");
}

#[tokio::test]
async fn http2_connection_with_an_open_stream_is_never_cut_by_the_idle_timeout() {
    let app = SseApp::start().await;
    let topic = r#"
[sse]
heartbeat = "100ms"

[[topic]]
path = "/events/news"
upstream = "/stream/news"
"#;
    let proxy = Proxy::start(app.addr, &format!("{QUICK}{topic}"));
    let (client, driver) = h2_connection(&proxy).await;
    let (response, _) = client
        .ready()
        .await
        .unwrap()
        .send_request(get(&proxy, "/events/news"), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // Heartbeats come every 100 ms: twenty of them span more than six idle
    // timeouts, with the stream open all along.
    let mut heartbeats = 0;
    while heartbeats < 20 {
        let chunk = timeout(PATIENCE, body.data())
            .await
            .expect("the stream went quiet")
            .expect("the stream ended")
            .expect("the stream broke");
        heartbeats += chunk.windows(2).filter(|w| w == b":\n").count();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    proxy.wait_for_subscribers("/events/news", 1).await;
    app.publish("/stream/news", "1", "still here");
    let mut text = Vec::new();
    while !String::from_utf8_lossy(&text).contains("still here") {
        let chunk = timeout(PATIENCE, body.data())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    // Once its last stream is gone, the connection is idle.
    drop(body);
    closed(driver).await;
}

#[tokio::test]
async fn http2_connection_closed_by_the_http2_layer_for_a_protocol_error_is_counted() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut tls = tls_connection(&proxy, "h2").await;
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS
    bytes.extend_from_slice(&[0, 0, 1, 0x0, 0, 0, 0, 0, 0, b'x']); // DATA on stream 0
    tls.write_all(&bytes).await.unwrap();
    read_until_closed(&mut tls).await;
    proxy
        .wait_for_stats("the protocol error counted", |s| {
            s["connections"]["h2_abuse_closures"] == 1
        })
        .await;
    assert!(
        proxy.log().contains("GOAWAY PROTOCOL_ERROR"),
        "{}",
        proxy.log()
    );
}

// --- connections per address ---------------------------------------------------

/// A TCP connection to `addr` from the loopback address `source` (so that
/// tests counting connections per address count only their own).
async fn connect_from(source: [u8; 4], addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind((std::net::Ipv4Addr::from(source), 0).into())
        .unwrap();
    socket.connect(addr).await.unwrap()
}

/// Asks for `/` on an HTTP/1.1 connection and waits for the app's greeting.
async fn greeting_over(stream: &mut TcpStream) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    while !received.ends_with(GREETING.as_bytes()) {
        let n = timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("no answer in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn by_default_one_address_may_hold_many_connections() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(connect_from([127, 0, 0, 2], proxy.plain_addr).await);
    }
    for stream in &mut held {
        greeting_over(stream).await;
    }
    let stats = proxy.stats().await;
    assert_eq!(stats["connections"]["refused_per_ip"], 0);
}

#[tokio::test]
async fn connections_per_address_are_capped_when_configured_and_counted() {
    let app = App::start().await;
    let proxy = Proxy::start(app.addr, "[limits]\nmax_connections_per_ip = 2\n");
    let capped = [127, 0, 0, 3];
    let mut first = connect_from(capped, proxy.plain_addr).await;
    let mut second = connect_from(capped, proxy.plain_addr).await;
    greeting_over(&mut first).await;
    greeting_over(&mut second).await;
    let mut third = connect_from(capped, proxy.plain_addr).await;
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        read_until_closed(&mut third).await.is_empty(),
        "a third connection was served"
    );
    proxy
        .wait_for_stats("the refusal counted", |s| {
            s["connections"]["refused_per_ip"] == 1
        })
        .await;
    // Another address is not affected.
    greeting_over(&mut connect_from([127, 0, 0, 4], proxy.plain_addr).await).await;
    // The cap binding is logged once, however many refusals follow.
    let mut fourth = connect_from(capped, proxy.plain_addr).await;
    read_until_closed(&mut fourth).await;
    proxy
        .wait_for_stats("the second refusal counted", |s| {
            s["connections"]["refused_per_ip"] == 2
        })
        .await;
    let log = proxy.log();
    assert_eq!(
        log.matches("max_connections_per_ip (2) reached").count(),
        1,
        "{log}"
    );
    // A place comes back when a connection closes.
    drop(first);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut again = connect_from(capped, proxy.plain_addr).await;
        let _ = again.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut answer = [0u8; 12];
        if timeout(PATIENCE, again.read_exact(&mut answer))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            assert_eq!(&answer, b"HTTP/1.1 200");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no place came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- answers a client stops reading ------------------------------------------

/// An app that answers every request head with a body far larger than the
/// socket buffers between it and a client, and says (`cut`) when the proxy
/// stopped taking it.
async fn app_with_a_huge_answer() -> (std::net::SocketAddr, Arc<Notify>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(Notify::new());
    let said = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let said = said.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = vec![b'x'; 64 * 1024];
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    1usize << 30
                );
                if socket.write_all(answer.as_bytes()).await.is_err() {
                    return said.notify_one();
                }
                while socket.write_all(&body).await.is_ok() {}
                said.notify_one();
            });
        }
    });
    (addr, cut)
}

#[tokio::test]
async fn a_client_that_stops_reading_a_proxied_answer_is_cut_and_its_app_connection_freed() {
    // A bodiless GET takes the lean path, a POST the proxy pipeline.
    for request in [
        "GET /big HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    ] {
        let (app, cut) = app_with_a_huge_answer().await;
        let proxy = Proxy::start(app, QUICK);
        let mut client = TcpStream::connect(proxy.plain_addr).await.unwrap();
        client.write_all(request.as_bytes()).await.unwrap();
        // The client reads nothing; the proxy gives up within the idle
        // timeout of a write making no progress, and lets the app go.
        timeout(PATIENCE, cut.notified())
            .await
            .unwrap_or_else(|_| panic!("the proxy still waits on the client: {request:?}"));
        drop(client);
    }
}

#[tokio::test]
async fn an_http2_client_that_stops_reading_a_proxied_answer_has_its_stream_cut() {
    let (app, cut) = app_with_a_huge_answer().await;
    let proxy = Proxy::start(app, QUICK);
    let (client, _driver) = h2_connection(&proxy).await;
    let (response, _) = client
        .ready()
        .await
        .unwrap()
        .send_request(get(&proxy, "/big"), true)
        .unwrap();
    let response = timeout(PATIENCE, response).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    // Its body is never read, so the stream's flow-control window stays
    // shut once the first 64 KiB are in.
    timeout(PATIENCE, cut.notified())
        .await
        .expect("the proxy still waits on the client's window");
    drop(response);
}
