//! Reloading the config on `SIGHUP`, against the real binary with real
//! signals, real sockets and real TLS: what changed applies, and no stream
//! the change does not concern ends.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::client::{self, Client};
use common::sse_app::SseApp;
use common::sse_client::EventStream;
use common::{run_cli, Proxy, TestCerts, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NEWS: &str = r#"
[[topic]]
path = "/events/news"
upstream = "/stream/news"
"#;

const SPORTS: &str = r#"
[[topic]]
path = "/events/sports"
upstream = "/stream/sports"
"#;

/// The file the proxy was started with (and reloads).
fn config_path(proxy: &Proxy) -> PathBuf {
    proxy.dir().join("sse-fanout.toml")
}

/// The proxy's config file as it is now.
fn config_text(proxy: &Proxy) -> String {
    std::fs::read_to_string(config_path(proxy)).unwrap()
}

/// Replaces the proxy's config file with `text`.
fn write_config(proxy: &Proxy, text: &str) {
    std::fs::write(config_path(proxy), text).unwrap();
}

/// Replaces the certificate files the proxy's TLS listener names.
fn write_certificate(proxy: &Proxy, certs: &TestCerts) {
    std::fs::write(proxy.dir().join("chain.pem"), &certs.chain_pem).unwrap();
    std::fs::write(proxy.dir().join("key.pem"), &certs.key_pem).unwrap();
}

/// `GET path` from the admin listener: the body.
async fn admin_get(proxy: &Proxy, path: &str) -> String {
    let mut client = Client::h1(proxy.admin_addr).await;
    let body = client::body_bytes(client.get(path).await).await;
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of the `/metrics` series `series` (name and labels, as
/// written), if it is there.
async fn metric(proxy: &Proxy, series: &str) -> Option<f64> {
    let text = admin_get(proxy, "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
}

/// Sends `SIGHUP` and waits until the reload it asks for is over: counted
/// as `result` (`ok` or `failed`) for the `n`th time.
async fn reload(proxy: &Proxy, result: &str, n: f64) {
    proxy.signal("HUP");
    let series = format!("sse_fanout_reloads_total{{result=\"{result}\"}}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(proxy, &series).await != Some(n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload counted as {result}:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP/1.1 subscriber on its own connection to `addr`: reads until
/// `until` arrives (`Ok`, with all it read) or the stream ends first (`Err`).
async fn subscribe_until(addr: SocketAddr, path: &str, until: &str) -> Result<String, String> {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if text.contains(until) {
            return Ok(text);
        }
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return Err(text),
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether a new TLS handshake with the proxy succeeds for a client that
/// trusts only `certs`' authority.
async fn handshake_trusting(proxy: &Proxy, certs: &TestCerts) -> bool {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(certs.root_store())
        .with_no_client_auth();
    let tcp = TcpStream::connect(proxy.tls_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_topic_and_swaps_the_certificate_without_ending_a_stream() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, NEWS);
    let subscribers: Vec<_> = (0..200)
        .map(|_| {
            let addr = proxy.plain_addr;
            tokio::spawn(async move { subscribe_until(addr, "/events/news", "after").await })
        })
        .collect();
    // One more over TLS and HTTP/2: its connection keeps the old certificate.
    let mut tls_client = proxy.h2().await;
    let mut tls_stream = EventStream::open(&mut tls_client, "/events/news", None).await;
    proxy.wait_for_subscribers("/events/news", 201).await;
    let old_certs = &proxy.certs;
    let new_certs = TestCerts::generate();
    assert!(!handshake_trusting(&proxy, &new_certs).await);

    write_certificate(&proxy, &new_certs);
    write_config(&proxy, &format!("{}{SPORTS}", config_text(&proxy)));
    reload(&proxy, "ok", 1.0).await;

    // No stream ended: every subscriber gets what comes next.
    app.publish("/stream/news", "2", "after the reload");
    for subscriber in subscribers {
        let received = tokio::time::timeout(PATIENCE, subscriber)
            .await
            .expect("every subscriber got the event")
            .unwrap();
        assert!(received.is_ok(), "a stream ended: {received:?}");
    }
    let event = tls_stream.next_message().await.unwrap();
    assert_eq!(event.data(), Some("after the reload"));
    // The untouched topic kept its one upstream stream.
    assert_eq!(app.requests_for("/stream/news").len(), 1);
    // The new topic serves.
    let sports = tokio::spawn(subscribe_until(proxy.plain_addr, "/events/sports", "goal"));
    proxy.wait_for_subscribers("/events/sports", 1).await;
    app.publish("/stream/sports", "1", "goal");
    let received = tokio::time::timeout(PATIENCE, sports)
        .await
        .unwrap()
        .unwrap();
    assert!(received.is_ok(), "{received:?}");
    // New handshakes get the new certificate, and only it.
    assert!(handshake_trusting(&proxy, &new_certs).await);
    assert!(!handshake_trusting(&proxy, old_certs).await);
    let log = proxy.log();
    assert!(log.contains("topics added: /events/sports"), "{log}");
}

#[tokio::test]
async fn a_config_that_fails_on_reload_changes_nothing() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, &format!("{NEWS}{SPORTS}"));
    let mut client = proxy.h2().await;
    let mut stream = EventStream::open(&mut client, "/events/news", None).await;
    proxy.wait_for_subscribers("/events/news", 1).await;
    let good = config_text(&proxy);
    // The news topic removed, the app moved, a new certificate: all in a
    // file whose last topic has no upstream.
    let broken = good
        .replace(NEWS, "")
        .replace(&app.addr.to_string(), "127.0.0.1:9")
        + "\n[[topic]]\npath = \"/events/weather\"\n";
    write_config(&proxy, &broken);
    write_certificate(&proxy, &TestCerts::generate());

    reload(&proxy, "failed", 1.0).await;

    // One line naming the file and the key.
    let log = proxy.log();
    let line = log
        .lines()
        .find(|l| l.contains("reload failed"))
        .expect("the failure is logged");
    assert!(line.contains("sse-fanout.toml:"), "{line}");
    assert!(line.contains("topic[1]"), "{line}");
    assert_eq!(
        metric(&proxy, "sse_fanout_reloads_total{result=\"ok\"}").await,
        Some(0.0)
    );
    // The stream goes on, the old certificate still serves new handshakes,
    // the removed topic still serves, the app is still where it was.
    app.publish("/stream/news", "1", "still here");
    assert_eq!(
        stream.next_message().await.unwrap().data(),
        Some("still here")
    );
    let mut fresh = proxy.h2().await;
    let mut late = EventStream::open(&mut fresh, "/events/news", None).await;
    app.publish("/stream/news", "2", "and here");
    assert_eq!(late.next_message().await.unwrap().data(), Some("and here"));
    let response = fresh.get("/ordinary").await;
    assert_ne!(response.status(), 502);
    assert_eq!(app.requests_for("/stream/news").len(), 1);
}

#[tokio::test]
async fn a_removed_topic_ends_its_streams_after_a_retry_and_others_stay() {
    let app = SseApp::start().await;
    let proxy = Proxy::start_with_server(
        app.addr,
        "grace_period = \"3s\"\ndrain = \"1s\"",
        &format!("{NEWS}{SPORTS}"),
    );
    let news = tokio::spawn(subscribe_until(proxy.plain_addr, "/events/news", "after"));
    let sports = tokio::spawn(subscribe_until(proxy.plain_addr, "/events/sports", "never"));
    proxy.wait_for_subscribers("/events/news", 1).await;
    proxy.wait_for_subscribers("/events/sports", 1).await;

    write_config(&proxy, &config_text(&proxy).replace(SPORTS, ""));
    reload(&proxy, "ok", 1.0).await;

    // The removed topic's stream ends cleanly, with a retry: first.
    let ended = tokio::time::timeout(PATIENCE, sports)
        .await
        .expect("the removed topic's stream ended")
        .unwrap()
        .expect_err("the stream ended before any event");
    assert_eq!(ended.matches("retry:").count(), 2, "{ended}");
    assert!(ended.ends_with("0\r\n\r\n"), "not a clean end: {ended:?}");
    // Its path is no topic any more: an ordinary request, proxied.
    let mut client = Client::h1(proxy.plain_addr).await;
    let _response = client.get("/events/sports").await;
    app.wait_for_requests("/events/sports", 1).await;
    // The other topic goes on.
    app.publish("/stream/news", "1", "after");
    assert!(tokio::time::timeout(PATIENCE, news)
        .await
        .unwrap()
        .unwrap()
        .is_ok());
    assert_eq!(app.requests_for("/stream/news").len(), 1);
}

#[tokio::test]
async fn a_moved_upstream_reconnects_that_topic_alone_with_its_subscribers_attached() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, &format!("{NEWS}{SPORTS}"));
    let mut client = proxy.h2().await;
    let mut news = EventStream::open(&mut client, "/events/news", None).await;
    let mut sports = EventStream::open(&mut client, "/events/sports", None).await;
    proxy.wait_for_subscribers("/events/news", 1).await;
    proxy.wait_for_subscribers("/events/sports", 1).await;
    app.publish("/stream/news", "1", "from the old stream");
    assert_eq!(news.next_message().await.unwrap().id(), Some("1"));

    write_config(
        &proxy,
        &config_text(&proxy).replace(
            "upstream = \"/stream/news\"",
            "upstream = \"/stream/news-v2\"",
        ),
    );
    reload(&proxy, "ok", 1.0).await;

    app.wait_for_open_streams("/stream/news-v2", 1).await;
    // The new stream is asked to resume where the topic is.
    let asked = app.requests_for("/stream/news-v2");
    assert_eq!(asked[0].header("last-event-id"), Some("1"));
    app.publish("/stream/news-v2", "2", "from the new stream");
    let event = news.next_message().await.unwrap();
    assert_eq!(event.data(), Some("from the new stream"));
    // The other topic kept its stream.
    app.publish("/stream/sports", "1", "untouched");
    assert_eq!(
        sports.next_message().await.unwrap().data(),
        Some("untouched")
    );
    assert_eq!(app.requests_for("/stream/sports").len(), 1);
}

#[tokio::test]
async fn reload_on_the_command_line_checks_the_config_then_signals_the_running_instance() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, NEWS);
    proxy.wait_for_log("signals: ").await;
    let path = config_path(&proxy);
    let path = path.to_str().unwrap();

    write_config(&proxy, &format!("{}{SPORTS}", config_text(&proxy)));
    let output = run_cli(&["-c", path, "--reload"]);
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("asked sse-fanout"), "{said}");
    proxy.wait_for_log("topics added: /events/sports").await;

    // A config that fails is refused before any signal is sent.
    write_config(&proxy, "[[listen]]\naddr = \"nowhere\"\n");
    let output = run_cli(&["-c", path, "--reload"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(
        metric(&proxy, "sse_fanout_reloads_total{result=\"failed\"}").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn reload_on_the_command_line_says_when_nothing_runs() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, NEWS);
    proxy.wait_for_log("signals: ").await;
    let path = config_path(&proxy);
    let pid_file = proxy.dir().join("sse-fanout.pid");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("a process in the foreground writes its pid file")
        .trim()
        .parse()
        .unwrap();
    let mut proxy = proxy;
    assert_eq!(pid, proxy.child_id());
    proxy.terminate();
    proxy.wait_exit();
    assert!(!pid_file.exists(), "the pid file outlived its process");

    let output = run_cli(&["-c", path.to_str().unwrap(), "--reload"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("is sse-fanout running"), "{said}");
}

#[tokio::test]
async fn a_reload_moves_the_app_and_applies_new_limits_from_the_next_request() {
    let app = SseApp::start().await;
    let moved = SseApp::start().await;
    let proxy = Proxy::start(app.addr, NEWS);
    let mut client = proxy.h2().await;
    let mut first = EventStream::open(&mut client, "/events/news", None).await;
    let mut second = EventStream::open(&mut client, "/events/news", None).await;
    proxy.wait_for_subscribers("/events/news", 2).await;

    let text = config_text(&proxy).replace(&app.addr.to_string(), &moved.addr.to_string())
        + "\n[limits]\nmax_subscribers = 2\n";
    write_config(&proxy, &text);
    reload(&proxy, "ok", 1.0).await;

    // Ordinary requests go to where the app is now.
    let response = client.get("/ordinary").await;
    assert_ne!(response.status(), 502);
    moved.wait_for_requests("/ordinary", 1).await;
    assert!(app.requests_for("/ordinary").is_empty());
    // The new cap binds new subscriptions (told to come back later: a
    // retry: and an end); the two open ones stay.
    let mut refused = EventStream::open(&mut client, "/events/news", None).await;
    refused.until_end().await;
    assert!(String::from_utf8_lossy(&refused.raw).contains("retry:"));
    let stats = proxy.stats().await;
    assert_eq!(
        stats["admission"]["refused"]["max_subscribers"], 1,
        "{stats}"
    );
    // The topic's upstream is the app's, so it moved too: its stream
    // reopens at the new address, and both subscribers stay attached.
    moved.wait_for_open_streams("/stream/news", 1).await;
    moved.publish("/stream/news", "1", "from the moved app");
    assert_eq!(
        first.next_message().await.unwrap().data(),
        Some("from the moved app")
    );
    assert_eq!(
        second.next_message().await.unwrap().data(),
        Some("from the moved app")
    );
}

#[tokio::test]
async fn a_changed_listener_is_reported_as_needing_a_restart_and_the_rest_applies() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, NEWS);
    let elsewhere = format!("127.0.0.1:{}", common::free_port());
    let text = config_text(&proxy).replace(&proxy.plain_addr.to_string(), &elsewhere);
    write_config(&proxy, &format!("{text}{SPORTS}"));
    reload(&proxy, "ok", 1.0).await;

    let log = proxy.log();
    assert!(
        log.contains(
            "[[listen]] (addresses, tls on or off, acme settings, proxy_protocol) changed, which takes a restart"
        ),
        "{log}"
    );
    assert!(log.contains("topics added: /events/sports"), "{log}");
    // The old address still serves, the new one is not opened.
    let sports = tokio::spawn(subscribe_until(proxy.plain_addr, "/events/sports", "goal"));
    proxy.wait_for_subscribers("/events/sports", 1).await;
    app.publish("/stream/sports", "1", "goal");
    assert!(tokio::time::timeout(PATIENCE, sports)
        .await
        .unwrap()
        .unwrap()
        .is_ok());
    assert!(TcpStream::connect(&elsewhere).await.is_err());
}

/// `GET /ordinary` with a `x-big` header of `size` bytes on `client`: the
/// status the proxy answers.
async fn status_with_header(client: &mut Client, size: usize) -> u16 {
    let request = client
        .request("GET", "/ordinary")
        .header("x-big", "a".repeat(size))
        .body(Default::default())
        .unwrap();
    match client.send(request).await {
        Ok(response) => response.status().as_u16(),
        // Refused at the HTTP/2 layer (a reset or a 431 from h2 itself).
        Err(_) => 431,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_http2_settings_to_connections_that_start_after_it() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, NEWS);
    let mut before = proxy.h2().await;
    assert_ne!(status_with_header(&mut before, 8 * 1024).await, 431);

    let text = config_text(&proxy) + "\n[limits]\nmax_header_bytes = \"4KiB\"\n";
    write_config(&proxy, &text);
    reload(&proxy, "ok", 1.0).await;

    let log = proxy.log();
    assert!(!log.contains("max_header_bytes"), "{log}");
    // A connection opened after the reload gets the smaller header list.
    let mut after = proxy.h2().await;
    assert_eq!(status_with_header(&mut after, 8 * 1024).await, 431);
    assert_ne!(status_with_header(&mut after, 1024).await, 431);
    // One opened before keeps the settings it was opened with.
    assert_ne!(status_with_header(&mut before, 8 * 1024).await, 431);
}
