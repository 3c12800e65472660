//! stigmer: one executable that carries the whole local platform. Reached through a symlink
//! named after a component it *is* that component; reached as `stigmer` it is the CLI.
//!
//! `main` is the C entry point (`no_main`): std's runtime set-up before a Rust `main` (reading
//! /proc/self/maps for the main thread's stack guard, an alternate signal stack and handlers
//! for stack overflow reports) costs a component start ~0.1 ms, a fifth of what the launcher
//! adds to a plain exec; what of it stigmer needs is `platform::process_start`.
#![cfg_attr(not(test), no_main)]

mod applets;
mod config;
mod deploy;
mod dispatch;
mod embed;
mod env;
mod exit;
mod home;
mod names;
mod platform;
mod run;
mod server;

use crate::exit::ExitCode;

/// The tracing filter (e.g. `debug`); unset or empty, the exec path sets up no logging.
const LOG_VAR: &str = "STIGMER_LOG";

/// The process entry, called by the C runtime: no std runtime set-up (see above). The release
/// profile has `panic = "abort"`, so there a panic ends the process with SIGABRT; in a build that
/// unwinds (the dev profile) it is exit status 101, as under std's own `main`.
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    let code = std::panic::catch_unwind(stigmer).unwrap_or(101);
    // Flushes stdout, as returning from std's `main` does.
    std::process::exit(code)
}

/// What the process does, and its exit status.
#[cfg_attr(test, allow(dead_code))]
fn stigmer() -> i32 {
    platform::process_start();
    route().code()
}

fn route() -> ExitCode {
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    // Dispatch before anything else: the component path stays free of CLI and logging set-up.
    match dispatch::route(&arg0) {
        dispatch::Route::Component(component, arg0) => {
            init_logging(false);
            let error = run::exec(component, arg0, args);
            eprintln!("stigmer: {}: {error}", component.name);
            error.status().into()
        }
        dispatch::Route::Cli => {
            init_logging(true);
            applets::main()
        }
        dispatch::Route::Unknown(name) => {
            eprintln!("stigmer: unknown component '{name}' (known: {})", embed::names());
            exit::Status::NotFound.into()
        }
    }
}

/// Logs go to stderr, filtered by STIGMER_LOG. On the exec path stderr belongs to the
/// component, so nothing is set up unless STIGMER_LOG asks for it.
fn init_logging(always: bool) {
    let filter = env::var(LOG_VAR);
    if filter.is_none() && !always {
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(filter.as_deref().unwrap_or("warn"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(platform::stderr_is_terminal())
        .with_target(false)
        .init();
}
