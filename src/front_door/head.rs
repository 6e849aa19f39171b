//! Reading an HTTP/1.1 request head before Pingora sees the request.
//!
//! The front door reads each HTTP/1.1 request head itself, to route it (topic
//! or proxy) and to bound it: `[limits] max_header_bytes` in size, and
//! `header_timeout` from its first byte. A client may send its head in one
//! write or one byte at a time; either way each byte is looked at once: the
//! [`HeadScanner`] keeps where its search for the blank line that ends the
//! head stands between reads, so a trickled head costs linear time, not a
//! rescan of everything read so far after every read.

use bytes::BytesMut;
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// The method and target of a request head's request line (empty lines
/// before it skipped, as RFC 9112 §2.2 allows); `None` if it has none.
pub(super) fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head
        .split(|b| *b == b'\n')
        .find(|l| !l.is_empty() && *l != b"\r")?;
    let mut parts = std::str::from_utf8(line).ok()?.split(' ');
    Some((parts.next()?, parts.next()?))
}

/// Where the search for the blank line that ends a request head stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Before the request line: empty lines there are allowed (RFC 9112 §2.2).
    Leading,
    /// Inside a line.
    InLine,
    /// Just after a line's LF: an LF (or CR LF) now is the blank line.
    LineStart,
    /// After a line's LF and a CR: an LF now is the blank line.
    LineStartCr,
}

/// Finds the end of a request head incrementally: feed it the growing
/// buffer after every read; it looks only at the bytes it has not seen.
///
/// Line ends are LF or CR LF, as Pingora's parser (httparse) takes them.
#[derive(Debug)]
pub(super) struct HeadScanner {
    /// Where the search stands after `examined` bytes.
    position: Position,
    /// How many bytes of the buffer have been looked at.
    examined: usize,
}

impl HeadScanner {
    pub(super) fn new() -> HeadScanner {
        HeadScanner {
            position: Position::Leading,
            examined: 0,
        }
    }

    /// How many bytes have been looked at, in all.
    #[cfg(test)]
    fn examined(&self) -> usize {
        self.examined
    }

    /// Looks at the bytes of `buf` past those seen before (`buf` only grows
    /// between calls) and returns the length of the head, blank line
    /// included, once it is complete.
    pub(super) fn scan(&mut self, buf: &[u8]) -> Option<usize> {
        while let Some(rest) = buf.get(self.examined..).filter(|r| !r.is_empty()) {
            if self.position == Position::InLine {
                // Most bytes are inside lines: jump to the next LF.
                match memchr::memchr(b'\n', rest) {
                    Some(at) => {
                        self.examined += at + 1;
                        self.position = Position::LineStart;
                        continue;
                    }
                    None => {
                        self.examined = buf.len();
                        return None;
                    }
                }
            }
            let &byte = rest.first()?;
            self.examined += 1;
            self.position = match (self.position, byte) {
                (Position::Leading, b'\r' | b'\n') => Position::Leading,
                (Position::LineStart | Position::LineStartCr, b'\n') => return Some(self.examined),
                (Position::LineStart, b'\r') => Position::LineStartCr,
                _ => Position::InLine,
            };
        }
        None
    }
}

/// How reading an HTTP/1.1 request head ended.
#[derive(Debug)]
pub(super) enum Head {
    /// The whole head: `buf[..len]`, and whatever followed it in the same
    /// reads (a body's start, or the next pipelined request).
    Complete { buf: BytesMut, len: usize },
    /// Longer than `max_header_bytes`.
    TooLarge,
    /// Not finished by its deadline.
    TimedOut,
    /// The client closed the connection (or it failed) first.
    Gone,
}

/// Reads until `buf` (which may already hold the head's first bytes) holds a
/// whole request head of at most `max_bytes`, by `deadline`.
pub(super) async fn read_request_head(
    stream: &mut Stream,
    mut buf: BytesMut,
    max_bytes: usize,
    deadline: Instant,
) -> Head {
    let mut scanner = HeadScanner::new();
    loop {
        if let Some(len) = scanner.scan(&buf) {
            return if len > max_bytes {
                Head::TooLarge
            } else {
                Head::Complete { buf, len }
            };
        }
        if buf.len() >= max_bytes {
            return Head::TooLarge;
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return Head::TimedOut,
            Ok(Ok(0) | Err(_)) => return Head::Gone,
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to a scanner `step` bytes at a time, as reads would.
    fn scan_in_steps(input: &[u8], step: usize) -> (Option<usize>, usize) {
        let mut scanner = HeadScanner::new();
        let mut end = 0;
        while end < input.len() {
            end = (end + step).min(input.len());
            if let Some(len) = scanner.scan(&input[..end]) {
                return (Some(len), scanner.examined());
            }
        }
        (None, scanner.examined())
    }

    #[test]
    fn head_ends_at_the_first_blank_line_with_crlf_or_lf() {
        for (input, len) in [
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\nBODY"[..], 27),
            (b"GET / HTTP/1.1\nHost: x\n\nBODY", 24),
            (b"GET / HTTP/1.1\nHost: x\n\r\n", 25),
            (b"GET / HTTP/1.0\r\n\r\n", 18),
        ] {
            for step in [1, 2, 5, input.len()] {
                assert_eq!(
                    scan_in_steps(input, step).0,
                    Some(len),
                    "{input:?} by {step}"
                );
            }
        }
    }

    #[test]
    fn empty_lines_before_the_request_line_do_not_end_it() {
        let input = b"\r\n\r\n\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan_in_steps(input, 1).0, Some(input.len()));
    }

    #[test]
    fn a_lone_cr_inside_a_line_is_part_of_it() {
        assert_eq!(scan_in_steps(b"GET / HTTP/1.1\r\nX: a\r\rb\r\n", 1).0, None);
    }

    #[test]
    fn a_head_trickled_one_byte_per_read_is_examined_once_per_byte() {
        // 32 KiB of header lines, fed as 32 Ki reads of one byte each: the
        // old reader looked at the whole buffer after every read (half a
        // billion byte comparisons); the scanner looks at each byte once.
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        while head.len() < 32 * 1024 {
            head.extend_from_slice(b"X-Filler: abcdefghijklmnopqrstuvwxyz\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let (len, examined) = scan_in_steps(&head, 1);
        assert_eq!(len, Some(head.len()));
        assert_eq!(examined, head.len());
    }
}
