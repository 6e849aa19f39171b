//! ACME: a TLS listener whose certificate the proxy orders from an ACME
//! server, renews, and keeps in its cache, instead of reading files.
//!
//! Offline, against Pebble (Let's Encrypt's test server, `common::pebble`):
//! each test picks the proxy's listener ports first, starts a Pebble of its
//! own that validates on them (`tls-alpn-01` on the TLS listener, `http-01`
//! on the plaintext one) and resolves every name to 127.0.0.1, then starts
//! the proxy with a listener for `events.test` whose `directory` is Pebble's,
//! whose `ca` is the CA of Pebble's HTTPS certificate and whose `cache` is in
//! the proxy's folder. Clients behave like browsers visiting
//! `https://events.test`: SNI `events.test`, trusting only the root Pebble
//! generated when it started, HTTP/2.
//!
//! Until the proxy has a certificate its TLS handshakes fail, so a test
//! retries handshakes, for [`ISSUANCE`] at most, until one succeeds. Pebble
//! validates without sleeps and never reuses an authorization: every order,
//! renewals included, is validated against the proxy.
//!
//! Needs Debian's `pebble` package (`.ci/run` installs it); without it these
//! tests fail, saying so.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use common::pebble::Pebble;
use common::sse_app::SseApp;
use common::sse_client::EventStream;
use common::{free_port, loopback, Proxy, PATIENCE};

/// The name the proxy asks a certificate for.
const NAME: &str = "events.test";
/// How long a first certificate may take: an account, an order, three
/// validations and a download, all on loopback.
const ISSUANCE: Duration = Duration::from_secs(60);
/// Validity of the certificates of the renewal test, in seconds: renewed
/// after about two thirds of it.
const SHORT_VALIDITY: u64 = 60;
/// How long after a short-lived certificate is first served its successor
/// may take to be served (renewal is due after about 40 s).
const RENEWAL: Duration = Duration::from_secs(75);
/// Pause between handshakes while waiting for a certificate.
const HANDSHAKE_INTERVAL: Duration = Duration::from_millis(250);

const TOPICS: &str = r#"
[[topic]]
path = "/events/news"
upstream = "/stream/news"
"#;

/// An app, a Pebble, and the proxy in front of the app getting its
/// certificate from that Pebble.
struct Site {
    proxy: Proxy,
    pebble: Pebble,
    app: SseApp,
    /// Pebble's root: what clients trust.
    roots: Arc<rustls::RootCertStore>,
}

impl Site {
    /// Starts a site whose TLS listener gets a certificate for [`NAME`]
    /// by the ACME challenge `challenge`, Pebble issuing certificates valid
    /// for `validity` seconds (years if `None`).
    async fn start(challenge: &str, validity: Option<u64>) -> Site {
        Site::start_with_pebble(challenge, validity, true).await
    }

    /// [`start`](Self::start), with Pebble stopped before the proxy starts
    /// when `pebble_up` is false (no roots to trust until it is restarted).
    async fn start_with_pebble(challenge: &str, validity: Option<u64>, pebble_up: bool) -> Site {
        let app = SseApp::start().await;
        let tls_addr = loopback(free_port());
        let plain_addr = loopback(free_port());
        let mut pebble = Pebble::start(plain_addr.port(), tls_addr.port(), validity);
        let roots = if pebble_up {
            pebble.root_store().await
        } else {
            pebble.stop();
            Arc::new(rustls::RootCertStore::empty())
        };
        let tls = format!(
            r#"{{ acme = ["{NAME}"], email = "ops@example.com", directory = "{directory}", ca = "{ca}", cache = "acme-cache", challenge = "{challenge}" }}"#,
            directory = pebble.directory_url(),
            ca = pebble.directory_ca().display(),
        );
        let proxy = Proxy::start_with_tls(app.addr, tls_addr, plain_addr, &tls, TOPICS);
        Site {
            proxy,
            pebble,
            app,
            roots,
        }
    }

    /// Handshakes with the TLS listener until one succeeds, for `limit` at
    /// most; the connection and the certificate it got.
    async fn first_certificate(&self, limit: Duration) -> (TlsStream<TcpStream>, Leaf) {
        let deadline = Instant::now() + limit;
        loop {
            let error = match handshake(self.proxy.tls_addr, &self.roots).await {
                Ok(tls) => {
                    let leaf = Leaf::of(&tls);
                    return (tls, leaf);
                }
                Err(error) => error,
            };
            assert!(
                Instant::now() < deadline,
                "no TLS handshake for {NAME} succeeded within {limit:?}; the last failed with: {error}"
            );
            tokio::time::sleep(HANDSHAKE_INTERVAL).await;
        }
    }
}

/// A TLS handshake with the proxy as a browser visiting `https://events.test`
/// makes it: SNI [`NAME`], trusting only `roots`, offering h2.
async fn handshake(
    addr: SocketAddr,
    roots: &Arc<rustls::RootCertStore>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(NAME).unwrap();
    tokio::time::timeout(
        PATIENCE,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// What a test checks of the certificate a handshake got.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leaf {
    /// Its serial number, in hex: a new certificate has a new one.
    serial: String,
    /// The DNS names in its subject alternative names.
    names: Vec<String>,
}

impl Leaf {
    /// The leaf certificate the server presented on `tls` (rustls has
    /// verified its chain to the trusted root, for [`NAME`], in date).
    fn of(tls: &TlsStream<TcpStream>) -> Leaf {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let chain = tls.get_ref().1.peer_certificates().expect("a certificate");
        let (_, cert) = X509Certificate::from_der(chain[0].as_ref()).expect("an X.509 leaf");
        let names = cert
            .subject_alternative_name()
            .expect("valid subject alternative names")
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::DNSName(dns) => Some(dns.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Leaf {
            serial: cert.raw_serial_as_string(),
            names,
        }
    }
}

/// A subscription on a connection of its own.
struct Subscriber {
    /// Keeps the HTTP/2 connection open.
    _connection: http2::SendRequest<Full<Bytes>>,
    stream: EventStream,
}

/// Subscribes to `path` over HTTP/2 on `tls` (a connection to the proxy's
/// TLS listener on `port`).
async fn subscribe(tls: TlsStream<TcpStream>, port: u16, path: &str) -> Subscriber {
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the ACME listener negotiated no h2"
    );
    let (mut sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let request = http::Request::get(format!("https://{NAME}:{port}{path}"))
        .header("accept", "text/event-stream")
        .body(Full::default())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .expect("subscription request");
    Subscriber {
        _connection: sender,
        stream: EventStream::new(response),
    }
}

/// The start of the URLs Pebble validates `http-01` at (it logs each).
fn http_01_validation(site: &Site) -> String {
    format!(
        "Attempting to validate w/ HTTP: http://{NAME}:{}/.well-known/acme-challenge/",
        site.proxy.plain_addr.port()
    )
}

#[tokio::test]
async fn an_acme_listener_serves_a_certificate_pebble_issued_for_the_name_asked() {
    let site = Site::start("tls-alpn-01", None).await;
    let (tls, leaf) = site.first_certificate(ISSUANCE).await;
    assert_eq!(leaf.names, [NAME]);
    // Validated on the TLS listener: Pebble never asked the plaintext one.
    assert!(
        !site.pebble.log().contains("validate w/ HTTP"),
        "pebble validated over HTTP, not tls-alpn-01"
    );
    // The connection that got it serves topics.
    let mut subscriber = subscribe(tls, site.proxy.tls_addr.port(), "/events/news").await;
    site.proxy.wait_for_subscribers("/events/news", 1).await;
    site.app
        .publish("/stream/news", "1", "over a certificate from ACME");
    let event = subscriber.stream.next_message().await.expect("an event");
    assert_eq!(event.id(), Some("1"));
    assert_eq!(event.data(), Some("over a certificate from ACME"));
}

#[tokio::test]
async fn an_acme_certificate_is_renewed_before_expiry_while_an_open_subscription_keeps_streaming() {
    let site = Site::start("tls-alpn-01", Some(SHORT_VALIDITY)).await;
    let (tls, first) = site.first_certificate(ISSUANCE).await;
    let renewal_deadline = Instant::now() + RENEWAL;
    let mut subscriber = subscribe(tls, site.proxy.tls_addr.port(), "/events/news").await;
    site.proxy.wait_for_subscribers("/events/news", 1).await;
    site.app.publish("/stream/news", "1", "before the renewal");
    assert_eq!(subscriber.stream.message_ids(1).await, ["1"]);

    // Every new handshake succeeds meanwhile (the old certificate is served
    // until its successor is ready), until one gets the successor.
    let renewed = loop {
        let tls = handshake(site.proxy.tls_addr, &site.roots)
            .await
            .unwrap_or_else(|e| panic!("a handshake failed while the renewal was due: {e}"));
        let leaf = Leaf::of(&tls);
        if leaf.serial != first.serial {
            break leaf;
        }
        assert!(
            Instant::now() < renewal_deadline,
            "the {SHORT_VALIDITY}-second certificate {} was still served {RENEWAL:?} after it was first",
            first.serial
        );
        tokio::time::sleep(HANDSHAKE_INTERVAL).await;
    };
    assert_eq!(renewed.names, [NAME]);

    // The subscription opened over the old certificate streams on.
    site.app.publish("/stream/news", "2", "after the renewal");
    let event = subscriber.stream.next_message().await.expect("an event");
    assert_eq!(event.id(), Some("2"));
    assert_eq!(event.data(), Some("after the renewal"));
}

#[tokio::test]
async fn a_restarted_proxy_serves_the_cached_certificate_with_pebble_stopped() {
    let mut site = Site::start("tls-alpn-01", None).await;
    let (_, issued) = site.first_certificate(ISSUANCE).await;
    // No ACME server any more: only the cache can give the restarted proxy
    // a certificate.
    site.pebble.stop();
    site.proxy.restart_hard();
    let (_, cached) = site.first_certificate(PATIENCE).await;
    assert_eq!(cached, issued);
}

#[tokio::test]
async fn a_failed_order_is_logged_counted_and_retried_until_the_ca_answers() {
    let mut site = Site::start_with_pebble("tls-alpn-01", None, false).await;
    let failed = "sse_fanout_acme_orders_total{certificate=\"events.test\",result=\"failed\"}";
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = admin_get(&site.proxy, "/metrics").await;
        let count = text
            .lines()
            .find_map(|line| line.strip_prefix(failed)?.trim().parse::<f64>().ok());
        if count.is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed order counted with the CA down:\n{text}"
        );
        tokio::time::sleep(HANDSHAKE_INTERVAL).await;
    }
    assert!(
        site.proxy
            .log()
            .contains("acme: ordering a certificate for events.test failed"),
        "{}",
        site.proxy.log()
    );
    // The CA comes back: a retry (after 5 s, then 10 s, ...) gets the
    // certificate, with no restart.
    site.pebble.restart();
    site.roots = site.pebble.root_store().await;
    let (_, leaf) = site.first_certificate(ISSUANCE).await;
    assert_eq!(leaf.names, [NAME]);
    let text = admin_get(&site.proxy, "/metrics").await;
    assert!(
        text.contains(
            "sse_fanout_acme_orders_total{certificate=\"events.test\",result=\"ok\"} 1\n"
        ),
        "{text}"
    );
}

/// `GET path` on the proxy's admin listener: the body.
async fn admin_get(proxy: &Proxy, path: &str) -> String {
    let mut client = common::client::Client::h1(proxy.admin_addr).await;
    let body = common::client::body_bytes(client.get(path).await).await;
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn http_01_on_the_plaintext_listener_gets_a_certificate() {
    let site = Site::start("http-01", None).await;
    let (_, leaf) = site.first_certificate(ISSUANCE).await;
    assert_eq!(leaf.names, [NAME]);
    let validation = http_01_validation(&site);
    assert!(
        site.pebble.log().contains(&validation),
        "pebble never validated at {validation}..."
    );
}
