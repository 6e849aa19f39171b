//! Who may subscribe to a topic, in `[sse]` (for every topic) and in each
//! `[[topic]]`: the auth endpoint, how long its answers are reused, the web
//! origins allowed, and the headers added to the upstream request.

use toml::Spanned;

use super::Validator;
use crate::config::model::{AppSettings, AuthTarget, CorsOrigins, TopicAccess};
use crate::config::raw;
use crate::config::source::ConfigError;
use crate::upstream_addr::UpstreamAddr;

impl Validator<'_> {
    /// Applies one table's access keys (`auth`, `auth_cache`,
    /// `cors_origins`, `upstream_headers`) over `defaults`.
    pub(super) fn access(
        &self,
        raw: raw::Access,
        table: &str,
        app: &AppSettings,
        defaults: TopicAccess,
    ) -> Result<TopicAccess, ConfigError> {
        let key = |name: &str| format!("{table}.{name}");
        let auth = match &raw.auth {
            None => defaults.auth,
            Some(text) if text.get_ref().is_empty() => None,
            Some(text) => Some(self.auth_target(text, &key("auth"), app)?),
        };
        let cors = match &raw.cors_origins {
            None => defaults.cors,
            Some(list) => self.cors(list, &key("cors_origins"))?,
        };
        if cors == CorsOrigins::Any && auth.is_some() {
            let message = "cors_origins = [\"*\"] cannot go with auth: a credentialed EventSource needs its exact origin; list the origins instead".to_string();
            return Err(match (&raw.cors_origins, &raw.auth) {
                (Some(list), _) => self.at(list, key("cors_origins"), message),
                (None, Some(auth)) => self.at(auth, key("auth"), message),
                (None, None) => self.nowhere(Some(&key("cors_origins")), message),
            });
        }
        let upstream_headers = match raw.upstream_headers {
            None => defaults.upstream_headers,
            Some(headers) => {
                let mut checked = Vec::new();
                for (name, value) in headers.get_ref() {
                    let valid = http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                        && http::HeaderValue::from_str(value).is_ok();
                    let reserved = [
                        "host",
                        "connection",
                        "accept",
                        "cache-control",
                        "last-event-id",
                        "transfer-encoding",
                        "content-length",
                    ]
                    .contains(&name.to_ascii_lowercase().as_str());
                    if !valid || reserved {
                        return Err(self.at(
                            &headers,
                            key("upstream_headers"),
                            format!("{name:?} is not a header sse-fanout can add (invalid, or one it sets itself)"),
                        ));
                    }
                    checked.push((name.clone(), value.clone()));
                }
                checked
            }
        };
        Ok(TopicAccess {
            auth,
            auth_cache: raw
                .auth_cache
                .map_or(defaults.auth_cache, |d| d.into_inner().0),
            cors,
            upstream_headers,
        })
    }

    /// An `auth` value: a path on `[app]` or a full URL.
    fn auth_target(
        &self,
        raw: &Spanned<String>,
        key: &str,
        app: &AppSettings,
    ) -> Result<AuthTarget, ConfigError> {
        let text = raw.get_ref();
        if text.starts_with('/') {
            return Ok(AuthTarget {
                origin: app.origin.clone(),
                path: text.clone(),
            });
        }
        let (origin, path) = UpstreamAddr::parse_url(text).map_err(|e| {
            self.at(
                raw,
                key,
                format!("{e}; give a path on [app] such as \"/auth/sse\" or a full URL"),
            )
        })?;
        Ok(AuthTarget {
            origin,
            path: if path.is_empty() {
                "/".into()
            } else {
                path.to_string()
            },
        })
    }

    /// A `cors_origins` list: exact origins, or `"*"` alone.
    fn cors(&self, raw: &Spanned<Vec<String>>, key: &str) -> Result<CorsOrigins, ConfigError> {
        let list = raw.get_ref();
        if list.iter().any(|o| o == "*") {
            return if list.len() == 1 {
                Ok(CorsOrigins::Any)
            } else {
                Err(self.at(
                    raw,
                    key,
                    "\"*\" stands alone: list exact origins, or only \"*\"".into(),
                ))
            };
        }
        for origin in list {
            if crate::cors::normalize_origin(origin).is_none() {
                return Err(self.at(
                    raw,
                    key,
                    format!("{origin:?} is not an origin; write scheme and host (and port), like \"https://app.example\""),
                ));
            }
        }
        Ok(if list.is_empty() {
            CorsOrigins::None
        } else {
            CorsOrigins::List(list.clone())
        })
    }
}
