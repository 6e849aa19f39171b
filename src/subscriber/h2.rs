//! An event stream on an HTTP/2 stream, written straight into the `h2`
//! crate's send stream.
//!
//! Its connection's task serves it (`front_door/h2_connection.rs`): a write
//! only queues a DATA frame in the connection, and the connection writes
//! every stream's frames together when the task next drives it, so the
//! subscribers of one connection share one TLS record and one system call
//! per wake-up. Only what the client's flow-control window allows is
//! queued; a client that keeps its window shut makes the write wait, and
//! the subscriber's lag bound and write deadline (`subscriber::serve`)
//! decide when to give up on it.

use std::future::{poll_fn, Future};

use bytes::Bytes;
use h2::{Reason, SendStream};
use pingora::{Error, ErrorType, OrErr};

use super::EventSink;

/// The send half of an HTTP/2 stream whose response head is written.
pub struct H2EventStream {
    send: SendStream<Bytes>,
    /// Body bytes queued so far, for the access log.
    sent: usize,
}

impl H2EventStream {
    /// The stream `send` writes to.
    pub fn new(send: SendStream<Bytes>) -> H2EventStream {
        H2EventStream { send, sent: 0 }
    }

    /// Body bytes written so far.
    pub fn bytes_sent(&self) -> usize {
        self.sent
    }

    /// Resets the stream: an end that is not clean (the client stopped
    /// reading, or did not take the end in time), so the client knows its
    /// stream is incomplete and reconnects.
    pub fn cancel(&mut self) {
        self.send.send_reset(Reason::CANCEL);
    }
}

impl EventSink for H2EventStream {
    async fn write(&mut self, frame: Bytes) -> pingora::Result<()> {
        let mut rest = frame;
        while !rest.is_empty() {
            // The window usually has room: capacity is granted at once, and
            // this completes without waiting.
            self.send.reserve_capacity(rest.len());
            let granted = match poll_fn(|cx| self.send.poll_capacity(cx)).await {
                Some(granted) => granted.or_err(ErrorType::WriteError, "waiting for window")?,
                None => {
                    return Err(Error::explain(
                        ErrorType::WriteError,
                        "the stream closed while waiting for window",
                    ))
                }
            };
            if granted == 0 {
                continue;
            }
            let part = rest.split_to(granted.min(rest.len()));
            self.sent += part.len();
            self.send
                .send_data(part, false)
                .or_err(ErrorType::WriteError, "writing to an HTTP/2 stream")?;
        }
        Ok(())
    }

    async fn closed(&mut self) {
        // A reset from the client, or the connection's end.
        let _ = poll_fn(|cx| self.send.poll_reset(cx)).await;
    }

    fn finish(&mut self) -> impl Future<Output = pingora::Result<()>> + Send {
        let ended = self
            .send
            .send_data(Bytes::new(), true)
            .or_err(ErrorType::WriteError, "ending an HTTP/2 stream");
        std::future::ready(ended)
    }
}
