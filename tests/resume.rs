//! Resuming with `Last-Event-ID`: a client's resume point is its own
//! business. It decides where that client starts and never what the topic's
//! shared upstream asks for or what other subscribers get; a resume point the
//! window cannot serve is caught up from the app for that id alone, then
//! spliced into the topic with nothing lost and nothing doubled, whatever the
//! order in which resumers and events arrive.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::sse_app::SseApp;
use common::sse_client::EventStream;
use common::Proxy;
use sse_fanout::sse::Item;

const TOPICS: &str = r#"
[sse]
heartbeat = "30s"
retry = "2500ms"
linger = "1s"

[[topic]]
path = "/events/news"
upstream = "/stream/news"
"#;

fn ids(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| n.to_string()).collect()
}

fn comments(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Comment(text) => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// The `Last-Event-ID` of every request the app got for the topic's stream.
fn upstream_ids(app: &SseApp) -> Vec<Option<String>> {
    app.requests_for("/stream/news")
        .into_iter()
        .map(|r| r.last_event_id)
        .collect()
}

#[tokio::test]
async fn an_unusable_last_event_id_from_the_first_subscriber_stops_no_one() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut first_client = proxy.h1().await;
    // %01 cannot be sent in a header: once, it made every upstream attempt fail.
    let mut first =
        EventStream::open(&mut first_client, "/events/news?lastEventId=%01", None).await;
    let mut client = proxy.h2().await;
    let mut second = EventStream::open(&mut client, "/events/news", None).await;
    proxy.wait_for_subscribers("/events/news", 2).await;
    app.publish("/stream/news", "1", "for everyone");
    assert_eq!(second.message_ids(1).await, ids(1..=1));
    assert_eq!(first.message_ids(1).await, ids(1..=1));
    assert_eq!(
        upstream_ids(&app),
        vec![None],
        "a client's id reached the upstream"
    );
    let stats = proxy.topic_stats("/events/news").await.unwrap();
    assert_eq!(stats["resumes_lost"], 1, "{stats}");
}

#[tokio::test]
async fn an_old_last_event_id_is_caught_up_for_its_client_alone() {
    let app = SseApp::start().await;
    for n in 1..=50 {
        app.publish("/stream/news", &n.to_string(), "history");
    }
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let mut resumer = EventStream::open(&mut client, "/events/news", Some("10")).await;
    let mut joiner = EventStream::open(&mut client, "/events/news", None).await;
    proxy.wait_for_subscribers("/events/news", 2).await;
    app.publish("/stream/news", "51", "live");
    assert_eq!(resumer.message_ids(41).await, ids(11..=51));
    // The late joiner gets what is live, not the resumer's history.
    assert_eq!(joiner.message_ids(1).await, ids(51..=51));
    let requests = upstream_ids(&app);
    assert!(
        requests.contains(&None) && requests.contains(&Some("10".into())),
        "the topic's stream must go without the client's id, its catch-up with it: {requests:?}"
    );
    assert_eq!(requests.len(), 2, "{requests:?}");
}

#[tokio::test]
async fn late_joiners_are_never_primed_with_a_clients_last_event_id() {
    let app = SseApp::start().await;
    app.refuse_unknown_ids(404);
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let _attacker = EventStream::open(&mut client, "/events/news", Some("forged")).await;
    proxy.wait_for_subscribers("/events/news", 1).await;
    let mut joiner = EventStream::open(&mut client, "/events/news", None).await;
    let mut opening = Vec::new();
    while !matches!(opening.last(), Some(Item::Comment(_))) {
        opening.push(joiner.next_item().await.unwrap());
    }
    assert!(
        !opening
            .iter()
            .any(|i| matches!(i, Item::Event(e) if e.id() == Some("forged"))),
        "{opening:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumers_at_many_ids_after_a_restart_each_get_exactly_what_they_missed() {
    let app = SseApp::start().await;
    for n in 1..=40 {
        app.publish("/stream/news", &n.to_string(), "before the restart");
    }
    // A fresh proxy (as after a restart): its window is empty.
    let proxy = Proxy::start(app.addr, TOPICS);
    // 200 browsers come back with the last ~20 ids, in no particular order,
    // over a few HTTP/2 connections, while the app goes on publishing.
    let mut resume_points: Vec<u32> = (21..=40).flat_map(|n| [n; 10]).collect();
    fastrand::shuffle(&mut resume_points);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(proxy.h2().await);
    }
    let mut streams = Vec::new();
    for (i, from) in resume_points.iter().enumerate() {
        let client = &mut clients[i % 4];
        let id = from.to_string();
        streams.push((
            *from,
            EventStream::open(client, "/events/news", Some(&id)).await,
        ));
        if i % 20 == 19 {
            let n = 41 + i as u32 / 20;
            app.publish("/stream/news", &n.to_string(), "live");
        }
    }
    // 41..=50 were published while they arrived; ten more once all are in.
    proxy.wait_for_subscribers("/events/news", 200).await;
    for n in 51..=60 {
        app.publish("/stream/news", &n.to_string(), "live");
    }
    for (from, stream) in &mut streams {
        let expected = ids(*from + 1..=60);
        let got = stream.message_ids(expected.len()).await;
        assert_eq!(got, expected, "resumer from {from}");
    }
    let stats = proxy.topic_stats("/events/news").await.unwrap();
    assert_eq!(stats["resumes_lost"], 0, "{stats}");
    // The topic's one stream, and catch-ups from the resume points only.
    let requests = upstream_ids(&app);
    assert_eq!(
        requests.iter().filter(|id| id.is_none()).count(),
        1,
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .flatten()
            .all(|id| id.parse::<u32>().is_ok_and(|n| (21..=40).contains(&n))),
        "{requests:?}"
    );
}

#[tokio::test]
async fn resumers_from_the_same_id_share_one_catch_up() {
    let app = SseApp::start().await;
    for n in 1..=5 {
        app.publish("/stream/news", &n.to_string(), "history");
    }
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let mut resumers = Vec::new();
    for _ in 0..10 {
        resumers.push(EventStream::open(&mut client, "/events/news", Some("3")).await);
    }
    proxy.wait_for_subscribers("/events/news", 10).await;
    app.publish("/stream/news", "6", "live");
    for resumer in &mut resumers {
        assert_eq!(resumer.message_ids(3).await, ids(4..=6));
    }
    let requests = upstream_ids(&app);
    assert_eq!(
        requests
            .iter()
            .filter(|id| id.as_deref() == Some("3"))
            .count(),
        1,
        "{requests:?}"
    );
}

#[tokio::test]
async fn a_resume_point_the_app_cannot_serve_gets_the_lost_resume_policy_alone() {
    let app = SseApp::start().await;
    app.refuse_unknown_ids(410);
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let mut other = EventStream::open(&mut client, "/events/news", None).await;
    proxy.wait_for_subscribers("/events/news", 1).await;
    app.publish("/stream/news", "1", "one");
    assert_eq!(other.message_ids(1).await, ids(1..=1));
    let mut lost = EventStream::open(&mut client, "/events/news", Some("gone")).await;
    // After the stream opens, the catch-up fails (410), and then:
    let mut opening = Vec::new();
    while !comments(&opening)
        .iter()
        .any(|c| c.contains("resume point"))
    {
        opening.push(lost.next_item().await.unwrap());
    }
    assert!(
        comments(&opening)
            .iter()
            .any(|c| c.contains("resume point \"gone\" is no longer available")),
        "{opening:?}"
    );
    // resume_lost = "replay": the whole window, then live.
    assert_eq!(lost.message_ids(1).await, ids(1..=1));
    app.publish("/stream/news", "2", "two");
    assert_eq!(lost.message_ids(1).await, ids(2..=2));
    assert_eq!(other.message_ids(1).await, ids(2..=2));
}

#[tokio::test]
async fn a_resumer_that_missed_nothing_on_a_quiet_topic_continues_live_without_a_comment() {
    let app = SseApp::start().await;
    for n in 1..=5 {
        app.publish("/stream/news", &n.to_string(), "history");
    }
    let proxy = Proxy::start(
        app.addr,
        &TOPICS.replace(
            "linger = \"1s\"",
            "linger = \"1s\"\ncatch_up_timeout = \"1s\"",
        ),
    );
    let mut client = proxy.h2().await;
    let mut resumer = EventStream::open(&mut client, "/events/news", Some("5")).await;
    proxy
        .wait_for_stats("the catch-up to end", |s| {
            s["topics"][0]["catch_ups_spliced"] == 1
        })
        .await;
    app.publish("/stream/news", "6", "live");
    let mut items = Vec::new();
    while !matches!(items.last(), Some(Item::Event(e)) if e.data().is_some()) {
        items.push(resumer.next_item().await.unwrap());
    }
    assert!(
        !comments(&items).iter().any(|c| c.contains("resume point")),
        "{items:?}"
    );
    let Some(Item::Event(event)) = items.last() else {
        unreachable!()
    };
    assert_eq!(event.id(), Some("6"));
}
