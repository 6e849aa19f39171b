//! The admin listener: what operators, load balancers and Prometheus ask
//! the running proxy.
//!
//! It is a separate Pingora service on its own address (`[admin] addr`,
//! loopback by default), never on the public listeners. `GET /stats` answers
//! JSON with every live topic: subscribers, upstream state, last event id,
//! replay window size, events in, deliveries and slow-subscriber closures;
//! the process's admission counts (refusals by reason, the caps binding
//! now, auth requests and their connections), the process's client
//! connections: how many are open, and how many the front door closed early
//! (caps, deadlines, HTTP/2 abuse), and the admin listener's own.
//!
//! `GET /metrics` answers the same figures and more in Prometheus' text
//! format (see [`metrics`](crate::metrics)). `GET /healthz` answers `200`
//! while the process runs; `GET /readyz` answers `200` while it accepts new
//! subscriptions and `503` once it is draining or shutting down, so a load
//! balancer that checks it stops sending new connections before they would
//! be turned away.
//!
//! # It outlives the drain
//!
//! Pingora stops every listening service's accept loop the moment a graceful
//! stop begins. For the public listeners that is what should happen; for
//! this one it would close the port through the whole `[server] drain`, and a
//! balancer would read "connection refused" instead of the `503` that says
//! "draining". So [`AdminService`] runs Pingora's listening service with a
//! shutdown watch of its own, which only fires when the listener has a
//! successor:
//!
//! - On `SIGTERM` it never fires: the admin port answers (`/readyz` `503`,
//!   `/stats`, `/metrics`) until the process exits, after the drain, the
//!   grace period and the shutdown timeout.
//! - On a graceful upgrade (`--upgrade`, then `SIGQUIT` to the old process)
//!   the admin socket is handed to the successor with the public ones,
//!   through Pingora's `upgrade_sock`: it is the same listening socket, not
//!   a second one bound to the same address, so no connection waiting in its
//!   queue is lost when the old process exits, and no `SO_REUSEPORT` lottery
//!   sends a check to either process. Like the public listeners, the old
//!   process stops accepting on it when its drain begins (Pingora's 5 s after
//!   the handover), and from then on the successor alone answers at the
//!   admin address: a balancer keeps seeing `200` for an address that is
//!   still served, now by the new process, rather than a `503` from the one
//!   leaving. (A `SIGQUIT` with no successor waiting hands nothing over, yet
//!   the old process still stops accepting, on every listener: use `SIGTERM`
//!   to stop.)
//!
//! The old process's drain is visible in its log and, until it stops
//! accepting, in its `/stats`.
//!
//! # Bounds
//!
//! The listener serves one request per connection (`Connection: close`),
//! within deadlines: the request head must arrive within
//! [`REQUEST_DEADLINE`] and the answer be taken within [`ANSWER_DEADLINE`].
//! At most [`MAX_CONNECTIONS`] are served at once; past that a new
//! connection is closed unanswered, counted in `/stats` (`admin.refused`),
//! and the cap's binding is logged once (and its end once).

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::ServerApp;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::{ExecutionPhase, ListenFds, ShutdownWatch};
use pingora::services::listening::Service as ListeningService;
use pingora::services::Service;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::AdminSettings;
use crate::front_door::{ConnectionCounts, Connections};
use crate::hub::{Hub, TopicSnapshot, UpstreamState};
use crate::metrics::{self, Metrics};

/// Admin connections served at once: health checks, scrapes and operators
/// each take milliseconds, so this leaves room for many of them, while a
/// client that opens connections without end cannot exhaust the process.
pub const MAX_CONNECTIONS: usize = 64;

/// How long an admin client may take to send its whole request head.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// How long an admin client may take to read the whole answer (`/metrics`
/// and `/stats` grow with the number of topics).
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// The name Pingora logs for the admin service.
const SERVICE_NAME: &str = "sse-fanout admin";

/// The admin HTTP app: what each admin connection is answered.
pub struct AdminApp {
    /// Whose topics are reported.
    hub: Hub,
    /// Whose client connections are reported.
    connections: Arc<Connections>,
    /// The Prometheus registry `/metrics` encodes.
    metrics: Metrics,
    /// One permit per connection served now ([`MAX_CONNECTIONS`]).
    slots: Arc<Semaphore>,
    /// Connections closed unanswered because every slot was taken.
    refused: AtomicU64,
    /// Whether the connection cap is refusing now, so that its start and its
    /// end are logged once each rather than once per connection.
    cap_binding: AtomicBool,
}

/// The admin listener as a Pingora service whose accept loop outlives the
/// drain (see the module doc).
pub struct AdminService {
    /// Pingora's listening service with the admin app: it binds the address,
    /// or takes the socket a predecessor handed over, and registers it for
    /// the next handover.
    listener: ListeningService<AdminApp>,
    /// The server's execution phases, which tell a graceful upgrade (the
    /// listener has a successor) from a stop (it has none).
    phases: broadcast::Receiver<ExecutionPhase>,
}

/// The admin service, listening on `settings.addr`. `phases` comes from the
/// server it is added to ([`pingora::server::Server::watch_execution_phase`]).
pub fn service(
    hub: Hub,
    connections: Arc<Connections>,
    settings: &AdminSettings,
    phases: broadcast::Receiver<ExecutionPhase>,
) -> AdminService {
    let metrics = Metrics::new(hub.clone(), connections.clone());
    let app = AdminApp {
        hub,
        connections,
        metrics,
        slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        refused: AtomicU64::new(0),
        cap_binding: AtomicBool::new(false),
    };
    let mut listener = ListeningService::new(SERVICE_NAME.into(), app);
    // Light work: one thread is plenty, and keeps the proxy's for the proxy.
    listener.threads = Some(1);
    listener.add_tcp(&settings.addr.to_string());
    AdminService { listener, phases }
}

#[async_trait]
impl Service for AdminService {
    async fn start_service(
        &mut self,
        #[cfg(unix)] fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        // The listener stops accepting when this says so, not Pingora's.
        let (stop, stopped) = watch::channel(false);
        let serve = self.listener.start_service(
            #[cfg(unix)]
            fds,
            stopped,
            listeners_per_fd,
        );
        let follow = follow_shutdown(shutdown, &mut self.phases, stop);
        tokio::select! {
            () = serve => {}
            () = follow => {}
        }
    }

    fn name(&self) -> &str {
        SERVICE_NAME
    }

    fn threads(&self) -> Option<usize> {
        self.listener.threads
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        // Claims the admin socket a predecessor hands over, so Pingora
        // keeps it for this service rather than closing it.
        self.listener.listen_addresses()
    }
}

/// Waits for Pingora's shutdown, then stops the admin listener only if its
/// socket went to a successor (a graceful upgrade); otherwise it keeps
/// accepting until the process exits. Never returns: `stop` must outlive the
/// listener's accept loop, which would take a dropped sender for a stop.
async fn follow_shutdown(
    mut shutdown: ShutdownWatch,
    phases: &mut broadcast::Receiver<ExecutionPhase>,
    stop: watch::Sender<bool>,
) {
    if shutdown.wait_for(|down| *down).await.is_ok() {
        if handed_over(phases) {
            log::info!("admin listener: handed to the new process, which answers from now on");
            let _ = stop.send(true);
        } else {
            log::info!("admin listener: answering until the process exits (/readyz says 503)");
        }
    }
    std::future::pending::<()>().await;
}

/// Whether the server went through a graceful upgrade's handover before
/// shutting down (Pingora announces those phases before the shutdown).
fn handed_over(phases: &mut broadcast::Receiver<ExecutionPhase>) -> bool {
    loop {
        match phases.try_recv() {
            Ok(
                ExecutionPhase::GracefulUpgradeTransferringFds
                | ExecutionPhase::GracefulUpgradeCloseTimeout,
            ) => return true,
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => {
                return false
            }
        }
    }
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

impl AdminApp {
    /// The answer to a request for `path`.
    fn response(&self, path: &str) -> Response<Vec<u8>> {
        let (status, content_type, body) = match path {
            "/stats" => {
                let mut document = stats(&self.hub);
                if let Some(fields) = document.as_object_mut() {
                    fields.insert(
                        "connections".into(),
                        connections_json(&self.connections.counts()),
                    );
                    fields.insert("admin".into(), self.admin_json());
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

    /// The `admin` part of the `/stats` document: this listener's own
    /// connections.
    fn admin_json(&self) -> Value {
        json!({
            "open": MAX_CONNECTIONS.saturating_sub(self.slots.available_permits()),
            "refused": self.refused.load(Ordering::Relaxed),
        })
    }

    /// A slot for a new connection, or `None` when [`MAX_CONNECTIONS`] are
    /// served already (counted; the cap's start and end are logged once).
    fn admit(&self) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                if self.cap_binding.swap(false, Ordering::Relaxed) {
                    log::info!("admin listener: fewer than {MAX_CONNECTIONS} connections again; serving new ones");
                }
                Some(slot)
            }
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                if !self.cap_binding.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "admin listener: {MAX_CONNECTIONS} connections open at once; closing new \
                         ones unanswered until one ends (counted in /stats admin.refused)"
                    );
                }
                None
            }
        }
    }
}

/// Each admin connection: one request, read and answered within deadlines,
/// then closed.
#[async_trait]
impl ServerApp for AdminApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _slot = self.admit()?;
        let mut session = ServerSession::new_http1(stream);
        // One request per connection: no idle connection holds a slot.
        session.set_keepalive(None);
        match tokio::time::timeout(REQUEST_DEADLINE, session.read_request()).await {
            Ok(Ok(true)) => {}
            // Closed before sending anything.
            Ok(Ok(false)) => return None,
            Ok(Err(error)) => {
                log::debug!("admin listener: unreadable request: {error}");
                return None;
            }
            Err(_) => {
                log::debug!("admin listener: no request within {REQUEST_DEADLINE:?}; closed");
                return None;
            }
        }
        let (parts, body) = self.response(session.req_header().uri.path()).into_parts();
        let answer = async move {
            session
                .write_response_header(Box::new(ResponseHeader::from(parts)))
                .await?;
            session.write_response_body(body.into(), true).await?;
            session.finish().await
        };
        match tokio::time::timeout(ANSWER_DEADLINE, answer).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => log::debug!("admin listener: answer not delivered: {error}"),
            Err(_) => {
                log::debug!("admin listener: answer not taken within {ANSWER_DEADLINE:?}; closed")
            }
        }
        None
    }
}
