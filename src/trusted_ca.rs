//! The certificate authorities an `https://` upstream's certificate is
//! checked against, when the config names its own (`[app] ca`): an app or
//! an inner sse-fanout tier with a certificate from a private CA, verified
//! rather than trusted blindly (`tls_verify = false`).
//!
//! The file is read and every certificate in it parsed when the config is
//! loaded, so `--check` and a reload catch a missing or broken file; Pingora's
//! connector then gets the parsed list with every upstream peer, and builds
//! its trust store from it instead of the system's.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora::protocols::tls::CaType;
use pingora::utils::tls::{parse_x509, WrappedX509};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// A CA bundle, loaded.
#[derive(Clone)]
pub struct TrustedCa {
    /// Where it was read from, for messages.
    path: PathBuf,
    /// The certificates, DER, as read (compared to tell a changed file).
    der: Vec<Vec<u8>>,
    /// The same, as Pingora's peer options take them.
    certificates: Arc<CaType>,
}

impl TrustedCa {
    /// Reads the PEM certificates in `path`; an error says what is wrong
    /// with the file.
    pub fn load(path: &Path) -> Result<TrustedCa, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut der = Vec::new();
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate = certificate
                .map_err(|e| format!("{}: not a PEM certificate ({e})", path.display()))?;
            // Pingora parses each one again when it builds the list, and
            // panics on one it cannot parse: only parsed ones go on.
            if x509_parser::parse_x509_certificate(certificate.as_ref()).is_err() {
                return Err(format!(
                    "{}: a certificate in it cannot be parsed",
                    path.display()
                ));
            }
            der.push(certificate.as_ref().to_vec());
        }
        if der.is_empty() {
            return Err(format!(
                "{} holds no \"BEGIN CERTIFICATE\" block; give the PEM certificate of the CA that signed the upstream's certificate",
                path.display()
            ));
        }
        let certificates: Vec<WrappedX509> = der
            .iter()
            .map(|d| WrappedX509::new(d.clone(), parse_x509))
            .collect();
        Ok(TrustedCa {
            path: path.to_path_buf(),
            der,
            certificates: certificates.into(),
        })
    }

    /// The certificates, for a Pingora peer's `ca` option.
    pub fn certificates(&self) -> Arc<CaType> {
        self.certificates.clone()
    }
}

impl PartialEq for TrustedCa {
    fn eq(&self, other: &TrustedCa) -> bool {
        self.der == other.der
    }
}

impl Eq for TrustedCa {}

impl fmt::Debug for TrustedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TrustedCa({}, {} certificates)",
            self.path.display(),
            self.der.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_a_certificate_is_refused_with_what_to_give() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = TrustedCa::load(&path).unwrap_err();
        assert!(
            error.contains("holds no \"BEGIN CERTIFICATE\" block"),
            "{error}"
        );
        assert!(TrustedCa::load(&dir.path().join("missing.pem"))
            .unwrap_err()
            .contains("cannot read"));
    }

    #[test]
    fn a_ca_certificate_loads() {
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.pem()).unwrap();
        let loaded = TrustedCa::load(&path).unwrap();
        assert_eq!(loaded.certificates().len(), 1);
        assert_eq!(loaded, TrustedCa::load(&path).unwrap());
    }
}
