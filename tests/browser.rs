//! The demo in a real browser: Debian's `chromium`, headless, driven by
//! `tests/browser/e2e.mjs` (playwright-core), against `sse-fanout demo`
//! started on free 127.0.0.1 ports with the shipped `conf/demo.toml`.
//!
//! This is the reason the project exists, shown end to end: over HTTP/2 one
//! page holds dozens of EventSources, all fed from one upstream stream per
//! topic; over HTTP/1.1 the same page stalls at six.
//!
//! The browser runs once (the first test to ask starts it); the script prints
//! a `VERDICT {json}` line of what it saw, and each test below asserts one
//! part of it. Screenshots land in `target/browser-test/`; with
//! `UPDATE_DOCS_SCREENSHOT=1` the HTTP/2 one is also copied to
//! `docs/demo.png` for the README.
//!
//! Needs `/usr/bin/chromium`, `node` and `tests/browser/node_modules`
//! (`apt-get install chromium && (cd tests/browser && npm ci)`). Without
//! them the tests pass with a loud notice, unless `CI` is set: then they fail.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;
use tempfile::TempDir;

/// The browser the test drives (Debian's package).
const CHROMIUM: &str = "/usr/bin/chromium";

/// The fewest EventSources the page must hold over HTTP/2.
const MIN_EVENTSOURCES: u64 = 24;

/// What a browser allows per origin over HTTP/1.1.
const HTTP1_CONNECTIONS_PER_ORIGIN: u64 = 6;

/// The id of a job's last event (100 %).
const JOB_LAST_ID: u64 = 100;

/// Copy the HTTP/2 screenshot to `docs/demo.png` when this is set.
const UPDATE_SCREENSHOT_VAR: &str = "UPDATE_DOCS_SCREENSHOT";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/browser-test/`, beside cargo's `target/tmp/`.
fn out_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("browser-test")
}

/// What is missing to run the browser, if anything.
fn missing_tools() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push("chromium (/usr/bin/chromium)");
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node");
    }
    if !repo()
        .join("tests/browser/node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push("tests/browser/node_modules (playwright-core)");
    }
    missing
}

/// `sse-fanout demo` running on free loopback ports.
struct Demo {
    child: Child,
    /// Holds the config and the log.
    dir: TempDir,
    /// The TLS listener (h2 for the browser).
    tls: SocketAddr,
    /// The plaintext listener (HTTP/1.1 for the browser).
    plain: SocketAddr,
}

impl Demo {
    /// Starts the demo with `conf/demo.toml`, its addresses moved to free
    /// ports and its certificate paths made absolute.
    fn start() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let port = || -> SocketAddr {
            format!("127.0.0.1:{}", common::free_port())
                .parse()
                .unwrap()
        };
        let (tls, plain, app, admin) = (port(), port(), port(), port());
        let mut config = std::fs::read_to_string(repo().join("conf/demo.toml")).unwrap();
        let certs = format!("{}/certs/", repo().display());
        for (shipped, ours) in [
            ("127.0.0.1:8443", tls.to_string()),
            ("127.0.0.1:8080", plain.to_string()),
            ("127.0.0.1:3000", app.to_string()),
            ("127.0.0.1:9090", admin.to_string()),
            ("../certs/", certs),
        ] {
            assert!(
                config.contains(shipped),
                "conf/demo.toml no longer has {shipped}; update tests/browser.rs"
            );
            config = config.replace(shipped, &ours);
        }
        let config_path = dir.path().join("demo.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("demo.log")).unwrap();
        let child = Command::new(common::binary())
            .arg("demo")
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("sse-fanout demo starts");
        let demo = Demo {
            child,
            dir,
            tls,
            plain,
        };
        for addr in [tls, plain, app, admin] {
            common::wait_for_listener(addr);
        }
        demo
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("demo.log")).unwrap_or_default()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the browser script against a fresh demo; the parsed verdict, or
/// everything needed to see why there is none.
fn run_browser() -> Result<Value, String> {
    let demo = Demo::start();
    let h2_url = format!("https://localhost:{}/", demo.tls.port());
    let h1_url = format!("http://localhost:{}/", demo.plain.port());
    let out = out_dir();
    let output = Command::new("node")
        .arg("e2e.mjs")
        .arg(&h2_url)
        .arg(&h1_url)
        .arg(&out)
        .current_dir(repo().join("tests/browser"))
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run node: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let verdict = stdout
        .lines()
        .find_map(|line| line.strip_prefix("VERDICT "))
        .and_then(|json| serde_json::from_str::<Value>(json).ok());
    match verdict {
        Some(verdict) if output.status.success() => Ok(verdict),
        _ => Err(format!(
            "the browser script failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}\n--- demo log ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            demo.log()
        )),
    }
}

/// The browser's verdict, from the one run all tests share; `None` when the
/// tools are missing on a developer's machine (after a loud notice).
fn verdict() -> Option<&'static Value> {
    static RUN: OnceLock<Option<Result<Value, String>>> = OnceLock::new();
    let run = RUN.get_or_init(|| {
        let missing = missing_tools();
        if missing.is_empty() {
            return Some(run_browser());
        }
        let why = format!(
            "the browser test needs {}; install with: \
             apt-get install -y chromium && (cd tests/browser && npm ci) (Node.js 20 or later)",
            missing.join(", ")
        );
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
            return Some(Err(format!("CI must install the browser: {why}")));
        }
        // Straight to stderr, past the test harness's capture, so it is seen.
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n\
             ************************************************************************\n\
             *  SKIPPED: tests/browser.rs (the real-browser test of the demo).\n\
             *  {why}\n\
             ************************************************************************\n"
        );
        None
    });
    match run {
        None => None,
        Some(Ok(verdict)) => {
            let notes = &verdict["notes"];
            if notes.as_array().is_some_and(|n| !n.is_empty()) {
                eprintln!("browser script notes: {notes}");
            }
            Some(verdict)
        }
        Some(Err(why)) => panic!("{why}"),
    }
}

fn u64_of(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

#[test]
fn every_eventsource_on_the_page_opens_and_receives_events_over_h2() {
    let Some(verdict) = verdict() else { return };
    let h2 = &verdict["h2"];
    assert_eq!(h2["protocol"], "h2", "the page itself came over h2: {h2}");
    assert!(
        u64_of(&h2["planned"]) >= MIN_EVENTSOURCES,
        "the page opens at least {MIN_EVENTSOURCES} EventSources: {h2}"
    );
    assert_eq!(h2["all_open"], true, "every EventSource reached OPEN: {h2}");
    assert_eq!(
        h2["all_received"], true,
        "every EventSource got events: {h2}"
    );
    assert!(
        u64_of(&h2["eventsource_responses"]) >= u64_of(&h2["planned"]),
        "the browser saw a response for every EventSource: {h2}"
    );
    assert_eq!(
        h2["eventsource_protocols"],
        serde_json::json!(["h2"]),
        "every EventSource response came over h2: {h2}"
    );
}

#[test]
fn the_stats_show_one_upstream_connection_per_topic_instance() {
    let Some(verdict) = verdict() else { return };
    let h2 = &verdict["h2"];
    let topics = h2["topics"].as_array().expect("topics");
    assert!(topics.len() >= 3, "several topics and job instances: {h2}");
    let mut subscribers = 0;
    for topic in topics {
        assert_eq!(
            topic["subscribers"], topic["expected_subscribers"],
            "every subscriber of the page is counted: {topic}"
        );
        assert_eq!(
            topic["upstream_connects"], 1,
            "one upstream connection: {topic}"
        );
        assert_eq!(topic["upstream_state"], "connected", "{topic}");
        subscribers += u64_of(&topic["subscribers"]);
    }
    assert!(subscribers > topics.len() as u64, "fan-out: {h2}");
    assert_eq!(
        u64_of(&h2["app_open_streams"]),
        topics.len() as u64,
        "the app serves one stream per topic instance, not one per subscriber: {h2}"
    );
    assert_eq!(
        u64_of(&h2["totals"]["upstreams_connected"]),
        topics.len() as u64,
        "{h2}"
    );
}

#[test]
fn subscribers_stay_connected_and_miss_nothing_when_the_upstream_restarts() {
    let Some(verdict) = verdict() else { return };
    let h2 = &verdict["h2"];
    let restart = &h2["restart"];
    assert!(
        h2["restart_error"].is_null(),
        "the restart button worked: {h2}"
    );
    assert!(
        u64_of(&h2["restart_answer"]["streams_ended"]) >= 1,
        "the app ended its streams: {h2}"
    );
    assert_eq!(restart["topics_reconnected"], true, "{restart}");
    for topic in restart["topics"].as_array().expect("topics") {
        if topic["job"] == true && topic["upstream_state"] == "ended" {
            // A job that reached 100 % meanwhile: its subscribers were let
            // go by design (see a_job_topic_that_ends_stops_its_eventsources).
            continue;
        }
        assert_eq!(
            topic["subscribers_after"], topic["subscribers_before"],
            "no subscriber was lost: {topic}"
        );
        assert_eq!(
            topic["upstream_connects"], 2,
            "the proxy reconnected upstream once: {topic}"
        );
    }
    assert!(
        u64_of(&restart["eventsources_checked"]) >= MIN_EVENTSOURCES,
        "{restart}"
    );
    assert_eq!(restart["still_receiving"], true, "{restart}");
    assert_eq!(restart["all_still_open"], true, "{restart}");
    assert_eq!(
        restart["error_events"], 0,
        "no EventSource noticed the restart (no error, no reconnect): {restart}"
    );
    assert_eq!(
        h2["gaps"], 0,
        "every EventSource saw its ids without a gap, across the restart: {h2}"
    );
}

#[test]
fn a_job_topic_that_ends_stops_its_eventsources() {
    let Some(verdict) = verdict() else { return };
    let job = &verdict["h2"]["ended_job"];
    assert!(u64_of(&job["eventsources"]) >= 1, "{job}");
    assert_eq!(
        job["closed"], true,
        "every EventSource of the job is CLOSED: {job}"
    );
    assert_eq!(
        job["last_ids"],
        serde_json::json!([JOB_LAST_ID]),
        "each saw the job to 100 %: {job}"
    );
    assert!(
        job["upstream_state"] == "ended" || job["upstream_state"] == "reclaimed",
        "the topic ended with the app's 204: {job}"
    );
}

#[test]
fn over_http1_the_same_page_stalls_at_six_streams() {
    let Some(verdict) = verdict() else { return };
    let (h1, h2) = (&verdict["h1"], &verdict["h2"]);
    assert_eq!(h1["protocol"], "http/1.1", "{h1}");
    assert!(u64_of(&h1["ever_opened"]) >= 1, "some streams open: {h1}");
    assert!(
        u64_of(&h1["max_open"]) <= HTTP1_CONNECTIONS_PER_ORIGIN
            && u64_of(&h1["open_now"]) <= HTTP1_CONNECTIONS_PER_ORIGIN,
        "at most six EventSources open at once over HTTP/1.1: {h1}"
    );
    assert!(
        u64_of(&h1["still_connecting"]) >= u64_of(&h1["planned"]) - HTTP1_CONNECTIONS_PER_ORIGIN,
        "the others are still waiting for a connection: {h1}"
    );
    // The contrast: the same page over HTTP/2 held every one of them.
    assert_eq!(h2["all_open"], true, "{h2}");
    assert!(u64_of(&h2["planned"]) >= MIN_EVENTSOURCES, "{h2}");
}

#[test]
fn the_page_is_saved_as_a_screenshot() {
    let Some(verdict) = verdict() else { return };
    for phase in ["h2", "h1"] {
        let path = verdict[phase]["screenshot"].as_str().expect("screenshot");
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{path} is a PNG");
    }
    if std::env::var_os(UPDATE_SCREENSHOT_VAR).is_some() {
        let from = verdict["h2"]["screenshot"].as_str().expect("screenshot");
        std::fs::copy(from, repo().join("docs/demo.png")).expect("docs/demo.png written");
    }
}
