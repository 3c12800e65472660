//! `stigmer server [--foreground] [stop|status|restart|logs]`: the clap side; the work is in
//! crate::server.

mod logs;

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
    /// Print the services' logs merged by time (both streams and the supervisor's events).
    Logs(logs::LogsArgs),
}

pub(super) fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
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
        Action::Logs(args) => logs::run(&home, args),
    }
}
