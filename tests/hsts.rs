//! `Strict-Transport-Security` on every answer of a TLS listener with
//! `hsts`: proxied responses (the app's own header kept), subscription
//! streams, their refusals and preflights, the proxy's and the front door's
//! own answers; never on a plaintext listener. Real sockets, the real binary.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::STRICT_TRANSPORT_SECURITY;
use http::Response;
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::client::{tls_stream, Client};
use common::sse_app::SseApp;
use common::{free_port, Proxy, PATIENCE};

/// The `hsts` of the test's TLS listener.
const HSTS: &str = "max-age=63072000; includeSubDomains";

/// What the app sends as its own `Strict-Transport-Security` on `/own-hsts`.
const APP_HSTS: &str = "max-age=60";

/// A small app: `200 ok` to everything, with its own
/// `Strict-Transport-Security` on `/own-hsts`.
async fn start_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match socket.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let own = if head.starts_with(b"GET /own-hsts ") {
                    format!("Strict-Transport-Security: {APP_HSTS}\r\n")
                } else {
                    String::new()
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\n{own}Content-Length: 3\r\nConnection: close\r\n\r\nok\n"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// The proxy with a TLS listener that sends [`HSTS`] (returned), besides
/// the harness's TLS and plaintext listeners without it; a topic
/// `/events/{name}` from an SSE app; and `limits`.
async fn setup(limits: &str) -> (Proxy, SocketAddr, SseApp) {
    let app = start_app().await;
    let sse = SseApp::start().await;
    let hsts_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = Proxy::start(
        app,
        &format!(
            r#"
[[listen]]
addr = "{hsts_addr}"
tls = {{ cert = "chain.pem", key = "key.pem" }}
hsts = "{HSTS}"

[[topic]]
path = "/events/{{name}}"
upstream = "http://{sse}/stream/{{name}}"
cors_origins = ["https://app.example"]

[limits]
max_param_len = 8
{limits}
"#,
            sse = sse.addr
        ),
    );
    common::wait_for_listener(hsts_addr);
    (proxy, hsts_addr, sse)
}

/// Every `Strict-Transport-Security` value of `response`.
fn hsts_of(response: &Response<Incoming>) -> Vec<String> {
    response
        .headers()
        .get_all(STRICT_TRANSPORT_SECURITY)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

async fn send(client: &mut Client, method: &str, path: &str) -> Response<Incoming> {
    let request = client
        .request(method, path)
        .header(http::header::ORIGIN, "https://app.example")
        .header("access-control-request-method", "GET")
        .body(Full::<Bytes>::default())
        .unwrap();
    client.send(request).await.unwrap()
}

#[tokio::test]
async fn hsts_is_sent_on_every_proxied_answer_of_a_tls_listener_and_the_apps_own_is_kept() {
    let (proxy, hsts_addr, _sse) = setup("").await;
    for alpn in ["h2", "http/1.1"] {
        let mut client = Client::tls(hsts_addr, &proxy.certs, &[alpn]).await;
        let page = client.get("/page").await;
        assert_eq!(page.status(), 200);
        assert_eq!(hsts_of(&page), [HSTS], "{alpn}");
        let mut client = Client::tls(hsts_addr, &proxy.certs, &[alpn]).await;
        let own = client.get("/own-hsts").await;
        assert_eq!(
            hsts_of(&own),
            [APP_HSTS],
            "{alpn}: the app's own is kept, alone"
        );
        // The proxy's own answer: another method on a topic path.
        let mut client = Client::tls(hsts_addr, &proxy.certs, &[alpn]).await;
        let refused = send(&mut client, "POST", "/events/news").await;
        assert_eq!(refused.status(), 405);
        assert_eq!(hsts_of(&refused), [HSTS], "{alpn}");
    }
}

#[tokio::test]
async fn hsts_is_sent_on_subscription_streams_their_refusals_and_preflights() {
    let (proxy, hsts_addr, _sse) = setup("max_subscribers = 1\nover_limit = \"429\"").await;
    let mut client = Client::tls(hsts_addr, &proxy.certs, &["h2"]).await;
    let stream = client.get("/events/news").await;
    assert_eq!(stream.status(), 200);
    assert_eq!(hsts_of(&stream), [HSTS], "the stream");

    let mut other = Client::tls(hsts_addr, &proxy.certs, &["h2"]).await;
    let full = other.get("/events/news").await;
    assert_eq!(full.status(), 429);
    assert_eq!(hsts_of(&full), [HSTS], "a cap's refusal");
    let bad = other.get("/events/far-too-long-a-name").await;
    assert_eq!(bad.status(), 400);
    assert_eq!(hsts_of(&bad), [HSTS], "a bad request");
    let preflight = send(&mut other, "OPTIONS", "/events/news").await;
    assert_eq!(preflight.status(), 204);
    assert_eq!(hsts_of(&preflight), [HSTS], "a preflight");
    drop(stream);
}

#[tokio::test]
async fn hsts_is_never_sent_on_a_plaintext_listener_nor_a_tls_one_without_it() {
    let (proxy, _hsts_addr, _sse) = setup("").await;
    let mut plain = Client::h1(proxy.plain_addr).await;
    assert!(hsts_of(&plain.get("/page").await).is_empty());
    let mut plain = Client::h2c(proxy.plain_addr).await;
    let stream = plain.get("/events/news").await;
    assert_eq!(stream.status(), 200);
    assert!(hsts_of(&stream).is_empty());
    let mut tls = proxy.h2().await;
    assert!(hsts_of(&tls.get("/page").await).is_empty());
    let stream = tls.get("/events/news").await;
    assert!(hsts_of(&stream).is_empty());
}

#[tokio::test]
async fn the_front_doors_own_431_carries_hsts_on_a_tls_listener() {
    let (proxy, hsts_addr, _sse) = setup("max_header_bytes = \"1KiB\"").await;
    let mut tls = tls_stream(hsts_addr, &proxy.certs, &["http/1.1"]).await;
    let big = "a".repeat(2048);
    tls.write_all(format!("GET /page HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(
        answer.contains(&format!("Strict-Transport-Security: {HSTS}\r\n")),
        "{answer}"
    );
}
