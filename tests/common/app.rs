//! A scriptable app behind the proxy (hyper, HTTP/1.1, on 127.0.0.1).
//!
//! Routes:
//! - `GET /`: a fixed greeting.
//! - `POST /echo`: streams the request body back.
//! - `GET /big?bytes=N`: N bytes of a known pattern.
//! - `GET /headers`: the request headers, one `name: value` per line.
//! - `GET /hop`: a response carrying hop-by-hop headers.
//! - `GET /slow`: sends `first\n`, waits for [`AppState::release`], then `second\n`.
//! - `GET /ws`: answers a WebSocket upgrade with 101, then echoes raw bytes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

/// What the proxy sends back to the test for `GET /`.
pub const GREETING: &str = "hello from the app\n";

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// State the test shares with the running app.
pub struct AppState {
    /// Requests received, by any route.
    pub requests: AtomicUsize,
    /// One permit lets one `/slow` response finish.
    release: Semaphore,
    /// Counts `/slow` responses that sent their second half.
    pub slow_finished: AtomicUsize,
}

impl Default for AppState {
    fn default() -> Self {
        AppState {
            requests: AtomicUsize::new(0),
            release: Semaphore::new(0),
            slow_finished: AtomicUsize::new(0),
        }
    }
}

impl AppState {
    /// Lets one `/slow` response (waiting now or arriving later) finish.
    pub fn release(&self) {
        self.release.add_permits(1);
    }
}

/// A running app; stops (dropping every connection) when dropped.
pub struct App {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    _stop: oneshot::Sender<()>,
}

/// The byte at `index` of `/big`'s pattern.
pub fn pattern_byte(index: usize) -> u8 {
    b"0123456789abcdefghijklmnopqrstuvwxyz"[index % 36]
}

impl App {
    /// Starts the app on a free port.
    pub async fn start() -> App {
        App::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts the app on `addr` (e.g. the port of an app that was stopped).
    pub async fn start_on(addr: SocketAddr) -> App {
        let listener = TcpListener::bind(addr).await.expect("app binds");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(AppState::default());
        let (stop, mut stopped) = oneshot::channel::<()>();
        let shared = state.clone();
        tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = shared.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |request| route(state.clone(), request));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        });
                    }
                }
            }
            // dropping `connections` aborts every open connection
        });
        App {
            addr,
            state,
            _stop: stop,
        }
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn route(
    state: Arc<AppState>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let path = request.uri().path().to_string();
    let response = match (request.method().as_str(), path.as_str()) {
        ("GET", "/") => Response::new(full(GREETING)),
        ("POST", "/echo") => Response::new(request.into_body().map_err(Into::into).boxed()),
        ("GET", "/big") => {
            let bytes: usize = request
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("bytes="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let body: Vec<u8> = (0..bytes).map(pattern_byte).collect();
            Response::new(full(body))
        }
        ("GET", "/headers") => {
            let mut text = String::new();
            for (name, value) in request.headers() {
                text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
            }
            Response::new(full(text))
        }
        ("GET", "/hop") => Response::builder()
            .header("connection", "x-private-hop")
            .header("x-private-hop", "must not pass")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("x-end-to-end", "kept")
            .body(full("hop\n"))
            .unwrap(),
        ("GET", "/slow") => {
            let (tx, rx) =
                mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(2);
            let state = state.clone();
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"first\n"))))
                    .await;
                if let Ok(permit) = state.release.acquire().await {
                    permit.forget();
                }
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"second\n"))))
                    .await;
                state.slow_finished.fetch_add(1, Ordering::SeqCst);
            });
            let stream = tokio_stream_from(rx);
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        ("GET", "/ws") => websocket_echo(request),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("not found\n"))
            .unwrap(),
    };
    Ok(response)
}

/// Answers an upgrade with 101 and echoes whatever arrives on the upgraded
/// connection (enough to show bytes pass both ways; no WebSocket framing).
fn websocket_echo(request: Request<Incoming>) -> Response<Body> {
    let is_websocket = request
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !is_websocket {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(full("expected an upgrade\n"))
            .unwrap();
    }
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(request).await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        .body(full(Bytes::new()))
        .unwrap()
}

/// Adapts an mpsc receiver into a `Stream` for `StreamBody`.
fn tokio_stream_from<T>(mut rx: mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
