//! `stigmer exec NAME [--] ARGS...`: the same as running NAME through its symlink, with argv[0] = NAME,
//! home trust checks included (the cache runner makes them; a memfd start touches nothing in the home).

use crate::exit::ExitCode;
use std::ffi::OsString;

use crate::embed;
use crate::exit::Status;

pub(super) fn run(name: &str, args: Vec<OsString>) -> ExitCode {
    let Some(component) = embed::find(name) else {
        eprintln!("stigmer: unknown component '{name}' (known: {})", embed::names());
        return Status::NotFound.into();
    };
    let error = crate::run::exec(component, OsString::from(component.name), args.into_iter());
    eprintln!("stigmer: {name}: {error}");
    error.status().into()
}
