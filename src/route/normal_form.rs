//! The normal form of a request path: the one spelling that stands for every
//! spelling an app would serve as the same resource.
//!
//! Topics are matched and keyed in this form, so that all of these are the
//! same topic instance:
//!
//! ```text
//!  //events/x   /events/./x   /events/a/../x   /events/x/   /%65vents/x
//!  /events/x;p  \events\x     http://host/events/x?q       ──▶  /events/x
//! ```
//!
//! (backslashes are slashes, percent-encoded letters, digits and `-._~` are
//! decoded, `;` parameters dropped, dot segments resolved, empty segments
//! removed). That is the strict spelling; the closed paths (`closed.rs`) also
//! read a path the loose way a lenient app might (every `%XX` decoded, letters
//! lower-cased), only ever to refuse a request.
//!
//! [`target_path`] takes the path out of a request target (origin or absolute
//! form); [`normalize_path`] brings that to its strict normal form, as the
//! topic table and the config's topic paths use it.

use std::borrow::Cow;

/// How far two spellings of a path are taken to name the same resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Spelling {
    /// What RFC 3986 and every common app treat alike: `\` as `/`, percent-
    /// encoded unreserved characters (`%65` is `e`), dot segments, empty
    /// segments (`//`, a trailing `/`) and `;` parameters. The rest of the
    /// percent-encoding is kept, with upper-case hex digits.
    Strict,
    /// Also what a lenient app may treat alike: every `%XX` decoded (so
    /// `%2F` and `%5C` separate segments) and ASCII letters lower-cased.
    /// Only ever used to refuse a request, never to name a topic.
    Loose,
}

/// Whether `byte` is an unreserved character (RFC 3986 §2.3): percent-encoding
/// it changes nothing, so `%65` and `e` are the same path.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// The value of a hex digit.
fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|v| v as u8)
}

/// Decodes percent-encoding: unreserved characters only (strict), or every
/// valid `%XX` (loose). A `%` not followed by two hex digits is kept as is.
fn decode(path: &str, spelling: Spelling) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let escaped = (byte == b'%')
            .then(|| {
                Some((
                    hex_value(*bytes.get(i + 1)?)?,
                    hex_value(*bytes.get(i + 2)?)?,
                ))
            })
            .flatten();
        match escaped {
            Some((high, low)) => {
                let byte = high << 4 | low;
                if spelling == Spelling::Loose || is_unreserved(byte) {
                    out.push(byte);
                } else {
                    out.push(b'%');
                    let digits = bytes.get(i + 1..i + 3).unwrap_or_default();
                    out.extend(digits.iter().map(u8::to_ascii_uppercase));
                }
                i += 3;
            }
            None => {
                out.push(byte);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Whether a path is already in strict normal form (the common case, checked
/// without allocating).
fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    rest.is_empty()
        || (!rest.contains(['\\', '%', ';'])
            && rest.split('/').all(|s| !matches!(s, "" | "." | "..")))
}

/// A path brought to its normal form under `spelling`: starts with `/`, no
/// empty, `.` or `..` segments, no `;` parameters, no backslashes.
pub(super) fn normal_form(path: &str, spelling: Spelling) -> Cow<'_, str> {
    if spelling == Spelling::Strict && is_normal(path) {
        return Cow::Borrowed(path);
    }
    let decoded = decode(path, spelling);
    let lowered;
    let decoded = if spelling == Spelling::Loose {
        lowered = decoded.to_ascii_lowercase();
        lowered.as_str()
    } else {
        &decoded
    };
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        // `;` starts a segment's parameters, which servlet containers and
        // others strip before routing (`..;` is `..` to them too).
        match segment.split(';').next().unwrap_or("") {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    Cow::Owned(normal)
}

/// The path of a request target (RFC 9112 §3.2): origin-form as it is, the
/// path of an absolute-form target (`http://host/path`), without query or
/// fragment. Anything else is taken as a path too (an app may).
pub fn target_path(target: &str) -> &str {
    let target = &target[..target.find(['?', '#']).unwrap_or(target.len())];
    if target.starts_with(['/', '\\']) {
        return target;
    }
    if let Some((scheme, rest)) = target.split_once("://") {
        let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if is_scheme {
            return rest.find(['/', '\\']).map_or("", |slash| &rest[slash..]);
        }
    }
    target
}

/// The normal form of a request path or target, as topics are matched and
/// keyed: `//events/./x/` is `/events/x`.
pub fn normalize_path(target: &str) -> Cow<'_, str> {
    normal_form(target_path(target), Spelling::Strict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_a_path_have_one_normal_form() {
        for spelling in [
            "/events/x",
            "//events/x",
            "/events//x",
            "/events/./x",
            "/events/a/../x",
            "/events/a/..;/x",
            "/../events/x",
            "/events/x/",
            "/%65vents/x",
            "/%65%76ents/x",
            "/events/%2E/x",
            "/events/x;p",
            "/events;a=b/x;c",
            "\\events\\x",
            "/events\\x",
            "events/x",
            "/events/x?q=1#f",
            "http://localhost:8080/events/x?q",
            "HTTPS://host\\events/x",
        ] {
            assert_eq!(normalize_path(spelling), "/events/x", "{spelling}");
        }
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path("/.."), "/");
        assert_eq!(normalize_path("http://host"), "/");
        assert_eq!(normalize_path("*"), "/*");
    }

    #[test]
    fn normal_form_keeps_reserved_escapes_and_case() {
        assert_eq!(normalize_path("/a%2fb"), "/a%2Fb");
        assert_eq!(normalize_path("/a%5Cb"), "/a%5Cb");
        assert_eq!(normalize_path("/A/%zz"), "/A/%zz");
        assert_eq!(normalize_path("/caf%c3%a9"), "/caf%C3%A9");
        assert!(matches!(normalize_path("/events/x"), Cow::Borrowed(_)));
    }
}
