//! The admin listener: what operators (and the tests) ask the running proxy.
//!
//! It is a separate Pingora service on its own address (`[admin] addr`,
//! loopback by default), never on the public listeners. `GET /stats` answers
//! JSON with every live topic: subscribers, upstream state, last event id,
//! replay window size, events in, deliveries and slow-subscriber closures;
//! the process's admission counts (refusals by reason, the caps binding
//! now, auth requests and their connections), and the process's client
//! connections: how many are open, and how many the front door closed early
//! (caps, deadlines, HTTP/2 abuse).
//!
//! `GET /metrics` answers the same figures and more in Prometheus' text
//! format (see [`metrics`](crate::metrics)). `GET /healthz` answers `200`
//! while the process runs; `GET /readyz` answers `200` while it accepts new
//! subscriptions and `503` once it is draining or shutting down, so a load
//! balancer that checks it stops sending new connections before they would
//! be turned away.

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use serde_json::{json, Value};

use std::sync::Arc;

use crate::config::AdminSettings;
use crate::front_door::{ConnectionCounts, Connections};
use crate::hub::{Hub, TopicSnapshot, UpstreamState};
use crate::metrics::{self, Metrics};

/// The admin HTTP app.
pub struct AdminApp {
    /// Whose topics are reported.
    hub: Hub,
    /// Whose client connections are reported.
    connections: Arc<Connections>,
    /// The Prometheus registry `/metrics` encodes.
    metrics: Metrics,
}

/// The admin service, listening on `settings.addr`.
pub fn service(
    hub: Hub,
    connections: Arc<Connections>,
    settings: &AdminSettings,
) -> Service<AdminApp> {
    let metrics = Metrics::new(hub.clone(), connections.clone());
    let app = AdminApp {
        hub,
        connections,
        metrics,
    };
    let mut service = Service::new("sse-fanout admin".into(), app);
    service.add_tcp(&settings.addr.to_string());
    service
}

fn topic_json(topic: &TopicSnapshot) -> Value {
    let (state, attempt, error) = match &topic.upstream {
        UpstreamState::Connecting { attempt } => ("connecting", *attempt, None),
        UpstreamState::Connected => ("connected", 0, None),
        UpstreamState::BackingOff { attempt, error } => {
            ("backing_off", *attempt, Some(error.to_string()))
        }
        UpstreamState::Ended => ("ended", 0, None),
    };
    json!({
        "path": topic.key,
        "upstream": topic.upstream_url,
        "subscribers": topic.subscribers,
        "upstream_state": state,
        "upstream_attempt": attempt,
        "upstream_error": error,
        "upstream_connects": topic.upstream_connects,
        "last_event_id": topic.last_event_id,
        "window_events": topic.window_frames,
        "window_bytes": topic.window_bytes,
        "events_in": topic.events_in,
        "deliveries": topic.deliveries,
        "slow_closures": topic.slow_closures,
        "write_timeouts": topic.write_timeouts,
        "events_skipped": topic.events_skipped,
        "catch_ups": topic.catch_ups,
        "catch_ups_running": topic.catch_ups_running,
        "catch_ups_spliced": topic.catch_ups_spliced,
        "resumes_lost": topic.resumes_lost,
    })
}

/// The `/stats` document.
pub fn stats(hub: &Hub) -> Value {
    let topics = hub.snapshot();
    let subscribers: usize = topics.iter().map(|t| t.subscribers).sum();
    let connected = topics
        .iter()
        .filter(|t| t.upstream == UpstreamState::Connected)
        .count();
    let (replay_bytes, replay_memory, replay_evicted) = hub.replay_memory();
    json!({
        "topics": topics.iter().map(topic_json).collect::<Vec<_>>(),
        "totals": {
            "topics": topics.len(),
            "subscribers": subscribers,
            "upstreams_connected": connected,
            "replay_bytes": replay_bytes,
            "replay_memory": replay_memory,
            "replay_evicted": replay_evicted,
        },
        // Refusals by reason, caps binding now, auth requests and connections.
        "admission": crate::admission::STATS.json(),
    })
}

/// The `connections` part of the `/stats` document.
fn connections_json(counts: &ConnectionCounts) -> Value {
    json!({
        "open": counts.open,
        "refused_per_ip": counts.refused_per_ip,
        "tls_handshake_timeouts": counts.tls_handshake_timeouts,
        "tls_handshake_failures": counts.tls_handshake_failures,
        "header_timeouts": counts.header_timeouts,
        "headers_too_large": counts.headers_too_large,
        "h2_abuse_closures": counts.h2_abuse_closures,
        "proxy_header_invalid": counts.proxy_header_invalid,
    })
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, content_type, body) = match session.req_header().uri.path() {
            "/stats" => {
                let mut document = stats(&self.hub);
                if let Some(fields) = document.as_object_mut() {
                    fields.insert(
                        "connections".into(),
                        connections_json(&self.connections.counts()),
                    );
                }
                (
                    StatusCode::OK,
                    "application/json",
                    document.to_string().into_bytes(),
                )
            }
            "/metrics" => match self.metrics.encode() {
                Ok(text) => (StatusCode::OK, metrics::CONTENT_TYPE, text),
                Err(error) => {
                    log::error!("metrics: encoding failed: {error}");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain; charset=utf-8",
                        b"metrics could not be encoded (logged)\n".to_vec(),
                    )
                }
            },
            "/healthz" => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                b"ok\n".to_vec(),
            ),
            "/readyz" if self.hub.accepting() => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                b"ready\n".to_vec(),
            ),
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                b"draining\n".to_vec(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                b"not found; try /stats, /metrics, /healthz or /readyz\n".to_vec(),
            ),
        };
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::CACHE_CONTROL, "no-store")
            .body(body)
            .unwrap_or_default()
    }
}
