//! The load generator: many SSE subscriptions, measured.
//!
//! It opens `--subscribers` subscriptions at `--ramp` per second, over HTTP/2
//! with TLS (`--streams` per connection: 1 is "one browser tab per
//! connection", 100 is "many tabs sharing one") or over HTTP/1.1 (with or
//! without TLS). Subscriber `i` follows topic `i % topics`. When every
//! subscription has been answered it prints `ready {...}` and waits for
//! events; each event carries its sequence number and emit time, so it counts
//! what each subscriber got (distinct, duplicated, out of order) and the
//! delivery latency. On `stop` (standard input) or when every subscriber has
//! every event it prints one JSON line with the results and exits.
//!
//! One process keeps to one core (a current-thread runtime); the comparison
//! runs several processes when one would exceed its open-file limit, binding
//! each to its own 127.0.0.x source address so ephemeral ports last.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::Notify;

use sse_fanout::sse::{Item, Parser, ParserLimits};

use crate::app::{parse_event_data, unix_micros};
use crate::histogram::Histogram;
use crate::tls;

/// Latency histograms, sharded so subscriptions rarely contend.
const HISTOGRAM_SHARDS: usize = 16;
/// HTTP/2 windows large enough that flow control never throttles a reader.
const H2_STREAM_WINDOW: u32 = 1 << 20;
const H2_CONNECTION_WINDOW: u32 = 16 << 20;

/// Which protocol subscriptions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 over TLS (ALPN h2).
    H2,
    /// HTTP/1.1 over TLS (ALPN http/1.1).
    H1Tls,
    /// HTTP/1.1 in plaintext.
    H1,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub target: SocketAddr,
    /// Path with `{topic}` standing for the topic number.
    pub path: String,
    pub topics: usize,
    pub subscribers: usize,
    pub protocol: Protocol,
    pub streams_per_connection: usize,
    pub ramp_per_second: f64,
    pub events: u64,
    pub source: Option<IpAddr>,
}

/// What every subscription reports into.
struct Totals {
    answered: AtomicUsize,
    failed: AtomicUsize,
    finished: AtomicUsize,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    complete: AtomicUsize,
    latency: Vec<Mutex<Histogram>>,
    all_answered: Notify,
    all_complete: Notify,
    /// The first failure, as an example for the report.
    first_error: Mutex<Option<String>>,
}

impl Totals {
    fn respond(&self, ok: bool, subscribers: usize, error: Option<String>) {
        if ok {
            self.answered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Some(error) = error {
                self.first_error.lock().unwrap().get_or_insert(error);
            }
        }
        if self.finished.fetch_add(1, Ordering::Relaxed) + 1 == subscribers {
            self.all_answered.notify_one();
        }
    }
}

/// One subscriber's view of the events.
struct Tally {
    seen: Vec<u64>,
    highest: u64,
    events: u64,
    complete: bool,
}

impl Tally {
    fn new(events: u64) -> Tally {
        Tally {
            seen: vec![0; (events as usize).div_ceil(64)],
            highest: 0,
            events,
            complete: false,
        }
    }

    fn record(&mut self, data: &str, totals: &Totals, shard: usize, subscribers: usize) {
        let Some((seq, emitted)) = parse_event_data(data) else {
            return;
        };
        if seq == 0 || seq > self.events {
            return;
        }
        let (word, bit) = (((seq - 1) / 64) as usize, (seq - 1) % 64);
        if self.seen[word] & (1 << bit) != 0 {
            totals.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.seen[word] |= 1 << bit;
        if seq < self.highest {
            totals.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        self.highest = self.highest.max(seq);
        totals.delivered.fetch_add(1, Ordering::Relaxed);
        totals.latency[shard]
            .lock()
            .unwrap()
            .record(unix_micros().saturating_sub(emitted));
        let distinct: u64 = self.seen.iter().map(|w| w.count_ones() as u64).sum();
        if !self.complete && distinct == self.events {
            self.complete = true;
            if totals.complete.fetch_add(1, Ordering::Relaxed) + 1 == subscribers {
                totals.all_complete.notify_one();
            }
        }
    }
}

pub async fn run(options: LoadOptions) {
    let totals = Arc::new(Totals {
        answered: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        complete: AtomicUsize::new(0),
        latency: (0..HISTOGRAM_SHARDS)
            .map(|_| Mutex::new(Histogram::default()))
            .collect(),
        all_answered: Notify::new(),
        all_complete: Notify::new(),
        first_error: Mutex::new(None),
    });
    let options = Arc::new(options);
    let connector = tls::connector(match options.protocol {
        Protocol::H2 => b"h2".as_slice(),
        _ => b"http/1.1".as_slice(),
    });
    let started = tokio::time::Instant::now();
    let per_connection = match options.protocol {
        Protocol::H2 => options.streams_per_connection.max(1),
        _ => 1,
    };
    let connections = options.subscribers.div_ceil(per_connection);
    for connection in 0..connections {
        let first = connection * per_connection;
        let count = per_connection.min(options.subscribers - first);
        let (options, totals, connector) = (options.clone(), totals.clone(), connector.clone());
        tokio::spawn(async move {
            let start = Duration::from_secs_f64(first as f64 / options.ramp_per_second);
            tokio::time::sleep_until(started + start).await;
            match options.protocol {
                Protocol::H2 => {
                    h2_connection(&options, &totals, connector, first, count, started).await
                }
                Protocol::H1Tls | Protocol::H1 => {
                    h1_subscription(&options, &totals, connector, first).await
                }
            }
        });
    }
    if options.subscribers > 0 {
        totals.all_answered.notified().await;
    }
    println!(
        "ready {}",
        json!({"answered": totals.answered.load(Ordering::Relaxed), "failed": totals.failed.load(Ordering::Relaxed)})
    );

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let answered = totals.answered.load(Ordering::Relaxed);
    tokio::select! {
        _ = async { loop { match stdin.next_line().await { Ok(Some(l)) if l.trim() == "stop" => break, Ok(None) | Err(_) => std::future::pending::<()>().await, _ => {} } } } => {}
        _ = totals.all_complete.notified(), if answered > 0 => {}
    }
    let mut latency = Histogram::default();
    for shard in &totals.latency {
        latency.merge(&shard.lock().unwrap());
    }
    println!(
        "{}",
        json!({
            "answered": answered,
            "failed": totals.failed.load(Ordering::Relaxed),
            "complete": totals.complete.load(Ordering::Relaxed),
            "delivered": totals.delivered.load(Ordering::Relaxed),
            "duplicates": totals.duplicates.load(Ordering::Relaxed),
            "out_of_order": totals.out_of_order.load(Ordering::Relaxed),
            "first_error": totals.first_error.lock().unwrap().clone(),
            "latency": latency.to_json(),
        })
    );
}

fn path_for(options: &LoadOptions, subscriber: usize) -> String {
    options
        .path
        .replace("{topic}", &(subscriber % options.topics.max(1)).to_string())
}

async fn connect(options: &LoadOptions) -> std::io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(source) = options.source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(options.target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Feeds body bytes to a subscription's parser and tallies its events.
fn consume(
    parser: &mut Parser,
    items: &mut Vec<Item>,
    tally: &mut Tally,
    bytes: &[u8],
    totals: &Totals,
    shard: usize,
    subscribers: usize,
) {
    parser.feed(bytes, items);
    for item in items.drain(..) {
        if let Item::Event(event) = item {
            if let Some(data) = event.data() {
                tally.record(data, totals, shard, subscribers);
            }
        }
    }
}

async fn h2_connection(
    options: &LoadOptions,
    totals: &Arc<Totals>,
    connector: tokio_rustls::TlsConnector,
    first: usize,
    count: usize,
    started: tokio::time::Instant,
) {
    let fail_all = |error: String| {
        for _ in 0..count {
            totals.respond(false, options.subscribers, Some(error.clone()));
        }
    };
    let tcp = match connect(options).await {
        Ok(tcp) => tcp,
        Err(e) => return fail_all(format!("connect: {e}")),
    };
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("static name");
    let tls = match connector.connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return fail_all(format!("tls: {e}")),
    };
    let handshake = h2::client::Builder::new()
        .initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .handshake::<_, Bytes>(tls)
        .await;
    let (client, connection) = match handshake {
        Ok(pair) => pair,
        Err(e) => return fail_all(format!("h2 handshake: {e}")),
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    for index in 0..count {
        let subscriber = first + index;
        let start = Duration::from_secs_f64(subscriber as f64 / options.ramp_per_second);
        tokio::time::sleep_until(started + start).await;
        let request = http::Request::builder()
            .uri(format!(
                "https://localhost:{}{}",
                options.target.port(),
                path_for(options, subscriber)
            ))
            .header("accept", "text/event-stream")
            .body(())
            .expect("valid request");
        let client = client.clone();
        let totals = totals.clone();
        let subscribers = options.subscribers;
        let events = options.events;
        tokio::spawn(async move {
            let response = async {
                let mut client = client.ready().await?;
                let (response, _) = client.send_request(request, true)?;
                response.await
            };
            let response = match response.await {
                Ok(response) if response.status() == 200 => response,
                Ok(response) => {
                    return totals.respond(
                        false,
                        subscribers,
                        Some(format!("status {}", response.status())),
                    )
                }
                Err(e) => return totals.respond(false, subscribers, Some(format!("h2: {e}"))),
            };
            totals.respond(true, subscribers, None);
            let mut body = response.into_body();
            let mut parser = Parser::new(ParserLimits::default());
            let mut items = Vec::new();
            let mut tally = Tally::new(events);
            let shard = subscriber % HISTOGRAM_SHARDS;
            while let Some(Ok(data)) = body.data().await {
                let _ = body.flow_control().release_capacity(data.len());
                consume(
                    &mut parser,
                    &mut items,
                    &mut tally,
                    &data,
                    &totals,
                    shard,
                    subscribers,
                );
            }
        });
    }
}

async fn h1_subscription(
    options: &LoadOptions,
    totals: &Arc<Totals>,
    connector: tokio_rustls::TlsConnector,
    subscriber: usize,
) {
    let tcp = match connect(options).await {
        Ok(tcp) => tcp,
        Err(e) => return totals.respond(false, options.subscribers, Some(format!("connect: {e}"))),
    };
    if options.protocol == Protocol::H1 {
        h1_stream(options, totals, tcp, subscriber).await
    } else {
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("static name");
        match connector.connect(name, tcp).await {
            Ok(tls) => h1_stream(options, totals, tls, subscriber).await,
            Err(e) => totals.respond(false, options.subscribers, Some(format!("tls: {e}"))),
        }
    }
}

async fn h1_stream<S: AsyncRead + AsyncWrite + Unpin>(
    options: &LoadOptions,
    totals: &Arc<Totals>,
    stream: S,
    subscriber: usize,
) {
    let mut stream = BufReader::new(stream);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: localhost:{}\r\nAccept: text/event-stream\r\n\r\n",
        path_for(options, subscriber),
        options.target.port()
    );
    if let Err(e) = stream.get_mut().write_all(request.as_bytes()).await {
        return totals.respond(false, options.subscribers, Some(format!("write: {e}")));
    }
    let mut status = 0;
    let mut chunked = false;
    let mut line = String::new();
    loop {
        line.clear();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => {
                return totals.respond(false, options.subscribers, Some("no response head".into()))
            }
            Ok(_) => {}
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if status == 0 {
            status = trimmed
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        } else if let Some((name, value)) = trimmed.split_once(':') {
            if name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    if status != 200 {
        return totals.respond(false, options.subscribers, Some(format!("status {status}")));
    }
    totals.respond(true, options.subscribers, None);
    let mut parser = Parser::new(ParserLimits::default());
    let mut items = Vec::new();
    let mut tally = Tally::new(options.events);
    let shard = subscriber % HISTOGRAM_SHARDS;
    let mut buffer = BytesMut::with_capacity(4096);
    let mut chunk_left: Option<usize> = None;
    loop {
        match stream.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !chunked {
            consume(
                &mut parser,
                &mut items,
                &mut tally,
                &buffer,
                totals,
                shard,
                options.subscribers,
            );
            buffer.clear();
            continue;
        }
        // Chunked framing: size line, data, CRLF.
        loop {
            match chunk_left {
                None => {
                    let Some(end) = buffer.windows(2).position(|w| w == b"\r\n") else {
                        break;
                    };
                    let size_text = String::from_utf8_lossy(&buffer[..end]).to_string();
                    let size =
                        usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                            .unwrap_or(0);
                    buffer.advance(end + 2);
                    if size == 0 {
                        return;
                    }
                    chunk_left = Some(size);
                }
                Some(0) => {
                    if buffer.len() < 2 {
                        break;
                    }
                    buffer.advance(2);
                    chunk_left = None;
                }
                Some(left) => {
                    if buffer.is_empty() {
                        break;
                    }
                    let take = left.min(buffer.len());
                    let data = buffer.split_to(take);
                    consume(
                        &mut parser,
                        &mut items,
                        &mut tally,
                        &data,
                        totals,
                        shard,
                        options.subscribers,
                    );
                    chunk_left = Some(left - take);
                }
            }
        }
    }
}
