//! `[[listen]]`: the addresses browsers connect to, the certificates of
//! the TLS ones (loaded here, so `--check` proves they fit; or the ACME
//! settings of those that obtain their own, checked here), whether a
//! PROXY protocol header comes first, and the HSTS a TLS listener sends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use toml::Spanned;

use super::Validator;
use crate::acme::{self, AcmeSettings, ChallengeKind};
use crate::config::model::{Listener, ListenerTls};
use crate::config::raw;
use crate::config::source::ConfigError;
use crate::tls::{Certificate, TlsFile};
use crate::trusted_ca::TrustedCa;

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
                Some(tls) => Some(self.listener_tls(&key, &listen.addr, tls)?),
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
        let http01 = listeners.iter().position(|l| {
            l.tls
                .as_ref()
                .and_then(ListenerTls::acme)
                .is_some_and(|acme| acme.challenge == ChallengeKind::Http01)
        });
        if let Some(index) = http01 {
            if listeners.iter().all(|l| l.tls.is_some()) {
                return Err(self.nowhere(
                    Some(&format!("listen[{index}].tls.challenge")),
                    "challenge = \"http-01\" is answered on a plaintext listener, and there is none; add [[listen]] addr = \"0.0.0.0:80\" (the CA connects to port 80), or use \"tls-alpn-01\"".into(),
                ));
            }
        }
        Ok(listeners)
    }

    /// A listener's `tls = { ... }`: certificate files, loaded and checked,
    /// or ACME settings, checked without contacting the CA.
    fn listener_tls(
        &self,
        key: &str,
        addr: &Spanned<String>,
        tls: raw::Tls,
    ) -> Result<ListenerTls, ConfigError> {
        let Some(names) = tls.acme else {
            let acme_only = [
                (&tls.email, "email"),
                (&tls.directory, "directory"),
                (&tls.cache, "cache"),
                (&tls.challenge, "challenge"),
                (&tls.ca, "ca"),
            ];
            if let Some((value, name)) = acme_only
                .iter()
                .find_map(|(v, n)| v.as_ref().map(|v| (v, n)))
            {
                return Err(self.at(
                    value,
                    format!("{key}.tls.{name}"),
                    format!("{name} is an ACME setting; add acme = [\"your.domain\"] to obtain certificates, or remove it"),
                ));
            }
            let (Some(cert), Some(tls_key)) = (tls.cert, tls.key) else {
                return Err(self.at(
                    addr,
                    format!("{key}.tls"),
                    "tls needs cert and key (PEM files), or acme = [\"your.domain\"] for certificates the proxy obtains itself".into(),
                ));
            };
            let cert_path = self.resolve(cert.get_ref());
            let key_path = self.resolve(tls_key.get_ref());
            let certificate =
                Certificate::load(&cert_path, &key_path).map_err(|e| match e.file {
                    TlsFile::Cert => self.at(&cert, format!("{key}.tls.cert"), e.message),
                    TlsFile::Key => self.at(&tls_key, format!("{key}.tls.key"), e.message),
                })?;
            return Ok(ListenerTls::Files(certificate));
        };
        if let Some(files) = tls.cert.as_ref().or(tls.key.as_ref()) {
            return Err(self.at(
                files,
                format!("{key}.tls"),
                "give either cert and key, or acme, not both".into(),
            ));
        }
        let names_key = format!("{key}.tls.acme");
        let mut checked = Vec::with_capacity(names.get_ref().len());
        for name in names.get_ref() {
            checked.push(
                acme::check_name(name.get_ref())
                    .map_err(|why| self.at(name, names_key.clone(), why))?,
            );
        }
        acme::check_names(&checked).map_err(|why| self.at(&names, names_key.clone(), why))?;
        let email = match &tls.email {
            None => None,
            Some(email) => Some(
                acme::check_email(email.get_ref())
                    .map_err(|why| self.at(email, format!("{key}.tls.email"), why))?,
            ),
        };
        let directory = match &tls.directory {
            None => acme::LETS_ENCRYPT.to_string(),
            Some(directory) => acme::directory_url(directory.get_ref())
                .map_err(|why| self.at(directory, format!("{key}.tls.directory"), why))?,
        };
        let challenge = match &tls.challenge {
            None => ChallengeKind::TlsAlpn01,
            Some(challenge) => acme::challenge_kind(challenge.get_ref())
                .map_err(|why| self.at(challenge, format!("{key}.tls.challenge"), why))?,
        };
        let ca = match &tls.ca {
            None => None,
            Some(ca) => {
                let path = self.resolve(ca.get_ref());
                TrustedCa::load(&path).map_err(|why| self.at(ca, format!("{key}.tls.ca"), why))?;
                Some(path)
            }
        };
        let cache = match &tls.cache {
            None => PathBuf::from(acme::DEFAULT_CACHE),
            Some(cache) => self.resolve(cache.get_ref()),
        };
        acme::check_cache(&cache).map_err(|why| match &tls.cache {
            Some(value) => self.at(value, format!("{key}.tls.cache"), why),
            None => self.at(
                &names,
                format!("{key}.tls.cache"),
                format!("{why} (the default cache; set cache = \"...\" to use another)"),
            ),
        })?;
        Ok(ListenerTls::Acme(Arc::new(AcmeSettings {
            names: checked,
            email,
            directory,
            ca,
            cache,
            challenge,
        })))
    }
}
