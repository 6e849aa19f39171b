//! The per-topic SSE knobs (heartbeat, replay window, lag bounds, linger,
//! upstream reconnects, catch-ups): their defaults in `[sse]`, and each
//! `[[topic]]`'s overrides of them.

use super::Validator;
use crate::config::model::{
    Prime, ResumeLost, TopicSettings, DEFAULT_BACKOFF_MAX, DEFAULT_CATCH_UP_MAX,
    DEFAULT_CATCH_UP_TIMEOUT, DEFAULT_HEARTBEAT, DEFAULT_LINGER, DEFAULT_MAX_EVENT_SIZE,
    DEFAULT_REPLAY, DEFAULT_REPLAY_BYTES, DEFAULT_RETRY, DEFAULT_UPSTREAM_IDLE_TIMEOUT,
    MAX_HEARTBEAT_PADDING,
};
use crate::config::raw;
use crate::config::source::ConfigError;

impl Validator<'_> {
    /// `[sse]`'s topic settings over the documented defaults.
    pub(super) fn sse_defaults(&self, raw: raw::Sse) -> Result<TopicSettings, ConfigError> {
        let defaults = TopicSettings {
            heartbeat: DEFAULT_HEARTBEAT,
            retry: DEFAULT_RETRY,
            replay: DEFAULT_REPLAY,
            replay_bytes: DEFAULT_REPLAY_BYTES,
            max_lag: DEFAULT_REPLAY / 2,
            max_lag_bytes: DEFAULT_REPLAY_BYTES / 2,
            resume_lost: ResumeLost::Replay,
            prime: Prime::Id,
            heartbeat_padding: 0,
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
    pub(super) fn topic_settings(
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
        let prime = match raw.prime {
            None => defaults.prime,
            Some(p) => match p.get_ref().as_str() {
                "id" => Prime::Id,
                "none" => Prime::None,
                "last" => Prime::Last,
                other => {
                    return Err(self.at(&p, key("prime"), format!("{other:?} is not a priming; use \"id\" (the last event id, no event), \"none\" (nothing) or \"last\" (the latest event)")))
                }
            },
        };
        let heartbeat_padding = match raw.heartbeat_padding {
            None => defaults.heartbeat_padding,
            Some(n) if *n.get_ref() > MAX_HEARTBEAT_PADDING => {
                return Err(self.at(
                    &n,
                    key("heartbeat_padding"),
                    format!("must be at most {MAX_HEARTBEAT_PADDING} bytes"),
                ))
            }
            Some(n) => n.into_inner(),
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
            prime,
            heartbeat_padding,
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
}
