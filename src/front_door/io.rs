//! What a wrapper around a connection's [`Stream`] must pass through.
//!
//! The front door hands Pingora connections it watches or bounds (an HTTP/2
//! connection whose frames it counts, an HTTP/1.1 connection that ends where
//! one request ends). Pingora takes any [`Stream`] (`Box<dyn IO>`), and `IO`
//! is a bundle of traits: the wrappers implement reading and writing
//! themselves and pass everything else (addresses, TLS details, timings,
//! shutdown) to the stream they wrap, with [`pass_through_connection_info`].
//!
//! [`Stream`]: pingora::protocols::Stream

/// Implements Pingora's connection-information traits (`Shutdown`,
/// `UniqueID`, `Ssl`, `GetTimingDigest`, `GetProxyDigest`,
/// `GetSocketDigest`) for `$wrapper` by asking its `inner` stream.
macro_rules! pass_through_connection_info {
    ($wrapper:ty) => {
        #[async_trait::async_trait]
        impl pingora::protocols::Shutdown for $wrapper {
            async fn shutdown(&mut self) {
                pingora::protocols::Shutdown::shutdown(&mut *self.inner).await
            }
        }

        impl pingora::protocols::UniqueID for $wrapper {
            fn id(&self) -> pingora::protocols::UniqueIDType {
                self.inner.id()
            }
        }

        impl pingora::protocols::Ssl for $wrapper {
            fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
                self.inner.get_ssl()
            }

            fn get_ssl_digest(&self) -> Option<std::sync::Arc<pingora::protocols::tls::SslDigest>> {
                self.inner.get_ssl_digest()
            }

            fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
                self.inner.selected_alpn_proto()
            }
        }

        impl pingora::protocols::GetTimingDigest for $wrapper {
            fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
                self.inner.get_timing_digest()
            }

            fn get_read_pending_time(&self) -> std::time::Duration {
                self.inner.get_read_pending_time()
            }

            fn get_write_pending_time(&self) -> std::time::Duration {
                self.inner.get_write_pending_time()
            }
        }

        impl pingora::protocols::GetProxyDigest for $wrapper {
            fn get_proxy_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::raw_connect::ProxyDigest>> {
                self.inner.get_proxy_digest()
            }

            fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
                self.inner.set_proxy_digest(digest)
            }
        }

        impl pingora::protocols::GetSocketDigest for $wrapper {
            fn get_socket_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::SocketDigest>> {
                self.inner.get_socket_digest()
            }

            fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
                self.inner.set_socket_digest(digest)
            }
        }
    };
}

pub(super) use pass_through_connection_info;
