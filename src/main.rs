//! stigmer: one executable that carries the whole local platform. Reached through a symlink
//! named after a component it *is* that component; reached as `stigmer` it is the CLI.

mod applets;
mod dispatch;
mod embed;
mod env;
mod exit;
mod home;
mod names;
mod platform;
mod run;
mod server;

use std::process::ExitCode;

/// The tracing filter (e.g. `debug`); unset or empty, the exec path sets up no logging.
const LOG_VAR: &str = "STIGMER_LOG";

fn main() -> ExitCode {
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
