//! `[[topic]]`: each topic's path and upstream stream (with `[sse]`'s
//! settings and access applied), and the warnings about topics that work
//! but deserve a second look.

use std::collections::HashMap;

use toml::Spanned;

use super::Validator;
use crate::config::model::{AppSettings, TopicAccess, TopicConfig, TopicSettings, TopicUpstream};
use crate::config::raw;
use crate::config::source::ConfigError;
use crate::route::{PathTemplate, UpstreamTemplate};
use crate::upstream_addr::UpstreamAddr;

impl Validator<'_> {
    /// Every `[[topic]]`, in file order; two topics may not match the same
    /// requests.
    pub(super) fn topics(
        &self,
        raw: Vec<raw::Topic>,
        app: &AppSettings,
        defaults: TopicSettings,
        access_defaults: &TopicAccess,
    ) -> Result<Vec<TopicConfig>, ConfigError> {
        let mut topics: Vec<TopicConfig> = Vec::with_capacity(raw.len());
        // Each topic path's shape, with the first topic (index and path) that had it.
        let mut shapes: HashMap<String, (usize, String)> = HashMap::new();
        for (index, mut topic) in raw.into_iter().enumerate() {
            let key = format!("topic[{index}]");
            let path = PathTemplate::parse(topic.path.get_ref())
                .map_err(|e| self.at(&topic.path, format!("{key}.path"), e.0))?;
            let first = shapes.insert(path.shape(), (index, path.as_str().to_string()));
            if let Some((first, earlier)) = first {
                let message = if earlier == path.as_str() {
                    format!("duplicate topic path {earlier:?} (already topic[{first}]); each topic path must be unique")
                } else {
                    format!(
                        "{:?} matches the same requests as topic[{first}] {earlier:?}; give one of them a different path",
                        path.as_str()
                    )
                };
                return Err(self.at(&topic.path, format!("{key}.path"), message));
            }
            let upstream = self.topic_upstream(&topic.upstream, &key, &path, app)?;
            let eager = match topic.eager.take() {
                Some(e) if *e.get_ref() && path.is_template() => {
                    return Err(self.at(&e, format!("{key}.eager"), format!(
                        "a template topic ({:?}) has no instance to keep open before someone subscribes; remove eager or use a literal path",
                        path.as_str()
                    )))
                }
                Some(e) => e.into_inner(),
                None => false,
            };
            let access = self.access(topic.access(), &key, app, access_defaults.clone())?;
            let settings = self.topic_settings(topic.settings(), &key, defaults)?;
            topics.push(TopicConfig {
                path,
                upstream,
                settings,
                eager,
                access,
                expose_upstream: topic.expose_upstream.unwrap_or(false),
            });
        }
        Ok(topics)
    }

    /// A topic's `upstream`: a path on `[app]` or a full URL, using exactly
    /// the placeholders of the topic's path.
    fn topic_upstream(
        &self,
        raw: &Spanned<String>,
        key: &str,
        path: &PathTemplate,
        app: &AppSettings,
    ) -> Result<TopicUpstream, ConfigError> {
        let key = format!("{key}.upstream");
        let text = raw.get_ref();
        let (origin, upstream_path) = if text.starts_with('/') {
            (app.origin.clone(), text.as_str())
        } else {
            let (origin, upstream_path) = UpstreamAddr::parse_url(text).map_err(|e| {
                self.at(
                    raw,
                    &key,
                    format!("{e}; give a path on [app] such as \"/stream/news\" or a full URL"),
                )
            })?;
            if upstream_path.is_empty() {
                return Err(self.at(
                    raw,
                    &key,
                    format!("{text:?} has no path; add the stream's path, e.g. \"{text}/stream\""),
                ));
            }
            (origin, upstream_path)
        };
        let template =
            UpstreamTemplate::parse(upstream_path).map_err(|e| self.at(raw, &key, e.0))?;
        if let Some(missing) = template.params().find(|p| !path.params().any(|q| q == *p)) {
            return Err(self.at(
                raw,
                &key,
                format!(
                    "placeholder {{{missing}}} is not defined by the topic path {:?}; use only placeholders the path has",
                    path.as_str()
                ),
            ));
        }
        if let Some(unused) = path.params().find(|p| !template.params().any(|q| q == *p)) {
            return Err(self.at(
                raw,
                &key,
                format!(
                    "does not use placeholder {{{unused}}} of the topic path {:?}, so every topic instance would open the same stream; put {{{unused}}} in the upstream path",
                    path.as_str()
                ),
            ));
        }
        Ok(TopicUpstream {
            origin,
            path: template,
        })
    }
}

/// Topics that work but deserve a second look (`--check` prints these).
pub(super) fn warnings(topics: &[TopicConfig], app: &AppSettings) -> Vec<String> {
    let mut warnings: Vec<String> = topics
        .iter()
        .filter(|t| t.path.is_template() && t.access.auth.is_none())
        .map(|t| {
            format!(
                "template topic {:?} has no auth: anyone who guesses an instance's path can subscribe to it",
                t.path.as_str()
            )
        })
        .collect();
    warnings.extend(
        topics
            .iter()
            .filter(|t| t.expose_upstream && t.upstream.origin.same_as(&app.origin))
            .map(|t| {
                format!(
                    "topic {:?} sets expose_upstream: its upstream path {:?} is reachable through the proxy without the topic's auth and caps, one app stream per client",
                    t.path.as_str(),
                    t.upstream.path.as_str()
                )
            }),
    );
    warnings
}
