//! The HTTPS client the ACME protocol runs on: instant-acme's own stack
//! (hyper and rustls), built here so that every request, body included,
//! has a deadline, and so that a private ACME server's CA (`ca = "..."`)
//! can be trusted instead of the system's store.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use rustls::crypto::ring::default_provider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The longest one request to the ACME server may take, answer included.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// An ACME server's HTTPS, each request bounded by [`REQUEST_DEADLINE`].
pub struct AcmeHttp {
    inner: Box<dyn HttpClient>,
}

impl AcmeHttp {
    /// A client trusting the CAs in the PEM file `ca`, or the system's
    /// store when `None`.
    pub fn new(ca: Option<&Path>) -> Result<AcmeHttp, String> {
        let provider = Arc::new(default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let connector = match ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                let certificates = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                for certificate in certificates {
                    let certificate =
                        certificate.map_err(|e| format!("{}: {e}", path.display()))?;
                    roots
                        .add(certificate)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("{} holds no certificate", path.display()));
                }
                let config = builder.with_root_certificates(roots).with_no_client_auth();
                HttpsConnectorBuilder::new().with_tls_config(config)
            }
            None => HttpsConnectorBuilder::new()
                .with_provider_and_platform_verifier(provider)
                .map_err(|e| format!("the system's certificate store: {e}"))?,
        };
        let connector = connector.https_only().enable_http1().enable_http2().build();
        let client: Client<_, BodyWrapper<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        Ok(AcmeHttp {
            inner: Box::new(client),
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        request: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let response = self.inner.request(request);
        Box::pin(async move {
            let whole = async {
                let mut response = response.await?;
                let body = response.body.into_bytes().await.map_err(Error::Other)?;
                Ok(BytesResponse::from(http::Response::from_parts(
                    response.parts,
                    Full::new(body),
                )))
            };
            tokio::time::timeout(REQUEST_DEADLINE, whole)
                .await
                .unwrap_or(Err(Error::Str("the ACME server did not answer in time")))
        })
    }
}
