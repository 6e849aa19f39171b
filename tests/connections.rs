//! Connections, before and between requests: which protocol a connection
//! speaks, how long it may stay silent or slow, how many one address may
//! hold, and the signals the process takes, over real sockets against the
//! real binary.

mod common;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use common::app::{App, GREETING};
use common::sse_app::SseApp;
use common::sse_client::EventStream;
use common::{Proxy, PATIENCE};
use sse_fanout::sse::Item;

/// Reads until the proxy closes the connection (failing the test if it
/// does not within `PATIENCE`); what came before the close.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut received = Vec::new();
    let closed = timeout(PATIENCE, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the proxy kept the connection open; received {:?}",
        String::from_utf8_lossy(&received)
    );
    received
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

// --- signals -------------------------------------------------------------------------

#[tokio::test]
async fn sighup_is_logged_and_ignored_while_streams_and_requests_go_on() {
    let app = SseApp::start().await;
    let topic = "[[topic]]\npath = \"/events/news\"\nupstream = \"/stream/news\"\n";
    let proxy = Proxy::start(app.addr, topic);
    let mut client = proxy.h2().await;
    let mut stream = EventStream::open(&mut client, "/events/news", None).await;
    proxy.wait_for_subscribers("/events/news", 1).await;
    // The signal handlers are installed once this is logged.
    proxy.wait_for_log("signals: ").await;

    proxy.signal("HUP");
    proxy.wait_for_log("SIGHUP received").await;
    assert!(proxy
        .log()
        .contains("reloading the config is not supported yet"));

    app.publish("/stream/news", "1", "after the hangup");
    assert_eq!(
        stream.next_message().await.unwrap().data(),
        Some("after the hangup")
    );
    let mut fresh = proxy.h1().await;
    let response = fresh.get("/events/news").await;
    let mut late = EventStream::new(response);
    assert!(matches!(late.next_item().await, Some(Item::Event(_))));
}
