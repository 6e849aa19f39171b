//! `[app]`: where the app behind the proxy listens, and how to connect to it.

use super::Validator;
use crate::config::model::{AppSettings, DEFAULT_CONNECT_TIMEOUT};
use crate::config::raw;
use crate::config::source::ConfigError;
use crate::trusted_ca::TrustedCa;
use crate::upstream_addr::{ConnectSettings, UpstreamAddr};

impl Validator<'_> {
    /// `[app]`: the upstream address must parse, and a `ca` file hold
    /// certificates.
    pub(super) fn app(&self, raw: raw::App) -> Result<AppSettings, ConfigError> {
        let origin = UpstreamAddr::parse(raw.upstream.get_ref())
            .map_err(|e| self.at(&raw.upstream, "app.upstream", e.0))?;
        let ca = match &raw.ca {
            Some(path) => Some(
                TrustedCa::load(&self.resolve(path.get_ref()))
                    .map_err(|e| self.at(path, "app.ca", e))?,
            ),
            None => None,
        };
        Ok(AppSettings {
            origin,
            connect: ConnectSettings {
                connect_timeout: self
                    .positive(raw.connect_timeout, "app.connect_timeout")?
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                tls_verify: raw.tls_verify.unwrap_or(true),
                ca,
            },
        })
    }
}
