//! `[server]`: threads, shutdown, daemon mode, the sockets of accepted
//! connections (HTTP/2 streams, keepalive, user timeout, read buffer), and
//! the proxies whose `X-Forwarded-For` is believed.

use std::net::IpAddr;

use ipnet::IpNet;
use toml::Spanned;

use super::Validator;
use crate::config::model::{
    KeepaliveSettings, ServerSettings, DEFAULT_DRAIN, DEFAULT_GRACE_PERIOD,
    DEFAULT_KEEPALIVE_COUNT, DEFAULT_KEEPALIVE_IDLE, DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_PID_FILE, DEFAULT_READ_BUFFER,
    DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_TCP_USER_TIMEOUT, DEFAULT_UPGRADE_SOCK, MIN_READ_BUFFER,
};
use crate::config::raw;
use crate::config::source::ConfigError;

impl Validator<'_> {
    /// `[server]`, with its defaults.
    pub(super) fn server(&self, raw: raw::Server) -> Result<ServerSettings, ConfigError> {
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
        let grace_period = raw
            .grace_period
            .map_or(DEFAULT_GRACE_PERIOD, |d| d.into_inner().0);
        // The drain happens within the grace period; Pingora ends the
        // process when that is over.
        let drain = raw
            .drain
            .map_or(DEFAULT_DRAIN, |d| d.into_inner().0)
            .min(grace_period);
        let trusted_proxies = self.trusted_proxies(raw.trusted_proxies.unwrap_or_default())?;
        Ok(ServerSettings {
            threads,
            grace_period,
            drain,
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
                Some(size) if size.get_ref().0 != 0 && size.get_ref().0 < MIN_READ_BUFFER => {
                    return Err(self.at(
                        &size,
                        "server.read_buffer",
                        format!(
                            "must be 0 (none) or at least {MIN_READ_BUFFER} bytes, e.g. \"4KiB\""
                        ),
                    ))
                }
                Some(size) => size.into_inner().0,
                None => DEFAULT_READ_BUFFER,
            },
            trusted_proxies,
        })
    }

    /// `[server] trusted_proxies`: CIDRs (`"10.0.0.0/8"`, `"fd00::/8"`) or
    /// single addresses.
    fn trusted_proxies(&self, raw: Vec<Spanned<String>>) -> Result<Vec<IpNet>, ConfigError> {
        raw.iter()
            .map(|entry| {
                let text = entry.get_ref().trim();
                if let Ok(ip) = text.parse::<IpAddr>() {
                    return Ok(IpNet::from(ip));
                }
                let net: IpNet = text.parse().map_err(|_| {
                    self.at(
                        entry,
                        "server.trusted_proxies",
                        format!(
                            "{text:?} is not a CIDR; write an address range such as \"10.0.0.0/8\" or \"fd00::/8\", or one address"
                        ),
                    )
                })?;
                if net.trunc() != net {
                    return Err(self.at(
                        entry,
                        "server.trusted_proxies",
                        format!(
                            "{text:?} has bits set past its /{}; write the range as \"{}\"",
                            net.prefix_len(),
                            net.trunc()
                        ),
                    ));
                }
                Ok(net)
            })
            .collect()
    }
}
