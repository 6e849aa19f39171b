//! A browser stand-in: real TLS with ALPN, real HTTP/2 or HTTP/1.1, via hyper.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::TestCerts;

/// The protocol a connection ended up speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// One client connection to the proxy.
pub struct Client {
    sender: Sender,
    /// What ALPN (or prior knowledge) chose.
    pub protocol: Protocol,
    /// `https` or `http`, for absolute request URIs.
    scheme: &'static str,
    /// The authority requests name.
    authority: String,
}

impl Client {
    /// Connects with TLS, offering the given ALPN protocols (e.g. `["h2", "http/1.1"]`).
    pub async fn tls(addr: SocketAddr, certs: &TestCerts, alpn: &[&str]) -> Client {
        let tls = tls_stream(addr, certs, alpn).await;
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let protocol = match negotiated.as_deref() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        let authority = format!("localhost:{}", addr.port());
        Client::handshake(TokioIo::new(tls), protocol, "https", authority).await
    }

    /// Connects in plaintext with HTTP/2 prior knowledge (h2c).
    pub async fn h2c(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect to proxy");
        Client::handshake(TokioIo::new(tcp), Protocol::Http2, "http", addr.to_string()).await
    }

    /// Connects in plaintext with HTTP/1.1.
    pub async fn h1(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect to proxy");
        Client::handshake(TokioIo::new(tcp), Protocol::Http1, "http", addr.to_string()).await
    }

    async fn handshake<T>(
        io: TokioIo<T>,
        protocol: Protocol,
        scheme: &'static str,
        authority: String,
    ) -> Client
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let sender = match protocol {
            Protocol::Http2 => {
                let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .expect("HTTP/2 handshake");
                tokio::spawn(connection);
                Sender::Http2(sender)
            }
            Protocol::Http1 => {
                let (sender, connection) = http1::handshake(io).await.expect("HTTP/1.1 handshake");
                tokio::spawn(connection.with_upgrades());
                Sender::Http1(sender)
            }
        };
        Client {
            sender,
            protocol,
            scheme,
            authority,
        }
    }

    /// A request builder for `path`, with the URI form the protocol wants.
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        match self.protocol {
            Protocol::Http2 => Request::builder()
                .method(method)
                .uri(format!("{}://{}{path}", self.scheme, self.authority)),
            Protocol::Http1 => Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, &self.authority),
        }
    }

    /// Sends a request and returns the response head with a streaming body.
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> hyper::Result<Response<Incoming>> {
        match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
            Sender::Http2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
        }
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Response<Incoming> {
        let request = self.request("GET", path).body(Full::default()).unwrap();
        self.send(request).await.expect("GET through the proxy")
    }
}

/// Reads a whole response body.
pub async fn body_bytes(response: Response<Incoming>) -> Bytes {
    response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes()
}

/// A TLS connection to the proxy that trusts `certs` and offers `alpn`.
pub async fn tls_stream(
    addr: SocketAddr,
    certs: &TestCerts,
    alpn: &[&str],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(certs.root_store())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.expect("connect to proxy");
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with proxy")
}

/// An HTTP/2 connection over TLS straight from the `h2` crate, for clients
/// that misbehave on purpose: `window` sets the initial flow-control window
/// it grants the proxy per stream (0: the proxy may send no data at all).
/// Returns the task driving the connection too: it ends when the proxy
/// closes the connection.
pub async fn raw_h2_connection(
    addr: SocketAddr,
    certs: &TestCerts,
    window: Option<u32>,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tls = tls_stream(addr, certs, &["h2"]).await;
    let mut builder = h2::client::Builder::new();
    if let Some(window) = window {
        builder.initial_window_size(window);
    }
    let (client, connection) = builder
        .handshake::<_, Bytes>(tls)
        .await
        .expect("HTTP/2 handshake with proxy");
    (client, tokio::spawn(connection))
}

/// [`raw_h2_connection`], its task left to run.
pub async fn raw_h2(
    addr: SocketAddr,
    certs: &TestCerts,
    window: Option<u32>,
) -> h2::client::SendRequest<Bytes> {
    raw_h2_connection(addr, certs, window).await.0
}
