//! Only the right browsers get a topic: subscriber authorization, CORS,
//! caps, bounded inputs and HTTP/2 abuse, over real TLS h2 and h1 against the
//! real binary and a scripted app.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::client::{body_bytes, Client};
use common::sse_app::{Answer, SseApp};
use common::sse_client::{subscribe, EventStream};
use common::{free_port, Proxy, PATIENCE};
use sse_fanout::sse::Item;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A public topic, and per-user topics behind the app's auth endpoint.
const TOPICS: &str = r#"
[sse]
heartbeat = "30s"
retry = "2s"
linger = "1s"

[[topic]]
path = "/events/public"
upstream = "/stream/public"

[[topic]]
path = "/events/users/{id}"
upstream = "/stream/users/{id}"
auth = "/auth/sse"
cors_origins = ["https://app.example"]
upstream_headers = { "X-Shared-Secret" = "s3cret" }
"#;

/// The per-user topic's last keys, appended after TOPICS.
fn with_user_topic(extra: &str) -> String {
    format!("{TOPICS}{extra}\n")
}

/// `[limits]` first, then the topics.
fn with_limits(limits: &str) -> String {
    format!("[limits]\n{limits}\n{TOPICS}")
}

const USER: [(&str, &str); 3] = [
    ("cookie", "session=abc"),
    ("authorization", "Bearer t0ken"),
    ("origin", "https://app.example"),
];

// --- authorization -------------------------------------------------------

#[tokio::test]
async fn admitted_subscriber_is_served_and_the_app_learns_who_asked_for_what() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let mut headers = USER.to_vec();
    headers.push(("last-event-id", "7"));
    let mut stream = EventStream::new(subscribe(&mut client, "/events/users/42", &headers).await);
    proxy.wait_for_subscribers("/events/users/42", 1).await;
    app.publish("/stream/users/42", "8", "for user 42");
    assert_eq!(
        stream.next_message().await.unwrap().data(),
        Some("for user 42")
    );

    let auth = app.requests_for("/auth/sse");
    assert_eq!(auth.len(), 1);
    let auth = &auth[0];
    assert_eq!(auth.header("cookie"), Some("session=abc"));
    assert_eq!(auth.header("authorization"), Some("Bearer t0ken"));
    assert_eq!(auth.header("origin"), Some("https://app.example"));
    assert_eq!(auth.header("x-sse-topic"), Some("/events/users/42"));
    assert_eq!(auth.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(auth.header("last-event-id"), Some("7"));
}

#[tokio::test]
async fn a_last_event_id_no_header_can_carry_never_fails_the_auth_request() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    // %01 decodes to a control character: it may still be looked up in the
    // window, but it is not sent to the auth endpoint (nor upstream).
    let response = subscribe(&mut client, "/events/users/5?lastEventId=%01", &USER).await;
    assert_eq!(response.status(), 200);
    let auth = app.requests_for("/auth/sse");
    assert_eq!(auth.len(), 1);
    assert_eq!(auth[0].header("last-event-id"), None);
    assert!(!proxy.log().contains("auth endpoint"), "{}", proxy.log());
}

#[tokio::test]
async fn upstream_stream_carries_the_shared_secret_and_no_subscriber_credentials() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let _stream = EventStream::new(subscribe(&mut client, "/events/users/9", &USER).await);
    proxy.wait_for_subscribers("/events/users/9", 1).await;
    let upstream = &app.requests_for("/stream/users/9")[0];
    assert_eq!(upstream.header("x-shared-secret"), Some("s3cret"));
    assert_eq!(upstream.header("cookie"), None);
    assert_eq!(upstream.header("authorization"), None);
}

#[tokio::test]
async fn apps_401_and_403_reach_the_subscriber_as_they_are() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    for status in [401u16, 403] {
        app.answer("/auth/sse", Answer::Status(status));
        let mut client = proxy.h2().await;
        // Other credentials each time: decisions are cached per credentials.
        let cookie = format!("session={status}");
        let response = subscribe(&mut client, "/events/users/1", &[("cookie", &cookie)]).await;
        assert_eq!(response.status(), status);
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"test\""
        );
        assert_eq!(body_bytes(response).await, "denied\n");
    }
    assert!(
        app.requests_for("/stream/users/1").is_empty(),
        "a refused subscriber opened the upstream"
    );
}

#[tokio::test]
async fn unreachable_auth_endpoint_refuses_only_its_subscriber_with_503() {
    let app = SseApp::start().await;
    let dead = free_port();
    let proxy = Proxy::start(
        app.addr,
        &TOPICS.replace(
            "auth = \"/auth/sse\"",
            &format!("auth = \"http://127.0.0.1:{dead}/auth\""),
        ),
    );
    let mut client = proxy.h2().await;
    let mut public = EventStream::open(&mut client, "/events/public", None).await;
    proxy.wait_for_subscribers("/events/public", 1).await;

    let refused = subscribe(&mut client, "/events/users/5", &USER).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "2");
    app.publish("/stream/public", "1", "still flowing");
    assert_eq!(
        public.next_message().await.unwrap().data(),
        Some("still flowing")
    );
    assert!(
        proxy.log().contains("auth endpoint http://127.0.0.1:"),
        "{}",
        proxy.log()
    );
}

#[tokio::test]
async fn an_unavailable_auth_endpoint_is_logged_once_counted_and_its_recovery_logged_once() {
    let app = SseApp::start().await;
    let port = free_port();
    let proxy = Proxy::start(
        app.addr,
        &TOPICS.replace(
            "auth = \"/auth/sse\"",
            &format!("auth = \"http://127.0.0.1:{port}/auth\""),
        ),
    );
    let mut client = proxy.h2().await;
    for n in 0..20 {
        let cookie = format!("session={n}");
        let refused = subscribe(&mut client, "/events/users/5", &[("cookie", &cookie)]).await;
        assert_eq!(refused.status(), 503);
    }
    proxy
        .wait_for_stats("20 refusals counted", |s| {
            s["admission"]["refused"]["auth_unavailable"] == 20
        })
        .await;
    let down = |log: &str| log.lines().filter(|l| l.contains("unavailable")).count();
    assert_eq!(down(&proxy.log()), 1, "{}", proxy.log());

    // The endpoint comes back: one line says so, and subscribers are served.
    let auth = AuthApp::start_on(format!("127.0.0.1:{port}").parse().unwrap()).await;
    for n in 0..5 {
        let cookie = format!("session={n}");
        let admitted = subscribe(&mut client, "/events/users/5", &[("cookie", &cookie)]).await;
        assert_eq!(admitted.status(), 200);
    }
    assert_eq!(auth.requests(), 5);
    let log = proxy.log();
    assert_eq!(down(&log), 1, "{log}");
    assert_eq!(
        log.lines().filter(|l| l.contains("answers again")).count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn auth_decisions_are_reused_for_the_same_credentials_and_topic() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, &with_user_topic("auth_cache = \"1m\""));
    let mut client = proxy.h2().await;
    let _a = EventStream::new(subscribe(&mut client, "/events/users/3", &USER).await);
    let _b = EventStream::new(subscribe(&mut client, "/events/users/3", &USER).await);
    assert_eq!(
        app.requests_for("/auth/sse").len(),
        1,
        "second subscription was not served from the cache"
    );

    let other = [("cookie", "session=other")];
    let _c = EventStream::new(subscribe(&mut client, "/events/users/3", &other).await);
    assert_eq!(
        app.requests_for("/auth/sse").len(),
        2,
        "other credentials must be asked for"
    );
    let _d = EventStream::new(subscribe(&mut client, "/events/users/4", &USER).await);
    assert_eq!(
        app.requests_for("/auth/sse").len(),
        3,
        "another topic instance must be asked for"
    );
    // (Expiry is tested in-process with paused time: src/auth.rs.)
}

#[tokio::test]
async fn auth_decisions_are_cached_briefly_by_default() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let _a = EventStream::new(subscribe(&mut client, "/events/users/3", &USER).await);
    let _b = EventStream::new(subscribe(&mut client, "/events/users/3", &USER).await);
    assert_eq!(app.requests_for("/auth/sse").len(), 1);
    proxy
        .wait_for_stats("one cached decision used", |s| {
            s["admission"]["auth"]["asked"] == 1 && s["admission"]["auth"]["cached"] == 1
        })
        .await;
}

#[tokio::test]
async fn with_the_cache_off_every_subscription_is_asked() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, &with_user_topic("auth_cache = \"0s\""));
    let mut client = proxy.h2().await;
    let _a = EventStream::new(subscribe(&mut client, "/events/users/3", &USER).await);
    let _b = EventStream::new(subscribe(&mut client, "/events/users/3", &USER).await);
    assert_eq!(app.requests_for("/auth/sse").len(), 2);
}

#[tokio::test]
async fn auth_requests_reuse_their_connections_to_the_app() {
    let app = SseApp::start().await;
    let auth = AuthApp::start().await;
    let proxy = Proxy::start(
        app.addr,
        &TOPICS.replace(
            "auth = \"/auth/sse\"",
            &format!("auth = \"http://{}/auth\"", auth.addr),
        ),
    );
    let mut client = proxy.h2().await;
    const SUBSCRIPTIONS: usize = 40;
    for n in 0..SUBSCRIPTIONS {
        // Distinct credentials: each one is asked for.
        let cookie = format!("session={n}");
        let response = subscribe(&mut client, "/events/users/1", &[("cookie", &cookie)]).await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(auth.requests(), SUBSCRIPTIONS);
    assert!(
        auth.connections() <= 4,
        "{} connections for {SUBSCRIPTIONS} auth requests",
        auth.connections()
    );
}

// --- CORS ------------------------------------------------------------------

async fn preflight(client: &mut Client, origin: &str) -> http::Response<hyper::body::Incoming> {
    let request = client
        .request("OPTIONS", "/events/users/42")
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "last-event-id")
        .body(Default::default())
        .unwrap();
    client.send(request).await.unwrap()
}

#[tokio::test]
async fn preflight_from_an_allowed_origin_is_answered() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let response = preflight(&mut client, "https://app.example").await;
    assert_eq!(response.status(), 204);
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(headers["access-control-allow-methods"], "GET");
    assert!(headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("Last-Event-ID"));
    assert!(app.requests().is_empty(), "a preflight reached the app");
}

#[tokio::test]
async fn preflight_from_another_origin_gets_no_cors_headers() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = Client::tls(proxy.tls_addr, &proxy.certs, &["http/1.1"]).await;
    let response = preflight(&mut client, "https://evil.example").await;
    assert_eq!(response.status(), 204);
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    assert!(response
        .headers()
        .get("access-control-allow-methods")
        .is_none());
}

#[tokio::test]
async fn credentialed_subscription_names_only_an_allowed_origin() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let allowed = subscribe(&mut client, "/events/users/42", &USER).await;
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    assert_eq!(allowed.headers()["vary"], "Origin");
    let evil = [
        ("cookie", "session=abc"),
        ("origin", "https://evil.example"),
    ];
    let refused = subscribe(&mut client, "/events/users/42", &evil).await;
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    assert!(refused
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
}

#[tokio::test]
async fn proxied_paths_get_no_cors_headers_from_the_proxy() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let request = client
        .request("GET", "/index.html")
        .header("origin", "https://app.example")
        .body(Default::default())
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

// --- caps ------------------------------------------------------------------

#[tokio::test]
async fn total_cap_answers_a_jittered_retry_and_a_clean_end() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, &with_limits("max_subscribers = 2"));
    let mut client = proxy.h2().await;
    let first = EventStream::open(&mut client, "/events/public", None).await;
    let _second = EventStream::open(&mut client, "/events/public", None).await;
    let mut third = EventStream::open(&mut client, "/events/public", None).await;
    let items = third.until_end().await;
    // Nothing an application would see: a retry: line and a comment.
    assert!(
        items.iter().all(|i| matches!(i, Item::Comment(_))),
        "{items:?}"
    );
    let [retry] = third.retries()[..] else {
        panic!("not one retry: {:?}", third.retries())
    };
    assert!(
        (2000..=4000).contains(&retry),
        "retry {retry} is not between 1 and 2 times the topic's"
    );
    assert!(items
        .iter()
        .any(|i| matches!(i, Item::Comment(c) if c.contains("max_subscribers"))));
    drop(first);
    proxy
        .wait_for_stats("a place freed", |s| s["totals"]["subscribers"] == 1)
        .await;
    let mut again = EventStream::open(&mut client, "/events/public", None).await;
    proxy.wait_for_subscribers("/events/public", 2).await;
    app.publish("/stream/public", "1", "room again");
    assert_eq!(
        again.next_message().await.unwrap().data(),
        Some("room again")
    );
}

#[tokio::test]
async fn per_address_caps_are_off_by_default_so_one_address_is_not_throttled() {
    // Every browser behind a balancer or a NAT has one address; a deploy
    // brings them all back at once. 150 subscriptions at once from
    // 127.0.0.1, beyond the old per-address rate of 100/s, are all admitted.
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, &with_limits("over_limit = \"429\""));
    // 6 connections of 25 streams: an h2 client closes a connection with
    // too many small DATA frames unread, and a loaded machine reads late.
    const CONNECTIONS: usize = 6;
    const EACH: usize = 25;
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(raw_h2(&proxy, None).await);
    }
    // Each stream is read as it comes, and kept open until the test ends.
    let (statuses, mut status) = tokio::sync::mpsc::channel(CONNECTIONS * EACH);
    let mut readers = tokio::task::JoinSet::new();
    for connection in &connections {
        for _ in 0..EACH {
            let mut ready = connection.clone().ready().await.unwrap();
            let (response, _) = ready
                .send_request(get(&proxy, "/events/public"), true)
                .unwrap();
            let statuses = statuses.clone();
            readers.spawn(async move {
                let response = match response.await {
                    Ok(response) => response,
                    Err(e) => {
                        let _ = statuses.send(Err(e.to_string())).await;
                        return;
                    }
                };
                let _ = statuses.send(Ok(response.status().as_u16())).await;
                let mut body = response.into_body();
                while let Some(Ok(data)) = body.data().await {
                    let _ = body.flow_control().release_capacity(data.len());
                }
            });
        }
    }
    for _ in 0..CONNECTIONS * EACH {
        let answered = tokio::time::timeout(PATIENCE, status.recv()).await;
        assert_eq!(answered, Ok(Some(Ok(200))));
    }
    proxy
        .wait_for_stats("150 subscribers", |s| {
            s["totals"]["subscribers"] == CONNECTIONS * EACH
        })
        .await;
}

#[tokio::test]
async fn per_address_cap_answers_429_when_configured() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(
        app.addr,
        &with_limits("max_subscribers_per_ip = 1\nover_limit = \"429\""),
    );
    let mut client = proxy.h2().await;
    let _first = EventStream::open(&mut client, "/events/public", None).await;
    let second = subscribe(&mut client, "/events/public", &[]).await;
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "2");
    assert!(String::from_utf8_lossy(&body_bytes(second).await).contains("max_subscribers_per_ip"));
}

#[tokio::test]
async fn a_storm_of_cap_refusals_is_logged_once_and_counted() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(
        app.addr,
        &with_limits("max_subscribers = 1\nover_limit = \"429\""),
    );
    let mut client = proxy.h2().await;
    let _held = EventStream::open(&mut client, "/events/public", None).await;
    for _ in 0..30 {
        let refused = subscribe(&mut client, "/events/public", &[]).await;
        assert_eq!(refused.status(), 429);
    }
    let stats = proxy
        .wait_for_stats("30 refusals counted", |s| {
            s["admission"]["refused"]["max_subscribers"] == 30
        })
        .await;
    assert_eq!(stats["admission"]["binding"][0], "max_subscribers");
    let log = proxy.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("max_subscribers"))
            .count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn per_topic_cap_answers_503_when_configured() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(
        app.addr,
        &with_limits("max_subscribers_per_topic = 1\nover_limit = \"503\""),
    );
    let mut client = proxy.h2().await;
    let _first = EventStream::open(&mut client, "/events/public", None).await;
    let second = subscribe(&mut client, "/events/public", &[]).await;
    assert_eq!(second.status(), 503);
    // Another topic still has room.
    let other = subscribe(&mut client, "/events/users/1", &USER).await;
    assert_eq!(other.status(), 200);
}

#[tokio::test]
async fn template_instances_are_capped_so_ids_cannot_open_unbounded_upstreams() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(
        app.addr,
        &with_limits("max_topic_instances = 2\nover_limit = \"503\""),
    );
    let mut client = proxy.h2().await;
    let _one = EventStream::new(subscribe(&mut client, "/events/users/1", &USER).await);
    let _two = EventStream::new(subscribe(&mut client, "/events/users/2", &USER).await);
    let three = subscribe(&mut client, "/events/users/3", &USER).await;
    assert_eq!(three.status(), 503);
    assert!(String::from_utf8_lossy(&body_bytes(three).await).contains("max_topic_instances"));
    assert!(app.requests_for("/stream/users/3").is_empty());
    // An existing instance still takes subscribers.
    let another = subscribe(&mut client, "/events/users/1", &USER).await;
    assert_eq!(another.status(), 200);
}

#[tokio::test]
async fn subscription_rate_per_address_is_capped() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(
        app.addr,
        &with_limits("subscribe_rate_per_ip = 3\nover_limit = \"429\""),
    );
    let mut client = proxy.h2().await;
    let mut responses = Vec::new();
    for _ in 0..4 {
        // kept, so the admitted streams stay open
        responses.push(subscribe(&mut client, "/events/public", &[]).await);
    }
    let answers: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(answers, vec![200, 200, 200, 429]);
}

// --- bounded inputs ----------------------------------------------------------

#[tokio::test]
async fn overlong_last_event_id_counts_as_absent() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, &with_limits("max_last_event_id = 16"));
    let mut client = proxy.h2().await;
    let mut keeper = EventStream::open(&mut client, "/events/public", None).await;
    proxy.wait_for_subscribers("/events/public", 1).await;
    app.publish("/stream/public", "1", "first");
    keeper.next_message().await;
    let long_id = "x".repeat(100);
    let mut late = EventStream::open(&mut client, "/events/public", Some(&long_id)).await;
    // Treated as a fresh subscriber: the retry and priming with the topic's
    // id in one block, not a "resume point lost" notice.
    let Some(Item::Event(priming)) = late.next_item().await else {
        panic!("no priming")
    };
    assert!(priming.retry().is_some());
    assert_eq!(priming.id(), Some("1"));
}

#[tokio::test]
async fn template_parameters_outside_the_safe_set_get_400() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let long = format!("/events/users/{}", "a".repeat(200));
    for path in [
        "/events/users/a%2Fb",
        "/events/users/..",
        "/events/users/%0D%0Ax",
        long.as_str(),
    ] {
        let mut client = proxy.h2().await;
        let response = subscribe(&mut client, path, &USER).await;
        assert_eq!(response.status(), 400, "{path}");
    }
    assert!(
        app.requests().is_empty(),
        "a bad parameter reached the app: {:?}",
        app.requests()
    );
}

#[tokio::test]
async fn oversized_http1_header_gets_431() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, &with_limits("max_header_bytes = \"4KiB\""));
    let mut stream = tokio::net::TcpStream::connect(proxy.plain_addr)
        .await
        .unwrap();
    let request = format!(
        "GET /events/public HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n",
        "c".repeat(8 * 1024)
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn client_that_never_finishes_its_header_is_dropped() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, &with_limits("header_timeout = \"300ms\""));
    let mut stream = tokio::net::TcpStream::connect(proxy.plain_addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET /events/public HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "connection not closed: {closed:?}"
    );
    assert!(app.requests().is_empty());
}

// --- HTTP/2 abuse --------------------------------------------------------------

/// A raw HTTP/2 connection (h2 crate) to the proxy's TLS listener.
async fn raw_h2(proxy: &Proxy, window: Option<u32>) -> h2::client::SendRequest<bytes::Bytes> {
    common::client::raw_h2(proxy.tls_addr, &proxy.certs, window).await
}

fn get(proxy: &Proxy, path: &str) -> http::Request<()> {
    http::Request::builder()
        .uri(format!("https://localhost:{}{path}", proxy.tls_addr.port()))
        .body(())
        .unwrap()
}

#[tokio::test]
async fn a_thousand_rapid_resets_close_the_abuser_and_count_it_while_others_are_served() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, &with_limits("subscribe_rate_per_ip = 100000"));
    let mut good_client = proxy.h2().await;
    let mut good = EventStream::open(&mut good_client, "/events/public", None).await;
    proxy.wait_for_subscribers("/events/public", 1).await;

    // The abuser's connection, with the task that drives it (it ends when
    // the proxy closes the connection).
    let (abuser, connection) =
        common::client::raw_h2_connection(proxy.tls_addr, &proxy.certs, None).await;

    let mut sent = 0;
    for _ in 0..1000 {
        let Ok(mut ready) = abuser.clone().ready().await else {
            break; // closed by the proxy
        };
        let Ok((_, mut stream)) = ready.send_request(get(&proxy, "/events/public"), false) else {
            break;
        };
        // The HEADERS leave first (the client's connection task runs), then
        // the reset: the attack's two frames. Reset before they leave, the
        // client library would drop the stream and send neither.
        tokio::task::yield_now().await;
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let ended = tokio::time::timeout(PATIENCE, connection)
        .await
        .unwrap_or_else(|_| panic!("the abusive connection is still open after {sent} resets"))
        .unwrap();
    assert!(
        matches!(&ended, Err(e) if e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || e.is_io()),
        "closed without a complaint: {ended:?}"
    );
    proxy
        .wait_for_stats("the abuser counted", |s| {
            s["connections"]["h2_abuse_closures"] == 1
        })
        .await;

    app.publish("/stream/public", "1", "unaffected");
    assert_eq!(
        good.next_message().await.unwrap().data(),
        Some("unaffected")
    );
    proxy
        .wait_for_stats("only the good subscriber left", |s| {
            s["totals"]["subscribers"] == 1
        })
        .await;
    // A new, well-behaved connection from the same address is served.
    let mut again = proxy.h2().await;
    assert_eq!(again.get("/index.html").await.status(), 200);
}

#[tokio::test]
async fn proxy_announces_its_stream_cap_to_http2_clients() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let client = raw_h2(&proxy, None).await;
    // One exchange, so the proxy's SETTINGS have surely been applied.
    let (response, _) = client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(get(&proxy, "/index.html"), true)
        .unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    // The default; the client waits rather than opening more (and h2 refuses
    // streams past it from clients that do not).
    assert_eq!(
        client.ready().await.unwrap().current_max_send_streams(),
        128
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_window_client_that_never_reads_is_cut_off_while_others_get_everything() {
    let app = SseApp::start().await;
    let config = TOPICS.replace(
        "path = \"/events/public\"\nupstream = \"/stream/public\"\n",
        "path = \"/events/public\"\nupstream = \"/stream/public\"\nmax_lag = 20\nmax_event_size = \"4KiB\"\nmax_lag_bytes = \"64KiB\"\n",
    );
    let proxy = Proxy::start(app.addr, &config);
    let mut client = proxy.h2().await;
    let mut reader = EventStream::open(&mut client, "/events/public", None).await;
    let stingy = raw_h2(&proxy, Some(1024)).await;
    let (response, _) = stingy
        .ready()
        .await
        .unwrap()
        .send_request(get(&proxy, "/events/public"), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let _never_read = response.into_body();
    proxy.wait_for_subscribers("/events/public", 2).await;

    let payload = "z".repeat(1024);
    // Ten at a time, each ten read by the good reader before the next: the
    // stingy one falls behind, the reader never does.
    for batch in 0..20 {
        for n in batch * 10 + 1..=batch * 10 + 10 {
            app.publish("/stream/public", &n.to_string(), &payload);
        }
        assert_eq!(reader.message_ids(10).await.len(), 10);
    }
    proxy
        .wait_for_stats("the stingy subscriber cut off", |s| {
            s["topics"][0]["slow_closures"] == 1 && s["topics"][0]["subscribers"] == 1
        })
        .await;
}

// --- a keep-alive auth endpoint that counts its connections -------------------

/// An auth endpoint on hyper (HTTP/1.1 keep-alive) that admits everyone and
/// counts the TCP connections it accepted and the requests it answered.
struct AuthApp {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The accept loop and its connections; aborted with the app.
    _task: AbortOnDrop,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AuthApp {
    async fn start() -> AuthApp {
        AuthApp::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    async fn start_on(addr: std::net::SocketAddr) -> AuthApp {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (accepted, answered) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            let mut served = tokio::task::JoinSet::new();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let answered = answered.clone();
                let service = hyper::service::service_fn(move |_request| {
                    answered.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok\n")),
                        ))
                    }
                });
                served.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        AuthApp {
            addr,
            connections,
            requests,
            _task: AbortOnDrop(task),
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}
