//! Which runner starts a component: the `auto` policy of DESIGN.md and the STIGMER_RUNNER override.

use crate::embed::{Component, Format, Kind, RunnerSetting};

use super::RunError;

pub(crate) const RUNNER_VAR: &str = "STIGMER_RUNNER";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runner {
    Memfd,
    Cache,
}

impl Runner {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Runner::Memfd => "memfd",
            Runner::Cache => "cache",
        }
    }
}

/// The runner STIGMER_RUNNER forces, if any.
pub(super) fn forced_runner() -> Result<Option<Runner>, RunError> {
    match std::env::var(RUNNER_VAR).as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(None),
        Ok("memfd") => Ok(Some(Runner::Memfd)),
        Ok("cache") => Ok(Some(Runner::Cache)),
        Ok(other) => Err(RunError::BadRunnerVar(other.to_owned())),
    }
}

/// memfd for single-file ELF programs and scripts on Linux; the cache for directories,
/// PyInstaller builds (their bootloader needs a real path), anything marked `runner = "cache"`,
/// and every platform without memfd. A memfd that turns out unavailable falls back later.
pub(crate) fn auto_runner(c: &Component) -> Runner {
    if !cfg!(target_os = "linux") || matches!(c.kind, Kind::Dir(_)) {
        return Runner::Cache;
    }
    match (c.runner, c.format) {
        (RunnerSetting::Cache, _) => Runner::Cache,
        (RunnerSetting::Memfd, _) => Runner::Memfd,
        (RunnerSetting::Auto, Format::Elf | Format::Script) => Runner::Memfd,
        (RunnerSetting::Auto, Format::PyInstaller | Format::Other) => Runner::Cache,
    }
}

/// Whether memfd execution could work for this component at all: a single-file ELF or script
/// on Linux (PyInstaller's bootloader needs a real path; directories need a tree).
pub(crate) fn memfd_capable(c: &Component) -> bool {
    cfg!(target_os = "linux") && matches!(c.kind, Kind::File) && matches!(c.format, Format::Elf | Format::Script)
}
