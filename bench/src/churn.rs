//! The churn soak: does the proxy's memory stay flat while subscribers come
//! and go, and does it go back when they leave?
//!
//! It starts the benchmark app and sse-fanout (release build) as `compare`
//! does, opens `--subscribers` subscriptions over HTTP/2 with TLS
//! (`--streams` per connection), and then replaces `--replace` of them every
//! second, spread over ten ticks a second:
//! - half of the replacements close whole connections (a browser going
//!   away: the TCP connection just closes), and open new ones;
//! - the other half reset single streams on connections that stay (a tab
//!   closing its EventSource: `RST_STREAM`) and open new streams in their
//!   place (with one stream per connection, every replacement is a
//!   connection).
//!
//! Most subscriptions follow one of `--topics` shared topics, which carry
//! `--rate` events per second from the start (their replay windows fill
//! during the warm-up). A `--private` fraction subscribe to a topic instance
//! of their own (`/events/p<n>`, as a per-user template would be): created
//! for them, reclaimed after they leave and the linger passes, so instances
//! are created and reclaimed all along.
//!
//! It samples the proxy's RSS every second and reports RSS at start (before
//! any subscriber), after the warm-up, its growth over the measured period
//! (the median of the last window against the median of the first, so one
//! sample's noise does not count), a least-squares slope per 10,000
//! subscriptions replaced, and the peak. Then everyone leaves; once `/stats`
//! shows no subscriber and no topic and `--settle` seconds have passed, it
//! reports RSS after everyone left. Every phase has a deadline, and the load
//! stops by itself.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{timeout, Instant};

use crate::compare::{self, Contender, Proc, Setup};
use crate::{procstat, tls};

/// Marks the part of the output file this tool owns.
const START_MARK: &str = "<!-- sse-bench churn: start -->";
const END_MARK: &str = "<!-- sse-bench churn: end -->";
/// Replacements are spread over this many ticks a second.
const TICKS_PER_SECOND: u32 = 10;
/// HTTP/2 windows large enough that flow control never throttles a reader.
const H2_STREAM_WINDOW: u32 = 1 << 20;
const H2_CONNECTION_WINDOW: u32 = 16 << 20;
/// The share of replacements that close whole connections (when there is
/// more than one stream per connection).
const CONNECTION_SHARE: f64 = 0.5;
/// The longest the ramp, and the wait for topics to be reclaimed, may take.
const PHASE_LIMIT: Duration = Duration::from_secs(120);
/// The goal the issue sets for growth after the warm-up.
pub const GROWTH_GOAL_PERCENT: f64 = 2.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct ChurnOptions {
    /// Subscriptions kept open.
    pub subscribers: usize,
    /// HTTP/2 streams per connection.
    pub streams: usize,
    /// Fraction of the subscriptions replaced each second.
    pub replace: f64,
    /// Churn before the measured period: long enough for the shared topics'
    /// replay windows (1000 events by default) to fill, or their filling
    /// shows as growth.
    pub warm_up: Duration,
    /// The measured period.
    pub measure: Duration,
    /// Shared topics, each emitting `rate` events per second.
    pub topics: usize,
    /// Fraction of new subscriptions that get a private topic instance.
    pub private: f64,
    /// Events per second per shared topic.
    pub rate: f64,
    /// Bytes of data per event.
    pub size: usize,
    /// Seconds after the topics were reclaimed before RSS counts as "after
    /// everyone left" (allocator decay, periodic trimming).
    pub settle: Duration,
    /// Where the markdown goes (between the churn markers), if anywhere.
    pub out: Option<PathBuf>,
    /// Where every RSS sample goes (CSV: phase, seconds, replaced, bytes).
    pub samples: Option<PathBuf>,
    /// How the run was invoked, for the report.
    pub command_line: String,
}

impl ChurnOptions {
    /// The full soak: 2,000 subscribers, 10 % replaced per second, 10 minutes
    /// measured after a 3-minute warm-up.
    pub fn full() -> ChurnOptions {
        ChurnOptions {
            subscribers: 2000,
            streams: 10,
            replace: 0.1,
            warm_up: Duration::from_secs(180),
            measure: Duration::from_secs(600),
            topics: 10,
            private: 0.1,
            rate: 10.0,
            size: 100,
            settle: Duration::from_secs(20),
            out: None,
            samples: None,
            command_line: String::new(),
        }
    }

    /// A short run to check the set-up. Events come faster, so the replay
    /// windows (1000 events) still fill during the shorter warm-up.
    pub fn quick() -> ChurnOptions {
        ChurnOptions {
            subscribers: 500,
            rate: 50.0,
            warm_up: Duration::from_secs(60),
            measure: Duration::from_secs(60),
            settle: Duration::from_secs(10),
            ..ChurnOptions::full()
        }
    }
}

/// One RSS reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the phase began.
    pub seconds: f64,
    /// Subscriptions replaced since the phase began.
    pub replaced: u64,
    /// The proxy's resident set, bytes.
    pub rss: u64,
}

/// The figures of one soak.
#[derive(Debug, Clone, Default)]
pub struct ChurnOutcome {
    pub rss_start: u64,
    pub rss_warm: u64,
    pub rss_end: u64,
    pub rss_peak: u64,
    pub growth_percent: f64,
    /// Bytes of RSS per 10,000 subscriptions replaced (least squares).
    pub slope_per_10k: f64,
    pub rss_left: u64,
    /// Seconds from everyone leaving to `/stats` showing no topic.
    pub reclaim_seconds: f64,
    pub replaced_measured: u64,
    pub opened: u64,
    pub answered: u64,
    pub failed: u64,
    /// Streams the proxy (or a broken connection) ended before the load
    /// replaced them.
    pub ended: u64,
    pub private_topics: u64,
    /// Subscribers and topics `/stats` showed at the end of the measured period.
    pub stats_subscribers: u64,
    pub stats_topics: u64,
    pub first_error: Option<String>,
}

/// The median of `values` (the lower one of the middle two), if any.
pub fn median(values: &[u64]) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

/// RSS growth over a measured period, in percent: the median of the samples
/// in its last `window` seconds against the median of those in its first.
pub fn growth_percent(samples: &[Sample], window: f64) -> Option<f64> {
    let end = samples.last()?.seconds;
    let first: Vec<u64> = samples
        .iter()
        .filter(|s| s.seconds < window)
        .map(|s| s.rss)
        .collect();
    let last: Vec<u64> = samples
        .iter()
        .filter(|s| s.seconds > end - window)
        .map(|s| s.rss)
        .collect();
    let (first, last) = (median(&first)?, median(&last)?);
    if first == 0 {
        return None;
    }
    Some(100.0 * (last as f64 - first as f64) / first as f64)
}

/// The least-squares slope of RSS against subscriptions replaced, in bytes
/// per 10,000 replaced.
pub fn slope_per_10k(samples: &[Sample]) -> Option<f64> {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return None;
    }
    let mean_x = samples.iter().map(|s| s.replaced as f64).sum::<f64>() / n;
    let mean_y = samples.iter().map(|s| s.rss as f64).sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for s in samples {
        let dx = s.replaced as f64 - mean_x;
        covariance += dx * (s.rss as f64 - mean_y);
        variance += dx * dx;
    }
    (variance > 0.0).then(|| 10_000.0 * covariance / variance)
}

/// The growth window for a measured period: a minute, or a quarter of a
/// shorter period.
pub fn window_for(measure: Duration) -> f64 {
    (measure.as_secs_f64() / 4.0).min(60.0)
}

/// What every subscription reports into.
#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    ended: AtomicU64,
    /// The first failure, as an example for the report.
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn fail(&self, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(error);
        }
    }
}

/// A small deterministic generator (xorshift64*): which connection or
/// stream to replace, which topic to follow.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// One HTTP/2 connection and the subscriptions on it; dropping it closes
/// the connection (its driver task ends, so the socket closes).
struct Connection {
    sender: h2::client::SendRequest<Bytes>,
    driver: AbortHandle,
    streams: Vec<AbortHandle>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        for stream in &self.streams {
            stream.abort();
        }
        self.driver.abort();
    }
}

/// A connection handshake that finished: its slot and the result.
type Connected = (
    usize,
    Result<(h2::client::SendRequest<Bytes>, AbortHandle), String>,
);

/// A connection slot of the pool.
enum Slot {
    /// No connection (a handshake failed): dialled again on the next tick.
    Empty,
    /// A handshake is under way.
    Dialling,
    Open(Connection),
}

/// The subscriptions kept open, by connection slot.
struct Pool {
    port: u16,
    streams: usize,
    private: f64,
    topics: usize,
    slots: Vec<Slot>,
    connector: tokio_rustls::TlsConnector,
    done_tx: mpsc::Sender<Connected>,
    done_rx: mpsc::Receiver<Connected>,
    counters: Arc<Counters>,
    random: Random,
    private_topics: u64,
    /// Subscriptions replaced so far.
    replaced: u64,
}

impl Pool {
    fn new(port: u16, options: &ChurnOptions) -> Pool {
        let connections = options.subscribers.div_ceil(options.streams.max(1));
        let (done_tx, done_rx) = mpsc::channel(connections.max(1));
        Pool {
            port,
            streams: options.streams.max(1),
            private: options.private,
            topics: options.topics.max(1),
            slots: (0..connections).map(|_| Slot::Empty).collect(),
            connector: tls::connector(b"h2"),
            done_tx,
            done_rx,
            counters: Arc::new(Counters::default()),
            random: Random(0x5eed_cafe_f00d_d00d),
            private_topics: 0,
            replaced: 0,
        }
    }

    /// Starts setting up the connection of `slot`.
    fn dial(&mut self, slot: usize) {
        self.slots[slot] = Slot::Dialling;
        let (port, connector, done) = (self.port, self.connector.clone(), self.done_tx.clone());
        tokio::spawn(async move {
            let result = handshake(port, connector).await;
            let _ = done.send((slot, result)).await;
        });
    }

    /// Places a finished handshake and opens its streams.
    fn connected(&mut self, (slot, result): Connected) {
        match result {
            Ok((sender, driver)) => {
                let mut connection = Connection {
                    sender,
                    driver,
                    streams: Vec::with_capacity(self.streams),
                };
                for _ in 0..self.streams {
                    let stream = self.subscribe(&connection.sender);
                    connection.streams.push(stream);
                }
                self.slots[slot] = Slot::Open(connection);
            }
            Err(error) => {
                for _ in 0..self.streams {
                    self.counters.fail(error.clone());
                }
                self.slots[slot] = Slot::Empty;
            }
        }
    }

    /// Opens one subscription on a connection.
    fn subscribe(&mut self, sender: &h2::client::SendRequest<Bytes>) -> AbortHandle {
        let topic = if self.random.chance(self.private) {
            self.private_topics += 1;
            format!("p{}", self.private_topics)
        } else {
            format!("t{}", self.random.below(self.topics))
        };
        let uri = format!("https://localhost:{}/events/{topic}", self.port);
        tokio::spawn(subscription(sender.clone(), uri, self.counters.clone())).abort_handle()
    }

    /// Dials up to `limit` empty slots (the ramp, and recovery from a
    /// failed handshake).
    fn fill(&mut self, limit: usize) {
        let empty: Vec<usize> = (0..self.slots.len())
            .filter(|s| matches!(self.slots[*s], Slot::Empty))
            .take(limit)
            .collect();
        for slot in empty {
            self.dial(slot);
        }
    }

    /// A random slot with an open connection (a few tries).
    fn random_open(&mut self) -> Option<usize> {
        (0..8)
            .map(|_| self.random.below(self.slots.len()))
            .find(|slot| matches!(self.slots[*slot], Slot::Open(_)))
    }

    /// Closes a random connection and dials its replacement.
    fn replace_connection(&mut self) {
        let Some(slot) = self.random_open() else {
            return;
        };
        if let Slot::Open(connection) = std::mem::replace(&mut self.slots[slot], Slot::Empty) {
            self.replaced += connection.streams.len() as u64;
            drop(connection);
            self.dial(slot);
        }
    }

    /// Resets a random stream and opens a new one on the same connection.
    fn replace_stream(&mut self) {
        let Some(slot) = self.random_open() else {
            return;
        };
        let Slot::Open(connection) = &self.slots[slot] else {
            return;
        };
        let sender = connection.sender.clone();
        let index = self.random.below(self.streams);
        let stream = self.subscribe(&sender);
        if let Slot::Open(connection) = &mut self.slots[slot] {
            if let Some(old) = connection.streams.get_mut(index) {
                old.abort();
                *old = stream;
                self.replaced += 1;
            }
        }
    }

    fn all_open(&self) -> bool {
        self.slots.iter().all(|s| matches!(s, Slot::Open(_)))
    }
}

/// TCP, TLS and the HTTP/2 handshake; the connection's driver runs in its
/// own task.
async fn handshake(
    port: u16,
    connector: tokio_rustls::TlsConnector,
) -> Result<(h2::client::SendRequest<Bytes>, AbortHandle), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("static name");
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, driver.abort_handle()))
}

/// One subscription: the request, then the body read (and dropped) until
/// the load replaces it (aborting this task resets the stream).
async fn subscription(
    sender: h2::client::SendRequest<Bytes>,
    uri: String,
    counters: Arc<Counters>,
) {
    counters.opened.fetch_add(1, Ordering::Relaxed);
    let request = match http::Request::builder()
        .uri(uri)
        .header("accept", "text/event-stream")
        .body(())
    {
        Ok(request) => request,
        Err(e) => return counters.fail(format!("request: {e}")),
    };
    let response = async {
        let mut sender = sender.ready().await?;
        let (response, _) = sender.send_request(request, true)?;
        response.await
    };
    let response = match response.await {
        Ok(response) if response.status() == 200 => response,
        Ok(response) => return counters.fail(format!("status {}", response.status())),
        Err(e) => return counters.fail(format!("h2: {e}")),
    };
    counters.answered.fetch_add(1, Ordering::Relaxed);
    let mut body = response.into_body();
    while let Some(Ok(data)) = body.data().await {
        let _ = body.flow_control().release_capacity(data.len());
    }
    counters.ended.fetch_add(1, Ordering::Relaxed);
}

/// `GET /stats` on the admin listener.
async fn stats(port: u16) -> Option<Value> {
    let fetch = async {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        socket
            .write_all(b"GET /stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        socket.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    };
    timeout(Duration::from_secs(5), fetch).await.ok()?
}

/// Subscribers and topics in `/stats`.
fn totals(stats: &Value) -> (u64, u64) {
    (
        stats["totals"]["subscribers"].as_u64().unwrap_or(u64::MAX),
        stats["totals"]["topics"].as_u64().unwrap_or(u64::MAX),
    )
}

/// Runs the soak and prints (and, with `out`, writes) the report.
pub async fn run(setup: Setup, options: ChurnOptions) {
    let dir = std::env::temp_dir().join(format!(
        "sse-bench-churn-{}-{}",
        std::process::id(),
        compare::free_port()
    ));
    let _ = std::fs::create_dir_all(&dir);
    let result = soak(&setup, &options, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("sse-bench churn: {e}");
            std::process::exit(1);
        }
    };
    println!("churn {}", summary(&outcome));
    let text = report(&options, &outcome).await;
    println!("{text}");
    if let Some(out) = &options.out {
        write_between_marks(out, &text);
    }
}

async fn soak(
    setup: &Setup,
    options: &ChurnOptions,
    dir: &std::path::Path,
) -> Result<ChurnOutcome, String> {
    let mut outcome = ChurnOutcome::default();
    let app_port = compare::free_port();
    let running = compare::start_contender(setup, Contender::SseFanout, app_port, dir).await?;
    let pid = running.pids[0];
    let admin = running.admin_port.ok_or("no admin port")?;
    let total = options.warm_up + options.measure + PHASE_LIMIT * 3;
    let events = (options.rate * total.as_secs_f64()).ceil() as u64;
    let mut app = Proc::spawn(Command::new(setup.bin_dir.join("sse-bench")).args([
        "app",
        "--listen",
        &format!("127.0.0.1:{app_port}"),
        "--topics",
        &options.topics.to_string(),
        "--rate",
        &options.rate.to_string(),
        "--events",
        &events.to_string(),
        "--size",
        &options.size.to_string(),
        "--private-events",
        "5",
    ]))
    .map_err(|e| format!("cannot start the app: {e}"))?;
    app.expect("listening", Duration::from_secs(10))
        .await
        .ok_or("the app did not start")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    outcome.rss_start = procstat::rss_bytes(pid).ok_or("cannot read the proxy's RSS")?;
    app.say("start").await;

    // Ramp: about 1000 subscriptions a second.
    let mut pool = Pool::new(running.tls_port, options);
    let per_tick = (1000 / TICKS_PER_SECOND as usize)
        .div_ceil(pool.streams)
        .max(1);
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / TICKS_PER_SECOND);
    let ramp_deadline = Instant::now() + PHASE_LIMIT;
    loop {
        tokio::select! {
            _ = ticker.tick() => pool.fill(per_tick),
            Some(done) = pool.done_rx.recv() => pool.connected(done),
        }
        let settled = pool.counters.answered.load(Ordering::Relaxed)
            + pool.counters.failed.load(Ordering::Relaxed);
        if pool.all_open() && settled >= options.subscribers as u64 {
            break;
        }
        if Instant::now() > ramp_deadline {
            return Err(format!(
                "the ramp did not finish: {} answered, {} failed ({:?})",
                pool.counters.answered.load(Ordering::Relaxed),
                pool.counters.failed.load(Ordering::Relaxed),
                pool.counters
                    .first_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
            ));
        }
    }
    eprintln!(
        "churn: {} subscribers open; warming up for {:?}",
        options.subscribers, options.warm_up
    );

    let warm = churn(&mut pool, options, options.warm_up, pid).await;
    outcome.rss_warm = warm.last().map_or(0, |s| s.rss);
    eprintln!(
        "churn: RSS {:.1} MB after the warm-up; measuring for {:?}",
        mb(outcome.rss_warm),
        options.measure
    );
    let measured = churn(&mut pool, options, options.measure, pid).await;
    outcome.rss_end = measured.last().map_or(0, |s| s.rss);
    outcome.rss_peak = measured
        .iter()
        .chain(&warm)
        .map(|s| s.rss)
        .max()
        .unwrap_or(0);
    outcome.growth_percent =
        growth_percent(&measured, window_for(options.measure)).unwrap_or(f64::NAN);
    outcome.slope_per_10k = slope_per_10k(&measured).unwrap_or(f64::NAN);
    outcome.replaced_measured = measured.last().map_or(0, |s| s.replaced);
    if let Some(stats) = stats(admin).await {
        (outcome.stats_subscribers, outcome.stats_topics) = totals(&stats);
    }
    let counters = pool.counters.clone();
    outcome.private_topics = pool.private_topics;

    // Everyone leaves; the topics are reclaimed after their linger.
    drop(pool);
    let left = Instant::now();
    loop {
        if let Some(stats) = stats(admin).await {
            if totals(&stats) == (0, 0) {
                break;
            }
        }
        if left.elapsed() > PHASE_LIMIT {
            return Err("the topics were not reclaimed after everyone left".into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    outcome.reclaim_seconds = left.elapsed().as_secs_f64();
    tokio::time::sleep(options.settle).await;
    outcome.rss_left = procstat::rss_bytes(pid).unwrap_or(0);
    if let Some(path) = &options.samples {
        let mut csv = String::from("phase,seconds,replaced,rss\n");
        for (phase, samples) in [("warm-up", &warm), ("measured", &measured)] {
            for s in samples {
                let _ = writeln!(csv, "{phase},{:.1},{},{}", s.seconds, s.replaced, s.rss);
            }
        }
        let _ = writeln!(
            csv,
            "left,{:.1},0,{}",
            outcome.reclaim_seconds + options.settle.as_secs_f64(),
            outcome.rss_left
        );
        if let Err(e) = std::fs::write(path, csv) {
            eprintln!("sse-bench churn: cannot write {}: {e}", path.display());
        }
    }

    outcome.opened = counters.opened.load(Ordering::Relaxed);
    outcome.answered = counters.answered.load(Ordering::Relaxed);
    outcome.failed = counters.failed.load(Ordering::Relaxed);
    outcome.ended = counters.ended.load(Ordering::Relaxed);
    outcome.first_error = counters.first_error.lock().ok().and_then(|e| e.clone());
    drop(app);
    running.stop().await;
    Ok(outcome)
}

/// Replaces subscriptions for `period`, sampling RSS every second.
async fn churn(pool: &mut Pool, options: &ChurnOptions, period: Duration, pid: u32) -> Vec<Sample> {
    let per_tick = options.subscribers as f64 * options.replace / f64::from(TICKS_PER_SECOND);
    let connection_share = if pool.streams > 1 {
        CONNECTION_SHARE
    } else {
        1.0
    };
    let (mut connection_budget, mut stream_budget) = (0.0, 0.0);
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / TICKS_PER_SECOND);
    let start = Instant::now();
    let replaced_before = pool.replaced;
    let mut samples = Vec::new();
    let mut ticks = 0u32;
    while start.elapsed() < period {
        tokio::select! {
            _ = ticker.tick() => {
                connection_budget += per_tick * connection_share / pool.streams as f64;
                stream_budget += per_tick * (1.0 - connection_share);
                while connection_budget >= 1.0 {
                    pool.replace_connection();
                    connection_budget -= 1.0;
                }
                while stream_budget >= 1.0 {
                    pool.replace_stream();
                    stream_budget -= 1.0;
                }
                // A handshake that failed leaves its slot empty: dial again.
                pool.fill(usize::MAX);
                ticks += 1;
                if ticks.is_multiple_of(TICKS_PER_SECOND) {
                    if let Some(rss) = procstat::rss_bytes(pid) {
                        samples.push(Sample {
                            seconds: start.elapsed().as_secs_f64(),
                            replaced: pool.replaced - replaced_before,
                            rss,
                        });
                    }
                }
            }
            Some(done) = pool.done_rx.recv() => pool.connected(done),
        }
    }
    samples
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// One JSON line with every figure (for scripts and the comparison notes).
fn summary(o: &ChurnOutcome) -> Value {
    json!({
        "rss_start_mb": round1(mb(o.rss_start)),
        "rss_warm_mb": round1(mb(o.rss_warm)),
        "rss_end_mb": round1(mb(o.rss_end)),
        "rss_peak_mb": round1(mb(o.rss_peak)),
        "growth_percent": round1(o.growth_percent),
        "slope_kb_per_10k": round1(o.slope_per_10k / 1e3),
        "rss_left_mb": round1(mb(o.rss_left)),
        "reclaim_seconds": round1(o.reclaim_seconds),
        "replaced_measured": o.replaced_measured,
        "opened": o.opened,
        "answered": o.answered,
        "failed": o.failed,
        "ended_by_proxy": o.ended,
        "private_topics": o.private_topics,
        "stats_subscribers": o.stats_subscribers,
        "stats_topics": o.stats_topics,
        "first_error": o.first_error,
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The markdown section.
async fn report(options: &ChurnOptions, o: &ChurnOutcome) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "{START_MARK}");
    let _ = writeln!(text, "### Churn soak: the last run\n");
    let _ = writeln!(
        text,
        "Command: `{}`; sse-fanout {} (release build), 2 worker threads; {}.\n",
        options.command_line,
        git_describe().await,
        today().await,
    );
    let _ = writeln!(
        text,
        "{} subscribers over HTTP/2 + TLS, {} streams per connection; {:.0} % of them replaced every second (half by closing whole connections, half by resetting single streams); {} shared topics at {} events/s ({}-byte events); {:.0} % of new subscriptions on a private topic instance of their own, reclaimed after they leave. {} s of warm-up, then {} s measured. RSS is the proxy's `VmRSS`, sampled every second.\n",
        options.subscribers,
        options.streams,
        100.0 * options.replace,
        options.topics,
        options.rate,
        options.size,
        100.0 * options.private,
        options.warm_up.as_secs(),
        options.measure.as_secs(),
    );
    let window = window_for(options.measure);
    let met = if o.growth_percent <= GROWTH_GOAL_PERCENT {
        "yes"
    } else {
        "**no**"
    };
    text.push_str("| figure | value |\n|---|---|\n");
    let _ = writeln!(
        text,
        "| RSS at start (no subscriber) | {:.1} MB |",
        mb(o.rss_start)
    );
    let _ = writeln!(text, "| RSS after the warm-up | {:.1} MB |", mb(o.rss_warm));
    let _ = writeln!(
        text,
        "| RSS growth over the measured period (median of the last {window:.0} s against the first {window:.0} s) | {:+.1} % (goal ≤ {GROWTH_GOAL_PERCENT} %: {met}) |",
        o.growth_percent
    );
    let _ = writeln!(
        text,
        "| slope (least squares) | {:+.0} KB per 10,000 subscriptions replaced |",
        o.slope_per_10k / 1e3
    );
    let _ = writeln!(
        text,
        "| RSS at the end / peak | {:.1} MB / {:.1} MB |",
        mb(o.rss_end),
        mb(o.rss_peak)
    );
    let _ = writeln!(
        text,
        "| RSS after everyone left and every topic was reclaimed (after {:.0} s, then {} s more) | {:.1} MB |",
        o.reclaim_seconds,
        options.settle.as_secs(),
        mb(o.rss_left)
    );
    let _ = writeln!(
        text,
        "| subscriptions: replaced while measured / opened / answered / failed / ended by the proxy | {} / {} / {} / {} / {} |",
        o.replaced_measured, o.opened, o.answered, o.failed, o.ended
    );
    let _ = writeln!(
        text,
        "| private topic instances created | {} |",
        o.private_topics
    );
    let _ = writeln!(
        text,
        "| `/stats` at the end of the measured period: subscribers / topics | {} / {} |",
        o.stats_subscribers, o.stats_topics
    );
    if let Some(error) = &o.first_error {
        let _ = writeln!(text, "\nFirst failure: {error}");
    }
    let _ = writeln!(text, "{END_MARK}");
    text
}

async fn git_describe() -> String {
    command_output("git", &["describe", "--always", "--dirty"]).await
}

async fn today() -> String {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).await
}

async fn command_output(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output().await {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(_) => "unknown".into(),
    }
}

/// Replaces the text between the churn markers of `out` (or appends it).
fn write_between_marks(out: &std::path::Path, text: &str) {
    let existing = std::fs::read_to_string(out).unwrap_or_else(|_| "# Benchmarks\n".into());
    let updated = match (existing.find(START_MARK), existing.find(END_MARK)) {
        (Some(start), Some(end)) if start < end => format!(
            "{}{}{}",
            &existing[..start],
            text.trim_end_matches('\n'),
            &existing[end + END_MARK.len()..]
        ),
        _ => format!("{}\n\n{text}", existing.trim_end()),
    };
    if let Err(e) = std::fs::write(out, updated) {
        eprintln!("sse-bench churn: cannot write {}: {e}", out.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rss: &[u64]) -> Vec<Sample> {
        rss.iter()
            .enumerate()
            .map(|(i, rss)| Sample {
                seconds: i as f64,
                replaced: 200 * i as u64,
                rss: *rss,
            })
            .collect()
    }

    #[test]
    fn median_takes_the_middle_value_whatever_the_order() {
        assert_eq!(median(&[5, 1, 3]), Some(3));
        assert_eq!(median(&[4, 1, 3, 2]), Some(2));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn growth_compares_the_medians_of_the_first_and_last_windows() {
        // First 3 s: median 100; last 3 s: median 102; the spike is ignored.
        let s = samples(&[100, 100, 999, 101, 101, 102, 102, 150, 102]);
        let growth = growth_percent(&s, 3.0).unwrap();
        assert!((growth - 2.0).abs() < 1e-9, "{growth}");
    }

    #[test]
    fn flat_memory_has_no_growth_and_no_slope() {
        let s = samples(&[100; 20]);
        assert_eq!(growth_percent(&s, 5.0), Some(0.0));
        assert_eq!(slope_per_10k(&s), Some(0.0));
    }

    #[test]
    fn slope_is_bytes_per_ten_thousand_replaced() {
        // 1 byte per subscription replaced.
        let s: Vec<Sample> = (0..10)
            .map(|i| Sample {
                seconds: i as f64,
                replaced: 1000 * i,
                rss: 50_000 + 1000 * i,
            })
            .collect();
        assert!((slope_per_10k(&s).unwrap() - 10_000.0).abs() < 1e-6);
    }

    #[test]
    fn no_samples_give_no_figure() {
        assert_eq!(growth_percent(&[], 60.0), None);
        assert_eq!(slope_per_10k(&samples(&[1])), None);
    }

    #[test]
    fn the_window_is_a_minute_or_a_quarter_of_a_short_period() {
        assert_eq!(window_for(Duration::from_secs(600)), 60.0);
        assert_eq!(window_for(Duration::from_secs(60)), 15.0);
    }
}
