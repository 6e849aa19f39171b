//! A TLS listener's `tls = { acme = [...], ... }`, and the checks each of its
//! keys gets when the config is loaded (so `--check` catches them without
//! contacting the CA).

use std::path::{Path, PathBuf};

use rustls_pki_types::DnsName;

/// Let's Encrypt's production directory: the default `directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Let's Encrypt's staging directory (`directory = "letsencrypt-staging"`):
/// untrusted certificates, generous rate limits, for trying a set-up.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Where account and certificates are kept when `cache` is not given.
pub const DEFAULT_CACHE: &str = "/var/lib/sse-fanout/acme";

/// The most names one certificate may carry (Let's Encrypt's limit).
pub const MAX_NAMES: usize = 100;

/// How the CA checks that this proxy answers for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// `tls-alpn-01`: a TLS handshake on port 443 offering ALPN
    /// `acme-tls/1`, answered by this listener with a one-off certificate.
    TlsAlpn01,
    /// `http-01`: `GET /.well-known/acme-challenge/<token>` on port 80,
    /// answered by a plaintext listener.
    Http01,
}

impl ChallengeKind {
    /// The name the config and the ACME protocol use.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Http01 => "http-01",
        }
    }
}

/// One certificate the proxy obtains and renews itself, for one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The DNS names it is for (lowercase, checked; the first names files).
    pub names: Vec<String>,
    /// The account's contact, if given (`mailto:` is added).
    pub email: Option<String>,
    /// The ACME server's directory URL.
    pub directory: String,
    /// A PEM file of CAs that sign the ACME server's own HTTPS certificate
    /// (a private ACME server); the system's store when `None`.
    pub ca: Option<PathBuf>,
    /// Where the account key and the certificates are kept.
    pub cache: PathBuf,
    /// How names are proved.
    pub challenge: ChallengeKind,
}

/// Lowercases and checks one name of `acme = [...]`.
pub fn check_name(name: &str) -> Result<String, String> {
    let lower = name.trim().to_ascii_lowercase();
    if lower.starts_with("*.") {
        return Err(format!(
            "{name:?} is a wildcard; wildcards need the dns-01 challenge, which sse-fanout does not answer: list each name"
        ));
    }
    if lower.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{name:?} is an IP address; ACME certificates here are for DNS names"
        ));
    }
    let valid = DnsName::try_from(lower.as_str()).is_ok()
        && !lower.is_empty()
        && !lower.ends_with('.')
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid {
        return Err(format!(
            "{name:?} is not a DNS name; write e.g. \"events.example.com\" (punycode for international names)"
        ));
    }
    Ok(lower)
}

/// Checks `names` as a whole: at least one, no repeats, not too many.
pub fn check_names(names: &[String]) -> Result<(), String> {
    if names.is_empty() {
        return Err(
            "acme needs at least one name, e.g. acme = [\"events.example.com\"]".to_string(),
        );
    }
    if names.len() > MAX_NAMES {
        return Err(format!(
            "{} names; a certificate carries at most {MAX_NAMES}",
            names.len()
        ));
    }
    for (i, name) in names.iter().enumerate() {
        if names.iter().skip(i + 1).any(|other| other == name) {
            return Err(format!("{name:?} is listed twice"));
        }
    }
    Ok(())
}

/// Checks an account contact address.
pub fn check_email(email: &str) -> Result<String, String> {
    let email = email.trim();
    let plausible = email
        .split_once('@')
        .is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.'))
        && email
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | ',' | '"' | '\\'));
    if !plausible {
        return Err(format!(
            "{email:?} is not an email address; write e.g. \"ops@example.com\""
        ));
    }
    Ok(email.to_string())
}

/// The directory URL `value` names: a URL, or `letsencrypt` /
/// `letsencrypt-staging`.
pub fn directory_url(value: &str) -> Result<String, String> {
    let value = value.trim();
    match value {
        "letsencrypt" => return Ok(LETS_ENCRYPT.to_string()),
        "letsencrypt-staging" => return Ok(LETS_ENCRYPT_STAGING.to_string()),
        _ => {}
    }
    let uri: http::Uri = value.parse().map_err(|_| {
        format!("{value:?} is not a URL; give the ACME directory, e.g. \"{LETS_ENCRYPT_STAGING}\"")
    })?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(format!(
            "{value:?}: an ACME directory is an https:// URL (e.g. \"{LETS_ENCRYPT}\")"
        ));
    }
    Ok(value.to_string())
}

/// The challenge `value` names.
pub fn challenge_kind(value: &str) -> Result<ChallengeKind, String> {
    match value {
        "tls-alpn-01" => Ok(ChallengeKind::TlsAlpn01),
        "http-01" => Ok(ChallengeKind::Http01),
        other => Err(format!(
            "{other:?} is not a challenge sse-fanout answers; write \"tls-alpn-01\" (on this listener, port 443) or \"http-01\" (on a plaintext listener, port 80)"
        )),
    }
}

/// Checks that the cache directory can be used: it is a writable directory,
/// or it does not exist yet and its nearest existing parent is a directory
/// that is not read-only (the proxy creates it, private, on start).
pub fn check_cache(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => Err(format!(
            "{} is not a directory; name a directory for the ACME account and certificates",
            path.display()
        )),
        Ok(_) => {
            let probe = path.join(format!(".sse-fanout-check-{}", std::process::id()));
            std::fs::write(&probe, b"")
                .and_then(|()| std::fs::remove_file(&probe))
                .map_err(|e| {
                    format!(
                        "cannot write in {}: {e}; the proxy keeps its ACME account and certificates there",
                        path.display()
                    )
                })
        }
        Err(_) => {
            let parent = path
                .ancestors()
                .skip(1)
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        p
                    }
                })
                .find(|p| p.exists());
            match parent.map(std::fs::metadata) {
                Some(Ok(meta)) if meta.is_dir() && !meta.permissions().readonly() => Ok(()),
                _ => Err(format!(
                    "{} does not exist and cannot be created; create it (owned by the proxy's user, mode 700)",
                    path.display()
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercased_and_wildcards_addresses_and_junk_refused() {
        assert_eq!(
            check_name("Events.Example.COM").unwrap(),
            "events.example.com"
        );
        assert!(check_name("*.example.com")
            .unwrap_err()
            .contains("wildcard"));
        assert!(check_name("192.0.2.1").unwrap_err().contains("IP address"));
        assert!(check_name("exa mple.com").is_err());
        assert!(check_name("example.com/x").is_err());
        assert!(check_name("").is_err());
        assert!(check_names(&[]).is_err());
        assert!(check_names(&["a.example".into(), "a.example".into()])
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn a_directory_is_an_https_url_or_a_known_name() {
        assert_eq!(directory_url("letsencrypt").unwrap(), LETS_ENCRYPT);
        assert_eq!(
            directory_url("letsencrypt-staging").unwrap(),
            LETS_ENCRYPT_STAGING
        );
        assert_eq!(
            directory_url("https://127.0.0.1:14000/dir").unwrap(),
            "https://127.0.0.1:14000/dir"
        );
        assert!(directory_url("http://acme.example/dir").is_err());
        assert!(directory_url("acme.example").is_err());
    }

    #[test]
    fn an_email_needs_a_user_and_a_domain() {
        assert_eq!(check_email(" ops@example.com ").unwrap(), "ops@example.com");
        assert!(check_email("ops").is_err());
        assert!(check_email("@example.com").is_err());
        assert!(check_email("ops@example.com, x@y.z").is_err());
    }

    #[test]
    fn a_cache_must_be_a_writable_directory_or_creatable() {
        let dir = std::env::temp_dir().join(format!("sse-fanout-acme-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(check_cache(&dir).is_ok());
        assert!(check_cache(&dir.join("not/yet")).is_ok());
        assert!(check_cache(Path::new("relative-not-yet")).is_ok());
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(check_cache(&file).unwrap_err().contains("not a directory"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
