//! The front door: the Pingora app every listener hands its sessions to.
//!
//! An HTTP/2 request arrives with its header already read, so the front door
//! can look at it before anything else: a `GET` on a topic path is served
//! right here by [`subscriber::serve`], and every other request goes to the
//! reverse proxy ([`Proxy`] inside Pingora's `HttpProxy`). A subscriber
//! therefore costs only its own session and subscription, not the state of
//! Pingora's whole proxy pipeline (its per-request session, cache and module
//! contexts and the proxy future), which an idle stream would otherwise carry
//! for its whole life.
//!
//! HTTP/1.1 sessions go straight to the proxy: their request has not been
//! read yet, and the proxy's `request_filter` serves topics on them.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use crate::access_log::{self, AccessRecord};
use crate::hub::Hub;
use crate::proxy::Proxy;
use crate::subscriber;

/// Routes HTTP/2 topic streams to the hub and everything else to the proxy.
pub struct FrontDoor {
    /// The reverse proxy for ordinary requests (and HTTP/1.1 topics).
    proxy: Arc<HttpProxy<Proxy>>,
    /// The topics.
    hub: Hub,
}

impl FrontDoor {
    pub fn new(proxy: HttpProxy<Proxy>, hub: Hub) -> FrontDoor {
        FrontDoor {
            proxy: Arc::new(proxy),
            hub,
        }
    }
}

#[async_trait]
impl HttpServerApp for FrontDoor {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let route = if session.is_http2() && session.req_header().method == http::Method::GET {
            self.hub.find(session.req_header().uri.path())
        } else {
            None
        };
        let Some(route) = route else {
            return self.proxy.process_new_http(session, shutdown).await;
        };
        let started = Instant::now();
        match subscriber::serve(&mut session, &self.hub, &route).await {
            Ok(ending) => log::debug!("subscription to {} ended: {ending:?}", route.key),
            Err(e) => log::debug!("subscription to {} failed: {e}", route.key),
        }
        access_log::record(AccessRecord {
            session: &session,
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            duration: started.elapsed(),
        });
        // An HTTP/2 stream is never reused; dropping the session ends it.
        None
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.proxy.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.proxy.server_options()
    }

    async fn http_cleanup(&self) {
        self.proxy.http_cleanup().await
    }
}
