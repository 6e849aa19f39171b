//! The client matrix: real SSE client libraries, used the way applications
//! use them, subscribe through the proxy to the scripted app, and what each
//! application sees is compared with what the app published, exactly: no
//! empty or extra event, none missing, none doubled, and the client's last
//! event id where the app's is.
//!
//! The clients (see docs/clients.md for what each one sees and why):
//! - the `eventsource` npm package (a WHATWG `EventSource` for Node.js),
//! - `@microsoft/fetch-event-source` (Node.js, with the browser globals it
//!   expects shimmed), which hands the application an event for every blank
//!   line, even one ending a block without data,
//! - `httpx-sse` (Python), which does the same once the block or the stream
//!   set an id or a `retry`; the script reconnects as services built on it
//!   do, after the last `retry` with `Last-Event-ID`,
//! - Chromium's own `EventSource` (Debian's `/usr/bin/chromium`, headless,
//!   through playwright-core), on a page of the proxy's origin.
//!
//! Each client is a small script (`tests/browser/clients/*.mjs`,
//! `tests/clients/httpx_sse_client.py`) that prints one JSON line per thing
//! its application sees; the tests read them as they come. Each scenario runs
//! every client at once, each on its own topic instance of one proxy.
//!
//! Needs `node` with `tests/browser/node_modules` (`npm ci` there),
//! `/usr/bin/chromium`, and the venv `target/client-venv` with
//! `tests/clients/requirements.txt` (`.ci/run` makes it). A client whose
//! tools are missing is skipped with a loud notice, unless `CI` is set: then
//! the tests fail.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use sse_fanout::sse::Item;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use common::client::Client;
use common::sse_app::SseApp;
use common::sse_client::EventStream;
use common::{Proxy, PATIENCE};

/// The browser the Chromium client drives (Debian's package).
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long a client may take to open its first stream: a browser starting
/// on a machine busy with the other tests takes longer than a request.
const START_PATIENCE: Duration = Duration::from_secs(40);

/// How long a client script may run before it exits by itself.
const CLIENT_LIFETIME_MS: u64 = 120_000;

/// The reconnection time the topics give, short so reconnects are quick.
const RETRY: &str = "500ms";

/// Heartbeats of the idle-topic scenario.
const SHORT_HEARTBEAT: &str = "200ms";

/// Heartbeats the idle-topic scenario waits for after the first event.
const HEARTBEATS: usize = 4;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv `.ci/run` installs `tests/clients/requirements.txt` into.
fn venv_python() -> PathBuf {
    repo().join("target/client-venv/bin/python")
}

/// A client library of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Library {
    /// The `eventsource` npm package.
    EventSource,
    /// `@microsoft/fetch-event-source`.
    FetchEventSource,
    /// `httpx-sse`.
    HttpxSse,
    /// Chromium's `EventSource`.
    Chromium,
}

impl Library {
    const ALL: [Library; 4] = [
        Library::EventSource,
        Library::FetchEventSource,
        Library::HttpxSse,
        Library::Chromium,
    ];

    /// Its name, in topic paths and messages.
    fn name(self) -> &'static str {
        match self {
            Library::EventSource => "eventsource",
            Library::FetchEventSource => "fetch-event-source",
            Library::HttpxSse => "httpx-sse",
            Library::Chromium => "chromium",
        }
    }

    /// Whether it hands the application an event for a block that has an
    /// id but no data (the id-only priming block): the libraries that
    /// dispatch on blank lines rather than on data, as EventSource does.
    fn dispatches_blocks_without_data(self) -> bool {
        matches!(self, Library::FetchEventSource | Library::HttpxSse)
    }

    /// What this machine lacks to run it.
    fn missing(self) -> Vec<String> {
        let mut missing = Vec::new();
        let node_module = |package: &str| {
            repo()
                .join("tests/browser/node_modules")
                .join(package)
                .join("package.json")
                .exists()
        };
        let node = || {
            std::process::Command::new("node")
                .arg("--version")
                .output()
                .is_ok()
        };
        match self {
            Library::EventSource | Library::FetchEventSource | Library::Chromium => {
                if !node() {
                    missing.push("node".to_string());
                }
                let package = match self {
                    Library::EventSource => "eventsource",
                    Library::FetchEventSource => "@microsoft/fetch-event-source",
                    _ => "playwright-core",
                };
                if !node_module(package) {
                    missing.push(format!("tests/browser/node_modules/{package}"));
                }
                if self == Library::Chromium && !Path::new(CHROMIUM).exists() {
                    missing.push(CHROMIUM.to_string());
                }
            }
            Library::HttpxSse => {
                let imports = std::process::Command::new(venv_python())
                    .args(["-c", "import httpx, httpx_sse"])
                    .output()
                    .is_ok_and(|out| out.status.success());
                if !imports {
                    missing.push(format!(
                        "{} with httpx-sse (tests/clients/requirements.txt)",
                        venv_python().display()
                    ));
                }
            }
        }
        missing
    }

    /// The script that runs it against `url`.
    fn command(self, url: &str) -> Command {
        let lifetime = CLIENT_LIFETIME_MS.to_string();
        let mut command = match self {
            Library::HttpxSse => {
                let mut command = Command::new(venv_python());
                command.arg(repo().join("tests/clients/httpx_sse_client.py"));
                command
            }
            _ => {
                let script = match self {
                    Library::EventSource => "eventsource.mjs",
                    Library::FetchEventSource => "fetch-event-source.mjs",
                    _ => "chromium.mjs",
                };
                let mut command = Command::new("node");
                command
                    .arg(script)
                    .current_dir(repo().join("tests/browser/clients"))
                    .env("CHROMIUM", CHROMIUM);
                command
            }
        };
        command.arg(url).arg(lifetime);
        command
    }
}

/// The libraries this machine can run, after a loud notice for any other
/// (or a failure, with `CI` set).
fn libraries() -> &'static [Library] {
    static AVAILABLE: OnceLock<Result<Vec<Library>, String>> = OnceLock::new();
    let available = AVAILABLE.get_or_init(|| {
        let mut available = Vec::new();
        let mut skipped = Vec::new();
        for library in Library::ALL {
            let missing = library.missing();
            if missing.is_empty() {
                available.push(library);
            } else {
                skipped.push(format!("{}: needs {}", library.name(), missing.join(", ")));
            }
        }
        if skipped.is_empty() {
            return Ok(available);
        }
        let how = "install with: apt-get install -y chromium; (cd tests/browser && npm ci); \
                   python3 -m venv target/client-venv && \
                   target/client-venv/bin/pip install -r tests/clients/requirements.txt \
                   (or run .ci/run)";
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
            return Err(format!(
                "CI must install every client of the matrix: {}; {how}",
                skipped.join("; ")
            ));
        }
        // Straight to stderr, past the test harness's capture, so it is seen.
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n\
             ************************************************************************\n\
             *  SKIPPED in tests/clients.rs (the client matrix):\n\
             *  {}\n\
             *  {how}\n\
             ************************************************************************\n",
            skipped.join("\n*  ")
        );
        Ok(available)
    });
    match available {
        Ok(available) => available,
        Err(why) => panic!("{why}"),
    }
}

/// An event as the application saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    data: String,
    /// The id the client would resume from right after this event (the
    /// `lastEventId` of an EventSource's message).
    last_event_id: String,
}

/// The app's event `id` with `data`, as an application should see it.
fn event(id: &str, data: &str) -> Seen {
    Seen {
        data: data.to_string(),
        last_event_id: id.to_string(),
    }
}

/// An event without data: what a client that dispatches blank lines makes of
/// a block with an id (or a `retry`) and no data.
fn empty(last_event_id: &str) -> Seen {
    event(last_event_id, "")
}

/// A client script running against the proxy, and everything it reported.
struct Subscriber {
    library: Library,
    /// The topic path it subscribed to.
    path: String,
    /// The script (killed when dropped; it also exits when its stdin, held
    /// here, closes).
    _child: Child,
    /// Its report, one JSON value per line, as they came.
    lines: Arc<Mutex<Vec<Value>>>,
    /// What it wrote to stderr.
    stderr: Arc<Mutex<String>>,
}

impl Subscriber {
    /// Starts `library` on `path` at the proxy's plaintext listener.
    fn start(library: Library, proxy: &Proxy, path: &str) -> Subscriber {
        let url = format!("http://127.0.0.1:{}{path}", proxy.plain_addr.port());
        let mut child = library
            .command(&url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", library.name()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let into = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "kind": "unparsed", "line": line }));
                into.lock().unwrap().push(value);
            }
        });
        let mut err = child.stderr.take().unwrap();
        let into = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                into.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Subscriber {
            library,
            path: path.to_string(),
            _child: child,
            lines,
            stderr,
        }
    }

    fn name(&self) -> &'static str {
        self.library.name()
    }

    fn lines_of(&self, kind: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line["kind"] == kind)
            .cloned()
            .collect()
    }

    /// Every event its application saw, in order.
    fn seen(&self) -> Vec<Seen> {
        self.lines_of("message")
            .iter()
            .map(|line| Seen {
                data: line["data"].as_str().unwrap_or_default().to_string(),
                last_event_id: line["lastEventId"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    }

    /// The event types of what it saw.
    fn types(&self) -> Vec<String> {
        self.lines_of("message")
            .iter()
            .map(|line| line["type"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The `Last-Event-ID` of each request it made (`None`: not sent).
    fn connects(&self) -> Vec<Option<String>> {
        self.lines_of("connect")
            .iter()
            .map(|line| line["lastEventId"].as_str().map(str::to_string))
            .collect()
    }

    fn opens(&self) -> usize {
        self.lines_of("open").len()
    }

    /// Everything it reported, for a failure message.
    fn transcript(&self) -> String {
        let lines: Vec<String> = self
            .lines
            .lock()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect();
        format!(
            "--- {} on {} ---\n{}\n--- stderr ---\n{}",
            self.name(),
            self.path,
            lines.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// Waits up to `patience` until `check` holds for it.
    async fn wait_for(&self, what: &str, patience: Duration, check: impl Fn(&Subscriber) -> bool) {
        let deadline = tokio::time::Instant::now() + patience;
        while !check(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never {what}:\n{}",
                self.name(),
                self.transcript()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until its stream opened `n` times.
    async fn wait_for_opens(&self, n: usize, patience: Duration) {
        self.wait_for(&format!("opened {n} streams"), patience, |s| s.opens() >= n)
            .await;
    }

    /// Waits until its application saw an event with `data`.
    async fn wait_for_data(&self, data: &str) {
        self.wait_for(&format!("saw {data:?}"), PATIENCE, |s| {
            s.seen().iter().any(|seen| seen.data == data)
        })
        .await;
    }
}

/// The requests a client should have made.
#[derive(Clone, Copy, Debug)]
enum Connects {
    /// One, without `Last-Event-ID`: it never had to reconnect.
    Once,
    /// One without `Last-Event-ID`, then reconnects, each with this one.
    /// (More than one is right: a browser may send its reconnect over a
    /// connection it kept alive to the old process, which ends it at once.)
    ResumedFrom(&'static str),
}

/// Collects per-client failures, so one client's failure does not hide
/// another's; [`Verdict::assert`] fails the test with all of them.
#[derive(Default)]
struct Verdict {
    failures: Vec<String>,
}

impl Verdict {
    /// Checks `subscriber`'s application saw exactly `expected` (each of
    /// type `message`), over the requests `connects` describes, without
    /// giving up.
    fn check(&mut self, subscriber: &Subscriber, expected: &[Seen], connects: Connects) {
        let seen = subscriber.seen();
        let mut wrong = Vec::new();
        if seen != expected {
            wrong.push(format!("saw {seen:?}\n  expected {expected:?}"));
        }
        let types = subscriber.types();
        if types.iter().any(|t| t != "message") {
            wrong.push(format!("event types {types:?}, expected only \"message\""));
        }
        let made = subscriber.connects();
        let right = match connects {
            Connects::Once => made == [None],
            Connects::ResumedFrom(id) => {
                made.len() >= 2
                    && made[0].is_none()
                    && made[1..].iter().all(|sent| sent.as_deref() == Some(id))
            }
        };
        if !right {
            wrong.push(format!(
                "requests with Last-Event-ID {made:?}, expected {connects:?}"
            ));
        }
        if !subscriber.lines_of("closed").is_empty() {
            wrong.push("gave up for good".to_string());
        }
        if !wrong.is_empty() {
            self.failures.push(format!(
                "{}: {}\n{}",
                subscriber.name(),
                wrong.join("\n  "),
                subscriber.transcript()
            ));
        }
    }

    fn assert(self, scenario: &str) {
        assert!(
            self.failures.is_empty(),
            "{scenario}:\n\n{}",
            self.failures.join("\n\n")
        );
    }
}

/// A template topic (`/{prefix}/{client}`: one topic instance per client)
/// with `keys`, and `[sse]` with the short `retry` and `sse`.
fn topics(prefix: &str, keys: &str, sse: &str) -> String {
    format!(
        r#"
[sse]
retry = "{RETRY}"
{sse}

[[topic]]
path = "/{prefix}/{{client}}"
upstream = "/stream/{prefix}/{{client}}"
{keys}
"#
    )
}

/// The topic path and the app's stream path of `library`'s topic instance.
fn paths(prefix: &str, library: Library) -> (String, String) {
    let name = library.name();
    (
        format!("/{prefix}/{name}"),
        format!("/stream/{prefix}/{name}"),
    )
}

/// Starts every available client on its own topic instance under `prefix`,
/// and waits until each has its stream open and its topic an upstream.
async fn subscribe_all(proxy: &Proxy, prefix: &str) -> Vec<Subscriber> {
    let subscribers: Vec<Subscriber> = libraries()
        .iter()
        .map(|&library| Subscriber::start(library, proxy, &paths(prefix, library).0))
        .collect();
    for subscriber in &subscribers {
        subscriber.wait_for_opens(1, START_PATIENCE).await;
        proxy.wait_for_subscribers(&subscriber.path, 1).await;
    }
    subscribers
}

/// The app's stream path for `subscriber`'s topic instance.
fn upstream_of(prefix: &str, subscriber: &Subscriber) -> String {
    paths(prefix, subscriber.library).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_fresh_topic_every_client_sees_exactly_the_apps_events() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, &topics("fresh", "", ""));
    let subscribers = subscribe_all(&proxy, "fresh").await;

    for subscriber in &subscribers {
        let upstream = upstream_of("fresh", subscriber);
        app.publish(&upstream, "1", "one");
        app.publish(&upstream, "2", "two\nlines");
        app.publish(&upstream, "3", "three");
    }
    let mut verdict = Verdict::default();
    for subscriber in &subscribers {
        subscriber.wait_for_data("three").await;
        verdict.check(
            subscriber,
            &[
                event("1", "one"),
                event("2", "two\nlines"),
                event("3", "three"),
            ],
            Connects::Once,
        );
    }
    verdict.assert("a fresh topic");
}

/// A late joiner (no `Last-Event-ID`) on topics with `prime` set to
/// `prime`: the topic published 1 to 3 before it joined; after it joined,
/// the app publishes an event without id (whose `lastEventId` shows the
/// client's last event id at that moment), then 4. Each client's application
/// must see exactly `expected(library)`.
async fn late_join(prime: &str, expected: impl Fn(Library) -> Vec<Seen>) {
    let app = SseApp::start().await;
    let prefix = format!("late-{prime}");
    let proxy = Proxy::start(
        app.addr,
        &topics(&prefix, &format!("prime = \"{prime}\""), ""),
    );
    // An earlier subscriber opens each topic, which then publishes 1 to 3.
    let mut earlier = Vec::new();
    for &library in libraries() {
        let (path, upstream) = paths(&prefix, library);
        let mut client = Client::h1(proxy.plain_addr).await;
        let mut stream = EventStream::open(&mut client, &path, None).await;
        proxy.wait_for_subscribers(&path, 1).await;
        for n in 1..=3 {
            app.publish(&upstream, &n.to_string(), &format!("event {n}"));
        }
        assert_eq!(stream.message_ids(3).await, ["1", "2", "3"]);
        earlier.push((client, stream));
    }
    let subscribers: Vec<Subscriber> = libraries()
        .iter()
        .map(|&library| Subscriber::start(library, &proxy, &paths(&prefix, library).0))
        .collect();
    for subscriber in &subscribers {
        subscriber.wait_for_opens(1, START_PATIENCE).await;
        proxy.wait_for_subscribers(&subscriber.path, 2).await;
        let upstream = upstream_of(&prefix, subscriber);
        app.publish_without_id(&upstream, "no id");
        app.publish(&upstream, "4", "event 4");
    }
    let mut verdict = Verdict::default();
    for subscriber in &subscribers {
        subscriber.wait_for_data("event 4").await;
        verdict.check(subscriber, &expected(subscriber.library), Connects::Once);
    }
    verdict.assert(&format!("a late join with prime = \"{prime}\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prime_id_gives_a_late_joiner_the_last_id_at_once_and_blank_line_clients_one_empty_event() {
    late_join("id", |library| {
        let mut expected = Vec::new();
        if library.dispatches_blocks_without_data() {
            // The opening block `retry: N`, `id: 3`: documented as the one
            // empty event these clients get with this setting.
            expected.push(empty("3"));
        }
        expected.extend([event("3", "no id"), event("4", "event 4")]);
        expected
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prime_none_adds_no_event_and_a_late_joiners_id_comes_with_the_next_event() {
    late_join("none", |_| vec![event("", "no id"), event("4", "event 4")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prime_last_gives_a_late_joiner_the_latest_event_itself() {
    late_join("last", |_| {
        vec![
            event("3", "event 3"),
            event("3", "no id"),
            event("4", "event 4"),
        ]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_on_an_idle_topic_reach_no_application() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(
        app.addr,
        &topics("idle", "", &format!("heartbeat = \"{SHORT_HEARTBEAT}\"")),
    );
    let subscribers = subscribe_all(&proxy, "idle").await;
    for subscriber in &subscribers {
        app.publish(&upstream_of("idle", subscriber), "1", "before");
    }
    for subscriber in &subscribers {
        subscriber.wait_for_data("before").await;
    }
    // A raw reader on each topic instance sees its heartbeats go by (the
    // topic's one timer beats for every subscriber at once).
    for subscriber in &subscribers {
        let mut client = Client::h1(proxy.plain_addr).await;
        let mut stream = EventStream::open(&mut client, &subscriber.path, Some("1")).await;
        let mut heartbeats = 0;
        while heartbeats < HEARTBEATS {
            if let Some(Item::Comment(text)) = stream.next_item().await {
                heartbeats += usize::from(text.is_empty());
            }
        }
    }
    for subscriber in &subscribers {
        app.publish(&upstream_of("idle", subscriber), "2", "after");
    }
    let mut verdict = Verdict::default();
    for subscriber in &subscribers {
        subscriber.wait_for_data("after").await;
        verdict.check(
            subscriber,
            &[event("1", "before"), event("2", "after")],
            Connects::Once,
        );
    }
    verdict.assert("an idle topic with heartbeats");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_restart_loses_and_doubles_nothing_and_clients_never_notice() {
    let app = SseApp::start().await;
    let addr = app.addr;
    let proxy = Proxy::start(addr, &topics("restart", "", ""));
    let subscribers = subscribe_all(&proxy, "restart").await;
    for subscriber in &subscribers {
        app.publish(&upstream_of("restart", subscriber), "1", "before");
    }
    for subscriber in &subscribers {
        subscriber.wait_for_data("before").await;
    }

    // The app goes down (every stream cut), publishes meanwhile, and comes
    // back on the same address with its history.
    let state = app.stop().await;
    for subscriber in &subscribers {
        state.publish(&upstream_of("restart", subscriber), "2", "while down");
    }
    let app = SseApp::start_with(state, addr).await;
    for subscriber in &subscribers {
        let upstream = upstream_of("restart", subscriber);
        app.wait_for_open_streams(&upstream, 1).await;
        app.publish(&upstream, "3", "after");
    }
    let mut verdict = Verdict::default();
    for subscriber in &subscribers {
        subscriber.wait_for_data("after").await;
        verdict.check(
            subscriber,
            &[
                event("1", "before"),
                event("2", "while down"),
                event("3", "after"),
            ],
            Connects::Once,
        );
        if !subscriber.lines_of("error").is_empty() {
            verdict.failures.push(format!(
                "{}: saw an error: the restart reached it\n{}",
                subscriber.name(),
                subscriber.transcript()
            ));
        }
    }
    verdict.assert("an upstream restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_graceful_upgrade_ends_their_streams_clients_resume_with_every_event_once() {
    let app = SseApp::start().await;
    let proxy = Proxy::start_with_server(
        app.addr,
        "grace_period = \"3s\"\ndrain = \"1s\"",
        &topics("upgrade", "", ""),
    );
    let subscribers = subscribe_all(&proxy, "upgrade").await;
    for subscriber in &subscribers {
        let upstream = upstream_of("upgrade", subscriber);
        app.publish(&upstream, "1", "one");
        app.publish(&upstream, "2", "two");
    }
    for subscriber in &subscribers {
        subscriber.wait_for_data("two").await;
    }

    // The upgrade: the successor takes the listeners; the old process serves
    // its subscribers for Pingora's 5 s, then ends each stream cleanly
    // within the drain, after a `retry:`.
    let _successor = proxy.start_successor().await;
    proxy.signal("QUIT");
    for subscriber in &subscribers {
        app.publish(&upstream_of("upgrade", subscriber), "3", "three");
    }
    for subscriber in &subscribers {
        subscriber.wait_for_data("three").await;
    }
    // Each client comes back, to the successor, resuming from 3.
    let handover = Duration::from_secs(5 + 1 + 2) + PATIENCE;
    for subscriber in &subscribers {
        subscriber.wait_for_opens(2, handover).await;
        proxy.wait_for_subscribers(&subscriber.path, 1).await;
    }
    for subscriber in &subscribers {
        app.publish(&upstream_of("upgrade", subscriber), "4", "four");
    }
    let mut verdict = Verdict::default();
    for subscriber in &subscribers {
        subscriber.wait_for_data("four").await;
        verdict.check(
            subscriber,
            &[
                event("1", "one"),
                event("2", "two"),
                event("3", "three"),
                event("4", "four"),
            ],
            Connects::ResumedFrom("3"),
        );
    }
    verdict.assert("a graceful upgrade");
}
