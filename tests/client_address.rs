//! The real client address behind a balancer: PROXY protocol listeners
//! (v1 and v2, before TLS), trusted proxies' `X-Forwarded-For`, and the
//! per-address caps counting the client (an IPv6 client by its /64), over
//! real sockets against the real binary.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use common::sse_app::SseApp;
use common::{free_port, run_cli, temp_file, wait_for_listener, Proxy, PATIENCE};

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v1 header (as HAProxy's `send-proxy` writes it) naming `client`.
fn v1(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    let (family, destination) = if client.is_ipv4() {
        ("TCP4", "10.0.0.11")
    } else {
        ("TCP6", "2001:db8::11")
    };
    format!(
        "PROXY {family} {} {destination} {} 443\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

/// A v2 header (as HAProxy's `send-proxy-v2` writes it) naming `client`,
/// with an ALPN TLV (which the proxy skips); `None` writes a `LOCAL`
/// header, the balancer's own health check.
fn v2(client: Option<&str>) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    let Some(client) = client else {
        header.extend_from_slice(&[0x20, 0x00, 0, 0]);
        return header;
    };
    let client: SocketAddr = client.parse().unwrap();
    let mut payload = Vec::new();
    let family = match client {
        SocketAddr::V4(v4) => {
            payload.extend_from_slice(&v4.ip().octets());
            payload.extend_from_slice(&[10, 0, 0, 11]);
            0x11
        }
        SocketAddr::V6(v6) => {
            payload.extend_from_slice(&v6.ip().octets());
            payload.extend_from_slice(
                &"2001:db8::11"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            );
            0x21
        }
    };
    payload.extend_from_slice(&client.port().to_be_bytes());
    payload.extend_from_slice(&443u16.to_be_bytes());
    payload.extend_from_slice(&[0x01, 0x00, 0x08]);
    payload.extend_from_slice(b"http/1.1");
    header.extend_from_slice(&[0x21, family]);
    header.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    header.extend_from_slice(&payload);
    header
}

/// A proxy with a plaintext and a TLS `proxy_protocol` listener, a topic
/// `/events/{name}` behind an auth endpoint, and `extra` config.
struct Setup {
    app: SseApp,
    proxy: Proxy,
    /// Plaintext, `proxy_protocol = true`.
    pp_plain: SocketAddr,
    /// TLS, `proxy_protocol = true`.
    pp_tls: SocketAddr,
}

async fn setup(server_keys: &str, extra: &str) -> Setup {
    let app = SseApp::start().await;
    let pp_plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pp_tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        r#"
[[listen]]
addr = "{pp_plain}"
proxy_protocol = true

[[listen]]
addr = "{pp_tls}"
proxy_protocol = true
tls = {{ cert = "chain.pem", key = "key.pem" }}

[[topic]]
path = "/events/{{name}}"
upstream = "/stream/{{name}}"
auth = "/auth"

{extra}
"#
    );
    let server = format!("grace_period = \"1s\"\n{server_keys}");
    let proxy = Proxy::start_with_server(app.addr, &server, &config);
    // (A connection that closes before its first byte, as this probe's,
    // is a balancer's TCP health check: neither served nor counted.)
    wait_for_listener(pp_plain);
    wait_for_listener(pp_tls);
    Setup {
        app,
        proxy,
        pp_plain,
        pp_tls,
    }
}

/// A TCP connection to `addr` that has sent `header` (and nothing else).
async fn connect_with(addr: SocketAddr, header: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(header).await.unwrap();
    tcp
}

/// TLS over `tcp` (after its PROXY header), offering ALPN `alpn`.
async fn tls_over(
    tcp: TcpStream,
    proxy: &Proxy,
    alpn: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(proxy.certs.root_store())
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake after the PROXY header")
}

/// An HTTP/1.1 request for `path` with `headers` (lines ending in CRLF).
fn request(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n")
}

/// Everything the proxy sends until it closes the connection, as text.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> String {
    String::from_utf8_lossy(&common::read_until_closed(stream).await).into_owned()
}

/// Sends `request` on `stream` and reads the answer to the close.
async fn exchange(mut stream: impl AsyncRead + AsyncWrite + Unpin, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    read_until_closed(&mut stream).await
}

/// Sends a subscription request for `path` with `headers` (lines ending in
/// CRLF) on `stream` and reads the response head; the stream stays open.
async fn subscribe<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    headers: &str,
) -> (S, String) {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    timeout(PATIENCE, async {
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed: {head:?}");
            head.push(byte[0]);
        }
    })
    .await
    .expect("a response head");
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// The `X-Forwarded-For` of the app's `n`th request for `path`.
fn forwarded_for(app: &SseApp, path: &str, n: usize) -> Option<String> {
    app.requests_for(path)
        .get(n)
        .and_then(|r| r.header("x-forwarded-for").map(str::to_string))
}

#[tokio::test]
async fn a_proxy_v1_header_sets_the_address_the_app_the_auth_endpoint_and_the_access_log_see() {
    let s = setup("", "").await;
    let mut header = v1("203.0.113.7:51234");
    header.extend_from_slice(request("/page", "X-Forwarded-For: 6.6.6.6\r\n").as_bytes());
    let answer = exchange(connect_with(s.pp_plain, &header).await, "").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        forwarded_for(&s.app, "/page", 0).as_deref(),
        Some("203.0.113.7"),
        "the app sees the PROXY header's client, not the socket's nor the client's claim"
    );
    s.proxy
        .wait_for_log("203.0.113.7 \"GET /page HTTP/1.1\" 200")
        .await;

    let tcp = connect_with(s.pp_plain, &v1("203.0.113.8:40000")).await;
    let (_stream, head) = subscribe(tcp, "/events/news", "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        forwarded_for(&s.app, "/auth", 0).as_deref(),
        Some("203.0.113.8"),
        "the auth endpoint sees the client"
    );
}

#[tokio::test]
async fn a_proxy_v2_header_before_the_tls_handshake_sets_the_client_address() {
    let s = setup("", "").await;
    let tcp = connect_with(s.pp_tls, &v2(Some("[2001:db8:1:2::7]:51234"))).await;
    let tls = tls_over(tcp, &s.proxy, "http/1.1").await;
    let answer = exchange(tls, &request("/page", "")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        forwarded_for(&s.app, "/page", 0).as_deref(),
        Some("2001:db8:1:2::7")
    );
    s.proxy
        .wait_for_log("2001:db8:1:2::7 \"GET /page HTTP/1.1\" 200")
        .await;

    // v1 before TLS too, and an IPv4 client.
    let tcp = connect_with(s.pp_tls, &v1("198.51.100.4:1")).await;
    let tls = tls_over(tcp, &s.proxy, "http/1.1").await;
    let (_stream, head) = subscribe(tls, "/events/news", "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        forwarded_for(&s.app, "/auth", 0).as_deref(),
        Some("198.51.100.4")
    );

    // HTTP/2: every stream of the connection has the header's client.
    let tcp = connect_with(s.pp_tls, &v2(Some("198.51.100.5:2"))).await;
    let tls = tls_over(tcp, &s.proxy, "h2").await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("HTTP/2 after the PROXY header and TLS");
    tokio::spawn(connection);
    for _ in 0..2 {
        let request = http::Request::get(format!("https://localhost:{}/page", s.pp_tls.port()))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        forwarded_for(&s.app, "/page", 1).as_deref(),
        Some("198.51.100.5")
    );
    assert_eq!(
        forwarded_for(&s.app, "/page", 2).as_deref(),
        Some("198.51.100.5")
    );
}

#[tokio::test]
async fn a_connection_without_a_valid_proxy_header_is_closed_and_counted() {
    let s = setup("", "").await;
    // A plain request, as a client reaching the listener directly sends.
    let answer = exchange(
        connect_with(s.pp_plain, b"").await,
        &request("/page", "X-Forwarded-For: 1.2.3.4\r\n"),
    )
    .await;
    assert_eq!(answer, "", "nothing is served without a header");
    // Garbage, and a truncated v2 header that then closes.
    let answer = exchange(connect_with(s.pp_plain, b"PROXY TCP9 x\r\n").await, "").await;
    assert_eq!(answer, "");
    let mut truncated = connect_with(s.pp_tls, &v2(Some("192.0.2.1:1"))[..20]).await;
    truncated.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut truncated).await, "");
    // A TLS handshake straight away, without a header.
    let tcp = TcpStream::connect(s.pp_tls).await.unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(s.proxy.certs.root_store())
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let handshake = timeout(
        PATIENCE,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("the proxy closes at once");
    assert!(handshake.is_err(), "no TLS without a PROXY header");

    s.proxy
        .wait_for_stats("4 connections without a PROXY header", |stats| {
            stats["connections"]["proxy_header_invalid"] == 4
        })
        .await;
    assert!(s.app.requests_for("/page").is_empty());
    let log = s.proxy.log();
    assert_eq!(
        log.matches("to a proxy_protocol listener").count(),
        1,
        "the first is logged, the rest counted:\n{log}"
    );
}

#[tokio::test]
async fn a_proxy_v2_local_health_check_is_served_with_the_socket_address() {
    let s = setup("", "").await;
    let mut header = v2(None);
    header.extend_from_slice(request("/page", "").as_bytes());
    let answer = exchange(connect_with(s.pp_plain, &header).await, "").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        forwarded_for(&s.app, "/page", 0).as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn the_connection_cap_counts_each_proxy_address_apart() {
    let s = setup("", "[limits]\nmax_connections_per_ip = 1\n").await;
    // One idle connection from 198.51.100.1 holds its one place.
    let _held = connect_with(s.pp_plain, &v1("198.51.100.1:1000")).await;
    s.proxy
        .wait_for_stats("the held connection open", |stats| {
            stats["connections"]["open"].as_u64() >= Some(1)
        })
        .await;
    // Another client over the same balancer socket address is served.
    let mut header = v1("198.51.100.2:1000");
    header.extend_from_slice(request("/page", "").as_bytes());
    let answer = exchange(connect_with(s.pp_plain, &header).await, "").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The first client's second connection is refused.
    let mut header = v1("198.51.100.1:1001");
    header.extend_from_slice(request("/page", "").as_bytes());
    let answer = exchange(connect_with(s.pp_plain, &header).await, "").await;
    assert_eq!(answer, "", "refused at once");
    let stats = s.proxy.stats().await;
    assert_eq!(stats["connections"]["refused_per_ip"], 1, "{stats}");
}

#[tokio::test]
async fn the_subscription_cap_counts_proxy_addresses_and_an_ipv6_64_as_one() {
    let s = setup(
        "",
        "[limits]\nmax_subscribers_per_ip = 1\nover_limit = \"429\"\n",
    )
    .await;
    let open = |client: &'static str| {
        let addr = s.pp_plain;
        async move {
            let tcp = connect_with(addr, &v1(client)).await;
            subscribe(tcp, "/events/news", "").await
        }
    };
    // Two clients behind the same balancer address: one stream each.
    let (_a, head) = open("198.51.100.1:1").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_b, head) = open("198.51.100.2:1").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // One IPv6 /64 is one client, whatever address in it it uses.
    let (_c, head) = open("[2001:db8:1:2::1]:1").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_d, head) = open("[2001:db8:1:2:ffff:ffff:ffff:ffff]:1").await;
    assert!(head.starts_with("HTTP/1.1 429"), "same /64: {head}");
    let (_e, head) = open("[2001:db8:1:3::1]:1").await;
    assert!(head.starts_with("HTTP/1.1 200"), "another /64: {head}");
    let stats = s.proxy.stats().await;
    assert_eq!(
        stats["admission"]["refused"]["max_subscribers_per_ip"], 1,
        "{stats}"
    );
}

#[tokio::test]
async fn x_forwarded_for_is_believed_from_trusted_proxies_only() {
    let s = setup("trusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]", "").await;
    // From 127.0.0.1 (a trusted proxy): the rightmost untrusted entry is
    // the client; what it wrote left of itself is dropped.
    let answer = exchange(
        TcpStream::connect(s.proxy.plain_addr).await.unwrap(),
        &request(
            "/page",
            "X-Forwarded-For: 6.6.6.6, 203.0.113.9\r\nX-Forwarded-For: 10.1.2.3\r\n",
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        forwarded_for(&s.app, "/page", 0).as_deref(),
        Some("203.0.113.9, 10.1.2.3, 127.0.0.1")
    );
    s.proxy
        .wait_for_log("203.0.113.9 \"GET /page HTTP/1.1\" 200")
        .await;

    // A subscription: the auth endpoint and the caps see the same client.
    let tcp = TcpStream::connect(s.proxy.plain_addr).await.unwrap();
    let (_stream, head) = subscribe(tcp, "/events/news", "X-Forwarded-For: 203.0.113.10\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        forwarded_for(&s.app, "/auth", 0).as_deref(),
        Some("203.0.113.10, 127.0.0.1")
    );

    // From a client that is not a trusted proxy (here the PROXY header's
    // address): its X-Forwarded-For is replaced.
    let mut header = v1("198.51.100.1:1");
    header.extend_from_slice(request("/page", "X-Forwarded-For: 1.2.3.4\r\n").as_bytes());
    let answer = exchange(connect_with(s.pp_plain, &header).await, "").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        forwarded_for(&s.app, "/page", 1).as_deref(),
        Some("198.51.100.1")
    );
}

#[tokio::test]
async fn a_proxy_header_and_a_tls_client_hello_in_one_write_are_told_apart() {
    let s = setup("", "").await;
    // The TLS client writes into a pipe; its ClientHello goes out in the
    // same write as the header, as a balancer may send them.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(s.proxy.certs.root_store())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (client_side, mut pump) = tokio::io::duplex(64 * 1024);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let handshake =
        tokio::spawn(tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, client_side));
    let mut hello = vec![0u8; 16 * 1024];
    let n = pump.read(&mut hello).await.unwrap();
    let mut first = v2(Some("192.0.2.33:4000"));
    first.extend_from_slice(&hello[..n]);
    let mut tcp = TcpStream::connect(s.pp_tls).await.unwrap();
    tcp.write_all(&first).await.unwrap();
    tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional(&mut pump, &mut tcp).await;
    });
    let tls = timeout(PATIENCE, handshake)
        .await
        .expect("handshake in time")
        .unwrap()
        .expect("TLS handshake");
    let answer = exchange(tls, &request("/page", "")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        forwarded_for(&s.app, "/page", 0).as_deref(),
        Some("192.0.2.33")
    );
}

#[test]
fn check_refuses_a_trusted_proxy_that_is_not_a_cidr_naming_file_line_and_key() {
    let (_dir, path) = temp_file(
        "sse-fanout.toml",
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n[[listen]]\naddr = \"127.0.0.1:1\"\nproxy_protocol = true\n[app]\nupstream = \"127.0.0.1:2\"\n",
    );
    let output = run_cli(&["-c", path.to_str().unwrap(), "--check"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let expected = format!(
        "{}:2:34: server.trusted_proxies: \"10.0.0.0/33\" is not a CIDR",
        path.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}
