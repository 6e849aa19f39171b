//! The paths the ordinary proxy must never pass to the app.
//!
//! A topic's upstream stream on the app is meant to be read by the hub alone,
//! once per topic (unless the topic sets `expose_upstream`): asked for
//! through the ordinary proxy, it would skip the topic's auth and caps and
//! cost the app one stream per client. And a path that is no topic as
//! spelled, but that a lenient app (one that decodes `%2F` or ignores case)
//! could take for a topic, is not passed on either.
//!
//! [`ClosedPaths`] is built once from the config; the proxy asks
//! [`ClosedPaths::check`] before it passes a request on and answers a
//! [`ClosedPath`] with `404` or `400`. Paths are compared as patterns in
//! normal form (`normal_form.rs`), strict and loose, in which a template's
//! placeholders are wildcards.

use super::normal_form::{normal_form, target_path, Spelling};
use super::template::{PathTemplate, UpstreamTemplate};
use crate::config::Config;

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
    /// topics ([`TopicRoutes::find`](super::TopicRoutes::find)).
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
}
