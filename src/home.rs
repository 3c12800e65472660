//! `$STIGMER_HOME` (default `~/.stigmer`) and every directory and file under it: nothing else
//! joins "logs" or "run" by hand, so the layout is decided here once.

use std::path::{Path, PathBuf};

pub(crate) const HOME_VAR: &str = "STIGMER_HOME";

#[derive(Debug, thiserror::Error)]
#[error("cannot tell where stigmer's home is: set STIGMER_HOME (or HOME)")]
pub(crate) struct NoHome;

#[derive(Debug, Clone)]
pub(crate) struct Home {
    root: PathBuf,
}

impl Home {
    pub(crate) fn from_env() -> Result<Self, NoHome> {
        let root = match std::env::var_os(HOME_VAR).filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or(NoHome)?).join(".stigmer"),
        };
        // Components may change directory; every path we hand out must not depend on ours.
        let root = if root.is_absolute() { root } else { std::env::current_dir().map_err(|_| NoHome)?.join(root) };
        Ok(Self { root })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Content-addressed component cache.
    pub(crate) fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Component symlinks, first on the services' PATH.
    pub(crate) fn bin(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// The supervisor's lock, state and control socket.
    pub(crate) fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Service and supervisor logs.
    pub(crate) fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// A service's working directory and data, kept across restarts. `service` is a checked
    /// name (crate::names), never a path.
    pub(crate) fn data(&self, service: &str) -> PathBuf {
        self.root.join("data").join(service)
    }

    /// The user's service overrides and additions.
    pub(crate) fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
}
