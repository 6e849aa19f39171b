//! A scripted upstream SSE app on raw TCP, so tests control every byte and
//! every write.
//!
//! Any `GET /stream/...` opens an event stream (HTTP/1.1, close-delimited);
//! any other path answers `plain` (or the status set with [`SseApp::answer`],
//! with a `WWW-Authenticate` challenge: an auth endpoint).
//! Tests publish events per path with [`SseApp::publish`]; the app keeps them
//! as its "database" and honours `Last-Event-ID` by replaying what came after
//! it. It records every upstream request, counts open streams, can answer a
//! path with another status, and can be stopped and started again on the same
//! port with the same database (an app restart).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinSet;

use super::PATIENCE;

/// One upstream request the app received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    pub path: String,
    pub last_event_id: Option<String>,
    pub accept: Option<String>,
    /// Every header, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
}

impl UpstreamRequest {
    /// The value of header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the app answers a path instead of streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Stream events (the default).
    Stream,
    /// Answer this status with an empty body (e.g. 204, 500).
    Status(u16),
    /// Answer 200 with `text/plain`.
    WrongContentType,
    /// Answer 200 with an event stream compressed with gzip, whatever the
    /// request's `Accept-Encoding` (as a misconfigured app or CDN would).
    Gzipped,
}

/// What the test and the app share; survives restarts.
#[derive(Default)]
pub struct SseState {
    /// Every request, in arrival order.
    requests: Mutex<Vec<UpstreamRequest>>,
    /// Published events per path: (id, encoded frame).
    history: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Live streams per path.
    live: Mutex<HashMap<String, broadcast::Sender<String>>>,
    /// Streams currently open per path, and the most ever open at once.
    open: Mutex<HashMap<String, (usize, usize)>>,
    /// Non-default answers per path.
    answers: Mutex<HashMap<String, Answer>>,
    /// Write each frame in pieces this long (0: whole), pausing between them.
    split: Mutex<Option<(usize, Duration)>>,
    /// Answer a `Last-Event-ID` the history lacks with this status, as apps
    /// that cannot resume from it do (by default: replay everything).
    unknown_id_status: Mutex<Option<u16>>,
}

/// A running app; [`stop`](Self::stop) or dropping it closes the listener and
/// every stream.
pub struct SseApp {
    pub addr: SocketAddr,
    pub state: Arc<SseState>,
    stop: Option<oneshot::Sender<()>>,
    /// The accept loop; done once the listener and every stream are closed.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SseApp {
    pub async fn start() -> SseApp {
        Self::start_with(
            Arc::new(SseState::default()),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
    }

    /// Starts on `addr` with an existing state (a restart keeps the database).
    pub async fn start_with(state: Arc<SseState>, addr: SocketAddr) -> SseApp {
        let listener = TcpListener::bind(addr).await.expect("sse app binds");
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut streams = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        if let Ok((socket, _)) = accepted {
                            streams.spawn(serve(shared.clone(), socket));
                        }
                    }
                }
            }
            // a hard app stop: every open stream is cut
            streams.shutdown().await;
        });
        SseApp {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the app: the listener closes and every stream is cut. Returns
    /// the state (the app's database) for a restart.
    pub async fn stop(mut self) -> Arc<SseState> {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.state.clone()
    }

    /// Publishes an event with `id` and `data` on `path` (sent to open
    /// streams and kept for `Last-Event-ID` replays).
    pub fn publish(&self, path: &str, id: &str, data: &str) {
        self.state.publish(path, id, data);
    }

    /// Publishes `frame` (a whole SSE block, as written) under `id`, which
    /// a `Last-Event-ID` replay finds it by.
    pub fn publish_frame(&self, path: &str, id: &str, frame: &str) {
        self.state.publish_frame(path, id, frame.to_string());
    }

    /// Publishes an event with `data` and no `id` field: a client's last
    /// event id stays what it was, so the event shows it.
    pub fn publish_without_id(&self, path: &str, data: &str) {
        self.state
            .publish_frame(path, "", format!("data: {data}\n\n"));
    }

    /// Every upstream request so far.
    pub fn requests(&self) -> Vec<UpstreamRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Upstream requests for `path` so far.
    pub fn requests_for(&self, path: &str) -> Vec<UpstreamRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Streams open right now on `path`.
    pub fn open_streams(&self, path: &str) -> usize {
        self.state
            .open
            .lock()
            .unwrap()
            .get(path)
            .map_or(0, |&(now, _)| now)
    }

    /// The most streams ever open at once on `path`.
    pub fn most_open_streams(&self, path: &str) -> usize {
        self.state
            .open
            .lock()
            .unwrap()
            .get(path)
            .map_or(0, |&(_, most)| most)
    }

    /// Waits until `open_streams(path) == n`.
    pub async fn wait_for_open_streams(&self, path: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.open_streams(path) != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path}: {} open streams, expected {n}",
                self.open_streams(path)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the app has received at least `n` requests for `path`.
    pub async fn wait_for_requests(&self, path: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.requests_for(path).len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path}: {} requests, expected {n}",
                self.requests_for(path).len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Answers `path` this way from now on.
    pub fn answer(&self, path: &str, answer: Answer) {
        self.state
            .answers
            .lock()
            .unwrap()
            .insert(path.to_string(), answer);
    }

    /// Answers a `Last-Event-ID` the app does not know with `status`.
    pub fn refuse_unknown_ids(&self, status: u16) {
        *self.state.unknown_id_status.lock().unwrap() = Some(status);
    }

    /// Writes every frame in pieces of `piece` bytes, pausing `pause` between.
    pub fn split_writes(&self, piece: usize, pause: Duration) {
        *self.state.split.lock().unwrap() = Some((piece, pause));
    }
}

impl Drop for SseApp {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
    }
}

impl SseState {
    pub fn publish(&self, path: &str, id: &str, data: &str) {
        let mut frame = format!("id: {id}\n");
        for line in data.split('\n') {
            frame.push_str(&format!("data: {line}\n"));
        }
        frame.push('\n');
        self.publish_frame(path, id, frame);
    }

    /// Keeps `frame` under `id` and sends it to open streams.
    fn publish_frame(&self, path: &str, id: &str, frame: String) {
        self.history
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .push((id.to_string(), frame.clone()));
        if let Some(live) = self.live.lock().unwrap().get(path) {
            let _ = live.send(frame);
        }
    }
}

/// Counts a stream open while alive.
struct OpenStream {
    state: Arc<SseState>,
    path: String,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        if let Some((now, _)) = self.state.open.lock().unwrap().get_mut(&self.path) {
            *now -= 1;
        }
    }
}

async fn serve(state: Arc<SseState>, mut socket: TcpStream) {
    let _ = socket.set_nodelay(true);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match socket.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let request = UpstreamRequest {
        path: path.clone(),
        last_event_id: header("last-event-id"),
        accept: header("accept"),
        headers: head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                Some((n.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect(),
    };
    state.requests.lock().unwrap().push(request.clone());

    let answer = state.answers.lock().unwrap().get(&path).copied();
    if !path.starts_with("/stream/") {
        // An ordinary page (or an auth endpoint): a short answer, then the
        // app closes. A configured status answers instead, with a challenge.
        let response = match answer {
            Some(Answer::Status(code)) => format!(
                "HTTP/1.1 {code} X\r\nWWW-Authenticate: Bearer realm=\"test\"\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\ndenied\n"
            ),
            _ => "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nplain\n".to_string(),
        };
        let _ = socket.write_all(response.as_bytes()).await;
        return;
    }
    let answer = state
        .answers
        .lock()
        .unwrap()
        .get(&path)
        .copied()
        .unwrap_or(Answer::Stream);
    let unknown_id = request.last_event_id.as_ref().is_some_and(|id| {
        let history = state.history.lock().unwrap();
        !history
            .get(&path)
            .is_some_and(|events| events.iter().any(|(i, _)| i == id))
    });
    let refusal = *state.unknown_id_status.lock().unwrap();
    let answer = match refusal {
        Some(status) if unknown_id && answer == Answer::Stream => Answer::Status(status),
        _ => answer,
    };
    match answer {
        Answer::Status(code) => {
            let _ = socket
                .write_all(
                    format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
            return;
        }
        Answer::WrongContentType => {
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno\n")
                .await;
            return;
        }
        Answer::Gzipped => {
            // The gzip header of an empty member: bytes no parser can read.
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\nConnection: close\r\n\r\n\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03")
                .await;
            return;
        }
        Answer::Stream => {}
    }

    // Subscribe to live events before reading history, so nothing falls between.
    let mut live = state
        .live
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_insert_with(|| broadcast::channel(4096).0)
        .subscribe();
    let backlog: Vec<String> = {
        let history = state.history.lock().unwrap();
        let events = history.get(&path).cloned().unwrap_or_default();
        let start = match &request.last_event_id {
            Some(id) => events
                .iter()
                .position(|(i, _)| i == id)
                .map_or(0, |p| p + 1),
            None => events.len(),
        };
        events[start..].iter().map(|(_, f)| f.clone()).collect()
    };
    {
        let mut open = state.open.lock().unwrap();
        let (now, most) = open.entry(path.clone()).or_insert((0, 0));
        *now += 1;
        *most = (*most).max(*now);
    }
    let _open = OpenStream {
        state: state.clone(),
        path: path.clone(),
    };
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for frame in backlog {
        if write_frame(&state, &mut socket, &frame).await.is_err() {
            return;
        }
    }
    let (mut reader, mut writer) = socket.into_split();
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            frame = live.recv() => match frame {
                Ok(frame) => {
                    if write_frame_to(&state, &mut writer, &frame).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // the proxy closed the upstream connection
            read = reader.read(&mut probe) => if matches!(read, Ok(0) | Err(_)) { return },
        }
    }
}

async fn write_frame(state: &SseState, socket: &mut TcpStream, frame: &str) -> std::io::Result<()> {
    let (_, mut writer) = socket.split();
    write_frame_to(state, &mut writer, frame).await
}

async fn write_frame_to<W: AsyncWriteExt + Unpin>(
    state: &SseState,
    writer: &mut W,
    frame: &str,
) -> std::io::Result<()> {
    let split = *state.split.lock().unwrap();
    match split {
        None => writer.write_all(frame.as_bytes()).await?,
        Some((piece, pause)) => {
            for chunk in frame.as_bytes().chunks(piece.max(1)) {
                writer.write_all(chunk).await?;
                writer.flush().await?;
                tokio::time::sleep(pause).await;
            }
        }
    }
    writer.flush().await
}
