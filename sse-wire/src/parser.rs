//! Incremental parser for an event stream (`text/event-stream`).
//!
//! The proxy reads ONE upstream stream per topic and feeds every chunk it
//! receives, as it arrives, to one [`Parser`]. The parser interprets the bytes
//! exactly as the WHATWG HTML Standard ("Server-sent events", event stream
//! interpretation and parsing) says a browser does, and yields [`Item`]s:
//! the [`Event`]s each blank line dispatches, which the proxy encodes once and
//! fans out, the comments, which it may forward or drop, and the blocks it
//! skipped for breaking a limit, which the proxy counts. The result never
//! depends on where chunk boundaries fall: a CR ending one chunk and an LF
//! starting the next are one line end, and a BOM or a multi-byte UTF-8
//! character may be split anywhere.
//!
//! Decoding: the stream is UTF-8, decoded with U+FFFD replacement and one
//! leading BOM stripped, as the spec's "UTF-8 decode" does. The parser splits
//! lines (and fields at their first `:`) on the raw bytes and decodes each
//! value separately: it checks a whole chunk with `str::from_utf8` in one
//! pass, and any value that is not valid goes through
//! [`String::from_utf8_lossy`]. That gives the same text as decoding the
//! whole stream first, because CR, LF, `:` and space are ASCII and neither
//! decoder ever consumes an ASCII byte into an invalid sequence: both replace
//! each maximal invalid subpart with one U+FFFD and resume at the next byte.
//! (A property test checks this against a decode-first transcription of the
//! spec.)
//!
//! Last event ID: [`Parser::last_event_id`] is the value a browser would
//! send as `Last-Event-ID`, i.e. the spec's last event ID buffer as of the
//! latest dispatch. An `id` in a block that the end of the stream cuts off is
//! not taken.
//!
//! Bounds: a block (the lines up to and including the blank line that ends
//! it) with a line longer than [`ParserLimits::max_line_len`], or whose event grows
//! larger than [`ParserLimits::max_event_size`], is skipped. As soon as the limit
//! is broken (an over-long line at its first excess byte, however small the
//! chunks; an oversized event at the end of the line that makes it too
//! large), the parser drops what it holds of the block, reports
//! [`Item::Skipped`], and then discards every byte up to and including that
//! blank line, keeping nothing but whether the current line is still empty. Nothing of a skipped block takes effect (its `id`,
//! `retry`, event type or data), and parsing resumes with the line after the
//! blank line. So what the parser holds stays bounded whatever the upstream
//! sends, and an oversized event costs that event alone: the stream is never
//! stopped, so an app that replays the event after a reconnection cannot
//! wedge its topic in a reconnect loop.
//!
//! Where this differs from a browser, on purpose:
//! - A `retry` field takes effect in a browser the moment its line is read;
//!   here it is reported with the block's dispatch ([`Event::retry`]), so a
//!   `retry` in an unterminated block at end of stream is discarded with it.
//! - A `retry` value too large for a `u64` is ignored (as Chromium does); the
//!   spec gives no upper bound.
//! - A block with no data is not an event a browser fires, but it is still
//!   reported (with `data` `None`) when it set the last event ID or `retry`,
//!   so the proxy can track resume positions.

use std::borrow::Cow;
use std::fmt;
use std::mem;

use crate::event::Event;

/// Default for [`ParserLimits::max_line_len`]: 1 MiB, far above any sane line yet
/// small enough that one connection cannot exhaust memory.
pub const DEFAULT_MAX_LINE_LEN: usize = 1 << 20;
/// Default for [`ParserLimits::max_event_size`]: 1 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1 << 20;

/// The UTF-8 byte order mark, stripped once at the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";
/// Line feed: a line end on its own, or the second half of CRLF.
const LF: u8 = b'\n';
/// Carriage return: a line end on its own, or the first half of CRLF.
const CR: u8 = b'\r';
/// Separates a field's name from its value; a line starting with it is a
/// comment.
const COLON: u8 = b':';
/// One of these is removed from the start of a field value.
const SPACE: u8 = b' ';
/// An `id` value containing this is ignored.
const NUL: u8 = 0;
/// Radix of the number in a `retry` field.
const DECIMAL_RADIX: u64 = 10;

/// Field name: append the value as one line of the event's data.
const DATA_FIELD: &[u8] = b"data";
/// Field name: set the event type.
const EVENT_FIELD: &[u8] = b"event";
/// Field name: set the last event ID.
const ID_FIELD: &[u8] = b"id";
/// Field name: set the reconnection time.
const RETRY_FIELD: &[u8] = b"retry";

/// How much one upstream connection may make the parser hold, so a hostile
/// or broken upstream cannot grow the proxy's memory without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParserLimits {
    /// The longest line accepted, in bytes, not counting its line end.
    /// Bounds the bytes buffered while waiting for a line to end.
    pub max_line_len: usize,
    /// The largest event accepted, in bytes: its data buffer (each `data`
    /// line's decoded value plus one LF) plus its event type plus the `id` it
    /// sets. Bounds what accumulates across the lines of one block.
    pub max_event_size: usize,
}

impl Default for ParserLimits {
    fn default() -> ParserLimits {
        ParserLimits {
            max_line_len: DEFAULT_MAX_LINE_LEN,
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
        }
    }
}

/// One thing the parser recognised in the stream, in stream order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Item {
    /// What a blank line dispatched, reported only when something observable
    /// happened: the block had data, or set the last event ID, or set `retry`.
    Event(Event),
    /// A comment line's text: everything after the leading `:`, kept exactly
    /// as sent (a leading space is NOT stripped, so `: ping` gives `" ping"`),
    /// which lets the proxy forward it byte for byte with
    /// [`comment_lines`](crate::comment_lines). Comments never affect
    /// dispatch; upstreams use them as heartbeats.
    Comment(String),
    /// A block broke a limit and was discarded whole, so that the stream can
    /// go on. Reported once per block, at the line that broke the limit:
    /// what the block completed before that line (its comments) was already
    /// reported; the rest of it, up to and including the blank line that
    /// ends it, yields nothing. Its `id`, `retry`, event type and data
    /// never take effect ([`Parser::last_event_id`] stays what it was). The
    /// proxy counts these and keeps the upstream connected.
    Skipped(ParseError),
}

/// Why a block was skipped ([`Item::Skipped`]): which limit it broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// A line grew past [`ParserLimits::max_line_len`] (the limit, in bytes).
    LineTooLong {
        /// The limit in force.
        limit: usize,
    },
    /// An event grew past [`ParserLimits::max_event_size`] (the limit, in bytes).
    EventTooLarge {
        /// The limit in force.
        limit: usize,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::LineTooLong { limit } => write!(
                f,
                "SSE line longer than the maximum line length (max_line_len) of {limit} bytes"
            ),
            ParseError::EventTooLarge { limit } => write!(
                f,
                "SSE event larger than the maximum event size (max_event_size) of {limit} bytes"
            ),
        }
    }
}

impl std::error::Error for ParseError {}

/// Where the parser is with respect to the BOM that may start a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamStart {
    /// At the start of a stream; this many bytes of a BOM have arrived (the
    /// BOM may be split across chunks).
    AwaitingBom {
        /// Bytes of [`BOM`] matched so far, always fewer than its length.
        matched: usize,
    },
    /// The BOM was stripped, or the stream did not start with one; any later
    /// U+FEFF is ordinary text.
    Past,
}

/// What the parser does with the lines of the block in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    /// Lines are interpreted and the block is collected for dispatch.
    Collecting,
    /// The block broke a limit: its lines are discarded unread and
    /// unbuffered, up to and including the blank line that ends it.
    Discarding {
        /// No byte of the current line has arrived yet, so the next line end
        /// ends a blank line, and with it the block.
        at_line_start: bool,
    },
}

/// Where in a chunk a block broke a limit.
#[derive(Clone, Copy, Debug)]
struct Violation {
    /// The limit broken.
    error: ParseError,
    /// Index, in the slice being parsed, of the offending line's end, or the
    /// slice's length if the line has not ended yet. Discarding starts
    /// there, in the middle of that (non-empty) line.
    line_end: usize,
}

impl Violation {
    /// A violation of `error` by the line that ends at `line_end`.
    fn at(line_end: usize) -> impl FnOnce(ParseError) -> Violation {
        move |error| Violation { error, line_end }
    }
}

/// The incremental event-stream parser for one upstream stream.
///
/// Feed it chunks with [`Parser::feed`]; call [`Parser::finish`] when the
/// stream ends. It keeps only the line in progress and the block being
/// collected, both bounded by [`ParserLimits`]; a block that would break them is
/// skipped, and the stream goes on.
#[derive(Clone, Debug)]
pub struct Parser {
    /// The bounds this parser enforces.
    limits: ParserLimits,
    /// Whether a leading BOM may still arrive.
    stream_start: StreamStart,
    /// Whether the block in progress is collected or discarded.
    block: Block,
    /// The start of a line whose end has not arrived yet; lines that lie
    /// wholly inside one chunk are parsed in place and never copied here.
    /// Always empty while the block is discarded.
    partial_line: Vec<u8>,
    /// The previous chunk ended with CR, so an LF starting the next chunk is
    /// the rest of that CRLF, not a second (blank) line.
    skip_lf: bool,
    /// The spec's data buffer: each `data` value followed by LF. Handed out
    /// (not copied) as the dispatched event's data.
    data: String,
    /// The spec's event type buffer.
    event_type: String,
    /// The value of the last `id` field that took effect in the current
    /// block; the spec's last event ID buffer is this when `Some`, else
    /// [`Parser::last_event_id`]. Committed (and reported) at dispatch.
    block_id: Option<String>,
    /// The last valid `retry` value in the current block.
    block_retry: Option<u64>,
    /// The spec's last event ID *string*: the last event ID buffer as of the
    /// latest dispatch. Persists across events (and across
    /// [`Parser::finish`]), as the ID a reconnection resumes from.
    last_event_id: String,
}

impl Default for Parser {
    fn default() -> Parser {
        Parser::new(ParserLimits::default())
    }
}

impl Parser {
    /// A parser at the start of a stream, enforcing `limits`.
    pub fn new(limits: ParserLimits) -> Parser {
        Parser {
            limits,
            stream_start: StreamStart::AwaitingBom { matched: 0 },
            block: Block::Collecting,
            partial_line: Vec::new(),
            skip_lf: false,
            data: String::new(),
            event_type: String::new(),
            block_id: None,
            block_retry: None,
            last_event_id: String::new(),
        }
    }

    /// The bounds this parser enforces.
    pub fn limits(&self) -> ParserLimits {
        self.limits
    }

    /// The last event ID as of the latest dispatch (`""` if none was set, or
    /// after a reset): the spec's "last event ID string", which a browser
    /// sends as `Last-Event-ID` when it reconnects. It persists across events
    /// and across [`Parser::finish`].
    ///
    /// An `id` field updates the spec's last event ID buffer at once, but that
    /// buffer only becomes observable at the next dispatch, so this returns
    /// the buffer's value as of the latest blank line. If the stream is cut
    /// in the middle of a block, or the block is skipped for breaking a
    /// limit, the block is discarded and its id is not taken, so a
    /// reconnection resumes before it rather than skipping it.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Bytes the parser currently holds for the stream in progress: the
    /// unfinished line plus the block's data, event type and id (nothing
    /// while a block is skipped). Never more than
    /// `max_line_len + max_event_size` between calls; exposed for metrics
    /// and tests.
    pub fn buffered_bytes(&self) -> usize {
        self.partial_line.len() + self.block_size()
    }

    /// Parses the next chunk of the stream, appending every item it completes
    /// to `out`, in stream order.
    ///
    /// This never fails and never stops the stream: a block that breaks a
    /// limit is reported as [`Item::Skipped`] and discarded up to the blank
    /// line that ends it, and parsing goes on after that.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Item>) {
        let mut rest = self.strip_bom(chunk);
        if rest.is_empty() {
            return;
        }
        if mem::take(&mut self.skip_lf) {
            rest = rest.strip_prefix(&[LF]).unwrap_or(rest);
        }
        loop {
            if let Block::Discarding { at_line_start } = self.block {
                match self.discard(rest, at_line_start) {
                    Some(after_block) => rest = after_block,
                    None => return,
                }
            }
            match self.parse_lines(rest, out) {
                Ok(()) => return,
                Err(Violation { error, line_end }) => {
                    self.skip_block(error, out);
                    rest = rest.get(line_end..).unwrap_or_default();
                }
            }
        }
    }

    /// Ends the stream (the upstream connection closed): an unfinished line
    /// and an undispatched block are discarded, as the spec requires, and so
    /// is the rest of a block being skipped. The parser is then ready for a
    /// new stream (a reconnection to the same upstream): a BOM is accepted
    /// again, while [`Parser::last_event_id`] is kept.
    pub fn finish(&mut self) {
        let last_event_id = mem::take(&mut self.last_event_id);
        *self = Parser {
            last_event_id,
            ..Parser::new(self.limits)
        };
    }

    /// Parses the lines of `rest` while the block is collected, up to the
    /// first violation of a limit, if any.
    fn parse_lines(&mut self, mut rest: &[u8], out: &mut Vec<Item>) -> Result<(), Violation> {
        let input_len = rest.len();

        // Complete the line carried over from earlier chunks.
        if !self.partial_line.is_empty() {
            let Some(end) = memchr::memchr2(LF, CR, rest) else {
                self.check_line_len(self.partial_line.len() + rest.len())
                    .map_err(Violation::at(rest.len()))?;
                self.partial_line.extend_from_slice(rest);
                return Ok(());
            };
            self.check_line_len(self.partial_line.len() + end)
                .map_err(Violation::at(end))?;
            self.partial_line
                .extend_from_slice(rest.get(..end).unwrap_or_default());
            let line = mem::take(&mut self.partial_line);
            let processed = self.process_line(Line::Raw(&line), out);
            self.partial_line = line;
            self.partial_line.clear();
            processed.map_err(Violation::at(end))?;
            rest = rest
                .get(self.after_line_end(rest, end)..)
                .unwrap_or_default();
        }
        // Violations past this point are found in `rest`; report them as
        // positions in the whole input.
        let offset = input_len - rest.len();

        // Lines wholly inside this chunk are parsed in place. Validating the
        // chunk's UTF-8 in one pass is far cheaper than value by value; lines
        // past an invalid sequence (or a character cut by the chunk's end)
        // take the decoding path instead.
        let text = valid_utf8_prefix(rest);
        let mut line_start = 0;
        while let Some(line_len) =
            memchr::memchr2(LF, CR, rest.get(line_start..).unwrap_or_default())
        {
            let end = line_start + line_len;
            self.check_line_len(line_len)
                .map_err(Violation::at(offset + end))?;
            let line = match text.get(line_start..end) {
                Some(text) => Line::Text(text),
                None => Line::Raw(rest.get(line_start..end).unwrap_or_default()),
            };
            self.process_line(line, out)
                .map_err(Violation::at(offset + end))?;
            line_start = self.after_line_end(rest, end);
        }

        let tail = rest.get(line_start..).unwrap_or_default();
        self.check_line_len(tail.len())
            .map_err(Violation::at(input_len))?;
        self.partial_line.extend_from_slice(tail);
        Ok(())
    }

    /// Starts skipping the block in progress, which broke a limit: reports
    /// it, and drops what it held (the memory a hostile upstream made us
    /// take). Discarding starts in the middle of the offending line.
    fn skip_block(&mut self, error: ParseError, out: &mut Vec<Item>) {
        out.push(Item::Skipped(error));
        self.block = Block::Discarding {
            at_line_start: false,
        };
        self.partial_line = Vec::new();
        self.data = String::new();
        self.event_type = String::new();
        self.block_id = None;
        self.block_retry = None;
    }

    /// Discards the lines of `rest` that belong to the block being skipped.
    /// Returns what follows the blank line that ends the block, or `None`
    /// when the whole of `rest` belongs to it. Only line ends are looked at,
    /// and nothing is kept but whether the current line is still empty, so
    /// a line that never ends costs no memory.
    fn discard<'a>(&mut self, rest: &'a [u8], mut at_line_start: bool) -> Option<&'a [u8]> {
        let mut line_start = 0;
        while let Some(line_len) =
            memchr::memchr2(LF, CR, rest.get(line_start..).unwrap_or_default())
        {
            let blank = at_line_start && line_len == 0;
            line_start = self.after_line_end(rest, line_start + line_len);
            if blank {
                self.block = Block::Collecting;
                return Some(rest.get(line_start..).unwrap_or_default());
            }
            at_line_start = true;
        }
        self.block = Block::Discarding {
            at_line_start: at_line_start && line_start == rest.len(),
        };
        None
    }

    /// Strips a leading BOM, which may arrive split across chunks, and
    /// returns what is left of `chunk` to parse. Bytes that started like a
    /// BOM but turned out not to be one are text: they begin the first line.
    fn strip_bom<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let StreamStart::AwaitingBom { matched } = self.stream_start else {
            return chunk;
        };
        let expected = BOM.get(matched..).unwrap_or_default();
        let agreeing = expected
            .iter()
            .zip(chunk)
            .take_while(|(expected, actual)| expected == actual)
            .count();
        if agreeing == expected.len() {
            self.stream_start = StreamStart::Past;
            chunk.get(agreeing..).unwrap_or_default()
        } else if agreeing == chunk.len() {
            self.stream_start = StreamStart::AwaitingBom {
                matched: matched + agreeing,
            };
            &[]
        } else {
            self.stream_start = StreamStart::Past;
            self.partial_line
                .extend_from_slice(BOM.get(..matched).unwrap_or_default());
            chunk
        }
    }

    /// The index just past the line end at `rest[end]`, which is CR or LF.
    /// A CR followed by LF is one line end; a CR that ends the chunk may be
    /// followed by an LF at the start of the next one.
    fn after_line_end(&mut self, rest: &[u8], end: usize) -> usize {
        let next = end + 1;
        if rest.get(end) != Some(&CR) {
            return next;
        }
        match rest.get(next) {
            Some(&LF) => next + 1,
            Some(_) => next,
            None => {
                self.skip_lf = true;
                next
            }
        }
    }

    /// Interprets one complete line (without its line end).
    fn process_line(&mut self, line: Line<'_>, out: &mut Vec<Item>) -> Result<(), ParseError> {
        let bytes = line.bytes();
        match bytes.first() {
            None => {
                self.dispatch(out);
                Ok(())
            }
            Some(&COLON) => {
                out.push(Item::Comment(line.text_from(1).into_owned()));
                Ok(())
            }
            // Field names are short, so a plain scan finds the colon sooner
            // than setting up a vectorised search.
            Some(_) => match bytes.iter().position(|&byte| byte == COLON) {
                Some(colon) => {
                    let value_start = colon + 1;
                    let value_start = match bytes.get(value_start) {
                        Some(&SPACE) => value_start + 1,
                        _ => value_start,
                    };
                    let name = bytes.get(..colon).unwrap_or_default();
                    self.process_field(name, line, value_start)
                }
                None => self.process_field(bytes, line, bytes.len()),
            },
        }
    }

    /// Applies one field, whose value is `line` from `value_start` on, to the
    /// block being collected. Field names are compared exactly
    /// (case-sensitive); unknown fields are ignored.
    fn process_field(
        &mut self,
        name: &[u8],
        line: Line<'_>,
        value_start: usize,
    ) -> Result<(), ParseError> {
        match name {
            DATA_FIELD => {
                let value = line.text_from(value_start);
                self.check_event_size(self.block_size() + value.len() + 1)?;
                // Room for the LF too, so a one-line event (the common case)
                // allocates exactly once.
                self.data.reserve(value.len() + 1);
                self.data.push_str(&value);
                self.data.push(char::from(LF));
            }
            EVENT_FIELD => {
                let value = line.text_from(value_start);
                self.check_event_size(self.block_size() - self.event_type.len() + value.len())?;
                self.event_type.clear();
                self.event_type.push_str(&value);
            }
            ID_FIELD => {
                let raw_value = line.bytes().get(value_start..).unwrap_or_default();
                if !raw_value.contains(&NUL) {
                    let value = line.text_from(value_start);
                    self.check_event_size(self.block_size() - self.block_id_len() + value.len())?;
                    self.block_id = Some(value.into_owned());
                }
            }
            RETRY_FIELD => {
                let raw_value = line.bytes().get(value_start..).unwrap_or_default();
                if let Some(retry_ms) = parse_retry(raw_value) {
                    self.block_retry = Some(retry_ms);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Dispatches the block a blank line ended, in the spec's order: the last
    /// event ID string takes the buffer's value even when there is no data; a
    /// block with empty data fires no event (but is reported when it set the
    /// id or `retry`); one trailing LF is removed from the data; the data and
    /// event type buffers are reset.
    fn dispatch(&mut self, out: &mut Vec<Item>) {
        let id = self.block_id.take();
        if let Some(id) = &id {
            self.last_event_id.clear();
            self.last_event_id.push_str(id);
        }
        let retry = self.block_retry.take();
        let event_type = mem::take(&mut self.event_type);
        // The buffer is handed out as the event's data rather than copied;
        // every data line ends with LF, so `pop` removes exactly that one.
        let data = (!self.data.is_empty()).then(|| {
            let mut data = mem::take(&mut self.data);
            data.pop();
            data
        });
        if id.is_none() && data.is_none() && retry.is_none() {
            return;
        }
        // The type of a block that fires nothing is discarded, as in a browser.
        let event_type = (data.is_some() && !event_type.is_empty()).then_some(event_type);
        out.push(Item::Event(Event::from_parsed_block(
            id, event_type, data, retry,
        )));
    }

    /// Size of the block being collected, as [`ParserLimits::max_event_size`]
    /// counts it.
    fn block_size(&self) -> usize {
        self.data.len() + self.event_type.len() + self.block_id_len()
    }

    /// Length of the id the current block set, or 0 if it set none.
    fn block_id_len(&self) -> usize {
        self.block_id.as_ref().map_or(0, String::len)
    }

    /// Fails when a line of `len` bytes would exceed the line limit.
    fn check_line_len(&self, len: usize) -> Result<(), ParseError> {
        if len > self.limits.max_line_len {
            return Err(ParseError::LineTooLong {
                limit: self.limits.max_line_len,
            });
        }
        Ok(())
    }

    /// Fails when a block of `size` bytes would exceed the event limit.
    fn check_event_size(&self, size: usize) -> Result<(), ParseError> {
        if size > self.limits.max_event_size {
            return Err(ParseError::EventTooLarge {
                limit: self.limits.max_event_size,
            });
        }
        Ok(())
    }
}

/// One complete line, without its line end.
#[derive(Clone, Copy, Debug)]
enum Line<'a> {
    /// A line already validated as UTF-8, with the rest of its chunk.
    Text(&'a str),
    /// A line not validated yet (carried across chunks, or after invalid
    /// UTF-8 in its chunk); decoded value by value.
    Raw(&'a [u8]),
}

impl<'a> Line<'a> {
    /// The line's bytes, for finding the colon and matching field names.
    fn bytes(self) -> &'a [u8] {
        match self {
            Line::Text(text) => text.as_bytes(),
            Line::Raw(bytes) => bytes,
        }
    }

    /// The decoded text from byte `start` to the end of the line. `start`
    /// always follows an ASCII byte (`:` or space), so it is a character
    /// boundary.
    fn text_from(self, start: usize) -> Cow<'a, str> {
        match self {
            Line::Text(text) => Cow::Borrowed(text.get(start..).unwrap_or_default()),
            Line::Raw(bytes) => decode(bytes.get(start..).unwrap_or_default()),
        }
    }
}

/// The longest prefix of `bytes` that is valid UTF-8.
fn valid_utf8_prefix(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            let valid = bytes.get(..error.valid_up_to()).unwrap_or_default();
            std::str::from_utf8(valid).unwrap_or_default()
        }
    }
}

/// UTF-8 decode with U+FFFD replacement; borrows when the bytes are valid.
///
/// Valid input is checked with `str::from_utf8`, which skips ASCII a word at
/// a time; `from_utf8_lossy` walks byte by byte, so it only runs on input
/// that needs replacing.
fn decode(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The reconnection time in a `retry` value: only a non-empty run of ASCII
/// digits counts (`1.5`, `-1`, `3s` and `` are ignored), and so does a number
/// too large for a `u64`.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |retry_ms, &byte| {
        if !byte.is_ascii_digit() {
            return None;
        }
        retry_ms
            .checked_mul(DECIMAL_RADIX)?
            .checked_add(u64::from(byte - b'0'))
    })
}
