//! Reloading the config on `SIGHUP`, without ending a stream the change does
//! not concern.
//!
//! The signal only asks ([`ReloadRequests`]); the [`Reloader`], a background
//! service, does the work on its own runtime. It reads the file given at
//! start again and validates it exactly as `--check` does (certificates
//! loaded and matched to their keys). A config that fails changes nothing:
//! one error line names the file, the line and the key, and
//! `sse_fanout_reloads_total{result="failed"}` counts it.
//!
//! A config that passes is applied piece by piece, each piece swapped whole
//! so a request sees either the old config or the new one, never a mix:
//!
//! | what | where it applies |
//! |---|---|
//! | topics added, removed, changed | the [`Hub`]: an untouched topic keeps its upstream stream; a removed one's subscribers end spread over `[server] drain`; a moved upstream reconnects that topic alone, subscribers attached; changed settings apply from now on |
//! | `[app]` | the proxy ([`ProxyPolicy`]) and the auth requests, from the next request |
//! | `[limits]` | admission ([`Limits`]) and the auth cache (emptied, so no decision outlives the config that made it) |
//! | `[limits]` deadlines, `hsts`, `trusted_proxies` | the front door ([`DoorPolicy`]) for new connections; `max_connections_per_ip` ([`Connections`]) |
//! | certificates | each TLS listener's [`CertificateSlot`]: new handshakes get the new pair, open connections keep theirs |
//!
//! `sse-fanout -c FILE --reload` asks a running instance from the command
//! line ([`pid_file::signal_running`](crate::pid_file::signal_running)): it checks FILE as `--check` does, then sends
//! `SIGHUP` to the process named by its `pid_file` (what `systemctl reload`
//! runs through `ExecReload`).
//!
//! What is bound to a socket or a thread at start (listener addresses,
//! whether a listener has TLS or the PROXY protocol, the `[server]` table
//! besides `trusted_proxies`, the admin address) is reported as needing a
//! restart or an upgrade (`--upgrade`), and the rest still applies; HTTP/2
//! settings apply to the connections that start after the reload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{Mutex, Notify};

use crate::auth::Authorizer;
use crate::config::{Config, Listener, ListenerTls, ServerSettings};
use crate::front_door::{Connections, DoorPolicy};
use crate::hub::{Hub, TopicChanges};
use crate::limits::Limits;
use crate::metrics;
use crate::proxy::ProxyPolicy;
use crate::tls::CertificateSlot;

/// Reloads asked for and not yet done. Cheap to clone; several signals
/// before the reloader wakes make one reload.
#[derive(Clone, Default)]
pub struct ReloadRequests(Arc<Notify>);

impl ReloadRequests {
    /// Asks for a reload (from the signal handler).
    pub fn request(&self) {
        self.0.notify_one();
    }

    /// Waits for the next request.
    async fn next(&self) {
        self.0.notified().await;
    }
}

/// The pieces of a running server a reload replaces.
pub struct Reloadable {
    /// The topics.
    pub hub: Hub,
    /// The reverse proxy's policy.
    pub proxy: Arc<ArcSwap<ProxyPolicy>>,
    /// The front door's policy.
    pub door: Arc<ArcSwap<DoorPolicy>>,
    /// The subscription caps.
    pub limits: Arc<Limits>,
    /// The auth requests and their cache.
    pub authorizer: Arc<Authorizer>,
    /// The per-address connection cap.
    pub connections: Arc<Connections>,
    /// Each TLS listener's certificate.
    pub certificates: Vec<(SocketAddr, Arc<CertificateSlot>)>,
}

/// Reloads the config when asked: a background service.
pub struct Reloader {
    /// The config in force: what the next reload is compared with.
    current: Mutex<Config>,
    /// What a reload replaces.
    pieces: Reloadable,
    /// Where the asks come from.
    requests: ReloadRequests,
}

/// What a reload changed, for its log line.
struct Applied {
    topics: TopicChanges,
    certificates: usize,
}

impl Reloader {
    /// A reloader of `pieces`, running with `config`; `requests` wakes it.
    pub fn new(config: &Config, pieces: Reloadable, requests: ReloadRequests) -> Reloader {
        Reloader {
            current: Mutex::new(config.clone()),
            pieces,
            requests,
        }
    }

    /// Reads the config file again and applies it, or keeps the running one
    /// when it does not pass validation. Returns whether it was applied.
    pub async fn reload(&self) -> bool {
        let mut current = self.current.lock().await;
        let path: PathBuf = current.path.clone();
        log::info!("reloading {}", path.display());
        // Reading and checking the files (certificates included) is short
        // and rare; it runs on the reloader's own runtime.
        let next = match Config::load(&path) {
            Ok(next) => next,
            Err(e) => {
                log::error!("reload failed, the running config stays: {e}");
                metrics::reloaded(false);
                return false;
            }
        };
        for warning in &next.warnings {
            log::warn!("{}: warning: {warning}", path.display());
        }
        for what in needs_restart(&current, &next) {
            log::warn!(
                "reload: {what} changed, which takes a restart (or an upgrade with --upgrade); \
                 the rest of the config applies"
            );
        }
        let applied = self.apply(&current, &next);
        log::info!("reloaded {}: {}", path.display(), describe(&applied));
        *current = next;
        metrics::reloaded(true);
        true
    }

    /// Applies `next` everywhere it can apply while running.
    fn apply(&self, current: &Config, next: &Config) -> Applied {
        let pieces = &self.pieces;
        // The drain in force: a changed one is part of the [server] table,
        // which takes a restart.
        let topics = pieces.hub.reconfigure(next, current.server.drain);
        pieces.proxy.store(Arc::new(ProxyPolicy::new(next)));
        pieces.door.store(Arc::new(DoorPolicy::new(next)));
        pieces.limits.set_settings(next.limits);
        pieces
            .authorizer
            .reconfigure(next.app.connect.clone(), next.limits.auth_cache_size);
        pieces.connections.set_limits(&next.connections);
        let mut certificates = 0;
        for listener in &next.listeners {
            let Some(ListenerTls::Files(certificate)) = &listener.tls else {
                continue;
            };
            let slot = pieces
                .certificates
                .iter()
                .find(|(addr, _)| *addr == listener.addr);
            if let Some((_, slot)) = slot {
                slot.store(certificate);
                certificates += 1;
            }
        }
        Applied {
            topics,
            certificates,
        }
    }
}

/// What changed between `current` and `next` that a running process cannot
/// apply, each named as an operator would look for it.
fn needs_restart(current: &Config, next: &Config) -> Vec<String> {
    let mut found = Vec::new();
    let shape = |listener: &Listener| {
        (
            listener.addr,
            listener.tls.is_some(),
            listener.tls.as_ref().and_then(ListenerTls::acme).cloned(),
            listener.proxy_protocol,
        )
    };
    let before: Vec<_> = current.listeners.iter().map(shape).collect();
    let after: Vec<_> = next.listeners.iter().map(shape).collect();
    if before != after {
        found.push(
            "[[listen]] (addresses, tls on or off, acme settings, proxy_protocol)".to_string(),
        );
    }
    let server = |settings: &ServerSettings| ServerSettings {
        trusted_proxies: Vec::new(),
        ..settings.clone()
    };
    if server(&current.server) != server(&next.server) {
        found.push("[server] (besides trusted_proxies)".to_string());
    }
    if current.admin != next.admin {
        found.push("[admin] addr".to_string());
    }
    found
}

/// One line saying what a reload changed.
fn describe(applied: &Applied) -> String {
    let TopicChanges {
        added,
        removed,
        moved,
        changed,
    } = &applied.topics;
    let list = |what: &str, items: &[String]| {
        (!items.is_empty()).then(|| format!("{what} {}", items.join(", ")))
    };
    let topics: Vec<String> = [
        list("topics added:", added),
        list("removed (draining):", removed),
        list("changed:", changed),
        list("upstreams reconnecting:", moved),
    ]
    .into_iter()
    .flatten()
    .collect();
    let topics = if topics.is_empty() {
        "topics unchanged".to_string()
    } else {
        topics.join("; ")
    };
    format!(
        "{topics}; certificates loaded for {} TLS listener(s)",
        applied.certificates
    )
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                () = self.requests.next() => {
                    self.reload().await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::from_text(Path::new("sse-fanout.toml"), text).expect("a valid config")
    }

    const BASE: &str =
        "[[listen]]\naddr = \"127.0.0.1:8080\"\n[app]\nupstream = \"127.0.0.1:3000\"\n";

    #[test]
    fn topics_app_limits_and_trusted_proxies_apply_without_a_restart() {
        let before = config(BASE);
        let after = config(&format!(
            "{}\n[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n[limits]\nmax_subscribers = 5\n\
             [[topic]]\npath = \"/events/x\"\nupstream = \"/x\"\n",
            BASE.replace("3000", "3001")
        ));
        assert!(needs_restart(&before, &after).is_empty());
    }

    #[test]
    fn listeners_the_server_table_and_the_admin_address_need_a_restart() {
        let before = config(BASE);
        let moved = config(&BASE.replace("8080", "8081"));
        assert_eq!(needs_restart(&before, &moved).len(), 1);
        let threads = config(&format!("{BASE}[server]\nthreads = 3\n"));
        assert_eq!(
            needs_restart(&before, &threads),
            ["[server] (besides trusted_proxies)"]
        );
        let admin = config(&format!("{BASE}[admin]\naddr = \"127.0.0.1:9999\"\n"));
        assert_eq!(needs_restart(&before, &admin), ["[admin] addr"]);
    }

    #[test]
    fn changed_acme_settings_need_a_restart() {
        let cache = std::env::temp_dir().display().to_string();
        let acme = |names: &str| {
            config(&BASE.replace(
                "8080\"\n",
                &format!("8080\"\ntls = {{ acme = [{names}], cache = \"{cache}\" }}\n"),
            ))
        };
        let before = acme("\"a.example.com\"");
        assert!(needs_restart(&before, &acme("\"a.example.com\"")).is_empty());
        assert_eq!(
            needs_restart(&before, &acme("\"a.example.com\", \"b.example.com\"")).len(),
            1
        );
    }
}
