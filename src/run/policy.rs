//! Which runner starts a component, and why: the `auto` policy of DESIGN.md, components.toml's
//! `runner`, the user's `[runner] default` and per-service `runner` in config.toml, and the
//! STIGMER_RUNNER override. One function decides for both the exec path and `stigmer
//! components`, so what the table says is what a start does.
//!
//! Precedence, most specific first: STIGMER_RUNNER; a service's `runner` (handed to the service's
//! own start by the supervisor in STIGMER_SERVICE_RUNNER, not inherited by what the service
//! starts); `[runner] default`; components.toml's `runner`; the auto policy (format, then size).
//! `Overrides::deciding` is that order, for the choice and for `doctor`.

use crate::config::{self, Config, ConfigError, RunnerTable};
use crate::embed::{Component, Format, Kind, RunnerSetting};
use crate::home::{Home, HomeError};
use crate::platform;

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
}

/// A runner setting's value, wherever it is set (SETTING names it: `STIGMER_RUNNER`,
/// `[runner] default`, `services.NAME: runner`): `auto` is None, the policy decides. A bad value is
/// said one way, `SETTING = "VALUE" is not one of auto, memfd, cache`.
pub(crate) fn parse_setting(setting: &str, value: &str) -> Result<Option<Runner>, String> {
    match value {
        "auto" => Ok(None),
        "memfd" => Ok(Some(Runner::Memfd)),
        "cache" => Ok(Some(Runner::Cache)),
        _ => Err(format!("{setting} = {value:?} is not one of auto, memfd, cache")),
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

/// Which run-time setting decides, the most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// STIGMER_RUNNER.
    Env,
    /// The service's `runner` (STIGMER_SERVICE_RUNNER, set by the supervisor).
    Service,
    /// `[runner] default` in config.toml.
    Default,
}

impl Source {
    /// Why a start takes RUNNER because of this setting.
    fn why(self, runner: Runner) -> &'static str {
        match (self, runner) {
            (Source::Env, Runner::Memfd) => "STIGMER_RUNNER=memfd",
            (Source::Env, Runner::Cache) => "STIGMER_RUNNER=cache",
            (Source::Service, Runner::Memfd) => "runner = \"memfd\" for this service in config.toml",
            (Source::Service, Runner::Cache) => "runner = \"cache\" for this service in config.toml",
            (Source::Default, Runner::Memfd) => "[runner] default = \"memfd\" in config.toml",
            (Source::Default, Runner::Cache) => "[runner] default = \"cache\" in config.toml",
        }
    }
}

impl Overrides {
    /// The setting that decides, and its runner: the precedence, in this one place. None: the
    /// component's own `runner` in components.toml and then the auto policy decide.
    pub(crate) fn deciding(self) -> Option<(Runner, Source)> {
        match (self.env, self.service, self.default) {
            (Some(r), ..) => Some((r, Source::Env)),
            (None, Some(r), _) => Some((r, Source::Service)),
            (None, None, Some(r)) => Some((r, Source::Default)),
            (None, None, None) => None,
        }
    }
}

/// A runner variable's value, if set.
fn runner_var(name: &'static str) -> Result<Option<Runner>, RunnerSettingError> {
    match crate::env::text(name).map_err(|e| RunnerSettingError::Env(e.0))? {
        None => Ok(None),
        Some(v) => parse_setting(name, &v).map_err(RunnerSettingError::Env),
    }
}

/// A bad runner setting, a config.toml that cannot be read, or one in a home not to trust.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunnerSettingError {
    #[error("{0}")]
    Env(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Home(#[from] HomeError),
}

/// config.toml as a start reads it: `[runner]` only (every other table is the server's).
#[derive(serde::Deserialize, Default)]
struct StartConfig {
    #[serde(default)]
    runner: RunnerTable,
}

/// `[runner] default` of CONFIG (whatever shape it was read into), checked.
pub(crate) fn config_default<T>(config: &Config<T>, table: &RunnerTable) -> Result<Option<Runner>, ConfigError> {
    let Some(value) = &table.default else { return Ok(None) };
    parse_setting("[runner] default", value.get_ref()).map_err(|e| config.error_at(value.span().start, e))
}

/// Every run-time input, as a start in HOME sees them here and now. Without a home or a
/// config.toml, config.toml costs one failed open(2); it is read only when neither variable
/// decides, and only in a home the cache path would trust.
pub(crate) fn overrides_in(home: Option<&Home>) -> Result<Overrides, RunnerSettingError> {
    let env = runner_var(RUNNER_VAR)?;
    let service = runner_var(SERVICE_RUNNER_VAR)?;
    let default = match (env.or(service), home) {
        (None, Some(home)) => match config::read::<StartConfig>(home)? {
            Some(config) => {
                home.check().map_err(HomeError::from)?;
                config_default(&config, &config.value.runner)?
            }
            None => None,
        },
        _ => None,
    };
    Ok(Overrides { env, service, default })
}

/// `overrides_in` the home of the environment, if there is one.
pub(crate) fn overrides() -> Result<Overrides, RunnerSettingError> {
    overrides_in(Home::from_env().ok().as_ref())
}

/// The runner a start of `c` takes given the run-time overrides, and why.
pub(crate) fn choose(c: &Component, over: Overrides) -> Choice {
    match over.deciding() {
        // memfd wherever the format allows it, and firmly (no disk writes); what cannot run
        // from a memfd (directories, PyInstaller, Go programs that look for their own file,
        // components marked `runner = "cache"`) keeps the cache and its reason.
        Some((Runner::Memfd, Source::Default)) => match format_choice(c) {
            Choice { runner: Runner::Memfd, .. } => {
                Choice { runner: Runner::Memfd, why: Source::Default.why(Runner::Memfd), firm: true }
            }
            auto => auto,
        },
        Some((runner, source)) => Choice { runner, why: source.why(runner), firm: true },
        None => auto_choice(c),
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
    /// Whether a first runner that failed this way sends the start on to this one. A memfd that
    /// fails for any reason leaves the cache to try; the cache gives way to a memfd only when its
    /// disk cannot be written (full, read-only): a damaged or foreign cache is an error to show.
    pub(crate) fn takes_over_from(self, failure: Failure) -> bool {
        match self.runner {
            Runner::Cache => failure == Failure::Memfd,
            Runner::Memfd => failure == Failure::CacheDisk,
        }
    }

    /// Whether, when this runner fails too, the first runner's error is the one to report: a
    /// memfd is only the fallback of a cache that cannot be written, and the cache's error says
    /// more.
    pub(crate) fn reports_first_error(self) -> bool {
        self.runner == Runner::Memfd
    }
}

/// How a runner's attempt failed, as far as the plan cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The memfd could not be made or executed.
    Memfd,
    /// The cache's disk cannot be written (full, read-only).
    CacheDisk,
    /// Anything else: an error to report.
    Other,
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

/// Single-file ELF programs above this size run from the cache under the auto policy: from the
/// page cache a warm start copies nothing and every instance shares one copy in memory, while a
/// memfd start copies the whole program each time (~0.55 ms/MiB) and each instance pins its own
/// copy. Measured here (bench/runner-threshold.sh, docs/BENCHMARKS.md "Runner threshold"), a memfd
/// start is never faster than a warm cache start (1.01x at 17 KiB, 1.39x at 1 MiB, 1.67x at 2), and
/// past 2 MiB it costs ~2x a cache start and more (2.0x at 3 MiB, 3.5x at 8, 10x at 32). Up to 2 MiB
/// the memfd's gain, no disk write, is worth its cost. `runner = "memfd"` still forces a memfd at
/// any size.
macro_rules! memfd_max_mib {
    () => {
        2
    };
}
pub(crate) const MEMFD_MAX_BYTES: u64 = memfd_max_mib!() << 20;

/// The auto policy: what the format allows (`format_choice`), with single-file ELF programs
/// above MEMFD_MAX_BYTES sent to the cache.
fn auto_choice(c: &Component) -> Choice {
    let choice = format_choice(c);
    if choice.runner == Runner::Memfd && c.runner == RunnerSetting::Auto && c.size > MEMFD_MAX_BYTES {
        let why = concat!(
            "single-file ELF over ",
            memfd_max_mib!(),
            " MiB: the cache shares one copy between instances and copies nothing per start"
        );
        return Choice { runner: Runner::Cache, why, firm: false };
    }
    choice
}

/// memfd for single-file ELF programs and scripts on Linux; the cache for directories,
/// PyInstaller builds (their bootloader needs a real path), Go programs that link os.Executable
/// (under a memfd it names `/memfd:NAME`, which does not exist, so re-running or updating
/// themselves fails), anything marked `runner = "cache"`, and every platform without memfd.
/// A memfd that turns out unavailable falls back later (`plan`).
fn format_choice(c: &Component) -> Choice {
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
