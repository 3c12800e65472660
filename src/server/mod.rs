//! `stigmer server`: start the embedded services under one supervisor, and the commands that
//! talk to it (`stop`, `status`, `restart`, `logs`). Everything a start could trip over (a bad
//! config, a busy port, an unreachable external service, a running supervisor) is checked before
//! anything starts.

pub(crate) mod logs;
mod ready;
mod spec;
mod state;
mod supervisor;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::home::Home;
use spec::Plan;
use state::{Phase, RunDir, State};

/// `stigmer server status` when no supervisor runs, as `systemctl status` does.
const NOT_RUNNING: u8 = 3;

fn preflight(home: &Home, run: &RunDir) -> anyhow::Result<Plan> {
    let plan = spec::load(home)?;
    if run.supervisor_alive()? {
        let pid = run.read().map(|s| s.supervisor_pid.to_string()).unwrap_or_else(|| "?".into());
        bail!(
            "stigmer server is already running for {} (supervisor pid {pid}); see `stigmer server status`, or `stigmer server stop` first",
            home.root().display()
        );
    }
    for s in &plan.services {
        if let Some(addr) = s.external.as_ref().filter(|a| !ready::reachable(a)) {
            bail!(
                "{} is declared external at {addr}, but nothing answers there; start it, or fix {}",
                s.name,
                spec::config_path(home).display()
            );
        }
    }
    if let Some((name, port)) = busy_ports(&plan).into_iter().next() {
        bail!(
            "port {port} for {name} is already in use; stop what holds it (`ss -ltnp 'sport = {port}'`) or choose another port with {} or [services.{name}] port = ... in {}",
            spec::port_var(&name),
            spec::config_path(home).display()
        );
    }
    crate::applets::ensure_links(&home.bin())?;
    Ok(plan)
}

/// Local services whose port something else already holds.
fn busy_ports(plan: &Plan) -> Vec<(String, u16)> {
    plan.services
        .iter()
        .filter(|s| s.external.is_none())
        .filter_map(|s| s.port.map(|p| (s.name.clone(), p)))
        .filter(|(_, port)| TcpListener::bind(("127.0.0.1", *port)).is_err())
        .collect()
}

pub(crate) struct PortReport {
    pub(crate) busy: Vec<String>,
    pub(crate) summary: String,
}

/// For `stigmer doctor`: are the services' ports free (or held by our own running server)?
pub(crate) fn port_report(home: &Home) -> anyhow::Result<PortReport> {
    let plan = spec::load(home)?;
    let ports: Vec<String> = plan
        .services
        .iter()
        .filter(|s| s.external.is_none())
        .filter_map(|s| s.port.map(|p| format!("{} {p}", s.name)))
        .collect();
    let run = RunDir::new(home)?;
    if run.supervisor_alive()? {
        return Ok(PortReport {
            busy: Vec::new(),
            summary: format!("held by the running stigmer server: {}", ports.join(", ")),
        });
    }
    let busy = busy_ports(&plan).into_iter().map(|(name, port)| format!("{port} ({name})")).collect();
    Ok(PortReport {
        busy,
        summary: format!("free: {}", if ports.is_empty() { "no ports declared".into() } else { ports.join(", ") }),
    })
}

/// `stigmer server --foreground`: this process is the supervisor, logs prefixed on stdout.
pub(crate) fn foreground(home: &Home) -> anyhow::Result<ExitCode> {
    let run = RunDir::new(home)?;
    let plan = preflight(home, &run)?;
    let Some(_lock) = run.try_lock()? else { bail!("another supervisor started meanwhile") };
    supervisor::run(home, plan, run, true)
}

/// The hidden `stigmer server --supervise` that `start` detaches.
pub(crate) fn supervise(home: &Home) -> anyhow::Result<ExitCode> {
    let run = RunDir::new(home)?;
    let Some(_lock) = run.try_lock()? else { bail!("another supervisor is already running") };
    let plan = spec::load(home)?;
    supervisor::run(home, plan, run, false)
}

/// `stigmer server`: detach a supervisor and report each service as it becomes ready.
pub(crate) fn start(home: &Home) -> anyhow::Result<ExitCode> {
    let run = RunDir::new(home)?;
    let plan = preflight(home, &run)?;
    let logs_dir = home.logs();
    std::fs::create_dir_all(&logs_dir)?;
    let log_path = logs_dir.join("supervisor.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot tell where this stigmer binary is")?;
    let mut cmd = Command::new(exe);
    cmd.args(["server", "--supervise"])
        .env(crate::home::HOME_VAR, home.root())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the supervisor from our terminal.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    let mut child = cmd.spawn().context("starting the supervisor")?;
    let pid = child.id();

    let mut out = io::stdout().lock();
    let mut reported = 0;
    let budget: Duration = plan.services.iter().map(|s| s.ready_timeout).sum::<Duration>() + Duration::from_secs(10);
    let deadline = Instant::now() + budget;
    loop {
        let state = run.read().filter(|s| s.supervisor_pid == pid);
        if let Some(state) = &state {
            while reported < state.services.len() {
                let s = &state.services[reported];
                match s.state {
                    _ if s.ready_at.is_some() => writeln!(out, "Starting {}... ✓", s.name)?,
                    Phase::External => writeln!(out, "Using {} at {}... ✓", s.name, s.addr.as_deref().unwrap_or("?"))?,
                    _ if state.exited && state.error.is_some() => {
                        // The first service not ready is the one that failed; the rest never started.
                        writeln!(out, "Starting {}... ✗", s.name)?;
                        reported = state.services.len();
                        break;
                    }
                    _ => break,
                }
                reported += 1;
            }
            if let Some(error) = &state.error {
                if state.exited {
                    let _ = child.wait();
                    bail!("{error}");
                }
            } else if state.ready {
                writeln!(
                    out,
                    "All services running (stigmer server status; stigmer server logs -f; stigmer server stop)"
                )?;
                return Ok(ExitCode::SUCCESS);
            }
        }
        if let Some(status) = child.try_wait()? {
            let why = state.and_then(|s| s.error).unwrap_or_else(|| format!("the supervisor exited ({status})"));
            bail!("{why}; see {}", log_path.display());
        }
        if Instant::now() > deadline {
            bail!(
                "services were not ready within {budget:.0?}; see `stigmer server status` and {}",
                logs_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `stigmer server stop`: SIGTERM the supervisor, which stops the services in reverse order;
/// returns when it is gone (SIGKILL after the services' stop timeouts; its children die with it).
pub(crate) fn stop(home: &Home) -> anyhow::Result<ExitCode> {
    let run = RunDir::new(home)?;
    let Some(state) = run.read().filter(|_| run.supervisor_alive().unwrap_or(false)) else {
        println!("stigmer server is not running");
        return Ok(ExitCode::SUCCESS);
    };
    let pid = nix::unistd::Pid::from_raw(state.supervisor_pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("signalling the supervisor")?;
    let budget =
        spec::load(home).map(|p| p.services.iter().map(|s| s.stop_timeout).sum()).unwrap_or(Duration::from_secs(30))
            + Duration::from_secs(5);
    let deadline = Instant::now() + budget;
    while run.supervisor_alive()? {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(200));
            eprintln!("stigmer: the supervisor did not stop within {budget:.0?}; killed it");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("stigmer server stopped");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn restart(home: &Home) -> anyhow::Result<ExitCode> {
    stop(home)?;
    start(home)
}

/// `stigmer server status [--json]`: exit 0 when running, 3 when not.
pub(crate) fn status(home: &Home, json: bool) -> anyhow::Result<ExitCode> {
    let run = RunDir::new(home)?;
    let alive = run.supervisor_alive()?;
    let state = run.read().filter(|_| alive);
    let mut out = io::stdout().lock();
    if json {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            running: bool,
            #[serde(flatten)]
            state: Option<&'a State>,
        }
        serde_json::to_writer_pretty(&mut out, &Report { running: state.is_some(), state: state.as_ref() })?;
        writeln!(out)?;
    } else if let Some(state) = &state {
        writeln!(out, "supervisor pid {} up {}", state.supervisor_pid, ago(state.started))?;
        writeln!(
            out,
            "{:18} {:9} {:>8} {:>8} {:>8} {:>6}  LAST EXIT",
            "SERVICE", "STATE", "PID", "UPTIME", "RESTARTS", "PORT"
        )?;
        for s in &state.services {
            let phase = serde_json::to_value(s.state)?.as_str().unwrap_or("?").to_owned();
            writeln!(
                out,
                "{:18} {:9} {:>8} {:>8} {:>8} {:>6}  {}",
                s.name,
                phase,
                s.pid.map_or("-".into(), |p| p.to_string()),
                s.since.filter(|_| s.pid.is_some()).map_or("-".into(), ago),
                s.restarts,
                s.port.map_or("-".into(), |p| p.to_string()),
                s.message.as_deref().or(s.last_exit.as_deref()).unwrap_or("-")
            )?;
        }
    } else {
        writeln!(out, "stigmer server is not running")?;
    }
    Ok(if state.is_some() { ExitCode::SUCCESS } else { ExitCode::from(NOT_RUNNING) })
}

fn ago(since: u64) -> String {
    let secs = state::now().saturating_sub(since);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
    }
}
