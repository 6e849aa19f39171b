//! Topic fan-out: one upstream stream per topic, replay, heartbeats, upstream
//! failures, slow and departing subscribers, over real TLS h2 and h1 against
//! the real binary and a scripted upstream app.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::client::{Client, Protocol};
use common::sse_app::{Answer, SseApp};
use common::sse_client::EventStream;
use common::{free_port, Proxy, PATIENCE};
use sse_fanout::sse::Item;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOPICS: &str = r#"
[sse]
heartbeat = "30s"
retry = "2500ms"
linger = "1s"

[[topic]]
path = "/events/news"
upstream = "/stream/news"

[[topic]]
path = "/events/sports"
upstream = "/stream/sports"

[[topic]]
path = "/events/jobs/{id}"
upstream = "/stream/jobs/{id}"
"#;

/// Topics with a short heartbeat, for tests that watch them.
fn with_heartbeat(interval: &str) -> String {
    TOPICS.replace(
        "heartbeat = \"30s\"",
        &format!("heartbeat = \"{interval}\""),
    )
}

fn ids(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| n.to_string()).collect()
}

fn comments(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Comment(text) => Some(text.clone()),
            Item::Event(_) | Item::Skipped(_) => None,
        })
        .collect()
}

#[tokio::test]
async fn fifty_mixed_h1_and_h2_subscribers_get_identical_bytes_from_one_upstream() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut h2_connections = Vec::new();
    let mut streams = Vec::new();
    for n in 0..25 {
        if n % 5 == 0 {
            h2_connections.push(proxy.h2().await);
        }
        let client = h2_connections.last_mut().unwrap();
        streams.push(EventStream::open(client, "/events/news", None).await);
    }
    let mut h1_clients = Vec::new();
    for _ in 0..25 {
        let mut client = proxy.h1().await;
        assert_eq!(client.protocol, Protocol::Http1);
        streams.push(EventStream::open(&mut client, "/events/news", None).await);
        h1_clients.push(client);
    }
    proxy.wait_for_subscribers("/events/news", 50).await;
    for n in 1..=20 {
        app.publish(
            "/stream/news",
            &n.to_string(),
            &format!("{{\"headline\":{n},\"text\":\"line one\\nline two\"}}"),
        );
    }
    for stream in &mut streams {
        assert_eq!(stream.message_ids(20).await, ids(1..=20));
    }
    let first = streams[0].raw.clone();
    assert!(
        streams.iter().all(|s| s.raw == first),
        "subscribers received different bytes"
    );
    assert_eq!(
        app.requests_for("/stream/news").len(),
        1,
        "more than one upstream request"
    );
    assert_eq!(app.open_streams("/stream/news"), 1);
    let stats = proxy.topic_stats("/events/news").await.unwrap();
    assert_eq!(stats["events_in"], 20);
    assert_eq!(stats["deliveries"], 20 * 50);
}

#[tokio::test]
async fn two_topics_open_exactly_two_upstreams() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let mut news = Vec::new();
    let mut sports = Vec::new();
    for _ in 0..5 {
        news.push(EventStream::open(&mut client, "/events/news", None).await);
        sports.push(EventStream::open(&mut client, "/events/sports", None).await);
    }
    proxy.wait_for_subscribers("/events/news", 5).await;
    proxy.wait_for_subscribers("/events/sports", 5).await;
    app.publish("/stream/news", "n1", "news");
    app.publish("/stream/sports", "s1", "sports");
    for stream in &mut news {
        assert_eq!(stream.next_message().await.unwrap().data(), Some("news"));
    }
    for stream in &mut sports {
        assert_eq!(stream.next_message().await.unwrap().data(), Some("sports"));
    }
    let paths: Vec<String> = app.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(
        paths.contains(&"/stream/news".to_string())
            && paths.contains(&"/stream/sports".to_string())
    );
    let request = &app.requests()[0];
    assert_eq!(request.accept.as_deref(), Some("text/event-stream"));
}

#[tokio::test]
async fn template_instances_get_their_own_upstream_and_are_reclaimed_after_linger() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let mut job1 = EventStream::open(&mut client, "/events/jobs/1", None).await;
    let mut job2 = EventStream::open(&mut client, "/events/jobs/2", None).await;
    proxy.wait_for_subscribers("/events/jobs/1", 1).await;
    proxy.wait_for_subscribers("/events/jobs/2", 1).await;
    app.publish("/stream/jobs/1", "a", "job one at 50%");
    app.publish("/stream/jobs/2", "b", "job two at 10%");
    assert_eq!(
        job1.next_message().await.unwrap().data(),
        Some("job one at 50%")
    );
    assert_eq!(
        job2.next_message().await.unwrap().data(),
        Some("job two at 10%")
    );
    let mut paths: Vec<String> = app.requests().into_iter().map(|r| r.path).collect();
    paths.sort();
    assert_eq!(paths, vec!["/stream/jobs/1", "/stream/jobs/2"]);

    drop((job1, job2, client));
    proxy
        .wait_for_stats("both job topics reclaimed", |s| s["totals"]["topics"] == 0)
        .await;
    app.wait_for_open_streams("/stream/jobs/1", 0).await;
    app.wait_for_open_streams("/stream/jobs/2", 0).await;
}

#[tokio::test]
async fn upstream_restart_loses_no_subscriber_and_no_event_and_doubles_none() {
    let app = SseApp::start().await;
    let addr = app.addr;
    let proxy = Proxy::start(addr, TOPICS);
    let mut h2_client = proxy.h2().await;
    let mut h1_client = proxy.h1().await;
    let mut streams = vec![
        EventStream::open(&mut h2_client, "/events/news", None).await,
        EventStream::open(&mut h1_client, "/events/news", None).await,
    ];
    proxy.wait_for_subscribers("/events/news", 2).await;
    for n in 1..=5 {
        app.publish("/stream/news", &n.to_string(), "before");
    }
    for stream in &mut streams {
        assert_eq!(stream.message_ids(5).await, ids(1..=5));
    }

    // The app goes down; what it produces meanwhile waits in its database.
    let database = app.stop().await;
    for n in 6..=10 {
        database.publish("/stream/news", &n.to_string(), "while down");
    }
    let app = SseApp::start_with(database, addr).await;
    proxy.wait_for_subscribers("/events/news", 2).await;
    for n in 11..=15 {
        app.publish("/stream/news", &n.to_string(), "after");
    }
    for stream in &mut streams {
        assert_eq!(stream.message_ids(10).await, ids(6..=15));
    }
    let resumed = app.requests_for("/stream/news");
    assert_eq!(resumed.last().unwrap().last_event_id.as_deref(), Some("5"));
    assert_eq!(
        proxy.topic_stats("/events/news").await.unwrap()["subscribers"],
        2
    );
}

/// A live topic with events 1..=10 and one subscriber keeping it open.
async fn topic_with_ten_events(app: &SseApp, proxy: &Proxy, client: &mut Client) -> EventStream {
    let mut keeper = EventStream::open(client, "/events/news", None).await;
    proxy.wait_for_subscribers("/events/news", 1).await;
    for n in 1..=10 {
        app.publish("/stream/news", &n.to_string(), &format!("event {n}"));
    }
    assert_eq!(keeper.message_ids(10).await, ids(1..=10));
    keeper
}

#[tokio::test]
async fn resume_with_last_event_id_header_gets_exactly_the_missed_events() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let _keeper = topic_with_ten_events(&app, &proxy, &mut client).await;
    let mut resumed = EventStream::open(&mut client, "/events/news", Some("4")).await;
    assert_eq!(resumed.message_ids(6).await, ids(5..=10));
    app.publish("/stream/news", "11", "live");
    assert_eq!(resumed.message_ids(1).await, ids(11..=11));
    assert_eq!(
        app.requests_for("/stream/news").len(),
        1,
        "resume must not reach the app"
    );
}

#[tokio::test]
async fn resume_with_last_event_id_query_parameter_gets_exactly_the_missed_events() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h1().await;
    let _keeper = topic_with_ten_events(&app, &proxy, &mut client).await;
    let mut other = proxy.h1().await;
    let mut resumed = EventStream::open(&mut other, "/events/news?lastEventId=7", None).await;
    assert_eq!(resumed.message_ids(3).await, ids(8..=10));
    app.publish("/stream/news", "11", "live");
    assert_eq!(resumed.message_ids(1).await, ids(11..=11));
}

#[tokio::test]
async fn last_event_id_neither_window_nor_app_knows_gets_a_comment_then_the_whole_window() {
    let app = SseApp::start().await;
    app.refuse_unknown_ids(404);
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let _keeper = topic_with_ten_events(&app, &proxy, &mut client).await;
    let mut resumed = EventStream::open(&mut client, "/events/news", Some("no-such-id")).await;
    // The catch-up the app refuses comes first; then the policy applies.
    let mut opening = Vec::new();
    while !comments(&opening)
        .iter()
        .any(|c| c.contains("resume point"))
    {
        opening.push(resumed.next_item().await.unwrap());
    }
    let said = comments(&opening);
    assert!(
        said.iter()
            .any(|c| c.contains("resume point") && c.contains("no-such-id")),
        "{said:?}"
    );
    assert_eq!(resumed.message_ids(10).await, ids(1..=10));
}

#[tokio::test]
async fn last_event_id_neither_window_nor_app_knows_with_live_policy_gets_only_live_events() {
    let app = SseApp::start().await;
    app.refuse_unknown_ids(404);
    // Appended after TOPICS, the key belongs to its last [[topic]]: the jobs template.
    let proxy = Proxy::start(app.addr, &format!("{TOPICS}resume_lost = \"live\"\n"));
    let mut client = proxy.h2().await;
    let mut keeper = EventStream::open(&mut client, "/events/jobs/9", None).await;
    proxy.wait_for_subscribers("/events/jobs/9", 1).await;
    app.publish("/stream/jobs/9", "1", "old");
    keeper.message_ids(1).await;
    let mut resumed = EventStream::open(&mut client, "/events/jobs/9", Some("gone")).await;
    app.publish("/stream/jobs/9", "2", "new");
    assert_eq!(resumed.message_ids(1).await, vec!["2".to_string()]);
}

#[tokio::test]
async fn late_joiner_is_primed_with_the_last_id_and_gets_the_retry() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let _keeper = topic_with_ten_events(&app, &proxy, &mut client).await;
    let mut late = EventStream::open(&mut client, "/events/news", None).await;
    // One opening block: the retry and the priming id together.
    let Some(Item::Event(priming)) = late.next_item().await else {
        panic!("no opening block")
    };
    assert_eq!(priming.retry(), Some(2500));
    assert_eq!(priming.id(), Some("10"));
    assert_eq!(priming.data(), None, "priming must not fire an event");
    app.publish("/stream/news", "11", "live");
    assert_eq!(late.message_ids(1).await, ids(11..=11));
}

/// Heartbeats arrive on a silent topic, over the wire; their spacing (one
/// per silent interval, postponed by events) is tested with a paused clock
/// in `src/hub/mod.rs`.
#[tokio::test]
async fn silent_topic_sends_heartbeats() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, &with_heartbeat("300ms"));
    let mut client = proxy.h2().await;
    let mut stream = EventStream::open(&mut client, "/events/news", None).await;
    let mut heartbeats = 0;
    while heartbeats < 2 {
        if let Some(Item::Comment(text)) = stream.next_item().await {
            if text.is_empty() {
                heartbeats += 1;
            }
        }
    }
}

#[tokio::test]
async fn heartbeats_never_land_inside_an_event_split_across_small_writes() {
    let app = SseApp::start().await;
    app.split_writes(4, Duration::from_millis(30));
    let proxy = Proxy::start(app.addr, &with_heartbeat("100ms"));
    let mut client = proxy.h1().await;
    let mut stream = EventStream::open(&mut client, "/events/news", None).await;
    proxy.wait_for_subscribers("/events/news", 1).await;
    for n in 1..=3 {
        app.publish(
            "/stream/news",
            &n.to_string(),
            "a multi-line\nevent that takes\nwell over a heartbeat to arrive",
        );
    }
    assert_eq!(stream.message_ids(3).await, ids(1..=3));
    let text = String::from_utf8(stream.raw.clone()).unwrap();
    // A heartbeat is a lone `:` line, never followed by a blank line.
    let heartbeats = text.lines().filter(|line| *line == ":").count();
    assert!(
        heartbeats >= 1,
        "no heartbeat was due during the slow events: {text:?}"
    );
    assert!(
        !text.contains(":\n\n"),
        "a heartbeat with a blank line: {text:?}"
    );
    // Heartbeats come between events: never after an event's first line
    // (`id:`) and before the blank line that ends it.
    for block in text.split("\n\n") {
        let lines: Vec<&str> = block.lines().collect();
        if let Some(start) = lines.iter().position(|l| l.starts_with("id:")) {
            assert!(
                lines[start..].iter().all(|l| !l.starts_with(':')),
                "heartbeat inside an event: {block:?}"
            );
        }
    }
}

#[tokio::test]
async fn app_down_at_first_subscriber_gets_200_and_heartbeats_then_events() {
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = Proxy::start(addr, &with_heartbeat("200ms"));
    let mut client = proxy.h2().await;
    let mut stream = EventStream::open(&mut client, "/events/news", None).await;
    let mut heartbeats = 0;
    while heartbeats < 2 {
        if let Some(Item::Comment(text)) = stream.next_item().await {
            heartbeats += usize::from(text != " ok");
        }
    }
    let stats = proxy.topic_stats("/events/news").await.unwrap();
    assert_ne!(stats["upstream_state"], "connected", "{stats}");
    let app = SseApp::start_with(Default::default(), addr).await;
    proxy.wait_for_subscribers("/events/news", 1).await;
    app.publish("/stream/news", "1", "the app is up");
    assert_eq!(
        stream.next_message().await.unwrap().data(),
        Some("the app is up")
    );
}

#[tokio::test]
async fn upstream_errors_keep_subscribers_connected_until_the_stream_returns() {
    let app = SseApp::start().await;
    app.answer("/stream/news", Answer::Status(503));
    // A wrong content type is retried only after the longest backoff.
    let proxy = Proxy::start(
        app.addr,
        &with_heartbeat("200ms\"\nupstream_backoff_max = \"1s"),
    );
    let mut client = proxy.h1().await;
    let mut stream = EventStream::open(&mut client, "/events/news", None).await;
    let stats = proxy
        .wait_for_stats("the upstream's 503", |s| {
            s["topics"][0]["upstream_error"]
                .as_str()
                .is_some_and(|e| e.contains("503"))
        })
        .await;
    assert_eq!(stats["topics"][0]["subscribers"], 1);
    app.answer("/stream/news", Answer::WrongContentType);
    proxy
        .wait_for_stats("the wrong content type", |s| {
            s["topics"][0]["upstream_error"]
                .as_str()
                .is_some_and(|e| e.contains("text/plain"))
        })
        .await;
    app.answer("/stream/news", Answer::Stream);
    proxy.wait_for_subscribers("/events/news", 1).await;
    app.publish("/stream/news", "1", "recovered");
    assert_eq!(
        stream.next_message().await.unwrap().data(),
        Some("recovered")
    );
    // Failing once, recovering once: one warning, however many retries.
    let log = proxy.log();
    assert_eq!(
        log.matches(" lost: ").count(),
        1,
        "failure logged more than once:\n{log}"
    );
    assert_eq!(log.matches("connected again").count(), 1, "{log}");
}

#[tokio::test]
async fn silent_upstream_is_reopened_from_the_topics_last_id_and_nothing_is_doubled() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(
        app.addr,
        &with_heartbeat("200ms\"\nupstream_idle_timeout = \"500ms"),
    );
    let mut client = proxy.h2().await;
    let mut stream = EventStream::open(&mut client, "/events/news", None).await;
    proxy.wait_for_subscribers("/events/news", 1).await;
    app.publish("/stream/news", "1", "before the silence");
    assert_eq!(stream.message_ids(1).await, ids(1..=1));
    // The app says nothing more, not even a comment (as a stream a NAT
    // dropped would): the proxy reopens it from the topic's last id.
    proxy
        .wait_for_stats("the silent stream reopened", |s| {
            s["topics"][0]["upstream_connects"] == 2
        })
        .await;
    let reopened = &app.requests_for("/stream/news")[1];
    assert_eq!(reopened.last_event_id.as_deref(), Some("1"));
    proxy.wait_for_subscribers("/events/news", 1).await;
    app.publish("/stream/news", "2", "after");
    assert_eq!(stream.message_ids(1).await, ids(2..=2));
}

/// Whether a TCP connection from a local port to `remote_port` on 127.0.0.1
/// has its keepalive timer running (Linux's `/proc/net/tcp`, timer kind 2).
fn keepalive_to(remote_port: u16) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let remote = format!("0100007F:{remote_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // rem_address, state (01: established), tr:tm->when
        (fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"01"))
            .then(|| fields.get(5).is_some_and(|timer| timer.starts_with("02:")))
    })
}

#[tokio::test]
async fn upstream_connections_keep_tcp_alive_so_a_vanished_app_is_noticed() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let _stream = EventStream::open(&mut client, "/events/news", None).await;
    proxy.wait_for_subscribers("/events/news", 1).await;
    assert_eq!(keepalive_to(app.addr.port()), Some(true));
}

#[tokio::test]
async fn compressed_upstream_is_an_error_said_once_never_a_silent_stall() {
    let app = SseApp::start().await;
    app.answer("/stream/news", Answer::Gzipped);
    let proxy = Proxy::start(
        app.addr,
        &with_heartbeat("200ms\"\nupstream_backoff_max = \"200ms"),
    );
    let mut client = proxy.h2().await;
    let mut stream = EventStream::open(&mut client, "/events/news", None).await;
    proxy
        .wait_for_stats("the compressed answer refused", |s| {
            s["topics"][0]["upstream_error"]
                .as_str()
                .is_some_and(|e| e.contains("Content-Encoding \"gzip\""))
        })
        .await;
    assert_eq!(
        app.requests_for("/stream/news")[0].header("accept-encoding"),
        Some("identity")
    );
    app.wait_for_requests("/stream/news", 3).await;
    assert_eq!(
        proxy.log().matches("Content-Encoding").count(),
        1,
        "{}",
        proxy.log()
    );
    // Once the app streams plainly, the topic flows.
    app.answer("/stream/news", Answer::Stream);
    proxy.wait_for_subscribers("/events/news", 1).await;
    app.publish("/stream/news", "1", "plain");
    assert_eq!(stream.message_ids(1).await, ids(1..=1));
}

#[tokio::test]
async fn upstream_204_ends_the_topic_and_new_subscribers_get_204() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let mut stream = EventStream::open(&mut client, "/events/jobs/5", None).await;
    proxy.wait_for_subscribers("/events/jobs/5", 1).await;
    app.publish("/stream/jobs/5", "100", "done");
    assert_eq!(stream.next_message().await.unwrap().data(), Some("done"));
    // The job is over: the app restarts and answers 204 from now on.
    app.answer("/stream/jobs/5", Answer::Status(204));
    let addr = app.addr;
    let _app = SseApp::start_with(app.stop().await, addr).await;
    stream.until_end().await;
    assert!(stream.ended, "stream did not end cleanly");
    let response = client.get("/events/jobs/5").await;
    assert_eq!(response.status(), 204);
}

#[tokio::test]
async fn eager_topic_that_got_204_is_asked_again_after_its_linger() {
    let app = SseApp::start().await;
    app.answer("/stream/news", Answer::Status(204));
    let config = TOPICS.replace(
        "path = \"/events/news\"\nupstream = \"/stream/news\"\n",
        "path = \"/events/news\"\nupstream = \"/stream/news\"\neager = true\n",
    );
    let proxy = Proxy::start(app.addr, &config);
    proxy
        .wait_for_stats("the eager topic ended", |s| {
            s["topics"][0]["upstream_state"] == "ended"
        })
        .await;
    // The app has something to say again: within the linger (1s) the
    // proxy asks once more, rather than never until a restart.
    app.answer("/stream/news", Answer::Stream);
    proxy
        .wait_for_stats("the eager topic reopened", |s| {
            s["topics"][0]["upstream_state"] == "connected"
        })
        .await;
    let mut client = proxy.h2().await;
    let mut stream = EventStream::open(&mut client, "/events/news", None).await;
    proxy.wait_for_subscribers("/events/news", 1).await;
    app.publish("/stream/news", "1", "back");
    assert_eq!(stream.message_ids(1).await, ids(1..=1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_that_never_reads_is_cut_off_while_others_get_everything() {
    let app = SseApp::start().await;
    let config = TOPICS.replace(
        "[[topic]]\npath = \"/events/news\"\nupstream = \"/stream/news\"\n",
        "[[topic]]\npath = \"/events/news\"\nupstream = \"/stream/news\"\nreplay = 1000\nreplay_bytes = \"16MiB\"\nmax_lag = 500\nmax_lag_bytes = \"1MiB\"\nmax_event_size = \"64KiB\"\n",
    );
    let proxy = Proxy::start(app.addr, &config);
    let mut client = proxy.h2().await;
    let mut reader = EventStream::open(&mut client, "/events/news", None).await;

    // A raw HTTP/1.1 subscriber with a tiny receive buffer that never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(proxy.plain_addr).await.unwrap();
    stuck
        .write_all(
            b"GET /events/news HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
    proxy.wait_for_subscribers("/events/news", 2).await;

    // Published ten at a time, each ten read by the good reader before the
    // next: the stuck one falls behind, the reader never does.
    let payload = "x".repeat(8 * 1024);
    for batch in 0..100 {
        let first = batch * 10 + 1;
        for n in first..first + 10 {
            app.publish("/stream/news", &n.to_string(), &payload);
        }
        assert_eq!(reader.message_ids(10).await, ids(first..=first + 9));
    }
    let stats = proxy
        .wait_for_stats("the stuck subscriber's closure", |s| {
            s["topics"][0]["slow_closures"] == 1 && s["topics"][0]["subscribers"] == 1
        })
        .await;
    assert!(stats["topics"][0]["deliveries"].as_u64().unwrap() >= 1000);
    drop(stuck);
}

#[tokio::test]
async fn client_that_stops_reading_a_quiet_topic_is_cut_off_after_two_heartbeats() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, &with_heartbeat("300ms"));
    let mut client = proxy.h2().await;
    let _reader = EventStream::open(&mut client, "/events/news", None).await;
    // A window of zero: the proxy may send this client no data at all, so
    // even its first frame (the retry:) never completes, and on a quiet
    // topic its lag never grows.
    let stuck = common::client::raw_h2(proxy.tls_addr, &proxy.certs, Some(0)).await;
    let request = http::Request::builder()
        .uri(format!(
            "https://localhost:{}/events/news",
            proxy.tls_addr.port()
        ))
        .body(())
        .unwrap();
    let (response, _) = stuck
        .ready()
        .await
        .unwrap()
        .send_request(request, true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let _never_read = response.into_body();
    proxy
        .wait_for_stats("the stuck subscriber cut off", |s| {
            s["topics"][0]["write_timeouts"] == 1 && s["topics"][0]["subscribers"] == 1
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_come_and_go_and_the_upstream_closes_after_linger() {
    let app = SseApp::start().await;
    // A thousand subscriptions from one address as fast as they open.
    let limits = "[limits]\nsubscribe_rate_per_ip = 100000\n";
    let proxy = Proxy::start(app.addr, &format!("{limits}{TOPICS}"));
    let mut clients = Vec::new();
    let mut streams = Vec::new();
    for n in 0..1000 {
        if n % 100 == 0 {
            clients.push(Client::h2c(proxy.plain_addr).await);
        }
        streams.push(EventStream::open(clients.last_mut().unwrap(), "/events/news", None).await);
    }
    proxy.wait_for_subscribers("/events/news", 1000).await;
    assert_eq!(app.open_streams("/stream/news"), 1);
    drop(streams);
    drop(clients);
    proxy
        .wait_for_stats("every subscriber gone", |s| s["totals"]["subscribers"] == 0)
        .await;
    proxy
        .wait_for_stats("the topic reclaimed after its linger", |s| {
            s["totals"]["topics"] == 0
        })
        .await;
    app.wait_for_open_streams("/stream/news", 0).await;
    assert_eq!(app.requests_for("/stream/news").len(), 1);
}

#[tokio::test]
async fn closed_subscriber_is_freed_without_waiting_for_an_event() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let stream = EventStream::open(&mut client, "/events/news", None).await;
    let mut plain = tokio::net::TcpStream::connect(proxy.plain_addr)
        .await
        .unwrap();
    plain
        .write_all(b"GET /events/news HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    plain.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    proxy.wait_for_subscribers("/events/news", 2).await;
    drop(stream); // HTTP/2: RST_STREAM on an open connection
    proxy
        .wait_for_stats("the h2 subscriber gone", |s| {
            s["topics"][0]["subscribers"] == 1
        })
        .await;
    drop(plain); // HTTP/1.1: TCP close
    proxy
        .wait_for_stats("the h1 subscriber gone", |s| {
            s["topics"][0]["subscribers"] == 0
        })
        .await;
    assert_eq!(
        proxy.topic_stats("/events/news").await.unwrap()["events_in"],
        0
    );
    drop(client);
}

#[tokio::test]
async fn subscription_headers_are_right_for_h2_and_h1() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    for protocol in ["h2", "http/1.1"] {
        let mut client = Client::tls(proxy.tls_addr, &proxy.certs, &[protocol]).await;
        let response = client.get("/events/news").await;
        let headers = response.headers();
        assert_eq!(response.status(), 200);
        assert_eq!(headers["content-type"], "text/event-stream");
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["x-accel-buffering"], "no");
        assert!(headers.get("content-length").is_none());
        assert!(headers.get("content-encoding").is_none());
        if protocol == "http/1.1" {
            assert_eq!(headers["transfer-encoding"], "chunked");
        } else {
            for name in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
                assert!(headers.get(name).is_none(), "{name} on HTTP/2");
            }
        }
    }
}

#[tokio::test]
async fn http1_connection_serves_an_ordinary_request_then_a_subscription() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    // One keep-alive connection: a page, then an EventSource on it.
    let mut client = proxy.h1().await;
    let page = common::client::body_bytes(client.get("/index.html").await).await;
    assert_eq!(page, "plain\n");
    let mut stream = EventStream::open(&mut client, "/events/news", None).await;
    proxy.wait_for_subscribers("/events/news", 1).await;
    app.publish("/stream/news", "1", "same connection");
    assert_eq!(
        stream.next_message().await.unwrap().data(),
        Some("same connection")
    );
}

#[tokio::test]
async fn other_methods_on_a_topic_path_get_405() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let request = client
        .request("POST", "/events/news")
        .body(Default::default())
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET");
    assert!(app.requests().is_empty());
}

#[tokio::test]
async fn sigterm_ends_every_stream_cleanly() {
    let app = SseApp::start().await;
    let mut proxy = Proxy::start(app.addr, TOPICS);
    let mut h2_client = proxy.h2().await;
    let mut h1_client = proxy.h1().await;
    let mut streams = vec![
        EventStream::open(&mut h2_client, "/events/news", None).await,
        EventStream::open(&mut h1_client, "/events/news", None).await,
    ];
    proxy.wait_for_subscribers("/events/news", 2).await;
    proxy.terminate();
    for stream in &mut streams {
        stream.until_end().await; // panics if the stream breaks instead of ending
        assert!(stream.ended);
    }
    assert!(proxy.wait_exit().success());
}

/// Issue 10, hole 3: an event over `max_event_size` used to fail the parser;
/// the reader reconnected with the `Last-Event-ID` before it, the app
/// replayed the same event, and the topic looped on it forever. Now the
/// event is skipped, the events after it flow, and the app is asked once.
#[tokio::test]
async fn oversized_upstream_event_is_skipped_and_the_topic_goes_on() {
    let app = SseApp::start().await;
    let config = with_heartbeat("200ms").replace(
        "linger = \"1s\"",
        "linger = \"1s\"\nmax_event_size = \"1KiB\"\nmax_lag_bytes = \"1KiB\"",
    );
    let proxy = Proxy::start(app.addr, &config);
    let mut client = proxy.h2().await;
    let mut stream = EventStream::open(&mut client, "/events/news", None).await;
    proxy.wait_for_subscribers("/events/news", 1).await;
    app.wait_for_open_streams("/stream/news", 1).await;
    app.publish("/stream/news", "1", "fits");
    app.publish("/stream/news", "2", &"y".repeat(4096));
    app.publish("/stream/news", "3", "fits too");
    // Heartbeats keep the stream busy, so bound the wait for the events.
    let received = tokio::time::timeout(PATIENCE, stream.message_ids(2))
        .await
        .expect("the events after the oversized one never arrived");
    assert_eq!(received, ["1", "3"]);
    assert_eq!(app.requests_for("/stream/news").len(), 1);
    let stats = proxy.topic_stats("/events/news").await.unwrap();
    assert_eq!(stats["subscribers"], 1, "{stats}");
    assert_eq!(stats["events_skipped"], 1, "{stats}");
    assert_eq!(
        stats["upstream_connects"], 1,
        "the stream was reopened: {stats}"
    );
    let log = proxy.log();
    assert_eq!(log.matches("over the topic's bounds").count(), 1, "{log}");
}
