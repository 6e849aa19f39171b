//! The validated configuration the rest of the program uses, and the
//! documented default of every key.
//!
//! Nothing here parses or checks anything: [`super::validate`] builds these
//! types from the file, and every field holds a value that already passed
//! its rules. Each `DEFAULT_*` constant is the value a key takes when the
//! file leaves it out; `docs/configuration.md` documents the same numbers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::acme::AcmeSettings;
use crate::route::{PathTemplate, UpstreamTemplate};
use crate::tls::Certificate;
use crate::upstream_addr::{ConnectSettings, UpstreamAddr};

/// Where `sse-fanout` looks for its config when `-c` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "conf/sse-fanout.toml";

/// `[server] drain`: on `SIGTERM` or an upgrade, subscriptions end spread
/// over this long, so browsers come back spread out, not all at once.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// `[server] grace_period`: how long a stopping server keeps serving after
/// `SIGTERM` (or after handing its listeners over on an upgrade). It holds
/// the drain and a few seconds for the last ordinary requests.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(35);
/// `[server] shutdown_timeout`: how long runtimes get to finish after the grace period.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// `[server] max_concurrent_streams`: browsers use up to ~100 per connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 128;
/// `[server] tcp_keepalive.idle`: quiet time before the first keepalive probe.
pub const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// `[server] tcp_keepalive.interval`: time between keepalive probes.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// `[server] tcp_keepalive.count`: unanswered probes before the peer is declared dead.
pub const DEFAULT_KEEPALIVE_COUNT: usize = 5;
/// `[server] tcp_user_timeout`: unacknowledged data older than this kills the connection.
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(120);
/// `[server] read_buffer`: a read buffer under each connection, besides the
/// ones above it. None by default: Pingora's HTTP/1.1 session, `h2` and
/// rustls each buffer their own reads, so one more only costs memory (Pingora's
/// default, 64 KiB, is made resident for every idle stream by recycled memory).
pub const DEFAULT_READ_BUFFER: usize = 0;
/// The smallest `[server] read_buffer` accepted besides 0 (none).
pub const MIN_READ_BUFFER: usize = 1024;
/// `[server] pid_file`.
pub const DEFAULT_PID_FILE: &str = "/tmp/sse-fanout.pid";
/// `[server] upgrade_sock`: where a new process takes over the listening sockets.
pub const DEFAULT_UPGRADE_SOCK: &str = "/tmp/sse-fanout-upgrade.sock";
/// `[app] connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `[sse] heartbeat`: comment frames keep idle streams alive through intermediaries.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// `[sse] replay`: events kept per topic for `Last-Event-ID` resumption.
pub const DEFAULT_REPLAY: usize = 1000;
/// `[sse] retry`: the reconnection time sent to subscribers.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(3);
/// `[sse] replay_bytes`: total size of the events kept per topic.
pub const DEFAULT_REPLAY_BYTES: usize = 4 * 1024 * 1024;
/// `[sse] linger`: how long a topic with no subscribers keeps its upstream open.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(30);
/// `[sse] max_event_size`: a larger upstream event (or line) breaks the stream.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 256 * 1024;
/// `[sse] upstream_backoff_max`: the longest wait between upstream reconnects.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// `[sse] upstream_idle_timeout`: an upstream silent this long (not even a
/// comment) is reopened, as nginx's `proxy_read_timeout` would cut it; the
/// reopening resumes from the topic's last id, so nothing is lost.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `[sse] catch_up_max`: catch-ups one topic instance runs at once (one per
/// distinct resume point its window lacks, e.g. after a restart).
pub const DEFAULT_CATCH_UP_MAX: usize = 256;
/// `[sse] catch_up_timeout`: how long a catch-up may take to reach the window.
pub const DEFAULT_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest duration any key takes: longer is surely a typo, and keeps
/// every deadline the proxy computes far from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The validated configuration of one sse-fanout process.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from, for messages.
    pub path: PathBuf,
    /// Process-wide settings.
    pub server: ServerSettings,
    /// Where browsers connect; at least one.
    pub listeners: Vec<Listener>,
    /// The app behind the proxy.
    pub app: AppSettings,
    /// The SSE topics the proxy serves itself, in file order.
    pub topics: Vec<TopicConfig>,
    /// The stats listener, when `[admin]` is present.
    pub admin: Option<AdminSettings>,
    /// Caps and input bounds.
    pub limits: LimitSettings,
    /// Deadlines and caps of client connections (keys of `[limits]`).
    pub connections: ConnectionLimits,
    /// Things that work but deserve a second look (`--check` prints them).
    pub warnings: Vec<String>,
}

/// The `[admin]` table: an HTTP listener for operators, off the public ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminSettings {
    /// Where `GET /stats` is served; loopback by default.
    pub addr: SocketAddr,
}

/// `[limits] max_subscribers`.
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 100_000;
/// `[limits] max_subscribers_per_topic`.
pub const DEFAULT_MAX_SUBSCRIBERS_PER_TOPIC: usize = 100_000;
/// `[limits] max_topic_instances`: live instances one template may have.
/// As many as subscribers: an instance needs a subscriber to be created, so
/// by default this never refuses a user `max_subscribers` would admit (the
/// replay windows are bounded by `replay_memory` instead).
pub const DEFAULT_MAX_TOPIC_INSTANCES: usize = DEFAULT_MAX_SUBSCRIBERS;
/// `[limits] max_last_event_id`.
pub const DEFAULT_MAX_LAST_EVENT_ID: usize = 256;
/// `[limits] max_param_len`.
pub const DEFAULT_MAX_PARAM_LEN: usize = 128;
/// `[limits] header_timeout`.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `[limits] max_header_bytes`: room for large cookies, far below Pingora's 1 MiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// `[limits] auth_cache_size`.
pub const DEFAULT_AUTH_CACHE_SIZE: usize = 10_000;
/// `[limits] replay_memory`: what every topic's replay window may hold
/// together (each is also bounded by its own `replay_bytes`).
pub const DEFAULT_REPLAY_MEMORY: usize = 256 * 1024 * 1024;
/// `auth_cache` (`[sse]`, `[[topic]]`): long enough that a reconnect storm
/// (every tab, every retry) asks the app once per session and topic, short
/// enough that a revoked session keeps access for at most this long.
pub const DEFAULT_AUTH_CACHE: Duration = Duration::from_secs(5);
/// `[limits] idle_timeout`: Pingora's own HTTP/1.1 keep-alive timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `[limits] tls_handshake_timeout`: a few round trips take well under a
/// second even on slow mobile links.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[admin] addr` when the table is present but the key is not.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9090";

/// The `[server]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// After SIGTERM, how long to keep serving before stopping.
    pub grace_period: Duration,
    /// How long subscriptions take to end on SIGTERM or an upgrade: each
    /// ends at its own moment in this window (zero: all at once). Never
    /// longer than `grace_period` (it is shortened to fit, with a warning).
    pub drain: Duration,
    /// After the grace period, how long runtimes get to finish.
    pub shutdown_timeout: Duration,
    /// Run in the background (Pingora's daemon mode).
    pub daemon: bool,
    /// Where the process id is written.
    pub pid_file: String,
    /// Socket used to hand listeners to a new process on upgrade.
    pub upgrade_sock: String,
    /// User to switch to after daemonising.
    pub user: Option<String>,
    /// Group to switch to after daemonising.
    pub group: Option<String>,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` announced to clients.
    pub max_concurrent_streams: u32,
    /// TCP keepalive on accepted connections, so dead clients are reaped.
    pub tcp_keepalive: KeepaliveSettings,
    /// `TCP_USER_TIMEOUT` on accepted connections: unacknowledged data older
    /// than this closes the connection (catches peers that vanished mid-write).
    pub tcp_user_timeout: Duration,
    /// Bytes each accepted connection buffers its reads in.
    pub read_buffer: usize,
    /// Peers whose `X-Forwarded-For` is believed (proxies the operator runs
    /// in front of sse-fanout); empty by default: no one's is.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// TCP keepalive probing of accepted connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveSettings {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Probes without answer before the connection is dropped.
    pub count: usize,
}

/// One `[[listen]]` entry.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Address and port to bind.
    pub addr: SocketAddr,
    /// With TLS: ALPN `h2` and `http/1.1`. Without: HTTP/1.1 and h2c.
    pub tls: Option<ListenerTls>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) whose
    /// source address is the client's: for listeners only a TCP balancer
    /// that writes one can reach.
    pub proxy_protocol: bool,
    /// The `Strict-Transport-Security` value every answer on this listener
    /// carries (TLS listeners only), already checked.
    pub hsts: Option<String>,
}

/// Where a TLS listener's certificate comes from.
#[derive(Debug, Clone)]
pub enum ListenerTls {
    /// Files the operator brings (`tls = { cert, key }`), loaded and
    /// checked; a reload loads them again.
    Files(Certificate),
    /// Obtained and renewed by the proxy (`tls = { acme = [...] }`).
    Acme(Arc<AcmeSettings>),
}

impl ListenerTls {
    /// The ACME settings, for an ACME listener.
    pub fn acme(&self) -> Option<&AcmeSettings> {
        match self {
            ListenerTls::Acme(settings) => Some(settings),
            ListenerTls::Files(_) => None,
        }
    }
}

/// The `[app]` table: the upstream that gets every non-topic request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSettings {
    /// Scheme, host and port of the app.
    pub origin: UpstreamAddr,
    /// Timeouts and TLS verification for connections to it.
    pub connect: ConnectSettings,
}

/// One `[[topic]]`, with `[sse]` defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// What browsers subscribe to; may be a template.
    pub path: PathTemplate,
    /// Where the topic's one upstream stream comes from.
    pub upstream: TopicUpstream,
    /// Heartbeat, replay, retry and the other per-topic knobs.
    pub settings: TopicSettings,
    /// Keep the upstream open even with no subscribers (literal paths only).
    pub eager: bool,
    /// Who may subscribe and from which web origins.
    pub access: TopicAccess,
    /// Let the ordinary proxy pass requests for the topic's upstream path to
    /// the app (for an app that serves the stream to others on purpose);
    /// otherwise they get `404`, since they would skip auth and caps.
    pub expose_upstream: bool,
}

impl TopicConfig {
    /// Whether the ordinary proxy refuses this topic's upstream path: the
    /// stream is on `[app]` (same scheme, host and port) and the topic does
    /// not set `expose_upstream`.
    pub fn upstream_closed(&self, app: &AppSettings) -> bool {
        !self.expose_upstream && self.upstream.origin.same_as(&app.origin)
    }
}

/// Who may subscribe to a topic, and how its upstream is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicAccess {
    /// Where the app decides whether a subscriber is admitted; `None` makes
    /// the topic public.
    pub auth: Option<AuthTarget>,
    /// How long an auth decision is reused for the same credentials and
    /// topic instance; zero asks the app every time.
    pub auth_cache: Duration,
    /// Which web origins may subscribe from a page on another origin.
    pub cors: CorsOrigins,
    /// Extra headers on the upstream stream's request (e.g. a shared secret);
    /// never any subscriber's credentials, since the stream is shared.
    pub upstream_headers: Vec<(String, String)>,
}

impl Default for TopicAccess {
    /// Public, same-origin, and auth decisions (once there is an endpoint)
    /// reused for [`DEFAULT_AUTH_CACHE`].
    fn default() -> TopicAccess {
        TopicAccess {
            auth: None,
            auth_cache: DEFAULT_AUTH_CACHE,
            cors: CorsOrigins::None,
            upstream_headers: Vec::new(),
        }
    }
}

/// The app endpoint that authorizes subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthTarget {
    /// Its server: `[app]`'s, unless a full URL was given.
    pub origin: UpstreamAddr,
    /// Its path and query.
    pub path: String,
}

/// The `cors_origins` of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CorsOrigins {
    /// No CORS headers: only pages on the proxy's own origin subscribe.
    #[default]
    None,
    /// `Access-Control-Allow-Origin: *` (public topics only, no credentials).
    Any,
    /// These exact origins (`https://app.example`), credentials allowed.
    List(Vec<String>),
}

/// The `[limits]` table: what one client, one topic or the whole process may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// Subscriptions open at once, in all.
    pub max_subscribers: usize,
    /// Subscriptions open at once from one client address; `None` (the
    /// default) does not count them, since a balancer or a NAT puts every
    /// browser behind one address (`docs/security.md` recommends 1000 when
    /// client addresses are real).
    pub max_subscribers_per_ip: Option<usize>,
    /// Subscriptions open at once on one topic instance.
    pub max_subscribers_per_topic: usize,
    /// Live instances of one template topic (each opens an upstream stream).
    pub max_topic_instances: usize,
    /// New subscriptions per second from one client address (also the
    /// burst); `None` (the default) does not limit them, for the same reason
    /// and because a deploy reconnects everyone at once (100 recommended when
    /// client addresses are real).
    pub subscribe_rate_per_ip: Option<u32>,
    /// What a subscriber over a limit is answered.
    pub over_limit: OverLimit,
    /// The longest `Last-Event-ID` taken; longer counts as absent.
    pub max_last_event_id: usize,
    /// The longest template parameter value (`{id}`) accepted.
    pub max_param_len: usize,
    /// An HTTP/1.1 client must send its whole request header within this.
    pub header_timeout: Duration,
    /// The largest request header accepted (HTTP/1.1 header, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Auth decisions kept at most (the cache is bounded).
    pub auth_cache_size: usize,
    /// Bytes every replay window may hold together; past it the oldest
    /// frames of all topics are evicted.
    pub replay_memory: usize,
}

/// The `[limits]` keys about client connections rather than requests: how
/// long one may take to say something, and how many one address may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A connection with no request in progress is closed after this long:
    /// before its first request, between HTTP/1.1 requests, and an HTTP/2
    /// connection with no open stream.
    pub idle_timeout: Duration,
    /// A TLS client must finish its handshake within this.
    pub tls_handshake_timeout: Duration,
    /// Connections open at once from one client address; `None` (the
    /// default) is no cap, since many browsers can share one address.
    pub max_connections_per_ip: Option<usize>,
}

/// The answer to a subscriber over a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// `200`, a jittered `retry:` and a clean end: the EventSource backs off
    /// and comes back rather than giving up.
    Retry,
    /// `429 Too Many Requests` with `Retry-After` (an EventSource stops).
    TooManyRequests,
    /// `503 Service Unavailable` with `Retry-After` (an EventSource stops).
    Unavailable,
}

/// Where a topic's upstream stream is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicUpstream {
    /// The server: `[app]`'s, unless the topic gave a full URL.
    pub origin: UpstreamAddr,
    /// Path and query on that server, with the topic path's placeholders.
    pub path: UpstreamTemplate,
}

/// The per-topic SSE behaviour (`[sse]` defaults, overridable per topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSettings {
    /// A comment frame is sent after this long without an event.
    pub heartbeat: Duration,
    /// The reconnection time sent to subscribers (`retry:`).
    pub retry: Duration,
    /// Events kept for `Last-Event-ID` resumption (at least 1).
    pub replay: usize,
    /// Total encoded size of the events kept; the newest is always kept.
    pub replay_bytes: usize,
    /// A subscriber this many events behind is disconnected (it resumes).
    pub max_lag: usize,
    /// A subscriber this many bytes behind is disconnected (it resumes).
    pub max_lag_bytes: usize,
    /// What a subscriber resuming from an id no longer in the window gets.
    pub resume_lost: ResumeLost,
    /// What a late joiner (no `Last-Event-ID`) gets before live events.
    pub prime: Prime,
    /// Spaces after the heartbeat's `:`, for intermediaries that hold a
    /// stream until enough bytes pass (0: the heartbeat is `:` LF).
    pub heartbeat_padding: usize,
    /// How long the upstream stays open after the last subscriber left.
    pub linger: Duration,
    /// The largest upstream line or event accepted; larger breaks the stream.
    pub max_event_size: usize,
    /// The longest wait between two upstream connection attempts.
    pub backoff_max: Duration,
    /// Reconnect an upstream that sent nothing (not even a comment) for
    /// this long; `None` (configured as `"0s"`) waits forever.
    pub upstream_idle_timeout: Option<Duration>,
    /// Catch-ups (a resuming subscriber's missed events, fetched from the
    /// app) running at once on one topic instance.
    pub catch_up_max: usize,
    /// How long a catch-up may take to reach the topic's window.
    pub catch_up_timeout: Duration,
}

/// What a late joiner (a subscriber without `Last-Event-ID`, on a topic that
/// has had events) gets before live events. Clients differ in what they make
/// of each (docs/clients.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prime {
    /// The topic's last event id, in the opening block (`id:` and no data):
    /// an `EventSource` resumes exactly from it without seeing an event;
    /// clients that dispatch every block see one empty event.
    Id,
    /// Nothing: the client's last event id comes with the next event.
    None,
    /// The latest event the window holds, a real event with its id (the
    /// current state, for dashboards); priming by id when the window is
    /// empty.
    Last,
}

/// The longest `heartbeat_padding`.
pub const MAX_HEARTBEAT_PADDING: usize = 4096;

/// What a subscriber gets when its `Last-Event-ID` is not in the replay window
/// (evicted, or never seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeLost {
    /// A comment saying the resume point was lost, then the whole window.
    Replay,
    /// A comment saying the resume point was lost, then live events only.
    Live,
}
