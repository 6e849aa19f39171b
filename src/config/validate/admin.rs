//! `[admin]`: the operators' listener, off the public ones.

use std::net::SocketAddr;

use super::Validator;
use crate::config::model::{AdminSettings, Listener, DEFAULT_ADMIN_ADDR};
use crate::config::raw;
use crate::config::source::ConfigError;

/// [`DEFAULT_ADMIN_ADDR`] as an address.
#[allow(clippy::expect_used)] // A constant literal: `admin_table_defaults_to_loopback` parses it.
fn default_admin_addr() -> SocketAddr {
    DEFAULT_ADMIN_ADDR
        .parse()
        .expect("the default admin address parses")
}

impl Validator<'_> {
    /// `[admin]`, which must not share an address with a `[[listen]]`.
    pub(super) fn admin(
        &self,
        raw: raw::Admin,
        listeners: &[Listener],
    ) -> Result<AdminSettings, ConfigError> {
        let addr = match raw.addr {
            None => default_admin_addr(),
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
        if listeners.iter().any(|l| l.addr == addr) {
            return Err(self.nowhere(
                Some("admin.addr"),
                format!("{addr} is also a [[listen]] address; give the admin listener its own (loopback) address"),
            ));
        }
        Ok(AdminSettings { addr })
    }
}
