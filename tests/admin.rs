//! The admin listener's own bounds, against the real binary: it serves a
//! bounded number of connections at once, and a connection that sends no
//! request is closed after a deadline, so an operator's port cannot be held
//! by clients that connect and say nothing.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::sse_app::SseApp;
use common::{Proxy, PATIENCE};
use sse_fanout::admin::{MAX_CONNECTIONS, REQUEST_DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// `GET /readyz` over a fresh connection: what came back (empty when the
/// listener closed the connection unanswered).
async fn readyz(proxy: &Proxy) -> String {
    let mut socket = TcpStream::connect(proxy.admin_addr).await.unwrap();
    let _ = socket
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, socket.read_to_end(&mut answer))
        .await
        .expect("the admin listener answers or closes at once");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether the listener has not closed `socket` (a refused connection reads
/// as ended or reset at once).
fn still_open(socket: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(socket.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_capped_and_silent_ones_closed_after_a_deadline() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, "");
    let mut silent = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        silent.push(TcpStream::connect(proxy.admin_addr).await.unwrap());
    }
    // Once the silent ones hold every slot, a new connection is closed
    // unanswered. Until then it may still find a free one; and a probe that
    // took a slot while silent ones waited to be accepted got one of them
    // refused, so those are replaced until the listener is full.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = readyz(&proxy).await;
        if answer.is_empty() {
            break;
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            Instant::now() < deadline,
            "{MAX_CONNECTIONS} silent connections never filled the admin listener"
        );
        silent.retain(still_open);
        while silent.len() < MAX_CONNECTIONS {
            silent.push(TcpStream::connect(proxy.admin_addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The silent ones are closed once their deadline passes.
    for mut socket in silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(REQUEST_DEADLINE + PATIENCE, socket.read(&mut byte))
            .await
            .expect("a silent admin connection was never closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // The listener serves again, and counted what it refused.
    assert!(readyz(&proxy).await.starts_with("HTTP/1.1 200"));
    let stats = proxy.stats().await;
    assert!(stats["admin"]["refused"].as_u64().unwrap() >= 1, "{stats}");
}
