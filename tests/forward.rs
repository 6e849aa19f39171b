//! The lean forwarding path (`src/front_door/forward.rs`): bodiless HTTP/1.1
//! `GET`s and `HEAD`s forwarded by the front door itself, the app connection
//! kept with a busy client connection. Against the real binary and a raw
//! app on 127.0.0.1 that counts its connections.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{Proxy, PATIENCE};

/// An app that answers `ok` to every request head, counting connections
/// and requests; with `one_request_per_connection` it closes each
/// connection after its first answer without saying so (as an app whose
/// keep-alive timeout just passed does).
struct RawApp {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// Every request head the app got, in order.
    heads: Arc<Mutex<Vec<String>>>,
}

impl RawApp {
    async fn start(one_request_per_connection: bool) -> RawApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (counted, asked, got) = (connections.clone(), requests.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let (asked, got) = (asked.clone(), got.clone());
                tokio::spawn(async move {
                    let mut read = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => read.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&read[..end]).into_owned();
                        read.drain(..end + 4);
                        got.lock().unwrap().push(head.clone());
                        asked.fetch_add(1, Ordering::SeqCst);
                        let answer: &[u8] = if head.starts_with("HEAD ") {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                        };
                        if socket.write_all(answer).await.is_err() || one_request_per_connection {
                            return;
                        }
                    }
                });
            }
        });
        RawApp {
            addr,
            connections,
            requests,
            heads,
        }
    }
}

/// Sends `request` on `client` and reads one answer with a 2-byte body
/// (none for `HEAD`): its status line and body.
async fn exchange(client: &mut TcpStream, request: &str) -> (String, String) {
    client.write_all(request.as_bytes()).await.unwrap();
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    let answer = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&read[..end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_string)
                    })
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let body_len = if request.starts_with("HEAD ") {
                    0
                } else {
                    length
                };
                if read.len() >= end + 4 + body_len {
                    let body =
                        String::from_utf8_lossy(&read[end + 4..end + 4 + body_len]).into_owned();
                    return (head.lines().next().unwrap_or_default().to_string(), body);
                }
            }
            let n = client.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "the proxy closed the connection: {:?}",
                String::from_utf8_lossy(&read)
            );
            read.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("an answer in time");
    answer
}

const GET: &str = "GET /page HTTP/1.1\r\nHost: example.test\r\n\r\n";

#[tokio::test]
async fn requests_on_one_busy_client_connection_share_one_app_connection() {
    let app = RawApp::start(false).await;
    let proxy = Proxy::start(app.addr, "");
    let mut client = TcpStream::connect(proxy.plain_addr).await.unwrap();
    for _ in 0..10 {
        assert_eq!(
            exchange(&mut client, GET).await,
            ("HTTP/1.1 200 OK".to_string(), "ok".to_string())
        );
    }
    let head = "HEAD /page HTTP/1.1\r\nHost: example.test\r\n\r\n";
    assert_eq!(exchange(&mut client, head).await.0, "HTTP/1.1 200 OK");
    assert_eq!(app.requests.load(Ordering::SeqCst), 11);
    assert_eq!(app.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_request_on_an_app_connection_the_app_closed_is_sent_again_on_a_fresh_one() {
    let app = RawApp::start(true).await;
    let proxy = Proxy::start(app.addr, "");
    let mut client = TcpStream::connect(proxy.plain_addr).await.unwrap();
    // Each answer leaves the app connection looking reusable, and the app
    // closes it: every next request finds it closed.
    for _ in 0..5 {
        assert_eq!(
            exchange(&mut client, GET).await,
            ("HTTP/1.1 200 OK".to_string(), "ok".to_string())
        );
    }
    assert_eq!(app.requests.load(Ordering::SeqCst), 5);
    assert!(!proxy.log().contains("unreachable"), "{}", proxy.log());
}

#[tokio::test]
async fn the_app_gets_the_clients_header_lines_in_their_case_without_hop_by_hop_ones() {
    let app = RawApp::start(false).await;
    let proxy = Proxy::start(app.addr, "");
    let mut client = TcpStream::connect(proxy.plain_addr).await.unwrap();
    let request = "GET /page?q=1 HTTP/1.1\r\nHost: example.test\r\nX-Custom-CASE: a\r\n\
                   Accept: text/html\r\naccept: */*\r\nConnection: keep-alive, X-Drop\r\n\
                   X-Drop: secret\r\nKeep-Alive: timeout=5\r\nX-Real-IP: 6.6.6.6\r\n\r\n";
    let (status, body) = exchange(&mut client, request).await;
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ok"));
    let head = app.heads.lock().unwrap()[0].clone();
    let lines: Vec<&str> = head.lines().collect();
    assert_eq!(lines[0], "GET /page?q=1 HTTP/1.1", "{head}");
    for line in [
        "Host: example.test",
        "X-Custom-CASE: a",
        "Accept: text/html",
        "accept: */*",
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: example.test",
    ] {
        assert!(lines.contains(&line), "{line:?} missing from {head}");
    }
    let lower = head.to_ascii_lowercase();
    for gone in [
        "connection:",
        "x-drop",
        "keep-alive",
        "x-real-ip",
        "6.6.6.6",
    ] {
        assert!(!lower.contains(gone), "{gone:?} reached the app: {head}");
    }
}
