//! Which request paths are topics, and which the app must never be asked for.
//!
//! A topic is named in the config file by a path such as `/events/news`, or by
//! a *template* such as `/events/jobs/{id}`: one topic per distinct value of
//! `{id}`, each with its own upstream stream. This module parses those paths,
//! matches request paths against them and fills the parameters into the
//! topic's upstream path (`/stream/jobs/{id}`).
//!
//! A request path is matched in its *normal form*, so that every spelling an
//! app would serve as the same resource is the same topic instance
//! (`//events/./x/`, `/%65vents/x;p` and `http://host/events/x?q` are all
//! `/events/x`). [`ClosedPaths`] looks further still, for the ordinary proxy:
//! a path that is a topic's upstream stream, or that a lenient app (one that
//! decodes `%2F` or ignores case) could take for a topic, is never proxied.
//!
//! It knows nothing of HTTP sessions or of the hub: the front door asks
//! [`TopicRoutes::find`] whether a request is a topic, the hub keys its
//! topics by the normal path the match returns, and the proxy asks
//! [`ClosedPaths::check`] before it passes a request on.
//!
//! One concept per file:
//!
//! - `mod.rs` (this file): [`TopicRoutes`], the table of configured topic
//!   paths, and [`TopicMatch`], a request path that is a topic, with the check
//!   of its parameters ([`ParamError`]).
//! - `template.rs`: the config's path templates, [`PathTemplate`] (a topic's
//!   path) and [`UpstreamTemplate`] (its upstream path), and
//!   [`TemplateError`].
//! - `normal_form.rs`: the normal form of a request path
//!   ([`normalize_path`], [`target_path`]): which spellings are one path.
//! - `closed.rs`: [`ClosedPaths`] and [`ClosedPath`], what the ordinary proxy
//!   must never pass to the app.

use std::collections::HashMap;
use std::fmt;

mod closed;
mod normal_form;
mod template;

pub use closed::{ClosedPath, ClosedPaths};
pub use normal_form::{normalize_path, target_path};
pub use template::{PathTemplate, TemplateError, UpstreamTemplate};

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
}
