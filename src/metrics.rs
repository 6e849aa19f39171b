//! Prometheus metrics: `GET /metrics` on the admin listener.
//!
//! The text exposition format (0.0.4) of one registry of our own (never the
//! `prometheus` crate's global one). What is measured, and where it comes
//! from:
//!
//! | metrics | source | read |
//! |---|---|---|
//! | `sse_fanout_subscribers`, `_topic_instances`, `_upstream_connected` (gauges); `_subscriptions_total`, `_events_total`, `_deliveries_total`, `_slow_closes_total`, `_upstream_reconnects_total`, `_resumes_total` (counters), per configured topic | [`Hub::metrics`] | at scrape |
//! | `sse_fanout_refusals_total{reason}`, `sse_fanout_caps_binding{cap}` | [`admission::STATS`] | at scrape |
//! | `sse_fanout_auth_requests_total{result}` | [`auth::COUNTS`] | at scrape |
//! | `sse_fanout_connections_open`, `sse_fanout_connections_closed_early_total{reason}` | [`Connections`] | at scrape |
//! | `sse_fanout_replay_bytes`, `_replay_memory_limit_bytes`, `_replay_evicted_total` | [`Hub::replay_memory`] | at scrape |
//! | `sse_fanout_reloads_total{result}`, `sse_fanout_config_last_reload_success_timestamp_seconds` | [`reloaded`] (the reload calls it) | at scrape |
//! | `sse_fanout_proxied_requests_total{code}`, `sse_fanout_proxied_request_duration_seconds` | [`proxied`], from the proxy's `logging` hook | counted per request |
//! | `sse_fanout_draining`, `sse_fanout_build_info{version}` | [`Hub::accepting`], the build | at scrape |
//! | `sse_fanout_acme_orders_total{certificate,result}`, `_acme_certificate_expiry_timestamp_seconds`, `_acme_next_order_timestamp_seconds` | [`acme::statuses`], one per ACME listener | at scrape |
//! | `process_*` | the `prometheus` crate's process collector (`/proc`, Linux; CPU in whole seconds) | at scrape |
//!
//! **Read at scrape, not counted twice.** Every figure the proxy already
//! keeps (in relaxed atomics where it happens) is read when Prometheus asks,
//! by one custom [`Collector`] ([`Sources`]) that turns it into metric
//! families afresh each time: no per-event or per-delivery cost, no second
//! copy of a counter to keep in step, nothing to lock at scrape but what
//! `/stats` already locks. (The other way, the crate's counters and gauges
//! set just before encoding, would keep that second copy, need a scrape lock
//! so two scrapes do not interleave their updates, and could only move a
//! counter by deltas.) Exported counters come from sources that never go
//! backwards ([`Hub::metrics`] folds reclaimed instances into their
//! configured topic's totals), so neither do they.
//!
//! **Proxied requests are counted as they are answered**, the one figure
//! nothing else keeps: the six status-class counters are resolved once
//! ([`ProxiedRequests`]), so a request costs one relaxed atomic add and one
//! lock-free histogram observation (a few atomic operations), with no lock
//! and no allocation.
//!
//! **Cardinality is bounded by the config.** The `topic` label is the path
//! as configured: a template stays a template (`/events/jobs/{id}`), however
//! many instances it has; every other label takes values from a fixed list
//! (reasons, results, status classes). A scrape costs a few series per
//! configured topic, plus a fixed set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use crate::acme;
use crate::admission;
use crate::auth;
use crate::front_door::{ConnectionCounts, Connections};
use crate::hub::{Hub, TopicMetrics};
use crate::limits::Limit;

/// The `Content-Type` of `/metrics`: Prometheus' text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds of `sse_fanout_proxied_request_duration_seconds`, 1 ms to
/// 10 s: a page or an API call is well inside; an upgrade or a long poll
/// lands in `+Inf`.
pub const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The metrics of one process, ready to be encoded.
pub struct Metrics {
    /// Every collector: the sources read at scrape, proxied requests, the
    /// process. Its own, so nothing else registered in the process leaks in.
    registry: Registry,
}

impl Metrics {
    /// The metrics of `hub` and `connections`, proxied requests, reloads and
    /// the process. Records the start as the last successful config load.
    pub fn new(hub: Hub, connections: Arc<Connections>) -> Metrics {
        RELOADS.started(unix_millis(SystemTime::now()));
        let registry = Registry::new();
        let register = |collector: Box<dyn Collector>, what: &str| {
            // The names and buckets are constants; the unit test
            // `every_collector_registers` proves they are accepted.
            if let Err(error) = registry.register(collector) {
                log::error!("metrics: {what} not exported: {error}");
            }
        };
        match Sources::new(hub, connections) {
            Ok(sources) => register(Box::new(sources), "the proxy's figures"),
            Err(error) => log::error!("metrics: the proxy's figures not exported: {error}"),
        }
        if let Some(proxied) = PROXIED.as_ref() {
            register(Box::new(proxied.requests.clone()), "proxied requests");
            register(Box::new(proxied.duration.clone()), "proxied durations");
        }
        #[cfg(target_os = "linux")]
        register(
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
            "the process collector",
        );
        Metrics { registry }
    }

    /// The text exposition of every metric, now.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut text = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut text)?;
        Ok(text)
    }
}

/// Counts a config reload (SIGHUP) and whether it took effect. A
/// successful one sets `sse_fanout_config_last_reload_success_timestamp_seconds`.
pub fn reloaded(ok: bool) {
    if ok {
        RELOADS.ok.fetch_add(1, Ordering::Relaxed);
        RELOADS
            .last_success_ms
            .store(unix_millis(SystemTime::now()), Ordering::Relaxed);
    } else {
        RELOADS.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one request the reverse proxy answered (not a subscription):
/// its status (0 when none was sent) and how long it took, from arrival to
/// the end of the response.
pub fn proxied(status: u16, duration: Duration) {
    if let Some(proxied) = PROXIED.as_ref() {
        proxied.count(status, duration);
    }
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// Config reloads, since the process started.
struct Reloads {
    /// Reloads that took effect.
    ok: AtomicU64,
    /// Reloads refused (the new config did not load; the old one stays).
    failed: AtomicU64,
    /// When the config last loaded, in ms since the epoch: the start, then
    /// each successful reload.
    last_success_ms: AtomicU64,
}

impl Reloads {
    /// Records the start as the first successful load, once.
    fn started(&self, now_ms: u64) {
        let _ =
            self.last_success_ms
                .compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The process's reload counts, written by [`reloaded`].
static RELOADS: Reloads = Reloads {
    ok: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    last_success_ms: AtomicU64::new(0),
};

/// The status class of a proxied request, the `code` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// `1xx`: an upgrade (WebSocket) answered `101`.
    Informational,
    /// `2xx`.
    Success,
    /// `3xx`.
    Redirection,
    /// `4xx`, the proxy's own `400`, `404` and `405` included.
    ClientError,
    /// `5xx`, the proxy's `502` for an app it cannot reach included.
    ServerError,
    /// No status was sent (the client left first), or none valid.
    None,
}

impl StatusClass {
    /// Every class, in the order of [`StatusClass::index`].
    pub const ALL: [StatusClass; 6] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
        StatusClass::None,
    ];

    /// The class of `status` (0: none was sent).
    pub fn of(status: u16) -> StatusClass {
        match status {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            500..=599 => StatusClass::ServerError,
            _ => StatusClass::None,
        }
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
            StatusClass::None => "none",
        }
    }

    /// Its place in [`StatusClass::ALL`].
    fn index(self) -> usize {
        self as usize
    }
}

/// Proxied requests by status class, and their durations.
pub struct ProxiedRequests {
    /// `sse_fanout_proxied_requests_total{code}`, for the registry.
    requests: IntCounterVec,
    /// Its six series, resolved once so counting takes no lock (the vector's
    /// lookup by label does) and allocates nothing.
    by_class: [IntCounter; StatusClass::ALL.len()],
    /// `sse_fanout_proxied_request_duration_seconds`; observing is lock-free.
    duration: Histogram,
}

impl ProxiedRequests {
    fn new() -> prometheus::Result<ProxiedRequests> {
        let requests = IntCounterVec::new(
            Opts::new(
                "sse_fanout_proxied_requests_total",
                "Requests the reverse proxy answered (not subscriptions), by status class; `none` when the client left before any answer.",
            ),
            &["code"],
        )?;
        let class = |class: StatusClass| requests.get_metric_with_label_values(&[class.label()]);
        let by_class = [
            class(StatusClass::Informational)?,
            class(StatusClass::Success)?,
            class(StatusClass::Redirection)?,
            class(StatusClass::ClientError)?,
            class(StatusClass::ServerError)?,
            class(StatusClass::None)?,
        ];
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "sse_fanout_proxied_request_duration_seconds",
                "Time from a proxied request's arrival to the end of its response.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        Ok(ProxiedRequests {
            requests,
            by_class,
            duration,
        })
    }

    fn count(&self, status: u16, duration: Duration) {
        if let Some(counter) = self.by_class.get(StatusClass::of(status).index()) {
            counter.inc();
        }
        self.duration.observe(duration.as_secs_f64());
    }
}

/// The process's proxied-request metrics: built on first use; `None` (and
/// logged) only if the crate refused their constant names or buckets,
/// which the unit tests rule out.
static PROXIED: LazyLock<Option<ProxiedRequests>> =
    LazyLock::new(|| match ProxiedRequests::new() {
        Ok(proxied) => Some(proxied),
        Err(error) => {
            log::error!("metrics: proxied requests not counted: {error}");
            None
        }
    });

/// Whether a family is a counter (never goes backwards) or a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// A metric family read at scrape: its name, help, type and label names.
struct Spec {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
}

impl Spec {
    /// Its description, for the registry.
    fn desc(&self) -> prometheus::Result<Desc> {
        Desc::new(
            self.name.into(),
            self.help.into(),
            self.labels.iter().map(|l| l.to_string()).collect(),
            Default::default(),
        )
    }

    /// The family with these samples: label values (in the order of
    /// `labels`) and a value each.
    fn family<'a, L: AsRef<[&'a str]>>(
        &self,
        samples: impl IntoIterator<Item = (L, f64)>,
    ) -> MetricFamily {
        let metrics = samples
            .into_iter()
            .map(|(values, value)| {
                let labels = self
                    .labels
                    .iter()
                    .zip(values.as_ref())
                    .map(|(name, value)| {
                        let mut pair = LabelPair::default();
                        pair.set_name(name.to_string());
                        pair.set_value(value.to_string());
                        pair
                    })
                    .collect();
                let mut metric = Metric::default();
                metric.set_label(labels);
                match self.kind {
                    Kind::Counter => {
                        let mut counter = Counter::default();
                        counter.set_value(value);
                        metric.set_counter(counter);
                    }
                    Kind::Gauge => {
                        let mut gauge = Gauge::default();
                        gauge.set_value(value);
                        metric.set_gauge(gauge);
                    }
                }
                metric
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(self.name.into());
        family.set_help(self.help.into());
        family.set_field_type(match self.kind {
            Kind::Counter => MetricType::COUNTER,
            Kind::Gauge => MetricType::GAUGE,
        });
        family.set_metric(metrics);
        family
    }

    /// The family of one unlabelled sample.
    fn value(&self, value: f64) -> MetricFamily {
        self.family([([] as [&str; 0], value)])
    }
}

const SUBSCRIBERS: Spec = Spec {
    name: "sse_fanout_subscribers",
    help: "Open subscriptions, per configured topic.",
    kind: Kind::Gauge,
    labels: &["topic"],
};
const SUBSCRIPTIONS: Spec = Spec {
    name: "sse_fanout_subscriptions_total",
    help: "Subscriptions admitted, per configured topic.",
    kind: Kind::Counter,
    labels: &["topic"],
};
const EVENTS: Spec = Spec {
    name: "sse_fanout_events_total",
    help: "Events received from the topic's upstreams.",
    kind: Kind::Counter,
    labels: &["topic"],
};
const DELIVERIES: Spec = Spec {
    name: "sse_fanout_deliveries_total",
    help: "Events written to subscribers, summed over subscribers.",
    kind: Kind::Counter,
    labels: &["topic"],
};
const SLOW_CLOSES: Spec = Spec {
    name: "sse_fanout_slow_closes_total",
    help: "Subscribers ended for lagging behind or for a write that made no progress.",
    kind: Kind::Counter,
    labels: &["topic"],
};
const INSTANCES: Spec = Spec {
    name: "sse_fanout_topic_instances",
    help: "Live instances of the configured topic (a literal path has at most one).",
    kind: Kind::Gauge,
    labels: &["topic"],
};
const UPSTREAM_CONNECTED: Spec = Spec {
    name: "sse_fanout_upstream_connected",
    help: "Live instances whose upstream stream is connected.",
    kind: Kind::Gauge,
    labels: &["topic"],
};
const UPSTREAM_RECONNECTS: Spec = Spec {
    name: "sse_fanout_upstream_reconnects_total",
    help: "Upstream connections opened after an instance's first.",
    kind: Kind::Counter,
    labels: &["topic"],
};
const RESUMES: Spec = Spec {
    name: "sse_fanout_resumes_total",
    help: "Subscriptions with a Last-Event-ID: replayed from the window, caught up from the app, or lost.",
    kind: Kind::Counter,
    labels: &["topic", "result"],
};
const REFUSALS: Spec = Spec {
    name: "sse_fanout_refusals_total",
    help: "Subscription requests refused, by cap (its config key) or cause.",
    kind: Kind::Counter,
    labels: &["reason"],
};
const CAPS_BINDING: Spec = Spec {
    name: "sse_fanout_caps_binding",
    help: "1 while a cap is refusing subscriptions (until it has refused none for a while).",
    kind: Kind::Gauge,
    labels: &["cap"],
};
const AUTH_REQUESTS: Spec = Spec {
    name: "sse_fanout_auth_requests_total",
    help: "Auth decisions: the app's answers (allowed, denied, unavailable) and decisions from the cache.",
    kind: Kind::Counter,
    labels: &["result"],
};
const CONNECTIONS_OPEN: Spec = Spec {
    name: "sse_fanout_connections_open",
    help: "Client connections open now.",
    kind: Kind::Gauge,
    labels: &[],
};
const CONNECTIONS_CLOSED_EARLY: Spec = Spec {
    name: "sse_fanout_connections_closed_early_total",
    help: "Client connections the front door closed early, by reason.",
    kind: Kind::Counter,
    labels: &["reason"],
};
const REPLAY_BYTES: Spec = Spec {
    name: "sse_fanout_replay_bytes",
    help: "Bytes every replay window holds together.",
    kind: Kind::Gauge,
    labels: &[],
};
const REPLAY_LIMIT: Spec = Spec {
    name: "sse_fanout_replay_memory_limit_bytes",
    help: "What every replay window may hold together ([limits] replay_memory).",
    kind: Kind::Gauge,
    labels: &[],
};
const REPLAY_EVICTED: Spec = Spec {
    name: "sse_fanout_replay_evicted_total",
    help: "Events evicted from replay windows to stay within replay_memory.",
    kind: Kind::Counter,
    labels: &[],
};
const RELOADS_TOTAL: Spec = Spec {
    name: "sse_fanout_reloads_total",
    help: "Config reloads, by result (a failed one keeps the config in force).",
    kind: Kind::Counter,
    labels: &["result"],
};
const LAST_RELOAD: Spec = Spec {
    name: "sse_fanout_config_last_reload_success_timestamp_seconds",
    help: "When the config in force was loaded (the start, or the last successful reload), in seconds since the epoch.",
    kind: Kind::Gauge,
    labels: &[],
};
const DRAINING: Spec = Spec {
    name: "sse_fanout_draining",
    help: "1 once the process stopped accepting new subscriptions (drain or shutdown).",
    kind: Kind::Gauge,
    labels: &[],
};
const BUILD_INFO: Spec = Spec {
    name: "sse_fanout_build_info",
    help: "Always 1; the version of the running binary.",
    kind: Kind::Gauge,
    labels: &["version"],
};

const ACME_ORDERS: Spec = Spec {
    name: "sse_fanout_acme_orders_total",
    help: "ACME certificate orders, per certificate (its first name) and result; a failed one is retried with backoff.",
    kind: Kind::Counter,
    labels: &["certificate", "result"],
};
const ACME_EXPIRY: Spec = Spec {
    name: "sse_fanout_acme_certificate_expiry_timestamp_seconds",
    help: "When the certificate an ACME listener serves expires, in seconds since the epoch (0: none yet).",
    kind: Kind::Gauge,
    labels: &["certificate"],
};
const ACME_NEXT_ORDER: Spec = Spec {
    name: "sse_fanout_acme_next_order_timestamp_seconds",
    help: "When the next ACME order for the certificate is due (its renewal, or the retry after a failure), in seconds since the epoch.",
    kind: Kind::Gauge,
    labels: &["certificate"],
};

/// Every family [`Sources`] exports.
const READ_AT_SCRAPE: [&Spec; 24] = [
    &SUBSCRIBERS,
    &SUBSCRIPTIONS,
    &EVENTS,
    &DELIVERIES,
    &SLOW_CLOSES,
    &INSTANCES,
    &UPSTREAM_CONNECTED,
    &UPSTREAM_RECONNECTS,
    &RESUMES,
    &REFUSALS,
    &CAPS_BINDING,
    &AUTH_REQUESTS,
    &CONNECTIONS_OPEN,
    &CONNECTIONS_CLOSED_EARLY,
    &REPLAY_BYTES,
    &REPLAY_LIMIT,
    &REPLAY_EVICTED,
    &RELOADS_TOTAL,
    &LAST_RELOAD,
    &DRAINING,
    &BUILD_INFO,
    &ACME_ORDERS,
    &ACME_EXPIRY,
    &ACME_NEXT_ORDER,
];

/// The figures the proxy keeps anyway, read at each scrape.
struct Sources {
    /// The topics (per configured topic) and the replay memory.
    hub: Hub,
    /// Client connections.
    connections: Arc<Connections>,
    /// One per family of [`READ_AT_SCRAPE`], for the registry.
    descs: Vec<Desc>,
}

impl Sources {
    fn new(hub: Hub, connections: Arc<Connections>) -> prometheus::Result<Sources> {
        let descs = READ_AT_SCRAPE
            .iter()
            .map(|spec| spec.desc())
            .collect::<prometheus::Result<_>>()?;
        Ok(Sources {
            hub,
            connections,
            descs,
        })
    }
}

/// A count as a sample value (exact below 2^53).
fn number<N: TryInto<u64>>(n: N) -> f64 {
    n.try_into().unwrap_or(u64::MAX) as f64
}

impl Collector for Sources {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = topic_families(&self.hub.metrics());
        families.extend(admission_families());
        families.extend(connection_families(&self.connections.counts()));
        let (held, limit, evicted) = self.hub.replay_memory();
        families.push(REPLAY_BYTES.value(number(held)));
        families.push(REPLAY_LIMIT.value(number(limit)));
        families.push(REPLAY_EVICTED.value(number(evicted)));
        families.extend(reload_families(&RELOADS));
        families.push(DRAINING.value(if self.hub.accepting() { 0.0 } else { 1.0 }));
        families.push(BUILD_INFO.family([([env!("CARGO_PKG_VERSION")], 1.0)]));
        families.extend(acme_families(&acme::statuses()));
        families
    }
}

/// Per ACME certificate: orders by result, expiry, the next order.
fn acme_families(certificates: &[(String, acme::StatusFigures)]) -> Vec<MetricFamily> {
    let orders = certificates.iter().flat_map(|(name, figures)| {
        [
            ([name.as_str(), "ok"], number(figures.orders_ok)),
            ([name.as_str(), "failed"], number(figures.orders_failed)),
        ]
    });
    vec![
        ACME_ORDERS.family(orders),
        ACME_EXPIRY.family(
            certificates
                .iter()
                .map(|(name, figures)| ([name.as_str()], number(figures.expires))),
        ),
        ACME_NEXT_ORDER.family(
            certificates
                .iter()
                .map(|(name, figures)| ([name.as_str()], number(figures.next_order))),
        ),
    ]
}

/// The families of every configured topic, one series each (a template
/// once, whatever its instances).
fn topic_families(topics: &[TopicMetrics]) -> Vec<MetricFamily> {
    let per_topic = |spec: &Spec, value: fn(&TopicMetrics) -> f64| {
        spec.family(topics.iter().map(|t| ([t.topic.as_str()], value(t))))
    };
    let resumes = topics.iter().flat_map(|t| {
        let topic = t.topic.as_str();
        let totals = &t.totals;
        [
            ([topic, "replayed"], number(totals.resumes_replayed)),
            ([topic, "caught_up"], number(totals.resumes_caught_up)),
            ([topic, "lost"], number(totals.resumes_lost)),
        ]
    });
    vec![
        per_topic(&SUBSCRIBERS, |t| number(t.subscribers)),
        per_topic(&INSTANCES, |t| number(t.instances)),
        per_topic(&UPSTREAM_CONNECTED, |t| number(t.upstreams_connected)),
        per_topic(&SUBSCRIPTIONS, |t| number(t.totals.subscriptions)),
        per_topic(&EVENTS, |t| number(t.totals.events)),
        per_topic(&DELIVERIES, |t| number(t.totals.deliveries)),
        per_topic(&SLOW_CLOSES, |t| number(t.totals.slow_closes)),
        per_topic(&UPSTREAM_RECONNECTS, |t| {
            number(t.totals.upstream_reconnects)
        }),
        RESUMES.family(resumes),
    ]
}

/// Refusals, the caps binding now, and auth decisions.
fn admission_families() -> Vec<MetricFamily> {
    let stats = &admission::STATS;
    // Ends the episodes that have been quiet long enough (and logs them),
    // as `/stats` does, so `caps_binding` is current.
    stats.settle(tokio::time::Instant::now());
    let refusals = stats.refusals.by_reason();
    let binding = Limit::ALL.map(|limit| {
        let on = stats.refusals.binding(limit);
        ([limit.key()], if on { 1.0 } else { 0.0 })
    });
    let auth = &auth::COUNTS;
    let load = |counter: &AtomicU64| number(counter.load(Ordering::Relaxed));
    vec![
        REFUSALS.family(refusals.iter().map(|(reason, n)| ([*reason], number(*n)))),
        CAPS_BINDING.family(binding),
        AUTH_REQUESTS.family([
            (["allowed"], load(&auth.allowed)),
            (["denied"], load(&auth.denied)),
            (["unavailable"], load(&auth.unavailable)),
            (["cached"], load(&auth.cached)),
        ]),
    ]
}

/// Client connections open now, and those closed early by reason.
fn connection_families(counts: &ConnectionCounts) -> Vec<MetricFamily> {
    vec![
        CONNECTIONS_OPEN.value(number(counts.open)),
        CONNECTIONS_CLOSED_EARLY.family([
            (["refused_per_ip"], number(counts.refused_per_ip)),
            (
                ["tls_handshake_timeout"],
                number(counts.tls_handshake_timeouts),
            ),
            (
                ["tls_handshake_failed"],
                number(counts.tls_handshake_failures),
            ),
            (["header_timeout"], number(counts.header_timeouts)),
            (["header_too_large"], number(counts.headers_too_large)),
            (["h2_abuse"], number(counts.h2_abuse_closures)),
        ]),
    ]
}

/// Reloads by result, and when the config in force was loaded.
fn reload_families(reloads: &Reloads) -> Vec<MetricFamily> {
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    vec![
        RELOADS_TOTAL.family([
            (["ok"], number(load(&reloads.ok))),
            (["failed"], number(load(&reloads.failed))),
        ]),
        LAST_RELOAD.value(load(&reloads.last_success_ms) as f64 / 1000.0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::hub::TopicTotals;
    use std::path::Path;

    fn config() -> Config {
        let text = r#"
[[listen]]
addr = "127.0.0.1:8080"
[app]
upstream = "127.0.0.1:3000"
[[topic]]
path = "/events/news"
upstream = "/stream/news"
[[topic]]
path = "/events/jobs/{id}"
upstream = "/stream/jobs/{id}"
"#;
        Config::from_text(Path::new("metrics.toml"), text).expect("a valid config")
    }

    fn text(families: &[MetricFamily]) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(families)
            .expect("encodes")
    }

    #[tokio::test]
    async fn every_family_registers_and_is_exported_with_help_and_type() {
        let config = config();
        let metrics = Metrics::new(Hub::new(&config), Connections::new(&config.connections));
        let text = String::from_utf8(metrics.encode().expect("encodes")).expect("UTF-8");
        // ACME families have a series per ACME listener, and this config
        // has none (`acme_certificates_are_one_series_each` has them).
        let mut names: Vec<&str> = READ_AT_SCRAPE
            .iter()
            .map(|spec| spec.name)
            .filter(|name| !name.starts_with("sse_fanout_acme_"))
            .collect();
        names.extend([
            "sse_fanout_proxied_requests_total",
            "sse_fanout_proxied_request_duration_seconds",
        ]);
        if cfg!(target_os = "linux") {
            names.extend([
                "process_resident_memory_bytes",
                "process_open_fds",
                "process_cpu_seconds_total",
            ]);
        }
        for name in names {
            assert!(
                text.contains(&format!("\n# TYPE {name} ")),
                "{name}:\n{text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        }
        // Every configured topic has its series from the start.
        assert!(text.contains("sse_fanout_subscribers{topic=\"/events/news\"} 0\n"));
        assert!(text.contains("sse_fanout_subscribers{topic=\"/events/jobs/{id}\"} 0\n"));
        assert!(text.contains("sse_fanout_draining 0\n"), "{text}");
    }

    #[test]
    fn the_families_read_at_scrape_are_the_ones_described() {
        let topics = [TopicMetrics::new(
            "/events/news".into(),
            TopicTotals::default(),
        )];
        let mut families = topic_families(&topics);
        families.extend(admission_families());
        families.extend(connection_families(&ConnectionCounts::default()));
        families.extend(reload_families(&RELOADS));
        families.extend(acme_families(&[(
            "events.example.com".into(),
            acme::StatusFigures::default(),
        )]));
        let mut collected: Vec<&str> = families.iter().map(|f| f.name()).collect();
        // Read in `collect` itself, from the hub and the build.
        collected.extend([
            REPLAY_BYTES.name,
            REPLAY_LIMIT.name,
            REPLAY_EVICTED.name,
            DRAINING.name,
            BUILD_INFO.name,
        ]);
        collected.sort_unstable();
        let mut described: Vec<&str> = READ_AT_SCRAPE.iter().map(|spec| spec.name).collect();
        described.sort_unstable();
        assert_eq!(collected, described);
    }

    #[test]
    fn acme_certificates_are_one_series_each() {
        let figures = acme::StatusFigures {
            expires: 1_900_000_000,
            next_order: 1_890_000_000,
            orders_ok: 2,
            orders_failed: 1,
        };
        let text = text(&acme_families(&[("events.example.com".into(), figures)]));
        for line in [
            "sse_fanout_acme_orders_total{certificate=\"events.example.com\",result=\"ok\"} 2\n",
            "sse_fanout_acme_orders_total{certificate=\"events.example.com\",result=\"failed\"} 1\n",
            "sse_fanout_acme_certificate_expiry_timestamp_seconds{certificate=\"events.example.com\"} 1900000000\n",
            "sse_fanout_acme_next_order_timestamp_seconds{certificate=\"events.example.com\"} 1890000000\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }

    #[test]
    fn a_template_is_one_series_labelled_with_its_configured_path() {
        let mut jobs = TopicMetrics::new(
            "/events/jobs/{id}".into(),
            TopicTotals {
                deliveries: 7,
                resumes_lost: 2,
                ..TopicTotals::default()
            },
        );
        jobs.instances = 3;
        jobs.subscribers = 5;
        let text = text(&topic_families(&[jobs]));
        assert!(text.contains("sse_fanout_topic_instances{topic=\"/events/jobs/{id}\"} 3\n"));
        assert!(text.contains("sse_fanout_subscribers{topic=\"/events/jobs/{id}\"} 5\n"));
        assert!(text.contains("sse_fanout_deliveries_total{topic=\"/events/jobs/{id}\"} 7\n"));
        assert!(
            text.contains(
                "sse_fanout_resumes_total{topic=\"/events/jobs/{id}\",result=\"lost\"} 2\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches("sse_fanout_subscribers{").count(), 1);
    }

    #[test]
    fn statuses_fall_in_their_class() {
        let cases = [
            (0, "none"),
            (101, "1xx"),
            (200, "2xx"),
            (204, "2xx"),
            (304, "3xx"),
            (404, "4xx"),
            (499, "4xx"),
            (502, "5xx"),
            (599, "5xx"),
            (600, "none"),
            (999, "none"),
        ];
        for (status, label) in cases {
            assert_eq!(StatusClass::of(status).label(), label, "{status}");
        }
        for (index, class) in StatusClass::ALL.iter().enumerate() {
            assert_eq!(class.index(), index);
        }
    }

    #[test]
    fn a_proxied_request_is_counted_in_its_class_and_timed() {
        let proxied = PROXIED.as_ref().expect("the proxied-request metrics build");
        let count = |class: StatusClass| proxied.by_class[class.index()].get();
        let (not_found, ok, timed) = (
            count(StatusClass::ClientError),
            count(StatusClass::Success),
            proxied.duration.get_sample_count(),
        );
        super::proxied(404, Duration::from_millis(3));
        super::proxied(404, Duration::from_secs(30));
        assert_eq!(count(StatusClass::ClientError), not_found + 2);
        assert_eq!(count(StatusClass::Success), ok);
        assert_eq!(proxied.duration.get_sample_count(), timed + 2);
        let series = proxied.requests.collect();
        assert_eq!(series[0].get_metric().len(), StatusClass::ALL.len());
    }

    #[test]
    fn a_reload_is_counted_and_a_successful_one_stamped() {
        let before = unix_millis(SystemTime::now());
        let (ok, failed) = (
            RELOADS.ok.load(Ordering::Relaxed),
            RELOADS.failed.load(Ordering::Relaxed),
        );
        reloaded(false);
        reloaded(true);
        assert_eq!(RELOADS.ok.load(Ordering::Relaxed), ok + 1);
        assert_eq!(RELOADS.failed.load(Ordering::Relaxed), failed + 1);
        assert!(RELOADS.last_success_ms.load(Ordering::Relaxed) >= before);
    }

    #[test]
    fn the_start_is_the_first_successful_load_and_only_the_first() {
        let reloads = Reloads {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_success_ms: AtomicU64::new(0),
        };
        reloads.started(1_000);
        reloads.started(2_000);
        assert_eq!(reloads.last_success_ms.load(Ordering::Relaxed), 1_000);
        let text = text(&reload_families(&reloads));
        assert!(text.contains("sse_fanout_config_last_reload_success_timestamp_seconds 1\n"));
        assert!(text.contains("sse_fanout_reloads_total{result=\"ok\"} 0\n"));
    }
}
