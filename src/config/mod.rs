//! The config file: its model, its defaults and its validation.
//!
//! One TOML file describes a whole deployment: the listeners (with their
//! certificates), the app behind the proxy, defaults for every SSE topic and
//! the topics themselves. See `docs/configuration.md` for every key.
//!
//! Loading happens in two stages:
//!
//! 1. **Raw, with spans** (`raw.rs`): [`toml`] deserialises the text into
//!    structs that mirror the file exactly, refuse unknown keys, check what a
//!    type can (sizes, durations) and remember where each value stood
//!    ([`toml::Spanned`]).
//! 2. **Validated** (`validate/`): [`Config::load`] checks those values
//!    section by section, fills in the documented defaults, loads the
//!    certificates and builds the [`Config`] the rest of the program uses.
//!
//! Every failure of either stage becomes one [`ConfigError`] line naming the
//! file, the line, the key and what to do, so `sse-fanout --check` reads like
//! `nginx -t`. A validation rule names its key itself and holds the value's
//! span; an error of the first stage has a span but no key, so the TOML
//! parser is asked which key stands there.
//!
//! | file | holds |
//! |---|---|
//! | `model.rs` | the validated [`Config`] and its parts, and every documented `DEFAULT_*` |
//! | `raw.rs` | stage 1: the serde structs, with spans; sizes and durations |
//! | `validate/mod.rs` | stage 2: the order of the sections, and rules shared by them |
//! | `validate/server.rs` | `[server]` |
//! | `validate/listen.rs` | `[[listen]]`, loading the certificates |
//! | `validate/app.rs` | `[app]` |
//! | `validate/topic_settings.rs` | the SSE knobs of `[sse]` and each `[[topic]]`'s overrides |
//! | `validate/access.rs` | `auth`, `auth_cache`, `cors_origins`, `upstream_headers` of `[sse]` and `[[topic]]` |
//! | `validate/topics.rs` | `[[topic]]` paths and upstreams, and the warnings about topics |
//! | `validate/limits.rs` | `[limits]` |
//! | `validate/admin.rs` | `[admin]` |
//! | `source.rs` | [`ConfigError`], and byte spans turned into `line:column` |
//! | `key_path.rs` | the dotted key (`topic[1].heartbeat`) at a byte offset, from the TOML parser |

mod key_path;
mod model;
mod raw;
mod source;
mod validate;

use std::path::Path;

pub use model::*;
pub use source::ConfigError;

use source::Source;
use validate::Validator;

impl Config {
    /// Reads, parses and validates a config file, loading its certificates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            position: None,
            key: None,
            message: format!("cannot read the config file: {e}; give its path with -c FILE"),
        })?;
        Self::from_text(path, &text)
    }

    /// Parses and validates config text; `path` names it in errors and is the
    /// base for relative certificate paths.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let source = Source { path, text };
        let raw: raw::Config = toml::from_str(text).map_err(|e| {
            let span = e.span();
            let key = span.as_ref().and_then(|s| source.key_at(s.start));
            source.error(span, key, e.message().to_string())
        })?;
        Validator { source }.config(raw)
    }
}

#[cfg(test)]
mod tests;
