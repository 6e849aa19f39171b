//! What the ordinary reverse proxy lets through to the app: never a topic
//! (however its path is spelled), never a topic's upstream stream, never a
//! header the proxy alone may set. Real proxy process, real HTTP/1.1 and
//! HTTP/2, a scripted app that records every request.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use common::client::{body_bytes, Client};
use common::sse_app::SseApp;
use common::sse_client::{subscribe, EventStream};
use common::{run_cli, temp_file, Proxy, PATIENCE};

/// A literal topic and a template topic behind the app's auth endpoint, and
/// a public one; all streams on the app itself.
const TOPICS: &str = r#"
[sse]
heartbeat = "30s"
linger = "1s"
# Every variant must be asked for, so the test sees which topic it named.
auth_cache = "0s"

[[topic]]
path = "/events/x"
upstream = "/stream/x"
auth = "/auth/sse"
upstream_headers = { "X-Shared-Secret" = "s3cret" }

[[topic]]
path = "/events/users/{id}"
upstream = "/stream/users/{id}"
auth = "/auth/sse"

[[topic]]
path = "/events/public"
upstream = "/stream/public"
"#;

// --- headers only the proxy may set ----------------------------------------

#[tokio::test]
async fn headers_only_the_proxy_may_set_never_reach_the_app_from_a_client() {
    let app = common::app::App::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    for mut client in [proxy.h2().await, proxy.h1().await] {
        let request = client
            .request("GET", "/headers")
            .header("x-shared-secret", "guess")
            .header("x-sse-topic", "/events/users/1")
            .header("forwarded", "for=203.0.113.9")
            .header("x-real-ip", "203.0.113.9")
            .header("x-forwarded-for", "203.0.113.9")
            .body(Full::default())
            .unwrap();
        let body = body_bytes(client.send(request).await.unwrap()).await;
        let seen = String::from_utf8(body.to_vec()).unwrap();
        for name in ["x-shared-secret", "x-sse-topic", "forwarded", "x-real-ip"] {
            assert!(!seen.contains(&format!("\n{name}:")), "{name}: {seen}");
            assert!(!seen.starts_with(&format!("{name}:")), "{name}: {seen}");
        }
        assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
        assert!(!seen.contains("203.0.113.9"), "{seen}");
    }
}

#[tokio::test]
async fn auth_request_names_the_socket_address_not_the_clients_forwarded_for() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let headers = [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-shared-secret", "guess"),
        ("x-real-ip", "203.0.113.9"),
    ];
    let _stream = EventStream::new(subscribe(&mut client, "/events/x", &headers).await);
    let auth = &app.requests_for("/auth/sse")[0];
    assert_eq!(auth.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(auth.header("x-shared-secret"), None);
    assert_eq!(auth.header("x-real-ip"), None);
}

/// What the app may see: the topics' own upstream streams and auth requests.
const TOPIC_TRAFFIC: [&str; 4] = [
    "/stream/x",
    "/stream/users/42",
    "/stream/public",
    "/auth/sse",
];

/// Asserts the app saw nothing but topic traffic (no proxied request).
fn assert_only_topic_traffic(app: &SseApp) {
    let ordinary: Vec<String> = app
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| !TOPIC_TRAFFIC.contains(&p.as_str()))
        .collect();
    assert!(
        ordinary.is_empty(),
        "proxied to the app as ordinary requests: {ordinary:?}"
    );
}

/// The status and header block of the answer to a raw HTTP/1.1 request
/// (`target` exactly as given on the request line). The connection is closed
/// afterwards, so a subscription it opened ends.
async fn raw_http1(proxy: &Proxy, method: &str, target: &str) -> (u16, String) {
    let mut socket = TcpStream::connect(proxy.plain_addr).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read_head = async {
        while !head.ends_with(b"\r\n\r\n") {
            match socket.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
    };
    timeout(PATIENCE, read_head)
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} {target}"));
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {target}: {head:?}"));
    (status, head)
}

/// The status and content type of the answer to `GET path` on `client`.
async fn get_status(client: &mut Client, path: &str) -> (u16, String) {
    let response = subscribe(client, path, &[]).await;
    let content_type = response
        .headers()
        .get("content-type")
        .map_or(String::new(), |v| v.to_str().unwrap().to_string());
    (response.status().as_u16(), content_type)
}

/// Every auth request's `X-SSE-Topic`, in order.
fn auth_topics(app: &SseApp) -> Vec<String> {
    app.requests_for("/auth/sse")
        .iter()
        .map(|r| r.header("x-sse-topic").unwrap_or("").to_string())
        .collect()
}

// --- topic upstream paths ---------------------------------------------------

/// Spellings of the topics' upstream paths a client might try.
const UPSTREAM_PATHS: [&str; 8] = [
    "/stream/users/42",
    "/stream/users/someone-else",
    "/stream/users/42/",
    "//stream/users/42",
    "/stream/./users/42",
    "/STREAM/users/42",
    "/stream%2Fusers%2F42",
    "/stream/x",
];

#[tokio::test]
async fn topic_upstream_paths_get_404_and_never_reach_the_app_over_http1() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    for path in UPSTREAM_PATHS {
        for method in ["GET", "POST", "HEAD"] {
            let (status, _) = raw_http1(&proxy, method, path).await;
            assert_eq!(status, 404, "{method} {path}");
        }
    }
    assert!(app.requests().is_empty(), "{:?}", app.requests());
}

#[tokio::test]
async fn topic_upstream_paths_get_404_and_never_reach_the_app_over_http2() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    for path in UPSTREAM_PATHS {
        let (status, _) = get_status(&mut client, path).await;
        assert_eq!(status, 404, "GET {path}");
    }
    assert!(app.requests().is_empty(), "{:?}", app.requests());
}

#[tokio::test]
async fn an_exposed_topic_upstream_is_proxied_to_the_app() {
    let app = SseApp::start().await;
    let config = TOPICS.replace(
        "upstream = \"/stream/public\"\n",
        "upstream = \"/stream/public\"\nexpose_upstream = true\n",
    );
    let proxy = Proxy::start(app.addr, &config);
    let mut client = proxy.h2().await;
    let (status, content_type) = get_status(&mut client, "/stream/public").await;
    assert_eq!((status, content_type.as_str()), (200, "text/event-stream"));
    // The others stay closed.
    assert_eq!(get_status(&mut client, "/stream/users/42").await.0, 404);
}

#[test]
fn check_warns_about_a_topic_upstream_reachable_through_the_proxy() {
    let config = format!(
        "[[listen]]\naddr = \"127.0.0.1:1\"\n[app]\nupstream = \"127.0.0.1:2\"\n{}",
        TOPICS.replace(
            "upstream = \"/stream/public\"\n",
            "upstream = \"/stream/public\"\nexpose_upstream = true\n",
        )
    );
    let (_dir, path) = temp_file("sse-fanout.toml", &config);
    let output = run_cli(&["-c", path.to_str().unwrap(), "--check"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("\"/stream/public\""),
        "{stderr}"
    );
    assert!(!stderr.contains("/stream/users"), "{stderr}");
}

// --- spellings of a topic path ---------------------------------------------

/// Spellings of `/events/x` an app that normalises its paths would serve as
/// `/events/x`, with the request target as sent on an HTTP/1.1 request line.
const TOPIC_VARIANTS_HTTP1: [&str; 11] = [
    "//events/x",
    "/events/./x",
    "/events/a/../x",
    "/events/x/",
    "/%65vents/x",
    "/events/x;p",
    "\\events\\x",
    "/events\\x",
    "/events/%78",
    "/events/x?a=1",
    "http://localhost/events/x",
];

/// The same on HTTP/2, where `:path` must start with `/`.
const TOPIC_VARIANTS_HTTP2: [&str; 9] = [
    "//events/x",
    "/events/./x",
    "/events/a/../x",
    "/events/x/",
    "/%65vents/x",
    "/events/x;p",
    "/\\events\\x",
    "/events\\x",
    "/events/%78",
];

/// Spellings of `/events/users/42`.
const TEMPLATE_VARIANTS: [&str; 5] = [
    "/events/users/42/",
    "//events/users/42",
    "/events/users/%34%32",
    "/events/users/42;jsessionid=1",
    "/events/x/../users/42",
];

/// Spellings that could name a topic only to an app more lenient still
/// (case-insensitive, or decoding `%2F`): refused, not served.
const AMBIGUOUS_VARIANTS: [&str; 4] = [
    "/EVENTS/x",
    "/events%2Fx",
    "/Events/Users/42",
    "/events/users/a%2Fb",
];

#[tokio::test]
async fn topic_path_variants_are_the_topic_over_http1_never_proxied() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut expected_topics = Vec::new();
    for (variants, topic) in [
        (&TOPIC_VARIANTS_HTTP1[..], "/events/x"),
        (&TEMPLATE_VARIANTS[..], "/events/users/42"),
    ] {
        for target in variants {
            let (status, head) = raw_http1(&proxy, "GET", target).await;
            assert_eq!(status, 200, "GET {target}: {head}");
            assert!(head.contains("content-type: text/event-stream"), "{head}");
            expected_topics.push(topic.to_string());
        }
    }
    for target in AMBIGUOUS_VARIANTS {
        let (status, _) = raw_http1(&proxy, "GET", target).await;
        assert_eq!(status, 400, "GET {target}");
    }
    assert_only_topic_traffic(&app);
    assert_eq!(auth_topics(&app), expected_topics);
}

#[tokio::test]
async fn topic_path_variants_are_the_topic_over_http2_never_proxied() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let mut expected_topics = Vec::new();
    for (variants, topic) in [
        (&TOPIC_VARIANTS_HTTP2[..], "/events/x"),
        (&TEMPLATE_VARIANTS[..], "/events/users/42"),
    ] {
        for path in variants {
            let (status, content_type) = get_status(&mut client, path).await;
            assert_eq!(
                (status, content_type.as_str()),
                (200, "text/event-stream"),
                "GET {path}"
            );
            expected_topics.push(topic.to_string());
        }
    }
    for path in AMBIGUOUS_VARIANTS {
        assert_eq!(get_status(&mut client, path).await.0, 400, "GET {path}");
    }
    assert_only_topic_traffic(&app);
    assert_eq!(auth_topics(&app), expected_topics);
}

#[tokio::test]
async fn other_methods_on_topic_path_variants_are_refused_never_proxied() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    for target in TOPIC_VARIANTS_HTTP1.iter().chain(&TEMPLATE_VARIANTS) {
        let (status, _) = raw_http1(&proxy, "POST", target).await;
        assert_eq!(status, 405, "POST {target}");
    }
    assert!(app.requests().is_empty(), "{:?}", app.requests());
}

#[tokio::test]
async fn a_topic_and_its_spellings_are_one_topic_instance() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    let mut streams = Vec::new();
    for path in ["/events/public", "//events/public", "/events/./public/"] {
        streams.push(EventStream::new(subscribe(&mut client, path, &[]).await));
    }
    proxy.wait_for_subscribers("/events/public", 3).await;
    app.publish("/stream/public", "1", "one for all");
    for stream in &mut streams {
        assert_eq!(
            stream.next_message().await.unwrap().data(),
            Some("one for all")
        );
    }
    assert_eq!(app.requests_for("/stream/public").len(), 1);
    let stats = proxy.stats().await;
    assert_eq!(stats["topics"].as_array().unwrap().len(), 1, "{stats}");
}

// --- CORS origins -------------------------------------------------------------

#[tokio::test]
async fn cors_origin_matches_whatever_its_case_default_port_or_trailing_slash() {
    let app = SseApp::start().await;
    let config = TOPICS.replace(
        "upstream = \"/stream/public\"\n",
        "upstream = \"/stream/public\"\ncors_origins = [\"https://App.Example:443/\"]\n",
    );
    let proxy = Proxy::start(app.addr, &config);
    let mut client = proxy.h2().await;
    for origin in ["https://app.example", "https://APP.example:443"] {
        let request = client
            .request("OPTIONS", "/events/public")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .body(Full::default())
            .unwrap();
        let response = client.send(request).await.unwrap();
        assert_eq!(response.status(), 204);
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            origin,
            "{origin}"
        );
    }
}
