//! The answers to the CA's challenges while an order is open, where the
//! listeners find them.
//!
//! - `tls-alpn-01`: a TLS handshake offering ALPN `acme-tls/1` for a name
//!   gets a one-off self-signed certificate for that name carrying the
//!   key authorization's digest (RFC 8737). The listener's certificate
//!   resolver ([`crate::tls::CertificateSlot`]) asks [`Challenges::tls_alpn`];
//!   the front door closes such a connection right after its handshake.
//! - `http-01`: `GET /.well-known/acme-challenge/<token>` on any HTTP/1.1
//!   connection gets the key authorization (RFC 8555 §8.3), answered by the
//!   front door ([`Challenges::http01_answer`]) before routing; other tokens
//!   go to the app as before.
//!
//! An answer lives only while its order is open: publishing one returns a
//! [`Published`] guard whose drop removes it. So the maps hold at most the
//! names of the orders in flight (one order per ACME listener at a time).
//!
//! **Instances sharing a cache.** Behind a balancer, the CA's validation
//! request may reach another instance than the one that ordered. An
//! `http-01` answer is therefore also written to the cache directory
//! (`<cache>/http-01/<token>`, removed with the guard), and an instance
//! that does not know a token looks there: every instance sharing the cache
//! answers. (A `tls-alpn-01` answer is a handshake, found while the TLS
//! library waits; it is not looked up on disk, so that challenge must reach
//! the instance that ordered.)

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::crypto::ring::default_provider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The ALPN protocol of `tls-alpn-01` validation handshakes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path prefix of `http-01` validation requests.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The longest a look for another instance's `http-01` answer in a shared
/// cache may take.
const SHARED_READ_DEADLINE: Duration = Duration::from_secs(2);

/// The longest key authorization read back from a shared cache: a token
/// (43 characters at Let's Encrypt), a dot, a thumbprint (43).
const MAX_KEY_AUTHORIZATION: u64 = 512;

/// The answers of the orders in flight, shared by every listener.
#[derive(Default)]
pub struct Challenges {
    /// `tls-alpn-01`: lowercase name → its challenge certificate.
    tls_alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// `http-01`: token → key authorization.
    http01: Mutex<HashMap<String, String>>,
    /// The `http-01` folders of the caches of this process's `http-01`
    /// listeners, where instances sharing a cache leave their answers.
    shared: Vec<PathBuf>,
}

/// One published answer; dropping it withdraws the answer.
pub struct Published {
    challenges: Arc<Challenges>,
    kind: Entry,
}

/// Which map a [`Published`] answer is in, and its key.
enum Entry {
    /// The name, and the certificate published (another order for the
    /// same name may have replaced it since: that one stays).
    TlsAlpn(String, Arc<CertifiedKey>),
    /// The token, and its file in the shared cache if it was written.
    Http01(String, Option<PathBuf>),
}

impl Drop for Published {
    fn drop(&mut self) {
        match &self.kind {
            Entry::TlsAlpn(name, published) => {
                let mut answers = lock(&self.challenges.tls_alpn);
                if answers
                    .get(name)
                    .is_some_and(|current| Arc::ptr_eq(current, published))
                {
                    answers.remove(name);
                }
            }
            Entry::Http01(token, file) => {
                lock(&self.challenges.http01).remove(token);
                if let Some(file) = file {
                    let _ = std::fs::remove_file(file);
                }
            }
        }
    }
}

/// The `http-01` folder of a cache directory.
pub fn http01_dir(cache: &Path) -> PathBuf {
    cache.join("http-01")
}

/// Whether `token` may name a file: RFC 8555 tokens are base64url, and
/// nothing else (no `/`, no `..`) is looked up on disk.
fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 128
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Challenges {
    /// The answers of this process, looking for `http-01` answers other
    /// instances left in `shared` (the `http-01` folders of shared caches).
    pub fn new(shared: Vec<PathBuf>) -> Challenges {
        Challenges {
            shared,
            ..Challenges::default()
        }
    }

    /// Answers `tls-alpn-01` for `name` until the guard is dropped:
    /// `digest` is the SHA-256 of the key authorization.
    pub fn publish_tls_alpn(
        self: &Arc<Self>,
        name: &str,
        digest: &[u8],
    ) -> Result<Published, String> {
        let certificate = Arc::new(challenge_certificate(name, digest)?);
        let name = name.to_ascii_lowercase();
        lock(&self.tls_alpn).insert(name.clone(), certificate.clone());
        Ok(Published {
            challenges: self.clone(),
            kind: Entry::TlsAlpn(name, certificate),
        })
    }

    /// Answers `http-01` for `token` with `key_authorization` until the
    /// guard is dropped, here and, written to `shared` (this order's cache's
    /// `http-01` folder), in every instance sharing that cache.
    pub fn publish_http01(
        self: &Arc<Self>,
        token: &str,
        key_authorization: &str,
        shared: &Path,
    ) -> Published {
        lock(&self.http01).insert(token.to_string(), key_authorization.to_string());
        let file = is_token(token).then(|| shared.join(token));
        let written = file.as_ref().map(|file| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(shared)
                .and_then(|()| std::fs::write(file, key_authorization))
        });
        if let Some(Err(e)) = &written {
            log::warn!(
                "acme: cannot leave the http-01 answer in {} ({e}); only this instance answers it",
                shared.display()
            );
        }
        Published {
            challenges: self.clone(),
            kind: Entry::Http01(
                token.to_string(),
                file.filter(|_| matches!(written, Some(Ok(())))),
            ),
        }
    }

    /// The key authorization for `token`: this process's, or one another
    /// instance left in a shared cache. The disk (perhaps a network file
    /// system) is read off the runtime's threads, within
    /// [`SHARED_READ_DEADLINE`]: any client can ask for any token.
    async fn key_authorization(&self, token: &str) -> Option<String> {
        if let Some(known) = lock(&self.http01).get(token) {
            return Some(known.clone());
        }
        if !is_token(token) || self.shared.is_empty() {
            return None;
        }
        let files: Vec<PathBuf> = self.shared.iter().map(|dir| dir.join(token)).collect();
        let read = tokio::task::spawn_blocking(move || {
            files.iter().find_map(|file| {
                let mut text = String::new();
                std::fs::File::open(file)
                    .ok()?
                    .take(MAX_KEY_AUTHORIZATION)
                    .read_to_string(&mut text)
                    .ok()?;
                let text = text.trim();
                (!text.is_empty()).then(|| text.to_string())
            })
        });
        tokio::time::timeout(SHARED_READ_DEADLINE, read)
            .await
            .ok()?
            .ok()?
    }

    /// The `tls-alpn-01` certificate for `name` (the handshake's SNI), if
    /// an order is waiting for it.
    pub fn tls_alpn(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.tls_alpn)
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    /// The whole HTTP/1.1 answer to a request (its method and target), if
    /// it is `GET` (or `HEAD`) of a token an order is waiting for; `None`
    /// for anything else.
    pub async fn http01_answer(&self, method: &str, target: &str) -> Option<Vec<u8>> {
        if method != "GET" && method != "HEAD" {
            return None;
        }
        // An absolute form (`http://host/...`) names the same path.
        let path = match target.find("://") {
            Some(at) => {
                let rest = target.get(at + 3..)?;
                rest.get(rest.find('/')?..)?
            }
            None => target,
        };
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        let key_authorization = self.key_authorization(token).await?;
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            key_authorization.len()
        )
        .into_bytes();
        if method == "GET" {
            answer.extend_from_slice(key_authorization.as_bytes());
        }
        Some(answer)
    }
}

/// The self-signed certificate RFC 8737 asks for: `name` as its only SAN,
/// the critical `acmeIdentifier` extension holding `digest`.
fn challenge_certificate(name: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    if digest.len() != 32 {
        return Err(format!(
            "a key authorization digest is 32 bytes, not {}",
            digest.len()
        ));
    }
    let mut params = CertificateParams::new(vec![name.to_string()])
        .map_err(|e| format!("challenge certificate for {name}: {e}"))?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate().map_err(|e| format!("challenge key: {e}"))?;
    let certificate = params
        .self_signed(&key)
        .map_err(|e| format!("challenge certificate for {name}: {e}"))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its check that key and certificate fit
    // parses the certificate with webpki, which refuses the critical
    // `acmeIdentifier` extension. Both come from the lines above.
    let signing_key = default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("challenge key: {e}"))?;
    Ok(CertifiedKey::new(
        vec![certificate.der().clone()],
        signing_key,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `http01_answer` for the request line `method target`.
    async fn answer(challenges: &Challenges, method: &str, target: &str) -> Option<String> {
        let answer = challenges.http01_answer(method, target).await?;
        Some(String::from_utf8(answer).unwrap())
    }

    const TOKEN_1: &str = "/.well-known/acme-challenge/tok-1";

    #[tokio::test]
    async fn an_http01_answer_is_served_only_while_its_order_is_open() {
        let challenges = Arc::new(Challenges::default());
        assert!(answer(&challenges, "GET", TOKEN_1).await.is_none());
        let shared = scratch("own");
        let published = challenges.publish_http01("tok-1", "tok-1.thumb", &shared);
        let answered = answer(&challenges, "GET", TOKEN_1).await.unwrap();
        assert!(answered.starts_with("HTTP/1.1 200 OK\r\n"), "{answered}");
        assert!(answered.ends_with("\r\n\r\ntok-1.thumb"), "{answered}");
        let absolute = format!("http://a.example{TOKEN_1}");
        assert!(answer(&challenges, "GET", &absolute).await.is_some());
        assert!(
            answer(&challenges, "GET", "/.well-known/acme-challenge/other")
                .await
                .is_none()
        );
        assert!(answer(&challenges, "POST", TOKEN_1).await.is_none());
        drop(published);
        assert!(answer(&challenges, "GET", TOKEN_1).await.is_none());
        assert!(!shared.join("tok-1").exists());
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sse-fanout-challenges-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn an_instance_sharing_the_cache_answers_another_ones_http01_challenge() {
        let cache = scratch("shared");
        let shared = http01_dir(&cache);
        let ordering = Arc::new(Challenges::new(vec![shared.clone()]));
        let other = Challenges::new(vec![shared.clone()]);
        let token_2 = "/.well-known/acme-challenge/tok-2";
        assert!(answer(&other, "GET", token_2).await.is_none());
        let published = ordering.publish_http01("tok-2", "tok-2.thumb", &shared);
        let answered = answer(&other, "GET", token_2).await.unwrap();
        assert!(answered.ends_with("\r\n\r\ntok-2.thumb"), "{answered}");
        // A token that is not base64url is never looked up on disk.
        std::fs::write(cache.join("secret"), "x").unwrap();
        assert!(
            answer(&other, "GET", "/.well-known/acme-challenge/../secret")
                .await
                .is_none()
        );
        drop(published);
        assert!(answer(&other, "GET", token_2).await.is_none());
        std::fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn a_tls_alpn_certificate_names_the_domain_and_carries_the_digest() {
        let challenges = Arc::new(Challenges::default());
        let digest = [7u8; 32];
        let published = challenges
            .publish_tls_alpn("Events.Example.com", &digest)
            .unwrap();
        let key = challenges.tls_alpn("events.example.com").unwrap();
        let der = key.cert.first().unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let acme = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(acme.critical);
        assert!(acme.value.ends_with(&digest));
        drop(published);
        assert!(challenges.tls_alpn("events.example.com").is_none());
    }

    #[test]
    fn a_withdrawn_tls_alpn_answer_leaves_a_newer_one_for_the_same_name() {
        let challenges = Arc::new(Challenges::default());
        let older = challenges.publish_tls_alpn("a.example", &[1; 32]).unwrap();
        let newer = challenges.publish_tls_alpn("a.example", &[2; 32]).unwrap();
        drop(older);
        assert!(challenges.tls_alpn("a.example").is_some());
        drop(newer);
        assert!(challenges.tls_alpn("a.example").is_none());
    }
}
