//! Spec cases for the SSE parser and encoder, one behaviour per test.
//!
//! The parser cases follow the WHATWG HTML Standard, "Server-sent events":
//! event stream interpretation and parsing, including the examples given in
//! the spec text. The encoder cases pin down the wire format the proxy sends
//! to every subscriber.

// Test helpers build events from literals known to be valid.
#![allow(clippy::expect_used)]

use sse_wire::{
    comment_lines, heartbeat_line, id_frame, padded_heartbeat_line, retry_line, Event, EventError,
    Item, ParseError, Parser, ParserLimits, DEFAULT_EVENT_TYPE, DEFAULT_MAX_EVENT_SIZE,
    DEFAULT_MAX_LINE_LEN,
};

/// Parses `chunks` in order as one stream with default limits, then ends it.
fn parse_chunks(chunks: &[&[u8]]) -> Vec<Item> {
    let mut parser = Parser::default();
    let mut items = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut items);
    }
    parser.finish();
    items
}

/// Parses `stream` as one chunk with default limits.
fn parse(stream: &[u8]) -> Vec<Item> {
    parse_chunks(&[stream])
}

/// The item for a message event of the default type.
fn message(data: &str) -> Item {
    Item::Event(Event::message(data))
}

/// The item for an event with the given fields.
fn event(
    id: Option<&str>,
    event_type: Option<&str>,
    data: Option<&str>,
    retry: Option<u64>,
) -> Item {
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
    Item::Event(builder.build().expect("valid test event"))
}

/// The events (not comments) among `items`.
fn events(items: &[Item]) -> Vec<&Event> {
    items
        .iter()
        .filter_map(|item| match item {
            Item::Event(event) => Some(event),
            Item::Comment(_) | Item::Skipped(_) => None,
        })
        .collect()
}

mod spec_examples {
    use super::*;

    /// The spec's stream with a comment block and three data blocks.
    const FOUR_BLOCKS: &[u8] =
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n";

    #[test]
    fn yhoo_multiline_data_is_joined_with_lf() {
        assert_eq!(
            parse(b"data: YHOO\ndata: +2\ndata: 10\n\n"),
            vec![message("YHOO\n+2\n10")]
        );
    }

    #[test]
    fn comment_only_block_fires_nothing() {
        assert_eq!(
            parse(b": test stream\n\n"),
            vec![Item::Comment(" test stream".to_owned())]
        );
    }

    #[test]
    fn first_event_fires_with_data_and_sets_id_1() {
        let items = parse(FOUR_BLOCKS);
        assert_eq!(items[1], event(Some("1"), None, Some("first event"), None));
    }

    #[test]
    fn id_without_value_resets_last_event_id() {
        let items = parse(FOUR_BLOCKS);
        assert_eq!(items[2], event(Some(""), None, Some("second event"), None));
    }

    #[test]
    fn third_event_keeps_one_of_two_leading_spaces_but_needs_a_blank_line() {
        let mut parser = Parser::default();
        let mut items = Vec::new();
        parser.feed(FOUR_BLOCKS, &mut items);
        assert_eq!(
            items.len(),
            3,
            "last block is not dispatched without a blank line"
        );
        parser.feed(b"\n", &mut items);
        assert_eq!(items[3], message(" third event"));
    }

    #[test]
    fn end_of_stream_does_not_dispatch_last_block() {
        let mut parser = Parser::default();
        let mut items = Vec::new();
        parser.feed(FOUR_BLOCKS, &mut items);
        parser.finish();
        parser.feed(b"\n", &mut items);
        assert_eq!(events(&items).len(), 2);
    }

    #[test]
    fn bare_data_lines_fire_empty_and_newline_events_and_last_block_is_discarded() {
        assert_eq!(
            parse(b"data\n\ndata\ndata\n\ndata:"),
            vec![message(""), message("\n")]
        );
    }

    #[test]
    fn space_after_colon_is_optional_so_both_events_are_identical() {
        assert_eq!(
            parse(b"data:test\n\ndata: test\n\n"),
            vec![message("test"), message("test")]
        );
    }

    #[test]
    fn add_and_remove_event_types_are_dispatched_by_name() {
        assert_eq!(
            parse(b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n"),
            vec![
                event(None, Some("add"), Some("73857293"), None),
                event(None, Some("remove"), Some("2153"), None),
                event(None, Some("add"), Some("113411"), None),
            ]
        );
    }
}

mod line_ends {
    use super::*;

    #[test]
    fn lf_ends_a_line() {
        assert_eq!(parse(b"data: a\n\n"), vec![message("a")]);
    }

    #[test]
    fn cr_ends_a_line() {
        assert_eq!(parse(b"data: a\r\r"), vec![message("a")]);
    }

    #[test]
    fn crlf_is_one_line_end() {
        assert_eq!(parse(b"data: a\r\ndata: b\r\n\r\n"), vec![message("a\nb")]);
    }

    #[test]
    fn cr_at_chunk_end_and_lf_at_next_start_is_one_line_end() {
        assert_eq!(
            parse_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]),
            vec![message("a\nb")]
        );
    }

    #[test]
    fn cr_then_empty_chunk_then_lf_is_one_line_end() {
        assert_eq!(
            parse_chunks(&[b"data: a\r", b"", b"\ndata: b\n\n"]),
            vec![message("a\nb")]
        );
    }

    #[test]
    fn cr_cr_is_two_line_ends_so_it_dispatches() {
        assert_eq!(
            parse(b"data: a\r\rdata: b\r\r"),
            vec![message("a"), message("b")]
        );
    }

    #[test]
    fn lf_cr_is_two_line_ends_so_it_dispatches() {
        assert_eq!(
            parse(b"data: a\n\rdata: b\n\r"),
            vec![message("a"), message("b")]
        );
    }

    #[test]
    fn blank_line_ended_by_cr_dispatches_before_the_next_chunk_arrives() {
        let mut parser = Parser::default();
        let mut items = Vec::new();
        parser.feed(b"data: a\r\r", &mut items);
        assert_eq!(items, vec![message("a")]);
    }

    #[test]
    fn mixed_line_ends_in_one_stream_are_all_honoured() {
        assert_eq!(
            parse(b"data: a\rdata: b\ndata: c\r\n\n"),
            vec![message("a\nb\nc")]
        );
    }

    #[test]
    fn line_split_across_chunks_is_one_line() {
        assert_eq!(
            parse_chunks(&[b"da", b"ta: he", b"llo", b"\n", b"\n"]),
            vec![message("hello")]
        );
    }
}

mod byte_order_mark {
    use super::*;

    #[test]
    fn leading_bom_is_stripped() {
        assert_eq!(parse(b"\xEF\xBB\xBFdata: a\n\n"), vec![message("a")]);
    }

    #[test]
    fn bom_split_across_chunks_is_stripped() {
        assert_eq!(
            parse_chunks(&[b"\xEF", b"\xBB", b"\xBF", b"data: a\n\n"]),
            vec![message("a")]
        );
    }

    #[test]
    fn second_bom_is_not_stripped_and_makes_an_unknown_field() {
        assert_eq!(
            parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n"),
            vec![message("b")]
        );
    }

    #[test]
    fn incomplete_bom_is_text_not_stripped() {
        assert_eq!(
            parse_chunks(&[b"\xEF\xBB", b"data: a\n\ndata: b\n\n"]),
            vec![message("b")]
        );
    }

    #[test]
    fn bom_later_in_the_stream_is_kept_as_text() {
        assert_eq!(
            parse(b"data: \xEF\xBB\xBFa\n\n"),
            vec![message("\u{FEFF}a")]
        );
    }

    #[test]
    fn new_stream_after_finish_has_its_bom_stripped() {
        let mut parser = Parser::default();
        let mut items = Vec::new();
        parser.feed(b"\xEF\xBB\xBFdata: a\n\n", &mut items);
        parser.finish();
        parser.feed(b"\xEF\xBB\xBFdata: b\n\n", &mut items);
        assert_eq!(items, vec![message("a"), message("b")]);
    }
}

mod comments {
    use super::*;

    #[test]
    fn comment_is_reported_with_text_after_colon_leading_space_kept() {
        assert_eq!(
            parse(b": hello\n"),
            vec![Item::Comment(" hello".to_owned())]
        );
    }

    #[test]
    fn empty_comment_is_reported_as_empty_text() {
        assert_eq!(parse(b":\n"), vec![Item::Comment(String::new())]);
    }

    #[test]
    fn comment_inside_a_block_does_not_affect_dispatch() {
        assert_eq!(
            parse(b"data: a\n:note\ndata: b\n\n"),
            vec![Item::Comment("note".to_owned()), message("a\nb")]
        );
    }

    #[test]
    fn comment_is_reported_in_stream_order_before_the_event_it_precedes() {
        assert_eq!(
            parse(b"data: a\n\n:x\ndata: b\n\n"),
            vec![message("a"), Item::Comment("x".to_owned()), message("b")]
        );
    }
}

mod fields {
    use super::*;

    #[test]
    fn only_one_leading_space_is_removed_from_a_value() {
        assert_eq!(parse(b"data:  a\n\n"), vec![message(" a")]);
    }

    #[test]
    fn trailing_space_in_a_value_is_kept() {
        assert_eq!(parse(b"data: a \n\n"), vec![message("a ")]);
    }

    #[test]
    fn value_is_everything_after_the_first_colon() {
        assert_eq!(parse(b"data: a: b:c\n\n"), vec![message("a: b:c")]);
    }

    #[test]
    fn line_without_colon_is_a_field_with_empty_value() {
        assert_eq!(parse(b"data\n\n"), vec![message("")]);
    }

    #[test]
    fn unknown_field_is_ignored() {
        assert_eq!(parse(b"foo: bar\ndata: a\n\n"), vec![message("a")]);
    }

    #[test]
    fn field_names_are_case_sensitive() {
        assert_eq!(
            parse(b"Data: a\nEVENT: x\n\ndata: b\n\n"),
            vec![message("b")]
        );
    }

    #[test]
    fn space_before_the_colon_is_part_of_the_field_name() {
        assert_eq!(parse(b"data : a\n\ndata: b\n\n"), vec![message("b")]);
    }
}

mod data_and_event_type {
    use super::*;

    #[test]
    fn one_trailing_lf_is_removed_from_data() {
        assert_eq!(parse(b"data: a\ndata:\n\n"), vec![message("a\n")]);
    }

    #[test]
    fn block_without_data_fires_no_event() {
        assert_eq!(parse(b"event: x\n\ndata: a\n\n"), vec![message("a")]);
    }

    #[test]
    fn event_type_defaults_to_message() {
        let items = parse(b"data: a\n\n");
        let event = events(&items)[0];
        assert_eq!(
            (event.event_type(), event.event_type_or_default()),
            (None, DEFAULT_EVENT_TYPE)
        );
    }

    #[test]
    fn event_field_sets_the_type() {
        assert_eq!(
            parse(b"event: tick\ndata: a\n\n"),
            vec![event(None, Some("tick"), Some("a"), None)]
        );
    }

    #[test]
    fn last_event_field_in_a_block_wins() {
        assert_eq!(
            parse(b"event: a\nevent: b\ndata: x\n\n"),
            vec![event(None, Some("b"), Some("x"), None)]
        );
    }

    #[test]
    fn empty_event_field_means_the_default_type() {
        assert_eq!(parse(b"event: a\nevent:\ndata: x\n\n"), vec![message("x")]);
    }

    #[test]
    fn explicit_message_type_is_kept_as_sent() {
        assert_eq!(
            parse(b"event: message\ndata: x\n\n"),
            vec![event(None, Some("message"), Some("x"), None)]
        );
    }

    #[test]
    fn event_type_is_reset_after_dispatch() {
        assert_eq!(
            parse(b"event: a\ndata: x\n\ndata: y\n\n"),
            vec![event(None, Some("a"), Some("x"), None), message("y")]
        );
    }

    #[test]
    fn event_type_of_a_block_without_data_is_discarded() {
        assert_eq!(parse(b"event: a\n\ndata: y\n\n"), vec![message("y")]);
    }

    #[test]
    fn data_buffer_is_reset_after_dispatch() {
        assert_eq!(
            parse(b"data: x\n\ndata: y\n\n"),
            vec![message("x"), message("y")]
        );
    }

    #[test]
    fn data_field_value_keeps_nul() {
        assert_eq!(parse(b"data: a\0b\n\n"), vec![message("a\0b")]);
    }
}

mod last_event_id {
    use super::*;

    #[test]
    fn id_field_is_reported_on_the_event() {
        assert_eq!(
            parse(b"id: 7\ndata: a\n\n"),
            vec![event(Some("7"), None, Some("a"), None)]
        );
    }

    #[test]
    fn id_persists_across_events_but_is_reported_only_where_set() {
        let mut parser = Parser::default();
        let mut items = Vec::new();
        parser.feed(b"id: 7\ndata: a\n\ndata: b\n\n", &mut items);
        assert_eq!(
            (items, parser.last_event_id()),
            (
                vec![event(Some("7"), None, Some("a"), None), message("b")],
                "7"
            )
        );
    }

    #[test]
    fn empty_id_resets_the_last_event_id() {
        let mut parser = Parser::default();
        let mut items = Vec::new();
        parser.feed(b"id: 7\n\nid\n\n", &mut items);
        assert_eq!(
            (items.last(), parser.last_event_id()),
            (Some(&event(Some(""), None, None, None)), "")
        );
    }

    #[test]
    fn id_containing_nul_is_ignored() {
        let mut parser = Parser::default();
        let mut items = Vec::new();
        parser.feed(b"id: 1\n\nid: 2\0\ndata: a\n\n", &mut items);
        assert_eq!(
            (items, parser.last_event_id()),
            (vec![event(Some("1"), None, None, None), message("a")], "1")
        );
    }

    #[test]
    fn id_only_block_is_reported_though_no_event_fires() {
        let items = parse(b"id: 42\n\n");
        assert_eq!(items, vec![event(Some("42"), None, None, None)]);
    }

    #[test]
    fn id_takes_effect_at_dispatch_even_without_data() {
        let mut parser = Parser::default();
        let mut items = Vec::new();
        parser.feed(b"id: 42\n\n", &mut items);
        assert_eq!(parser.last_event_id(), "42");
    }

    #[test]
    fn id_in_a_block_cut_off_by_end_of_stream_is_not_taken() {
        let mut parser = Parser::default();
        let mut items = Vec::new();
        parser.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n", &mut items);
        parser.finish();
        assert_eq!(parser.last_event_id(), "1");
    }

    #[test]
    fn last_id_field_in_a_block_wins() {
        assert_eq!(
            parse(b"id: 1\nid: 2\ndata: a\n\n"),
            vec![event(Some("2"), None, Some("a"), None)]
        );
    }

    #[test]
    fn repeating_the_same_id_is_still_reported() {
        assert_eq!(
            parse(b"id: 1\n\nid: 1\n\n"),
            vec![
                event(Some("1"), None, None, None),
                event(Some("1"), None, None, None)
            ]
        );
    }

    #[test]
    fn last_event_id_survives_finish() {
        let mut parser = Parser::default();
        let mut items = Vec::new();
        parser.feed(b"id: 9\n\n", &mut items);
        parser.finish();
        assert_eq!(parser.last_event_id(), "9");
    }
}

mod retry {
    use super::*;

    #[test]
    fn retry_with_only_digits_is_reported() {
        assert_eq!(
            parse(b"retry: 1500\n\n"),
            vec![event(None, None, None, Some(1500))]
        );
    }

    #[test]
    fn retry_is_reported_with_the_event_of_its_block() {
        assert_eq!(
            parse(b"retry: 10\ndata: a\n\n"),
            vec![event(None, None, Some("a"), Some(10))]
        );
    }

    #[test]
    fn retry_with_decimal_point_is_ignored() {
        assert_eq!(parse(b"retry: 1.5\ndata: a\n\n"), vec![message("a")]);
    }

    #[test]
    fn negative_retry_is_ignored() {
        assert_eq!(parse(b"retry: -1\ndata: a\n\n"), vec![message("a")]);
    }

    #[test]
    fn retry_with_unit_suffix_is_ignored() {
        assert_eq!(parse(b"retry: 3s\ndata: a\n\n"), vec![message("a")]);
    }

    #[test]
    fn empty_retry_is_ignored() {
        assert_eq!(parse(b"retry:\nretry\ndata: a\n\n"), vec![message("a")]);
    }

    #[test]
    fn retry_with_a_second_leading_space_is_ignored() {
        assert_eq!(parse(b"retry:  100\ndata: a\n\n"), vec![message("a")]);
    }

    #[test]
    fn retry_too_large_for_u64_is_ignored() {
        assert_eq!(
            parse(b"retry: 18446744073709551616\ndata: a\n\n"),
            vec![message("a")]
        );
    }

    #[test]
    fn retry_of_u64_max_is_accepted() {
        assert_eq!(
            parse(b"retry: 18446744073709551615\n\n"),
            vec![event(None, None, None, Some(u64::MAX))]
        );
    }

    #[test]
    fn retry_with_leading_zeros_is_decimal() {
        assert_eq!(
            parse(b"retry: 0010\n\n"),
            vec![event(None, None, None, Some(10))]
        );
    }
}

mod end_of_stream {
    use super::*;

    #[test]
    fn incomplete_event_is_discarded_at_end_of_stream() {
        assert_eq!(parse(b"data: a\n\ndata: b\n"), vec![message("a")]);
    }

    #[test]
    fn unfinished_line_does_not_leak_into_the_next_stream() {
        let mut parser = Parser::default();
        let mut items = Vec::new();
        parser.feed(b"data: a\ndat", &mut items);
        parser.finish();
        parser.feed(b"a: b\n\ndata: c\n\n", &mut items);
        assert_eq!(items, vec![message("c")]);
    }

    #[test]
    fn pending_cr_does_not_swallow_an_lf_of_the_next_stream() {
        let mut parser = Parser::default();
        let mut items = Vec::new();
        parser.feed(b"data: a\r", &mut items);
        parser.finish();
        parser.feed(b"\ndata: b\n\n", &mut items);
        assert_eq!(items, vec![message("b")]);
    }
}

mod utf8 {
    use super::*;

    #[test]
    fn multibyte_character_split_across_chunks_decodes_intact() {
        let euro = "€".as_bytes();
        assert_eq!(
            parse_chunks(&[b"data: ", &euro[..1], &euro[1..2], &euro[2..], b"\n\n"]),
            vec![message("€")]
        );
    }

    #[test]
    fn invalid_byte_is_replaced_with_replacement_character() {
        assert_eq!(parse(b"data: a\xFFb\n\n"), vec![message("a\u{FFFD}b")]);
    }

    #[test]
    fn truncated_sequence_before_line_end_is_one_replacement_character() {
        assert_eq!(parse(b"data: \xE2\x82\n\n"), vec![message("\u{FFFD}")]);
    }

    #[test]
    fn invalid_sequence_does_not_swallow_the_ascii_byte_after_it() {
        assert_eq!(parse(b"data: \xE2x\n\n"), vec![message("\u{FFFD}x")]);
    }

    #[test]
    fn invalid_utf8_in_comment_is_replaced() {
        assert_eq!(
            parse(b":\xC0\n"),
            vec![Item::Comment("\u{FFFD}".to_owned())]
        );
    }

    #[test]
    fn invalid_utf8_in_id_is_replaced() {
        assert_eq!(
            parse(b"id: \xFF\n\n"),
            vec![event(Some("\u{FFFD}"), None, None, None)]
        );
    }
}

mod limits {
    use super::*;

    /// Small limits so tests stay fast.
    const SMALL: ParserLimits = ParserLimits {
        max_line_len: 16,
        max_event_size: 32,
    };

    #[test]
    fn default_limits_are_one_mib_each() {
        assert_eq!(
            ParserLimits::default(),
            ParserLimits {
                max_line_len: 1 << 20,
                max_event_size: 1 << 20
            }
        );
        assert_eq!(
            (DEFAULT_MAX_LINE_LEN, DEFAULT_MAX_EVENT_SIZE),
            (1 << 20, 1 << 20)
        );
    }

    #[test]
    fn line_exactly_at_the_limit_is_accepted() {
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        parser.feed(b"data: 0123456789\n\n", &mut items);
        assert_eq!(items, vec![message("0123456789")]);
    }

    #[test]
    fn line_over_the_limit_skips_its_block() {
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        parser.feed(b"data: 0123456789X\n\ndata: b\n\n", &mut items);
        assert_eq!(
            items,
            vec![
                Item::Skipped(ParseError::LineTooLong { limit: 16 }),
                message("b")
            ]
        );
    }

    #[test]
    fn unterminated_line_over_the_limit_is_reported_without_waiting_for_its_end() {
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        parser.feed(b"data: 0123456789X", &mut items);
        assert_eq!(
            (items, parser.buffered_bytes()),
            (
                vec![Item::Skipped(ParseError::LineTooLong { limit: 16 })],
                0
            )
        );
    }

    #[test]
    fn over_long_line_in_one_byte_chunks_is_reported_at_the_first_excess_byte() {
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        let line = [b'x'; 17];
        for byte in &line[..16] {
            parser.feed(std::slice::from_ref(byte), &mut items);
            assert!(parser.buffered_bytes() <= SMALL.max_line_len);
        }
        assert_eq!(items, vec![]);
        parser.feed(&line[16..], &mut items);
        assert_eq!(
            items,
            vec![Item::Skipped(ParseError::LineTooLong { limit: 16 })]
        );
    }

    #[test]
    fn event_over_the_size_limit_is_skipped() {
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        // Each line adds 11 bytes (10 of value, 1 LF): the third passes 32.
        parser.feed(
            b"data: 0123456789\ndata: 0123456789\ndata: 0123456789\n\ndata: b\n\n",
            &mut items,
        );
        assert_eq!(
            items,
            vec![
                Item::Skipped(ParseError::EventTooLarge { limit: 32 }),
                message("b")
            ]
        );
    }

    #[test]
    fn event_exactly_at_the_size_limit_is_accepted() {
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        // 11 + 11 + 10 = 32 bytes of data buffer.
        parser.feed(
            b"data: 0123456789\ndata: 0123456789\ndata: 123456789\n\n",
            &mut items,
        );
        assert_eq!(items, vec![message("0123456789\n0123456789\n123456789")]);
    }

    #[test]
    fn event_type_and_id_count_towards_the_event_size() {
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        // 9 + 12 + 11 = 32 fits; the second data line (22 bytes of data
        // alone) only breaks the limit because the type and id count too.
        parser.feed(
            b"event: 012345678\nid: 0123456789ab\ndata: 0123456789\ndata: 0123456789\n",
            &mut items,
        );
        assert_eq!(
            items,
            vec![Item::Skipped(ParseError::EventTooLarge { limit: 32 })]
        );
    }

    #[test]
    fn block_size_starts_again_after_dispatch() {
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        parser.feed(
            b"data: 0123456789\ndata: 0123456789\n\ndata: 0123456789\ndata: 0123456789\n\n",
            &mut items,
        );
        assert_eq!(events(&items).len(), 2);
    }

    #[test]
    fn items_before_the_skip_and_after_its_blank_line_are_kept_in_order() {
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        parser.feed(
            b"data: a\n\n:c\ndata: 0123456789X\n\ndata: b\n\n",
            &mut items,
        );
        assert_eq!(
            items,
            vec![
                message("a"),
                Item::Comment("c".to_owned()),
                Item::Skipped(ParseError::LineTooLong { limit: 16 }),
                message("b")
            ]
        );
    }

    #[test]
    fn parser_drops_what_it_held_when_it_skips() {
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        parser.feed(
            b"data: 0123456789\ndata: 0123456789\ndata: 0123456789\n",
            &mut items,
        );
        assert_eq!(parser.buffered_bytes(), 0);
    }

    #[test]
    fn finish_ends_an_unfinished_skip() {
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        parser.feed(b"data: 0123456789X\ndata: c\n", &mut items);
        parser.finish();
        parser.feed(b"data: a\n\n", &mut items);
        assert_eq!(
            items,
            vec![
                Item::Skipped(ParseError::LineTooLong { limit: 16 }),
                message("a")
            ]
        );
    }

    #[test]
    fn line_error_message_names_the_limit_and_its_value() {
        let message = ParseError::LineTooLong { limit: 16 }.to_string();
        assert!(
            message.contains("max_line_len") && message.contains("16"),
            "{message}"
        );
    }

    #[test]
    fn event_error_message_names_the_limit_and_its_value() {
        let message = ParseError::EventTooLarge { limit: 32 }.to_string();
        assert!(
            message.contains("max_event_size") && message.contains("32"),
            "{message}"
        );
    }

    #[test]
    fn parse_error_is_a_std_error() {
        let error: Box<dyn std::error::Error> = Box::new(ParseError::LineTooLong { limit: 1 });
        assert!(error.to_string().contains('1'));
    }
}

/// A block that breaks a limit is discarded whole, up to and including the
/// blank line that ends it, reported as one `Item::Skipped`, and the stream
/// goes on: one oversized upstream event must not stop a topic.
mod skipping {
    use super::*;

    /// Small limits so tests stay fast.
    const SMALL: ParserLimits = ParserLimits {
        max_line_len: 16,
        max_event_size: 32,
    };

    /// A 17-byte line: one byte over `SMALL.max_line_len`.
    const LONG_LINE: &[u8] = b"data: 0123456789X";

    /// The item for a block skipped for a line over `SMALL.max_line_len`.
    fn line_too_long() -> Item {
        Item::Skipped(ParseError::LineTooLong { limit: 16 })
    }

    /// The item for a block skipped for an event over `SMALL.max_event_size`.
    fn event_too_large() -> Item {
        Item::Skipped(ParseError::EventTooLarge { limit: 32 })
    }

    /// Parses `chunks` in order with `SMALL` limits; returns the items and the
    /// parser (not finished), so its state can be checked.
    fn parse_small(chunks: &[&[u8]]) -> (Vec<Item>, Parser) {
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut items);
        }
        (items, parser)
    }

    #[test]
    fn oversized_event_between_two_normal_events_yields_event_skipped_event() {
        let (items, _) = parse_small(&[
            b"data: a\n\ndata: 0123456789\ndata: 0123456789\ndata: 0123456789\n\ndata: b\n\n",
        ]);
        assert_eq!(items, vec![message("a"), event_too_large(), message("b")]);
    }

    #[test]
    fn over_long_line_split_across_many_chunks_is_skipped_with_bounded_buffer() {
        let mut stream = b"data: ".to_vec();
        stream.extend(std::iter::repeat_n(b'x', 100 * SMALL.max_line_len));
        stream.extend_from_slice(b"\n\ndata: b\n\n");
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        for chunk in stream.chunks(3) {
            parser.feed(chunk, &mut items);
            assert!(parser.buffered_bytes() <= SMALL.max_line_len);
        }
        assert_eq!(items, vec![line_too_long(), message("b")]);
    }

    #[test]
    fn over_long_line_fed_one_byte_at_a_time_is_skipped_with_bounded_buffer() {
        let mut stream = b"id: 1\n\ndata: ".to_vec();
        stream.extend(std::iter::repeat_n(b'x', 100 * SMALL.max_line_len));
        stream.extend_from_slice(b"\r\n\r\ndata: b\r\n\r\n");
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        for byte in &stream {
            parser.feed(std::slice::from_ref(byte), &mut items);
            assert!(parser.buffered_bytes() <= SMALL.max_line_len);
        }
        assert_eq!(
            items,
            vec![
                event(Some("1"), None, None, None),
                line_too_long(),
                message("b")
            ]
        );
    }

    #[test]
    fn line_that_never_ends_is_reported_once_and_not_buffered() {
        let mut parser = Parser::new(SMALL);
        let mut items = Vec::new();
        parser.feed(LONG_LINE, &mut items);
        for _ in 0..1000 {
            parser.feed(b"more bytes, no line end ", &mut items);
            assert_eq!(parser.buffered_bytes(), 0);
        }
        assert_eq!(items, vec![line_too_long()]);
    }

    #[test]
    fn skipped_blocks_id_does_not_become_the_last_event_id() {
        let (items, parser) = parse_small(&[
            b"id: 1\ndata: a\n\nid: 2\ndata: 0123456789X\n\ndata: 0123456789X\nid: 3\n\ndata: b\n\n",
        ]);
        assert_eq!(
            (items, parser.last_event_id()),
            (
                vec![
                    event(Some("1"), None, Some("a"), None),
                    line_too_long(),
                    line_too_long(),
                    message("b")
                ],
                "1"
            )
        );
    }

    #[test]
    fn skipped_blocks_type_and_retry_do_not_leak_into_the_next_event() {
        let (items, _) = parse_small(&[b"retry: 5\nevent: x\ndata: 0123456789X\n\ndata: b\n\n"]);
        assert_eq!(items, vec![line_too_long(), message("b")]);
    }

    #[test]
    fn data_before_the_violation_in_the_same_block_is_discarded_too() {
        let (items, _) = parse_small(&[b"data: a\ndata: 0123456789X\n\n"]);
        assert_eq!(items, vec![line_too_long()]);
    }

    #[test]
    fn every_line_up_to_the_blank_line_is_discarded() {
        let (items, parser) = parse_small(&[b"data: 0123456789X\ndata: c\nid: 9\nretry: 1\n\n"]);
        assert_eq!((items, parser.last_event_id()), (vec![line_too_long()], ""));
    }

    #[test]
    fn one_skip_per_block_however_many_limits_it_breaks() {
        let (items, _) = parse_small(&[
            b"data: 0123456789X\ndata: 0123456789Y\n",
            b"data: 0123456789\ndata: 0123456789\ndata: 0123456789\n\n",
        ]);
        assert_eq!(items, vec![line_too_long()]);
    }

    #[test]
    fn two_oversized_blocks_in_a_row_are_two_skips() {
        let (items, _) = parse_small(&[
            b"data: 0123456789X\n\ndata: 0123456789\ndata: 0123456789\ndata: 0123456789\n\ndata: b\n\n",
        ]);
        assert_eq!(
            items,
            vec![line_too_long(), event_too_large(), message("b")]
        );
    }

    #[test]
    fn parsing_resumes_with_the_line_right_after_the_blank_line() {
        let (items, _) = parse_small(&[b"data: 0123456789X\n\n:c\n"]);
        assert_eq!(items, vec![line_too_long(), Item::Comment("c".to_owned())]);
    }

    #[test]
    fn comment_before_the_violation_is_reported_before_the_skip() {
        let (items, _) = parse_small(&[b":c\ndata: 0123456789X\n\n"]);
        assert_eq!(items, vec![Item::Comment("c".to_owned()), line_too_long()]);
    }

    #[test]
    fn comment_after_the_violation_in_the_skipped_block_is_discarded() {
        let (items, _) = parse_small(&[b"data: 0123456789X\n:c\n\n:d\n"]);
        assert_eq!(items, vec![line_too_long(), Item::Comment("d".to_owned())]);
    }

    #[test]
    fn over_long_comment_line_skips_its_block() {
        let (items, _) = parse_small(&[b":0123456789abcdefX\ndata: c\n\ndata: b\n\n"]);
        assert_eq!(items, vec![line_too_long(), message("b")]);
    }

    #[test]
    fn crlf_ending_the_over_long_line_is_one_line_end() {
        let (items, _) = parse_small(&[b"data: 0123456789X\r\ndata: c\r\n\r\ndata: b\r\n\r\n"]);
        assert_eq!(items, vec![line_too_long(), message("b")]);
    }

    #[test]
    fn lone_cr_line_ends_end_the_skip() {
        let (items, _) = parse_small(&[b"data: 0123456789X\r\rdata: b\r\r"]);
        assert_eq!(items, vec![line_too_long(), message("b")]);
    }

    #[test]
    fn cr_at_chunk_end_and_lf_at_next_start_is_one_line_end_while_skipping() {
        let (items, _) = parse_small(&[
            b"data: 0123456789X\r",
            b"\ndata: c\r",
            b"\n\r",
            b"\ndata: b\n\n",
        ]);
        assert_eq!(items, vec![line_too_long(), message("b")]);
    }

    #[test]
    fn line_end_in_the_chunk_after_the_excess_byte_ends_the_long_line_not_the_block() {
        let (items, _) = parse_small(&[LONG_LINE, b"\n", b"data: c\n\ndata: b\n\n"]);
        assert_eq!(items, vec![line_too_long(), message("b")]);
    }

    #[test]
    fn carried_over_line_that_breaks_the_limit_mid_chunk_is_skipped() {
        let (items, _) = parse_small(&[b"data: 01234567", b"89X\ndata: c\n\ndata: b\n\n"]);
        assert_eq!(items, vec![line_too_long(), message("b")]);
    }

    #[test]
    fn empty_chunks_while_skipping_change_nothing() {
        let (items, _) = parse_small(&[LONG_LINE, b"", b"\n", b"", b"\n", b"", b"data: b\n\n"]);
        assert_eq!(items, vec![line_too_long(), message("b")]);
    }

    #[test]
    fn over_long_first_line_after_a_split_bom_is_skipped() {
        let (items, _) = parse_small(&[b"\xEF", b"\xBB", b"\xBF", LONG_LINE, b"\n\ndata: b\n\n"]);
        assert_eq!(items, vec![line_too_long(), message("b")]);
    }

    #[test]
    fn incomplete_bom_counts_towards_the_first_lines_length() {
        // 2 bytes of a BOM that is not one, then 16: 18 bytes in the line.
        let (items, _) = parse_small(&[b"\xEF\xBB", b"data: 0123456789\n\ndata: b\n\n"]);
        assert_eq!(items, vec![line_too_long(), message("b")]);
    }

    #[test]
    fn skip_cut_off_by_end_of_stream_leaves_the_next_stream_alone() {
        let (mut items, mut parser) = parse_small(&[b"id: 1\n\ndata: 0123456789X\nid: 2\n"]);
        parser.finish();
        parser.feed(b"data: b\n\n", &mut items);
        assert_eq!(
            (items, parser.last_event_id()),
            (
                vec![
                    event(Some("1"), None, None, None),
                    line_too_long(),
                    message("b")
                ],
                "1"
            )
        );
    }
}

mod encoder {
    use super::*;

    #[test]
    fn message_encodes_as_data_line_and_blank_line() {
        assert_eq!(&Event::message("hi").encode()[..], b"data: hi\n\n");
    }

    #[test]
    fn every_present_field_is_written_in_id_event_retry_data_order() {
        let event = Event::builder()
            .id("1")
            .event_type("add")
            .retry(10)
            .data("x")
            .build()
            .unwrap();
        assert_eq!(
            &event.encode()[..],
            b"id: 1\nevent: add\nretry: 10\ndata: x\n\n"
        );
    }

    #[test]
    fn multiline_data_becomes_one_data_line_per_line() {
        assert_eq!(
            &Event::message("a\nb\nc").encode()[..],
            b"data: a\ndata: b\ndata: c\n\n"
        );
    }

    #[test]
    fn cr_and_crlf_in_data_are_line_ends_too() {
        assert_eq!(
            &Event::message("a\rb\r\nc").encode()[..],
            b"data: a\ndata: b\ndata: c\n\n"
        );
    }

    #[test]
    fn builder_normalises_data_line_ends_to_lf() {
        let event = Event::builder().data("a\r\nb\rc").build().unwrap();
        assert_eq!(event.data(), Some("a\nb\nc"));
    }

    #[test]
    fn empty_data_is_one_empty_data_line() {
        assert_eq!(&Event::message("").encode()[..], b"data: \n\n");
    }

    #[test]
    fn data_ending_in_lf_gets_a_final_empty_data_line() {
        assert_eq!(&Event::message("a\n").encode()[..], b"data: a\ndata: \n\n");
    }

    #[test]
    fn id_only_event_encodes_an_id_only_frame() {
        let event = Event::builder().id("5").build().unwrap();
        assert_eq!(&event.encode()[..], b"id: 5\n\n");
    }

    #[test]
    fn id_frame_primes_the_last_event_id() {
        assert_eq!(&id_frame("42").unwrap()[..], b"id: 42\n\n");
    }

    #[test]
    fn id_frame_with_empty_id_resets_it() {
        assert_eq!(
            parse(&id_frame("").unwrap()),
            vec![event(Some(""), None, None, None)]
        );
    }

    #[test]
    fn id_frame_rejects_a_line_break() {
        assert_eq!(id_frame("1\n2"), Err(EventError::IdContainsLineBreak));
    }

    /// How many blocks a client that dispatches on *every* blank line
    /// (fetch-event-source, httpx-sse) would hand its application: one per
    /// blank line at the start of a line.
    fn blank_lines(stream: &[u8]) -> usize {
        let mut count = 0;
        let mut at_line_start = true;
        for &byte in stream {
            if byte == b'\n' && at_line_start {
                count += 1;
            }
            at_line_start = byte == b'\n';
        }
        count
    }

    #[test]
    fn retry_line_is_a_retry_line_without_a_blank_line() {
        assert_eq!(&retry_line(3000)[..], b"retry: 3000\n");
    }

    #[test]
    fn retry_line_writes_zero_and_u64_max_in_decimal() {
        assert_eq!(
            (&retry_line(0)[..], &retry_line(u64::MAX)[..]),
            (&b"retry: 0\n"[..], &b"retry: 18446744073709551615\n"[..])
        );
    }

    #[test]
    fn a_retry_line_at_the_start_travels_with_the_first_event() {
        let mut stream = retry_line(3000).to_vec();
        stream.extend_from_slice(&Event::message("a").encode());
        assert_eq!(
            parse(&stream),
            vec![event(None, None, Some("a"), Some(3000))]
        );
        assert_eq!(blank_lines(&stream), 1);
    }

    #[test]
    fn a_retry_line_before_the_end_dispatches_nothing() {
        let mut stream = Event::message("a").encode().to_vec();
        stream.extend_from_slice(&retry_line(3000));
        assert_eq!(parse(&stream), vec![message("a")]);
        assert_eq!(blank_lines(&stream), 1);
    }

    #[test]
    fn a_retry_line_then_priming_is_one_block_that_fires_nothing() {
        let mut stream = retry_line(3000).to_vec();
        stream.extend_from_slice(&id_frame("7").unwrap());
        assert_eq!(
            parse(&stream),
            vec![event(Some("7"), None, None, Some(3000))]
        );
        assert!(!matches!(&parse(&stream)[0], Item::Event(e) if e.fires_event()));
        assert_eq!(blank_lines(&stream), 1);
    }

    #[test]
    fn heartbeat_is_an_empty_comment_line_alone() {
        assert_eq!(&heartbeat_line()[..], b":\n");
    }

    #[test]
    fn a_padded_heartbeat_is_one_comment_line_of_that_many_spaces() {
        assert_eq!(&padded_heartbeat_line(0)[..], b":\n");
        assert_eq!(&padded_heartbeat_line(3)[..], b":   \n");
        assert_eq!(blank_lines(&padded_heartbeat_line(2048)), 0);
    }

    #[test]
    fn heartbeats_between_events_give_clients_that_dispatch_every_blank_line_no_empty_event() {
        let mut stream = Event::message("a").encode().to_vec();
        for _ in 0..3 {
            stream.extend_from_slice(&heartbeat_line());
        }
        stream.extend_from_slice(&Event::message("b").encode());
        assert_eq!(
            parse(&stream),
            vec![
                message("a"),
                Item::Comment(String::new()),
                Item::Comment(String::new()),
                Item::Comment(String::new()),
                message("b")
            ]
        );
        // Two events, two blank lines: no client sees a third.
        assert_eq!(blank_lines(&stream), 2);
    }

    #[test]
    fn comment_lines_write_text_verbatim_after_the_colon() {
        assert_eq!(&comment_lines(" ping")[..], b": ping\n");
    }

    #[test]
    fn comment_lines_turn_line_breaks_into_further_comment_lines() {
        assert_eq!(&comment_lines("a\nb\r\nc\rd")[..], b":a\n:b\n:c\n:d\n");
    }

    #[test]
    fn comment_lines_with_injected_field_stay_comments() {
        let lines = comment_lines("x\n\ndata: evil");
        assert_eq!(
            parse(&lines),
            vec![
                Item::Comment("x".to_owned()),
                Item::Comment(String::new()),
                Item::Comment("data: evil".to_owned())
            ]
        );
        assert_eq!(blank_lines(&lines), 0);
    }

    #[test]
    fn builder_rejects_id_with_lf() {
        assert_eq!(
            Event::builder().id("a\nb").data("x").build(),
            Err(EventError::IdContainsLineBreak)
        );
    }

    #[test]
    fn builder_rejects_id_with_cr() {
        assert_eq!(
            Event::builder().id("a\rb").data("x").build(),
            Err(EventError::IdContainsLineBreak)
        );
    }

    #[test]
    fn builder_rejects_id_with_nul() {
        assert_eq!(
            Event::builder().id("a\0b").data("x").build(),
            Err(EventError::IdContainsNul)
        );
    }

    #[test]
    fn builder_rejects_event_type_with_line_break() {
        assert_eq!(
            Event::builder().event_type("a\nb").data("x").build(),
            Err(EventError::EventTypeContainsLineBreak)
        );
    }

    #[test]
    fn builder_rejects_event_type_without_data() {
        assert_eq!(
            Event::builder().event_type("a").id("1").build(),
            Err(EventError::EventTypeWithoutData)
        );
    }

    #[test]
    fn builder_rejects_an_event_with_nothing_observable() {
        assert_eq!(Event::builder().build(), Err(EventError::NothingToDispatch));
    }

    #[test]
    fn builder_treats_empty_event_type_as_the_default() {
        let event = Event::builder().event_type("").data("x").build().unwrap();
        assert_eq!(event, Event::message("x"));
    }

    #[test]
    fn event_error_message_says_what_is_wrong() {
        assert!(EventError::IdContainsNul.to_string().contains("NUL"));
    }

    #[test]
    fn encoded_len_is_exact() {
        let event = Event::builder()
            .id("123")
            .event_type("t")
            .retry(99)
            .data("a\n\nbc")
            .build()
            .unwrap();
        assert_eq!(event.encoded_len(), event.encode().len());
    }

    #[test]
    fn encode_into_appends_after_existing_bytes() {
        let mut buf = bytes::BytesMut::from(&b":\n\n"[..]);
        Event::message("a").encode_into(&mut buf);
        assert_eq!(&buf[..], b":\n\ndata: a\n\n");
    }

    #[test]
    fn clones_of_an_encoded_frame_share_one_buffer() {
        let frame = Event::message("shared").encode();
        let copy = frame.clone();
        assert_eq!(frame.as_ptr(), copy.as_ptr());
    }

    #[test]
    fn value_with_leading_space_survives_encode_and_parse() {
        let event = Event::builder().id(" 1").data(" a").build().unwrap();
        assert_eq!(parse(&event.encode()), vec![Item::Event(event)]);
    }

    #[test]
    fn fires_event_only_with_data() {
        assert_eq!(
            (
                Event::message("").fires_event(),
                Event::builder().id("1").build().unwrap().fires_event()
            ),
            (true, false)
        );
    }
}
