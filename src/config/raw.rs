//! The file as written: serde structs that mirror the TOML exactly.
//!
//! This is the first of the two loading stages. [`toml::from_str`] fills
//! these structs; they refuse unknown keys (`deny_unknown_fields`), check
//! only what a type can (a size is a number of bytes, a duration has a
//! unit), and keep the byte span of every value that a later rule may
//! reject ([`Spanned`]), so [`super::validate`] can point at the line.
//! Nothing here has a default: an absent key stays `None` until validation
//! fills it in from [`super::model`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::model::MAX_DURATION;

/// The whole file. Field names are the file's keys and tables; what each
/// key means is documented on its validated type in [`super::model`].
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

/// `[limits]`, as written (becomes [`super::LimitSettings`] and
/// [`super::ConnectionLimits`]).
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

/// The access keys of `[sse]` and `[[topic]]` (become a [`super::TopicAccess`]),
/// taken out of either table so one rule checks both.
#[derive(Default)]
pub struct Access {
    pub auth: Option<Spanned<String>>,
    pub auth_cache: Option<Spanned<DurationValue>>,
    pub cors_origins: Option<Spanned<Vec<String>>>,
    pub upstream_headers: Option<Spanned<BTreeMap<String, String>>>,
}

/// `[admin]`, as written (becomes [`super::AdminSettings`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub addr: Option<Spanned<String>>,
}

/// `[server]`, as written (becomes [`super::ServerSettings`]).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub threads: Option<Spanned<usize>>,
    pub grace_period: Option<Spanned<DurationValue>>,
    pub drain: Option<Spanned<DurationValue>>,
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
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
}

/// `[server] tcp_keepalive`, as written (becomes [`super::KeepaliveSettings`]).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    pub idle: Option<Spanned<DurationValue>>,
    pub interval: Option<Spanned<DurationValue>>,
    pub count: Option<Spanned<usize>>,
}

/// One `[[listen]]`, as written (becomes a [`super::Listener`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub addr: Spanned<String>,
    pub tls: Option<Tls>,
    pub proxy_protocol: Option<bool>,
    pub hsts: Option<Spanned<String>>,
}

/// A listener's `tls = { cert, key }` (paths, relative to the config
/// file) or `tls = { acme = [names], email, directory, cache, challenge, ca }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub acme: Option<Spanned<Vec<Spanned<String>>>>,
    pub email: Option<Spanned<String>>,
    pub directory: Option<Spanned<String>>,
    pub cache: Option<Spanned<String>>,
    pub challenge: Option<Spanned<String>>,
    pub ca: Option<Spanned<String>>,
}

/// `[app]`, as written (becomes [`super::AppSettings`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub upstream: Spanned<String>,
    pub connect_timeout: Option<Spanned<DurationValue>>,
    pub tls_verify: Option<bool>,
    pub ca: Option<Spanned<String>>,
}

/// `[sse]`: the defaults of every topic, as written (becomes the
/// [`super::TopicSettings`] and [`super::TopicAccess`] each topic starts
/// from). (Not `#[serde(flatten)]`ed into `Topic`: flattening would lose the
/// spans and the unknown-key check.)
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
    pub prime: Option<Spanned<String>>,
    pub heartbeat_padding: Option<Spanned<usize>>,
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

/// One `[[topic]]`, as written: its own keys, then every `[sse]` key it may
/// override (becomes a [`super::TopicConfig`]).
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
    pub prime: Option<Spanned<String>>,
    pub heartbeat_padding: Option<Spanned<usize>>,
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
            prime: self.prime.take(),
            heartbeat_padding: self.heartbeat_padding.take(),
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
                f.write_str("a size: a number of bytes, or a string such as \"512KiB\" or \"4MiB\"")
            }
            fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<SizeValue, E> {
                usize::try_from(bytes)
                    .map(SizeValue)
                    .map_err(|_| E::custom(format!("invalid size {bytes}: must not be negative")))
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
                if duration > MAX_DURATION {
                    return Err(E::custom(format!(
                        "duration {text:?} is longer than the longest allowed, {}",
                        humantime::format_duration(MAX_DURATION)
                    )));
                }
                Ok(DurationValue(duration))
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}
