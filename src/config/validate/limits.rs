//! `[limits]`: the caps on subscribers, topics and request inputs, and the
//! deadlines and caps of client connections.

use toml::Spanned;

use super::Validator;
use crate::config::model::{
    ConnectionLimits, LimitSettings, OverLimit, DEFAULT_AUTH_CACHE_SIZE, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_LAST_EVENT_ID,
    DEFAULT_MAX_PARAM_LEN, DEFAULT_MAX_SUBSCRIBERS, DEFAULT_MAX_SUBSCRIBERS_PER_TOPIC,
    DEFAULT_MAX_TOPIC_INSTANCES, DEFAULT_REPLAY_MEMORY, DEFAULT_TLS_HANDSHAKE_TIMEOUT,
};
use crate::config::raw;
use crate::config::source::ConfigError;

impl Validator<'_> {
    /// `[limits]`' caps on subscribers, topics and inputs.
    pub(super) fn limits(&self, raw: raw::Limits) -> Result<LimitSettings, ConfigError> {
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
    pub(super) fn connection_limits(
        &self,
        raw: &mut raw::Limits,
    ) -> Result<ConnectionLimits, ConfigError> {
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
}
