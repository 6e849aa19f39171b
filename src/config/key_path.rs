//! Which key stands at a byte offset of the config text: `topic[1].heartbeat`,
//! `listen[0].tls.cert`.
//!
//! The serde layer reports a problem as a byte span and a message, without
//! the key: an unknown field, a value of the wrong type, a TOML syntax
//! error. This module names the key from the TOML parser's own reading of
//! the text. It parses the file once more with [`toml_parser`], a push
//! parser that reports every table header, key and value with its span and
//! keeps going past syntax errors, and remembers the dotted key path each
//! of those spans belongs to:
//!
//! - arrays of tables are counted from 0: the second `[[topic]]` is `topic[1]`;
//! - dotted keys and headers nest: `[server]` `tcp_keepalive.idle = …` and
//!   `[server.tcp_keepalive]` `idle = …` are both `server.tcp_keepalive.idle`;
//! - inline tables nest too: `tls = { cert = … }` is `listen[0].tls.cert`;
//! - an inline table inside an array is numbered like an array of tables
//!   (`listen = [{ addr = … }]` is `listen[0].addr`), while a plain value
//!   inside an array is named by the array's key (`topic[0].cors_origins`).
//!
//! Only a file that failed to load is parsed this second time.

use std::collections::HashMap;
use std::ops::Range;

use toml_parser::decoder::Encoding;
use toml_parser::parser::{parse_document, EventReceiver};
use toml_parser::{ErrorSink, Raw, Source, Span};

/// Arrays and inline tables nested deeper than this are not entered (their
/// contents are named by the outermost ones), so a hostile file cannot grow
/// the walker's stack without bound. Real configs nest two or three deep.
const MAX_NESTING: usize = 64;

/// The dotted key path of everything in a TOML text that has a span.
pub(super) struct KeyMap<'t> {
    /// The text, to tell which places share a line with an offset.
    text: &'t str,
    /// Keys, values, inline tables, arrays and table headers, each with the
    /// path it names.
    places: Vec<Place>,
    /// Table headers alone: the table a line without a key of its own
    /// belongs to.
    headers: Vec<Place>,
}

/// A span of the text and the key path it names.
#[derive(Debug)]
struct Place {
    /// Byte range in the text.
    span: Range<usize>,
    /// `topic[1].heartbeat`; empty for a header with no key (`[]`).
    path: String,
}

impl Place {
    /// Whether the problem at `offset` is in this place. An empty span (the
    /// missing value of `key = `) holds the offset it stands at.
    fn holds(&self, offset: usize) -> bool {
        self.span.start <= offset && (offset < self.span.end || offset == self.span.start)
    }
}

impl<'t> KeyMap<'t> {
    /// Parses `text` (valid TOML or not) and records every place.
    pub(super) fn of(text: &'t str) -> KeyMap<'t> {
        let tokens = Source::new(text).lex().into_vec();
        let mut walker = Walker::new(text);
        // Syntax errors are the serde layer's to report; here the parser
        // only recovers from them and goes on.
        parse_document(&tokens, &mut walker, &mut ());
        walker.finish()
    }

    /// The key a problem at byte `offset` belongs to: the narrowest place
    /// that holds the offset; else (a syntax error past the end of what the
    /// parser understood) the last thing on the same line before it; else
    /// the table in effect there.
    pub(super) fn key_at(&self, offset: usize) -> Option<String> {
        let on_its_line = |place: &&Place| {
            place.span.start <= offset
                && self
                    .text
                    .get(place.span.start..offset)
                    .is_some_and(|between| !between.contains('\n'))
        };
        let place = self
            .places
            .iter()
            .filter(|place| place.holds(offset))
            .min_by_key(|place| place.span.len())
            .or_else(|| {
                self.places
                    .iter()
                    .filter(on_its_line)
                    .max_by_key(|place| place.span.end)
            })
            .or_else(|| {
                self.headers
                    .iter()
                    .filter(|header| header.span.start <= offset)
                    .max_by_key(|header| header.span.start)
            })?;
        (!place.path.is_empty()).then(|| place.path.clone())
    }
}

/// Follows the parser's events and turns them into [`Place`]s.
struct Walker<'t> {
    /// The text the events' spans point into.
    text: &'t str,
    /// Everything recorded so far.
    places: Vec<Place>,
    /// The table headers recorded so far.
    headers: Vec<Place>,
    /// The table the key-value pairs below the last header belong to
    /// (`topic[1]`); empty at the top of the file.
    table: String,
    /// Elements met so far of each array of tables, by its path with the
    /// indexes of its parents (`topic`, or `a[1].b`).
    array_tables: HashMap<String, usize>,
    /// The header being read, between its `[` and its `]`.
    header: Option<Header>,
    /// The keys of the key-value pair being read (two for `tcp_keepalive.idle`).
    keys: Vec<String>,
    /// The inline tables and arrays being read, outermost first.
    nesting: Vec<Nested>,
}

/// A `[table]` or `[[array]]` header being read.
struct Header {
    /// Where its `[` stands.
    start: usize,
    /// `[[…]]`: one more element of an array of tables.
    array: bool,
    /// Its keys so far, with their spans.
    keys: Vec<(String, Range<usize>)>,
}

/// An inline table or array being read.
struct Nested {
    /// Where its `{` or `[` stands.
    start: usize,
    /// The key path it is the value of (`listen[0].tls`, `listen[1]`).
    path: String,
    /// For an array, the elements before the current one; `None` for a table.
    elements: Option<usize>,
}

/// `prefix.key1.key2`, without a leading dot when `prefix` is empty.
fn join(prefix: &str, keys: &[String]) -> String {
    let mut path = prefix.to_string();
    for key in keys {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    }
    path
}

impl<'t> Walker<'t> {
    fn new(text: &'t str) -> Walker<'t> {
        Walker {
            text,
            places: Vec::new(),
            headers: Vec::new(),
            table: String::new(),
            array_tables: HashMap::new(),
            header: None,
            keys: Vec::new(),
            nesting: Vec::new(),
        }
    }

    /// Ends what the text left open: an unclosed header, array or inline
    /// table runs to the end of the file, and holds the error found there.
    fn finish(mut self) -> KeyMap<'t> {
        self.finish_header(usize::MAX);
        self.close_all(usize::MAX);
        KeyMap {
            text: self.text,
            places: self.places,
            headers: self.headers,
        }
    }

    fn place(&mut self, span: Range<usize>, path: String) {
        self.places.push(Place { span, path });
    }

    /// The path keys are relative to here: the innermost inline table (or
    /// array) being read, else the current table.
    fn scope(&self) -> &str {
        self.nesting
            .last()
            .map_or(self.table.as_str(), |nested| nested.path.as_str())
    }

    /// The key as TOML reads it: quotes and escapes removed.
    fn decode_key(&self, span: Span, encoding: Option<Encoding>) -> String {
        let mut key = String::new();
        if let Some(raw) = self.text.get(span.start()..span.end()) {
            Raw::new_unchecked(raw, encoding, span).decode_key(&mut key, &mut ());
        }
        key
    }

    /// Turns the header just read into the current table.
    fn finish_header(&mut self, end: usize) {
        let Some(header) = self.header.take() else {
            return;
        };
        let last = header.keys.len().saturating_sub(1);
        let mut path = String::new();
        for (index, (key, span)) in header.keys.into_iter().enumerate() {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&key);
            if header.array && index == last {
                let count = self.array_tables.entry(path.clone()).or_insert(0);
                let element = *count;
                *count += 1;
                path = format!("{path}[{element}]");
            } else if let Some(count) = self.array_tables.get(&path) {
                // A parent that is an array of tables: its latest element.
                path = format!("{path}[{}]", count.saturating_sub(1));
            }
            self.place(span, path.clone());
        }
        let whole = header.start..end.max(header.start);
        self.headers.push(Place {
            span: whole.clone(),
            path: path.clone(),
        });
        self.place(whole, path.clone());
        self.table = path;
        self.keys.clear();
    }

    /// Starts a `[table]` or `[[array]]` header.
    fn open_header(&mut self, span: Span, array: bool) {
        // A header inside an unclosed inline table or array ends them.
        self.finish_header(span.start());
        self.close_all(span.start());
        self.header = Some(Header {
            start: span.start(),
            array,
            keys: Vec::new(),
        });
    }

    /// Enters an inline table or array, unless nested too deep.
    fn open(&mut self, span: Span, elements: Option<usize>) -> bool {
        if self.header.is_some() || self.nesting.len() >= MAX_NESTING {
            return false;
        }
        let path = match (self.nesting.last(), elements) {
            // An inline table in an array: numbered like an array of tables.
            (
                Some(Nested {
                    path,
                    elements: Some(index),
                    ..
                }),
                None,
            ) => format!("{path}[{index}]"),
            // Anything else is the value of the keys just read (an array in
            // an array: of the outer array's key).
            _ => join(self.scope(), &self.keys),
        };
        self.nesting.push(Nested {
            start: span.start(),
            path,
            elements,
        });
        self.keys.clear();
        true
    }

    /// Leaves the innermost inline table or array at `end`.
    fn close(&mut self, end: usize) {
        if let Some(nested) = self.nesting.pop() {
            self.place(nested.start..end.max(nested.start), nested.path);
        }
        self.keys.clear();
    }

    fn close_all(&mut self, end: usize) {
        while !self.nesting.is_empty() {
            self.close(end);
        }
    }
}

impl EventReceiver for Walker<'_> {
    fn std_table_open(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        self.open_header(span, false);
    }

    fn std_table_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        self.finish_header(span.end());
    }

    fn array_table_open(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        self.open_header(span, true);
    }

    fn array_table_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        self.finish_header(span.end());
    }

    fn inline_table_open(&mut self, span: Span, _error: &mut dyn ErrorSink) -> bool {
        self.open(span, None)
    }

    fn inline_table_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        if self
            .nesting
            .last()
            .is_some_and(|nested| nested.elements.is_none())
        {
            self.close(span.end());
        }
    }

    fn array_open(&mut self, span: Span, _error: &mut dyn ErrorSink) -> bool {
        self.open(span, Some(0))
    }

    fn array_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        if self
            .nesting
            .last()
            .is_some_and(|nested| nested.elements.is_some())
        {
            self.close(span.end());
        }
    }

    fn simple_key(&mut self, span: Span, encoding: Option<Encoding>, _error: &mut dyn ErrorSink) {
        if span.is_empty() {
            // Where a key is missing (`= 5`), the parser reports an empty one.
            return;
        }
        let key = self.decode_key(span, encoding);
        let range = span.start()..span.end();
        if let Some(header) = &mut self.header {
            header.keys.push((key, range));
        } else {
            self.keys.push(key);
            let path = join(self.scope(), &self.keys);
            self.place(range, path);
        }
    }

    fn scalar(&mut self, span: Span, _encoding: Option<Encoding>, _error: &mut dyn ErrorSink) {
        if self.header.is_some() {
            return;
        }
        // Inside an array no key is being read, so a plain element is
        // named by the array's key.
        let path = join(self.scope(), &self.keys);
        self.place(span.start()..span.end(), path);
        self.keys.clear();
    }

    fn value_sep(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        if let Some(Nested {
            elements: Some(count),
            ..
        }) = self.nesting.last_mut()
        {
            *count += 1;
        }
        self.keys.clear();
    }

    fn newline(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        // An unclosed header (`[sse`) ends with its line.
        self.finish_header(span.start());
        if self.nesting.is_empty() {
            self.keys.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key at the first occurrence of `marker` in `text`.
    fn key_at(text: &str, marker: &str) -> Option<String> {
        let offset = text.find(marker).expect("the marker is in the text");
        KeyMap::of(text).key_at(offset)
    }

    #[test]
    fn a_key_in_a_table_is_named_with_its_table() {
        let text = "[sse]\nheartbeat = \"5s\"\n";
        assert_eq!(key_at(text, "heartbeat").as_deref(), Some("sse.heartbeat"));
        assert_eq!(key_at(text, "\"5s\"").as_deref(), Some("sse.heartbeat"));
    }

    #[test]
    fn arrays_of_tables_are_counted_from_zero() {
        let text = "[[topic]]\npath = \"/a\"\n\n[[topic]]\npath = \"/b\"\nreplay = 1\n";
        assert_eq!(key_at(text, "\"/a\"").as_deref(), Some("topic[0].path"));
        assert_eq!(key_at(text, "\"/b\"").as_deref(), Some("topic[1].path"));
        assert_eq!(key_at(text, "replay").as_deref(), Some("topic[1].replay"));
    }

    #[test]
    fn a_header_names_its_own_element() {
        let text = "[[listen]]\naddr = \"a\"\n[[listen]]\n[app]\n";
        let second = text.rfind("[[listen]]").expect("two headers");
        let keys = KeyMap::of(text);
        assert_eq!(keys.key_at(second).as_deref(), Some("listen[1]"));
        assert_eq!(key_at(text, "[app]").as_deref(), Some("app"));
    }

    #[test]
    fn keys_inside_an_inline_table_are_named_through_it() {
        let text = "[[listen]]\naddr = \"127.0.0.1:1\"\ntls = { cert = \"a\", key = 5 }\n";
        assert_eq!(key_at(text, "5 }").as_deref(), Some("listen[0].tls.key"));
        assert_eq!(key_at(text, "\"a\"").as_deref(), Some("listen[0].tls.cert"));
        assert_eq!(key_at(text, "{").as_deref(), Some("listen[0].tls"));
    }

    #[test]
    fn dotted_keys_and_dotted_headers_name_the_same_key() {
        let dotted = "[server]\ntcp_keepalive.idle = 5\n";
        let header = "[server.tcp_keepalive]\nidle = 5\n";
        let wanted = Some("server.tcp_keepalive.idle");
        assert_eq!(key_at(dotted, "5").as_deref(), wanted);
        assert_eq!(key_at(header, "5").as_deref(), wanted);
        assert_eq!(key_at(header, "idle").as_deref(), wanted);
        assert_eq!(
            key_at(dotted, "tcp_keepalive").as_deref(),
            Some("server.tcp_keepalive")
        );
    }

    #[test]
    fn a_key_repeated_in_two_tables_is_named_by_where_it_stands() {
        let text = "[sse]\nheartbeat = \"1s\"\n\n[[topic]]\nheartbeat = 5\n";
        assert_eq!(key_at(text, "\"1s\"").as_deref(), Some("sse.heartbeat"));
        assert_eq!(key_at(text, "5").as_deref(), Some("topic[0].heartbeat"));
    }

    #[test]
    fn a_plain_value_in_an_array_is_named_by_the_array() {
        let text = "[[topic]]\ncors_origins = [\n  \"https://a.example\",\n  1,\n]\n";
        assert_eq!(key_at(text, "1,").as_deref(), Some("topic[0].cors_origins"));
    }

    #[test]
    fn inline_tables_in_an_array_are_counted_from_zero() {
        let text = "listen = [{ addr = \"a\" }, { addr = 5 }]\n";
        assert_eq!(key_at(text, "\"a\"").as_deref(), Some("listen[0].addr"));
        assert_eq!(key_at(text, "5").as_deref(), Some("listen[1].addr"));
    }

    #[test]
    fn quoted_keys_are_named_without_their_quotes() {
        let text = "[sse]\n\"heart beat\" = 5\n";
        assert_eq!(key_at(text, "5").as_deref(), Some("sse.heart beat"));
        let text = "[sse]\n'heartbeat' = 5\n";
        assert_eq!(key_at(text, "5").as_deref(), Some("sse.heartbeat"));
    }

    #[test]
    fn look_alikes_in_comments_and_strings_are_not_headers() {
        let text = "# [[topic]]\n[[topic]]\nauth = \"\"\"\n[[topic]]\n\"\"\"\nreplay = 1\n";
        assert_eq!(key_at(text, "replay").as_deref(), Some("topic[0].replay"));
    }

    #[test]
    fn an_array_of_tables_under_another_counts_per_parent() {
        let text = "[[a]]\n[[a.b]]\n[[a]]\n[[a.b]]\nx = 1\n";
        assert_eq!(key_at(text, "x").as_deref(), Some("a[1].b[0].x"));
    }

    #[test]
    fn a_syntax_error_is_named_by_the_key_on_its_line() {
        // An unquoted duration, a missing value, a missing one in an inline table.
        let text = "[sse]\nheartbeat = 15s\n";
        assert_eq!(key_at(text, "s\n").as_deref(), Some("sse.heartbeat"));
        let text = "[[listen]]\naddr = \n";
        let end = text.len() - 1;
        assert_eq!(
            KeyMap::of(text).key_at(end).as_deref(),
            Some("listen[0].addr")
        );
        let text = "[[listen]]\ntls = { cert = \"a\", key = }\n";
        assert_eq!(key_at(text, "}").as_deref(), Some("listen[0].tls.key"));
    }

    #[test]
    fn a_syntax_error_on_a_line_without_a_key_is_named_by_its_table() {
        let text = "[sse]\nheartbeat = \"1s\"\n= 5\n";
        assert_eq!(key_at(text, "= 5").as_deref(), Some("sse"));
        assert_eq!(key_at("= 5\n", "5"), None);
    }

    #[test]
    fn an_unclosed_header_ends_with_its_line() {
        let text = "[app]\nupstream = \"a\"\n[sse\nheartbeat = 5\n";
        assert_eq!(key_at(text, "\nheartbeat").as_deref(), Some("sse"));
        assert_eq!(key_at(text, "5").as_deref(), Some("sse.heartbeat"));
    }

    #[test]
    fn deep_nesting_is_named_by_the_outermost_arrays() {
        let text = format!("deep = {}1{}\n", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(key_at(&text, "1").as_deref(), Some("deep"));
    }
}
