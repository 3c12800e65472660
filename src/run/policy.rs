//! Which runner starts a component, and why: the `auto` policy of DESIGN.md, components.toml's
//! `runner`, and the STIGMER_RUNNER override. One function decides for both the exec path and
//! `stigmer components`, so what the table says is what a start does.

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

/// A runner and the reason it was chosen, in words for `stigmer components` and debug logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Choice {
    pub(crate) runner: Runner,
    pub(crate) why: &'static str,
}

/// The runner STIGMER_RUNNER forces, if any.
pub(crate) fn forced_runner() -> Result<Option<Runner>, RunError> {
    match crate::env::var(RUNNER_VAR).as_deref() {
        None | Some("auto") => Ok(None),
        Some("memfd") => Ok(Some(Runner::Memfd)),
        Some("cache") => Ok(Some(Runner::Cache)),
        Some(other) => Err(RunError::BadRunnerVar(other.to_owned())),
    }
}

/// The runner a start of `c` takes given FORCED (STIGMER_RUNNER), and why.
pub(crate) fn choose(c: &Component, forced: Option<Runner>) -> Choice {
    match forced {
        Some(Runner::Memfd) => Choice { runner: Runner::Memfd, why: "STIGMER_RUNNER=memfd" },
        Some(Runner::Cache) => Choice { runner: Runner::Cache, why: "STIGMER_RUNNER=cache" },
        None => auto_choice(c),
    }
}

/// memfd for single-file ELF programs and scripts on Linux; the cache for directories,
/// PyInstaller builds (their bootloader needs a real path), Go programs that link os.Executable
/// (under a memfd it names `/memfd:NAME`, which does not exist, so re-running or updating
/// themselves fails), anything marked `runner = "cache"`, and every platform without memfd.
/// A memfd that turns out unavailable falls back later.
pub(crate) fn auto_runner(c: &Component) -> Runner {
    auto_choice(c).runner
}

fn auto_choice(c: &Component) -> Choice {
    let (runner, why) = if !cfg!(target_os = "linux") {
        (Runner::Cache, "no memfd execution on this platform")
    } else if matches!(c.kind, Kind::Dir(_)) {
        (Runner::Cache, "directory component")
    } else {
        match (c.runner, c.format) {
            (RunnerSetting::Cache, _) => (Runner::Cache, "runner = \"cache\" in components.toml"),
            (RunnerSetting::Memfd, _) => (Runner::Memfd, "runner = \"memfd\" in components.toml"),
            (RunnerSetting::Auto, Format::Elf) => (Runner::Memfd, "single-file ELF"),
            (RunnerSetting::Auto, Format::Script) => (Runner::Memfd, "script"),
            (RunnerSetting::Auto, Format::GoOsExecutable) => {
                (Runner::Cache, "Go program linking os.Executable: it finds its own file, which a memfd lacks")
            }
            (RunnerSetting::Auto, Format::PyInstaller) => {
                (Runner::Cache, "PyInstaller: its bootloader needs a real path")
            }
            (RunnerSetting::Auto, Format::Other) => (Runner::Cache, "not an ELF program or a script"),
        }
    };
    Choice { runner, why }
}

/// Whether memfd execution could work for this component at all: a single-file ELF or script
/// on Linux (PyInstaller's bootloader needs a real path; directories need a tree). A Go program
/// linking os.Executable runs from a memfd too, until it looks for itself.
pub(crate) fn memfd_capable(c: &Component) -> bool {
    cfg!(target_os = "linux")
        && matches!(c.kind, Kind::File)
        && matches!(c.format, Format::Elf | Format::Script | Format::GoOsExecutable)
}
