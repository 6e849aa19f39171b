//! The HTTP side of an event stream, as both ends of the proxy speak it: the
//! header names, the response head a subscriber gets, the content type an
//! upstream must answer with, and the `Last-Event-ID` a client resumes from.
//!
//! The session side (`subscriber.rs`, `admission.rs`) and the upstream side
//! (`hub/upstream.rs`, `hub/topic.rs`) both use these, so neither reaches
//! into the other, and the one rule about a client's `Last-Event-ID` lives
//! here: [`resume_point`] is what a client may resume from (looked up in a
//! window), [`last_event_id_header`] what may be sent on to the app (that
//! client's own catch-up or auth request, never a shared stream).

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;

/// The media type of an event stream.
pub const EVENT_STREAM: &str = "text/event-stream";

/// `Last-Event-ID`, the header a resuming SSE client sends.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// The query parameter a client that cannot set headers resumes with.
pub const LAST_EVENT_ID_PARAM: &str = "lastEventId";

/// Tells nginx-style buffering intermediaries to pass the stream on at once.
pub const X_ACCEL_BUFFERING: &str = "x-accel-buffering";

/// A `retry:` line between one and two times `retry`, drawn afresh for each
/// stream the proxy ends or refuses, so a crowd told to come back does not
/// come back at the same moment.
pub fn jittered_retry_line(retry: Duration) -> Bytes {
    let base = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX).max(1);
    crate::sse::retry_line(base.saturating_add(fastrand::u64(0..=base)))
}

/// The response head of an event stream.
pub fn response_head(session: &ServerSession) -> pingora::Result<ResponseHeader> {
    let mut response = ResponseHeader::build(200, Some(4))?;
    response.insert_header(header::CONTENT_TYPE, EVENT_STREAM)?;
    response.insert_header(header::CACHE_CONTROL, "no-cache")?;
    response.insert_header(X_ACCEL_BUFFERING, "no")?;
    if !session.is_http2() && session.req_header().version == http::Version::HTTP_11 {
        // Chunked keeps an HTTP/1.1 stream framed; the connection is not
        // reused after it (keepalive is off), so nothing waits on its end.
        response.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(response)
}

/// The resume point a subscriber asked for: the `Last-Event-ID` header, or
/// the `lastEventId` query parameter. Values longer than `max_len`, empty, or
/// that could never have been an id (CR, LF, NUL) count as absent. What is
/// left is only ever looked up in a topic's window, or sent to the app in
/// that subscriber's own catch-up after a stricter check (a header value);
/// it never reaches the topic's shared upstream request.
pub fn resume_point(session: &ServerSession, max_len: usize) -> Option<String> {
    let request = session.req_header();
    let from_header = request
        .headers
        .get(LAST_EVENT_ID)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .map(str::to_string);
    let from_query = || {
        request.uri.query()?.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            (name == LAST_EVENT_ID_PARAM).then(|| percent_decode(value))?
        })
    };
    from_header
        .or_else(from_query)
        .filter(|id| !id.is_empty() && id.len() <= max_len && !id.contains(['\r', '\n', '\0']))
}

/// Decodes `%XX` escapes and `+` (as a query string writes a space);
/// `None` when the result is not UTF-8 or an escape is malformed.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `id` as a `Last-Event-ID` value, when it can be sent as one unchanged:
/// no control characters (a header value cannot carry them, and HTTP would
/// trim the white space at its ends, changing the id).
pub fn last_event_id_header(id: &str) -> Option<HeaderValue> {
    let unchanged =
        !id.is_empty() && !id.chars().any(char::is_control) && id.trim_matches([' ', '\t']) == id;
    unchanged
        .then(|| HeaderValue::from_bytes(id.as_bytes()).ok())
        .flatten()
}

/// `text/event-stream`, with or without parameters, in any letter case.
pub fn is_event_stream(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(EVENT_STREAM))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_stream_content_type_allows_parameters_and_case() {
        assert!(is_event_stream("text/event-stream"));
        assert!(is_event_stream("Text/Event-Stream; charset=utf-8"));
        assert!(!is_event_stream("text/plain"));
        assert!(!is_event_stream(""));
    }

    #[test]
    fn only_ids_a_header_carries_unchanged_are_sent_upstream() {
        assert!(last_event_id_header("42").is_some());
        assert!(last_event_id_header("été-7").is_some());
        for bad in ["", "\u{1}", "a\tb", " 1", "1 ", "a\u{7f}"] {
            assert!(last_event_id_header(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn percent_decoding_handles_escapes_and_plus() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(percent_decode("%E2%9C%93").as_deref(), Some("✓"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
