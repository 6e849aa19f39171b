//! The benchmark's upstream app.
//!
//! It stands for a real app behind each contender:
//! - `GET /stream/<topic>` is an SSE stream of the topic's events (what
//!   sse-fanout opens once per topic, and what plain nginx opens once per
//!   subscriber). It honours `Last-Event-ID`.
//! - With `--publish-url`, each event is also `POST`ed to `<url>/<topic>`
//!   (nchan's publisher endpoint), since nchan is fed by pushes, not streams.
//! - `GET /hello` is a small ordinary response, for the proxied-request test.
//! - Any other `GET /stream/<name>` (not one of `t0`..`t<topics-1>`) is a
//!   *private* topic, as a per-user template would name: it sends
//!   `--private-events` events at once, then stays quiet until closed. The
//!   churn soak opens and leaves thousands of them.
//!
//! It is quiet until a line `start` arrives on standard input, then emits
//! `--events` events per topic at `--rate` per second, each carrying its
//! sequence number and emit time (`seq=12 t=<unix µs> pad...`), so load
//! generators measure delivery and latency without any other channel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Events a slow stream may fall behind before the app drops it.
const STREAM_BACKLOG: usize = 65_536;
/// Request heads larger than this are refused.
const MAX_HEAD: usize = 16 * 1024;

/// What to run.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub listen: SocketAddr,
    pub topics: usize,
    pub rate: f64,
    pub events: u64,
    pub size: usize,
    pub publish_url: Option<String>,
    /// Events a private topic stream sends when it opens.
    pub private_events: u64,
}

/// Microseconds since the Unix epoch: the clock load generators compare with.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The `data` of event `seq`, padded to `size` bytes.
pub fn event_data(seq: u64, size: usize) -> String {
    let mut data = format!("seq={seq} t={} ", unix_micros());
    while data.len() < size {
        data.push('x');
    }
    data
}

/// Parses `seq` and `t` back out of [`event_data`].
pub fn parse_event_data(data: &str) -> Option<(u64, u64)> {
    let mut fields = data.split(' ');
    let seq = fields.next()?.strip_prefix("seq=")?.parse().ok()?;
    let t = fields.next()?.strip_prefix("t=")?.parse().ok()?;
    Some((seq, t))
}

/// Per-topic event history and live broadcast.
struct Topics {
    /// The emitted topics (`t0`..): only these get history and a broadcast
    /// channel; any other name is a private topic.
    names: Vec<String>,
    /// Events a private topic stream sends when it opens.
    private_events: u64,
    /// Size of each event's data.
    size: usize,
    /// Event streams opened so far (reported when emitting is done).
    streams_opened: std::sync::atomic::AtomicU64,
    history: Mutex<HashMap<String, Vec<(u64, String)>>>,
    live: Mutex<HashMap<String, broadcast::Sender<Arc<String>>>>,
}

impl Topics {
    fn sender(&self, topic: &str) -> broadcast::Sender<Arc<String>> {
        self.live
            .lock()
            .unwrap()
            .entry(topic.to_string())
            .or_insert_with(|| broadcast::channel(STREAM_BACKLOG).0)
            .clone()
    }
}

pub async fn run(options: AppOptions) -> std::io::Result<()> {
    let listener = TcpListener::bind(options.listen).await?;
    println!("listening {}", listener.local_addr()?);
    let topics = Arc::new(Topics {
        names: (0..options.topics).map(|t| format!("t{t}")).collect(),
        private_events: options.private_events,
        size: options.size,
        streams_opened: std::sync::atomic::AtomicU64::new(0),
        history: Mutex::new(HashMap::new()),
        live: Mutex::new(HashMap::new()),
    });
    let serving = topics.clone();
    tokio::spawn(async move {
        loop {
            if let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(serving.clone(), socket));
            }
        }
    });

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = stdin.next_line().await {
        if line.trim() == "start" {
            emit(&options, &topics).await;
            let opened = topics
                .streams_opened
                .load(std::sync::atomic::Ordering::Relaxed);
            println!("done {{\"streams_opened\":{opened}}}");
        }
    }
    // Standard input closed: keep serving until killed.
    std::future::pending::<()>().await;
    Ok(())
}

/// Emits the events of every topic at the configured rate.
async fn emit(options: &AppOptions, topics: &Topics) {
    let names: Vec<String> = (0..options.topics).map(|t| format!("t{t}")).collect();
    let mut publishers = Vec::new();
    if let Some(url) = &options.publish_url {
        for name in &names {
            publishers.push(Publisher::new(url, name));
        }
    }
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / options.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for seq in 1..=options.events {
        ticker.tick().await;
        for (index, name) in names.iter().enumerate() {
            let data = event_data(seq, options.size);
            if let Some(publisher) = publishers.get_mut(index) {
                publisher.publish(&data).await;
            }
            let frame = Arc::new(format!("id: {seq}\ndata: {data}\n\n"));
            topics
                .history
                .lock()
                .unwrap()
                .entry(name.clone())
                .or_default()
                .push((seq, frame.to_string()));
            let _ = topics.sender(name).send(frame);
        }
    }
}

/// A keep-alive HTTP/1.1 connection that POSTs events to nchan.
struct Publisher {
    addr: String,
    path: String,
    connection: Option<BufReader<TcpStream>>,
}

impl Publisher {
    fn new(url: &str, topic: &str) -> Publisher {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
        Publisher {
            addr: addr.to_string(),
            path: format!("/{path}/{topic}").replace("//", "/"),
            connection: None,
        }
    }

    async fn publish(&mut self, data: &str) {
        for _attempt in 0..2 {
            if self.connection.is_none() {
                match TcpStream::connect(&self.addr).await {
                    Ok(socket) => {
                        let _ = socket.set_nodelay(true);
                        self.connection = Some(BufReader::new(socket));
                    }
                    Err(e) => {
                        eprintln!("publish: cannot connect to {}: {e}", self.addr);
                        return;
                    }
                }
            }
            let Some(connection) = self.connection.as_mut() else {
                return;
            };
            let request = format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{data}",
                self.path,
                self.addr,
                data.len()
            );
            if connection
                .get_mut()
                .write_all(request.as_bytes())
                .await
                .is_ok()
                && read_response(connection).await
            {
                return;
            }
            self.connection = None;
        }
    }
}

/// Reads one response (head and Content-Length body); false on failure.
async fn read_response(connection: &mut BufReader<TcpStream>) -> bool {
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        match connection.read_line(&mut line).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    connection.read_exact(&mut body).await.is_ok()
}

/// Serves one connection: keep-alive `/hello`s, or one event stream.
async fn serve(topics: Arc<Topics>, socket: TcpStream) {
    let _ = socket.set_nodelay(true);
    let mut reader = BufReader::new(socket);
    loop {
        let Some((path, last_event_id)) = read_request_head(&mut reader).await else {
            return;
        };
        if let Some(topic) = path.strip_prefix("/stream/") {
            stream(&topics, topic, last_event_id, reader).await;
            return;
        }
        let response: &[u8] = if path == "/hello" {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n"
        } else {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        };
        if reader.get_mut().write_all(response).await.is_err() {
            return;
        }
    }
}

/// Reads a request head; returns the path and `Last-Event-ID`.
async fn read_request_head(reader: &mut BufReader<TcpStream>) -> Option<(String, Option<String>)> {
    let mut line = String::new();
    let mut path = None;
    let mut last_event_id = None;
    let mut total = 0;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).await.ok()?;
        total += n;
        if n == 0 || total > MAX_HEAD {
            return None;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if path.is_none() {
            path = trimmed.split(' ').nth(1).map(str::to_string);
        } else if let Some((name, value)) = trimmed.split_once(':') {
            if name.eq_ignore_ascii_case("last-event-id") {
                last_event_id = Some(value.trim().to_string());
            }
        }
    }
    Some((path?, last_event_id))
}

async fn stream(
    topics: &Topics,
    topic: &str,
    last_event_id: Option<String>,
    reader: BufReader<TcpStream>,
) {
    topics
        .streams_opened
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !topics.names.iter().any(|name| name == topic) {
        return private_stream(topics, reader).await;
    }
    let mut live = topics.sender(topic).subscribe();
    let backlog: Vec<String> = match last_event_id.and_then(|id| id.parse::<u64>().ok()) {
        Some(after) => topics
            .history
            .lock()
            .unwrap()
            .get(topic)
            .map(|events| {
                events
                    .iter()
                    .filter(|(seq, _)| *seq > after)
                    .map(|(_, f)| f.clone())
                    .collect()
            })
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let (mut reader, mut socket) = reader.into_inner().into_split();
    // An opening comment, as SSE servers commonly send: proxies that hold
    // the response head until the first body bytes (nginx over HTTP/2) pass
    // it on at once.
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n: ok\n\n";
    if socket.write_all(head).await.is_err() {
        return;
    }
    for frame in backlog {
        if socket.write_all(frame.as_bytes()).await.is_err() {
            return;
        }
    }
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            frame = live.recv() => match frame {
                Ok(frame) => if socket.write_all(frame.as_bytes()).await.is_err() { return },
                Err(_) => return,
            },
            read = reader.read(&mut probe) => if matches!(read, Ok(0) | Err(_)) { return },
        }
    }
}

/// A private topic's stream: a few events at once, then quiet until the
/// proxy closes it (when the topic instance is reclaimed).
async fn private_stream(topics: &Topics, reader: BufReader<TcpStream>) {
    let (mut reader, mut socket) = reader.into_inner().into_split();
    let mut body = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n: ok\n\n",
    );
    for seq in 1..=topics.private_events {
        body.push_str(&format!(
            "id: {seq}\ndata: {}\n\n",
            event_data(seq, topics.size)
        ));
    }
    if socket.write_all(body.as_bytes()).await.is_err() {
        return;
    }
    let mut probe = [0u8; 64];
    while matches!(reader.read(&mut probe).await, Ok(n) if n > 0) {}
}
