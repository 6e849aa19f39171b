//! Certificates the proxy obtains and renews itself, with ACME (Let's
//! Encrypt, or any RFC 8555 server).
//!
//! A TLS listener with `tls = { acme = ["events.example.com"], ... }` gets
//! a [`CertificateSlot`] that starts empty. When the server is built, a
//! valid certificate in the cache goes into the slot at once, so a restart
//! serves without waiting for the CA. Then one [`Keeper`] per ACME listener,
//! in the `acme` background service, looks after it:
//!
//! ```text
//!  ┌─▶ the cache holds a newer certificate (another instance renewed)? serve it
//!  │   due (two thirds of the lifetime, less jitter) or nothing served?
//!  │     no  → sleep until due (at most an hour, then look again)
//!  │     yes → order (order.rs): answers published in Challenges while the
//!  │           CA validates; the new pair stored in the cache, then the slot
//!  │           → new handshakes get it; open connections keep theirs
//!  └── failed → the old certificate stays; retry after a backoff (schedule.rs)
//! ```
//!
//! | file | holds |
//! |---|---|
//! | `settings.rs` | the config keys and their checks |
//! | `challenges.rs` | the `tls-alpn-01` and `http-01` answers while an order is open |
//! | `order.rs` | one order, account to certificate |
//! | `client.rs` | the HTTPS client under it, with deadlines and an optional private CA |
//! | `cache.rs` | the account and certificates on disk |
//! | `schedule.rs` | when to renew, how long to back off |

mod cache;
mod challenges;
mod client;
mod order;
mod schedule;
mod settings;

use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

pub use cache::Issued;
pub use challenges::{Challenges, ACME_TLS_ALPN, HTTP01_PREFIX};
pub use settings::{
    challenge_kind, check_cache, check_email, check_name, check_names, directory_url, AcmeSettings,
    ChallengeKind, DEFAULT_CACHE, LETS_ENCRYPT, LETS_ENCRYPT_STAGING,
};

use crate::config::{Config, ListenerTls};
use crate::tls::CertificateSlot;
use cache::Cache;
use schedule::{renew_at, Backoff};

/// Where the `http-01` listeners of `config` leave their answers for
/// instances sharing their cache, and look for theirs.
pub fn shared_http01_dirs(config: &Config) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref().and_then(ListenerTls::acme))
        .filter(|acme| acme.challenge == ChallengeKind::Http01)
        .map(|acme| challenges::http01_dir(&acme.cache))
        .collect();
    dirs.dedup();
    dirs
}

/// The longest a keeper sleeps before looking at its certificate again,
/// whatever its due time: a clock that jumped, or a certificate another
/// instance stored in a shared cache, is noticed within it.
const LONGEST_SLEEP: Duration = Duration::from_secs(3600);

/// The certificate of one ACME listener, looked after.
pub struct Keeper {
    settings: Arc<AcmeSettings>,
    cache: Cache,
    slot: Arc<CertificateSlot>,
    challenges: Arc<Challenges>,
    status: Arc<CertificateStatus>,
    /// What the slot serves, and when it is due for renewal.
    serving: Option<(Issued, SystemTime)>,
}

impl Keeper {
    /// A keeper for `settings`' certificate, served in `slot`. A valid
    /// certificate in the cache is put in the slot now.
    pub fn new(
        settings: Arc<AcmeSettings>,
        slot: Arc<CertificateSlot>,
        challenges: Arc<Challenges>,
    ) -> Keeper {
        let cache = Cache::new(&settings);
        let status = CertificateStatus::register(&settings);
        let mut keeper = Keeper {
            settings,
            cache,
            slot,
            challenges,
            status,
            serving: None,
        };
        keeper.take_from_cache();
        keeper
    }

    /// Serves the cached certificate if it is valid and newer than the one
    /// served (another instance sharing the cache may have renewed).
    fn take_from_cache(&mut self) {
        let cached = match self.cache.certificate() {
            Ok(Some(cached)) => cached,
            Ok(None) => return,
            Err(e) => {
                log::warn!("acme: the cached certificate is unusable ({e}); ordering a new one");
                return;
            }
        };
        let newer = self
            .serving
            .as_ref()
            .is_none_or(|(serving, _)| cached.not_after > serving.not_after);
        if newer && cached.not_after > SystemTime::now() {
            log::info!(
                "acme: serving the cached certificate for {} (serial {}, expires {})",
                self.settings.names.join(", "),
                cached.serial,
                humantime::format_rfc3339_seconds(cached.not_after)
            );
            self.serve(cached);
        }
    }

    /// Puts `issued` in the slot; new handshakes get it from now on.
    fn serve(&mut self, issued: Issued) {
        self.slot.store_key(issued.key.clone());
        let due = renew_at(issued.not_before, issued.not_after, fastrand::f64());
        self.status.serving(issued.not_after, due);
        self.serving = Some((issued, due));
    }

    /// Looks after the certificate until `shutdown`.
    async fn run(mut self, mut shutdown: ShutdownWatch) {
        let mut backoff = Backoff::default();
        loop {
            self.take_from_cache();
            let now = SystemTime::now();
            if let Some((_, due)) = &self.serving {
                if let Ok(wait) = due.duration_since(now) {
                    if !wait.is_zero() {
                        if sleep_or_shutdown(wait.min(LONGEST_SLEEP), &mut shutdown).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let names = self.settings.names.join(", ");
            log::info!(
                "acme: ordering a certificate for {names} from {} ({})",
                self.settings.directory,
                self.settings.challenge.as_str()
            );
            let ordered = tokio::select! {
                ordered = order::obtain(&self.settings, &self.cache, &self.challenges) => ordered,
                _ = stopped(&mut shutdown) => return,
            };
            match ordered {
                Ok(issued) => {
                    log::info!(
                        "acme: new certificate for {names} (serial {}, expires {}); new handshakes get it",
                        issued.serial,
                        humantime::format_rfc3339_seconds(issued.not_after)
                    );
                    self.status.ordered(true);
                    self.serve(issued);
                    backoff = Backoff::default();
                }
                Err(e) => {
                    self.status.ordered(false);
                    let left = self.serving.as_ref().map(|(serving, _)| {
                        serving
                            .not_after
                            .duration_since(SystemTime::now())
                            .unwrap_or(Duration::ZERO)
                    });
                    let wait = backoff.next_wait(left);
                    self.status.retry_at(SystemTime::now() + wait);
                    log::warn!(
                        "acme: ordering a certificate for {names} failed: {e}; {}, retrying in {}s",
                        if left.is_some() {
                            "the current certificate stays in service"
                        } else {
                            "TLS handshakes on this listener fail until one is obtained"
                        },
                        wait.as_secs()
                    );
                    if sleep_or_shutdown(wait, &mut shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Sleeps `wait`; `true` if the server began to stop instead.
async fn sleep_or_shutdown(wait: Duration, shutdown: &mut ShutdownWatch) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stopped(shutdown) => true,
    }
}

/// Returns once the server begins to stop.
async fn stopped(shutdown: &mut ShutdownWatch) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The `acme` background service: every ACME listener's [`Keeper`].
pub struct Keepers(Mutex<Vec<Keeper>>);

impl Keepers {
    pub fn new(keepers: Vec<Keeper>) -> Keepers {
        Keepers(Mutex::new(keepers))
    }
}

#[async_trait]
impl BackgroundService for Keepers {
    async fn start(&self, shutdown: ShutdownWatch) {
        let keepers = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        futures_util::future::join_all(
            keepers
                .into_iter()
                .map(|keeper| keeper.run(shutdown.clone())),
        )
        .await;
    }
}

/// What `/metrics` says of one ACME certificate.
#[derive(Debug, Default)]
pub struct CertificateStatus {
    /// The certificate's first name, the `name` label.
    pub name: String,
    /// Its expiry, next order and order counts, updated by its keeper.
    figures: Mutex<StatusFigures>,
}

/// The figures of a [`CertificateStatus`], read together.
#[derive(Debug, Default, Clone, Copy)]
pub struct StatusFigures {
    /// When the served certificate expires (0: none served).
    pub expires: u64,
    /// When the next order is due (a renewal or a retry).
    pub next_order: u64,
    /// Orders that brought a certificate.
    pub orders_ok: u64,
    /// Orders that failed.
    pub orders_failed: u64,
}

/// Every ACME certificate of the process, for `/metrics`: one per ACME
/// listener, registered when its keeper is made.
static STATUSES: LazyLock<Mutex<Vec<Arc<CertificateStatus>>>> = LazyLock::new(Mutex::default);

fn seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl CertificateStatus {
    /// The status of `settings`' certificate, registered for `/metrics`
    /// (in place of an earlier one with the same name).
    fn register(settings: &AcmeSettings) -> Arc<CertificateStatus> {
        let status = Arc::new(CertificateStatus {
            name: settings.names.first().cloned().unwrap_or_default(),
            figures: Mutex::default(),
        });
        let mut all = STATUSES.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|other| other.name != status.name);
        all.push(status.clone());
        status
    }

    fn figures(&self) -> std::sync::MutexGuard<'_, StatusFigures> {
        self.figures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn serving(&self, expires: SystemTime, due: SystemTime) {
        let mut figures = self.figures();
        figures.expires = seconds(expires);
        figures.next_order = seconds(due);
    }

    fn retry_at(&self, at: SystemTime) {
        self.figures().next_order = seconds(at);
    }

    fn ordered(&self, ok: bool) {
        let mut figures = self.figures();
        if ok {
            figures.orders_ok += 1;
        } else {
            figures.orders_failed += 1;
        }
    }
}

/// Every ACME certificate's name and figures, now.
pub fn statuses() -> Vec<(String, StatusFigures)> {
    STATUSES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|status| (status.name.clone(), *status.figures()))
        .collect()
}
