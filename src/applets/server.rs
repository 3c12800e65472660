//! `stigmer server [--foreground] [stop|status|restart|logs]`: the clap side; the work is in
//! crate::server.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::home::Home;
use crate::server;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct ServerArgs {
    /// Stay attached: run the supervisor here with name-prefixed service logs; Ctrl-C stops it.
    #[arg(long)]
    foreground: bool,
    /// Internal: be the detached supervisor.
    #[arg(long, hide = true)]
    supervise: bool,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Subcommand)]
enum Action {
    /// Start the services (the default).
    Start,
    /// Stop every service and the supervisor; returns when all are gone.
    Stop,
    /// Per service: state, pid, uptime, restarts, port, last exit. Exit 3 when not running.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop, then start.
    Restart,
    /// Print service logs.
    Logs {
        /// Keep printing as the logs grow.
        #[arg(short, long)]
        follow: bool,
        /// Lines from the end of each log.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Only this service.
        #[arg(short = 'c', long = "component", value_name = "NAME")]
        service: Option<String>,
        /// The services' stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
    },
}

pub(super) fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let home = Home::trusted()?;
    if args.supervise {
        return server::supervise(&home);
    }
    if args.foreground {
        return server::foreground(&home);
    }
    match args.action.unwrap_or(Action::Start) {
        Action::Start => server::start(&home),
        Action::Stop => server::stop(&home),
        Action::Status { json } => server::status(&home, json),
        Action::Restart => server::restart(&home),
        Action::Logs { follow, lines, service, stderr } => server::logs(&home, follow, lines, service, stderr),
    }
}
