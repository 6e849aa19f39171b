//! Tiers: an sse-fanout whose topic's upstream is another sse-fanout's
//! topic, against the real binaries over real sockets.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::client::Client;
use common::sse_app::SseApp;
use common::sse_client::{EventStream, Resuming};
use common::{Proxy, PATIENCE};
use http_body_util::{BodyExt, Full};
use sse_fanout::sse::Item;

const INNER: &str = r#"
[[topic]]
path = "/events/news"
upstream = "/stream/news"
"#;

/// The outer tier takes the inner tier's topic path as its upstream.
const OUTER: &str = r#"
[[topic]]
path = "/events/news"
upstream = "/events/news"
"#;

#[tokio::test]
async fn the_inner_tiers_priming_never_reaches_the_outer_tiers_subscribers_as_a_block() {
    let app = SseApp::start().await;
    let inner = Proxy::start(app.addr, INNER);
    // The inner topic has events before the outer tier joins it late.
    let mut inner_client = inner.h2().await;
    let mut keeper = EventStream::open(&mut inner_client, "/events/news", None).await;
    inner.wait_for_subscribers("/events/news", 1).await;
    for id in ["1", "2", "3"] {
        app.publish("/stream/news", id, "before the outer tier");
    }
    keeper.message_ids(3).await;

    let outer = Proxy::start(inner.plain_addr, OUTER);
    let mut client = outer.h2().await;
    let mut stream = EventStream::open(&mut client, "/events/news", None).await;
    outer.wait_for_subscribers("/events/news", 1).await;
    app.publish("/stream/news", "4", "through both tiers");
    let mut seen = Vec::new();
    loop {
        match stream.next_item().await.expect("the stream goes on") {
            Item::Event(event) => {
                let fired = event.data().is_some();
                seen.push(event);
                if fired {
                    break;
                }
            }
            Item::Comment(_) | Item::Skipped(_) => {}
        }
    }
    // One event, the app's, with its id: no data-less block before it,
    // which clients that dispatch every block would hand on as an empty one.
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].id(), Some("4"));
    assert_eq!(seen[0].data(), Some("through both tiers"));
    // The outer tier took the inner's last id as its own: its late joiners
    // are primed with it, and its reconnects resume from it.
    let mut late = EventStream::open(&mut client, "/events/news", None).await;
    let Some(Item::Event(priming)) = late.next_item().await else {
        panic!("no opening block")
    };
    assert_eq!(priming.id(), Some("4"));
    // The app served one stream: the outer tier rides on the inner's.
    assert_eq!(app.requests_for("/stream/news").len(), 1);
}

/// A subscriber that behaves like a browser's `EventSource` over HTTP/1.1:
/// one parser for its whole life (so its last event id carries over), and
/// after a clean end or a broken connection it comes back, after a short
/// wait, with `Last-Event-ID`. Records the id of every message it is handed.
async fn browser(
    addr: SocketAddr,
    path: &'static str,
    ids: Arc<Mutex<Vec<String>>>,
    until: &'static str,
) {
    let mut browser = Resuming::new();
    loop {
        // (Refused while the proxy restarts: the harness's client would
        // panic on it, so the address is tried first.)
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let mut client = Client::h1(addr).await;
            let mut request = client.request("GET", path);
            if let Some(last) = browser.last_event_id() {
                request = request.header("last-event-id", last);
            }
            let request = request.body(Full::<Bytes>::default()).unwrap();
            if let Ok(response) = client.send(request).await {
                let mut body = response.into_body();
                while let Some(Ok(frame)) = body.frame().await {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    for id in browser.feed(&data) {
                        let done = id == until;
                        ids.lock().unwrap().push(id);
                        if done {
                            return;
                        }
                    }
                }
            }
            browser.connection_ended();
        }
        // The stream ended or broke (a restart): a browser waits its retry
        // (shortened here: the tiers' own is seconds).
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn ids(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| n.to_string()).collect()
}

/// Waits until every subscriber recorded `n` messages.
async fn wait_for_messages(seen: &[Arc<Mutex<Vec<String>>>], n: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while seen.iter().any(|s| s.lock().unwrap().len() < n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every subscriber got {n} messages: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_inner_tier_or_an_outer_one_loses_and_doubles_nothing() {
    let app = SseApp::start().await;
    let mut inner = Proxy::start(app.addr, INNER);
    let mut outers = [
        Proxy::start(inner.plain_addr, OUTER),
        Proxy::start(inner.plain_addr, OUTER),
    ];
    let mut seen = Vec::new();
    let mut browsers = Vec::new();
    for outer in &outers {
        for _ in 0..3 {
            let ids = Arc::new(Mutex::new(Vec::new()));
            seen.push(ids.clone());
            browsers.push(tokio::spawn(browser(
                outer.plain_addr,
                "/events/news",
                ids,
                "9",
            )));
        }
    }
    for outer in &outers {
        outer.wait_for_subscribers("/events/news", 3).await;
    }
    for id in 1..=3u32 {
        app.publish("/stream/news", &id.to_string(), "before");
    }
    wait_for_messages(&seen, 3).await;

    // The inner tier crashes; the app publishes while it is down; it comes
    // back on the same address with an empty window. The outer tiers keep
    // their subscribers and resume from the inner one with their last id,
    // which the new inner tier catches up from the app.
    inner.restart_hard();
    app.publish("/stream/news", "4", "while the inner tier was down");
    app.publish("/stream/news", "5", "while the inner tier was down");
    for outer in &outers {
        outer.wait_for_subscribers("/events/news", 3).await;
    }
    app.publish("/stream/news", "6", "after the inner restart");
    wait_for_messages(&seen, 6).await;

    // An outer tier crashes: its browsers come back to the new process with
    // their last id, which it catches up from the inner tier.
    outers[0].restart_hard();
    app.publish("/stream/news", "7", "while an outer tier was down");
    outers[0].wait_for_subscribers("/events/news", 3).await;
    app.publish("/stream/news", "8", "after the outer restart");
    app.publish("/stream/news", "9", "last");
    for browser in browsers {
        tokio::time::timeout(PATIENCE, browser)
            .await
            .unwrap()
            .unwrap();
    }
    for ids_seen in &seen {
        assert_eq!(*ids_seen.lock().unwrap(), ids(1..=9));
    }
    // The app served the inner tier alone: its stream, and the catch-ups of
    // the resume point the outer tiers came back with.
    assert!(
        app.requests_for("/stream/news").len() <= 4,
        "{:?}",
        app.requests_for("/stream/news").len()
    );
    drop(outers);
}

/// An outer tier that reaches `inner` over TLS and verifies its certificate
/// against `ca_pem` (`[app] ca`), with the folder holding that file (kept
/// while the tier runs).
fn outer_tier_over_tls(inner: &Proxy, ca_pem: &str) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let outer = Proxy::start_with_app(
        &format!("https://127.0.0.1:{}", inner.tls_addr.port()),
        &format!("ca = \"{}\"", ca.display()),
        "grace_period = \"1s\"",
        OUTER,
    );
    (outer, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_tier_passes_events_through_unchanged_and_resumes_after_the_inner_restarts() {
    let app = SseApp::start().await;
    let mut inner = Proxy::start(app.addr, INNER);
    // The outer tier reaches the inner one over TLS and verifies its
    // certificate against the inner's CA (`[app] ca`), not the system's.
    let (outer, _ca) = outer_tier_over_tls(&inner, &inner.certs.ca_pem);
    let mut client = outer.h2().await;
    let mut stream = EventStream::open(&mut client, "/events/news", None).await;
    outer.wait_for_subscribers("/events/news", 1).await;

    // Event name, id, retry and multi-line data, as the app wrote them.
    app.publish_frame(
        "/stream/news",
        "1",
        "event: update\nid: 1\nretry: 2500\ndata: line one\ndata: line two\n\n",
    );
    let event = stream.next_message().await.unwrap();
    assert_eq!(event.event_type(), Some("update"));
    assert_eq!(event.id(), Some("1"));
    assert_eq!(event.retry(), Some(2500));
    assert_eq!(event.data(), Some("line one\nline two"));

    // The inner tier crashes and the app goes on; the outer tier keeps its
    // subscriber and resumes over TLS from its last id.
    inner.restart_hard();
    app.publish("/stream/news", "2", "while the inner tier was down");
    app.publish("/stream/news", "3", "after");
    assert_eq!(stream.message_ids(2).await, ["2", "3"]);
    assert_eq!(
        outer.stats().await["topics"][0]["upstream"],
        format!("https://127.0.0.1:{}/events/news", inner.tls_addr.port())
    );
}

#[tokio::test]
async fn an_outer_tier_that_does_not_trust_the_inner_tiers_ca_does_not_connect() {
    let app = SseApp::start().await;
    let inner = Proxy::start(app.addr, INNER);
    // A CA that did not sign the inner tier's certificate.
    let other = common::TestCerts::generate();
    let (outer, _ca) = outer_tier_over_tls(&inner, &other.ca_pem);
    let mut client = outer.h2().await;
    let _stream = EventStream::open(&mut client, "/events/news", None).await;
    outer
        .wait_for_stats("the inner tier's certificate refused", |s| {
            s["topics"][0]["upstream_error"]
                .as_str()
                .is_some_and(|e| e.contains("TLSHandshakeFailure"))
        })
        .await;
    // Nothing reached the inner tier past the handshake.
    assert_eq!(inner.stats().await["totals"]["subscribers"], 0);
}
