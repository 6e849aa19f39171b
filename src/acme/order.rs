//! One certificate order, start to finish: the account (from the cache, or
//! created and cached), a new order for the names, each authorization's
//! challenge answered ([`Challenges`]) and announced, then the CSR and the
//! certificate. The protocol itself (JOSE signing, nonces and `badNonce`
//! retries, polling) is instant-acme's.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::cache::{self, Cache, Issued};
use super::challenges::{self, Challenges, Published};
use super::client::AcmeHttp;
use super::settings::{AcmeSettings, ChallengeKind};

/// The longest a whole order may take, validation included; past it the
/// order is abandoned and retried later.
pub const ORDER_DEADLINE: Duration = Duration::from_secs(300);

/// How often, and for how long, an order's state is polled while the CA
/// validates and issues.
fn polling() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(120))
}

/// Why an order failed, for the log; every failure is retried later.
#[derive(Debug)]
pub struct OrderError(String);

impl fmt::Display for OrderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl OrderError {
    fn at(step: &str, error: impl fmt::Display) -> OrderError {
        OrderError(format!("{step}: {error}"))
    }
}

/// Obtains a certificate for `settings.names`, stores it in `cache`, and
/// returns it. `challenges` is where the listeners find the answers.
pub async fn obtain(
    settings: &AcmeSettings,
    cache: &Cache,
    challenges: &Arc<Challenges>,
) -> Result<Issued, OrderError> {
    tokio::time::timeout(ORDER_DEADLINE, order(settings, cache, challenges))
        .await
        .unwrap_or_else(|_| {
            Err(OrderError(format!(
                "not done within {}s",
                ORDER_DEADLINE.as_secs()
            )))
        })
}

async fn order(
    settings: &AcmeSettings,
    cache: &Cache,
    challenges: &Arc<Challenges>,
) -> Result<Issued, OrderError> {
    let account = account(settings, cache).await?;
    let identifiers: Vec<Identifier> = settings
        .names
        .iter()
        .map(|name| Identifier::Dns(name.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| OrderError::at("new order", e))?;

    // Answer every pending authorization, then tell the CA to validate.
    let mut answers: Vec<Published> = Vec::with_capacity(identifiers.len());
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(|e| OrderError::at("authorization", e))?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(OrderError(format!(
                    "an authorization is {other:?}, not pending"
                )))
            }
        }
        let kind = match settings.challenge {
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            ChallengeKind::Http01 => ChallengeType::Http01,
        };
        let mut challenge = authorization.challenge(kind).ok_or_else(|| {
            OrderError(format!(
                "the CA offers no {} challenge; try the other challenge",
                settings.challenge.as_str()
            ))
        })?;
        let key_authorization = challenge.key_authorization();
        let answer = match settings.challenge {
            ChallengeKind::TlsAlpn01 => {
                let name = match challenge.identifier().identifier {
                    Identifier::Dns(name) => name.clone(),
                    other => {
                        return Err(OrderError(format!(
                            "the CA asks to prove {other:?}, not a DNS name"
                        )))
                    }
                };
                challenges
                    .publish_tls_alpn(&name, key_authorization.digest().as_ref())
                    .map_err(OrderError)?
            }
            ChallengeKind::Http01 => challenges.publish_http01(
                &challenge.token,
                key_authorization.as_str(),
                &challenges::http01_dir(&settings.cache),
            ),
        };
        answers.push(answer);
        challenge
            .set_ready()
            .await
            .map_err(|e| OrderError::at("challenge", e))?;
    }

    let status = order
        .poll_ready(&polling())
        .await
        .map_err(|e| OrderError::at("validation", e))?;
    if status != OrderStatus::Ready {
        return Err(OrderError(format!(
            "validation failed: the order is {status:?}"
        )));
    }
    // Validation is over: withdraw the answers.
    drop(answers);
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| OrderError::at("finalize", e))?;
    let chain_pem = order
        .poll_certificate(&polling())
        .await
        .map_err(|e| OrderError::at("certificate", e))?;
    let mut both = chain_pem.clone();
    both.push('\n');
    both.push_str(&key_pem);
    let issued = cache::parse(both.as_bytes())
        .map_err(|e| OrderError(format!("the CA's certificate: {e}")))?;
    if let Err(e) = cache.store_certificate(&chain_pem, &key_pem) {
        // Served anyway; the next start orders again.
        log::warn!(
            "acme: cannot store the certificate in {}: {e}",
            cache.certificate_path().display()
        );
    }
    Ok(issued)
}

/// The cached account at this directory, or a new one (then cached).
async fn account(settings: &AcmeSettings, cache: &Cache) -> Result<Account, OrderError> {
    let http = || AcmeHttp::new(settings.ca.as_deref()).map_err(OrderError);
    if let Some(json) = cache.account() {
        match serde_json::from_slice::<AccountCredentials>(&json) {
            Ok(credentials) => {
                return Account::builder_with_http(Box::new(http()?))
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| OrderError::at("account", e));
            }
            Err(e) => log::warn!("acme: the cached account does not parse ({e}); creating one"),
        }
    }
    let contact = settings
        .email
        .as_ref()
        .map(|email| format!("mailto:{email}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = Account::builder_with_http(Box::new(http()?))
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .map_err(|e| OrderError::at("new account", e))?;
    match serde_json::to_vec(&credentials) {
        Ok(json) => {
            if let Err(e) = cache.store_account(&json) {
                log::warn!("acme: cannot store the account in the cache: {e}");
            }
        }
        Err(e) => log::warn!("acme: cannot serialize the account: {e}"),
    }
    log::info!("acme: account created at {}", settings.directory);
    Ok(account)
}
