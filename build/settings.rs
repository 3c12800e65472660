//! components.toml: per-component settings (version, runner, compression, level), checked here
//! so a bad value fails the build naming the file and the line.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};
use crate::model::{Compression, RunnerSetting};

pub(crate) const SETTINGS_FILE: &str = "components.toml";
/// Default zstd level for directory components; single files default to no compression
/// so the memfd runner can splice them straight from the executable.
const DEFAULT_LEVEL: i32 = 3;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    #[serde(default)]
    pub(crate) components: BTreeMap<String, ComponentSettings>,
    /// Service definitions for `stigmer server`; parsed at run time from the embedded text.
    #[serde(default)]
    #[allow(dead_code)]
    services: Option<toml::Table>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct ComponentSettings {
    pub(crate) version: Option<String>,
    #[serde(default)]
    pub(crate) runner: RunnerSetting,
    compression: Option<Spanned<String>>,
    level: Option<Spanned<i32>>,
}

impl ComponentSettings {
    /// The configured compression, or the default for a file (none) or a directory (zstd).
    /// The name was checked by [`parse`].
    pub(crate) fn compression(&self, dir: bool) -> Compression {
        let level = self.level.as_ref().map_or(DEFAULT_LEVEL, |l| *l.get_ref());
        match &self.compression {
            Some(name) => Compression::from_setting(name.get_ref(), level).unwrap_or(Compression::None),
            None if dir => Compression::Zstd(level),
            None => Compression::None,
        }
    }
}

/// Parses and checks the text of components.toml read from `path`.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Settings> {
    let settings: Settings =
        toml::from_str(text).map_err(|e| Error::Settings { path: path.to_owned(), source: Box::new(e) })?;
    let line_at = |offset: usize| text[..offset].lines().count();
    for (name, c) in &settings.components {
        if let Some(level) = &c.level
            && !(1..=22).contains(level.get_ref())
        {
            return Err(Error::LevelOutOfRange {
                path: path.to_owned(),
                line: line_at(level.span().start),
                name: name.clone(),
                level: *level.get_ref(),
            });
        }
        if let Some(value) = &c.compression
            && Compression::from_setting(value.get_ref(), DEFAULT_LEVEL).is_none()
        {
            return Err(Error::UnknownCompression {
                path: path.to_owned(),
                line: line_at(value.span().start),
                name: name.clone(),
                value: value.get_ref().clone(),
            });
        }
    }
    Ok(settings)
}

/// The 1-based number of the first line of `text` containing `needle`.
pub(crate) fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}
