//! The supervisor: one process per STIGMER_HOME (it holds the lock for its whole life) that
//! starts the services in dependency order, each after its dependencies are ready, restarts
//! failures with exponential backoff until a crash loop marks them failed, and on any way out
//! it controls stops them in reverse order (SIGTERM to the process group, then SIGKILL).
//!
//! No orphan and no zombie: each service is its own process group with a parent-death signal
//! (set from this main thread, which lives as long as the supervisor), the supervisor is a child
//! subreaper, and every exit is reaped with waitpid(-1) right here.

use std::collections::VecDeque;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::logs::{self, Echo, ServiceLog, Stream};
use super::ready;
use super::spec::{Plan, Ready, Restart, Service};
use super::state::{Phase, RunDir, ServiceState, State, now};
use crate::home::Home;
use crate::platform;

const TICK: Duration = Duration::from_millis(50);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: i32) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

struct Proc {
    pid: Option<u32>,
    started: Instant,
    /// How long the last process lived, once it has exited.
    lived: Option<Duration>,
    failures: VecDeque<Instant>,
    next_start: Option<Instant>,
}

pub(crate) struct Supervisor {
    plan: Plan,
    run: RunDir,
    logs_dir: PathBuf,
    path_env: String,
    bin_dir: PathBuf,
    state: State,
    procs: Vec<Proc>,
    echo: Option<Echo>,
    /// Each service's log, once it has been started.
    logs: Vec<Option<Arc<ServiceLog>>>,
}

/// Runs the supervisor in this process until it is told to stop; the caller holds `lock`.
pub(crate) fn run(home: &Home, plan: Plan, run_dir: RunDir, foreground: bool) -> anyhow::Result<ExitCode> {
    platform::become_subreaper().context("becoming a child subreaper")?;
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal::sigaction(sig, &action) }.context("installing signal handlers")?;
    }
    let logs_dir = home.logs();
    std::fs::create_dir_all(&logs_dir).with_context(|| format!("creating {}", logs_dir.display()))?;
    let echo = foreground.then(Echo::stdout);
    ServiceLog::open(&logs_dir, "supervisor", plan.logs, echo.clone())
        .and_then(|log| log.capture_own_stderr())
        .context("capturing the supervisor's stderr into supervisor.log")?;
    let bin_dir = home.bin();
    let path_env = match std::env::var_os("PATH") {
        Some(p) if !p.is_empty() => format!("{}:{}", bin_dir.display(), p.to_string_lossy()),
        _ => format!("{}:/usr/local/bin:/usr/bin:/bin", bin_dir.display()),
    };
    let services = plan
        .services
        .iter()
        .map(|s| ServiceState {
            name: s.name.clone(),
            state: if s.external.is_some() { Phase::External } else { Phase::Waiting },
            pid: None,
            since: None,
            restarts: 0,
            ready_at: None,
            port: s.port,
            addr: s.addr(),
            last_exit: None,
            message: None,
        })
        .collect();
    let procs: Vec<Proc> = plan
        .services
        .iter()
        .map(|_| Proc { pid: None, started: Instant::now(), lived: None, failures: VecDeque::new(), next_start: None })
        .collect();
    let mut sup = Supervisor {
        state: State {
            supervisor_pid: std::process::id(),
            started: now(),
            ready: false,
            error: None,
            exited: false,
            services,
        },
        plan,
        run: run_dir,
        logs_dir,
        path_env,
        bin_dir,
        logs: procs.iter().map(|_| None).collect(),
        procs,
        echo,
    };
    sup.save();
    let outcome = sup.start_all().map(|()| {
        sup.state.ready = true;
        sup.save();
        tracing::info!("all services ready");
        sup.watch();
    });
    if let Err(e) = &outcome {
        sup.state.error = Some(format!("{e:#}"));
        tracing::error!("{e:#}");
    }
    sup.stop_all();
    sup.state.exited = true;
    sup.save();
    Ok(if outcome.is_ok() { ExitCode::SUCCESS } else { crate::exit::Status::Failure.into() })
}

impl Supervisor {
    fn save(&self) {
        if let Err(e) = self.run.write(&self.state) {
            tracing::warn!("writing the state file: {e}");
        }
    }

    fn stop_requested(&self) -> bool {
        SIGNALLED.load(Ordering::SeqCst) != 0
    }

    /// Starts each service after its dependencies, waiting for it to be ready.
    fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.plan.services.len() {
            let s = self.plan.services[i].clone();
            if let Some(addr) = &s.external {
                if !ready::reachable(addr) {
                    bail!("{} is declared external at {addr}, which does not answer", s.name);
                }
                continue;
            }
            self.spawn(i)?;
            let log = logs::log_path(&self.logs_dir, &s.name);
            let deadline = Instant::now() + s.ready_timeout;
            loop {
                if self.stop_requested() {
                    bail!("stopped while starting {}", s.name);
                }
                self.reap();
                let st = &self.state.services[i];
                // A one-shot or short-lived service that outlived its grace period was ready;
                // what happens after (restart or not) is the watch loop's business.
                let lived_long_enough = match (&s.ready, self.procs[i].lived) {
                    (Ready::Started(grace), Some(lived)) => lived >= *grace,
                    _ => false,
                };
                if lived_long_enough && matches!(st.state, Phase::Backoff | Phase::Stopped) {
                    self.state.services[i].ready_at = Some(now());
                    self.save();
                    break;
                }
                let failure = match st.state {
                    Phase::Failed => Some(format!(
                        "failed to start ({})",
                        st.message.clone().or(st.last_exit.clone()).unwrap_or_default()
                    )),
                    Phase::Backoff | Phase::Stopped => {
                        Some(format!("exited while starting ({})", st.last_exit.clone().unwrap_or_default()))
                    }
                    _ => None,
                };
                if let Some(what) = failure {
                    bail!("{} {what}; see {}", s.name, log.display());
                }
                if ready::check(&s, self.procs[i].started) {
                    self.ready_event(i);
                    self.state.services[i].state = Phase::Running;
                    self.state.services[i].ready_at = Some(now());
                    self.save();
                    tracing::info!(service = s.name, "ready");
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} was not ready within {:.0?}; see {}", s.name, s.ready_timeout, log.display());
                }
                std::thread::sleep(TICK);
            }
        }
        Ok(())
    }

    /// Reaps and restarts until a stop signal.
    fn watch(&mut self) {
        while !self.stop_requested() {
            self.reap();
            let now = Instant::now();
            for i in 0..self.procs.len() {
                if self.procs[i].next_start.is_some_and(|t| t <= now) {
                    self.procs[i].next_start = None;
                    if let Err(e) = self.spawn(i) {
                        tracing::error!(service = self.plan.services[i].name, "restart failed: {e:#}");
                        self.record_failure(i, format!("cannot start: {e:#}"));
                    }
                }
                if self.state.services[i].state == Phase::Starting
                    && ready::check(&self.plan.services[i], self.procs[i].started)
                {
                    self.ready_event(i);
                    self.state.services[i].state = Phase::Running;
                    self.save();
                }
            }
            std::thread::sleep(TICK);
        }
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let s: &Service = &self.plan.services[i];
        std::fs::create_dir_all(&s.data_dir).with_context(|| format!("creating {}", s.data_dir.display()))?;
        let program = if crate::embed::find(&s.command).is_some() {
            self.bin_dir.join(&s.command)
        } else {
            PathBuf::from(&s.command)
        };
        let mut cmd = Command::new(&program);
        cmd.args(&s.args)
            .env_remove(crate::run::RECURSION_VAR)
            .env("PATH", &self.path_env)
            .env("STIGMER_SERVICE", &s.name)
            .envs(s.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&s.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let me = std::process::id();
        // SAFETY: die_with_parent only makes async-signal-safe system calls.
        unsafe { cmd.pre_exec(move || platform::die_with_parent(me)) };
        let log = ServiceLog::open(&self.logs_dir, &s.name, self.plan.logs, self.echo.clone())
            .with_context(|| format!("opening {}", logs::log_path(&self.logs_dir, &s.name).display()))?;
        let mut child = cmd.spawn().with_context(|| format!("starting {} ({})", s.name, program.display()))?;
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
        self.logs[i] = Some(log);
        self.procs[i].pid = Some(pid);
        self.procs[i].started = Instant::now();
        self.procs[i].lived = None;
        let st = &mut self.state.services[i];
        st.state = Phase::Starting;
        st.pid = Some(pid);
        st.since = Some(now());
        st.message = None;
        self.save();
        Ok(())
    }

    /// Collects every exited child (services and orphans reparented to us).
    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => status,
            };
            let (pid, described) = match status {
                WaitStatus::Exited(pid, code) => (pid, format!("exit {code}")),
                WaitStatus::Signaled(pid, sig, _) => (pid, format!("signal {}", sig as i32)),
                _ => continue,
            };
            let Some(i) = self.procs.iter().position(|p| p.pid == Some(pid.as_raw() as u32)) else { continue };
            self.event(
                i,
                &match status {
                    WaitStatus::Signaled(_, sig, _) => format!("killed by {}", sig.as_str()),
                    WaitStatus::Exited(_, code) => format!("exited with code {code}"),
                    _ => continue,
                },
            );
            self.on_exit(i, described, matches!(status, WaitStatus::Exited(_, 0)));
        }
    }

    fn on_exit(&mut self, i: usize, described: String, clean: bool) {
        let pid = self.procs[i].pid.take();
        self.procs[i].lived = Some(self.procs[i].started.elapsed());
        // Whatever the service left behind in its group goes with it.
        if let Some(pid) = pid {
            let _ = signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let name = self.plan.services[i].name.clone();
        tracing::warn!(service = name, "exited: {described}");
        let st = &mut self.state.services[i];
        st.pid = None;
        st.last_exit = Some(described.clone());
        if st.state == Phase::Stopping {
            st.state = Phase::Stopped;
            self.event(i, "stopped");
            self.save();
            return;
        }
        let restart = match self.plan.services[i].restart {
            Restart::Always => true,
            Restart::OnFailure => !clean,
            Restart::Never => false,
        };
        if !restart {
            self.state.services[i].state = if clean { Phase::Stopped } else { Phase::Failed };
            self.save();
            return;
        }
        self.record_failure(i, described);
    }

    /// Schedules a restart with exponential backoff, or gives up on a crash loop.
    fn record_failure(&mut self, i: usize, why: String) {
        let limits = &self.plan.limits;
        let now = Instant::now();
        let proc = &mut self.procs[i];
        proc.failures.push_back(now);
        while proc.failures.front().is_some_and(|t| now.duration_since(*t) > limits.window) {
            proc.failures.pop_front();
        }
        let count = proc.failures.len() as u32;
        let st = &mut self.state.services[i];
        let event = if count >= limits.restart_limit {
            format!("gave up after {count} failures in {:.0?}", limits.window)
        } else {
            let backoff = FIRST_BACKOFF.saturating_mul(1 << (count - 1).min(16)).min(limits.backoff_max);
            format!("restarting in {backoff:.1?}")
        };
        if let Some(log) = &self.logs[i] {
            log.event(&event);
        }
        if count >= limits.restart_limit {
            st.state = Phase::Failed;
            st.message = Some(format!(
                "crash loop: {count} failures within {:.0?} (last: {why}); not restarting",
                limits.window
            ));
            tracing::error!(service = st.name, "{}", st.message.as_deref().unwrap_or_default());
        } else {
            let backoff = FIRST_BACKOFF.saturating_mul(1 << (count - 1).min(16)).min(limits.backoff_max);
            proc.next_start = Some(now + backoff);
            st.state = Phase::Backoff;
            st.restarts += 1;
            st.message = Some(format!("restarting in {backoff:.1?} after {why}"));
        }
        self.save();
    }

    /// Stops every running service, dependents first.
    fn stop_all(&mut self) {
        for i in (0..self.procs.len()).rev() {
            if self.procs[i].next_start.take().is_some() {
                self.event(i, "stopped");
            }
            let Some(pid) = self.procs[i].pid else { continue };
            let s = self.plan.services[i].clone();
            self.state.services[i].state = Phase::Stopping;
            self.save();
            let group = Pid::from_raw(pid as i32);
            let _ = signal::killpg(group, Signal::SIGTERM);
            let deadline = Instant::now() + s.stop_timeout;
            while self.procs[i].pid.is_some() && Instant::now() < deadline {
                self.reap();
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.procs[i].pid.is_some() {
                tracing::warn!(service = s.name, "did not stop within {:.0?}; killing it", s.stop_timeout);
                self.event(i, &format!("did not stop within {:.0?}; sending SIGKILL", s.stop_timeout));
                let _ = signal::killpg(group, Signal::SIGKILL);
                while self.procs[i].pid.is_some() {
                    self.reap();
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        self.kill_adopted();
        for st in &mut self.state.services {
            if matches!(st.state, Phase::Waiting | Phase::Starting | Phase::Running | Phase::Backoff | Phase::Stopping)
            {
                st.state = Phase::Stopped;
            }
        }
        self.reap();
    }
}

impl Supervisor {
    /// Kills what is left of the services outside their process groups: descendants that
    /// called setsid or setpgid and were reparented to us when their parent died.
    fn kill_adopted(&mut self) {
        for sig in [Signal::SIGTERM, Signal::SIGKILL] {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let children = platform::child_pids();
                if children.is_empty() {
                    return;
                }
                if Instant::now() >= deadline {
                    break;
                }
                for pid in &children {
                    let _ = signal::kill(Pid::from_raw(*pid as i32), sig);
                }
                std::thread::sleep(Duration::from_millis(20));
                self.reap();
            }
        }
    }
}

impl Supervisor {
    /// An event line in service `i`'s log.
    fn event(&self, i: usize, text: &str) {
        if let Some(log) = &self.logs[i] {
            log.event(text);
        }
    }

    fn ready_event(&self, i: usize) {
        let how = match &self.plan.services[i].ready {
            Ready::Http(path) => format!("http {path}"),
            Ready::Tcp => "tcp".into(),
            Ready::Started(grace) => format!("started_ms {}", grace.as_millis()),
        };
        self.event(i, &format!("ready after {:.0?} ({how})", self.procs[i].started.elapsed()));
    }
}
