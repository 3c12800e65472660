//! `$STIGMER_HOME/config.toml`, the user's settings: read and parsed by one function for both of
//! its readers (a component start takes `[runner]`, `stigmer server` everything), and every error
//! in it reported by one helper as one line, `PATH:LINE: message`.

use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::home::Home;

/// Why config.toml could not be used: unreadable, or a bad value, as one line naming the file
/// (and the line, when known).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigError(String);

/// config.toml as read: its shape T, and its path and text for errors.
pub(crate) struct Config<T> {
    pub(crate) value: T,
    path: PathBuf,
    text: String,
}

/// `[runner]`: `default = "auto" | "memfd" | "cache"`, checked by src/run/policy.rs.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunnerTable {
    pub(crate) default: Option<toml::Spanned<String>>,
}

/// Reads HOME's config.toml into T. None when there is none: that costs one failed open, and
/// nothing else of the home is looked at. Whether the home is one to take settings from is the
/// caller's to check (a start checks it when the file exists).
pub(crate) fn read<T: DeserializeOwned>(home: &Home) -> Result<Option<Config<T>>, ConfigError> {
    let path = home.config();
    let unreadable = |e: std::io::Error| ConfigError(format!("reading {}: {e}", path.display()));
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e)),
    };
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(unreadable)?;
    let value = match toml::from_str(&text) {
        Ok(value) => value,
        Err(e) => {
            let at = e.span().map(|s| s.start);
            return Err(error(&path, &text, at, e.message().trim_end().replace('\n', "; ")));
        }
    };
    Ok(Some(Config { value, path, text }))
}

impl<T> Config<T> {
    /// MESSAGE about the value that starts at byte OFFSET of the file.
    pub(crate) fn error_at(&self, offset: usize, message: impl std::fmt::Display) -> ConfigError {
        error(&self.path, &self.text, Some(offset), message)
    }

    /// MESSAGE about line LINE (1-based) of the file.
    pub(crate) fn error_at_line(&self, line: usize, message: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!("{}:{line}: {message}", self.path.display()))
    }

    /// MESSAGE about the file as a whole.
    pub(crate) fn error(&self, message: impl std::fmt::Display) -> ConfigError {
        error(&self.path, &self.text, None, message)
    }

    /// The 1-based number of the first line that SATISFIES, if any.
    pub(crate) fn line_where(&self, satisfies: impl Fn(&str) -> bool) -> Option<usize> {
        self.text.lines().position(satisfies).map(|i| i + 1)
    }
}

/// The one way an error in config.toml is said: `PATH:LINE: message` (`PATH: message` when the
/// place is not known).
fn error(path: &Path, text: &str, offset: Option<usize>, message: impl std::fmt::Display) -> ConfigError {
    let line = offset.map_or(String::new(), |o| format!(":{}", line_of(text, o)));
    ConfigError(format!("{}{line}: {message}", path.display()))
}

/// The 1-based line of byte OFFSET in TEXT.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}
