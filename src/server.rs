//! Builds the Pingora server a [`Config`] describes, and runs it.
//!
//! One Pingora service listens on every `[[listen]]` address: the
//! [`FrontDoor`], which serves HTTP/2 topic streams itself and hands every
//! other session to the reverse [`Proxy`].
//! TLS listeners offer ALPN `h2` and `http/1.1` (TLS 1.2 and 1.3) with the
//! certificate the config already loaded; the front door runs their
//! handshake (with its own deadline), so Pingora listens in plain TCP on
//! every address. Plaintext listeners speak HTTP/1.1 and HTTP/2 with prior
//! knowledge (h2c). Every accepted socket gets TCP keepalive and a user
//! timeout so vanished clients are reaped, and HTTP/2 connections announce
//! the configured `MAX_CONCURRENT_STREAMS` and are closed after
//! `idle_timeout` with no open stream. Connections have no read buffer of
//! their own under the protocols' buffers (`[server] read_buffer`, 0 by
//! default; Pingora's default is 64 KiB, which a long-lived, mostly idle event
//! stream keeps resident once the allocator hands out recycled memory).
//!
//! [`run`] runs it with the signals operators expect: `SIGTERM` stops
//! gracefully, `SIGINT` at once, `SIGQUIT` hands the listeners to a new
//! process (`--upgrade`), and `SIGHUP` reloads the config file
//! ([`reload`](crate::reload)).

use std::path::PathBuf;
use std::time::Duration;

use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora::protocols::TcpKeepalive;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, Signal, SignalKind};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService};

use std::sync::Arc;

use pingora::connectors::http::Connector;

use arc_swap::ArcSwap;

use crate::acme::{self, AcmeSettings, ChallengeKind, Challenges, Keeper, Keepers};
use crate::admin;
use crate::admission::Admission;
use crate::auth::Authorizer;
use crate::config::{Config, Listener, ListenerTls, ServerSettings};
use crate::front_door::{Connections, DoorPolicy, Forwarder, FrontDoor, Listeners, Transport};
use crate::hub::Hub;
use crate::limits::Limits;
use crate::pid_file::PidFile;
use crate::proxy::{Proxy, ProxyPolicy};
use crate::reload::{ReloadRequests, Reloadable, Reloader};
use crate::tls::{self, CertificateSlot};
use pingora::{ErrorType, OrErr};

/// The name Pingora logs for the proxy service.
const SERVICE_NAME: &str = "sse-fanout";

/// How the process was started, beyond what the config file says.
#[derive(Debug, Default, Clone, Copy)]
pub struct StartOptions {
    /// Take over the listening sockets of a running instance (graceful
    /// upgrade through `upgrade_sock`).
    pub upgrade: bool,
}

/// Runs the hub's process-wide duties: opens `eager` topics at start, and on
/// shutdown (`SIGTERM`, or an upgrade once the listeners were handed over)
/// drains it: every subscriber's stream ends cleanly at its own moment within
/// `[server] drain`, so browsers reconnect spread out (to another instance,
/// or to this one's successor), then the hub's tasks end. All of it happens
/// within Pingora's grace period, which the config keeps at least as long.
struct HubLifecycle {
    hub: Hub,
    drain: Duration,
}

#[async_trait]
impl BackgroundService for HubLifecycle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.hub.start();
        let _ = shutdown.changed().await;
        log::info!(
            "shutting down: ending every subscriber's stream within {}",
            humantime::format_duration(self.drain)
        );
        self.hub.drain(self.drain);
        tokio::time::sleep(self.drain).await;
        self.hub.stop_tasks();
    }
}

/// Pingora counts its shutdown periods in whole seconds; round up so a
/// configured `"500ms"` still waits.
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

fn server_conf(settings: &ServerSettings) -> ServerConf {
    ServerConf {
        threads: settings.threads,
        daemon: settings.daemon,
        pid_file: settings.pid_file.clone(),
        upgrade_sock: settings.upgrade_sock.clone(),
        user: settings.user.clone(),
        group: settings.group.clone(),
        grace_period_seconds: Some(whole_seconds(settings.grace_period)),
        graceful_shutdown_timeout_seconds: Some(whole_seconds(settings.shutdown_timeout)),
        ..ServerConf::default()
    }
}

fn socket_options(settings: &ServerSettings) -> TcpSocketOptions {
    let keepalive = settings.tcp_keepalive;
    let mut options = TcpSocketOptions::default();
    options.tcp_keepalive = Some(TcpKeepalive {
        idle: keepalive.idle,
        interval: keepalive.interval,
        count: keepalive.count,
        #[cfg(target_os = "linux")]
        user_timeout: settings.tcp_user_timeout,
    });
    options
}

/// What a listener speaks, for the start-up log.
fn protocols(listener: &Listener) -> &'static str {
    match &listener.tls {
        Some(ListenerTls::Files(_)) => "TLS 1.2/1.3, ALPN h2 + http/1.1",
        Some(ListenerTls::Acme(_)) => "TLS 1.2/1.3, ALPN h2 + http/1.1, certificate by ACME",
        None => "plaintext HTTP/1.1 + h2c",
    }
}

/// A server ready to [`run`], with what callers may wire to it.
pub struct Built {
    /// The Pingora server; callers may add services of their own (the demo
    /// adds its app) before running it.
    pub server: Server,
    /// Its topics.
    pub hub: Hub,
    /// Where `SIGHUP` asks for a reload.
    reloads: ReloadRequests,
    /// The pid file to claim in the foreground (Pingora writes it itself
    /// when it daemonizes).
    pid_file: Option<PathBuf>,
}

/// Creates the Pingora server with the proxy service on every listener, the
/// admin listener, the hub's lifecycle and the reloader.
pub fn build(config: &Config, start: StartOptions) -> pingora::Result<Built> {
    let opt = Opt {
        upgrade: start.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config.server));
    server.bootstrap();

    let hub = Hub::new(config);
    let proxy_policy = Arc::new(ArcSwap::from_pointee(ProxyPolicy::new(config)));
    let mut proxy = pingora::proxy::http_proxy(
        &server.configuration,
        Proxy::new(hub.clone(), proxy_policy.clone()),
    );
    let mut server_options = HttpServerOptions::default();
    server_options.h2c = true;
    proxy.server_options = Some(server_options);
    let limits = Limits::new(config.limits);
    let authorizer = Arc::new(Authorizer::new(
        Arc::new(Connector::new(None)),
        config.app.connect.clone(),
        config.limits.auth_cache_size,
    ));
    let admission = Admission {
        limits: limits.clone(),
        authorizer: authorizer.clone(),
    };
    let mut transports = Vec::with_capacity(config.listeners.len());
    let mut certificates = Vec::new();
    let challenges = Arc::new(Challenges::new(acme::shared_http01_dirs(config)));
    let mut keepers = Vec::new();
    let mut acme_slots: Vec<(Arc<AcmeSettings>, Arc<CertificateSlot>)> = Vec::new();
    for listener in &config.listeners {
        let slot = match &listener.tls {
            None => {
                transports.push((listener.addr, Transport::Plain));
                continue;
            }
            Some(ListenerTls::Files(certificate)) => {
                let slot = certificate.slot();
                certificates.push((listener.addr, slot.clone()));
                slot
            }
            Some(ListenerTls::Acme(settings)) => {
                // Listeners with the same ACME settings (`0.0.0.0:443` and
                // `[::]:443`) share one certificate and one keeper.
                let shared = acme_slots.iter().find(|(other, _)| **other == **settings);
                match shared {
                    Some((_, slot)) => slot.clone(),
                    None => {
                        let slot = CertificateSlot::acme(challenges.clone());
                        keepers.push(Keeper::new(
                            settings.clone(),
                            slot.clone(),
                            challenges.clone(),
                        ));
                        acme_slots.push((settings.clone(), slot.clone()));
                        slot
                    }
                }
            }
        };
        let acceptor = tls::acceptor(slot).or_err_with(ErrorType::InternalError, || {
            format!("TLS settings of {}", listener.addr)
        })?;
        transports.push((listener.addr, Transport::Tls(Arc::new(acceptor))));
    }
    let mut listeners = Listeners::new(transports);
    let http01 = config.listeners.iter().any(|l| {
        l.tls
            .as_ref()
            .and_then(ListenerTls::acme)
            .is_some_and(|acme| acme.challenge == ChallengeKind::Http01)
    });
    if http01 {
        listeners = listeners.with_http01(challenges.clone());
    }
    let connections = Connections::new(&config.connections);
    let door_policy = Arc::new(ArcSwap::from_pointee(DoorPolicy::new(config)));
    let mut service = pingora::services::listening::Service::new(
        SERVICE_NAME.into(),
        FrontDoor::new(
            (proxy, Forwarder::new(proxy_policy.clone())),
            hub.clone(),
            admission,
            listeners,
            connections.clone(),
            door_policy.clone(),
            config,
        ),
    );

    let sockets = socket_options(&config.server);
    for listener in &config.listeners {
        // TLS, where configured, is the front door's (see above).
        service.add_listener(
            ListenerConfig::tcp(listener.addr.to_string())
                .tcp_socket_options(sockets.clone())
                .l4_buffer(L4BufferSettings {
                    read: Some(config.server.read_buffer),
                    write: None,
                }),
        );
        log::info!("listening on {} ({})", listener.addr, protocols(listener));
    }
    log::info!("proxying to app at {}", config.app.origin);
    for topic in &config.topics {
        log::info!(
            "topic {} <- {}{}",
            topic.path.as_str(),
            topic.upstream.origin,
            topic.upstream.path.as_str()
        );
    }

    server.add_service(service);
    if let Some(settings) = &config.admin {
        let phases = server.watch_execution_phase();
        server.add_service(admin::service(
            hub.clone(),
            connections.clone(),
            settings,
            phases,
        ));
        log::info!(
            "admin listener on {} (GET /metrics, /healthz, /readyz, /stats)",
            settings.addr
        );
    }
    server.add_service(background_service(
        "sse hub",
        HubLifecycle {
            hub: hub.clone(),
            drain: config.server.drain,
        },
    ));
    if !keepers.is_empty() {
        server.add_service(background_service("acme", Keepers::new(keepers)));
    }
    // Freed memory goes back to the system as load leaves (see memory.rs).
    server.add_service(crate::memory::trimmer());
    let reloads = ReloadRequests::default();
    server.add_service(background_service(
        "config reload",
        Reloader::new(
            config,
            Reloadable {
                hub: hub.clone(),
                proxy: proxy_policy,
                door: door_policy,
                limits,
                authorizer,
                connections,
                certificates,
            },
            reloads.clone(),
        ),
    ));
    Ok(Built {
        server,
        hub,
        reloads,
        pid_file: (!config.server.daemon).then(|| PathBuf::from(&config.server.pid_file)),
    })
}

/// Runs the server until a signal stops it (see the module docs), then exits.
pub fn run(built: Built) -> ! {
    catch_hangups_from_now();
    let pid_file = built.pid_file.as_deref().and_then(PidFile::claim);
    built.server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            reloads: built.reloads,
        }),
    });
    if let Some(pid_file) = pid_file {
        pid_file.release();
    }
    std::process::exit(0)
}

/// Replaces `SIGHUP`'s default action (ending the process) before any
/// listener opens: a signal handler, once registered, stays for the
/// process's life. [`Signals`] then reports each one.
fn catch_hangups_from_now() {
    let registered = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .and_then(|runtime| {
            let _entered = runtime.enter();
            signal(SignalKind::hangup()).map(drop)
        });
    if let Err(e) = registered {
        log::warn!("cannot catch SIGHUP, which will stop the process: {e}");
    }
}

/// The signals that stop the server, and `SIGHUP`, which asks for a reload.
struct Signals {
    reloads: ReloadRequests,
}

/// Waits for the next `signal`, forever when it could not be listened to.
async fn next(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(e) => {
                log::error!("cannot listen for {name}: {e}");
                None
            }
        };
        let mut quit = listen(SignalKind::quit(), "SIGQUIT");
        let mut terminate = listen(SignalKind::terminate(), "SIGTERM");
        let mut interrupt = listen(SignalKind::interrupt(), "SIGINT");
        let mut hangup = listen(SignalKind::hangup(), "SIGHUP");
        log::info!(
            "signals: SIGTERM stops gracefully, SIGINT at once, SIGQUIT hands the listeners \
             to a process started with --upgrade, SIGHUP reloads the config"
        );
        loop {
            tokio::select! {
                _ = next(&mut quit) => return ShutdownSignal::GracefulUpgrade,
                _ = next(&mut terminate) => return ShutdownSignal::GracefulTerminate,
                _ = next(&mut interrupt) => return ShutdownSignal::FastShutdown,
                _ = next(&mut hangup) => self.reloads.request(),
            }
        }
    }
}
