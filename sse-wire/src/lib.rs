//! Server-Sent Events: the wire format the proxy reads from upstream and
//! writes to subscribers.
//!
//! The proxy reads ONE upstream event stream per topic. That stream is fed,
//! chunk by chunk as it arrives from the network, to a [`Parser`], which
//! interprets it exactly as the WHATWG HTML Standard ("Server-sent events",
//! event stream interpretation and parsing) says a browser would, and yields
//! [`Item`]s: dispatched [`Event`]s, comments, and the blocks it skipped for
//! breaking a [`ParserLimits`] bound (a block is discarded whole and the stream
//! goes on, so one oversized event never stops a topic). Each event is then
//! encoded once with [`Event::encode`] into a [`bytes::Bytes`] that is stored
//! in the topic's replay window and handed to every subscriber; cloning it is
//! a reference-count increment, so fan-out never copies or re-encodes. What
//! the proxy originates itself comes from the free functions in this crate:
//! lines that dispatch nothing in any client (heartbeats, comments, `retry:`),
//! and id-only priming frames for late joiners.
//!
//! The crate is pure: no I/O, no async, no global state. Memory held by a
//! parser is bounded by [`ParserLimits`], so a hostile upstream cannot make the
//! proxy grow without bound. It is a crate of its own, depending on `bytes` and
//! `memchr` alone, so that the fuzz target (`fuzz/`) builds it without the
//! proxy and Pingora; the proxy re-exports it as `sse_fanout::sse`.

mod event;
mod parser;

pub use self::event::{
    comment_lines, heartbeat_line, id_frame, padded_heartbeat_line, retry_line, Event,
    EventBuilder, EventError, DEFAULT_EVENT_TYPE,
};
pub use self::parser::{
    Item, ParseError, Parser, ParserLimits, DEFAULT_MAX_EVENT_SIZE, DEFAULT_MAX_LINE_LEN,
};
