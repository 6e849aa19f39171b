//! The second loading stage: the raw file becomes a [`Config`], one rule at
//! a time.
//!
//! [`Validator::config`] takes the sections in a fixed order (the first
//! problem found is the one reported). Each section's rules are methods of
//! [`Validator`] in the file named after the section (`server.rs`,
//! `listen.rs`, `app.rs`, `topic_settings.rs`, `access.rs`, `topics.rs`,
//! `limits.rs`, `admin.rs`; the table in `config/mod.rs` says which keys
//! each holds); this file holds the order and the rules they share.
//!
//! Every rule reports through [`Validator::at`] (the value's place in the
//! file) or [`Validator::nowhere`] (a rule about a missing table or about two
//! keys together), so every message has the same `file:line:col: key:` shape.

mod access;
mod admin;
mod app;
mod limits;
mod listen;
mod server;
mod topic_settings;
mod topics;

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::model::{Config, TopicAccess};
use super::raw;
use super::source::{ConfigError, Source};

/// Turns the raw file into a [`Config`], one rule at a time.
pub(super) struct Validator<'a> {
    /// The file, for positions in errors and relative paths.
    pub(super) source: Source<'a>,
}

impl Validator<'_> {
    /// An error at `value`'s place in the file.
    fn at<T>(&self, value: &Spanned<T>, key: impl Into<String>, message: String) -> ConfigError {
        self.source
            .error(Some(value.span()), Some(key.into()), message)
    }

    /// An error with no single place in the file (a missing table, two keys
    /// that do not go together).
    fn nowhere(&self, key: Option<&str>, message: String) -> ConfigError {
        self.source.error(None, key.map(str::to_string), message)
    }

    /// Relative paths in the config are relative to the config file's folder.
    fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            return path.to_path_buf();
        }
        match self.source.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// The whole file, section by section.
    pub(super) fn config(&self, raw: raw::Config) -> Result<Config, ConfigError> {
        let requested_drain = raw.server.drain.as_ref().map(|d| d.get_ref().0);
        let server = self.server(raw.server)?;
        let listeners = self.listeners(raw.listen)?;
        let Some(raw_app) = raw.app else {
            return Err(self.nowhere(
                Some("app"),
                "missing [app] table; add one with upstream = \"127.0.0.1:8080\" (where your app listens)".into(),
            ));
        };
        let app = self.app(raw_app)?;
        let mut raw_sse = raw.sse;
        let access_defaults = self.access(raw_sse.access(), "sse", &app, TopicAccess::default())?;
        let defaults = self.sse_defaults(raw_sse)?;
        let topics = self.topics(raw.topic, &app, defaults, &access_defaults)?;
        let mut raw_limits = raw.limits.unwrap_or_default();
        let connections = self.connection_limits(&mut raw_limits)?;
        let limits = self.limits(raw_limits)?;
        let mut warnings = topics::warnings(&topics, &app);
        if requested_drain.is_some_and(|drain| drain > server.grace_period) {
            warnings.push(format!(
                "server.drain is longer than server.grace_period ({}): subscriptions are ended within {} instead, since the process stops when the grace period ends",
                humantime::format_duration(server.grace_period),
                humantime::format_duration(server.drain),
            ));
        }
        let admin = raw
            .admin
            .map(|admin| self.admin(admin, &listeners))
            .transpose()?;
        Ok(Config {
            path: self.source.path.to_path_buf(),
            server,
            listeners,
            app,
            topics,
            admin,
            limits,
            connections,
            warnings,
        })
    }

    /// A duration that must not be zero.
    fn positive(
        &self,
        value: Option<Spanned<raw::DurationValue>>,
        key: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        match value {
            Some(d) if d.get_ref().0.is_zero() => {
                Err(self.at(&d, key, "must be longer than zero, e.g. \"15s\"".into()))
            }
            Some(d) => Ok(Some(d.into_inner().0)),
            None => Ok(None),
        }
    }

    /// A size that must not be zero.
    fn size(
        &self,
        value: Option<Spanned<raw::SizeValue>>,
        key: &str,
    ) -> Result<Option<usize>, ConfigError> {
        match value {
            Some(s) if s.get_ref().0 == 0 => {
                Err(self.at(&s, key, "must be larger than zero, e.g. \"1MiB\"".into()))
            }
            Some(s) => Ok(Some(s.into_inner().0)),
            None => Ok(None),
        }
    }
}
