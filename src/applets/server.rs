//! `stigmer server [--foreground] [start|stop|restart [NAME]|status|logs]`: the clap side and all
//! the printing; the work (planning, supervising, the control protocol) is in crate::server,
//! which returns data and progress events.

use crate::exit::ExitCode;
use std::io::{self, Write};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::exit::Status;
use crate::home::Home;
use crate::server::{self, Phase, Progress, Request, StatusReport, Stopped};

mod logs;

/// `stigmer server status` when no supervisor runs, as `systemctl status` does.
const NOT_RUNNING: u8 = 3;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct ServerArgs {
    /// Stay attached: run the supervisor here, printing the merged service logs; Ctrl-C stops it.
    #[arg(long)]
    foreground: bool,
    /// Internal: be the detached supervisor.
    #[arg(long, hide = true)]
    supervise: bool,
    /// Internal: be the detached supervisor's keeper.
    #[arg(long, hide = true)]
    keep: bool,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Subcommand)]
enum Action {
    /// Start the services (the default), or start one stopped service of the running server.
    Start { name: Option<String> },
    /// Stop every service and the supervisor (returns when all are gone), or one service.
    Stop { name: Option<String> },
    /// Per service: state, pid, uptime, restarts, port, health, last exit. Exit 3 when not running.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration, then stop and start everything; or restart one service.
    Restart { name: Option<String> },
    /// Print the services' logs merged by time (both streams and the supervisor's events).
    Logs(logs::LogsArgs),
}

pub(super) fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let home = Home::trusted()?;
    if args.keep {
        let code = server::keep(&home)?;
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(Status::Failure as u8)));
    }
    if args.supervise {
        return Ok(exit(server::supervise(&home)?));
    }
    if args.foreground {
        let prepared = server::preflight(&home)?;
        super::ensure_links(&home.bin())?;
        return Ok(exit(server::foreground(&home, prepared)?));
    }
    match args.action.unwrap_or(Action::Start { name: None }) {
        Action::Start { name: None } => start(&home),
        Action::Stop { name: None } => stop(&home),
        Action::Restart { name: None } => restart(&home),
        Action::Start { name: Some(name) } => one(&home, Request::Start { name }, "started"),
        Action::Stop { name: Some(name) } => one(&home, Request::StopService { name }, "stopped"),
        Action::Restart { name: Some(name) } => one(&home, Request::Restart { name }, "restarted"),
        Action::Status { json } => status(&home, json),
        Action::Logs(args) => logs::run(&home, args),
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok { ExitCode::SUCCESS } else { Status::Failure.into() }
}

/// `stigmer server`: detach a supervisor and report each service as it becomes ready, in the
/// configuration's order (services start in parallel; the report waits for the earlier ones).
fn start(home: &Home) -> anyhow::Result<ExitCode> {
    let prepared = server::preflight(home)?;
    super::ensure_links(&home.bin())?;
    let names = server::plan_names(&prepared.plan);
    let starting = server::spawn_supervisor(home, prepared)?;
    let log = starting.log.clone();
    // Per service: Some(true) ready, Some(false) failed.
    let mut done: Vec<Option<bool>> = vec![None; names.len()];
    let mut printed = 0;
    let mut out = io::stdout().lock();
    let line = |out: &mut io::StdoutLock, i: usize, ok: bool| -> io::Result<()> {
        let mark = if ok { "✓" } else { "✗" };
        match &names[i].1 {
            Some(addr) => writeln!(out, "Using {} at {addr}... {mark}", names[i].0),
            None => writeln!(out, "Starting {}... {mark}", names[i].0),
        }
    };
    let index = |name: &str| names.iter().position(|(n, _)| n == name);
    for event in starting {
        match event {
            Progress::Ready { name, .. } | Progress::External { name, .. } => {
                if let Some(i) = index(&name) {
                    done[i] = Some(true);
                }
            }
            Progress::Failed { name, .. } => {
                if let Some(i) = index(&name) {
                    done[i] = Some(false);
                }
            }
            Progress::AllReady => {
                for i in printed..names.len() {
                    line(&mut out, i, true)?;
                }
                writeln!(
                    out,
                    "All services running (stigmer server status; stigmer server logs -f; stigmer server stop)"
                )?;
                return Ok(ExitCode::SUCCESS);
            }
            Progress::StartFailed { error } => {
                for (i, state) in done.iter().enumerate().skip(printed) {
                    if let Some(ok) = state {
                        line(&mut out, i, *ok)?;
                    }
                }
                out.flush()?;
                bail!("{error}");
            }
        }
        while printed < names.len()
            && let Some(ok) = done[printed]
        {
            line(&mut out, printed, ok)?;
            printed += 1;
        }
    }
    // A concurrent start may have won the lock: then that one runs.
    if let Some(report) = server::status(home)? {
        bail!(
            "stigmer server is already running for {} (supervisor pid {}): another start won",
            home.root().display(),
            report.supervisor_pid
        );
    }
    bail!("the supervisor exited before the services were ready; see {}", log.display())
}

fn stop(home: &Home) -> anyhow::Result<ExitCode> {
    match server::stop(home)? {
        Stopped::NotRunning => println!("stigmer server is not running"),
        Stopped::Stopped => println!("stigmer server stopped"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the new configuration against the running platform first: a broken config.toml
/// leaves the platform running.
fn restart(home: &Home) -> anyhow::Result<ExitCode> {
    if let Some(running) = server::status(home)? {
        server::check_restart(home, &running)
            .context("not restarting: the running platform keeps running with its old configuration")?;
    }
    stop(home)?;
    start(home)
}

fn one(home: &Home, request: Request, did: &str) -> anyhow::Result<ExitCode> {
    let name = match &request {
        Request::Start { name } | Request::StopService { name } | Request::Restart { name } => name.clone(),
        _ => unreachable!("only service requests come here"),
    };
    let Some(reply) = server::ask(home, &request, None)? else {
        eprintln!("stigmer: stigmer server is not running; start it with `stigmer server`");
        return Ok(ExitCode::from(NOT_RUNNING));
    };
    if !reply.ok {
        bail!("{}", reply.error.unwrap_or_default());
    }
    println!("{name} {did}");
    Ok(ExitCode::SUCCESS)
}

/// `stigmer server status [--json]`: exit 0 when running, 3 when not.
fn status(home: &Home, json: bool) -> anyhow::Result<ExitCode> {
    let report = server::status(home)?;
    let mut out = io::stdout().lock();
    if json {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            running: bool,
            /// Whether the running supervisor is this very stigmer build.
            #[serde(skip_serializing_if = "Option::is_none")]
            same_build: Option<bool>,
            #[serde(flatten)]
            report: Option<&'a StatusReport>,
        }
        let same_build = report.as_ref().map(|r| r.build == crate::embed::build_id());
        serde_json::to_writer_pretty(
            &mut out,
            &Report { running: report.is_some(), same_build, report: report.as_ref() },
        )?;
        writeln!(out)?;
    } else if let Some(r) = &report {
        writeln!(
            out,
            "supervisor pid {} up {} (stigmer {}, containment: {})",
            r.supervisor_pid,
            ago(r.started),
            r.version,
            r.containment.kind
        )?;
        if r.build != crate::embed::build_id() {
            writeln!(
                out,
                "note: the running server is another stigmer build (stigmer {}, build {}) than this one (stigmer {}, \
                 build {}); `stigmer server restart` moves it to this one",
                r.version,
                r.build,
                env!("CARGO_PKG_VERSION"),
                crate::embed::build_id()
            )?;
        }
        writeln!(
            out,
            "{:18} {:9} {:>8} {:>8} {:>8} {:>6} {:9}  LAST EXIT",
            "SERVICE", "STATE", "PID", "UPTIME", "RESTARTS", "PORT", "HEALTH"
        )?;
        for s in &r.services {
            let phase = serde_json::to_value(s.state)?.as_str().unwrap_or("?").to_owned();
            let note = [s.message.as_deref(), s.health_error.as_deref(), s.status.as_deref(), s.last_exit.as_deref()]
                .into_iter()
                .flatten()
                .next()
                .unwrap_or("-");
            writeln!(
                out,
                "{:18} {:9} {:>8} {:>8} {:>8} {:>6} {:9}  {}",
                s.name,
                phase,
                s.pid.map_or("-".into(), |p| p.to_string()),
                s.since.filter(|_| s.pid.is_some()).map_or("-".into(), ago),
                s.restarts,
                s.port.map_or("-".into(), |p| p.to_string()),
                s.health.as_deref().unwrap_or("-"),
                note
            )?;
        }
        if r.services.iter().any(|s| s.state == Phase::Failed) {
            writeln!(out, "(failed services: `stigmer server logs -c NAME`; `stigmer server start NAME` to retry)")?;
        }
    } else {
        writeln!(out, "stigmer server is not running")?;
    }
    Ok(if report.is_some() { ExitCode::SUCCESS } else { ExitCode::from(NOT_RUNNING) })
}

fn ago(since: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let secs = now.saturating_sub(since);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
    }
}
