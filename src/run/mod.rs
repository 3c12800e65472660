//! Starting a component: choose a runner, prepare argv and the environment, exec in place.
//! This is the hot path: no CLI parsing, no logging set-up unless STIGMER_LOG asks for it.

mod cache;
mod memfd;
mod policy;
mod system;

pub(crate) use cache::{CacheError, CacheRoot, EntryState, Listed, Removal, SelfPin, pin_self};
pub(crate) use policy::{
    MEMFD_MAX_BYTES, Overrides, RUNNER_VAR, Runner, RunnerSettingError, SERVICE_RUNNER_VAR, Source, choose,
    config_default, memfd_capable, overrides, overrides_in, parse_setting,
};
pub(crate) use system::SYSTEM_CACHE;

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;

use nix::errno::Errno;

use crate::embed::{Component, Kind};
use crate::exit::Status;
use crate::home::HomeError;
use crate::platform::MemfdError;

/// Counts nested launches (rustup's RUST_RECURSION_COUNT): a component that resolves to itself
/// through PATH would otherwise exec forever.
pub(crate) const RECURSION_VAR: &str = "STIGMER_RECURSION_COUNT";
const RECURSION_LIMIT: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error(
        "recursion limit reached: {name} was started {RECURSION_LIMIT} times in a row by itself \
         ({RECURSION_VAR}); a component that runs '{name}' from PATH reaches stigmer again, so run the real program instead"
    )]
    Recursion { name: &'static str },
    /// A bad setting (STIGMER_RUNNER, STIGMER_RECURSION_COUNT, config.toml), or a config.toml that
    /// cannot be read.
    #[error(transparent)]
    Setting(#[from] RunnerSettingError),
    #[error("{why}: {name} is a directory component and can only run from the cache (change that setting)")]
    DirOnMemfd { why: &'static str, name: &'static str },
    #[error("{why}: {error} (change that setting to let it fall back to the cache)")]
    MemfdForced { why: &'static str, error: MemfdError },
    /// A memfd the policy chose failed; the plan's fallback decides what follows.
    #[error(transparent)]
    Memfd(MemfdError),
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(
        "{name} is a PyInstaller program, which cannot run from a path that is not UTF-8 ({path}); \
         set STIGMER_HOME to a UTF-8 path"
    )]
    NotUtf8 { name: &'static str, path: String },
    #[error(
        "{path} is not writable ({reason}), and {name} runs from an unpacked copy there: set STIGMER_HOME \
         to a writable directory (a volume or a tmpfs)"
    )]
    Unwritable { name: &'static str, path: String, reason: String },
    #[error("cannot execute {path}: {errno}{hint}")]
    Exec { path: String, errno: Errno, hint: &'static str },
}

impl RunError {
    /// What the plan's fallback needs to know of this error.
    fn failure(&self) -> policy::Failure {
        match self {
            RunError::Memfd(_) => policy::Failure::Memfd,
            RunError::Cache(e) if e.is_io() => policy::Failure::CacheDisk,
            RunError::Unwritable { .. } => policy::Failure::CacheDisk,
            _ => policy::Failure::Other,
        }
    }

    pub(crate) fn status(&self) -> Status {
        match self {
            RunError::Setting(RunnerSettingError::Home(_)) => Status::CannotExecute,
            RunError::Setting(_) => Status::Internal,
            RunError::Cache(e) if e.is_internal() => Status::Internal,
            _ => Status::CannotExecute,
        }
    }
}

/// Runs `component` in place of this process with argv `arg0` followed by `args`. Returns only
/// on failure.
pub(crate) fn exec(component: &'static Component, arg0: OsString, args: impl Iterator<Item = OsString>) -> RunError {
    match try_exec(component, arg0, args) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_exec(
    c: &'static Component,
    arg0: OsString,
    args: impl Iterator<Item = OsString>,
) -> Result<Infallible, RunError> {
    let depth = recursion_depth()?;
    if depth >= RECURSION_LIMIT {
        return Err(RunError::Recursion { name: c.name });
    }
    let argv: Vec<CString> = std::iter::once(arg0).chain(args).map(cstring).collect();
    let over = policy::overrides()?;
    let envp: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != RECURSION_VAR && k != policy::SERVICE_RUNNER_VAR)
        .map(|(mut k, v)| {
            k.push("=");
            k.push(v);
            cstring(k)
        })
        .chain(std::iter::once(cstring(format!("{RECURSION_VAR}={}", depth + 1).into())))
        .collect();

    let plan = policy::plan(c, over);
    let first = plan.first;
    // Worded so that the runner=NAME lines of the runners stay the only ones (bench.sh greps them).
    tracing::debug!(
        component = c.name,
        why = first.why,
        fallback = ?plan.fallback,
        "policy chose {}",
        first.runner.name()
    );
    let Err(error) = start(c, first.runner, first.why, first.firm, &argv, &envp);
    let Some(fallback) = plan.fallback.filter(|f| f.takes_over_from(error.failure())) else { return Err(error) };
    tracing::debug!(component = c.name, "{error}; falling back to the {}: {}", fallback.runner.name(), fallback.why);
    let Err(second) = start(c, fallback.runner, fallback.why, false, &argv, &envp);
    Err(if fallback.reports_first_error() { error } else { second })
}

/// One runner's attempt; returns only on failure. FIRM: the user chose it, so a memfd failure
/// is reported as theirs to change.
fn start(
    c: &'static Component,
    runner: Runner,
    why: &'static str,
    firm: bool,
    argv: &[CString],
    envp: &[CString],
) -> Result<Infallible, RunError> {
    match runner {
        Runner::Memfd if matches!(c.kind, Kind::Dir(_)) => Err(RunError::DirOnMemfd { why, name: c.name }),
        Runner::Memfd => memfd::exec(c, argv, envp)
            .map_err(|error| if firm { RunError::MemfdForced { why, error } } else { RunError::Memfd(error) }),
        Runner::Cache => system::start(c, argv, envp, || cache::exec(c, argv, envp)),
    }
}

/// STIGMER_RECURSION_COUNT: how many launches deep this one is. A value that is not a count is
/// refused, never reset to 0 (a reset would let a loop run on forever).
fn recursion_depth() -> Result<u32, RunError> {
    let text = crate::env::text(RECURSION_VAR).map_err(|e| RunnerSettingError::Env(e.0))?;
    let Some(text) = text else { return Ok(0) };
    text.parse().map_err(|_| {
        RunError::Setting(RunnerSettingError::Env(format!(
            "{RECURSION_VAR}={text:?} is not a count of nested launches; unset it (stigmer sets it for the programs it starts)"
        )))
    })
}

/// argv and environment strings come from the kernel, so they hold no NUL.
fn cstring(s: OsString) -> CString {
    CString::new(s.into_vec()).unwrap_or_default()
}
