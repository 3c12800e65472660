//! The `stigmer` CLI: the applet table (one clap subcommand per applet, one module each),
//! `stigmer NAME ARGS...` for an embedded component (busybox style; an applet name always wins),
//! and the ripgrep-style entry that prints an error once and exits quietly on a closed pipe.

mod cache;
mod components;
mod deploy;
mod doctor;
mod exec;
mod generate;
mod install_links;
mod server;
mod verify;

pub(crate) use install_links::ensure_links;

use crate::exit::ExitCode;
use std::ffi::OsString;
use std::path::PathBuf;

use crate::embed;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "stigmer",
    about = "The whole local Stigmer platform in one executable.",
    long_about = "The whole local Stigmer platform in one executable.\n\n\
        Run through a symlink named after a component (see `stigmer install-links`), this binary \
        is that component.",
    disable_version_flag = true,
    arg_required_else_help = true,
    allow_external_subcommands = true
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
    /// Render the services for a container engine: Kubernetes manifests or a Compose file.
    Deploy(deploy::DeployArgs),
    /// Write this binary as an OCI image (layout directory and loadable archive), no daemon needed.
    Image(deploy::ImageArgs),
    /// Exit 0 when a port answers (the check Compose healthchecks run inside the image). Not
    /// `probe`: an applet name shadows a component of that name.
    #[command(hide = true, subcommand)]
    Healthcheck(deploy::ProbeArgs),
    /// Shell completions and the man page, for packaging.
    #[command(hide = true, subcommand)]
    Generate(generate::Target),
    /// `stigmer NAME ARGS...`: clap hands over any name that is not an applet (so an applet
    /// always wins); it runs only if it names a component.
    #[command(external_subcommand)]
    Component(Vec<OsString>),
}

pub(crate) fn main() -> ExitCode {
    let cli = parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stigmer: {e:#}");
            crate::exit::Status::Failure.into()
        }
    }
}

/// Parses argv with the components listed after the applets in `--help`, and refuses, in
/// clap's own words and exit status, a subcommand that is neither an applet nor a component.
fn parse() -> Cli {
    let mut command = Cli::command();
    if !embed::components().is_empty() {
        let names: Vec<&str> = embed::components().iter().map(|c| c.name).collect();
        command = command.after_help(format!(
            "Components (`stigmer NAME ARGS...` is `stigmer exec NAME ARGS...`):\n  {}",
            names.join("\n  ")
        ));
    }
    let cli = Cli::from_arg_matches(&command.clone().get_matches()).unwrap_or_else(|e| e.exit());
    if let Some(Applet::Component(argv)) = &cli.applet {
        let name = argv.first().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if embed::find(&name).is_none() {
            let applets: Vec<&str> =
                command.get_subcommands().filter(|c| !c.is_hide_set()).map(|c| c.get_name()).collect();
            command
                .error(
                    clap::error::ErrorKind::InvalidSubcommand,
                    format!(
                        "unrecognized subcommand '{name}' (applets: {}; components: {})",
                        applets.join(", "),
                        embed::names()
                    ),
                )
                .exit();
        }
    }
    cli
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
        Some(Applet::Deploy(args)) => deploy::run(args),
        Some(Applet::Healthcheck(args)) => deploy::probe(args),
        Some(Applet::Image(args)) => deploy::image(args),
        Some(Applet::Component(argv)) => {
            let mut argv = argv.into_iter();
            let name = argv.next().unwrap_or_default();
            Ok(exec::run(&name.to_string_lossy(), argv.collect()))
        }
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
