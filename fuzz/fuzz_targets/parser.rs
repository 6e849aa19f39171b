//! Fuzz target for the SSE parser (the `sse-wire` crate), run with cargo-fuzz
//! (see docs/fuzzing.md).
//!
//! The proxy feeds whatever its upstream sends to this parser, so it must
//! never panic, must keep its memory within its limits (skipping the blocks
//! that break them), and must give the same result, skipped blocks included,
//! however the bytes are chunked. Every event it yields must survive the
//! encoder the proxy fans out with. This target checks all of that on each
//! input. It depends on the `sse-wire` crate alone, so fuzzing does not build
//! the whole proxy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_wire::{comment_lines, Item, Parser, ParserLimits};

/// Control-byte bit: use tiny limits (derived from the control bytes) so the
/// skipping paths are reached, instead of the defaults.
const SMALL_LIMITS_BIT: u8 = 0x80;
/// Mask for the tiny limits taken from the control bytes.
const SMALL_LIMIT_MASK: u8 = 0x3F;
/// Chunk lengths tried range over 1..=this.
const MAX_CHUNK_LEN: usize = 64;

/// What parsing a stream produced.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// Every item, skipped blocks included.
    items: Vec<Item>,
    /// The last event ID after the stream ended.
    last_event_id: String,
}

/// Parses `stream` in chunks of `chunk_len` bytes (all of it at once for 0),
/// checking the memory bound after every chunk.
fn run(limits: ParserLimits, stream: &[u8], chunk_len: usize) -> Outcome {
    let mut parser = Parser::new(limits);
    let mut items = Vec::new();
    let chunk_len = if chunk_len == 0 {
        stream.len().max(1)
    } else {
        chunk_len
    };
    for chunk in stream.chunks(chunk_len) {
        parser.feed(chunk, &mut items);
        assert!(
            parser.buffered_bytes() <= limits.max_line_len.saturating_add(limits.max_event_size),
            "parser holds {} bytes with {limits:?}",
            parser.buffered_bytes()
        );
    }
    parser.finish();
    Outcome {
        items,
        last_event_id: parser.last_event_id().to_owned(),
    }
}

/// Parses one encoded frame with default limits.
fn reparse(frame: &[u8]) -> Vec<Item> {
    run(ParserLimits::default(), frame, 0).items
}

fuzz_target!(|input: &[u8]| {
    let [control, size_control, stream @ ..] = input else {
        return;
    };
    let limits = if control & SMALL_LIMITS_BIT != 0 {
        ParserLimits {
            max_line_len: usize::from(control & SMALL_LIMIT_MASK),
            max_event_size: usize::from(size_control & SMALL_LIMIT_MASK) * 2,
        }
    } else {
        ParserLimits::default()
    };
    let chunk_len = 1 + usize::from(*size_control) % MAX_CHUNK_LEN;

    let whole = run(limits, stream, 0);
    assert_eq!(
        run(limits, stream, chunk_len),
        whole,
        "chunking changed the result"
    );
    assert_eq!(
        run(limits, stream, 1),
        whole,
        "1-byte chunks changed the result"
    );

    for item in &whole.items {
        match item {
            Item::Event(event) => {
                let frame = event.encode();
                assert_eq!(frame.len(), event.encoded_len());
                assert_eq!(
                    reparse(&frame),
                    vec![item.clone()],
                    "event did not round trip"
                );
            }
            Item::Comment(text) => {
                assert_eq!(
                    reparse(&comment_lines(text)),
                    vec![item.clone()],
                    "comment did not round trip"
                );
            }
            Item::Skipped(_) => {}
        }
    }
});
