//! Which request paths are topics, and which the app must never be asked for.
//!
//! A topic is named in the config file by a path such as `/events/news`, or by
//! a *template* such as `/events/jobs/{id}`: one topic per distinct value of
//! `{id}`, each with its own upstream stream. This module parses those paths,
//! matches request paths against them and fills the parameters into the
//! topic's upstream path (`/stream/jobs/{id}`).
//!
//! A request path is matched in its *normal form*, so that every spelling an
//! app would serve as the same resource is the same topic instance:
//!
//! ```text
//!  //events/x   /events/./x   /events/a/../x   /events/x/   /%65vents/x
//!  /events/x;p  \events\x     http://host/events/x?q       ──▶  /events/x
//! ```
//!
//! (backslashes are slashes, percent-encoded letters, digits and `-._~` are
//! decoded, `;` parameters dropped, dot segments resolved, empty segments
//! removed). [`ClosedPaths`] looks further still, for the ordinary proxy:
//! a path that is a topic's upstream stream, or that a lenient app (one that
//! decodes `%2F` or ignores case) could take for a topic, is never proxied.
//!
//! It knows nothing of HTTP sessions or of the hub: the front door asks
//! [`TopicRoutes::find`] whether a request is a topic, the hub keys its
//! topics by the normal path the match returns, and the proxy asks
//! [`ClosedPaths::check`] before it passes a request on.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use crate::config::Config;

/// A topic path from the config file: literal segments and `{name}` placeholders.
///
/// A placeholder always stands for one whole path segment, so `/jobs/{id}`
/// matches `/jobs/42` but not `/jobs/42/log` nor `/jobs/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// The text as written in the config, for messages and logs.
    source: String,
    /// The segments between the slashes, in order.
    segments: Vec<Segment>,
}

/// One segment of a [`PathTemplate`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Must equal the request's segment exactly (case-sensitive, as URLs are).
    Literal(String),
    /// Matches any non-empty segment and binds it to this name.
    Param(String),
}

/// Why a topic path or an upstream template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateError {}

/// A placeholder name: an ASCII letter or `_`, then letters, digits or `_`.
fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// How far two spellings of a path are taken to name the same resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
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
fn normal_form(path: &str, spelling: Spelling) -> Cow<'_, str> {
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

impl PathTemplate {
    /// Parses a topic path such as `/events/jobs/{id}`.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let Some(rest) = source.strip_prefix('/') else {
            return Err(TemplateError(format!(
                "topic path {source:?} must start with '/'"
            )));
        };
        if source.contains(['?', '#']) {
            return Err(TemplateError(format!(
                "topic path {source:?} must be a path only, without '?' or '#'"
            )));
        }
        let mut segments = Vec::new();
        // "/" alone is the root path: no segments at all.
        for text in rest.split('/').filter(|_| !rest.is_empty()) {
            if text.is_empty() {
                return Err(TemplateError(format!(
                    "topic path {source:?} has an empty segment ('//' or a trailing '/')"
                )));
            }
            if let Some(inner) = text.strip_prefix('{') {
                let Some(name) = inner.strip_suffix('}') else {
                    return Err(TemplateError(format!(
                        "topic path {source:?}: placeholder {text:?} must fill a whole segment, like \"{{id}}\""
                    )));
                };
                if !is_param_name(name) {
                    return Err(TemplateError(format!(
                        "topic path {source:?}: placeholder name {name:?} must be letters, digits and '_' (not starting with a digit)"
                    )));
                }
                if segments.contains(&Segment::Param(name.to_string())) {
                    return Err(TemplateError(format!(
                        "topic path {source:?} uses placeholder {{{name}}} twice"
                    )));
                }
                segments.push(Segment::Param(name.to_string()));
            } else if text.contains(['{', '}']) {
                return Err(TemplateError(format!(
                    "topic path {source:?}: placeholder in {text:?} must fill a whole segment, like \"{{id}}\""
                )));
            } else {
                segments.push(Segment::Literal(text.to_string()));
            }
        }
        let normal = normalize_path(source);
        if normal != source {
            return Err(TemplateError(format!(
                "topic path {source:?} is not in normal form (requests are matched after resolving dot segments, ';' parameters, backslashes and percent-encoded letters and digits); write {normal:?}"
            )));
        }
        Ok(PathTemplate {
            source: source.to_string(),
            segments,
        })
    }

    /// The path as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the path has placeholders (one topic per distinct value).
    pub fn is_template(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Param(_)))
    }

    /// The placeholder names, in path order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// The template with placeholder names erased: two templates with the same
    /// shape (`/a/{x}` and `/a/{y}`) would match exactly the same requests.
    pub fn shape(&self) -> String {
        let mut shape = String::new();
        for segment in &self.segments {
            shape.push('/');
            match segment {
                Segment::Literal(text) => shape.push_str(text),
                Segment::Param(_) => shape.push_str("{}"),
            }
        }
        if shape.is_empty() {
            shape.push('/');
        }
        shape
    }

    /// Matches a request path (without query) and returns the bound parameters
    /// in path order, or `None` when the path is not this topic.
    pub fn matches<'p>(&self, path: &'p str) -> Option<Vec<(&str, &'p str)>> {
        let rest = path.strip_prefix('/')?;
        let mut params = Vec::new();
        let mut request_segments = rest.split('/');
        if self.segments.is_empty() {
            return rest.is_empty().then_some(params);
        }
        for segment in &self.segments {
            let text = request_segments.next()?;
            match segment {
                Segment::Literal(literal) if literal == text => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if text.is_empty() => return None,
                Segment::Param(name) => params.push((name.as_str(), text)),
            }
        }
        request_segments.next().is_none().then_some(params)
    }
}

/// A topic's upstream path with `{name}` placeholders, e.g. `/stream/jobs/{id}`.
///
/// Kept as text pieces so filling it in is a few string appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTemplate {
    /// The text as written in the config.
    source: String,
    /// Literal text and placeholders, in order.
    pieces: Vec<Piece>,
}

/// One piece of an [`UpstreamTemplate`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Param(String),
}

impl UpstreamTemplate {
    /// Parses an upstream path (and optional query) such as `/stream/jobs/{id}?v=2`.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        if !source.starts_with('/') {
            return Err(TemplateError(format!(
                "upstream path {source:?} must start with '/'"
            )));
        }
        let mut pieces = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            if rest[..open].contains('}') {
                return Err(TemplateError(format!(
                    "upstream path {source:?} has a '}}' without a matching '{{'"
                )));
            }
            let Some(close) = rest[open..].find('}').map(|c| open + c) else {
                return Err(TemplateError(format!(
                    "upstream path {source:?} has a '{{' without a matching '}}'"
                )));
            };
            let name = &rest[open + 1..close];
            if !is_param_name(name) {
                return Err(TemplateError(format!(
                    "upstream path {source:?}: placeholder name {name:?} must be letters, digits and '_'"
                )));
            }
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            pieces.push(Piece::Param(name.to_string()));
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(TemplateError(format!(
                "upstream path {source:?} has a '}}' without a matching '{{'"
            )));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(UpstreamTemplate {
            source: source.to_string(),
            pieces,
        })
    }

    /// The text as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The placeholder names this upstream path uses.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Param(name) => Some(name.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// The path part (before any `?`) with every placeholder written `{}`:
    /// `/stream/{id}?v={v}` is `/stream/{}`.
    fn path_shape(&self) -> String {
        let mut shape = String::with_capacity(self.source.len());
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => {
                    if let Some(query) = text.find(['?', '#']) {
                        shape.push_str(&text[..query]);
                        return shape;
                    }
                    shape.push_str(text);
                }
                Piece::Param(_) => shape.push_str("{}"),
            }
        }
        shape
    }

    /// Fills in the parameters bound by a topic path match. A name without a
    /// value is left empty; config validation makes sure that cannot happen.
    pub fn fill(&self, params: &[(&str, &str)]) -> String {
        let mut path = String::with_capacity(self.source.len());
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => path.push_str(text),
                Piece::Param(name) => {
                    if let Some((_, value)) = params.iter().find(|(n, _)| n == name) {
                        path.push_str(value);
                    }
                }
            }
        }
        path
    }
}

/// The configured topic paths, ready to match request paths.
///
/// A literal path wins over a template that also matches the request; among
/// templates the first in config order wins (config validation refuses two
/// templates of the same shape).
#[derive(Debug, Clone, Default)]
pub struct TopicRoutes {
    /// Literal topic paths and their topic's index.
    literals: HashMap<String, usize>,
    /// Template topic paths and their topic's index, in config order.
    templates: Vec<(PathTemplate, usize)>,
}

/// A request path that is a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMatch {
    /// Index of the topic in the config's `[[topic]]` list.
    pub index: usize,
    /// The topic instance: the request path in normal form
    /// (`/events/jobs/42`, also for `//events/jobs/42/`).
    pub key: String,
    /// Placeholder values bound by a template (`[("id", "42")]`).
    pub params: Vec<(String, String)>,
}

/// Why a request's template parameter cannot go into an upstream path (the
/// request is answered `400`; nothing reaches the app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// Longer than `max_param_len` bytes.
    TooLong {
        /// The placeholder's name.
        name: String,
        /// The bound.
        max_len: usize,
    },
    /// A character outside `A-Z a-z 0-9 - _ . ~`, or `.`/`..`.
    Unsafe {
        /// The placeholder's name.
        name: String,
    },
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::TooLong { name, max_len } => {
                write!(f, "{{{name}}} is longer than {max_len} bytes")
            }
            ParamError::Unsafe { name } => write!(
                f,
                "{{{name}}} may hold only letters, digits, '-', '_', '.' and '~'"
            ),
        }
    }
}

impl std::error::Error for ParamError {}

impl TopicMatch {
    /// Checks every bound parameter: at most `max_len` bytes of letters,
    /// digits, `-`, `_`, `.` and `~`, and not `.` or `..`. Anything else
    /// (`%2F`, `..`, control characters) could reach the app's upstream path
    /// as something it did not mean, so it is refused before it gets there.
    pub fn check_params(&self, max_len: usize) -> Result<(), ParamError> {
        for (name, value) in &self.params {
            if value.len() > max_len {
                return Err(ParamError::TooLong {
                    name: name.clone(),
                    max_len,
                });
            }
            let allowed = value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
            if !allowed || value == "." || value == ".." {
                return Err(ParamError::Unsafe { name: name.clone() });
            }
        }
        Ok(())
    }

    /// The bound parameters in the form [`UpstreamTemplate::fill`] takes.
    pub fn param_pairs(&self) -> Vec<(&str, &str)> {
        self.params
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }
}

impl TopicRoutes {
    /// Builds the table from topic paths in config order.
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a PathTemplate>) -> TopicRoutes {
        let mut routes = TopicRoutes::default();
        for (index, path) in paths.into_iter().enumerate() {
            if path.is_template() {
                routes.templates.push((path.clone(), index));
            } else {
                routes.literals.insert(path.as_str().to_string(), index);
            }
        }
        routes
    }

    /// Finds the topic a request path or target names, in its normal form
    /// (query and fragment ignored): `/events/x`, `//events/./x/` and
    /// `http://host/events/x?q` are the same topic instance, keyed
    /// `/events/x`. Parameters are bound as they are after normalisation and
    /// still need [`TopicMatch::check_params`].
    pub fn find(&self, target: &str) -> Option<TopicMatch> {
        let path = normalize_path(target);
        let path = path.as_ref();
        if let Some(&index) = self.literals.get(path) {
            return Some(TopicMatch {
                index,
                key: path.to_string(),
                params: Vec::new(),
            });
        }
        self.templates.iter().find_map(|(template, index)| {
            let params = template.matches(path)?;
            Some(TopicMatch {
                index: *index,
                key: path.to_string(),
                params: params
                    .into_iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            })
        })
    }
}

/// Why the ordinary proxy refuses a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedPath {
    /// It is (a spelling of) a topic's upstream stream on the app: reached
    /// directly, it would skip the topic's auth and caps and cost the app
    /// one stream per client. `404`.
    TopicUpstream,
    /// It is no topic as spelled, but an app that decodes `%2F` or ignores
    /// case could serve it as one. `400`.
    TopicSpelling,
}

/// One path segment of a [`PathPattern`]: literal text with a wildcard
/// between each two pieces (`user-{}` is `["user-", ""]`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SegmentPattern(Vec<String>);

impl SegmentPattern {
    /// Whether `text` matches; a wildcard matches any text, empty too.
    /// Leftmost matching of the middle pieces is exact for such patterns,
    /// and linear in the segment's length.
    fn matches(&self, text: &str) -> bool {
        let pieces = &self.0;
        let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
            return text.is_empty();
        };
        if pieces.len() == 1 {
            return text == first;
        }
        if text.len() < first.len() + last.len()
            || !text.starts_with(first.as_str())
            || !text.ends_with(last.as_str())
        {
            return false;
        }
        let mut rest = &text[first.len()..text.len() - last.len()];
        for middle in pieces.get(1..pieces.len() - 1).unwrap_or_default() {
            match rest.find(middle.as_str()) {
                Some(at) => rest = &rest[at + middle.len()..],
                None => return false,
            }
        }
        true
    }
}

/// A path in normal form whose segments may hold wildcards, matched against
/// request paths in the same normal form.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathPattern(Vec<SegmentPattern>);

impl PathPattern {
    /// Builds a pattern from a path with `{}` for each wildcard, brought to
    /// the normal form of `spelling` first.
    fn new(shape: &str, spelling: Spelling) -> PathPattern {
        let normal = normal_form(shape, spelling);
        PathPattern(
            normal
                .split('/')
                .skip(1)
                .filter(|s| !s.is_empty())
                .map(|s| SegmentPattern(s.split("{}").map(str::to_string).collect()))
                .collect(),
        )
    }

    /// Whether a path matches, segment by segment (empty segments skipped).
    fn matches(&self, path: &str) -> bool {
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        self.0
            .iter()
            .all(|pattern| segments.next().is_some_and(|s| pattern.matches(s)))
            && segments.next().is_none()
    }
}

/// The paths the ordinary proxy never passes to the app: the upstream
/// streams of topics served by the app itself (unless a topic sets
/// `expose_upstream`), in any spelling, and other spellings of topic paths.
///
/// A path is read the ways an app might read it: as it is (an app that does
/// not resolve `..` routes `/stream/users/..` as user `..`), in strict normal
/// form, and in loose normal form (every `%XX` decoded, lower case), the
/// loose one also as if a leading `//` started an authority
/// (`//evil/stream/x`), as some URL parsers read it. Template placeholders
/// match any one segment (or part of one).
#[derive(Debug, Clone, Default)]
pub struct ClosedPaths {
    /// Topic upstream paths in strict normal form.
    upstreams: Vec<PathPattern>,
    /// The same, loose.
    loose_upstreams: Vec<PathPattern>,
    /// Every topic path (already in strict normal form).
    topics: Vec<PathPattern>,
    /// Every topic path, loose.
    loose_topics: Vec<PathPattern>,
}

impl ClosedPaths {
    /// The closed paths of a configuration: every topic's path, and the
    /// upstream path of every topic whose stream is on `[app]` and that does
    /// not set `expose_upstream`.
    pub fn new(config: &Config) -> ClosedPaths {
        let mut closed = ClosedPaths::default();
        for topic in &config.topics {
            closed.add_topic(&topic.path);
            if topic.upstream_closed(&config.app) {
                closed.add_upstream(&topic.upstream.path);
            }
        }
        closed
    }

    /// Closes the other spellings of a topic path.
    fn add_topic(&mut self, path: &PathTemplate) {
        let shape = path.shape();
        self.topics.push(PathPattern::new(&shape, Spelling::Strict));
        self.loose_topics
            .push(PathPattern::new(&shape, Spelling::Loose));
    }

    /// Closes a topic's upstream path, in every spelling.
    fn add_upstream(&mut self, upstream: &UpstreamTemplate) {
        let shape = upstream.path_shape();
        self.upstreams
            .push(PathPattern::new(&shape, Spelling::Strict));
        self.loose_upstreams
            .push(PathPattern::new(&shape, Spelling::Loose));
    }

    /// Whether (and why) a request target is closed to the ordinary proxy.
    /// Topic paths in strict normal form are not checked here: they are
    /// topics ([`TopicRoutes::find`]).
    pub fn check(&self, target: &str) -> Option<ClosedPath> {
        let path = target_path(target);
        let strict = normal_form(path, Spelling::Strict);
        if [path, &strict]
            .iter()
            .any(|reading| self.upstreams.iter().any(|p| p.matches(reading)))
        {
            return Some(ClosedPath::TopicUpstream);
        }
        if self.topics.iter().any(|p| p.matches(path)) {
            return Some(ClosedPath::TopicSpelling);
        }
        let loose = normal_form(path, Spelling::Loose);
        let as_authority = authority_stripped(path).map(|rest| normal_form(rest, Spelling::Loose));
        for candidate in std::iter::once(&loose).chain(as_authority.as_ref()) {
            if self.loose_upstreams.iter().any(|p| p.matches(candidate)) {
                return Some(ClosedPath::TopicUpstream);
            }
            if self.loose_topics.iter().any(|p| p.matches(candidate)) {
                return Some(ClosedPath::TopicSpelling);
            }
        }
        None
    }
}

/// A path that starts with two separators read as a network-path reference:
/// `//host/rest` gives `/rest`. `None` for any other path.
fn authority_stripped(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(['/', '\\'])?.strip_prefix(['/', '\\'])?;
    Some(rest.find(['/', '\\']).map_or("/", |slash| &rest[slash..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_outside_the_safe_set_are_refused() {
        let routes = TopicRoutes::new(&[PathTemplate::parse("/jobs/{id}").unwrap()]);
        let check = |path: &str| routes.find(path).unwrap().check_params(10);
        assert!(check("/jobs/a-b_c.d~1").is_ok());
        // Dot segments are resolved before matching: no topic at all.
        assert!(routes.find("/jobs/..").is_none());
        assert!(routes.find("/jobs/.").is_none());
        for bad in [
            "/jobs/a%2Fb",
            "/jobs/a%0D",
            "/jobs/12345678901",
            "/jobs/a:b",
        ] {
            assert!(check(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn literal_route_wins_over_a_matching_template() {
        let paths = [
            PathTemplate::parse("/events/{name}").unwrap(),
            PathTemplate::parse("/events/news").unwrap(),
        ];
        let routes = TopicRoutes::new(&paths);
        assert_eq!(routes.find("/events/news").unwrap().index, 1);
        let other = routes.find("/events/sports").unwrap();
        assert_eq!(other.index, 0);
        assert_eq!(other.param_pairs(), vec![("name", "sports")]);
        assert_eq!(routes.find("/other"), None);
    }

    #[test]
    fn literal_path_matches_only_itself() {
        let t = PathTemplate::parse("/events/news").unwrap();
        assert_eq!(t.matches("/events/news"), Some(vec![]));
        assert_eq!(t.matches("/events/news/"), None);
        assert_eq!(t.matches("/events/newsx"), None);
        assert_eq!(t.matches("/events"), None);
        assert!(!t.is_template());
    }

    #[test]
    fn placeholder_binds_one_whole_segment() {
        let t = PathTemplate::parse("/events/jobs/{id}").unwrap();
        assert_eq!(t.matches("/events/jobs/42"), Some(vec![("id", "42")]));
        assert_eq!(t.matches("/events/jobs/"), None);
        assert_eq!(t.matches("/events/jobs/42/log"), None);
        assert!(t.is_template());
    }

    #[test]
    fn shape_ignores_placeholder_names() {
        let a = PathTemplate::parse("/a/{x}/b").unwrap();
        let b = PathTemplate::parse("/a/{y}/b").unwrap();
        assert_eq!(a.shape(), b.shape());
    }

    #[test]
    fn bad_topic_paths_are_refused() {
        for bad in [
            "events",
            "/a//b",
            "/a/",
            "/a/{id",
            "/a/x{id}",
            "/a/{1d}",
            "/a/{id}/{id}",
            "/a?x=1",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn root_path_matches_root_only() {
        let t = PathTemplate::parse("/").unwrap();
        assert_eq!(t.matches("/"), Some(vec![]));
        assert_eq!(t.matches("/x"), None);
    }

    #[test]
    fn upstream_template_fills_parameters() {
        let u = UpstreamTemplate::parse("/stream/jobs/{id}?from={id}").unwrap();
        assert_eq!(u.params().collect::<Vec<_>>(), vec!["id", "id"]);
        assert_eq!(u.fill(&[("id", "7")]), "/stream/jobs/7?from=7");
    }

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

    #[test]
    fn spellings_of_a_topic_are_one_instance_with_checked_parameters() {
        let paths = [
            PathTemplate::parse("/events/x").unwrap(),
            PathTemplate::parse("/events/users/{id}").unwrap(),
        ];
        let routes = TopicRoutes::new(&paths);
        for spelling in ["//events/x", "/events/./x/", "/%65vents/x;p"] {
            assert_eq!(routes.find(spelling).unwrap().key, "/events/x");
        }
        let user = routes.find("/events/users/%34%32;jsessionid=9").unwrap();
        assert_eq!(user.key, "/events/users/42");
        assert_eq!(user.param_pairs(), vec![("id", "42")]);
        // What normalisation keeps encoded still fails the parameter check.
        for bad in [
            "/events/users/a%2Fb",
            "/events/users/a%00",
            "/events/users/a%3Bb",
        ] {
            let found = routes.find(bad).unwrap();
            assert!(found.check_params(128).is_err(), "{bad}: {found:?}");
        }
        // `..` as a parameter is resolved away before matching.
        assert!(routes.find("/events/users/%2E%2E").is_none());
    }

    #[test]
    fn topic_paths_not_in_normal_form_are_refused() {
        for bad in [
            "/events/./x",
            "/events/../x",
            "/%65vents",
            "/a;b",
            "/a\\b",
            "/a%2fb",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} was accepted");
        }
        assert!(PathTemplate::parse("/a%2Fb").is_ok());
    }

    fn closed(upstreams: &[&str], topics: &[&str]) -> ClosedPaths {
        let mut closed = ClosedPaths::default();
        for upstream in upstreams {
            closed.add_upstream(&UpstreamTemplate::parse(upstream).unwrap());
        }
        for topic in topics {
            closed.add_topic(&PathTemplate::parse(topic).unwrap());
        }
        closed
    }

    #[test]
    fn upstream_paths_are_closed_in_every_spelling_and_any_parameter() {
        let closed = closed(
            &["/stream/users/{id}?from={id}", "/feed/user-{id}.json"],
            &[],
        );
        for path in [
            "/stream/users/42",
            "/stream/users/anything",
            "/stream/users/a%2Fb",
            "/stream/users/..",
            "/stream/users/42/",
            "//stream/users/42",
            "/stream/./users/42?q",
            "/STREAM/Users/42",
            "/stream%2Fusers%2F42",
            "/stream%5Cusers%5C42",
            "//evil.example/stream/users/42",
            "http://host/stream/users/42",
            "\\stream\\users\\42",
            "/feed/user-7.json",
            "/feed/user-.json",
        ] {
            assert_eq!(
                closed.check(path),
                Some(ClosedPath::TopicUpstream),
                "{path}"
            );
        }
        for path in [
            "/stream/users",
            "/stream/users/42/log",
            "/stream",
            "/feed/user-7.xml",
            "/feed/7.json",
            "/",
        ] {
            assert_eq!(closed.check(path), None, "{path}");
        }
    }

    #[test]
    fn loose_spellings_of_topics_are_closed() {
        let closed = closed(&[], &["/events/x", "/events/users/{id}"]);
        for path in [
            "/EVENTS/x",
            "/events%2Fx",
            "/Events/Users/42",
            "/events%5cusers%5c1",
            "/events/users/..",
            "/events/users/.",
            "/events/users/%2E%2E",
        ] {
            assert_eq!(
                closed.check(path),
                Some(ClosedPath::TopicSpelling),
                "{path}"
            );
        }
        for path in [
            "/events",
            "/events/y",
            "/events/users/42/log",
            "/index.html",
        ] {
            assert_eq!(closed.check(path), None, "{path}");
        }
    }

    #[test]
    fn a_segment_pattern_is_a_glob() {
        let pattern = |s: &str| SegmentPattern(s.split("{}").map(str::to_string).collect());
        assert!(pattern("a{}b{}c").matches("abc"));
        assert!(pattern("a{}b{}c").matches("axxbyyc"));
        assert!(!pattern("a{}b{}c").matches("axxc"));
        assert!(!pattern("ab{}ba").matches("aba"));
        assert!(pattern("{}").matches(""));
        assert!(pattern("x").matches("x") && !pattern("x").matches("xx"));
    }

    #[test]
    fn unbalanced_upstream_braces_are_refused() {
        assert!(UpstreamTemplate::parse("/s/{id").is_err());
        assert!(UpstreamTemplate::parse("/s/id}").is_err());
        assert!(UpstreamTemplate::parse("s/{id}").is_err());
    }
}
