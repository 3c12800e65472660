//! `stigmer server`, the engine: plan the services (spec), run them (supervisor), and the calls
//! the other commands make to a running supervisor over its control socket (control). Everything
//! a start could trip over (a bad config, a busy port, an unreachable external service, a running
//! supervisor) is checked before anything starts. This module returns data and progress events;
//! the `server` applet prints them.

mod control;
pub(crate) mod logs;
mod notify;
pub(crate) mod probe;
pub(crate) mod spec;
mod state;
mod supervisor;

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::home::Home;
pub(crate) use control::{Reply, Request};
pub(crate) use spec::Plan;
use state::RunDir;
pub(crate) use state::{Phase, StatusReport};
pub(crate) use supervisor::Progress;

/// How long a command waits for a supervisor that holds the lock but does not answer yet (it
/// binds its socket right after taking the lock).
const ANSWER_WAIT: Duration = Duration::from_secs(3);

/// `logs/supervisor.log`: the supervisor's own log.
fn supervisor_log(home: &Home) -> PathBuf {
    logs::log_path(&home.logs(), spec::RESERVED)
}

/// Names of the planned services, in order, and whether each is external (its address).
pub(crate) fn plan_names(plan: &Plan) -> Vec<(String, Option<String>)> {
    plan.services.iter().map(|s| (s.name.clone(), s.external.clone())).collect()
}

/// Asks the running supervisor; Ok(None) when none runs. A supervisor that holds the lock but
/// has not bound its socket yet is waited for, never taken for dead.
pub(crate) fn ask(home: &Home, request: &Request, timeout: Option<Duration>) -> anyhow::Result<Option<Reply>> {
    let run = RunDir::new(home)?;
    let deadline = Instant::now() + ANSWER_WAIT;
    loop {
        if let Some(reply) = control::call(&run, request, timeout)? {
            return Ok(Some(reply));
        }
        if !run.lock_held()? {
            return Ok(None);
        }
        if Instant::now() > deadline {
            bail!(
                "a supervisor holds {} but does not answer on {}; see {}",
                run.lock_path().display(),
                run.control_path().display(),
                supervisor_log(home).display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The running supervisor's report, or None.
pub(crate) fn status(home: &Home) -> anyhow::Result<Option<StatusReport>> {
    Ok(ask(home, &Request::Status, Some(Duration::from_secs(10)))?.and_then(|r| r.status.map(|s| *s)))
}

fn already_running(home: &Home, report: &StatusReport) -> anyhow::Error {
    anyhow::anyhow!(
        "stigmer server is already running for {} (supervisor pid {}); see `stigmer server status`, or `stigmer server stop` first",
        home.root().display(),
        report.supervisor_pid
    )
}

/// Checks everything a start needs; the plan to start.
pub(crate) fn preflight(home: &Home) -> anyhow::Result<Plan> {
    let plan = spec::load(home)?;
    if let Some(report) = status(home)? {
        return Err(already_running(home, &report));
    }
    check_environment(home, &plan, &[])?;
    Ok(plan)
}

/// External services answer; local ports are free (or in OURS, held by the running platform).
fn check_environment(home: &Home, plan: &Plan, ours: &[u16]) -> anyhow::Result<()> {
    for s in &plan.services {
        if let Some(addr) = s.external.as_ref().filter(|a| !probe::reachable(a)) {
            bail!(
                "{} is declared external at {addr}, but nothing answers there; start it, or fix {}",
                s.name,
                spec::config_path(home).display()
            );
        }
    }
    if let Some((name, port)) = busy_ports(plan).into_iter().find(|(_, p)| !ours.contains(p)) {
        bail!(
            "port {port} for {name} is already in use; stop what holds it (`ss -ltnp 'sport = {port}'`) or choose another port with {} or [services.{name}] port = ... in {}",
            spec::port_var(&name),
            spec::config_path(home).display()
        );
    }
    Ok(())
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

/// `restart`: the new configuration must plan and its ports must be free but for those the
/// running platform holds, before anything is stopped.
pub(crate) fn check_restart(home: &Home, running: &StatusReport) -> anyhow::Result<Plan> {
    let plan = spec::load(home)?;
    let ours: Vec<u16> = running.services.iter().filter(|s| s.pid.is_some()).filter_map(|s| s.port).collect();
    check_environment(home, &plan, &ours)?;
    Ok(plan)
}

pub(crate) enum Stopped {
    NotRunning,
    Stopped,
}

/// Asks the supervisor to stop everything; returns once it has exited (its lock is free).
pub(crate) fn stop(home: &Home) -> anyhow::Result<Stopped> {
    let Some(reply) = ask(home, &Request::Stop, None)? else { return Ok(Stopped::NotRunning) };
    if !reply.ok {
        bail!("{}", reply.error.unwrap_or_default());
    }
    let run = RunDir::new(home)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while run.lock_held()? {
        if Instant::now() > deadline {
            bail!("the services stopped but the supervisor has not exited; see {}", supervisor_log(home).display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Stopped::Stopped)
}

/// A supervisor being started in the background: its progress events, in order.
pub(crate) struct Starting {
    events: BufReader<File>,
    pub(crate) log: PathBuf,
}

impl Iterator for Starting {
    type Item = Progress;
    /// None once the supervisor has closed the pipe (all ready, failed, or died).
    fn next(&mut self) -> Option<Progress> {
        let mut line = String::new();
        loop {
            line.clear();
            match self.events.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {
                    if let Ok(event) = serde_json::from_str(&line) {
                        return Some(event);
                    }
                }
            }
        }
    }
}

/// Detaches a supervisor (`stigmer server --supervise`) in a session of its own (and a PID
/// namespace of its own where the kernel allows); its progress comes back over a pipe.
pub(crate) fn spawn_supervisor(home: &Home) -> anyhow::Result<Starting> {
    let logs_dir = home.logs();
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&logs_dir)
        .with_context(|| format!("creating {}", logs_dir.display()))?;
    // Where the supervisor's words go until it captures its own stderr (ServiceLog), and its
    // stdout for good.
    let log_path = supervisor_log(home);
    let log = logs::open_append(&log_path).with_context(|| format!("opening {}", log_path.display()))?;
    let (read, write) = nix::unistd::pipe().context("creating a pipe")?;
    nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    let exe = std::env::current_exe().context("cannot tell where this stigmer binary is")?;
    let mut cmd = Command::new(exe);
    cmd.args(["server", "--supervise"])
        .env(crate::home::HOME_VAR, home.root())
        .env(supervisor::START_FD_VAR, write.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let prep = crate::platform::prepare_pid_namespace();
    // SAFETY: enter() and setsid only make async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            prep.enter()?;
            nix::unistd::setsid().map(drop).map_err(io::Error::from)
        });
    }
    // Where a PID namespace was made, the process spawned leaves at once and the supervisor is
    // its child; otherwise it is the supervisor. Either way the pipe says how the start goes.
    let child = cmd.spawn().context("starting the supervisor")?;
    drop(write);
    drop(child);
    Ok(Starting { events: BufReader::new(File::from(read)), log: log_path })
}

/// The hidden `stigmer server --supervise` that `spawn_supervisor` detaches. Ok(false): the
/// start failed (already said on the progress pipe).
pub(crate) fn supervise(home: &Home) -> anyhow::Result<bool> {
    let progress = crate::env::var(supervisor::START_FD_VAR).and_then(|v| v.parse::<i32>().ok()).map(|fd| {
        // SAFETY: `stigmer server` passed this fd, the pipe's write end, for us to own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
        File::from(fd)
    });
    let run = RunDir::new(home)?;
    let Some(_lock) = run.lock_for_supervisor()? else { bail!("another supervisor is already running") };
    let plan = spec::load(home)?;
    let _pin = pin_links(home)?;
    supervisor::run(home, plan, run, supervisor::Options { progress, foreground: false })
}

/// `stigmer server --foreground`: this process is the supervisor, service output on stdout.
pub(crate) fn foreground(home: &Home, plan: Plan) -> anyhow::Result<bool> {
    let run = RunDir::new(home)?;
    let Some(_lock) = run.lock_for_supervisor()? else {
        bail!("stigmer server is already running (another supervisor started meanwhile)")
    };
    let _pin = pin_links(home)?;
    supervisor::run(home, plan, run, supervisor::Options { progress: None, foreground: true })
}

/// Pins a copy of this binary in the cache for the supervisor's life and points the component
/// links at it: the services keep reaching exactly this build when the installed stigmer is
/// upgraded or deleted, and `cache prune` keeps the copy while the pin is held.
fn pin_links(home: &Home) -> anyhow::Result<crate::run::SelfPin> {
    let pin = crate::run::pin_self(home)?;
    crate::home::links::ensure(&home.bin(), pin.exe())?;
    Ok(pin)
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
    if status(home)?.is_some() {
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

/// For `stigmer doctor`: the containment of the running supervisor, or the one a start would
/// get; true when nothing can escape it.
pub(crate) fn containment_report(home: &Home) -> anyhow::Result<(bool, String)> {
    if let Some(report) = status(home)? {
        let c = report.containment;
        return Ok(match c.escapes {
            None => (true, format!("{} (running supervisor): no process of a service outlives it", c.kind)),
            Some(escapes) => (false, format!("{} (running supervisor): {escapes}", c.kind)),
        });
    }
    Ok(match crate::platform::pid_namespace_probe() {
        Some(kind) => (true, format!("{kind}: no process of a service outlives the supervisor, SIGKILL included")),
        None => (
            false,
            "process-groups: no PID namespace available here; a service's descendant that leaves its \
             process group survives a SIGKILL of the supervisor"
                .into(),
        ),
    })
}
