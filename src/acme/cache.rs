//! The cache directory: the ACME account and the certificates obtained,
//! so that a restart serves at once without asking the CA again.
//!
//! | file | holds |
//! |---|---|
//! | `account-<h>.json` | the account's key and URL at one directory (`<h>`: a hash of the directory URL) |
//! | `<first name>-<h>.pem` | a certificate chain and its private key (`<h>`: a hash of the names and the directory) |
//!
//! The directory is created mode `700` and every file is written mode `600`
//! to a temporary name, then renamed into place: a reader (this process
//! after a restart, or another instance sharing the directory) sees the old
//! file or the new one, never half of one.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;

use super::settings::AcmeSettings;

/// A certificate from the cache or the CA, ready to serve.
#[derive(Clone)]
pub struct Issued {
    /// The chain and its key.
    pub key: Arc<CertifiedKey>,
    /// When the leaf starts being valid.
    pub not_before: SystemTime,
    /// When the leaf expires.
    pub not_after: SystemTime,
    /// The leaf's serial number, hex, for logs.
    pub serial: String,
}

/// The cache of one ACME listener.
pub struct Cache {
    /// The directory.
    dir: PathBuf,
    /// The account's file.
    account: PathBuf,
    /// The certificate's file.
    certificate: PathBuf,
}

impl Cache {
    pub fn new(settings: &AcmeSettings) -> Cache {
        let dir = settings.cache.clone();
        let account = dir.join(format!(
            "account-{}.json",
            short_hash(&[&settings.directory])
        ));
        let mut parts: Vec<&str> = settings.names.iter().map(String::as_str).collect();
        parts.push(&settings.directory);
        let first = settings.names.first().map_or("certificate", String::as_str);
        let certificate = dir.join(format!("{first}-{}.pem", short_hash(&parts)));
        Cache {
            dir,
            account,
            certificate,
        }
    }

    /// The certificate file, for logs.
    pub fn certificate_path(&self) -> &Path {
        &self.certificate
    }

    /// The stored account credentials (JSON), if any.
    pub fn account(&self) -> Option<Vec<u8>> {
        std::fs::read(&self.account).ok()
    }

    /// Stores the account credentials.
    pub fn store_account(&self, json: &[u8]) -> std::io::Result<()> {
        self.write(&self.account, json)
    }

    /// The stored certificate, if there is one that parses (expired or not).
    pub fn certificate(&self) -> Result<Option<Issued>, String> {
        match std::fs::read(&self.certificate) {
            Ok(pem) => parse(&pem)
                .map(Some)
                .map_err(|e| format!("{}: {e}", self.certificate.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", self.certificate.display())),
        }
    }

    /// Stores a certificate chain and its key, both PEM.
    pub fn store_certificate(&self, chain_pem: &str, key_pem: &str) -> std::io::Result<()> {
        let mut both = String::with_capacity(chain_pem.len() + key_pem.len() + 1);
        both.push_str(chain_pem);
        if !both.ends_with('\n') {
            both.push('\n');
        }
        both.push_str(key_pem);
        self.write(&self.certificate, both.as_bytes())
    }

    /// Writes `path` whole, private, by a rename.
    fn write(&self, path: &Path, contents: &[u8]) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut file| {
                file.write_all(contents)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&temporary, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }
}

/// A PEM chain followed by its key, as [`Cache::store_certificate`] writes.
pub fn parse(pem: &[u8]) -> Result<Issued, String> {
    let key = crate::tls::certified_key_from_pem(pem, pem)?;
    let leaf = key
        .cert
        .first()
        .ok_or_else(|| "holds no certificate".to_string())?;
    let (_, x509) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let validity = x509.validity();
    let time = |t: &x509_parser::time::ASN1Time| {
        let seconds = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds)
    };
    Ok(Issued {
        not_before: time(&validity.not_before),
        not_after: time(&validity.not_after),
        serial: x509.raw_serial_as_string(),
        key: Arc::new(key),
    })
}

/// A short, stable name for `parts` (FNV-1a, 64 bits, hex): files of
/// different directories or name lists never collide in practice, and the
/// name is the same in every process and version.
fn short_hash(parts: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0u8]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::settings::ChallengeKind;

    fn settings(cache: &Path, names: &[&str]) -> AcmeSettings {
        AcmeSettings {
            names: names.iter().map(|n| n.to_string()).collect(),
            email: None,
            directory: "https://acme.example/dir".into(),
            ca: None,
            cache: cache.to_path_buf(),
            challenge: ChallengeKind::TlsAlpn01,
        }
    }

    #[test]
    fn files_are_private_and_named_by_names_and_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sse-fanout-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = Cache::new(&settings(&dir.join("acme"), &["a.example", "b.example"]));
        cache.store_account(b"{}").unwrap();
        assert_eq!(cache.account().unwrap(), b"{}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("acme")), 0o700);
        assert_eq!(mode(&cache.account), 0o600);
        assert!(cache.certificate().unwrap().is_none());
        let other = Cache::new(&settings(&dir.join("acme"), &["a.example"]));
        assert_ne!(other.certificate, cache.certificate);
        assert!(cache
            .certificate_path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("a.example-"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
