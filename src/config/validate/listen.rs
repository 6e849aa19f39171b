//! `[[listen]]`: the addresses browsers connect to, the certificates of
//! the TLS ones (loaded here, so `--check` proves they fit), whether a
//! PROXY protocol header comes first, and the HSTS a TLS listener sends.

use std::net::SocketAddr;

use super::Validator;
use crate::config::model::Listener;
use crate::config::raw;
use crate::config::source::ConfigError;
use crate::tls::{Certificate, TlsFile};

impl Validator<'_> {
    /// Every `[[listen]]` (at least one), loading the certificates of the TLS ones.
    pub(super) fn listeners(&self, raw: Vec<raw::Listen>) -> Result<Vec<Listener>, ConfigError> {
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
            let hsts = match listen.hsts {
                None => None,
                Some(value) if tls.is_none() => {
                    return Err(self.at(
                        &value,
                        format!("{key}.hsts"),
                        "hsts is for TLS listeners only (browsers ignore it over plain HTTP, and it would promise HTTPS on this address); remove it, or add tls = { cert = \"...\", key = \"...\" }".into(),
                    ))
                }
                Some(value) => {
                    crate::hsts::check(value.get_ref())
                        .map_err(|why| self.at(&value, format!("{key}.hsts"), why))?;
                    Some(value.into_inner().trim().to_string())
                }
            };
            listeners.push(Listener {
                addr,
                tls,
                proxy_protocol: listen.proxy_protocol.unwrap_or(false),
                hsts,
            });
        }
        Ok(listeners)
    }
}
