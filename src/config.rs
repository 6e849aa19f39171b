//! The config file: its model, its defaults and its validation.
//!
//! One TOML file describes a whole deployment: the listeners (with their
//! certificates), the app behind the proxy, defaults for every SSE topic and
//! the topics themselves. See `docs/configuration.md` for every key.
//!
//! Loading happens in two steps. First the text is deserialised into the
//! `raw` structs below, which mirror the file exactly, refuse unknown keys and
//! remember where each value stood ([`toml::Spanned`]). Then [`Config::load`]
//! validates those values, fills in defaults, loads the certificates and
//! builds the [`Config`] the rest of the program uses. Every failure becomes
//! one [`ConfigError`] line naming the file, the line, the key and what to do,
//! so `sse-fanout --check` reads like `nginx -t`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::route::{PathTemplate, UpstreamTemplate};
use crate::tls::{Certificate, TlsFile};
use crate::upstream_addr::{ConnectSettings, UpstreamAddr};

/// Where `sse-fanout` looks for its config when `-c` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "conf/sse-fanout.toml";

/// `[server] grace_period`: how long a stopping server keeps serving.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
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
/// `[server] read_buffer`: each connection's read buffer. Pingora's default
/// is 64 KiB, which recycled memory makes resident for every idle stream.
pub const DEFAULT_READ_BUFFER: usize = 4 * 1024;
/// The smallest `[server] read_buffer` accepted.
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
    pub tls: Option<Certificate>,
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

/// What a subscriber gets when its `Last-Event-ID` is not in the replay window
/// (evicted, or never seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeLost {
    /// A comment saying the resume point was lost, then the whole window.
    Replay,
    /// A comment saying the resume point was lost, then live events only.
    Live,
}

/// A config problem, reported as one line: `file:line:col: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub position: Option<(usize, usize)>,
    /// The dotted key at fault (`topic[1].path`), when known.
    pub key: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates a config file, loading its certificates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            position: None,
            key: None,
            message: format!("cannot read the config file: {e}; give its path with -c FILE"),
        })?;
        Self::from_text(path, &text)
    }

    /// Parses and validates config text; `path` names it in errors and is the
    /// base for relative certificate paths.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let source = Source { path, text };
        let raw: raw::Config = toml::from_str(text).map_err(|e| {
            let span = e.span();
            source.error(span.clone(), span.and_then(|s| source.key_at(s.start)), {
                e.message().to_string()
            })
        })?;
        Validator { source }.config(raw)
    }
}

/// The file being validated: turns byte spans into line numbers and keys.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(
        &self,
        span: Option<Range<usize>>,
        key: Option<String>,
        message: String,
    ) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            position: span.map(|s| self.line_column(s.start)),
            key,
            message,
        }
    }

    fn line_column(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    /// Names the key whose value (or name) starts at `offset`, e.g.
    /// `topic[1].heartbeat` or `listen[0].tls.cert`, by reading the table
    /// headers above it and the `key =` text before it on its line.
    fn key_at(&self, offset: usize) -> Option<String> {
        let offset = offset.min(self.text.len());
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let mut table = None::<String>;
        let mut array_counts: HashMap<&str, usize> = HashMap::new();
        for line in self.text[..line_start].lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
                let name = name.trim();
                let count = array_counts.entry(name).or_insert(0);
                table = Some(format!("{name}[{count}]"));
                *count += 1;
            } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
                table = Some(name.trim().to_string());
            }
        }
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let before = &self.text[line_start..offset];
        let after = &self.text[offset..line_end];
        let mut keys: Vec<String> = before
            .split('{')
            .filter_map(|part| {
                let assignment = part.rsplit(',').next()?;
                let (key, _) = assignment.split_once('=')?;
                Some(key.trim().trim_matches('"').to_string())
            })
            .filter(|k| !k.is_empty())
            .collect();
        // The span may sit on the key itself (unknown keys are reported there).
        let bare_key: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            .collect();
        if !bare_key.is_empty() && after[bare_key.len()..].trim_start().starts_with('=') {
            keys.push(bare_key);
        }
        let mut path: Vec<String> = table.into_iter().collect();
        path.extend(keys);
        (!path.is_empty()).then(|| path.join("."))
    }
}

/// Turns the raw file into a [`Config`], one rule at a time.
struct Validator<'a> {
    source: Source<'a>,
}

impl Validator<'_> {
    fn at<T>(&self, value: &Spanned<T>, key: impl Into<String>, message: String) -> ConfigError {
        self.source
            .error(Some(value.span()), Some(key.into()), message)
    }

    fn nowhere(&self, key: Option<&str>, message: String) -> ConfigError {
        self.source.error(None, key.map(str::to_string), message)
    }

    /// Relative paths in the config are relative to the config file's folder.
    fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            return path.to_path_buf();
        }
        match self.source.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    fn config(&self, raw: raw::Config) -> Result<Config, ConfigError> {
        let server = self.server(raw.server)?;
        let listeners = self.listeners(raw.listen)?;
        let Some(raw_app) = raw.app else {
            return Err(self.nowhere(
                Some("app"),
                "missing [app] table; add one with upstream = \"127.0.0.1:8080\" (where your app listens)".into(),
            ));
        };
        let app = self.app(raw_app)?;
        let mut raw_sse = raw.sse;
        let access_defaults = self.access(raw_sse.access(), "sse", &app, TopicAccess::default())?;
        let defaults = self.sse_defaults(raw_sse)?;
        let topics = self.topics(raw.topic, &app, defaults, &access_defaults)?;
        let mut raw_limits = raw.limits.unwrap_or_default();
        let connections = self.connection_limits(&mut raw_limits)?;
        let limits = self.limits(raw_limits)?;
        let mut warnings: Vec<String> = topics
            .iter()
            .filter(|t| t.path.is_template() && t.access.auth.is_none())
            .map(|t| {
                format!(
                    "template topic {:?} has no auth: anyone who guesses an instance's path can subscribe to it",
                    t.path.as_str()
                )
            })
            .collect();
        warnings.extend(
            topics
                .iter()
                .filter(|t| t.expose_upstream && t.upstream.origin.same_as(&app.origin))
                .map(|t| {
                    format!(
                        "topic {:?} sets expose_upstream: its upstream path {:?} is reachable through the proxy without the topic's auth and caps, one app stream per client",
                        t.path.as_str(),
                        t.upstream.path.as_str()
                    )
                }),
        );
        let admin = raw.admin.map(|admin| self.admin(admin)).transpose()?;
        if let Some(admin) = &admin {
            if listeners.iter().any(|l| l.addr == admin.addr) {
                return Err(self.nowhere(
                    Some("admin.addr"),
                    format!("{} is also a [[listen]] address; give the admin listener its own (loopback) address", admin.addr),
                ));
            }
        }
        Ok(Config {
            path: self.source.path.to_path_buf(),
            server,
            listeners,
            app,
            topics,
            admin,
            limits,
            connections,
            warnings,
        })
    }

    fn server(&self, raw: raw::Server) -> Result<ServerSettings, ConfigError> {
        let threads = match raw.threads {
            Some(t) if *t.get_ref() == 0 => {
                return Err(self.at(
                    &t,
                    "server.threads",
                    "must be at least 1 (leave it out to use one per core)".into(),
                ))
            }
            Some(t) => t.into_inner(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let max_concurrent_streams = match raw.max_concurrent_streams {
            Some(m) if *m.get_ref() == 0 => {
                return Err(self.at(
                    &m,
                    "server.max_concurrent_streams",
                    "must be at least 1; browsers open up to ~100 streams per connection".into(),
                ))
            }
            Some(m) => m.into_inner(),
            None => DEFAULT_MAX_CONCURRENT_STREAMS,
        };
        let keepalive = raw.tcp_keepalive.unwrap_or_default();
        let tcp_keepalive = KeepaliveSettings {
            idle: self
                .positive(keepalive.idle, "server.tcp_keepalive.idle")?
                .unwrap_or(DEFAULT_KEEPALIVE_IDLE),
            interval: self
                .positive(keepalive.interval, "server.tcp_keepalive.interval")?
                .unwrap_or(DEFAULT_KEEPALIVE_INTERVAL),
            count: match keepalive.count {
                Some(c) if *c.get_ref() == 0 => {
                    return Err(self.at(
                        &c,
                        "server.tcp_keepalive.count",
                        "must be at least 1".into(),
                    ))
                }
                Some(c) => c.into_inner(),
                None => DEFAULT_KEEPALIVE_COUNT,
            },
        };
        Ok(ServerSettings {
            threads,
            grace_period: raw
                .grace_period
                .map_or(DEFAULT_GRACE_PERIOD, |d| d.into_inner().0),
            shutdown_timeout: raw
                .shutdown_timeout
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| d.into_inner().0),
            daemon: raw.daemon.unwrap_or(false),
            pid_file: raw.pid_file.unwrap_or_else(|| DEFAULT_PID_FILE.into()),
            upgrade_sock: raw
                .upgrade_sock
                .unwrap_or_else(|| DEFAULT_UPGRADE_SOCK.into()),
            user: raw.user,
            group: raw.group,
            max_concurrent_streams,
            tcp_keepalive,
            tcp_user_timeout: raw
                .tcp_user_timeout
                .map_or(DEFAULT_TCP_USER_TIMEOUT, |d| d.into_inner().0),
            read_buffer: match raw.read_buffer {
                Some(size) if size.get_ref().0 < MIN_READ_BUFFER => {
                    return Err(self.at(
                        &size,
                        "server.read_buffer",
                        format!("must be at least {MIN_READ_BUFFER} bytes, e.g. \"4KiB\""),
                    ))
                }
                Some(size) => size.into_inner().0,
                None => DEFAULT_READ_BUFFER,
            },
        })
    }

    /// A duration that must not be zero.
    fn positive(
        &self,
        value: Option<Spanned<raw::DurationValue>>,
        key: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        match value {
            Some(d) if d.get_ref().0.is_zero() => {
                Err(self.at(&d, key, "must be longer than zero, e.g. \"15s\"".into()))
            }
            Some(d) => Ok(Some(d.into_inner().0)),
            None => Ok(None),
        }
    }

    fn listeners(&self, raw: Vec<raw::Listen>) -> Result<Vec<Listener>, ConfigError> {
        if raw.is_empty() {
            return Err(self.nowhere(
                Some("listen"),
                "no [[listen]] entry; add one, e.g. [[listen]] addr = \"0.0.0.0:443\" with tls = { cert = \"...\", key = \"...\" }".into(),
            ));
        }
        let mut listeners: Vec<Listener> = Vec::with_capacity(raw.len());
        for (index, listen) in raw.into_iter().enumerate() {
            let key = format!("listen[{index}]");
            let addr: SocketAddr = listen.addr.get_ref().parse().map_err(|_| {
                self.at(
                    &listen.addr,
                    format!("{key}.addr"),
                    format!(
                        "{:?} is not an IP address and port; write e.g. \"0.0.0.0:443\" or \"[::]:443\"",
                        listen.addr.get_ref()
                    ),
                )
            })?;
            if listeners.iter().any(|l| l.addr == addr) {
                return Err(self.at(
                    &listen.addr,
                    format!("{key}.addr"),
                    format!("{addr} is listed twice; each [[listen]] needs its own address"),
                ));
            }
            let tls = match listen.tls {
                None => None,
                Some(tls) => {
                    let cert_path = self.resolve(tls.cert.get_ref());
                    let key_path = self.resolve(tls.key.get_ref());
                    Some(
                        Certificate::load(&cert_path, &key_path).map_err(|e| match e.file {
                            TlsFile::Cert => {
                                self.at(&tls.cert, format!("{key}.tls.cert"), e.message)
                            }
                            TlsFile::Key => self.at(&tls.key, format!("{key}.tls.key"), e.message),
                        })?,
                    )
                }
            };
            listeners.push(Listener { addr, tls });
        }
        Ok(listeners)
    }

    fn app(&self, raw: raw::App) -> Result<AppSettings, ConfigError> {
        let origin = UpstreamAddr::parse(raw.upstream.get_ref())
            .map_err(|e| self.at(&raw.upstream, "app.upstream", e.0))?;
        Ok(AppSettings {
            origin,
            connect: ConnectSettings {
                connect_timeout: self
                    .positive(raw.connect_timeout, "app.connect_timeout")?
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                tls_verify: raw.tls_verify.unwrap_or(true),
            },
        })
    }

    fn admin(&self, raw: raw::Admin) -> Result<AdminSettings, ConfigError> {
        let addr = match raw.addr {
            None => DEFAULT_ADMIN_ADDR
                .parse()
                .expect("the default admin address parses"),
            Some(addr) => addr.get_ref().parse().map_err(|_| {
                self.at(
                    &addr,
                    "admin.addr",
                    format!(
                        "{:?} is not an IP address and port; write e.g. \"127.0.0.1:9090\"",
                        addr.get_ref()
                    ),
                )
            })?,
        };
        Ok(AdminSettings { addr })
    }

    fn sse_defaults(&self, raw: raw::Sse) -> Result<TopicSettings, ConfigError> {
        let defaults = TopicSettings {
            heartbeat: DEFAULT_HEARTBEAT,
            retry: DEFAULT_RETRY,
            replay: DEFAULT_REPLAY,
            replay_bytes: DEFAULT_REPLAY_BYTES,
            max_lag: DEFAULT_REPLAY / 2,
            max_lag_bytes: DEFAULT_REPLAY_BYTES / 2,
            resume_lost: ResumeLost::Replay,
            linger: DEFAULT_LINGER,
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            upstream_idle_timeout: Some(DEFAULT_UPSTREAM_IDLE_TIMEOUT),
            catch_up_max: DEFAULT_CATCH_UP_MAX,
            catch_up_timeout: DEFAULT_CATCH_UP_TIMEOUT,
        };
        self.topic_settings(raw, "sse", defaults)
    }

    /// Applies one table's keys over `defaults`. Unset lag bounds follow the
    /// window: half of what this table's replay window holds.
    fn topic_settings(
        &self,
        raw: raw::Sse,
        table: &str,
        defaults: TopicSettings,
    ) -> Result<TopicSettings, ConfigError> {
        let key = |name: &str| format!("{table}.{name}");
        let replay_given = raw.replay.is_some();
        let replay_bytes_given = raw.replay_bytes.is_some();
        let replay =
            match raw.replay {
                Some(r) if *r.get_ref() == 0 => return Err(self.at(
                    &r,
                    key("replay"),
                    "must be at least 1: the replay window also carries live events to subscribers"
                        .into(),
                )),
                Some(r) => r.into_inner(),
                None => defaults.replay,
            };
        let replay_bytes = self
            .size(raw.replay_bytes, &key("replay_bytes"))?
            .unwrap_or(defaults.replay_bytes);
        let max_event_size = self
            .size(raw.max_event_size, &key("max_event_size"))?
            .unwrap_or(defaults.max_event_size);
        let max_lag = match raw.max_lag {
            Some(m) if *m.get_ref() == 0 || *m.get_ref() > replay => {
                return Err(self.at(&m, key("max_lag"), format!("must be between 1 and replay ({replay}): a subscriber can only catch up from events the window still holds")))
            }
            Some(m) => m.into_inner(),
            None if replay_given => (replay / 2).max(1),
            None => defaults.max_lag.min(replay),
        };
        let max_lag_bytes = match raw.max_lag_bytes {
            Some(m) if m.get_ref().0 > replay_bytes => {
                return Err(self.at(
                    &m,
                    key("max_lag_bytes"),
                    format!("must not exceed replay_bytes ({replay_bytes} bytes)"),
                ))
            }
            Some(m) => m.into_inner().0,
            None if replay_bytes_given => replay_bytes / 2,
            None => defaults.max_lag_bytes.min(replay_bytes),
        };
        if max_lag_bytes < max_event_size {
            return Err(self.nowhere(
                Some(&key("max_lag_bytes")),
                format!(
                    "max_lag_bytes ({max_lag_bytes} bytes) is smaller than max_event_size ({max_event_size} bytes), so one large event would disconnect every subscriber; raise max_lag_bytes (or replay_bytes) or lower max_event_size"
                ),
            ));
        }
        let resume_lost = match raw.resume_lost {
            None => defaults.resume_lost,
            Some(r) => match r.get_ref().as_str() {
                "replay" => ResumeLost::Replay,
                "live" => ResumeLost::Live,
                other => {
                    return Err(self.at(&r, key("resume_lost"), format!("{other:?} is not a policy; use \"replay\" (send the whole window) or \"live\" (live events only)")))
                }
            },
        };
        Ok(TopicSettings {
            heartbeat: self
                .positive(raw.heartbeat, &key("heartbeat"))?
                .unwrap_or(defaults.heartbeat),
            retry: raw.retry.map_or(defaults.retry, |d| d.into_inner().0),
            replay,
            replay_bytes,
            max_lag,
            max_lag_bytes,
            resume_lost,
            linger: raw.linger.map_or(defaults.linger, |d| d.into_inner().0),
            max_event_size,
            backoff_max: self
                .positive(raw.upstream_backoff_max, &key("upstream_backoff_max"))?
                .unwrap_or(defaults.backoff_max),
            upstream_idle_timeout: match raw.upstream_idle_timeout {
                // "0s" turns it off (for apps that stay silent for hours).
                Some(timeout) if timeout.get_ref().0.is_zero() => None,
                Some(timeout) => Some(timeout.into_inner().0),
                None => defaults.upstream_idle_timeout,
            },
            catch_up_max: match raw.catch_up_max {
                Some(n) if *n.get_ref() == 0 => {
                    return Err(self.at(
                        &n,
                        key("catch_up_max"),
                        "must be at least 1; resumes the window cannot serve would all be lost"
                            .into(),
                    ))
                }
                Some(n) => n.into_inner(),
                None => defaults.catch_up_max,
            },
            catch_up_timeout: self
                .positive(raw.catch_up_timeout, &key("catch_up_timeout"))?
                .unwrap_or(defaults.catch_up_timeout),
        })
    }

    /// A size that must not be zero.
    fn size(
        &self,
        value: Option<Spanned<raw::SizeValue>>,
        key: &str,
    ) -> Result<Option<usize>, ConfigError> {
        match value {
            Some(s) if s.get_ref().0 == 0 => {
                Err(self.at(&s, key, "must be larger than zero, e.g. \"1MiB\"".into()))
            }
            Some(s) => Ok(Some(s.into_inner().0)),
            None => Ok(None),
        }
    }

    fn topics(
        &self,
        raw: Vec<raw::Topic>,
        app: &AppSettings,
        defaults: TopicSettings,
        access_defaults: &TopicAccess,
    ) -> Result<Vec<TopicConfig>, ConfigError> {
        let mut topics: Vec<TopicConfig> = Vec::with_capacity(raw.len());
        let mut shapes: HashMap<String, usize> = HashMap::new();
        for (index, mut topic) in raw.into_iter().enumerate() {
            let key = format!("topic[{index}]");
            let path = PathTemplate::parse(topic.path.get_ref())
                .map_err(|e| self.at(&topic.path, format!("{key}.path"), e.0))?;
            if let Some(first) = shapes.insert(path.shape(), index) {
                let earlier = topics[first].path.as_str();
                let message = if earlier == path.as_str() {
                    format!("duplicate topic path {earlier:?} (already topic[{first}]); each topic path must be unique")
                } else {
                    format!(
                        "{:?} matches the same requests as topic[{first}] {earlier:?}; give one of them a different path",
                        path.as_str()
                    )
                };
                return Err(self.at(&topic.path, format!("{key}.path"), message));
            }
            let upstream = self.topic_upstream(&topic.upstream, &key, &path, app)?;
            let eager = match topic.eager.take() {
                Some(e) if *e.get_ref() && path.is_template() => {
                    return Err(self.at(&e, format!("{key}.eager"), format!(
                        "a template topic ({:?}) has no instance to keep open before someone subscribes; remove eager or use a literal path",
                        path.as_str()
                    )))
                }
                Some(e) => e.into_inner(),
                None => false,
            };
            let access = self.access(topic.access(), &key, app, access_defaults.clone())?;
            let settings = self.topic_settings(topic.settings(), &key, defaults)?;
            topics.push(TopicConfig {
                path,
                upstream,
                settings,
                eager,
                access,
                expose_upstream: topic.expose_upstream.unwrap_or(false),
            });
        }
        Ok(topics)
    }

    /// Applies one table's access keys (`auth`, `auth_cache`,
    /// `cors_origins`, `upstream_headers`) over `defaults`.
    fn access(
        &self,
        raw: raw::Access,
        table: &str,
        app: &AppSettings,
        defaults: TopicAccess,
    ) -> Result<TopicAccess, ConfigError> {
        let key = |name: &str| format!("{table}.{name}");
        let auth = match &raw.auth {
            None => defaults.auth,
            Some(text) if text.get_ref().is_empty() => None,
            Some(text) => Some(self.auth_target(text, &key("auth"), app)?),
        };
        let cors = match &raw.cors_origins {
            None => defaults.cors,
            Some(list) => self.cors(list, &key("cors_origins"))?,
        };
        if cors == CorsOrigins::Any && auth.is_some() {
            let message = "cors_origins = [\"*\"] cannot go with auth: a credentialed EventSource needs its exact origin; list the origins instead".to_string();
            return Err(match (&raw.cors_origins, &raw.auth) {
                (Some(list), _) => self.at(list, key("cors_origins"), message),
                (None, Some(auth)) => self.at(auth, key("auth"), message),
                (None, None) => self.nowhere(Some(&key("cors_origins")), message),
            });
        }
        let upstream_headers = match raw.upstream_headers {
            None => defaults.upstream_headers,
            Some(headers) => {
                let mut checked = Vec::new();
                for (name, value) in headers.get_ref() {
                    let valid = http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                        && http::HeaderValue::from_str(value).is_ok();
                    let reserved = [
                        "host",
                        "connection",
                        "accept",
                        "cache-control",
                        "last-event-id",
                        "transfer-encoding",
                        "content-length",
                    ]
                    .contains(&name.to_ascii_lowercase().as_str());
                    if !valid || reserved {
                        return Err(self.at(
                            &headers,
                            key("upstream_headers"),
                            format!("{name:?} is not a header sse-fanout can add (invalid, or one it sets itself)"),
                        ));
                    }
                    checked.push((name.clone(), value.clone()));
                }
                checked
            }
        };
        Ok(TopicAccess {
            auth,
            auth_cache: raw
                .auth_cache
                .map_or(defaults.auth_cache, |d| d.into_inner().0),
            cors,
            upstream_headers,
        })
    }

    fn auth_target(
        &self,
        raw: &Spanned<String>,
        key: &str,
        app: &AppSettings,
    ) -> Result<AuthTarget, ConfigError> {
        let text = raw.get_ref();
        if text.starts_with('/') {
            return Ok(AuthTarget {
                origin: app.origin.clone(),
                path: text.clone(),
            });
        }
        let (origin, path) = UpstreamAddr::parse_url(text).map_err(|e| {
            self.at(
                raw,
                key,
                format!("{e}; give a path on [app] such as \"/auth/sse\" or a full URL"),
            )
        })?;
        Ok(AuthTarget {
            origin,
            path: if path.is_empty() {
                "/".into()
            } else {
                path.to_string()
            },
        })
    }

    fn cors(&self, raw: &Spanned<Vec<String>>, key: &str) -> Result<CorsOrigins, ConfigError> {
        let list = raw.get_ref();
        if list.iter().any(|o| o == "*") {
            return if list.len() == 1 {
                Ok(CorsOrigins::Any)
            } else {
                Err(self.at(
                    raw,
                    key,
                    "\"*\" stands alone: list exact origins, or only \"*\"".into(),
                ))
            };
        }
        for origin in list {
            if crate::cors::normalize_origin(origin).is_none() {
                return Err(self.at(
                    raw,
                    key,
                    format!("{origin:?} is not an origin; write scheme and host (and port), like \"https://app.example\""),
                ));
            }
        }
        Ok(if list.is_empty() {
            CorsOrigins::None
        } else {
            CorsOrigins::List(list.clone())
        })
    }

    fn limits(&self, raw: raw::Limits) -> Result<LimitSettings, ConfigError> {
        let count = |value: Option<Spanned<usize>>, name: &str, default: usize| match value {
            Some(v) if *v.get_ref() == 0 => {
                Err(self.at(&v, format!("limits.{name}"), "must be at least 1".into()))
            }
            Some(v) => Ok(v.into_inner()),
            None => Ok(default),
        };
        let over_limit = match raw.over_limit {
            None => OverLimit::Retry,
            Some(answer) => match answer.get_ref().as_str() {
                "retry" => OverLimit::Retry,
                "429" => OverLimit::TooManyRequests,
                "503" => OverLimit::Unavailable,
                other => {
                    return Err(self.at(
                        &answer,
                        "limits.over_limit",
                        format!("{other:?} is not an answer; use \"retry\" (200, retry: and a clean end), \"429\" or \"503\""),
                    ))
                }
            },
        };
        // Per-address caps are opt-in: absent means off.
        let optional = |value: Option<Spanned<usize>>, name: &str| match value {
            Some(v) if *v.get_ref() == 0 => Err(self.at(
                &v,
                format!("limits.{name}"),
                "must be at least 1; leave it out for no cap".into(),
            )),
            Some(v) => Ok(Some(v.into_inner())),
            None => Ok(None),
        };
        let rate = optional(
            raw.subscribe_rate_per_ip
                .map(|r| Spanned::new(r.span(), *r.get_ref() as usize)),
            "subscribe_rate_per_ip",
        )?;
        Ok(LimitSettings {
            max_subscribers: count(
                raw.max_subscribers,
                "max_subscribers",
                DEFAULT_MAX_SUBSCRIBERS,
            )?,
            max_subscribers_per_ip: optional(raw.max_subscribers_per_ip, "max_subscribers_per_ip")?,
            max_subscribers_per_topic: count(
                raw.max_subscribers_per_topic,
                "max_subscribers_per_topic",
                DEFAULT_MAX_SUBSCRIBERS_PER_TOPIC,
            )?,
            max_topic_instances: count(
                raw.max_topic_instances,
                "max_topic_instances",
                DEFAULT_MAX_TOPIC_INSTANCES,
            )?,
            subscribe_rate_per_ip: rate.map(|r| u32::try_from(r).unwrap_or(u32::MAX)),
            over_limit,
            max_last_event_id: count(
                raw.max_last_event_id,
                "max_last_event_id",
                DEFAULT_MAX_LAST_EVENT_ID,
            )?,
            max_param_len: count(raw.max_param_len, "max_param_len", DEFAULT_MAX_PARAM_LEN)?,
            header_timeout: self
                .positive(raw.header_timeout, "limits.header_timeout")?
                .unwrap_or(DEFAULT_HEADER_TIMEOUT),
            max_header_bytes: match raw.max_header_bytes {
                Some(size) if size.get_ref().0 < 1024 => {
                    return Err(self.at(
                        &size,
                        "limits.max_header_bytes",
                        "must be at least 1KiB".into(),
                    ))
                }
                Some(size) => size.into_inner().0,
                None => DEFAULT_MAX_HEADER_BYTES,
            },
            auth_cache_size: count(
                raw.auth_cache_size,
                "auth_cache_size",
                DEFAULT_AUTH_CACHE_SIZE,
            )?,
            replay_memory: match raw.replay_memory {
                Some(size) if size.get_ref().0 < 1024 * 1024 => {
                    return Err(self.at(
                        &size,
                        "limits.replay_memory",
                        "must be at least 1MiB, e.g. \"256MiB\"".into(),
                    ))
                }
                Some(size) => size.into_inner().0,
                None => DEFAULT_REPLAY_MEMORY,
            },
        })
    }

    /// Takes the connection keys out of `[limits]`.
    fn connection_limits(&self, raw: &mut raw::Limits) -> Result<ConnectionLimits, ConfigError> {
        let max_connections_per_ip = match raw.max_connections_per_ip.take() {
            Some(v) if *v.get_ref() == 0 => {
                return Err(self.at(
                    &v,
                    "limits.max_connections_per_ip",
                    "must be at least 1 (leave it out for no cap)".into(),
                ))
            }
            v => v.map(Spanned::into_inner),
        };
        Ok(ConnectionLimits {
            idle_timeout: self
                .positive(raw.idle_timeout.take(), "limits.idle_timeout")?
                .unwrap_or(DEFAULT_IDLE_TIMEOUT),
            tls_handshake_timeout: self
                .positive(
                    raw.tls_handshake_timeout.take(),
                    "limits.tls_handshake_timeout",
                )?
                .unwrap_or(DEFAULT_TLS_HANDSHAKE_TIMEOUT),
            max_connections_per_ip,
        })
    }

    fn topic_upstream(
        &self,
        raw: &Spanned<String>,
        key: &str,
        path: &PathTemplate,
        app: &AppSettings,
    ) -> Result<TopicUpstream, ConfigError> {
        let key = format!("{key}.upstream");
        let text = raw.get_ref();
        let (origin, upstream_path) = if text.starts_with('/') {
            (app.origin.clone(), text.as_str())
        } else {
            let (origin, upstream_path) = UpstreamAddr::parse_url(text).map_err(|e| {
                self.at(
                    raw,
                    &key,
                    format!("{e}; give a path on [app] such as \"/stream/news\" or a full URL"),
                )
            })?;
            if upstream_path.is_empty() {
                return Err(self.at(
                    raw,
                    &key,
                    format!("{text:?} has no path; add the stream's path, e.g. \"{text}/stream\""),
                ));
            }
            (origin, upstream_path)
        };
        let template =
            UpstreamTemplate::parse(upstream_path).map_err(|e| self.at(raw, &key, e.0))?;
        if let Some(missing) = template.params().find(|p| !path.params().any(|q| q == *p)) {
            return Err(self.at(
                raw,
                &key,
                format!(
                    "placeholder {{{missing}}} is not defined by the topic path {:?}; use only placeholders the path has",
                    path.as_str()
                ),
            ));
        }
        if let Some(unused) = path.params().find(|p| !template.params().any(|q| q == *p)) {
            return Err(self.at(
                raw,
                &key,
                format!(
                    "does not use placeholder {{{unused}}} of the topic path {:?}, so every topic instance would open the same stream; put {{{unused}}} in the upstream path",
                    path.as_str()
                ),
            ));
        }
        Ok(TopicUpstream {
            origin,
            path: template,
        })
    }
}

/// The file as written: serde structs that refuse unknown keys and keep spans.
mod raw {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Config {
        #[serde(default)]
        pub server: Server,
        #[serde(default)]
        pub listen: Vec<Listen>,
        pub app: Option<App>,
        #[serde(default)]
        pub sse: Sse,
        #[serde(default)]
        pub topic: Vec<Topic>,
        pub admin: Option<Admin>,
        pub limits: Option<Limits>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Limits {
        pub max_subscribers: Option<Spanned<usize>>,
        pub max_subscribers_per_ip: Option<Spanned<usize>>,
        pub max_subscribers_per_topic: Option<Spanned<usize>>,
        pub max_topic_instances: Option<Spanned<usize>>,
        pub subscribe_rate_per_ip: Option<Spanned<u32>>,
        pub over_limit: Option<Spanned<String>>,
        pub max_last_event_id: Option<Spanned<usize>>,
        pub max_param_len: Option<Spanned<usize>>,
        pub header_timeout: Option<Spanned<DurationValue>>,
        pub max_header_bytes: Option<Spanned<SizeValue>>,
        pub auth_cache_size: Option<Spanned<usize>>,
        pub replay_memory: Option<Spanned<SizeValue>>,
        pub idle_timeout: Option<Spanned<DurationValue>>,
        pub tls_handshake_timeout: Option<Spanned<DurationValue>>,
        pub max_connections_per_ip: Option<Spanned<usize>>,
    }

    /// The access keys of `[sse]` and `[[topic]]`.
    #[derive(Default)]
    pub struct Access {
        pub auth: Option<Spanned<String>>,
        pub auth_cache: Option<Spanned<DurationValue>>,
        pub cors_origins: Option<Spanned<Vec<String>>>,
        pub upstream_headers: Option<Spanned<BTreeMap<String, String>>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Admin {
        pub addr: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Server {
        pub threads: Option<Spanned<usize>>,
        pub grace_period: Option<Spanned<DurationValue>>,
        pub shutdown_timeout: Option<Spanned<DurationValue>>,
        pub daemon: Option<bool>,
        pub pid_file: Option<String>,
        pub upgrade_sock: Option<String>,
        pub user: Option<String>,
        pub group: Option<String>,
        pub max_concurrent_streams: Option<Spanned<u32>>,
        pub tcp_keepalive: Option<Keepalive>,
        pub tcp_user_timeout: Option<Spanned<DurationValue>>,
        pub read_buffer: Option<Spanned<SizeValue>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Keepalive {
        pub idle: Option<Spanned<DurationValue>>,
        pub interval: Option<Spanned<DurationValue>>,
        pub count: Option<Spanned<usize>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Listen {
        pub addr: Spanned<String>,
        pub tls: Option<Tls>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Tls {
        pub cert: Spanned<String>,
        pub key: Spanned<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct App {
        pub upstream: Spanned<String>,
        pub connect_timeout: Option<Spanned<DurationValue>>,
        pub tls_verify: Option<bool>,
    }

    /// `[sse]`: the defaults of every topic. (Not `#[serde(flatten)]`ed into
    /// `Topic`: flattening would lose the spans and the unknown-key check.)
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Sse {
        pub heartbeat: Option<Spanned<DurationValue>>,
        pub retry: Option<Spanned<DurationValue>>,
        pub replay: Option<Spanned<usize>>,
        pub replay_bytes: Option<Spanned<SizeValue>>,
        pub max_lag: Option<Spanned<usize>>,
        pub max_lag_bytes: Option<Spanned<SizeValue>>,
        pub resume_lost: Option<Spanned<String>>,
        pub linger: Option<Spanned<DurationValue>>,
        pub max_event_size: Option<Spanned<SizeValue>>,
        pub upstream_backoff_max: Option<Spanned<DurationValue>>,
        pub upstream_idle_timeout: Option<Spanned<DurationValue>>,
        pub catch_up_max: Option<Spanned<usize>>,
        pub catch_up_timeout: Option<Spanned<DurationValue>>,
        pub auth: Option<Spanned<String>>,
        pub auth_cache: Option<Spanned<DurationValue>>,
        pub cors_origins: Option<Spanned<Vec<String>>>,
        pub upstream_headers: Option<Spanned<BTreeMap<String, String>>>,
    }

    impl Sse {
        /// The access keys, taken out.
        pub fn access(&mut self) -> Access {
            Access {
                auth: self.auth.take(),
                auth_cache: self.auth_cache.take(),
                cors_origins: self.cors_origins.take(),
                upstream_headers: self.upstream_headers.take(),
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Topic {
        pub path: Spanned<String>,
        pub upstream: Spanned<String>,
        pub eager: Option<Spanned<bool>>,
        pub expose_upstream: Option<bool>,
        pub heartbeat: Option<Spanned<DurationValue>>,
        pub retry: Option<Spanned<DurationValue>>,
        pub replay: Option<Spanned<usize>>,
        pub replay_bytes: Option<Spanned<SizeValue>>,
        pub max_lag: Option<Spanned<usize>>,
        pub max_lag_bytes: Option<Spanned<SizeValue>>,
        pub resume_lost: Option<Spanned<String>>,
        pub linger: Option<Spanned<DurationValue>>,
        pub max_event_size: Option<Spanned<SizeValue>>,
        pub upstream_backoff_max: Option<Spanned<DurationValue>>,
        pub upstream_idle_timeout: Option<Spanned<DurationValue>>,
        pub catch_up_max: Option<Spanned<usize>>,
        pub catch_up_timeout: Option<Spanned<DurationValue>>,
        pub auth: Option<Spanned<String>>,
        pub auth_cache: Option<Spanned<DurationValue>>,
        pub cors_origins: Option<Spanned<Vec<String>>>,
        pub upstream_headers: Option<Spanned<BTreeMap<String, String>>>,
    }

    impl Topic {
        /// The access keys this topic overrides.
        pub fn access(&mut self) -> Access {
            Access {
                auth: self.auth.take(),
                auth_cache: self.auth_cache.take(),
                cors_origins: self.cors_origins.take(),
                upstream_headers: self.upstream_headers.take(),
            }
        }

        /// The `[sse]` keys this topic overrides.
        pub fn settings(&mut self) -> Sse {
            Sse {
                heartbeat: self.heartbeat.take(),
                retry: self.retry.take(),
                replay: self.replay.take(),
                replay_bytes: self.replay_bytes.take(),
                max_lag: self.max_lag.take(),
                max_lag_bytes: self.max_lag_bytes.take(),
                resume_lost: self.resume_lost.take(),
                linger: self.linger.take(),
                max_event_size: self.max_event_size.take(),
                upstream_backoff_max: self.upstream_backoff_max.take(),
                upstream_idle_timeout: self.upstream_idle_timeout.take(),
                catch_up_max: self.catch_up_max.take(),
                catch_up_timeout: self.catch_up_timeout.take(),
                auth: None,
                auth_cache: None,
                cors_origins: None,
                upstream_headers: None,
            }
        }
    }

    /// A size in bytes: a whole number, or a string with a unit such as
    /// `"512KiB"`, `"4MiB"`, `"1MB"`.
    pub struct SizeValue(pub usize);

    /// Units a size may carry, longest first so `"KiB"` is not read as `"B"`.
    const SIZE_UNITS: [(&str, usize); 7] = [
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("B", 1),
    ];

    impl<'de> Deserialize<'de> for SizeValue {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct SizeVisitor;
            impl Visitor<'_> for SizeVisitor {
                type Value = SizeValue;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str(
                        "a size: a number of bytes, or a string such as \"512KiB\" or \"4MiB\"",
                    )
                }
                fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<SizeValue, E> {
                    usize::try_from(bytes).map(SizeValue).map_err(|_| {
                        E::custom(format!("invalid size {bytes}: must not be negative"))
                    })
                }
                fn visit_str<E: de::Error>(self, text: &str) -> Result<SizeValue, E> {
                    let trimmed = text.trim();
                    let (number, multiplier) = SIZE_UNITS
                        .iter()
                        .find_map(|(unit, multiplier)| {
                            trimmed.strip_suffix(unit).map(|n| (n.trim(), *multiplier))
                        })
                        .unwrap_or((trimmed, 1));
                    number
                        .parse::<usize>()
                        .ok()
                        .and_then(|n| n.checked_mul(multiplier))
                        .map(SizeValue)
                        .ok_or_else(|| {
                            E::custom(format!(
                                "invalid size {text:?}; write a whole number with a unit, such as \"512KiB\" or \"4MiB\""
                            ))
                        })
                }
            }
            deserializer.deserialize_any(SizeVisitor)
        }
    }

    /// A duration written as a string with a unit: `"15s"`, `"500ms"`, `"2m"`.
    pub struct DurationValue(pub Duration);

    impl<'de> Deserialize<'de> for DurationValue {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct DurationVisitor;
            impl Visitor<'_> for DurationVisitor {
                type Value = DurationValue;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a duration string with a unit, such as \"15s\" or \"500ms\"")
                }
                fn visit_str<E: de::Error>(self, text: &str) -> Result<DurationValue, E> {
                    let duration = humantime::parse_duration(text).map_err(|e| {
                        E::custom(format!(
                            "invalid duration {text:?} ({e}); write a number with a unit, such as \"15s\" or \"500ms\""
                        ))
                    })?;
                    if duration > super::MAX_DURATION {
                        return Err(E::custom(format!(
                            "duration {text:?} is longer than the longest allowed, {}",
                            humantime::format_duration(super::MAX_DURATION)
                        )));
                    }
                    Ok(DurationValue(duration))
                }
            }
            deserializer.deserialize_str(DurationVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[listen]]
addr = "127.0.0.1:8080"

[app]
upstream = "127.0.0.1:3000"
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_text(Path::new("test.toml"), text)
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = load(MINIMAL).unwrap();
        assert_eq!(config.server.grace_period, DEFAULT_GRACE_PERIOD);
        assert_eq!(
            config.server.max_concurrent_streams,
            DEFAULT_MAX_CONCURRENT_STREAMS
        );
        assert!(config.server.threads >= 1);
        assert_eq!(config.app.origin.port, 3000);
        assert!(config.topics.is_empty());
    }

    #[test]
    fn a_silent_upstream_is_reopened_by_default_and_0s_turns_that_off() {
        let topic = "\n[[topic]]\npath = \"/e\"\nupstream = \"/s\"\n";
        let config = load(&format!("{MINIMAL}{topic}")).unwrap();
        assert_eq!(
            config.topics[0].settings.upstream_idle_timeout,
            Some(DEFAULT_UPSTREAM_IDLE_TIMEOUT)
        );
        let off = load(&format!(
            "{MINIMAL}\n[sse]\nupstream_idle_timeout = \"0s\"\n{topic}"
        ))
        .unwrap();
        assert_eq!(off.topics[0].settings.upstream_idle_timeout, None);
    }

    #[test]
    fn durations_past_a_day_are_refused_before_they_can_overflow_a_deadline() {
        let error = load(&format!("{MINIMAL}\n[sse]\nlinger = \"400000000h\"\n")).unwrap_err();
        assert_eq!(error.key.as_deref(), Some("sse.linger"));
        assert!(
            error
                .message
                .contains("longer than the longest allowed, 1day"),
            "{error}"
        );
        assert!(load(&format!("{MINIMAL}\n[sse]\nlinger = \"24h\"\n")).is_ok());
    }

    #[test]
    fn defaults_never_cap_one_address_or_a_templates_users_below_the_process_cap() {
        let limits = load(MINIMAL).unwrap().limits;
        assert_eq!(limits.max_topic_instances, limits.max_subscribers);
        assert_eq!(limits.max_subscribers_per_ip, None);
        assert_eq!(limits.subscribe_rate_per_ip, None);
    }

    #[test]
    fn topic_overrides_sse_defaults() {
        let text = format!(
            "{MINIMAL}\n[sse]\nheartbeat = \"20s\"\nreplay = 10\n\n[[topic]]\npath = \"/e/{{id}}\"\nupstream = \"/s/{{id}}\"\nheartbeat = \"5s\"\n"
        );
        let config = load(&text).unwrap();
        let settings = config.topics[0].settings;
        assert_eq!(settings.heartbeat, Duration::from_secs(5));
        assert_eq!(settings.replay, 10);
        assert_eq!(settings.retry, DEFAULT_RETRY);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = format!("{MINIMAL}\n[sse]\nheartbeet = \"5s\"\n");
        let e = load(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sse.heartbeet"));
        assert_eq!(e.position.map(|p| p.0), Some(9));
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text =
            format!("{MINIMAL}\n[[topic]]\npath = \"/a\"\nupstream = \"/b\"\nreplay = \"many\"\n");
        let e = load(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("topic[0].replay"), "{e}");
    }

    #[test]
    fn integer_duration_asks_for_a_unit() {
        let text = format!("{MINIMAL}\n[sse]\nheartbeat = 15\n");
        let e = load(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sse.heartbeat"));
        assert!(e.message.contains("\"15s\""), "{e}");
    }

    #[test]
    fn key_inside_inline_table_is_named() {
        let text = "[[listen]]\naddr = \"127.0.0.1:1\"\ntls = { cert = \"a\", key = 5 }\n[app]\nupstream = \"127.0.0.1:2\"\n";
        let e = load(text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("listen[0].tls.key"), "{e}");
    }

    #[test]
    fn same_shape_templates_are_refused() {
        let text = format!(
            "{MINIMAL}\n[[topic]]\npath = \"/j/{{a}}\"\nupstream = \"/s/{{a}}\"\n[[topic]]\npath = \"/j/{{b}}\"\nupstream = \"/s/{{b}}\"\n"
        );
        let e = load(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("topic[1].path"));
    }

    #[test]
    fn full_url_upstream_keeps_its_own_origin() {
        let text = format!(
            "{MINIMAL}\n[[topic]]\npath = \"/a\"\nupstream = \"https://feeds.internal/s\"\n"
        );
        let config = load(&text).unwrap();
        assert!(config.topics[0].upstream.origin.tls);
        assert_eq!(config.topics[0].upstream.path.as_str(), "/s");
    }

    #[test]
    fn missing_app_table_is_explained() {
        let e = load("[[listen]]\naddr = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("app"));
    }

    #[test]
    fn sizes_take_units_or_plain_bytes() {
        let text = format!("{MINIMAL}\n[sse]\nreplay_bytes = \"2MiB\"\nmax_event_size = 1000\n");
        let config = load(&format!(
            "{text}[[topic]]\npath = \"/a\"\nupstream = \"/b\"\n"
        ))
        .unwrap();
        let topic = config.topics[0].settings;
        assert_eq!(topic.replay_bytes, 2 * 1024 * 1024);
        assert_eq!(topic.max_event_size, 1000);
        assert_eq!(
            topic.max_lag_bytes,
            1024 * 1024,
            "unset lag bound follows the window"
        );
    }

    #[test]
    fn bad_size_is_refused_with_an_example() {
        let e = load(&format!("{MINIMAL}\n[sse]\nreplay_bytes = \"lots\"\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sse.replay_bytes"));
        assert!(e.message.contains("\"4MiB\""), "{e}");
    }

    #[test]
    fn max_lag_beyond_the_window_is_refused() {
        let e = load(&format!("{MINIMAL}\n[sse]\nreplay = 10\nmax_lag = 11\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sse.max_lag"));
    }

    #[test]
    fn lag_bytes_below_the_event_size_is_refused() {
        let e = load(&format!(
            "{MINIMAL}\n[sse]\nmax_lag_bytes = \"1KiB\"\nmax_event_size = \"2KiB\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sse.max_lag_bytes"));
    }

    #[test]
    fn unknown_resume_policy_is_refused() {
        let e = load(&format!("{MINIMAL}\n[sse]\nresume_lost = \"guess\"\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sse.resume_lost"));
    }

    #[test]
    fn eager_template_topic_is_refused() {
        let text = format!(
            "{MINIMAL}\n[[topic]]\npath = \"/j/{{id}}\"\nupstream = \"/s/{{id}}\"\neager = true\n"
        );
        let e = load(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("topic[0].eager"));
    }

    #[test]
    fn connection_limits_default_to_documented_values_and_no_address_cap() {
        let config = load(MINIMAL).unwrap();
        assert_eq!(config.connections.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(
            config.connections.tls_handshake_timeout,
            DEFAULT_TLS_HANDSHAKE_TIMEOUT
        );
        assert_eq!(config.connections.max_connections_per_ip, None);
        let capped = load(&format!(
            "{MINIMAL}\n[limits]\nmax_connections_per_ip = 3\nidle_timeout = \"5s\"\n"
        ))
        .unwrap();
        assert_eq!(capped.connections.max_connections_per_ip, Some(3));
        assert_eq!(capped.connections.idle_timeout, Duration::from_secs(5));
        let zero = load(&format!(
            "{MINIMAL}\n[limits]\nmax_connections_per_ip = 0\n"
        ))
        .unwrap_err();
        assert_eq!(zero.key.as_deref(), Some("limits.max_connections_per_ip"));
    }

    #[test]
    fn admin_table_defaults_to_loopback() {
        let config = load(&format!("{MINIMAL}\n[admin]\n")).unwrap();
        assert_eq!(config.admin.unwrap().addr.to_string(), DEFAULT_ADMIN_ADDR);
        assert!(load(MINIMAL).unwrap().admin.is_none());
    }

    #[test]
    fn error_line_reads_file_line_column_key_message() {
        let e = ConfigError {
            file: "c.toml".into(),
            position: Some((3, 7)),
            key: Some("sse.retry".into()),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "c.toml:3:7: sse.retry: bad");
    }

    #[test]
    fn per_address_caps_are_off_unless_configured() {
        let limits = load(MINIMAL).unwrap().limits;
        assert_eq!(limits.max_subscribers_per_ip, None);
        assert_eq!(limits.subscribe_rate_per_ip, None);
        let text = format!(
            "[limits]\nmax_subscribers_per_ip = 1000\nsubscribe_rate_per_ip = 100\n{MINIMAL}"
        );
        let limits = load(&text).unwrap().limits;
        assert_eq!(limits.max_subscribers_per_ip, Some(1000));
        assert_eq!(limits.subscribe_rate_per_ip, Some(100));
        let e = load(&format!("[limits]\nsubscribe_rate_per_ip = 0\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.subscribe_rate_per_ip"));
    }

    #[test]
    fn auth_decisions_are_cached_briefly_unless_configured() {
        let text = format!(
            "{MINIMAL}\n[[topic]]\npath = \"/a\"\nupstream = \"/b\"\nauth = \"/auth\"\n\n[[topic]]\npath = \"/c\"\nupstream = \"/d\"\nauth = \"/auth\"\nauth_cache = \"0s\"\n"
        );
        let config = load(&text).unwrap();
        assert_eq!(config.topics[0].access.auth_cache, DEFAULT_AUTH_CACHE);
        assert_eq!(config.topics[1].access.auth_cache, Duration::ZERO);
    }
}
