//! Where a value came from: the config file, and the one-line error that
//! points into it (`file:line:col: key: message`).
//!
//! Validation knows the key it is checking and holds the value's byte span
//! ([`toml::Spanned`]); [`Source`] turns the span into a line and column.
//! An error from the serde layer has a span but no key; [`Source::key_at`]
//! asks [`super::key_path`] which key stands there.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::key_path::KeyMap;

/// A config problem, reported as one line: `file:line:col: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub position: Option<(usize, usize)>,
    /// The dotted key at fault (`topic[1].path`), when known.
    pub key: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The file being loaded: its name for messages, its text for positions.
pub(super) struct Source<'a> {
    /// The file, as given; also the base of relative certificate paths.
    pub(super) path: &'a Path,
    /// Its whole text, which every span points into.
    pub(super) text: &'a str,
}

impl Source<'_> {
    /// An error at `span` (its start), naming `key`.
    pub(super) fn error(
        &self,
        span: Option<Range<usize>>,
        key: Option<String>,
        message: String,
    ) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            position: span.map(|s| self.line_column(s.start)),
            key,
            message,
        }
    }

    /// The 1-based line and column (in characters) of a byte offset.
    pub(super) fn line_column(&self, offset: usize) -> (usize, usize) {
        // Parser spans stand on character boundaries, so `get` finds them.
        let before = self
            .text
            .get(..offset.min(self.text.len()))
            .unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    /// Names the key whose value (or name) stands at byte `offset`, e.g.
    /// `topic[1].heartbeat` or `listen[0].tls.cert`.
    pub(super) fn key_at(&self, offset: usize) -> Option<String> {
        KeyMap::of(self.text).key_at(offset)
    }
}
