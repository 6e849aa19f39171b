//! The config's path templates: a topic's path ([`PathTemplate`], such as
//! `/events/jobs/{id}`) and its upstream path ([`UpstreamTemplate`], such as
//! `/stream/jobs/{id}?v=2`), parsed once when the config is loaded.
//!
//! A placeholder in a topic path stands for one whole path segment and binds
//! the request's text there; the upstream path takes the bound values back in.
//! Requests are matched in their normal form (`normal_form.rs`), so a topic
//! path must already be in it: one that is not could never match, and is
//! refused with a [`TemplateError`] that gives the form to write instead.

use std::fmt;

use super::normal_form::normalize_path;

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
    pub(super) fn path_shape(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn unbalanced_upstream_braces_are_refused() {
        assert!(UpstreamTemplate::parse("/s/{id").is_err());
        assert!(UpstreamTemplate::parse("/s/id}").is_err());
        assert!(UpstreamTemplate::parse("s/{id}").is_err());
    }
}
