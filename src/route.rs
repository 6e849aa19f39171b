//! Which request paths are topics.
//!
//! A topic is named in the config file by a path such as `/events/news`, or by
//! a *template* such as `/events/jobs/{id}`: one topic per distinct value of
//! `{id}`, each with its own upstream stream. This module parses those paths,
//! matches request paths against them and fills the parameters into the
//! topic's upstream path (`/stream/jobs/{id}`).
//!
//! It knows nothing of HTTP sessions or of the hub: the proxy asks
//! [`TopicRoutes::find`] whether a request is a topic, and the hub keys its
//! topics by the resolved path the match returns.

use std::collections::HashMap;
use std::fmt;

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
    /// The topic instance: the request path itself (`/events/jobs/42`).
    pub key: String,
    /// Placeholder values bound by a template (`[("id", "42")]`).
    pub params: Vec<(String, String)>,
}

impl TopicMatch {
    /// Checks every bound parameter: at most `max_len` bytes of letters,
    /// digits, `-`, `_`, `.` and `~`, and not `.` or `..`. Anything else
    /// (`%2F`, `..`, control characters) could reach the app's upstream path
    /// as something it did not mean, so it is refused before it gets there.
    pub fn check_params(&self, max_len: usize) -> Result<(), TemplateError> {
        for (name, value) in &self.params {
            if value.len() > max_len {
                return Err(TemplateError(format!(
                    "{{{name}}} is longer than {max_len} bytes"
                )));
            }
            let allowed = value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
            if !allowed || value == "." || value == ".." {
                return Err(TemplateError(format!(
                    "{{{name}}} may hold only letters, digits, '-', '_', '.' and '~'"
                )));
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

    /// Finds the topic a request path (without its query) names.
    pub fn find(&self, path: &str) -> Option<TopicMatch> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_outside_the_safe_set_are_refused() {
        let routes = TopicRoutes::new(&[PathTemplate::parse("/jobs/{id}").unwrap()]);
        let check = |path: &str| routes.find(path).unwrap().check_params(10);
        assert!(check("/jobs/a-b_c.d~1").is_ok());
        for bad in [
            "/jobs/..",
            "/jobs/.",
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
    fn unbalanced_upstream_braces_are_refused() {
        assert!(UpstreamTemplate::parse("/s/{id").is_err());
        assert!(UpstreamTemplate::parse("/s/id}").is_err());
        assert!(UpstreamTemplate::parse("s/{id}").is_err());
    }
}
