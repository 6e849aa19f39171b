//! Property tests for the SSE parser and encoder.
//!
//! - Chunking: any split of the same bytes (down to one byte per chunk) gives
//!   the same items, error and last event ID.
//! - Reference: on SSE-shaped input the incremental parser agrees with a
//!   plain, non-incremental transcription of the spec that decodes the whole
//!   stream first (which also checks the per-line decoding shortcut).
//! - Round trip: `parse(encode(e)) == e` for arbitrary valid events, alone
//!   and in sequences with heartbeats and comments between them.
//! - Bounds: arbitrary bytes never panic and never make the parser hold more
//!   than its limits allow; an over-long line always errors.

use proptest::prelude::*;
use proptest::sample::Index;
use sse_fanout::sse::{comment_frame, heartbeat_frame, Event, Item, Limits, ParseError, Parser};

/// What parsing a whole stream produced.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// Every item, in order, up to the first error.
    items: Vec<Item>,
    /// The first error, if the stream was rejected.
    error: Option<ParseError>,
    /// The parser's last event ID after the stream ended.
    last_event_id: String,
}

/// Feeds `chunks` in order to a fresh parser, stopping at the first error,
/// then ends the stream.
fn run<'a>(limits: Limits, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut parser = Parser::new(limits);
    let mut items = Vec::new();
    let mut error = None;
    for chunk in chunks {
        if let Err(failure) = parser.feed(chunk, &mut items) {
            error = Some(failure);
            break;
        }
    }
    parser.finish();
    Outcome {
        items,
        error,
        last_event_id: parser.last_event_id().to_owned(),
    }
}

/// `stream` cut at the positions `cuts` picks.
fn split<'a>(stream: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut positions: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
    positions.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for position in positions {
        chunks.push(&stream[start..position]);
        start = position;
    }
    chunks.push(&stream[start..]);
    chunks
}

/// A fragment of a field value: plain text, separators, multi-byte and
/// invalid UTF-8, NUL, digits.
fn value_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-z0-9 ]{0,6}".prop_map(String::into_bytes),
        2 => "[0-9]{1,4}".prop_map(String::into_bytes),
        1 => Just(b":".to_vec()),
        1 => Just(b" ".to_vec()),
        1 => Just("€".as_bytes().to_vec()),
        1 => Just("😀".as_bytes().to_vec()),
        1 => Just(b"\xEF\xBB\xBF".to_vec()),
        1 => Just(b"\xFF".to_vec()),
        1 => Just(b"\xE2\x82".to_vec()),
        1 => Just(b"\0".to_vec()),
    ]
}

/// A field value made of a few fragments.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(value_piece(), 0..4).prop_map(|pieces| pieces.concat())
}

/// One line of an SSE-shaped stream, with its line end.
fn line() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        Just(&b"data"[..]),
        Just(&b"data"[..]),
        Just(&b"event"[..]),
        Just(&b"id"[..]),
        Just(&b"retry"[..]),
        Just(&b"Data"[..]),
        Just(&b"foo"[..]),
    ];
    let field = (name, prop::option::of((any::<bool>(), value()))).prop_map(|(name, rest)| {
        let mut line = name.to_vec();
        if let Some((space, value)) = rest {
            line.push(b':');
            if space {
                line.push(b' ');
            }
            line.extend_from_slice(&value);
        }
        line
    });
    let comment = value().prop_map(|text| [&b":"[..], &text].concat());
    let content = prop_oneof![4 => field, 1 => comment, 2 => Just(Vec::new())];
    let line_end = prop_oneof![Just(&b"\n"[..]), Just(&b"\r"[..]), Just(&b"\r\n"[..])];
    (content, line_end).prop_map(|(content, end)| [&content[..], end].concat())
}

/// An SSE-shaped stream: an optional (possibly partial) BOM, lines, and an
/// optional unterminated tail.
fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
    let bom = prop_oneof![
        3 => Just(Vec::new()),
        2 => Just(b"\xEF\xBB\xBF".to_vec()),
        1 => Just(b"\xEF\xBB".to_vec()),
    ];
    (bom, prop::collection::vec(line(), 0..40), value())
        .prop_map(|(bom, lines, tail)| [bom, lines.concat(), tail].concat())
}

/// Limits from tiny (to hit every error path) to the defaults.
fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        (0usize..48, 0usize..96).prop_map(|(max_line_len, max_event_size)| Limits {
            max_line_len,
            max_event_size,
        }),
    ]
}

/// The spec, transcribed without any incremental machinery: strip one BOM,
/// decode the whole stream, split it into lines, process each line.
fn reference_parse(stream: &[u8]) -> Outcome {
    let stream = stream.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(stream);
    let text = String::from_utf8_lossy(stream);
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                lines.push(std::mem::take(&mut line));
            }
            '\n' => lines.push(std::mem::take(&mut line)),
            c => line.push(c),
        }
    }
    // The unterminated `line` left over is discarded at end of stream.

    let mut items = Vec::new();
    let (mut data, mut event_type) = (String::new(), String::new());
    let (mut id_buffer, mut last_event_id) = (String::new(), String::new());
    let (mut block_set_id, mut block_retry) = (false, None);
    for line in lines {
        if line.is_empty() {
            last_event_id.clone_from(&id_buffer);
            let has_data = !data.is_empty();
            let mut builder = Event::builder();
            if block_set_id {
                builder = builder.id(id_buffer.clone());
            }
            if has_data {
                data.pop();
                builder = builder.data(data.clone()).event_type(event_type.clone());
            }
            if let Some(retry) = block_retry {
                builder = builder.retry(retry);
            }
            if has_data || block_set_id || block_retry.is_some() {
                items.push(Item::Event(
                    builder.build().expect("parsed values are valid"),
                ));
            }
            data.clear();
            event_type.clear();
            block_set_id = false;
            block_retry = None;
        } else if let Some(comment) = line.strip_prefix(':') {
            items.push(Item::Comment(comment.to_owned()));
        } else {
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => event_type = value.to_owned(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" if !value.contains('\0') => {
                    id_buffer = value.to_owned();
                    block_set_id = true;
                }
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    // Too large for u64 is ignored, as documented.
                    if let Ok(retry) = value.parse() {
                        block_retry = Some(retry);
                    }
                }
                _ => {}
            }
        }
    }
    Outcome {
        items,
        error: None,
        last_event_id,
    }
}

/// A string that may contain anything, line ends and NUL included.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,12}",
        prop::collection::vec(prop_oneof!["[a-z ]{0,4}", "\r|\n|\r\n|\0|€"], 0..6)
            .prop_map(|parts| parts.concat()),
    ]
}

/// An arbitrary event the builder accepts.
fn valid_event() -> impl Strategy<Value = Event> {
    (
        prop::option::of("[^\r\n\0]{0,12}"),
        prop::option::of("[^\r\n]{0,12}"),
        prop::option::of(any_text()),
        prop::option::of(any::<u64>()),
    )
        .prop_filter_map("not a valid event", |(id, event_type, data, retry)| {
            let mut builder = Event::builder();
            if let Some(id) = id {
                builder = builder.id(id);
            }
            if let Some(event_type) = event_type {
                builder = builder.event_type(event_type);
            }
            if let Some(data) = data {
                builder = builder.data(data);
            }
            if let Some(retry) = retry {
                builder = builder.retry(retry);
            }
            builder.build().ok()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_split_of_an_sse_stream_gives_the_same_outcome(
        stream in sse_stream(),
        cuts in prop::collection::vec(any::<Index>(), 0..24),
        limits in limits(),
    ) {
        let whole = run(limits, [&stream[..]]);
        prop_assert_eq!(&run(limits, split(&stream, &cuts)), &whole);
        prop_assert_eq!(&run(limits, stream.chunks(1)), &whole);
    }

    #[test]
    fn any_split_of_arbitrary_bytes_gives_the_same_outcome(
        stream in prop::collection::vec(any::<u8>(), 0..400),
        cuts in prop::collection::vec(any::<Index>(), 0..24),
        limits in limits(),
    ) {
        let whole = run(limits, [&stream[..]]);
        prop_assert_eq!(&run(limits, split(&stream, &cuts)), &whole);
        prop_assert_eq!(&run(limits, stream.chunks(1)), &whole);
    }

    #[test]
    fn parser_agrees_with_a_plain_transcription_of_the_spec(stream in sse_stream()) {
        prop_assert_eq!(run(Limits::default(), stream.chunks(7)), reference_parse(&stream));
    }

    #[test]
    fn encode_then_parse_gives_the_event_back(event in valid_event()) {
        let outcome = run(Limits::default(), [&event.encode()[..]]);
        prop_assert_eq!(outcome.items, vec![Item::Event(event)]);
    }

    #[test]
    fn encoded_len_is_the_exact_length(event in valid_event()) {
        prop_assert_eq!(event.encoded_len(), event.encode().len());
    }

    #[test]
    fn a_sequence_of_frames_parses_back_in_order_however_it_is_split(
        events in prop::collection::vec(valid_event(), 0..8),
        comment in "[^\r\n]{0,8}",
        cuts in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for event in events {
            stream.extend_from_slice(&event.encode());
            stream.extend_from_slice(&heartbeat_frame());
            stream.extend_from_slice(&comment_frame(&comment));
            expected.push(Item::Event(event));
            expected.push(Item::Comment(String::new()));
            expected.push(Item::Comment(comment.clone()));
        }
        prop_assert_eq!(run(Limits::default(), split(&stream, &cuts)).items, expected);
    }

    #[test]
    fn comment_frame_parses_back_to_one_comment_per_line(text in any_text()) {
        let expected: Vec<Item> = text
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .split('\n')
            .map(|line| Item::Comment(line.to_owned()))
            .collect();
        prop_assert_eq!(run(Limits::default(), [&comment_frame(&text)[..]]).items, expected);
    }

    #[test]
    fn arbitrary_bytes_never_make_the_parser_hold_more_than_its_limits(
        stream in prop::collection::vec(any::<u8>(), 0..2000),
        chunk_len in 1usize..64,
        limits in limits(),
    ) {
        let mut parser = Parser::new(limits);
        let mut items = Vec::new();
        for chunk in stream.chunks(chunk_len) {
            let fed = parser.feed(chunk, &mut items);
            prop_assert!(
                parser.buffered_bytes() <= limits.max_line_len + limits.max_event_size,
                "holds {} bytes with {:?}", parser.buffered_bytes(), limits
            );
            if fed.is_err() {
                prop_assert_eq!(parser.buffered_bytes(), 0);
                break;
            }
        }
    }

    #[test]
    fn a_line_over_the_limit_always_errors_however_it_arrives(
        max_line_len in 0usize..200,
        excess in 1usize..50,
        filler in "[a-z: ]{1,8}",
        chunk_len in 1usize..40,
    ) {
        let limits = Limits { max_line_len, max_event_size: usize::MAX };
        let line: Vec<u8> = filler.bytes().cycle().take(max_line_len + excess).collect();
        let mut parser = Parser::new(limits);
        let mut items = Vec::new();
        let mut error = None;
        for chunk in line.chunks(chunk_len) {
            prop_assert!(parser.buffered_bytes() <= max_line_len);
            if let Err(failure) = parser.feed(chunk, &mut items) {
                error = Some(failure);
                break;
            }
        }
        prop_assert_eq!(error, Some(ParseError::LineTooLong { limit: max_line_len }));
    }

    #[test]
    fn data_over_the_event_limit_always_errors(
        max_event_size in 0usize..300,
        line_len in 0usize..20,
    ) {
        let limits = Limits { max_line_len: usize::MAX, max_event_size };
        let data_line = [b"data:".as_slice(), &vec![b'x'; line_len], b"\n"].concat();
        let lines_needed = max_event_size / (line_len + 1) + 1;
        let stream = data_line.repeat(lines_needed);
        let outcome = run(limits, [&stream[..]]);
        prop_assert_eq!(outcome.error, Some(ParseError::EventTooLarge { limit: max_event_size }));
    }
}
