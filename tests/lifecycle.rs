//! Running it like nginx: stopping without a reconnect storm (the drain),
//! and handing over to a new binary without refusing anyone (the graceful
//! upgrade), against the real binary with real signals and real sockets.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::client::{body_bytes, Client};
use common::sse_app::SseApp;
use common::sse_client::EventStream;
use common::{Proxy, TestCerts, PATIENCE};
use sse_fanout::sse::Item;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const TOPICS: &str = r#"
[sse]
heartbeat = "30s"
retry = "2s"

[[topic]]
path = "/events/news"
upstream = "/stream/news"
"#;

/// A plain HTTP/1.1 subscriber on its own connection: reads until the proxy
/// ends the stream and returns when that was and everything it got.
async fn subscribe_until_end(proxy_addr: std::net::SocketAddr) -> (Instant, String) {
    let mut socket = TcpStream::connect(proxy_addr).await.unwrap();
    socket
        .write_all(
            b"GET /events/news HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
    (
        Instant::now(),
        String::from_utf8_lossy(&received).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_subscriptions_spread_over_the_drain_each_after_a_jittered_retry() {
    let app = SseApp::start().await;
    let mut proxy =
        Proxy::start_with_server(app.addr, "grace_period = \"6s\"\ndrain = \"5s\"", TOPICS);
    let subscribers: Vec<_> = (0..300)
        .map(|_| tokio::spawn(subscribe_until_end(proxy.plain_addr)))
        .collect();
    proxy.wait_for_subscribers("/events/news", 300).await;

    let signalled = Instant::now();
    proxy.terminate();

    let mut per_second = [0usize; 8];
    for subscriber in subscribers {
        let (ended, received) = tokio::time::timeout(PATIENCE, subscriber)
            .await
            .expect("every stream ended within the drain")
            .unwrap();
        let after = ended.duration_since(signalled);
        assert!(
            after < Duration::from_secs(7),
            "ended {after:?} after SIGTERM"
        );
        per_second[after.as_secs() as usize] += 1;
        // The opening retry:, then the jittered one before the clean end.
        assert_eq!(received.matches("retry:").count(), 2, "{received}");
        assert!(
            received.ends_with("0\r\n\r\n"),
            "not a clean end: {received:?}"
        );
    }
    // Spread out: no second holds more than a third of them.
    assert!(
        per_second.iter().all(|n| *n <= 100),
        "ends per second after SIGTERM: {per_second:?}"
    );
    assert!(proxy.wait_exit().success());
}

/// `GET path` on the admin listener over a fresh connection: the status, or
/// the error that kept it from answering (a refused connection, above all).
async fn admin_get(admin_addr: std::net::SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut socket = TcpStream::connect(admin_addr).await?;
    socket
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, socket.read_to_end(&mut answer))
        .await
        .map_err(|_| std::io::Error::other("no answer in time"))??;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {answer:?}")))
}

/// Polls `/readyz` until it answers `503`. Every check must reach the admin
/// listener (never "connection refused").
async fn wait_until_draining(proxy: &Proxy) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = admin_get(proxy.admin_addr, "/readyz")
            .await
            .expect("the admin listener answers during the drain");
        if status == 503 {
            return;
        }
        assert_eq!(status, 200);
        assert!(Instant::now() < deadline, "/readyz never answered 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_during_the_drain_while_subscribers_are_still_open() {
    let app = SseApp::start().await;
    let mut proxy =
        Proxy::start_with_server(app.addr, "grace_period = \"6s\"\ndrain = \"5s\"", TOPICS);
    let subscribers: Vec<_> = (0..20)
        .map(|_| tokio::spawn(subscribe_until_end(proxy.plain_addr)))
        .collect();
    proxy.wait_for_subscribers("/events/news", 20).await;
    assert_eq!(admin_get(proxy.admin_addr, "/readyz").await.unwrap(), 200);

    proxy.terminate();
    wait_until_draining(&proxy).await;
    // Meanwhile the drain is under way: streams are still open, and the
    // process still answers the rest of its admin paths.
    assert_eq!(admin_get(proxy.admin_addr, "/healthz").await.unwrap(), 200);
    let stats = proxy.stats().await;
    let open = stats["totals"]["subscribers"].as_u64().unwrap();
    assert!(open > 0, "the drain was over already: {stats}");
    assert!(subscribers.iter().any(|s| !s.is_finished()));

    for subscriber in subscribers {
        tokio::time::timeout(PATIENCE, subscriber)
            .await
            .expect("every stream ended within the drain")
            .unwrap();
    }
    assert!(proxy.wait_exit().success());
}

/// Where test clients reach the proxy (the same addresses before, during and
/// after an upgrade).
struct Target {
    plain: SocketAddr,
    tls: SocketAddr,
    certs: TestCerts,
}

/// How a test client reaches the proxy: plaintext HTTP/1.1, or TLS with
/// this ALPN protocol.
#[derive(Debug, Clone, Copy)]
enum Via {
    Plain,
    Tls(&'static str),
}

impl Target {
    fn of(proxy: &Proxy) -> Arc<Target> {
        Arc::new(Target {
            plain: proxy.plain_addr,
            tls: proxy.tls_addr,
            certs: TestCerts {
                ca_pem: proxy.certs.ca_pem.clone(),
                chain_pem: proxy.certs.chain_pem.clone(),
                key_pem: proxy.certs.key_pem.clone(),
            },
        })
    }

    /// A new connection (panics if it is refused).
    async fn connect(&self, via: Via) -> Client {
        match via {
            Via::Plain => Client::h1(self.plain).await,
            Via::Tls(alpn) => Client::tls(self.tls, &self.certs, &[alpn]).await,
        }
    }
}

/// What one subscriber saw across an upgrade.
struct Followed {
    /// The ids of every message, in order, over every stream it opened.
    ids: Vec<String>,
    /// Its first stream's bytes, up to the proxy's clean end.
    first_stream: Option<Vec<u8>>,
    /// How many of its streams the proxy ended cleanly.
    clean_ends: usize,
}

/// A subscriber that behaves like `EventSource`: on a clean end it connects
/// again (at once, over a new connection) with `Last-Event-ID`, until the
/// message whose data is `last`. A refused connection, a refused
/// subscription or a broken stream fails the test.
async fn follow_until_last(target: Arc<Target>, via: Via) -> Followed {
    let mut followed = Followed {
        ids: Vec::new(),
        first_stream: None,
        clean_ends: 0,
    };
    let mut last_event_id: Option<String> = None;
    loop {
        let mut client = target.connect(via).await;
        let mut stream =
            EventStream::open(&mut client, "/events/news", last_event_id.as_deref()).await;
        while let Some(item) = stream.next_item().await {
            let Item::Event(event) = item else { continue };
            if let Some(id) = event.id() {
                last_event_id = Some(id.to_string());
            }
            if let Some(data) = event.data() {
                followed.ids.push(event.id().unwrap_or("").to_string());
                if data == "last" {
                    return followed;
                }
            }
        }
        followed.clean_ends += 1;
        followed.first_stream.get_or_insert(stream.raw);
    }
}

/// Requests an ordinary (proxied) page in a loop, each time over a new
/// connection, until `stop`; returns how many it got. A refused connection
/// or a failed request fails the test.
async fn request_in_a_loop(target: Arc<Target>, via: Via, stop: Arc<AtomicBool>) -> usize {
    let mut answered = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut client = target.connect(via).await;
        let request = client
            .request("GET", "/page")
            .body(Default::default())
            .unwrap();
        let response = match client.send(request).await {
            Ok(response) => response,
            Err(error) => panic!(
                "request {answered} over {via:?} failed at {}: {error:?}",
                humantime::format_rfc3339_millis(std::time::SystemTime::now())
            ),
        };
        let status = response.status();
        let body = body_bytes(response).await;
        assert_eq!(
            (status.as_u16(), &body[..]),
            (200, &b"plain\n"[..]),
            "request {answered} over {via:?}"
        );
        answered += 1;
    }
    answered
}

/// Checks `/readyz` in a loop, each time over a new connection, until
/// `stop`; returns how many checks were answered. A refused connection fails
/// the test (an answer may be `503` from the old process in the instant its
/// drain begins, before it stops accepting; then the successor answers).
async fn check_readiness_in_a_loop(admin_addr: SocketAddr, stop: Arc<AtomicBool>) -> usize {
    let mut answered = 0;
    while !stop.load(Ordering::Relaxed) {
        let status = admin_get(admin_addr, "/readyz")
            .await
            .unwrap_or_else(|e| panic!("health check {answered} failed: {e}"));
        assert!(status == 200 || status == 503, "{status}");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_refuses_no_request_and_subscribers_get_every_event_once_across_it() {
    let app = SseApp::start().await;
    let mut proxy =
        Proxy::start_with_server(app.addr, "grace_period = \"3s\"\ndrain = \"2s\"", TOPICS);
    let target = Target::of(&proxy);

    let subscribers: Vec<_> = (0..20)
        .map(|i| {
            let via = match i % 4 {
                0 => Via::Tls("h2"),
                1 => Via::Tls("http/1.1"),
                _ => Via::Plain,
            };
            tokio::spawn(follow_until_last(target.clone(), via))
        })
        .collect();
    proxy.wait_for_subscribers("/events/news", 20).await;

    // The app publishes all along: before, during and after the handover.
    let published = Arc::new(AtomicU32::new(0));
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (state, published, stop) = (
            app.state.clone(),
            published.clone(),
            stop_publishing.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let n = published.load(Ordering::Relaxed) + 1;
                state.publish("/stream/news", &n.to_string(), &format!("event {n}"));
                published.store(n, Ordering::Relaxed);
            }
        })
    };
    let stop_requesting = Arc::new(AtomicBool::new(false));
    let requesters: Vec<_> = [Via::Plain, Via::Tls("http/1.1"), Via::Tls("h2")]
        .into_iter()
        .map(|via| {
            tokio::spawn(request_in_a_loop(
                target.clone(),
                via,
                stop_requesting.clone(),
            ))
        })
        .collect();
    let health_checks = tokio::spawn(check_readiness_in_a_loop(
        proxy.admin_addr,
        stop_requesting.clone(),
    ));
    let deadline = Instant::now() + PATIENCE;
    while published.load(Ordering::Relaxed) < 10 {
        assert!(Instant::now() < deadline, "the app never published");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The upgrade: a successor waits for the listeners, the old process
    // hands them over on SIGQUIT, accepts alongside it for Pingora's 5 s,
    // then drains its subscribers (2 s) and exits after its grace period.
    let _successor = proxy.start_successor().await;
    proxy.signal("QUIT");
    let exited = proxy
        .exit_within(Duration::from_secs(5 + 3 + 1) + PATIENCE)
        .await;
    assert!(exited.success(), "the old process exited with {exited}");

    // Every subscriber came back, to the successor (which now answers at
    // the admin address too), and the app goes on publishing to them.
    proxy.wait_for_subscribers("/events/news", 20).await;
    stop_publishing.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let last = published.load(Ordering::Relaxed) + 1;
    app.publish("/stream/news", &last.to_string(), "last");

    let expected: Vec<String> = (1..=last).map(|n| n.to_string()).collect();
    for subscriber in subscribers {
        let followed = tokio::time::timeout(PATIENCE, subscriber)
            .await
            .expect("every subscriber got the last event")
            .unwrap();
        assert_eq!(followed.ids, expected, "lost, doubled or out of order");
        // The old process ended its stream cleanly, after a retry: (the
        // opening one, then the jittered one).
        assert!(followed.clean_ends >= 1);
        let first = String::from_utf8(followed.first_stream.unwrap()).unwrap();
        assert_eq!(first.matches("retry:").count(), 2, "{first}");
    }
    stop_requesting.store(true, Ordering::Relaxed);
    for requester in requesters {
        let answered = requester.await.expect("no request failed");
        assert!(answered > 0);
    }
    let checks = health_checks.await.expect("no health check was refused");
    assert!(checks > 0);
    // The admin address went over with the listeners: the successor answers.
    assert_eq!(admin_get(proxy.admin_addr, "/readyz").await.unwrap(), 200);
}

/// Sends `GET /page` on a connection opened earlier and returns everything
/// that came back until the proxy closed it.
async fn ask_for_the_page<S>(connection: &mut S) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    connection
        .write_all(b"GET /page HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, connection.read(&mut buf))
            .await
            .expect("an answer in time")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_accepted_before_a_stop_is_still_answered() {
    let app = SseApp::start().await;
    let mut proxy =
        Proxy::start_with_server(app.addr, "grace_period = \"3s\"\ndrain = \"1s\"", TOPICS);
    // Connections the proxy accepted whose clients have not sent their
    // request yet (as one accepted an instant before a stop, or before the
    // listeners went to a successor, which never sees it).
    let mut plain = Vec::new();
    for _ in 0..3 {
        plain.push(TcpStream::connect(proxy.plain_addr).await.unwrap());
    }
    let mut tls = Vec::new();
    for _ in 0..2 {
        tls.push(common::client::tls_stream(proxy.tls_addr, &proxy.certs, &["http/1.1"]).await);
    }
    proxy
        .wait_for_stats("5 connections open", |stats| {
            stats["connections"]["open"] == 5
        })
        .await;

    proxy.terminate();
    wait_until_draining(&proxy).await;
    for connection in &mut plain {
        let answer = ask_for_the_page(connection).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("plain\n"),
            "{answer:?}"
        );
    }
    for connection in &mut tls {
        let answer = ask_for_the_page(connection).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("plain\n"),
            "{answer:?}"
        );
    }
    assert!(proxy.wait_exit().success());
}
