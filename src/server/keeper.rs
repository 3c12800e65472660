//! The keeper: the parent of a detached supervisor (`stigmer server --keep`, process name
//! `stigmer-keeper`), part of the server the user started and gone with it. A cgroup kills
//! nothing by itself and a parent-death signal reaches only a direct child, so something must
//! outlive a supervisor that is SIGKILLed to end what its services left: the keeper is a child
//! subreaper, so every orphan of every service comes to it once the supervisor is gone; it then
//! kills the server's cgroup (if the supervisor made one) and every process reparented to it,
//! and exits. It does nothing else: it forwards SIGTERM, SIGINT and SIGHUP to the supervisor
//! (which gets SIGTERM if the keeper itself dies) and writes its few lines to supervisor.log.
//! It is single-threaded and sleeps in waitid until the supervisor ends.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

use super::logs::{self, ServiceLog};
use super::state::{self, HomeLock};
use crate::home::Home;
use crate::platform;

/// The supervisor's pid while it is ours to signal: our child, not yet reaped (0 after).
static SUPERVISOR: AtomicI32 = AtomicI32::new(0);

/// Forwards the signal to the supervisor at once (kill is async-signal-safe).
extern "C" fn forward(sig: i32) {
    let pid = SUPERVISOR.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(pid, sig) };
    }
}

/// How long the keeper tries to end what a dead supervisor left (SIGKILL cannot be ignored;
/// only a process stuck in the kernel takes longer).
const CLEAN_UP_WITHIN: Duration = Duration::from_secs(10);

/// Runs the keeper until the supervisor has exited and nothing of its services is left; the
/// supervisor's exit code (128 + signal when killed).
pub(crate) fn run(home: &Home) -> anyhow::Result<i32> {
    let Some(lock) = HomeLock::inherited(home) else { bail!("the keeper runs only as started by `stigmer server`") };
    platform::name_process(c"stigmer-keeper");
    platform::become_subreaper().context("becoming a child subreaper")?;
    let log = ServiceLog::open(&home.logs(), super::spec::RESERVED, logs::Settings::default(), None)
        .context("opening supervisor.log")?;
    let me = std::process::id();
    let exe = std::env::current_exe().context("cannot tell where this stigmer binary is")?;
    let lock_fd = lock.raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(["server", "--supervise"]).stdin(Stdio::null());
    // SAFETY: inheritable and die_with_parent only make async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            state::inheritable(lock_fd)?;
            platform::die_with_parent(me, Signal::SIGTERM)
        });
    }
    let supervisor = cmd.spawn().context("starting the supervisor")?.id();
    SUPERVISOR.store(supervisor as i32, Ordering::SeqCst);
    let action = SigAction::new(SigHandler::Handler(forward), SaFlags::SA_RESTART, SigSet::empty());
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only reads an atomic and calls kill.
        unsafe { signal::sigaction(sig, &action) }.context("installing signal handlers")?;
    }
    // The start pipe is the supervisor's now: the CLI waits for its end of file.
    if let Some(fd) = crate::env::var(super::supervisor::START_FD_VAR).and_then(|v| v.parse::<i32>().ok()) {
        // SAFETY: `stigmer server` passed this fd down; the supervisor has its own copy.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    log.event(&format!("keeper (pid {me}): started the supervisor (pid {supervisor})"));
    // Waits for the supervisor's end without reaping it, so the handler never signals a pid
    // that is no longer ours; then reaps it.
    let pid = Pid::from_raw(supervisor as i32);
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(Errno::EINTR) => continue,
            Err(e) => bail!("waiting for the supervisor (pid {supervisor}): {e}"),
            Ok(_) => break,
        }
    }
    SUPERVISOR.store(0, Ordering::SeqCst);
    let code = match waitpid(pid, None) {
        Ok(WaitStatus::Exited(_, code)) => code,
        Ok(WaitStatus::Signaled(_, sig, _)) => {
            log.event(&format!(
                "keeper: the supervisor (pid {supervisor}) was killed by {}; ending what its services left",
                sig.as_str()
            ));
            128 + sig as i32
        }
        other => bail!("reaping the supervisor (pid {supervisor}): {other:?}"),
    };
    let ended = end_what_is_left(supervisor);
    if ended > 0 {
        log.event(&format!("keeper: ended {ended} processes the services left"));
    }
    // Released by the kernel as this process exits, not before: a `stop` that waits for the
    // lock returns once nothing of the server is left.
    std::mem::forget(lock);
    Ok(code)
}

/// Kills the server cgroup of SUPERVISOR and every process reparented to us, until neither is
/// left; how many of our children it ended.
fn end_what_is_left(supervisor: u32) -> usize {
    let cgroup = platform::Cgroup::of_server(supervisor);
    let me = std::process::id();
    let deadline = Instant::now() + CLEAN_UP_WITHIN;
    let mut ended = std::collections::BTreeSet::new();
    loop {
        if let Some(cgroup) = &cgroup {
            let _ = cgroup.kill();
        }
        // Our children (orphans reparented to us), killed before they are reaped: their pids
        // cannot have been reused.
        let children: Vec<u32> = platform::proc_table().iter().filter(|p| p.ppid == me).map(|p| p.pid).collect();
        for pid in &children {
            let _ = signal::kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        ended.extend(children.iter().copied());
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        let populated = cgroup.as_ref().is_some_and(|c| c.populated());
        if (children.is_empty() && !populated) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(cgroup) = &cgroup {
        cgroup.remove();
    }
    ended.len()
}
