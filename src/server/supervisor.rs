//! The supervisor: one process per STIGMER_HOME (it holds the lock for its whole life). Each
//! service starts as soon as every service it depends on is ready, so independent services
//! start together; readiness is known (sd_notify, an HTTP or TCP answer, a command exiting 0),
//! not guessed. Running services are health-checked; failures restart under the restart policy
//! with exponential backoff until a crash loop marks them failed. On every way out it controls,
//! it stops the services dependents first, each one's whole process tree.
//!
//! One record per service (`Unit`: spec, state, process), walked by one loop on the main thread,
//! which alone spawns services (the parent-death signal is tied to the spawning thread) and
//! reaps every child with waitpid(-1). The engine returns data: progress events for the CLI that
//! started it, status reports and replies on the control socket; it prints nothing.
//!
//! Same world: services run in the pid namespace, user and groups the supervisor runs in (that
//! of whoever started it), so their pids, files' owners and `ps` are what they are outside.
//!
//! Containment, without changing that world: each service is its own process group with a
//! parent-death signal, and the supervisor is a child subreaper (orphans of its services come
//! to it). Where the supervisor may write the cgroup v2 it runs in (root; a user's delegated
//! cgroup, as a systemd user session's), each service also runs in a cgroup of its own under
//! `stigmer-server-PID`, and stopping it ends the whole cgroup (cgroup.kill), whatever left the
//! process group or cleared its environment. Started by `stigmer server`, the supervisor's
//! parent is its keeper (keeper.rs), a subreaper that ends what is left when the supervisor
//! dies, SIGKILL included.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::control::{self, Call, ControlSocket, Reply, Request};
use super::logs::{self, Echo, ServiceLog, Stream};
use super::notify::{self, NotifySocket};
use super::probe::{self, Check, EXEC_PROBES};
use super::spec::{Health, Plan, Probe, Ready, Restart, Service};
use super::state::{Containment, Phase, RunDir, ServiceStatus, StatusReport, now};
use crate::home::Home;
use crate::platform;

const TICK: Duration = Duration::from_millis(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How often a readiness probe is retried while a service starts.
const READY_RETRY: Duration = Duration::from_millis(50);
const READY_PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: i32) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// What the CLI that started the supervisor hears, one JSON line each, in the order it happens.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub(crate) enum Progress {
    Ready { name: String, ms: u64, how: String },
    External { name: String, addr: String },
    Failed { name: String, error: String },
    AllReady,
    StartFailed { error: String },
}

/// How the supervisor runs: where progress goes, whether service output is echoed, and the
/// keeper that ends what is left if it dies (none under `--foreground`).
pub(crate) struct Options {
    pub(crate) progress: Option<std::fs::File>,
    pub(crate) foreground: bool,
    pub(crate) keeper: Option<u32>,
}

/// How often the sockets' paths are checked (a deleted run/ is recreated within this).
const SOCKET_CHECK: Duration = Duration::from_millis(200);

/// What the containment in effect lets escape, if anything.
fn containment(cgroup: &Result<platform::Cgroup, String>, keeper: Option<u32>) -> Containment {
    const NO_KEEPER: &str = "under --foreground no keeper outlives the supervisor: if it is SIGKILLed, a service's \
                             processes that left its process group live on";
    const NO_CGROUP: &str = "`stop NAME` and `restart NAME` end a service's process group, its descendants and \
                             orphans that keep its STIGMER_SERVICE, not a descendant that left them all and cleared \
                             its environment (`setsid -f env -i ...`): that one lives until the server stops";
    let (kind, detail, mut escapes) = match cgroup {
        Ok(c) => ("cgroup", c.path().display().to_string(), Vec::new()),
        Err(why) => ("process-groups", format!("no cgroup: {why}"), vec![NO_CGROUP]),
    };
    if keeper.is_none() {
        escapes.push(NO_KEEPER);
    }
    Containment { kind: kind.into(), detail, escapes: (!escapes.is_empty()).then(|| escapes.join("; ")) }
}

/// One service: what it is, where it stands, its process.
struct Unit {
    spec: Service,
    phase: Phase,
    /// Its main process, as everyone numbers it (same pid namespace).
    pid: Option<u32>,
    /// Its own cgroup, when the server has one.
    cgroup: Option<platform::Cgroup>,
    /// Its own notify socket, for `ready = { notify = true }`.
    notify: Option<NotifySocket>,
    started: Instant,
    since: Option<u64>,
    restarts: u32,
    ready_at: Option<u64>,
    last_exit: Option<String>,
    message: Option<String>,
    notify_status: Option<String>,
    /// The service said STOPPING=1: its exit is expected.
    notified_stopping: bool,
    failures: VecDeque<Instant>,
    next_start: Option<Instant>,
    /// False once stopped on request: not started or restarted until asked.
    wanted: bool,
    probe: Option<Receiver<Result<(), String>>>,
    next_probe: Instant,
    health_failures: u32,
    healthy: Option<bool>,
    health_error: Option<String>,
    last_watchdog: Instant,
    /// SIGTERM sent; SIGKILL at this moment.
    kill_at: Option<Instant>,
    /// Why it is being killed when that is a failure (health, watchdog), not a requested stop.
    condemned: Option<String>,
    /// Found ready at least once (a one-shot that has since exited still counts for the start).
    was_ready: bool,
    /// Its log (output and the supervisor's events about it), open from its first start on.
    log: Option<Arc<ServiceLog>>,
}

impl Unit {
    fn new(spec: Service) -> Self {
        let now = Instant::now();
        Unit {
            phase: if spec.external.is_some() { Phase::External } else { Phase::Waiting },
            spec,
            pid: None,
            cgroup: None,
            notify: None,
            started: now,
            since: None,
            restarts: 0,
            ready_at: None,
            last_exit: None,
            message: None,
            notify_status: None,
            notified_stopping: false,
            failures: VecDeque::new(),
            next_start: None,
            wanted: true,
            probe: None,
            next_probe: now,
            health_failures: 0,
            healthy: None,
            health_error: None,
            last_watchdog: now,
            kill_at: None,
            condemned: None,
            was_ready: false,
            log: None,
        }
    }

    /// Ready now: running and found ready, or external.
    fn is_ready(&self) -> bool {
        self.phase == Phase::External || (self.phase == Phase::Running && self.pid.is_some())
    }

    /// What its dependents wait for: ready, or a one-shot that was ready and exited cleanly.
    fn satisfies_dependents(&self) -> bool {
        self.is_ready() || (self.was_ready && self.phase == Phase::Stopped && self.wanted)
    }

    fn status(&self) -> ServiceStatus {
        ServiceStatus {
            name: self.spec.name.clone(),
            state: self.phase,
            pid: self.pid,
            since: self.since.filter(|_| self.pid.is_some()),
            restarts: self.restarts,
            ready_at: self.ready_at,
            port: self.spec.port,
            addr: self.spec.addr(),
            last_exit: self.last_exit.clone(),
            message: self.message.clone(),
            status: self.notify_status.clone(),
            health: self.healthy.map(|h| if h { "healthy" } else { "unhealthy" }.to_owned()),
            health_error: self.health_error.clone(),
        }
    }
}

/// A reply owed once something has happened.
enum Owed {
    /// When the service is ready (or failed to be).
    Ready(usize, Sender<Reply>),
    /// When the service has no process left.
    Down(usize, Sender<Reply>),
    /// When everything has stopped.
    AllDown(Sender<Reply>),
}

struct Supervisor {
    units: Vec<Unit>,
    plan_limits: super::spec::Limits,
    logs_dir: PathBuf,
    path_env: OsString,
    bin_dir: PathBuf,
    calls: Receiver<Call>,
    control: ControlSocket,
    /// When the sockets' paths were last checked (run/ deleted: bound again).
    sockets_checked: Instant,
    owed: Vec<Owed>,
    progress: Option<std::fs::File>,
    echo: Option<Echo>,
    log_settings: logs::Settings,
    started: u64,
    /// Every service was ready once: failures from now on restart instead of failing the start.
    all_ready: bool,
    start_failed: bool,
    shutting_down: bool,
    keeper: Option<u32>,
    /// The server's cgroup (the services' cgroups are inside), when it has one.
    cgroup: Option<platform::Cgroup>,
    containment: Containment,
}

/// Runs the supervisor in this process until it is told to stop; the caller holds the lock and
/// has bound the control socket (CONTROL: calls wait there until the loop runs).
pub(crate) fn run(
    home: &Home,
    plan: Plan,
    run_dir: RunDir,
    control: (ControlSocket, Receiver<Call>),
    options: Options,
) -> anyhow::Result<bool> {
    platform::become_subreaper().context("becoming a child subreaper")?;
    let cgroup = platform::Cgroup::create_for_server();
    let containment = containment(&cgroup, options.keeper);
    let cgroup = cgroup.ok();
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal::sigaction(sig, &action) }.context("installing signal handlers")?;
    }
    let mut units: Vec<Unit> = plan.services.into_iter().map(Unit::new).collect();
    for unit in units.iter_mut().filter(|u| u.spec.ready == Ready::Notify && u.spec.external.is_none()) {
        let path = run_dir.notify_path(&unit.spec.name);
        unit.notify = Some(NotifySocket::bind(&path).with_context(|| format!("binding {}", path.display()))?);
    }
    let logs_dir = home.logs();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&logs_dir)
        .with_context(|| format!("creating {}", logs_dir.display()))?;
    let bin_dir = home.bin();
    let path_env = services_path(&bin_dir, crate::env::var_os("PATH"));
    let echo = options.foreground.then(Echo::stdout);
    // Our own stderr (tracing, panics) becomes supervisor.log's stamped, rotated lines.
    ServiceLog::open(&logs_dir, super::spec::RESERVED, plan.logs, echo.clone())
        .and_then(|log| log.capture_own_stderr())
        .context("capturing the supervisor's stderr into supervisor.log")?;
    let mut sup = Supervisor {
        units,
        plan_limits: plan.limits,
        logs_dir,
        path_env,
        bin_dir,
        calls: control.1,
        control: control.0,
        sockets_checked: Instant::now(),
        owed: Vec::new(),
        progress: options.progress,
        echo,
        log_settings: plan.logs,
        started: now(),
        all_ready: false,
        start_failed: false,
        shutting_down: false,
        keeper: options.keeper,
        cgroup,
        containment,
    };
    tracing::info!(containment = sup.containment.kind, "{}", sup.containment.detail);
    let ok = sup.run_loop();
    // Gone before the lock is: nobody connects to a supervisor that has finished.
    let _ = std::fs::remove_file(sup.control.path());
    for unit in &sup.units {
        if let Some(sock) = &unit.notify {
            let _ = std::fs::remove_file(sock.path());
        }
    }
    if let Some(cgroup) = &sup.cgroup {
        cgroup.remove();
    }
    notify::tell_own_manager("STOPPING=1");
    Ok(ok)
}

impl Supervisor {
    /// An event line in service I's log (once it has one).
    fn event(&self, i: usize, text: &str) {
        if let Some(log) = &self.units[i].log {
            log.event(text);
        }
    }

    /// The one loop. Returns whether the start succeeded.
    fn run_loop(&mut self) -> bool {
        for i in 0..self.units.len() {
            if let Some(addr) = self.units[i].spec.external.clone() {
                let name = self.units[i].spec.name.clone();
                if probe::reachable(&addr) {
                    self.emit(Progress::External { name, addr });
                } else {
                    self.fail_start(&name, format!("{name} is declared external at {addr}, which does not answer"));
                }
            }
        }
        loop {
            if SIGNALLED.load(Ordering::SeqCst) != 0 {
                self.shutting_down = true;
            }
            self.reap();
            self.check_sockets();
            self.read_notifications();
            self.answer_calls();
            let now = Instant::now();
            for i in 0..self.units.len() {
                if let Err(why) = self.advance(i, now)
                    && !self.all_ready
                {
                    let name = self.units[i].spec.name.clone();
                    self.units[i].phase = Phase::Failed;
                    self.fail_start(&name, why);
                }
            }
            if self.shutting_down && !self.all_ready && !self.start_failed {
                self.fail_start("", "stopped while starting".into());
            }
            if !self.all_ready
                && !self.shutting_down
                && self.units.iter().all(|u| u.was_ready || u.phase == Phase::External || !u.wanted)
            {
                self.all_ready = true;
                self.emit(Progress::AllReady);
                self.progress = None;
                notify::tell_own_manager("READY=1");
                tracing::info!("all services ready");
            }
            if self.shutting_down {
                self.stop_step();
                if self.units.iter().all(|u| u.pid.is_none()) {
                    self.kill_adopted();
                    for u in &mut self.units {
                        if !matches!(u.phase, Phase::Failed | Phase::External) {
                            u.phase = Phase::Stopped;
                        }
                    }
                    for owed in self.owed.drain(..) {
                        let (Owed::AllDown(tx) | Owed::Down(_, tx) | Owed::Ready(_, tx)) = owed;
                        let _ = tx.send(Reply::done());
                    }
                    control::flush_replies(Duration::from_secs(1));
                    return !self.start_failed;
                }
            }
            self.settle_owed();
            std::thread::sleep(TICK);
        }
    }

    fn emit(&mut self, event: Progress) {
        if let Some(out) = &mut self.progress {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            if out.write_all(&line).is_err() {
                // The CLI went away; the start goes on without an audience.
                self.progress = None;
            }
        }
    }

    /// The start is over, unsuccessfully: say why, then everything stops.
    fn fail_start(&mut self, name: &str, error: String) {
        self.start_failed = true;
        self.shutting_down = true;
        tracing::error!("{error}");
        if !name.is_empty() {
            self.emit(Progress::Failed { name: name.into(), error: error.clone() });
        }
        self.emit(Progress::StartFailed { error });
        self.progress = None;
    }

    /// Moves service I on: start, readiness, health, watchdog, restart, kill. Err: the service
    /// failed to start (which fails the whole start while it is under way).
    fn advance(&mut self, i: usize, now: Instant) -> Result<(), String> {
        let unit = &self.units[i];
        if self.shutting_down || !unit.wanted {
            return Ok(());
        }
        match unit.phase {
            Phase::Waiting => {
                let deps_ready = unit
                    .spec
                    .depends_on
                    .iter()
                    .all(|d| self.units.iter().any(|u| u.spec.name == *d && u.satisfies_dependents()));
                if deps_ready {
                    self.spawn(i)?;
                }
            }
            Phase::Backoff if unit.next_start.is_some_and(|t| t <= now) => {
                self.units[i].next_start = None;
                if let Err(e) = self.spawn(i) {
                    tracing::error!(service = self.units[i].spec.name, "restart failed: {e}");
                    self.record_failure(i, e);
                }
            }
            Phase::Starting => return self.check_ready(i, now),
            Phase::Running => self.check_health(i, now),
            _ => {}
        }
        Ok(())
    }

    fn check_ready(&mut self, i: usize, now: Instant) -> Result<(), String> {
        let unit = &mut self.units[i];
        let elapsed = unit.started.elapsed();
        let ready = match &unit.spec.ready {
            Ready::Started(grace) => elapsed >= *grace,
            // Set by read_notifications.
            Ready::Notify => false,
            Ready::Http(_) | Ready::Tcp | Ready::Exec(_) => match poll_probe(&mut unit.probe) {
                Some(Ok(())) => true,
                Some(Err(why)) => {
                    unit.health_error = Some(why);
                    unit.next_probe = now + READY_RETRY;
                    false
                }
                None => {
                    if unit.probe.is_none() && unit.next_probe <= now {
                        let check = ready_check(&unit.spec, &self.path_env);
                        unit.probe = check.map(|c| probe::start(c, READY_PROBE_TIMEOUT));
                    }
                    false
                }
            },
        };
        if ready {
            let how = ready_how(&self.units[i].spec.ready);
            self.mark_ready(i, how);
            return Ok(());
        }
        let unit = &self.units[i];
        if elapsed > unit.spec.ready_timeout {
            let last = unit.health_error.as_deref().map(|e| format!(" (last probe: {e})")).unwrap_or_default();
            let why = format!(
                "{} was not ready within {:.0?}{last}; see {}",
                unit.spec.name,
                unit.spec.ready_timeout,
                logs::log_path(&self.logs_dir, &unit.spec.name).display()
            );
            if !self.all_ready {
                return Err(why);
            }
            tracing::warn!(service = unit.spec.name, "{why}");
            self.restart_unhealthy(i, why);
        }
        Ok(())
    }

    fn mark_ready(&mut self, i: usize, how: &str) {
        let unit = &mut self.units[i];
        unit.phase = Phase::Running;
        unit.was_ready = true;
        unit.ready_at = Some(now());
        unit.health_error = None;
        unit.probe = None;
        unit.last_watchdog = Instant::now();
        unit.next_probe = Instant::now() + unit.spec.health.as_ref().map_or(Duration::ZERO, |h| h.interval);
        let ms = unit.started.elapsed().as_millis() as u64;
        let name = unit.spec.name.clone();
        tracing::info!(service = name, "ready after {ms} ms ({how})");
        self.event(i, &format!("ready after {ms} ms ({how})"));
        if !self.all_ready {
            self.emit(Progress::Ready { name, ms, how: how.into() });
        }
    }

    fn check_health(&mut self, i: usize, now: Instant) {
        let unit = &mut self.units[i];
        if let Some(limit) = unit.spec.watchdog
            && unit.last_watchdog.elapsed() > limit
        {
            let why = format!("watchdog: no WATCHDOG=1 within {limit:.1?}");
            tracing::warn!(service = unit.spec.name, "{why}");
            if let Some(log) = &unit.log {
                log.event(&why);
            }
            unit.healthy = Some(false);
            unit.health_error = Some(why.clone());
            self.restart_unhealthy(i, why);
            return;
        }
        let Some(health) = unit.spec.health.clone() else { return };
        match poll_probe(&mut unit.probe) {
            Some(Ok(())) => {
                unit.healthy = Some(true);
                unit.health_failures = 0;
                unit.health_error = None;
                unit.next_probe = now + health.interval;
            }
            Some(Err(why)) => {
                unit.healthy = Some(false);
                unit.health_failures += 1;
                unit.health_error = Some(why.clone());
                unit.next_probe = now + health.interval;
                let failed = format!("health check failed ({}/{}): {why}", unit.health_failures, health.failures);
                tracing::warn!(service = unit.spec.name, "{failed}");
                if let Some(log) = &unit.log {
                    log.event(&failed);
                }
                if unit.health_failures >= health.failures {
                    let why = format!("{} failed health checks (last: {why})", unit.health_failures);
                    self.restart_unhealthy(i, why);
                }
            }
            None if unit.probe.is_none() && unit.next_probe <= now => {
                let check = health_check(&unit.spec, &health, &self.path_env);
                unit.probe = Some(probe::start(check, health.timeout));
            }
            None => {}
        }
    }

    /// Stops an unhealthy service; its exit then goes through the restart policy as a failure.
    fn restart_unhealthy(&mut self, i: usize, why: String) {
        let unit = &mut self.units[i];
        unit.health_failures = 0;
        unit.probe = None;
        unit.condemned = Some(why);
        self.terminate(i);
    }

    fn read_notifications(&mut self) {
        for i in 0..self.units.len() {
            let Some(sock) = &self.units[i].notify else { continue };
            for msg in sock.drain() {
                // The socket says who speaks; the sender must still be one of its processes.
                if !msg.pid.is_some_and(|pid| self.owns(i, pid)) {
                    let name = &self.units[i].spec.name;
                    tracing::debug!("notify message on {name}'s socket from pid {:?}, not {name}'s: ignored", msg.pid);
                    continue;
                }
                for (key, value) in msg.fields {
                    match key.as_str() {
                        "READY" if value == "1" && self.units[i].phase == Phase::Starting => {
                            self.mark_ready(i, "notify");
                        }
                        "STATUS" => self.units[i].notify_status = Some(value),
                        "STOPPING" if value == "1" => self.units[i].notified_stopping = true,
                        "WATCHDOG" if value == "1" => self.units[i].last_watchdog = Instant::now(),
                        // MAINPID is not honoured: the main process is the one we started.
                        _ => {}
                    }
                }
            }
        }
    }

    /// Whether PID is one of service I's processes: its main process, in its cgroup, or (without
    /// one) a descendant of its main process.
    fn owns(&self, i: usize, pid: u32) -> bool {
        let unit = &self.units[i];
        let Some(main) = unit.pid else { return false };
        if pid == main {
            return true;
        }
        match &unit.cgroup {
            Some(cgroup) => cgroup.holds(pid),
            None => descendants(&platform::proc_table(), main).contains(&pid),
        }
    }

    /// Binds the control and notify sockets again where their paths no longer name them.
    fn check_sockets(&mut self) {
        if self.sockets_checked.elapsed() < SOCKET_CHECK {
            return;
        }
        self.sockets_checked = Instant::now();
        match self.control.ensure() {
            Ok(true) => tracing::warn!("{} was gone: bound it again", self.control.path().display()),
            Ok(false) => {}
            Err(e) => tracing::error!("binding {} again: {e}", self.control.path().display()),
        }
        for unit in &mut self.units {
            if let Some(sock) = &mut unit.notify
                && let Err(e) = sock.ensure()
            {
                tracing::error!("binding {} again: {e}", sock.path().display());
            }
        }
    }

    fn answer_calls(&mut self) {
        loop {
            let (request, tx) = match self.calls.try_recv() {
                Ok(call) => call,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            };
            let find = |name: &str| self.units.iter().position(|u| u.spec.name == name);
            let known = || self.units.iter().map(|u| u.spec.name.clone()).collect::<Vec<_>>().join(", ");
            match request {
                Request::Status => {
                    let _ = tx.send(Reply { ok: true, error: None, status: Some(Box::new(self.report())) });
                }
                Request::Stop => {
                    self.shutting_down = true;
                    self.owed.push(Owed::AllDown(tx));
                }
                Request::Start { name } | Request::Restart { name } | Request::StopService { name }
                    if find(&name).is_none() =>
                {
                    let _ = tx.send(Reply::failed(format!("no service named '{name}' (services: {})", known())));
                }
                _ if self.shutting_down => {
                    let _ = tx.send(Reply::failed("the supervisor is stopping"));
                }
                Request::Start { name } => {
                    let i = find(&name).expect("checked above");
                    self.units[i].wanted = true;
                    match self.units[i].phase {
                        Phase::Running | Phase::External => {
                            let _ = tx.send(Reply::done());
                        }
                        Phase::Stopped | Phase::Failed | Phase::Backoff => {
                            self.units[i].failures.clear();
                            self.units[i].next_start = None;
                            self.units[i].phase = Phase::Waiting;
                            self.owed.push(Owed::Ready(i, tx));
                        }
                        _ => self.owed.push(Owed::Ready(i, tx)),
                    }
                }
                Request::StopService { name } => {
                    let i = find(&name).expect("checked above");
                    if self.units[i].phase == Phase::External {
                        let _ = tx.send(Reply::failed(format!("{name} is external: nothing to stop")));
                        continue;
                    }
                    self.units[i].wanted = false;
                    self.units[i].next_start = None;
                    self.terminate(i);
                    if self.units[i].pid.is_none() {
                        self.units[i].phase = Phase::Stopped;
                    }
                    self.owed.push(Owed::Down(i, tx));
                }
                Request::Restart { name } => {
                    let i = find(&name).expect("checked above");
                    if self.units[i].phase == Phase::External {
                        let _ = tx.send(Reply::failed(format!("{name} is external: nothing to restart")));
                        continue;
                    }
                    // Stop it (it stays wanted), then it starts again from Waiting.
                    self.units[i].wanted = true;
                    self.units[i].next_start = None;
                    self.units[i].failures.clear();
                    self.terminate(i);
                    self.units[i].phase = Phase::Stopping;
                    self.units[i].message = Some("restarting on request".into());
                    if self.units[i].pid.is_none() {
                        self.units[i].phase = Phase::Waiting;
                    }
                    self.owed.push(Owed::Ready(i, tx));
                }
            }
        }
    }

    /// Sends the replies whose moment has come.
    fn settle_owed(&mut self) {
        let mut keep = Vec::new();
        for owed in self.owed.drain(..) {
            match owed {
                Owed::Ready(i, tx) => {
                    let u = &self.units[i];
                    if u.is_ready() {
                        let _ = tx.send(Reply::done());
                    } else if u.phase == Phase::Failed || (u.phase == Phase::Backoff) {
                        let why = u.message.clone().or(u.last_exit.clone()).unwrap_or_default();
                        let _ = tx.send(Reply::failed(format!("{} failed to start: {why}", u.spec.name)));
                    } else {
                        keep.push(Owed::Ready(i, tx));
                    }
                }
                Owed::Down(i, tx)
                    if self.units[i].pid.is_none() && !self.units[i].cgroup.as_ref().is_some_and(|c| c.populated()) =>
                {
                    let _ = tx.send(Reply::done());
                }
                other => keep.push(other),
            }
        }
        self.owed = keep;
    }

    fn report(&self) -> StatusReport {
        StatusReport {
            version: env!("CARGO_PKG_VERSION").into(),
            build: crate::embed::build_id().to_owned(),
            supervisor_pid: std::process::id(),
            keeper_pid: self.keeper,
            started: self.started,
            ready: self.all_ready,
            containment: self.containment.clone(),
            services: self.units.iter().map(Unit::status).collect(),
        }
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let s = self.units[i].spec.clone();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&s.data_dir)
            .map_err(|e| format!("{}: creating {}: {e}", s.name, s.data_dir.display()))?;
        // The log first: a service whose output would go nowhere is not started.
        let log = ServiceLog::open(&self.logs_dir, &s.name, self.log_settings, self.echo.clone())
            .map_err(|e| format!("{}: opening {}: {e}", s.name, logs::log_path(&self.logs_dir, &s.name).display()))?;
        let cgroup = match &self.cgroup {
            Some(server) => Some(service_cgroup(server, &s.name)?),
            None => None,
        };
        let program = if crate::embed::find(&s.command).is_some() {
            self.bin_dir.join(&s.command)
        } else {
            PathBuf::from(&s.command)
        };
        let mut cmd = Command::new(&program);
        cmd.args(&s.args)
            .env_remove(crate::run::RECURSION_VAR)
            .env_remove("NOTIFY_SOCKET")
            .env_remove(START_FD_VAR)
            .env_remove(super::state::LOCK_FD_VAR)
            .env("PATH", &self.path_env)
            .env("STIGMER_SERVICE", &s.name)
            .envs(s.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&s.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // The service's own runner, for its start only: the launcher takes the variable out of
        // the service's environment, so what the service starts follows its own policy.
        match s.runner {
            Some(runner) => cmd.env(crate::run::SERVICE_RUNNER_VAR, runner.name()),
            None => cmd.env_remove(crate::run::SERVICE_RUNNER_VAR),
        };
        if let Some(sock) = &self.units[i].notify {
            cmd.env("NOTIFY_SOCKET", sock.path());
            if let Some(w) = s.watchdog {
                cmd.env("WATCHDOG_USEC", w.as_micros().to_string());
            }
        }
        let me = std::process::id();
        let procs = cgroup.as_ref().map(|c| c.procs_file());
        // SAFETY: join_cgroup and die_with_parent only make async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(procs) = &procs {
                    platform::join_cgroup(procs)?;
                }
                platform::die_with_parent(me, Signal::SIGKILL)
            })
        };
        let mut child = cmd.spawn().map_err(|e| format!("starting {} ({}): {e}", s.name, program.display()))?;
        let pid = child.id();
        if let Some(pipe) = child.stdout.take() {
            log.capture(Stream::Stdout, pipe.into());
        }
        if let Some(pipe) = child.stderr.take() {
            log.capture(Stream::Stderr, pipe.into());
        }
        // The child is reaped by waitpid(-1) in reap(), never through `child`.
        drop(child);
        tracing::info!(service = s.name, pid, "started");
        log.event(&format!("started (pid {pid})"));
        let unit = &mut self.units[i];
        unit.log = Some(log);
        unit.pid = Some(pid);
        unit.cgroup = cgroup;
        unit.started = Instant::now();
        unit.next_probe = unit.started;
        unit.probe = None;
        unit.phase = Phase::Starting;
        unit.since = Some(now());
        unit.message = None;
        unit.notify_status = None;
        unit.notified_stopping = false;
        unit.kill_at = None;
        unit.healthy = None;
        unit.health_failures = 0;
        unit.health_error = None;
        Ok(())
    }

    /// Collects every exited child: services, exec probes, orphans adopted by us.
    fn reap(&mut self) {
        let mut probes = EXEC_PROBES.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => status,
            };
            let (pid, described, code) = match status {
                WaitStatus::Exited(pid, code) => (pid, format!("exit {code}"), code),
                WaitStatus::Signaled(pid, sig, _) => (pid, format!("signal {}", sig.as_str()), 128 + sig as i32),
                _ => continue,
            };
            let pid = pid.as_raw() as u32;
            if let Some(at) = probes.iter().position(|(p, _)| *p == pid) {
                let (_, tx) = probes.remove(at);
                let _ = tx.send(code);
                continue;
            }
            let Some(i) = self.units.iter().position(|u| u.pid == Some(pid)) else { continue };
            self.event(
                i,
                &match status {
                    WaitStatus::Signaled(_, sig, _) => format!("killed by {}", sig.as_str()),
                    _ => format!("exited with code {code}"),
                },
            );
            self.on_exit(i, described, code == 0);
        }
    }

    fn on_exit(&mut self, i: usize, described: String, clean: bool) {
        // Whatever the service left behind goes with it.
        self.kill_tree(i, Signal::SIGKILL);
        let unit = &mut self.units[i];
        let lived = unit.started.elapsed();
        unit.pid = None;
        unit.kill_at = None;
        unit.probe = None;
        unit.last_exit = Some(described.clone());
        let name = unit.spec.name.clone();
        let condemned = unit.condemned.take();
        if unit.phase == Phase::Stopping && condemned.is_none() {
            tracing::info!(service = name, "stopped ({described})");
            if let Some(log) = &unit.log {
                log.event("stopped");
            }
            unit.phase = if unit.wanted && !self.shutting_down { Phase::Waiting } else { Phase::Stopped };
            return;
        }
        // A short-lived service that outlived its grace period was ready.
        if unit.phase == Phase::Starting
            && let Ready::Started(grace) = unit.spec.ready
            && lived >= grace
        {
            self.mark_ready(i, "started");
        }
        let unit = &mut self.units[i];
        let expected = condemned.is_none() && clean && (unit.notified_stopping || unit.spec.restart == Restart::Never);
        if condemned.is_some() {
            tracing::info!(service = name, "killed after failing its checks ({described})");
        } else if expected {
            tracing::info!(service = name, "exited ({described})");
        } else {
            tracing::warn!(service = name, "exited unexpectedly ({described})");
        }
        if !self.all_ready && unit.phase == Phase::Starting {
            let why = format!(
                "{name} exited while starting ({described}); see {}",
                logs::log_path(&self.logs_dir, &name).display()
            );
            unit.phase = Phase::Failed;
            self.fail_start(&name, why);
            return;
        }
        let failed = !clean || condemned.is_some();
        let restart = match unit.spec.restart {
            Restart::Always => true,
            Restart::OnFailure => failed,
            Restart::Never => false,
        };
        if !restart || !unit.wanted || self.shutting_down {
            unit.phase = if failed { Phase::Failed } else { Phase::Stopped };
            if let Some(why) = condemned {
                unit.message = Some(why);
            }
            return;
        }
        self.record_failure(i, condemned.unwrap_or(described));
    }

    /// Schedules a restart with exponential backoff, or gives up on a crash loop.
    fn record_failure(&mut self, i: usize, why: String) {
        let limits = &self.plan_limits;
        let now = Instant::now();
        let unit = &mut self.units[i];
        unit.failures.push_back(now);
        while unit.failures.front().is_some_and(|t| now.duration_since(*t) > limits.window) {
            unit.failures.pop_front();
        }
        let count = unit.failures.len() as u32;
        if count >= limits.restart_limit {
            unit.phase = Phase::Failed;
            unit.message = Some(format!(
                "crash loop: {count} failures within {:.0?} (last: {why}); not restarting",
                limits.window
            ));
            tracing::error!(service = unit.spec.name, "{}", unit.message.as_deref().unwrap_or_default());
            let gave_up = format!("gave up after {count} failures in {:.0?}", limits.window);
            if let Some(log) = &unit.log {
                log.event(&gave_up);
            }
        } else {
            let backoff = FIRST_BACKOFF.saturating_mul(1 << (count - 1).min(16)).min(limits.backoff_max);
            unit.next_start = Some(now + backoff);
            unit.phase = Phase::Backoff;
            unit.restarts += 1;
            unit.message = Some(format!("restarting in {backoff:.1?} after {why}"));
            tracing::info!(service = unit.spec.name, "restarting in {backoff:.1?}");
            if let Some(log) = &unit.log {
                log.event(&format!("restarting in {backoff:.1?}"));
            }
        }
    }

    /// SIGTERM to the service's process group; SIGKILL to its whole tree after its stop timeout.
    fn terminate(&mut self, i: usize) {
        let unit = &mut self.units[i];
        let Some(pid) = unit.pid else { return };
        if unit.kill_at.is_none() {
            unit.kill_at = Some(Instant::now() + unit.spec.stop_timeout);
            unit.phase = Phase::Stopping;
            let _ = signal::killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }

    /// One step of stopping everything: dependents first, independent services together.
    fn stop_step(&mut self) {
        let now = Instant::now();
        for i in 0..self.units.len() {
            if self.units[i].next_start.take().is_some() {
                self.event(i, "stopped");
            }
            if self.units[i].pid.is_none() {
                continue;
            }
            let name = self.units[i].spec.name.clone();
            let dependents_up = self.units.iter().any(|u| u.pid.is_some() && u.spec.depends_on.contains(&name));
            if !dependents_up {
                self.terminate(i);
            }
            if self.units[i].kill_at.is_some_and(|t| t <= now) {
                let why = format!("did not stop within {:.0?}; sending SIGKILL", self.units[i].spec.stop_timeout);
                tracing::warn!(service = name, "{why}");
                self.event(i, &why);
                self.kill_tree(i, Signal::SIGKILL);
                self.units[i].kill_at = Some(now + Duration::from_secs(3600));
            }
        }
    }

    /// Signals every process of service I: its process group, and with SIGKILL its whole cgroup;
    /// without one, its descendants (even those that left the group) and adopted orphans that
    /// carry its STIGMER_SERVICE.
    fn kill_tree(&mut self, i: usize, sig: Signal) {
        let unit = &self.units[i];
        if let Some(pid) = unit.pid {
            let _ = signal::killpg(Pid::from_raw(pid as i32), sig);
        }
        if let Some(cgroup) = &unit.cgroup {
            if sig == Signal::SIGKILL
                && let Err(e) = cgroup.kill()
            {
                tracing::error!(service = unit.spec.name, "cgroup.kill in {}: {e}", cgroup.path().display());
            }
            return;
        }
        let table = platform::proc_table();
        let me = std::process::id();
        let mut pids = unit.pid.map(|root| descendants(&table, root)).unwrap_or_default();
        let tag = format!("STIGMER_SERVICE={}", unit.spec.name);
        let mains: Vec<u32> = self.units.iter().filter_map(|u| u.pid).collect();
        pids.extend(
            table
                .iter()
                .filter(|p| p.ppid == me && !mains.contains(&p.pid))
                .filter(|p| platform::environ_has(p.pid, &tag))
                .map(|p| p.pid),
        );
        for pid in pids {
            let _ = signal::kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// Ends what is left: every service's cgroup, and orphans of the services adopted by us.
    fn kill_adopted(&mut self) {
        for unit in &self.units {
            if let Some(cgroup) = &unit.cgroup {
                let _ = cgroup.kill();
            }
        }
        for sig in [Signal::SIGTERM, Signal::SIGKILL] {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                self.reap();
                let me = std::process::id();
                let probes: Vec<u32> =
                    EXEC_PROBES.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(p, _)| *p).collect();
                let children: Vec<u32> = platform::proc_table()
                    .iter()
                    .filter(|p| p.ppid == me && !probes.contains(&p.pid))
                    .map(|p| p.pid)
                    .collect();
                let populated = self.units.iter().any(|u| u.cgroup.as_ref().is_some_and(|c| c.populated()));
                if children.is_empty() && !populated {
                    return;
                }
                if Instant::now() >= deadline {
                    break;
                }
                for pid in &children {
                    let _ = signal::kill(Pid::from_raw(*pid as i32), sig);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Service NAME's cgroup in the server's, made if missing, and empty: what an earlier run of
/// it left is ended first (a restart right after a kill waits for that kill to land).
fn service_cgroup(server: &platform::Cgroup, name: &str) -> Result<platform::Cgroup, String> {
    let cgroup = server
        .child(&format!("svc-{name}"))
        .map_err(|e| format!("{name}: creating its cgroup in {}: {e}", server.path().display()))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while cgroup.populated() {
        if Instant::now() > deadline {
            return Err(format!("{name}: processes of its last run are still in {}", cgroup.path().display()));
        }
        let _ = cgroup.kill();
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(cgroup)
}

/// Every descendant of process ROOT (ROOT included), from a /proc snapshot.
fn descendants(table: &[platform::ProcEntry], root: u32) -> Vec<u32> {
    let mut out = vec![root];
    let mut at = 0;
    while at < out.len() {
        let parent = out[at];
        out.extend(table.iter().filter(|p| p.ppid == parent && p.pid != parent).map(|p| p.pid));
        at += 1;
    }
    out
}

fn poll_probe(probe: &mut Option<Receiver<Result<(), String>>>) -> Option<Result<(), String>> {
    let rx = probe.as_ref()?;
    match rx.try_recv() {
        Ok(verdict) => {
            *probe = None;
            Some(verdict)
        }
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Disconnected) => {
            *probe = None;
            Some(Err("the probe died".into()))
        }
    }
}

fn ready_how(ready: &Ready) -> &'static str {
    match ready {
        Ready::Http(_) => "http",
        Ready::Tcp => "tcp",
        Ready::Notify => "notify",
        Ready::Exec(_) => "exec",
        Ready::Started(_) => "started",
    }
}

/// The services' PATH: the component links first, then ours, as bytes (a PATH or a home that
/// is not UTF-8 reaches the services unchanged).
fn services_path(bin_dir: &std::path::Path, inherited: Option<OsString>) -> OsString {
    let mut path = bin_dir.as_os_str().to_owned();
    path.push(":");
    match inherited {
        Some(p) => path.push(p),
        None => path.push("/usr/local/bin:/usr/bin:/bin"),
    }
    path
}

fn exec_env(s: &Service, path_env: &OsStr) -> Vec<(OsString, OsString)> {
    let mut env = vec![("PATH".into(), path_env.to_owned()), ("STIGMER_PROBE".into(), s.name.clone().into())];
    env.extend(s.env.iter().map(|(k, v)| (k.into(), v.into())));
    env
}

fn ready_check(s: &Service, path_env: &OsStr) -> Option<Check> {
    Some(match &s.ready {
        Ready::Http(path) => Check::Http { addr: s.addr()?, path: path.clone() },
        Ready::Tcp => Check::Tcp { addr: s.addr()? },
        Ready::Exec(argv) => Check::Exec { argv: argv.clone(), env: exec_env(s, path_env), cwd: s.data_dir.clone() },
        Ready::Notify | Ready::Started(_) => return None,
    })
}

fn health_check(s: &Service, h: &Health, path_env: &OsStr) -> Check {
    let addr = s.addr().unwrap_or_default();
    match &h.probe {
        Probe::Http(path) => Check::Http { addr, path: path.clone() },
        Probe::Tcp => Check::Tcp { addr },
        Probe::Exec(argv) => Check::Exec { argv: argv.clone(), env: exec_env(s, path_env), cwd: s.data_dir.clone() },
    }
}

/// Where `stigmer server` passes the write end of the progress pipe to the supervisor.
pub(crate) const START_FD_VAR: &str = "STIGMER_START_FD";
