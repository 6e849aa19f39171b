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
//!
//! A listener with `tls = { acme = [...] }` has no files: its slot starts
//! empty (handshakes fail until a certificate comes), [`crate::acme`] fills
//! it from its cache or the CA and again at each renewal, and the slot
//! answers the CA's `tls-alpn-01` validation handshakes (ALPN `acme-tls/1`)
//! with the challenge certificate of the name asked.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use pingora::listeners::tls::Acceptor;
use rustls::crypto::ring::default_provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::acme::{Challenges, ACME_TLS_ALPN};

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
        let key = certified_key(&cert_pem, &key_pem).map_err(|e| match e {
            PemError::Chain(e) => cert_error(format!(
                "{} is not a valid PEM certificate chain: {e}",
                cert_path.display()
            )),
            PemError::NoCertificate => cert_error(format!(
                "{} holds no \"BEGIN CERTIFICATE\" block; give the PEM certificate chain (fullchain.pem)",
                cert_path.display()
            )),
            PemError::Key(e) => key_error(format!(
                "{} holds no usable PEM private key ({e}); give the key that matches the certificate (privkey.pem)",
                key_path.display()
            )),
            PemError::Mismatch(e) => key_error(format!(
                "key {} does not fit certificate {}: {e}; check that both files come from the same issuance",
                key_path.display(),
                cert_path.display()
            )),
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
        Arc::new(CertificateSlot {
            current: ArcSwapOption::new(Some(self.key.clone())),
            challenges: None,
        })
    }
}

/// Why a PEM chain and key could not be made a [`CertifiedKey`].
enum PemError {
    /// The chain is not valid PEM.
    Chain(rustls_pki_types::pem::Error),
    /// The chain holds no certificate.
    NoCertificate,
    /// No usable private key.
    Key(rustls_pki_types::pem::Error),
    /// The key does not belong to the first certificate.
    Mismatch(rustls::Error),
}

impl fmt::Display for PemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemError::Chain(e) => write!(f, "not a valid PEM certificate chain: {e}"),
            PemError::NoCertificate => f.write_str("holds no certificate"),
            PemError::Key(e) => write!(f, "holds no usable private key: {e}"),
            PemError::Mismatch(e) => write!(f, "the key does not fit the certificate: {e}"),
        }
    }
}

/// The certificate chain in `chain_pem` with the private key in `key_pem`
/// (PKCS#8, PKCS#1 or SEC1), checked to belong to its first certificate.
fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, PemError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(PemError::Chain)?;
    if chain.is_empty() {
        return Err(PemError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(PemError::Key)?;
    CertifiedKey::from_der(chain, key, &default_provider()).map_err(PemError::Mismatch)
}

/// [`certified_key`] for pairs the proxy stored itself (the ACME cache):
/// what is wrong, in one sentence.
pub fn certified_key_from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    certified_key(chain_pem, key_pem).map_err(|e| e.to_string())
}

/// A TLS listener's certificate, replaceable while the listener runs: each
/// handshake is served the pair the slot holds at that moment. An ACME
/// listener's slot is empty until its first certificate comes (handshakes
/// fail meanwhile), and answers `tls-alpn-01` validation handshakes.
pub struct CertificateSlot {
    /// The pair served now.
    current: ArcSwapOption<CertifiedKey>,
    /// Where an ACME listener finds its `tls-alpn-01` answers.
    challenges: Option<Arc<Challenges>>,
}

impl CertificateSlot {
    /// An ACME listener's slot: empty until [`store_key`](Self::store_key).
    pub fn acme(challenges: Arc<Challenges>) -> Arc<CertificateSlot> {
        Arc::new(CertificateSlot {
            current: ArcSwapOption::empty(),
            challenges: Some(challenges),
        })
    }

    /// Serves `certificate` to every handshake from now on.
    pub fn store(&self, certificate: &Certificate) {
        self.store_key(certificate.key.clone());
    }

    /// Serves `key` to every handshake from now on.
    pub fn store_key(&self, key: Arc<CertifiedKey>) {
        self.current.store(Some(key));
    }

    /// The ALPN protocols the listener offers: `h2`, `http/1.1`, and on an
    /// ACME listener `acme-tls/1` (chosen only by validation handshakes,
    /// which offer nothing else).
    fn alpn(&self) -> Vec<Vec<u8>> {
        let mut protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if self.challenges.is_some() {
            protocols.push(ACME_TLS_ALPN.to_vec());
        }
        protocols
    }
}

/// The TLS side of a listener serving what `slot` holds: TLS 1.2 and 1.3,
/// ALPN as [`CertificateSlot::alpn`] says, Pingora's acceptor.
pub fn acceptor(slot: Arc<CertificateSlot>) -> Result<Acceptor, rustls::Error> {
    let alpn = slot.alpn();
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    config.alpn_protocols = alpn;
    Ok(Acceptor::from_server_config(Arc::new(config)))
}

impl fmt::Debug for CertificateSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateSlot").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertificateSlot {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(challenges) = &self.challenges {
            let validation = hello
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
            if validation {
                return challenges.tls_alpn(hello.server_name()?);
            }
        }
        self.current.load_full()
    }
}
