//! The `stigmer` CLI: the applet table (one clap subcommand per applet, one module each) and
//! the ripgrep-style entry that prints an error once and exits quietly on a closed pipe.

mod cache;
mod components;
mod doctor;
mod exec;
mod generate;
mod install_links;
mod server;
mod verify;

pub(crate) use install_links::ensure_links;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "stigmer",
    about = "The whole local Stigmer platform in one executable.",
    long_about = "The whole local Stigmer platform in one executable.\n\n\
        Run through a symlink named after a component (see `stigmer install-links`), this binary \
        is that component.",
    disable_version_flag = true,
    arg_required_else_help = true
)]
struct Cli {
    /// Print the embedded component names, one per line.
    #[arg(long)]
    list: bool,
    /// Print stigmer's version and each component's version and sha256.
    #[arg(short = 'V', long)]
    version: bool,
    #[command(subcommand)]
    applet: Option<Applet>,
}

#[derive(Subcommand)]
enum Applet {
    /// Run component NAME exactly as its symlink would.
    Exec {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// List the embedded components: kind, sizes, sha256, runner.
    Components {
        #[arg(long)]
        json: bool,
    },
    /// Create a symlink per component pointing at this binary (default: $STIGMER_HOME/bin).
    InstallLinks { dir: Option<PathBuf> },
    /// Hash every embedded payload and every cache entry; exit 1 naming anything damaged.
    Verify,
    /// Run the platform's services under one supervisor (`stigmer server --help`).
    Server(server::ServerArgs),
    /// Check that this machine can run the components, and say how to fix what cannot.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Inspect or clean the component cache.
    Cache {
        #[command(subcommand)]
        action: cache::Action,
    },
    /// Shell completions and the man page, for packaging.
    #[command(hide = true, subcommand)]
    Generate(generate::Target),
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stigmer: {e:#}");
            crate::exit::Status::Failure.into()
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.version {
        return components::version();
    }
    if cli.list {
        return components::list();
    }
    match cli.applet {
        Some(Applet::Exec { name, args }) => Ok(exec::run(&name, args)),
        Some(Applet::Components { json }) => components::table(json),
        Some(Applet::InstallLinks { dir }) => install_links::run(dir),
        Some(Applet::Verify) => verify::run(),
        Some(Applet::Doctor { json }) => doctor::run(json),
        Some(Applet::Cache { action }) => cache::run(action),
        Some(Applet::Server(args)) => server::run(args),
        Some(Applet::Generate(target)) => generate::run(target),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .is_some_and(|json| json.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}
