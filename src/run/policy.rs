//! Which runner starts a component, and why: the `auto` policy of DESIGN.md, components.toml's
//! `runner`, the user's `[runner] default` and per-service `runner` in config.toml, and the
//! STIGMER_RUNNER override. One function decides for both the exec path and `stigmer
//! components`, so what the table says is what a start does.
//!
//! Precedence, most specific first: STIGMER_RUNNER; a service's `runner` (handed to the service's
//! own start by the supervisor in STIGMER_SERVICE_RUNNER, not inherited by what the service
//! starts); `[runner] default`; components.toml's `runner`; the per-format policy.

use std::path::Path;

use crate::embed::{Component, Format, Kind, RunnerSetting};
use crate::home::Home;
use crate::platform;

use super::RunError;

pub(crate) const RUNNER_VAR: &str = "STIGMER_RUNNER";
/// Set by the supervisor for one service's start; the launcher takes it out of the component's
/// environment, so the service's own children follow their own policy.
pub(crate) const SERVICE_RUNNER_VAR: &str = "STIGMER_SERVICE_RUNNER";

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

    /// `auto` is None: the policy decides.
    pub(crate) fn parse(value: &str) -> Result<Option<Runner>, ()> {
        match value {
            "auto" => Ok(None),
            "memfd" => Ok(Some(Runner::Memfd)),
            "cache" => Ok(Some(Runner::Cache)),
            _ => Err(()),
        }
    }
}

/// A runner and the reason it was chosen, in words for `stigmer components` and debug logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Choice {
    pub(crate) runner: Runner,
    pub(crate) why: &'static str,
    /// Chosen by the user, so a runner that fails is an error, not a fall back to the other one
    /// (a user who chose the cache to keep memfd execution off the machine gets none).
    pub(crate) firm: bool,
}

/// The run-time inputs of the choice, besides the component.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Overrides {
    /// STIGMER_RUNNER.
    pub(crate) env: Option<Runner>,
    /// The service's `runner` in config.toml (STIGMER_SERVICE_RUNNER).
    pub(crate) service: Option<Runner>,
    /// `[runner] default` in config.toml.
    pub(crate) default: Option<Runner>,
}

/// The runner STIGMER_RUNNER forces, if any.
pub(crate) fn forced_runner() -> Result<Option<Runner>, RunError> {
    match crate::env::var(RUNNER_VAR).as_deref() {
        None => Ok(None),
        Some(v) => Runner::parse(v).map_err(|()| RunError::BadRunnerVar(RUNNER_VAR, v.to_owned())),
    }
}

/// The runner the supervisor asked for this service's start, if any.
pub(crate) fn service_runner() -> Result<Option<Runner>, RunError> {
    match crate::env::var(SERVICE_RUNNER_VAR).as_deref() {
        None => Ok(None),
        Some(v) => Runner::parse(v).map_err(|()| RunError::BadRunnerVar(SERVICE_RUNNER_VAR, v.to_owned())),
    }
}

/// `[runner]` of config.toml; every other table is the server's (src/server/spec.rs).
#[derive(serde::Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    runner: RunnerTable,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunnerTable {
    default: Option<toml::Spanned<String>>,
}

impl RunnerTable {
    /// The checked `default`; a bad one is one line naming the file and the line.
    pub(crate) fn default_runner(&self, path: &Path, text: &str) -> Result<Option<Runner>, String> {
        let Some(value) = &self.default else { return Ok(None) };
        Runner::parse(value.get_ref()).map_err(|()| {
            format!(
                "{}:{}: [runner] default = {:?} is not one of auto, memfd, cache",
                path.display(),
                line_of(text, value.span().start),
                value.get_ref()
            )
        })
    }
}

/// The 1-based line of byte OFFSET in TEXT.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// A TOML error as one line, `PATH:LINE: message` (toml's own rendering spans several).
pub(crate) fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let line = e.span().map_or(String::new(), |s| format!(":{}", line_of(text, s.start)));
    format!("{}{line}: {}", path.display(), e.message().trim_end().replace('\n', "; "))
}

/// `[runner] default` of `$STIGMER_HOME/config.toml`. On the exec path: without a home or a
/// config.toml this costs one failed open(2); only a file that exists is parsed, and only in a
/// home the cache path would trust (a memfd start reads nothing else of the home).
pub(crate) fn config_default() -> Result<Option<Runner>, RunError> {
    let Ok(home) = Home::from_env() else { return Ok(None) };
    config_default_in(&home)
}

pub(crate) fn config_default_in(home: &Home) -> Result<Option<Runner>, RunError> {
    let path = home.config();
    let read = |e: std::io::Error| RunError::Config(format!("reading {}: {e}", path.display()));
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read(e)),
    };
    home.check().map_err(|e| RunError::Home(e.into()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(read)?;
    let file: ConfigFile = toml::from_str(&text).map_err(|e| RunError::Config(toml_error(&path, &text, &e)))?;
    file.runner.default_runner(&path, &text).map_err(RunError::Config)
}

/// Every run-time input, as a start sees them here and now.
pub(crate) fn overrides() -> Result<Overrides, RunError> {
    let env = forced_runner()?;
    let service = service_runner()?;
    // Either decides before the default: config.toml is then not even read.
    let default = if env.is_some() || service.is_some() { None } else { config_default()? };
    Ok(Overrides { env, service, default })
}

/// The runner a start of `c` takes given the run-time overrides, and why.
pub(crate) fn choose(c: &Component, over: Overrides) -> Choice {
    let firm = |runner, why| Choice { runner, why, firm: true };
    match (over.env, over.service, over.default) {
        (Some(Runner::Memfd), ..) => firm(Runner::Memfd, "STIGMER_RUNNER=memfd"),
        (Some(Runner::Cache), ..) => firm(Runner::Cache, "STIGMER_RUNNER=cache"),
        (None, Some(Runner::Memfd), _) => firm(Runner::Memfd, "runner = \"memfd\" for this service in config.toml"),
        (None, Some(Runner::Cache), _) => firm(Runner::Cache, "runner = \"cache\" for this service in config.toml"),
        (None, None, Some(Runner::Cache)) => firm(Runner::Cache, "[runner] default = \"cache\" in config.toml"),
        // memfd wherever the policy would take it anyway, and firmly (no disk writes); what
        // cannot run from a memfd (directories, PyInstaller, Go programs that look for their own
        // file, components marked `runner = "cache"`) keeps the cache and its reason.
        (None, None, Some(Runner::Memfd)) => match auto_choice(c) {
            Choice { runner: Runner::Memfd, .. } => firm(Runner::Memfd, "[runner] default = \"memfd\" in config.toml"),
            auto => auto,
        },
        (None, None, None) => auto_choice(c),
    }
}

/// What a start tries, in order: the chosen runner, then the one it falls back to if that fails.
/// `STIGMER_LOG=debug` prints it; the executor (run/mod.rs) walks it and decides nothing itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) first: Choice,
    /// None when the user chose the runner (a failure is then an error) or nothing else can run
    /// the component.
    pub(crate) fallback: Option<Fallback>,
}

/// The second runner of a plan, and which failures of the first lead to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fallback {
    pub(crate) runner: Runner,
    pub(crate) why: &'static str,
}

impl Fallback {
    /// Whether ERROR, from the plan's first runner, sends the start on to this one. A memfd that
    /// fails for any reason leaves the cache to try; the cache gives way to a memfd only when its
    /// disk cannot be written (full, read-only): a damaged or foreign cache is an error to show.
    pub(crate) fn takes_over_from(self, error: &RunError) -> bool {
        match self.runner {
            Runner::Cache => matches!(error, RunError::Memfd(_)),
            Runner::Memfd => {
                matches!(error, RunError::Cache(e) if e.is_io()) || matches!(error, RunError::Unwritable { .. })
            }
        }
    }
}

/// The plan for a start of `c` given OVER.
pub(crate) fn plan(c: &Component, over: Overrides) -> Plan {
    let first = choose(c, over);
    let fallback = match first.runner {
        _ if first.firm => None,
        Runner::Memfd => Some(Fallback { runner: Runner::Cache, why: "the memfd could not be made or executed" }),
        Runner::Cache if memfd_capable(c) => {
            Some(Fallback { runner: Runner::Memfd, why: "the cache's disk cannot be written (full or read-only)" })
        }
        Runner::Cache => None,
    };
    Plan { first, fallback }
}

/// Why `c` cannot run from a memfd whatever anyone asks, if it cannot: the platform has no memfd
/// execution, or the component is a tree.
fn memfd_impossible(c: &Component) -> Option<&'static str> {
    if !platform::MEMFD_EXEC {
        Some("no memfd execution on this platform")
    } else if matches!(c.kind, Kind::Dir(_)) {
        Some("directory component")
    } else {
        None
    }
}

/// memfd for single-file ELF programs and scripts on Linux; the cache for directories,
/// PyInstaller builds (their bootloader needs a real path), Go programs that link os.Executable
/// (under a memfd it names `/memfd:NAME`, which does not exist, so re-running or updating
/// themselves fails), anything marked `runner = "cache"`, and every platform without memfd.
/// A memfd that turns out unavailable falls back later (`plan`).
fn auto_choice(c: &Component) -> Choice {
    let (runner, why) = match (memfd_impossible(c), c.runner, c.format) {
        (Some(why), ..) => (Runner::Cache, why),
        (None, RunnerSetting::Cache, _) => (Runner::Cache, "runner = \"cache\" in components.toml"),
        (None, RunnerSetting::Memfd, _) => (Runner::Memfd, "runner = \"memfd\" in components.toml"),
        (None, RunnerSetting::Auto, Format::Elf) => (Runner::Memfd, "single-file ELF"),
        (None, RunnerSetting::Auto, Format::Script) => (Runner::Memfd, "script"),
        (None, RunnerSetting::Auto, Format::GoOsExecutable) => {
            (Runner::Cache, "Go program linking os.Executable: it finds its own file, which a memfd lacks")
        }
        (None, RunnerSetting::Auto, Format::PyInstaller) => {
            (Runner::Cache, "PyInstaller: its bootloader needs a real path")
        }
        (None, RunnerSetting::Auto, Format::Other) => (Runner::Cache, "not an ELF program or a script"),
    };
    Choice { runner, why, firm: false }
}

/// Whether memfd execution could work for this component at all: a single-file ELF or script
/// on Linux (PyInstaller's bootloader needs a real path; directories need a tree). A Go program
/// linking os.Executable runs from a memfd too, until it looks for itself.
pub(crate) fn memfd_capable(c: &Component) -> bool {
    memfd_impossible(c).is_none() && matches!(c.format, Format::Elf | Format::Script | Format::GoOsExecutable)
}
