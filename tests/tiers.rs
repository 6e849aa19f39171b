//! Tiers: an sse-fanout whose topic's upstream is another sse-fanout's
//! topic, against the real binaries over real sockets.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::sse_app::SseApp;
use common::sse_client::EventStream;
use common::Proxy;
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
