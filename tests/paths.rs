//! What the ordinary reverse proxy lets through to the app: never a header
//! the proxy alone may set. Real proxy process, real HTTP/1.1 and HTTP/2, a
//! scripted app that records every request.

mod common;

use http_body_util::Full;

use common::client::body_bytes;
use common::sse_app::SseApp;
use common::sse_client::{subscribe, EventStream};
use common::Proxy;

/// A literal topic and a template topic behind the app's auth endpoint, and
/// a public one; all streams on the app itself.
const TOPICS: &str = r#"
[sse]
heartbeat = "30s"
linger = "1s"

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
