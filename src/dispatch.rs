//! Which program this process is: the basename of argv[0] (never the resolved executable:
//! under fexecve that is /dev/fd/N), or STIGMER_FORCE_ARG0 for tests and debugging.
//!
//! The basename only selects the component: the component receives argv[0] exactly as the
//! caller passed it, because real programs re-run themselves through it (a `start` that spawns
//! `<argv[0]> run`); rewritten to a bare name, that lookup goes through PATH and fails.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use crate::embed::{self, Component};

pub(crate) const FORCE_ARG0_VAR: &str = "STIGMER_FORCE_ARG0";
pub(crate) const CLI_NAME: &str = "stigmer";

pub(crate) enum Route {
    /// The component, and the argv[0] it is to receive.
    Component(&'static Component, OsString),
    Cli,
    Unknown(String),
}

pub(crate) fn route(arg0: &OsStr) -> Route {
    let forced = crate::env::var_os(FORCE_ARG0_VAR);
    let name = process_name(forced.as_deref().unwrap_or(arg0));
    if let Some(c) = embed::find(&name) {
        // A forced name stands for the component, not for a path the caller used.
        let arg0 = if forced.is_some() { OsString::from(c.name) } else { arg0.to_owned() };
        return Route::Component(c, arg0);
    }
    if name == CLI_NAME || is_own_file_name(&name) {
        return Route::Cli;
    }
    Route::Unknown(name)
}

fn process_name(arg0: &OsStr) -> String {
    Path::new(arg0).file_name().unwrap_or(arg0).to_string_lossy().into_owned()
}

/// Started under the binary's own file name, whatever it is called (`stigmer-0.1`,
/// `target/debug/stigmer`): the CLI. Only asked when the name is no component.
fn is_own_file_name(name: &str) -> bool {
    std::env::current_exe().is_ok_and(|exe| exe.file_name().is_some_and(|f| f == name))
}
