//! `stigmer server`, the engine: plan the services (spec), run them (supervisor), and the calls
//! the other commands make to a running supervisor over its control socket (control). Everything
//! a start could trip over (a bad config, a busy port, an unreachable external service, a running
//! supervisor) is checked before anything starts. This module returns data and progress events;
//! the `server` applet prints them.

mod control;
mod keeper;
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
pub(crate) use spec::{Plan, known_services};
use state::{HomeLock, RunDir};
pub(crate) use state::{Phase, StatusReport};
pub(crate) use supervisor::Progress;

/// How long a command waits for a server that holds the home's lock but does not answer yet: a
/// start binds the control socket within moments of taking the lock, and a supervisor whose
/// socket was deleted binds it again within `supervisor::SOCKET_CHECK`.
const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// How long `status` (and whatever asks it first) waits for the answer itself.
const STATUS_WAIT: Duration = Duration::from_secs(5);

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
pub(crate) fn ask(home: &Home, request: &Request, within: Option<Duration>) -> anyhow::Result<Option<Reply>> {
    let deadline = Instant::now() + ANSWER_WAIT;
    let log = supervisor_log(home);
    loop {
        let run = RunDir::new(home)?;
        if let Some(reply) = control::call(&run, request, within, &log)? {
            return Ok(Some(reply));
        }
        if !HomeLock::held(home)? {
            return Ok(None);
        }
        if Instant::now() > deadline {
            bail!(
                "a stigmer server holds {} (its lock) but does not answer on {}; see {} (if its supervisor was stopped with SIGSTOP, resume it with `kill -CONT`)",
                home.root().display(),
                run.control_path().display(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The running supervisor's report, or None.
pub(crate) fn status(home: &Home) -> anyhow::Result<Option<StatusReport>> {
    Ok(ask(home, &Request::Status, Some(STATUS_WAIT))?.and_then(|r| r.status.map(|s| *s)))
}

fn already_running(home: &Home, report: &StatusReport) -> anyhow::Error {
    anyhow::anyhow!(
        "stigmer server is already running for {} (supervisor pid {}); see `stigmer server status`, or `stigmer server stop` first",
        home.root().display(),
        report.supervisor_pid
    )
}

/// A start that has checked everything and holds the home's lock: from here on any other
/// command finds this server, starting or running.
pub(crate) struct Prepared {
    pub(crate) plan: Plan,
    lock: HomeLock,
}

/// Checks everything a start needs and takes the home's lock.
pub(crate) fn preflight(home: &Home) -> anyhow::Result<Prepared> {
    let plan = spec::load(home)?;
    if let Some(report) = status(home)? {
        return Err(already_running(home, &report));
    }
    let Some(lock) = HomeLock::take(home).with_context(|| format!("locking {}", home.root().display()))? else {
        if let Some(report) = status(home)? {
            return Err(already_running(home, &report));
        }
        bail!("another `stigmer server` is starting for {}; see `stigmer server status`", home.root().display());
    };
    check_environment(home, &plan, &[])?;
    Ok(Prepared { plan, lock })
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while HomeLock::held(home)? {
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

/// Detaches a server: its keeper (`stigmer server --keep`, in a session of its own), which
/// starts the supervisor (`stigmer server --supervise`) as its child. Both inherit the home's
/// lock; the supervisor's progress comes back over a pipe.
pub(crate) fn spawn_supervisor(home: &Home, prepared: Prepared) -> anyhow::Result<Starting> {
    let logs_dir = home.logs();
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&logs_dir)
        .with_context(|| format!("creating {}", logs_dir.display()))?;
    // Where the keeper's and supervisor's words go until the supervisor captures its own
    // stderr (ServiceLog), and their stdout for good.
    let log_path = supervisor_log(home);
    let log = logs::open_append(&log_path).with_context(|| format!("opening {}", log_path.display()))?;
    let (read, write) = nix::unistd::pipe().context("creating a pipe")?;
    nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    let exe = std::env::current_exe().context("cannot tell where this stigmer binary is")?;
    let (lock_var, lock_fd) = prepared.lock.pass();
    let mut cmd = Command::new(exe);
    cmd.args(["server", "--keep"])
        .env(crate::home::HOME_VAR, home.root())
        .env(supervisor::START_FD_VAR, write.as_raw_fd().to_string())
        .env(lock_var, lock_fd)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let (write_fd, lock_fd) = (write.as_raw_fd(), prepared.lock.raw_fd());
    // SAFETY: inheritable and setsid only make async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            state::inheritable(write_fd)?;
            state::inheritable(lock_fd)?;
            nix::unistd::setsid().map(drop).map_err(io::Error::from)
        });
    }
    let child = cmd.spawn().context("starting the server")?;
    drop(write);
    drop(child);
    drop(prepared.lock);
    Ok(Starting { events: BufReader::new(File::from(read)), log: log_path })
}

/// The hidden `stigmer server --keep` that `spawn_supervisor` detaches; its exit code.
pub(crate) fn keep(home: &Home) -> anyhow::Result<i32> {
    keeper::run(home)
}

/// The hidden `stigmer server --supervise` that the keeper starts. Ok(false): the start failed
/// (already said on the progress pipe). The control socket is bound first, so a `stop` made
/// while the rest sets up waits for the supervisor rather than finding nobody.
pub(crate) fn supervise(home: &Home) -> anyhow::Result<bool> {
    let progress = crate::env::var(supervisor::START_FD_VAR).and_then(|v| v.parse::<i32>().ok()).map(|fd| {
        // SAFETY: the keeper passed this fd, the pipe's write end, for us to own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
        File::from(fd)
    });
    // Passed down by the keeper, our parent; taken here when started some other way.
    let (_lock, keeper) = match HomeLock::inherited(home) {
        Some(lock) => (lock, Some(nix::unistd::getppid().as_raw() as u32)),
        None => match HomeLock::take(home)? {
            Some(lock) => (lock, None),
            None => bail!("another supervisor is already running"),
        },
    };
    let run = RunDir::new(home)?;
    let control = control::listen(&run).with_context(|| format!("listening on {}", run.control_path().display()))?;
    let plan = spec::load(home)?;
    let _pin = pin_links(home)?;
    supervisor::run(home, plan, run, control, supervisor::Options { progress, foreground: false, keeper })
}

/// `stigmer server --foreground`: this process is the supervisor, service output on stdout.
pub(crate) fn foreground(home: &Home, prepared: Prepared) -> anyhow::Result<bool> {
    let run = RunDir::new(home)?;
    let control = control::listen(&run).with_context(|| format!("listening on {}", run.control_path().display()))?;
    let _pin = pin_links(home)?;
    let options = supervisor::Options { progress: None, foreground: true, keeper: None };
    let Prepared { plan, lock: _lock } = prepared;
    supervisor::run(home, plan, run, control, options)
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
            None => (true, format!("{} {} (running server): no process of a service outlives it", c.kind, c.detail)),
            Some(escapes) => (false, format!("{} (running server; {}): {escapes}", c.kind, c.detail)),
        });
    }
    Ok(match crate::platform::cgroup_for_services() {
        Ok(base) => (
            true,
            format!(
                "cgroup: a server started here puts each service in a cgroup under {} (cgroup.kill ends all of it); \
                 no process of a service outlives the server, SIGKILL included",
                base.display()
            ),
        ),
        Err(why) => (
            false,
            format!(
                "process-groups: {why}; `stop NAME`/`restart NAME` then miss a service's descendant that left its \
                 process group and cleared its environment (it lives until the server stops)"
            ),
        ),
    })
}
