//! Property tests for the SSE parser and encoder.
//!
//! - Chunking: any split of the same bytes (down to one byte per chunk) gives
//!   the same items (skipped blocks included) and last event ID.
//! - Reference: on SSE-shaped input, under any limits, the incremental parser
//!   agrees with a plain, non-incremental transcription of the spec and of
//!   the documented skipping of blocks that break a limit, which decodes the
//!   whole stream first (so it also checks the per-line decoding shortcut).
//! - Round trip: `parse(encode(e)) == e` for arbitrary valid events, alone
//!   and in sequences with heartbeats and comments between them.
//! - Skipping: oversized blocks between ordinary events cost those blocks
//!   alone, however the stream is split.
//! - Bounds: arbitrary bytes never panic and never make the parser hold more
//!   than its limits allow; an over-long line or event is always skipped,
//!   however it arrives, and the stream goes on after it.

// The helpers index only at positions they keep in range themselves (cut
// points drawn within the stream, the reference parser's own line scan) and
// build events from values known to be valid.
#![allow(clippy::indexing_slicing, clippy::expect_used)]

use proptest::prelude::*;
use proptest::sample::Index;
use sse_wire::{comment_lines, heartbeat_line, Event, Item, ParseError, Parser, ParserLimits};

/// The UTF-8 byte order mark, stripped once at the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What parsing a whole stream produced.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// Every item, in order, skipped blocks included.
    items: Vec<Item>,
    /// The parser's last event ID after the stream ended.
    last_event_id: String,
}

/// Feeds `chunks` in order to a fresh parser, then ends the stream.
fn run<'a>(limits: ParserLimits, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut parser = Parser::new(limits);
    let mut items = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut items);
    }
    parser.finish();
    Outcome {
        items,
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

/// ParserLimits from tiny (to hit every error path) to the defaults.
fn limits() -> impl Strategy<Value = ParserLimits> {
    prop_oneof![
        Just(ParserLimits::default()),
        (0usize..48, 0usize..96).prop_map(|(max_line_len, max_event_size)| ParserLimits {
            max_line_len,
            max_event_size,
        }),
    ]
}

/// Splits `items` into lines at CR, LF and CRLF; returns the lines (without
/// their line ends) and the unterminated rest.
fn split_lines<T: Copy + PartialEq>(items: &[T], cr: T, lf: T) -> (Vec<&[T]>, &[T]) {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < items.len() {
        if items[at] == cr || items[at] == lf {
            lines.push(&items[start..at]);
            at += if items[at] == cr && items.get(at + 1) == Some(&lf) {
                2
            } else {
                1
            };
            start = at;
        } else {
            at += 1;
        }
    }
    (lines, &items[start..])
}

/// The spec, transcribed without any incremental machinery (strip one BOM,
/// decode the whole stream, split it into lines, process each line), plus
/// the documented limits: a block with a line over `max_line_len` bytes (as
/// sent) or an event over `max_event_size` is reported as skipped where it
/// breaks the limit, and its lines up to the blank line that ends it are
/// ignored.
fn reference_parse(stream: &[u8], limits: ParserLimits) -> Outcome {
    // A stream that ends while it may still be a BOM has no line yet.
    if stream.len() < BOM.len() && BOM.starts_with(stream) {
        return Outcome {
            items: Vec::new(),
            last_event_id: String::new(),
        };
    }
    let stream = stream.strip_prefix(BOM).unwrap_or(stream);
    // The line limit counts bytes as sent; decoding never turns a line end
    // into something else (nor the reverse), so both splits agree line for
    // line.
    let (raw_lines, raw_tail) = split_lines(stream, b'\r', b'\n');
    let text: Vec<char> = String::from_utf8_lossy(stream).chars().collect();
    let (text_lines, _) = split_lines(&text, '\r', '\n');
    assert_eq!(raw_lines.len(), text_lines.len());

    let mut items = Vec::new();
    let (mut data, mut event_type) = (String::new(), String::new());
    let (mut id_buffer, mut last_event_id) = (String::new(), String::new());
    let (mut block_set_id, mut block_retry) = (false, None);
    let mut skipping = false;
    for (raw, line) in raw_lines.iter().zip(text_lines) {
        let line: String = line.iter().collect();
        if skipping {
            skipping = !line.is_empty();
            continue;
        }
        let block_size =
            data.len() + event_type.len() + if block_set_id { id_buffer.len() } else { 0 };
        let mut broken = None;
        if raw.len() > limits.max_line_len {
            broken = Some(ParseError::LineTooLong {
                limit: limits.max_line_len,
            });
        } else if line.is_empty() {
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
            let too_large = |size: usize| {
                (size > limits.max_event_size).then_some(ParseError::EventTooLarge {
                    limit: limits.max_event_size,
                })
            };
            match field {
                "event" => {
                    broken = too_large(block_size - event_type.len() + value.len());
                    event_type = value.to_owned();
                }
                "data" => {
                    broken = too_large(block_size + value.len() + 1);
                    data.push_str(value);
                    data.push('\n');
                }
                "id" if !value.contains('\0') => {
                    let old_id_len = if block_set_id { id_buffer.len() } else { 0 };
                    broken = too_large(block_size - old_id_len + value.len());
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
        if let Some(error) = broken {
            // Nothing of the block takes effect, its id included.
            items.push(Item::Skipped(error));
            skipping = true;
            data.clear();
            event_type.clear();
            id_buffer.clone_from(&last_event_id);
            block_set_id = false;
            block_retry = None;
        }
    }
    // The unterminated line is discarded at end of stream, but it may
    // already have broken the line limit.
    if !skipping && raw_tail.len() > limits.max_line_len {
        items.push(Item::Skipped(ParseError::LineTooLong {
            limit: limits.max_line_len,
        }));
    }
    Outcome {
        items,
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

/// ParserLimits that every [`valid_event`] fits in (its fields are at most 12
/// characters, so no encoded line passes 64 bytes and no event 192), while
/// an [`oversized_block`] always breaks one of them.
const SKIP_LIMITS: ParserLimits = ParserLimits {
    max_line_len: 64,
    max_event_size: 192,
};

/// A block that breaks [`SKIP_LIMITS`], with the items it must give: an
/// optional comment before the line that breaks the limit (reported), an
/// optional `id` (never taken), the breaking line or lines (a line of 65 to
/// 200 bytes, or four to seven 56-byte `data` lines that pass the event
/// size), other lines after it, and the blank line that ends the block, all
/// with one kind of line end.
fn oversized_block() -> impl Strategy<Value = (Vec<u8>, Vec<Item>)> {
    let line_end = prop_oneof![Just(&b"\n"[..]), Just(&b"\r"[..]), Just(&b"\r\n"[..])];
    let long_line_prefix = prop_oneof![
        Just(&b"data: "[..]),
        Just(&b":"[..]),
        Just(&b"id: "[..]),
        Just(&b"event:"[..]),
    ];
    let long_line = (long_line_prefix, 65usize..200).prop_map(|(prefix, len)| {
        let line: Vec<u8> = prefix
            .iter()
            .copied()
            .chain(std::iter::repeat(b'x'))
            .take(len)
            .collect();
        (
            vec![line],
            ParseError::LineTooLong {
                limit: SKIP_LIMITS.max_line_len,
            },
        )
    });
    let big_event = (4usize..8).prop_map(|count| {
        let line = [&b"data: "[..], &[b'y'; 50]].concat();
        (
            vec![line; count],
            ParseError::EventTooLarge {
                limit: SKIP_LIMITS.max_event_size,
            },
        )
    });
    let after = prop::sample::subsequence(
        vec![
            &b"data: c"[..],
            &b"id: 9"[..],
            &b":post"[..],
            &b"retry: 5"[..],
        ],
        0..=4,
    );
    (
        line_end,
        any::<bool>(),
        any::<bool>(),
        prop_oneof![long_line, big_event],
        after,
    )
        .prop_map(|(end, comment, id, (breaking, error), after)| {
            let mut lines: Vec<Vec<u8>> = Vec::new();
            let mut items = Vec::new();
            if comment {
                lines.push(b":pre".to_vec());
                items.push(Item::Comment("pre".to_owned()));
            }
            if id {
                lines.push(b"id: skipped".to_vec());
            }
            lines.extend(breaking);
            lines.extend(after.into_iter().map(<[u8]>::to_vec));
            lines.push(Vec::new());
            items.push(Item::Skipped(error));
            let block = lines
                .iter()
                .flat_map(|line| [&line[..], end].concat())
                .collect();
            (block, items)
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
    fn parser_agrees_with_a_plain_transcription_of_the_spec(
        stream in sse_stream(),
        limits in limits(),
    ) {
        prop_assert_eq!(run(limits, stream.chunks(7)), reference_parse(&stream, limits));
    }

    #[test]
    fn oversized_blocks_between_events_cost_those_blocks_alone_however_it_is_split(
        blocks in prop::collection::vec(
            prop_oneof![
                2 => valid_event().prop_map(|event| {
                    (event.encode().to_vec(), vec![Item::Event(event)])
                }),
                2 => oversized_block(),
                1 => Just((heartbeat_line().to_vec(), vec![Item::Comment(String::new())])),
            ],
            0..8,
        ),
        cuts in prop::collection::vec(any::<Index>(), 0..24),
    ) {
        let stream: Vec<u8> = blocks.iter().flat_map(|(bytes, _)| bytes.clone()).collect();
        let items: Vec<Item> = blocks.into_iter().flat_map(|(_, items)| items).collect();
        let last_event_id = items
            .iter()
            .rev()
            .find_map(|item| match item {
                Item::Event(event) => event.id(),
                _ => None,
            })
            .unwrap_or_default()
            .to_owned();
        let expected = Outcome { items, last_event_id };
        prop_assert_eq!(&run(SKIP_LIMITS, split(&stream, &cuts)), &expected);
        prop_assert_eq!(&run(SKIP_LIMITS, stream.chunks(1)), &expected);
    }

    #[test]
    fn encode_then_parse_gives_the_event_back(event in valid_event()) {
        let outcome = run(ParserLimits::default(), [&event.encode()[..]]);
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
            stream.extend_from_slice(&heartbeat_line());
            stream.extend_from_slice(&comment_lines(&comment));
            expected.push(Item::Event(event));
            expected.push(Item::Comment(String::new()));
            expected.push(Item::Comment(comment.clone()));
        }
        prop_assert_eq!(run(ParserLimits::default(), split(&stream, &cuts)).items, expected);
    }

    #[test]
    fn comment_lines_parse_back_to_one_comment_per_line(text in any_text()) {
        let expected: Vec<Item> = text
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .split('\n')
            .map(|line| Item::Comment(line.to_owned()))
            .collect();
        prop_assert_eq!(run(ParserLimits::default(), [&comment_lines(&text)[..]]).items, expected);
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
            parser.feed(chunk, &mut items);
            prop_assert!(
                parser.buffered_bytes() <= limits.max_line_len + limits.max_event_size,
                "holds {} bytes with {:?}", parser.buffered_bytes(), limits
            );
        }
    }

    #[test]
    fn a_line_over_the_limit_is_always_skipped_however_it_arrives(
        // At least 11, so that `data: after` fits.
        max_line_len in 11usize..200,
        excess in 1usize..50,
        filler in "[a-z: ]{1,8}",
        chunk_len in 1usize..40,
    ) {
        let limits = ParserLimits { max_line_len, max_event_size: usize::MAX };
        let mut stream: Vec<u8> = filler.bytes().cycle().take(max_line_len + excess).collect();
        stream.extend_from_slice(b"\n\ndata: after\n\n");
        let mut parser = Parser::new(limits);
        let mut items = Vec::new();
        for chunk in stream.chunks(chunk_len) {
            parser.feed(chunk, &mut items);
            prop_assert!(parser.buffered_bytes() <= max_line_len);
        }
        prop_assert_eq!(
            items,
            vec![
                Item::Skipped(ParseError::LineTooLong { limit: max_line_len }),
                Item::Event(Event::message("after")),
            ]
        );
    }

    #[test]
    fn data_over_the_event_limit_is_always_skipped(
        // At least 6, so that the data of `data: after` fits.
        max_event_size in 6usize..300,
        line_len in 0usize..20,
        chunk_len in 1usize..40,
    ) {
        let limits = ParserLimits { max_line_len: usize::MAX, max_event_size };
        let data_line = [b"data:".as_slice(), &vec![b'x'; line_len], b"\n"].concat();
        let lines_needed = max_event_size / (line_len + 1) + 1;
        let mut stream = data_line.repeat(lines_needed);
        stream.extend_from_slice(b"\ndata: after\n\n");
        prop_assert_eq!(
            run(limits, stream.chunks(chunk_len)).items,
            vec![
                Item::Skipped(ParseError::EventTooLarge { limit: max_event_size }),
                Item::Event(Event::message("after")),
            ]
        );
    }
}
