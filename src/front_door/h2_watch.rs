//! An HTTP/2 connection as the front door hands it to h2.
//!
//! To tell HTTP/2 from HTTP/1.x (and to bound the wait for it), the front
//! door reads the client's preface itself; [`WatchedH2`] hands h2 those
//! bytes first, then the rest of the connection.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use pingora::protocols::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::io::pass_through_connection_info;

/// An HTTP/2 connection's stream, its first bytes read already.
#[derive(Debug)]
pub(super) struct WatchedH2 {
    inner: Stream,
    /// Bytes read before h2 took over (the client preface and what came
    /// with it), handed to h2 first.
    replay: BytesMut,
}

impl WatchedH2 {
    pub(super) fn new(inner: Stream, replay: BytesMut) -> WatchedH2 {
        WatchedH2 { inner, replay }
    }
}

impl AsyncRead for WatchedH2 {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            if this.replay.is_empty() {
                // Give its memory back: the connection may live for hours.
                this.replay = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WatchedH2 {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait::async_trait]
impl pingora::protocols::Peek for WatchedH2 {
    /// Pingora peeks for the h2c preface on plaintext connections: it is in
    /// the replayed bytes.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.replay.len() < buf.len() {
            return Ok(false);
        }
        buf.copy_from_slice(&self.replay[..buf.len()]);
        Ok(true)
    }
}

pass_through_connection_info!(WatchedH2);
