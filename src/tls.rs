//! Certificates for the HTTPS listeners.
//!
//! The config names a PEM certificate chain and a PEM private key per TLS
//! listener. They are loaded and checked here once, when the config is
//! loaded (so `--check` catches a missing file or a key that belongs to
//! another certificate), and the loaded pair is handed to Pingora's rustls
//! listener as a ready certificate resolver. Pingora never reads the files
//! itself, so it has nothing left to fail on at start-up.
//!
//! The resolver is a [`CertificateSlot`]: a reload (`SIGHUP`) loads the
//! files again, checks them the same way, and stores the new pair in the
//! slot. Every handshake from then on gets the new pair; connections already
//! open keep the one they were given.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::ring::default_provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its private key, loaded and checked to match.
#[derive(Clone)]
pub struct Certificate {
    /// Where the chain came from, for logs.
    pub cert_path: PathBuf,
    /// Where the key came from, for logs.
    pub key_path: PathBuf,
    /// The parsed pair, shared by every connection on the listener.
    key: Arc<CertifiedKey>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// Which of the two files a [`TlsError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
}

/// Why a certificate or key could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// The file at fault (for a mismatch: the key).
    pub file: TlsFile,
    /// What is wrong and what to do, in one sentence.
    pub message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TlsError {}

impl Certificate {
    /// Loads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1) and checks that the key belongs to the first certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Certificate, TlsError> {
        let cert_error = |message: String| TlsError {
            file: TlsFile::Cert,
            message,
        };
        let key_error = |message: String| TlsError {
            file: TlsFile::Key,
            message,
        };
        let cert_pem = std::fs::read(cert_path).map_err(|e| {
            cert_error(format!(
                "cannot read certificate file {}: {e}",
                cert_path.display()
            ))
        })?;
        let key_pem = std::fs::read(key_path)
            .map_err(|e| key_error(format!("cannot read key file {}: {e}", key_path.display())))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                cert_error(format!(
                    "{} is not a valid PEM certificate chain: {e}",
                    cert_path.display()
                ))
            })?;
        if chain.is_empty() {
            return Err(cert_error(format!(
                "{} holds no \"BEGIN CERTIFICATE\" block; give the PEM certificate chain (fullchain.pem)",
                cert_path.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            key_error(format!(
                "{} holds no usable PEM private key ({e}); give the key that matches the certificate (privkey.pem)",
                key_path.display()
            ))
        })?;
        let key = CertifiedKey::from_der(chain, key, &default_provider()).map_err(|e| {
            key_error(format!(
                "key {} does not fit certificate {}: {e}; check that both files come from the same issuance",
                key_path.display(),
                cert_path.display()
            ))
        })?;
        Ok(Certificate {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            key: Arc::new(key),
        })
    }

    /// A rustls certificate resolver serving this pair until another is
    /// [stored](CertificateSlot::store) in it.
    pub fn slot(&self) -> Arc<CertificateSlot> {
        Arc::new(CertificateSlot(ArcSwap::new(self.key.clone())))
    }
}

/// A TLS listener's certificate, replaceable while the listener runs: each
/// handshake is served the pair the slot holds at that moment.
pub struct CertificateSlot(ArcSwap<CertifiedKey>);

impl CertificateSlot {
    /// Serves `certificate` to every handshake from now on.
    pub fn store(&self, certificate: &Certificate) {
        self.0.store(certificate.key.clone());
    }
}

impl fmt::Debug for CertificateSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateSlot").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertificateSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}
