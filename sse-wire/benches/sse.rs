//! Throughput of the SSE parser and encoder on a realistic stream.
//!
//! The proxy parses each upstream stream once and encodes each event once, so
//! these two numbers bound how many events per second one core can take in
//! and fan out. The stream is generated deterministically: JSON events of 80
//! to 300 bytes, each with an `id`, some with an `event` type, some split
//! across several `data` lines, and a comment heartbeat now and then. It is
//! fed in network-sized chunks, and the items are dropped after every chunk,
//! as the proxy does once it has handed them on.
//!
//! Run with `cargo bench -p sse-wire --bench sse`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sse_wire::{Event, Item, Parser, ParserLimits};

/// Events in the generated stream (about 2.1 MB of it).
const EVENT_COUNT: usize = 10_000;
/// Bytes handed to the parser per call, like one read from a socket.
const CHUNK_LEN: usize = 16 * 1024;
/// Shortest and longest JSON payload generated, in bytes.
const PAYLOAD_LEN: (usize, usize) = (80, 300);
/// One event in this many has its JSON split over several `data` lines.
const MULTILINE_EVERY: u64 = 5;
/// One event in this many has an explicit `event` type.
const TYPED_EVERY: u64 = 3;
/// A heartbeat comment follows one event in this many.
const COMMENT_EVERY: u64 = 10;

/// A small deterministic xorshift generator, so every run parses the same
/// bytes without a `rand` dependency.
struct Xorshift(u64);

impl Xorshift {
    /// The next pseudo-random number.
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A pseudo-random number in `low..=high`.
    fn between(&mut self, low: usize, high: usize) -> usize {
        // The remainder is at most `high - low`, which fits in usize.
        low + (self.next() % (high - low + 1) as u64) as usize
    }
}

/// The generated upstream stream and the number of events in it.
fn realistic_stream() -> (Vec<u8>, usize) {
    let mut random = Xorshift(0x5EED_5EED_5EED_5EED);
    let mut stream = Vec::new();
    for seq in 0..EVENT_COUNT {
        let target_len = random.between(PAYLOAD_LEN.0, PAYLOAD_LEN.1);
        let mut json = format!(
            r#"{{"seq":{seq},"symbol":"SYM{}","price":{}.{:02},"note":""#,
            random.next() % 1000,
            random.next() % 10_000,
            random.next() % 100
        );
        while json.len() + 2 < target_len {
            json.push(char::from(b'a' + (random.next() % 26) as u8));
        }
        json.push_str("\"}");

        stream.extend_from_slice(format!("id: {seq}\n").as_bytes());
        if random.next().is_multiple_of(TYPED_EVERY) {
            stream.extend_from_slice(b"event: quote\n");
        }
        if random.next().is_multiple_of(MULTILINE_EVERY) {
            let (first, second) = json.split_at(json.len() / 2);
            for part in [first, second] {
                stream.extend_from_slice(b"data: ");
                stream.extend_from_slice(part.as_bytes());
                stream.push(b'\n');
            }
        } else {
            stream.extend_from_slice(b"data: ");
            stream.extend_from_slice(json.as_bytes());
            stream.push(b'\n');
        }
        stream.push(b'\n');
        if random.next().is_multiple_of(COMMENT_EVERY) {
            stream.extend_from_slice(b": keepalive\n\n");
        }
    }
    (stream, EVENT_COUNT)
}

/// Parses `stream` in [`CHUNK_LEN`] chunks, dropping items after each chunk;
/// returns how many events came out.
fn parse_stream(stream: &[u8]) -> usize {
    let mut parser = Parser::new(ParserLimits::default());
    let mut items = Vec::new();
    let mut events = 0;
    for chunk in stream.chunks(CHUNK_LEN) {
        parser.feed(chunk, &mut items);
        events += items
            .iter()
            .filter(|item| matches!(item, Item::Event(_)))
            .count();
        items.clear();
    }
    parser.finish();
    events
}

/// The events of `stream`, ready to encode.
fn parsed_events(stream: &[u8]) -> Vec<Event> {
    let mut parser = Parser::new(ParserLimits::default());
    let mut items = Vec::new();
    parser.feed(stream, &mut items);
    items
        .into_iter()
        .filter_map(|item| match item {
            Item::Event(event) => Some(event),
            Item::Comment(_) => None,
            Item::Skipped(error) => panic!("generated stream breaks a limit: {error}"),
        })
        .collect()
}

/// Registers the parse and encode benchmarks.
fn sse(c: &mut Criterion) {
    let (stream, event_count) = realistic_stream();
    assert_eq!(parse_stream(&stream), event_count);

    let mut parse = c.benchmark_group("sse_parse");
    parse.throughput(Throughput::Bytes(stream.len() as u64));
    parse.bench_function("bytes", |b| b.iter(|| parse_stream(black_box(&stream))));
    parse.throughput(Throughput::Elements(event_count as u64));
    parse.bench_function("events", |b| b.iter(|| parse_stream(black_box(&stream))));
    parse.finish();

    let events = parsed_events(&stream);
    let mut encode = c.benchmark_group("sse_encode");
    encode.throughput(Throughput::Elements(events.len() as u64));
    encode.bench_function("events", |b| {
        b.iter(|| {
            for event in black_box(&events) {
                black_box(event.encode());
            }
        })
    });
    encode.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    targets = sse
}
criterion_main!(benches);
