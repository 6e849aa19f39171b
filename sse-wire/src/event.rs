//! The event the parser dispatches, and its encoding to wire bytes.
//!
//! The proxy parses its single upstream stream per topic once, and every
//! dispatched [`Event`] is encoded exactly once, by [`Event::encode`], into a
//! [`Bytes`] frame. That frame goes into the topic's replay window and is
//! handed to every subscriber; cloning a `Bytes` is a reference-count
//! increment, so fan-out costs no copies and no re-encoding.
//!
//! An [`Event`] can only hold values that keep the stream's framing intact:
//! its fields are private, the public way to build one ([`EventBuilder`])
//! rejects an `id` containing CR, LF or NUL and an event type containing CR or
//! LF, and line ends inside `data` are normalised to LF (each line becomes its
//! own `data:` line on the wire). The parser builds events through a
//! module-internal constructor, since its values are valid by construction
//! (lines are split on CR and LF, and an `id` with NUL is ignored). This makes
//! `parse(encode(e)) == e` hold for every event that can exist.
//!
//! What the proxy originates itself is built by the free functions at the
//! bottom, in two shapes:
//! - **lines** ([`heartbeat_line`], [`comment_lines`], [`retry_line`]): no
//!   blank line of their own, so they dispatch nothing in any client. They
//!   join the block that follows (a `retry:` line written at the start of a
//!   stream travels with the first event) or end with the stream. Many
//!   clients (`@microsoft/fetch-event-source`, `httpx-sse`, SDKs on them)
//!   hand the application an empty event for every blank line, so a
//!   heartbeat `:` LF LF would be an empty event every interval there.
//! - **frames** ([`Event::encode`], [`id_frame`]): whole blocks, ending with
//!   the blank line that makes a browser dispatch.
//!
//! Wire layout of an event frame: `id`, `event`, `retry`, then one `data` line
//! per data line, each written as `name: value` followed by LF, and one blank
//! line (a lone LF) that makes the browser dispatch. A field is written only
//! when present. Lines are only ever written at an event boundary (before a
//! frame, or after one), so the stream a subscriber gets is at an event
//! boundary after every frame, whatever order the proxy splices replayed and
//! live frames in.

use std::fmt;

use bytes::{Bytes, BytesMut};

/// The event type a browser uses when a block has no `event` field (or an
/// empty one); listeners for `"message"` receive those events.
pub const DEFAULT_EVENT_TYPE: &str = "message";

/// Field name that sets the browser's last event ID.
const ID_FIELD: &[u8] = b"id";
/// Field name that sets the event type.
const EVENT_FIELD: &[u8] = b"event";
/// Field name that sets the reconnection time, in milliseconds.
const RETRY_FIELD: &[u8] = b"retry";
/// Field name whose value is appended, as one line, to the event's data.
const DATA_FIELD: &[u8] = b"data";
/// Written between a field name and its value. The space is optional in the
/// format but conventional; the parser strips exactly one, so a value that
/// itself starts with a space survives the round trip.
const FIELD_SEPARATOR: &[u8] = b": ";
/// Starts a comment line.
const COMMENT_PREFIX: u8 = b':';
/// The line end the encoder writes; the format also accepts CR and CRLF.
const LINE_END: u8 = b'\n';
/// Also a line end in the format (alone or before LF); never written.
const CARRIAGE_RETURN: u8 = b'\r';
/// The heartbeat: an empty comment line, and no blank line.
const HEARTBEAT_LINE: &[u8] = b":\n";
/// Enough room for the decimal digits of any `u64` (`u64::MAX` has 20).
const MAX_U64_DECIMAL_DIGITS: usize = 20;
/// Radix of the decimal numbers in `retry` fields.
const DECIMAL_RADIX: u64 = 10;

/// One dispatch of the event stream: what a blank line completed.
///
/// It exists in two flavours that the proxy handles alike (store, replay,
/// forward): a *message event* (`data` is `Some`), which a browser fires at
/// its `EventSource`, and a *bookkeeping block* (`data` is `None`), which
/// fires nothing but moved the last event ID or set the reconnection time;
/// the proxy forwards those too, so subscribers' resume positions stay right.
///
/// Invariants (upheld by every constructor, relied on by [`Event::encode`]):
/// at least one of `id`, `data`, `retry` is present; `id` has no CR, LF or NUL;
/// `event_type` has no CR or LF, is never empty, and is present only with
/// `data`; `data` has no CR.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// `Some` when this block set the last event ID (`Some("")` resets it);
    /// `None` when the block left it unchanged. The proxy uses it to track
    /// where each subscriber may resume.
    id: Option<String>,
    /// The event type, which picks the browser listener; `None` means the
    /// default, [`DEFAULT_EVENT_TYPE`]. An explicit `event: message` stays
    /// `Some("message")`, so upstream bytes are reproduced faithfully.
    event_type: Option<String>,
    /// The event's data, lines joined with LF (the trailing LF the format
    /// leaves is removed). `None` when the block had no `data` field: no event
    /// fires. `Some("")` is an event with empty data (a bare `data` line).
    data: Option<String>,
    /// Reconnection time in milliseconds, when a valid `retry` field appeared
    /// in this block; it tells the browser how long to wait before
    /// reconnecting.
    retry: Option<u64>,
}

impl Event {
    /// A message event of the default type carrying `data`. Line ends in
    /// `data` (CR, LF or CRLF) are normalised to LF; each line is written as
    /// its own `data:` line.
    pub fn message(data: impl Into<String>) -> Event {
        Event {
            id: None,
            event_type: None,
            data: Some(normalise_line_ends(data.into())),
            retry: None,
        }
    }

    /// Starts building an event with any combination of fields; values are
    /// checked by [`EventBuilder::build`].
    pub fn builder() -> EventBuilder {
        EventBuilder::default()
    }

    /// Constructor for the parser, whose values are valid by construction:
    /// it never sees CR or LF inside a line, ignores an `id` containing NUL,
    /// passes an empty event type as `None`, and dispatches only blocks with
    /// something observable. Checked in debug builds.
    pub(crate) fn from_parsed_block(
        id: Option<String>,
        event_type: Option<String>,
        data: Option<String>,
        retry: Option<u64>,
    ) -> Event {
        let event = Event {
            id,
            event_type,
            data,
            retry,
        };
        debug_assert!(
            event.framing_error().is_none() && event.is_normalised(),
            "{event:?}"
        );
        event
    }

    /// The last event ID this block set (`Some("")` resets it), or `None`
    /// when it left the last event ID unchanged.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The explicit event type, or `None` for the default
    /// ([`DEFAULT_EVENT_TYPE`]).
    pub fn event_type(&self) -> Option<&str> {
        self.event_type.as_deref()
    }

    /// The event type a browser would give the fired event: the explicit one,
    /// or [`DEFAULT_EVENT_TYPE`].
    pub fn event_type_or_default(&self) -> &str {
        self.event_type.as_deref().unwrap_or(DEFAULT_EVENT_TYPE)
    }

    /// The data, lines joined with LF; `None` when the block carried no data.
    pub fn data(&self) -> Option<&str> {
        self.data.as_deref()
    }

    /// The reconnection time in milliseconds this block set, if any.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Whether a browser fires an event for this block (it has data), as
    /// opposed to a block that only moved the last event ID or set `retry`.
    pub fn fires_event(&self) -> bool {
        self.data.is_some()
    }

    /// The exact number of bytes [`Event::encode`] produces.
    pub fn encoded_len(&self) -> usize {
        let mut len = 1; // the blank line that dispatches
        if let Some(id) = &self.id {
            len += field_line_len(ID_FIELD, id.len());
        }
        if let Some(event_type) = &self.event_type {
            len += field_line_len(EVENT_FIELD, event_type.len());
        }
        if let Some(retry) = self.retry {
            len += field_line_len(RETRY_FIELD, decimal_len(retry));
        }
        if let Some(data) = &self.data {
            // Each LF inside the data becomes the end of one `data:` line and
            // the start of the next, so it is paid for by the per-line cost.
            let lines = count_line_ends(data.as_bytes()) + 1;
            len += lines * field_line_len(DATA_FIELD, 0) + data.len() - (lines - 1);
        }
        len
    }

    /// Encodes the event once into shareable wire bytes (see the module
    /// documentation for the layout). The buffer is sized exactly up front.
    pub fn encode(&self) -> Bytes {
        // Exact sizing also lets `freeze` hand the allocation over without a
        // second allocation for the shared header.
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.write_fields(&mut buf);
        debug_assert_eq!(buf.len(), buf.capacity());
        Bytes::from(buf)
    }

    /// Appends the event's wire bytes to `buf`, for callers that batch
    /// several frames into one buffer.
    pub fn encode_into(&self, buf: &mut BytesMut) {
        buf.reserve(self.encoded_len());
        self.write_fields(buf);
    }

    /// Writes the wire bytes into `buf`, which must already have room.
    fn write_fields(&self, buf: &mut impl WireSink) {
        if let Some(id) = &self.id {
            put_field_line(buf, ID_FIELD, id.as_bytes());
        }
        if let Some(event_type) = &self.event_type {
            put_field_line(buf, EVENT_FIELD, event_type.as_bytes());
        }
        if let Some(retry) = self.retry {
            put_retry_line(buf, retry);
        }
        if let Some(data) = &self.data {
            let data = data.as_bytes();
            // Indexing rather than `get`, which costs measurably on this hot
            // path (once per data line of every event). In bounds:
            // `memchr_iter` yields the positions of the LFs in `data` in
            // ascending order, each below `data.len()`, and `line_start` is 0
            // or one past the previous LF, so `line_start <= line_end <
            // data.len()` in the loop and `line_start <= data.len()` after it.
            let mut line_start = 0;
            for line_end in memchr::memchr_iter(LINE_END, data) {
                #[allow(clippy::indexing_slicing)] // in bounds: see above
                put_field_line(buf, DATA_FIELD, &data[line_start..line_end]);
                line_start = line_end + 1;
            }
            #[allow(clippy::indexing_slicing)] // in bounds: see above
            put_field_line(buf, DATA_FIELD, &data[line_start..]);
        }
        buf.put(&[LINE_END]);
    }

    /// The first rule this combination of fields breaks, if any; `None` for
    /// every event the public API lets exist.
    fn framing_error(&self) -> Option<EventError> {
        if self.id.is_none() && self.data.is_none() && self.retry.is_none() {
            return Some(EventError::NothingToDispatch);
        }
        if let Some(id) = &self.id {
            if has_line_break(id) {
                return Some(EventError::IdContainsLineBreak);
            }
            if id.as_bytes().contains(&0) {
                return Some(EventError::IdContainsNul);
            }
        }
        if let Some(event_type) = &self.event_type {
            if has_line_break(event_type) {
                return Some(EventError::EventTypeContainsLineBreak);
            }
            if self.data.is_none() {
                return Some(EventError::EventTypeWithoutData);
            }
        }
        None
    }

    /// Whether the values are in the one form the parser reads back: an
    /// explicit event type is never empty (empty means the default, `None`)
    /// and data has no CR (line ends are LF).
    fn is_normalised(&self) -> bool {
        self.event_type.as_deref() != Some("")
            && !self.data.as_deref().is_some_and(|data| data.contains('\r'))
    }
}

/// Collects the fields of an [`Event`] so they can be checked together by
/// [`EventBuilder::build`]; it is the public way to make any event other than
/// a plain message.
#[derive(Clone, Debug, Default)]
pub struct EventBuilder {
    /// The last event ID to set; see [`Event::id`].
    id: Option<String>,
    /// The event type; see [`Event::event_type`].
    event_type: Option<String>,
    /// The data; see [`Event::data`].
    data: Option<String>,
    /// The reconnection time in milliseconds; see [`Event::retry`].
    retry: Option<u64>,
}

impl EventBuilder {
    /// Sets the last event ID; `""` resets the browser's last event ID. Must
    /// not contain CR, LF or NUL.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the event type. Must not contain CR or LF. `""` means the default
    /// type, exactly as the format treats an empty `event` field, and is
    /// stored as no explicit type.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Sets the data; CR, LF and CRLF are all line ends and are normalised to
    /// LF, which is how the data reads back after parsing.
    pub fn data(mut self, data: impl Into<String>) -> Self {
        self.data = Some(data.into());
        self
    }

    /// Sets the reconnection time, in milliseconds.
    pub fn retry(mut self, retry_ms: u64) -> Self {
        self.retry = Some(retry_ms);
        self
    }

    /// Checks the fields and makes the event.
    ///
    /// # Errors
    /// [`EventError`] when a value would break the stream's framing, or the
    /// combination would dispatch nothing a subscriber could observe.
    pub fn build(self) -> Result<Event, EventError> {
        let event = Event {
            id: self.id,
            event_type: self.event_type.filter(|event_type| !event_type.is_empty()),
            data: self.data.map(normalise_line_ends),
            retry: self.retry,
        };
        debug_assert!(event.is_normalised());
        match event.framing_error() {
            None => Ok(event),
            Some(error) => Err(error),
        }
    }
}

/// Why a set of fields cannot be an [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventError {
    /// The `id` contains CR or LF, which would end the field early and inject
    /// whatever follows as further fields.
    IdContainsLineBreak,
    /// The `id` contains NUL; browsers ignore such an `id` field, so it could
    /// never take effect.
    IdContainsNul,
    /// The event type contains CR or LF, which would break the framing.
    EventTypeContainsLineBreak,
    /// An event type without data: no event fires, so the type would be
    /// discarded by every browser.
    EventTypeWithoutData,
    /// No `id`, `data` or `retry`: the frame would dispatch nothing
    /// observable.
    NothingToDispatch,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventError::IdContainsLineBreak => "SSE event id must not contain CR or LF",
            EventError::IdContainsNul => "SSE event id must not contain NUL",
            EventError::EventTypeContainsLineBreak => "SSE event type must not contain CR or LF",
            EventError::EventTypeWithoutData => {
                "SSE event type given without data: no event would fire"
            }
            EventError::NothingToDispatch => {
                "SSE event needs at least one of id, data or retry to be observable"
            }
        })
    }
}

impl std::error::Error for EventError {}

/// The heartbeat: `:` LF, a comment line alone, to keep idle subscriber
/// connections (and the intermediaries on their path) from timing out.
///
/// No blank line follows it: written at an event boundary, it dispatches
/// nothing in any client, where `:` LF LF is an empty event in every client
/// that dispatches on each blank line. Static: this allocates nothing.
pub fn heartbeat_line() -> Bytes {
    Bytes::from_static(HEARTBEAT_LINE)
}

/// A heartbeat with `padding` spaces after the `:`, for intermediaries that
/// hold a stream until enough bytes have passed. `0` is [`heartbeat_line`].
pub fn padded_heartbeat_line(padding: usize) -> Bytes {
    if padding == 0 {
        return heartbeat_line();
    }
    let mut line = Vec::with_capacity(padding + 2);
    line.push(COMMENT_PREFIX);
    line.resize(padding + 1, b' ');
    line.push(LINE_END);
    Bytes::from(line)
}

/// `text` as one or more comment lines, and no blank line (as
/// [`heartbeat_line`]). `text` is written verbatim after the `:`, matching
/// how the parser reports comments (text after the colon, leading space
/// kept), so pass `" ping"` to get `: ping`. CR, LF and CRLF in `text` start a
/// new comment line, so text cannot break framing.
pub fn comment_lines(text: &str) -> Bytes {
    let text = text.as_bytes();
    let line_breaks = memchr::memchr2_iter(CARRIAGE_RETURN, LINE_END, text).count();
    // Each line costs its `:` and LF. Exact when `text` has no CRLF (which
    // counts as two breaks but makes one line).
    let mut buf = Vec::with_capacity(text.len() + 2 * (line_breaks + 1));
    let mut rest = text;
    while let Some(line_len) = memchr::memchr2(CARRIAGE_RETURN, LINE_END, rest) {
        buf.push(COMMENT_PREFIX);
        buf.extend_from_slice(rest.get(..line_len).unwrap_or_default());
        buf.push(LINE_END);
        // Step over the line end, CRLF as one. (What follows `line_len` is
        // never empty: it starts with the CR or LF just found.)
        rest = match rest.get(line_len..).unwrap_or_default() {
            [CARRIAGE_RETURN, LINE_END, after @ ..] | [_, after @ ..] => after,
            [] => &[],
        };
    }
    buf.push(COMMENT_PREFIX);
    buf.extend_from_slice(rest);
    buf.push(LINE_END);
    Bytes::from(buf)
}

/// `retry: N`, a line that sets the reconnection time, and no blank line:
/// a browser applies it as the line is read, so it needs no block of its own.
/// At the start of a stream it joins the first event's block; before the
/// end of a stream it is simply the last line.
pub fn retry_line(retry_ms: u64) -> Bytes {
    let mut buf = Vec::with_capacity(field_line_len(RETRY_FIELD, MAX_U64_DECIMAL_DIGITS));
    put_retry_line(&mut buf, retry_ms);
    Bytes::from(buf)
}

/// An id-only priming frame (`id: X` then a blank line): it sets the
/// browser's last event ID without firing an event, so a subscriber that
/// reconnects resumes from `id`. `""` resets the last event ID.
///
/// # Errors
/// [`EventError::IdContainsLineBreak`] or [`EventError::IdContainsNul`].
pub fn id_frame(id: &str) -> Result<Bytes, EventError> {
    Ok(Event::builder().id(id).build()?.encode())
}

/// Length of one `name: value` line with its line end.
fn field_line_len(name: &[u8], value_len: usize) -> usize {
    name.len() + FIELD_SEPARATOR.len() + value_len + 1
}

/// Writes one `name: value` line with its line end.
fn put_field_line(buf: &mut impl WireSink, name: &[u8], value: &[u8]) {
    buf.put(name);
    buf.put(FIELD_SEPARATOR);
    buf.put(value);
    buf.put(&[LINE_END]);
}

/// Writes the `retry: N` line without going through `fmt`.
fn put_retry_line(buf: &mut impl WireSink, retry_ms: u64) {
    let mut digits = [0u8; MAX_U64_DECIMAL_DIGITS];
    let mut start = digits.len();
    let mut rest = retry_ms;
    // Digits are written from the right, one per turn; a u64 has at most as
    // many as `digits` holds, so `start` never leaves it (`get` is as cheap
    // as indexing here).
    loop {
        start -= 1;
        // `rest % 10` is a single decimal digit, so the cast cannot truncate.
        if let Some(digit) = digits.get_mut(start) {
            *digit = b'0' + (rest % DECIMAL_RADIX) as u8;
        }
        rest /= DECIMAL_RADIX;
        if rest == 0 {
            break;
        }
    }
    put_field_line(buf, RETRY_FIELD, digits.get(start..).unwrap_or_default());
}

/// A buffer frames are written into: a `Vec` for a frame of its own (turned
/// into `Bytes` without copying), or a caller's `BytesMut`.
trait WireSink {
    /// Appends `bytes`; room has been reserved beforehand.
    fn put(&mut self, bytes: &[u8]);
}

impl WireSink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl WireSink for BytesMut {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Bytes counted per block by [`count_line_ends`]: few enough that a `u8`
/// count cannot overflow, which lets the compiler count 16 or 32 bytes per
/// instruction.
const COUNT_BLOCK_LEN: usize = 64;

/// Number of LFs in `bytes`. For event-sized inputs this vectorised loop
/// beats a call into `memchr`'s counter, which was the encoder's hot spot.
fn count_line_ends(bytes: &[u8]) -> usize {
    let blocks = bytes.chunks_exact(COUNT_BLOCK_LEN);
    let tail = blocks.remainder();
    let in_blocks: usize = blocks
        .map(|block| {
            let in_block: u8 = block.iter().map(|&byte| u8::from(byte == LINE_END)).sum();
            usize::from(in_block)
        })
        .sum();
    in_blocks + tail.iter().filter(|&&byte| byte == LINE_END).count()
}

/// Number of decimal digits in `n`.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Whether `s` contains a character that ends a line in the format.
fn has_line_break(s: &str) -> bool {
    memchr::memchr2(CARRIAGE_RETURN, LINE_END, s.as_bytes()).is_some()
}

/// Rewrites CR and CRLF line ends to LF; returns `s` untouched (no copy) when
/// it has no CR.
fn normalise_line_ends(s: String) -> String {
    if !s.contains('\r') {
        return s;
    }
    let mut normalised = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' {
            chars.next_if_eq(&'\n');
            normalised.push('\n');
        } else {
            normalised.push(c);
        }
    }
    normalised
}
