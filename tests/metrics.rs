//! The admin listener's `/metrics`, `/healthz` and `/readyz`, against the
//! real binary over real sockets: the exposition is well-formed Prometheus
//! text (checked by a strict parser below), and its numbers are the
//! subscriptions, events, deliveries, proxied requests and auth decisions
//! that really happened.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::client::{body_bytes, Client, Protocol};
use common::sse_app::{Answer, SseApp};
use common::sse_client::{subscribe, EventStream};
use common::{Proxy, PATIENCE};

const TOPICS: &str = r#"
[sse]
heartbeat = "30s"
linger = "1s"

[[topic]]
path = "/events/news"
upstream = "/stream/news"

[[topic]]
path = "/events/jobs/{id}"
upstream = "/stream/jobs/{id}"
"#;

const NEWS: &str = "/events/news";
const JOBS: &str = "/events/jobs/{id}";

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    /// Sorted by name.
    labels: Vec<(String, String)>,
    value: f64,
}

/// A parsed exposition.
#[derive(Debug)]
struct Exposition {
    /// Family name → type.
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the series `name` with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        wanted.sort();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// The value of `name{label="value"}`, or 0 when absent.
    fn get(&self, name: &str, label: &str, value: &str) -> f64 {
        self.value(name, &[(label, value)]).unwrap_or(0.0)
    }

    /// Every series of `name`.
    fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(text: &str, line: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => {
            assert!(
                !text.is_empty()
                    && text
                        .chars()
                        .all(|c| c.is_ascii_digit() || "+-.eE".contains(c)),
                "bad value {text:?} in {line:?}"
            );
            text.parse()
                .unwrap_or_else(|_| panic!("bad value {text:?} in {line:?}"))
        }
    }
}

/// `name{a="x",b="y"}` and the rest of the line after it.
fn parse_series(line: &str) -> (String, Vec<(String, String)>, &str) {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    assert!(is_metric_name(name), "bad metric name in {line:?}");
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end;
        loop {
            // label name
            let start = chars.peek().map(|(i, _)| *i).expect("unterminated labels");
            let mut eq = None;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    eq = Some(i);
                    break;
                }
            }
            let eq = eq.unwrap_or_else(|| panic!("label without '=' in {line:?}"));
            let label = &inner[start..eq];
            assert!(is_label_name(label), "bad label name {label:?} in {line:?}");
            assert_eq!(
                chars.next().map(|(_, c)| c),
                Some('"'),
                "unquoted label value in {line:?}"
            );
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some('\n') | None => panic!("unterminated label value in {line:?}"),
                    Some(c) => value.push(c),
                }
            }
            assert!(
                labels.iter().all(|(n, _)| n != label),
                "label {label} twice in {line:?}"
            );
            labels.push((label.to_string(), value));
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => {
                    end = i;
                    break;
                }
                other => panic!("expected ',' or '}}', got {other:?} in {line:?}"),
            }
        }
        rest = &inner[end + 1..];
    }
    labels.sort();
    (name.to_string(), labels, rest)
}

/// Parses the text exposition format 0.0.4 strictly: every line is a HELP,
/// a TYPE or a sample; every family has one HELP and one TYPE before its
/// samples, and its samples together; no series twice; histograms
/// cumulative and consistent; counters finite and not negative.
fn parse(text: &str) -> Exposition {
    assert!(
        text.ends_with('\n'),
        "the exposition does not end with a newline"
    );
    let mut helps: HashSet<String> = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut seen: HashSet<(String, Vec<(String, String)>)> = HashSet::new();
    let mut samples = Vec::new();
    for line in text.strip_suffix('\n').unwrap().split('\n') {
        assert!(!line.is_empty(), "an empty line in the exposition");
        let family_of =
            |family: &str, current: &mut Option<String>, finished: &mut HashSet<String>| {
                if current.as_deref() != Some(family) {
                    if let Some(previous) = current.take() {
                        finished.insert(previous);
                    }
                    assert!(
                        !finished.contains(family),
                        "family {family} is split: {line:?}"
                    );
                    *current = Some(family.to_string());
                }
            };
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(is_metric_name(name), "bad name in {line:?}");
            assert!(!help.is_empty(), "empty help in {line:?}");
            family_of(name, &mut current, &mut finished);
            assert!(helps.insert(name.to_string()), "HELP twice for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE with a type");
            assert!(is_metric_name(name), "bad name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type in {line:?}"
            );
            family_of(name, &mut current, &mut finished);
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice for {name}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#'),
            "a comment that is not HELP or TYPE: {line:?}"
        );
        let (name, labels, rest) = parse_series(line);
        let rest = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap(), line);
        if let Some(timestamp) = fields.next() {
            assert!(
                timestamp.parse::<i64>().is_ok(),
                "bad timestamp in {line:?}"
            );
        }
        assert!(fields.next().is_none(), "trailing fields in {line:?}");
        let family = if types.contains_key(&name) {
            name.clone()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    matches!(
                        types.get(base).map(String::as_str),
                        Some("histogram" | "summary")
                    )
                    .then(|| base.to_string())
                })
                .unwrap_or_else(|| panic!("sample of an undeclared family: {line:?}"))
        };
        assert_eq!(
            current.as_deref(),
            Some(family.as_str()),
            "sample outside its family: {line:?}"
        );
        assert!(helps.contains(&family), "no HELP for {family}");
        if types[&family] == "counter" {
            assert!(
                value.is_finite() && value >= 0.0,
                "bad counter value in {line:?}"
            );
        }
        if name.ends_with("_bucket") {
            assert!(
                labels.iter().any(|(n, _)| n == "le"),
                "bucket without le: {line:?}"
            );
        }
        assert!(
            seen.insert((name.clone(), labels.clone())),
            "series twice: {line:?}"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    let exposition = Exposition { types, samples };
    check_histograms(&exposition);
    exposition
}

/// Buckets cumulative, `+Inf` present and equal to `_count`.
fn check_histograms(exposition: &Exposition) {
    for (family, kind) in &exposition.types {
        if kind != "histogram" {
            continue;
        }
        let mut buckets: Vec<(f64, f64)> = exposition
            .series(&format!("{family}_bucket"))
            .iter()
            .map(|s| {
                let le = &s.labels.iter().find(|(n, _)| n == "le").unwrap().1;
                (parse_value(le, le), s.value)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{family} not cumulative"
        );
        let (last_bound, last_count) = *buckets.last().expect("buckets");
        assert_eq!(last_bound, f64::INFINITY, "{family} has no +Inf bucket");
        let count = exposition.value(&format!("{family}_count"), &[]);
        assert_eq!(
            Some(last_count),
            count,
            "{family}: +Inf bucket is not _count"
        );
        assert!(exposition.value(&format!("{family}_sum"), &[]).is_some());
    }
}

/// `GET path` on the admin listener: status, content type, body.
async fn admin_get(proxy: &Proxy, path: &str) -> (u16, String, String) {
    let mut client = Client::h1(proxy.admin_addr).await;
    let response = client.get(path).await;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = String::from_utf8(body_bytes(response).await.to_vec()).unwrap();
    (status, content_type, body)
}

/// Scrapes `/metrics` and parses it strictly.
async fn scrape(proxy: &Proxy) -> Exposition {
    let (status, content_type, body) = admin_get(proxy, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    parse(&body)
}

/// Scrapes until `check` holds.
async fn wait_for_metrics(
    proxy: &Proxy,
    what: &str,
    check: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let exposition = scrape(proxy).await;
        if check(&exposition) {
            return exposition;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the metrics never showed {what}: {:#?}",
            exposition
                .samples
                .iter()
                .filter(|s| s.name.starts_with("sse_fanout"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn the_strict_parser_rejects_what_prometheus_would() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\\\"\"} 3\n";
    assert_eq!(parse(good).get("a_total", "x", "1\""), 3.0);
    let bad = [
        // no TYPE
        "# HELP a A.\na 1\n",
        // no HELP
        "# TYPE a gauge\na 1\n",
        // duplicate series
        "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n",
        // bad value, bad label, no final newline
        "# HELP a A.\n# TYPE a gauge\na one\n",
        "# HELP a A.\n# TYPE a gauge\na{1x=\"1\"} 1\n",
        "# HELP a A.\n# TYPE a gauge\na 1",
        // a negative counter
        "# HELP a A.\n# TYPE a counter\na -1\n",
    ];
    for text in bad {
        assert!(
            std::panic::catch_unwind(|| parse(text)).is_err(),
            "accepted {text:?}"
        );
    }
}

#[tokio::test]
async fn metrics_count_open_subscriptions_per_configured_topic_over_h1_and_h2() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);

    // News: two streams on one HTTP/2 connection and one on HTTP/1.1.
    // Jobs: three instances of the template, over both protocols.
    let mut h2 = proxy.h2().await;
    assert_eq!(h2.protocol, Protocol::Http2);
    let mut h1_news = proxy.h1().await;
    let mut h1_job = proxy.h1().await;
    assert_eq!(h1_news.protocol, Protocol::Http1);
    let mut streams = vec![
        EventStream::open(&mut h2, NEWS, None).await,
        EventStream::open(&mut h2, NEWS, None).await,
        EventStream::open(&mut h1_news, NEWS, None).await,
        EventStream::open(&mut h2, "/events/jobs/1", None).await,
        EventStream::open(&mut h2, "/events/jobs/2", None).await,
        EventStream::open(&mut h1_job, "/events/jobs/3", None).await,
    ];
    proxy.wait_for_subscribers(NEWS, 3).await;
    for job in ["/events/jobs/1", "/events/jobs/2", "/events/jobs/3"] {
        proxy.wait_for_subscribers(job, 1).await;
    }

    let metrics = scrape(&proxy).await;
    assert_eq!(metrics.get("sse_fanout_subscribers", "topic", NEWS), 3.0);
    assert_eq!(metrics.get("sse_fanout_subscribers", "topic", JOBS), 3.0);
    assert_eq!(
        metrics.get("sse_fanout_subscriptions_total", "topic", NEWS),
        3.0
    );
    assert_eq!(
        metrics.get("sse_fanout_topic_instances", "topic", NEWS),
        1.0
    );
    assert_eq!(
        metrics.get("sse_fanout_topic_instances", "topic", JOBS),
        3.0
    );
    assert_eq!(
        metrics.get("sse_fanout_upstream_connected", "topic", JOBS),
        3.0
    );
    assert_eq!(metrics.types["sse_fanout_subscribers"], "gauge");
    assert_eq!(metrics.types["sse_fanout_deliveries_total"], "counter");
    // The template is one series, whatever its instances: no label is ever
    // an instance's path.
    assert_eq!(metrics.series("sse_fanout_subscribers").len(), 2);
    assert_eq!(metrics.series("sse_fanout_topic_instances").len(), 2);
    for sample in &metrics.samples {
        for (name, value) in &sample.labels {
            if name == "topic" {
                assert!(value == NEWS || value == JOBS, "{sample:?}");
            }
        }
    }
    let delivered_before = metrics.get("sse_fanout_deliveries_total", "topic", NEWS);

    // An event on news reaches its three subscribers: counted once in,
    // three times out.
    app.publish("/stream/news", "1", "hello");
    for stream in &mut streams[..3] {
        assert_eq!(stream.next_message().await.unwrap().data(), Some("hello"));
    }
    let metrics = wait_for_metrics(&proxy, "three deliveries on news", |m| {
        m.get("sse_fanout_deliveries_total", "topic", NEWS) >= delivered_before + 3.0
    })
    .await;
    assert_eq!(metrics.get("sse_fanout_events_total", "topic", NEWS), 1.0);
    assert_eq!(metrics.get("sse_fanout_events_total", "topic", JOBS), 0.0);

    // Subscribers leave: the gauge falls, the counters stay.
    drop(streams);
    drop((h2, h1_news, h1_job));
    let metrics = wait_for_metrics(&proxy, "no subscribers", |m| {
        m.get("sse_fanout_subscribers", "topic", NEWS) == 0.0
            && m.get("sse_fanout_subscribers", "topic", JOBS) == 0.0
    })
    .await;
    assert_eq!(
        metrics.get("sse_fanout_subscriptions_total", "topic", NEWS),
        3.0
    );
    assert_eq!(
        metrics.get("sse_fanout_subscriptions_total", "topic", JOBS),
        3.0
    );
    assert!(metrics.get("sse_fanout_deliveries_total", "topic", NEWS) >= delivered_before + 3.0);
}

#[tokio::test]
async fn a_template_keeps_its_totals_after_its_instances_are_reclaimed() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    for id in ["7", "8"] {
        let mut client = proxy.h2().await;
        let path = format!("/events/jobs/{id}");
        let mut stream = EventStream::open(&mut client, &path, None).await;
        proxy.wait_for_subscribers(&path, 1).await;
        app.publish(&format!("/stream/jobs/{id}"), "1", "done");
        assert_eq!(stream.next_message().await.unwrap().data(), Some("done"));
    }
    // Both instances lose their subscriber and are reclaimed after `linger`.
    let metrics = wait_for_metrics(&proxy, "the instances reclaimed", |m| {
        m.get("sse_fanout_topic_instances", "topic", JOBS) == 0.0
    })
    .await;
    assert_eq!(
        metrics.get("sse_fanout_subscriptions_total", "topic", JOBS),
        2.0
    );
    assert_eq!(metrics.get("sse_fanout_events_total", "topic", JOBS), 2.0);
    assert_eq!(
        metrics.get("sse_fanout_deliveries_total", "topic", JOBS),
        2.0
    );
    assert_eq!(metrics.series("sse_fanout_events_total").len(), 2);
}

#[tokio::test]
async fn proxied_requests_are_counted_by_status_class_and_timed() {
    let app = SseApp::start().await;
    app.answer("/missing", Answer::Status(404));
    app.answer("/broken", Answer::Status(503));
    let proxy = Proxy::start(app.addr, TOPICS);
    let mut client = proxy.h2().await;
    for path in ["/", "/page", "/missing", "/broken"] {
        body_bytes(client.get(path).await).await;
    }
    // A method topics do not serve: the proxy's own 405.
    let post = client
        .request("POST", NEWS)
        .body(Default::default())
        .unwrap();
    let response = client.send(post).await.unwrap();
    assert_eq!(response.status(), 405);

    let metrics = wait_for_metrics(&proxy, "five proxied requests", |m| {
        m.value("sse_fanout_proxied_request_duration_seconds_count", &[]) == Some(5.0)
    })
    .await;
    let requests = |code| metrics.get("sse_fanout_proxied_requests_total", "code", code);
    assert_eq!(requests("2xx"), 2.0);
    assert_eq!(requests("4xx"), 2.0);
    assert_eq!(requests("5xx"), 1.0);
    assert_eq!(requests("1xx"), 0.0);
    assert_eq!(requests("3xx"), 0.0);
    assert_eq!(metrics.series("sse_fanout_proxied_requests_total").len(), 6);
    assert_eq!(
        metrics.types["sse_fanout_proxied_request_duration_seconds"],
        "histogram"
    );
    // Subscriptions are not proxied requests.
    let mut stream = EventStream::open(&mut client, NEWS, None).await;
    proxy.wait_for_subscribers(NEWS, 1).await;
    let metrics = scrape(&proxy).await;
    assert_eq!(
        metrics.value("sse_fanout_proxied_request_duration_seconds_count", &[]),
        Some(5.0)
    );
    app.publish("/stream/news", "1", "x");
    stream.next_message().await.unwrap();
}

#[tokio::test]
async fn auth_decisions_and_refusals_are_counted_by_result() {
    let app = SseApp::start().await;
    app.answer("/auth/no", Answer::Status(403));
    let topics = r#"
[[topic]]
path = "/events/open-door"
upstream = "/stream/open-door"
auth = "/auth/yes"

[[topic]]
path = "/events/closed-door"
upstream = "/stream/closed-door"
auth = "/auth/no"
"#;
    let proxy = Proxy::start(app.addr, topics);
    let mut client = proxy.h2().await;
    let headers = [("cookie", "session=1")];
    // Asked once, then decided from the cache.
    let mut first = EventStream::new(subscribe(&mut client, "/events/open-door", &headers).await);
    let mut second = EventStream::new(subscribe(&mut client, "/events/open-door", &headers).await);
    let denied = subscribe(&mut client, "/events/closed-door", &headers).await;
    assert_eq!(denied.status(), 403);

    let metrics = scrape(&proxy).await;
    let auth = |result| metrics.get("sse_fanout_auth_requests_total", "result", result);
    assert_eq!(auth("allowed"), 1.0);
    assert_eq!(auth("cached"), 1.0);
    assert_eq!(auth("denied"), 1.0);
    assert_eq!(auth("unavailable"), 0.0);
    let refusals = |reason| metrics.get("sse_fanout_refusals_total", "reason", reason);
    assert_eq!(refusals("denied"), 1.0);
    assert_eq!(refusals("max_subscribers"), 0.0);
    assert_eq!(metrics.series("sse_fanout_refusals_total").len(), 9);
    proxy.wait_for_subscribers("/events/open-door", 2).await;
    app.publish("/stream/open-door", "1", "in");
    first.next_message().await.unwrap();
    second.next_message().await.unwrap();
}

#[tokio::test]
async fn health_is_ok_and_readiness_ready_while_running() {
    let app = SseApp::start().await;
    let proxy = Proxy::start(app.addr, TOPICS);
    let (status, _, body) = admin_get(&proxy, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = admin_get(&proxy, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let metrics = scrape(&proxy).await;
    assert_eq!(metrics.value("sse_fanout_draining", &[]), Some(0.0));
    assert_eq!(metrics.get("sse_fanout_reloads_total", "result", "ok"), 0.0);
    let loaded = metrics
        .value(
            "sse_fanout_config_last_reload_success_timestamp_seconds",
            &[],
        )
        .unwrap();
    let started = metrics.value("process_start_time_seconds", &[]).unwrap();
    assert!(
        (loaded - started).abs() < 60.0,
        "config loaded at {loaded}, process started at {started}"
    );
    assert!(metrics.value("process_resident_memory_bytes", &[]).unwrap() > 0.0);
    assert!(metrics.value("process_open_fds", &[]).unwrap() > 0.0);
    assert!(metrics.value("process_cpu_seconds_total", &[]).is_some());
}
