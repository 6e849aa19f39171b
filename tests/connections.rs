//! Connections, before and between requests: which protocol a connection
//! speaks, how long it may stay silent or slow, how many one address may
//! hold, and the signals the process takes, over real sockets against the
//! real binary.

mod common;

use common::sse_app::SseApp;
use common::sse_client::EventStream;
use common::Proxy;
use sse_fanout::sse::Item;

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
