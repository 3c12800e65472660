//! Which program this process is: the basename of argv[0] (never the resolved executable:
//! under fexecve that is /dev/fd/N), or STIGMER_FORCE_ARG0 for tests and debugging.

use std::ffi::OsStr;
use std::path::Path;

use crate::embed::{self, Component};

pub(crate) const FORCE_ARG0_VAR: &str = "STIGMER_FORCE_ARG0";
pub(crate) const CLI_NAME: &str = "stigmer";

pub(crate) enum Route {
    Component(&'static Component),
    Cli,
    Unknown(String),
}

pub(crate) fn route(arg0: &OsStr) -> Route {
    let forced = std::env::var_os(FORCE_ARG0_VAR).filter(|v| !v.is_empty());
    let name = process_name(forced.as_deref().unwrap_or(arg0));
    if let Some(c) = embed::find(&name) {
        return Route::Component(c);
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
