//! What a supervisor reports about itself (the `status` reply of the control protocol), the
//! one-server-per-home lock (a flock on the home directory itself) and the sockets of
//! `$STIGMER_HOME/run`: the control socket and one notify socket per notify service. No pid is
//! ever read back from a file: who runs is what answers on the control socket, and what holds
//! the lock.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::home::Home;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Phase {
    Waiting,
    Starting,
    Running,
    Backoff,
    Failed,
    Stopping,
    Stopped,
    External,
}

/// One service as `status` shows it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct ServiceStatus {
    pub(crate) name: String,
    pub(crate) state: Phase,
    /// As /proc and `kill` from outside number it.
    pub(crate) pid: Option<u32>,
    /// Unix seconds when the current process started.
    pub(crate) since: Option<u64>,
    pub(crate) restarts: u32,
    /// Unix seconds when it was last found ready.
    pub(crate) ready_at: Option<u64>,
    pub(crate) port: Option<u16>,
    pub(crate) addr: Option<String>,
    pub(crate) last_exit: Option<String>,
    pub(crate) message: Option<String>,
    /// The service's own `STATUS=` (sd_notify).
    pub(crate) status: Option<String>,
    /// "healthy" / "unhealthy" for a service with a health check, once probed.
    pub(crate) health: Option<String>,
    pub(crate) health_error: Option<String>,
}

/// How far the supervisor holds its services' processes.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct Containment {
    /// "cgroup" (a cgroup v2 per service, ended with cgroup.kill) or "process-groups".
    pub(crate) kind: String,
    /// The server's cgroup, or why there is none.
    pub(crate) detail: String,
    /// What can get away, when something can.
    pub(crate) escapes: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct StatusReport {
    pub(crate) version: String,
    pub(crate) build: String,
    pub(crate) supervisor_pid: u32,
    /// The supervisor's parent, which ends what is left if the supervisor dies (none under
    /// `--foreground`).
    pub(crate) keeper_pid: Option<u32>,
    pub(crate) started: u64,
    /// Every service was ready once (the start is over).
    pub(crate) ready: bool,
    pub(crate) containment: Containment,
    /// In configuration order.
    pub(crate) services: Vec<ServiceStatus>,
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    pub(crate) fn new(home: &Home) -> io::Result<Self> {
        let dir = home.run();
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        Ok(Self { dir })
    }

    pub(crate) fn control_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// Service NAME's own notify socket: the socket a datagram arrives on says which service
    /// speaks, whatever pid its credentials claim.
    pub(crate) fn notify_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("notify-{name}.sock"))
    }
}

/// Where `stigmer server` passes the lock to the server it detaches.
pub(crate) const LOCK_FD_VAR: &str = "STIGMER_LOCK_FD";

/// The one-server-per-home lock: an exclusive flock on the home directory itself (a read-only
/// directory fd). `stigmer server` takes it before it detaches a server, so a `stop` at any
/// moment of a start finds the server; the keeper and the supervisor inherit it and hold it for
/// their lives. Deleting `run/` or anything else in the home does not release it: the kernel
/// drops it with the last process holding it, however that process ends.
pub(crate) struct HomeLock(File);

fn open_home_dir(home: &Home) -> io::Result<File> {
    fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(home.root())
}

impl HomeLock {
    /// Takes the lock, or None if a server (running or starting) holds it.
    pub(crate) fn try_take(home: &Home) -> io::Result<Option<HomeLock>> {
        let dir = open_home_dir(home)?;
        match dir.try_lock() {
            Ok(()) => Ok(Some(HomeLock(dir))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// The lock for a new server. Another command may hold it for an instant to see whether a
    /// server lives (`held`), so a short wait tells that apart from a live one.
    pub(crate) fn take(home: &Home) -> io::Result<Option<HomeLock>> {
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            match Self::try_take(home)? {
                Some(lock) => return Ok(Some(lock)),
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                None => return Ok(None),
            }
        }
    }

    /// Whether a server (running, starting, or its keeper ending what is left) holds the lock.
    pub(crate) fn held(home: &Home) -> io::Result<bool> {
        Ok(Self::try_take(home)?.is_none())
    }

    /// The lock `stigmer server` (or the keeper) passed down to this process, if it is this
    /// home's and held: the variable names an fd that must be the home directory, locked by
    /// its open file (a second flock on the same open file succeeds; any other fails).
    pub(crate) fn inherited(home: &Home) -> Option<HomeLock> {
        let fd: i32 = crate::env::var(LOCK_FD_VAR)?.parse().ok()?;
        // SAFETY: F_GETFD only asks whether the fd is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return None;
        }
        // SAFETY: an open fd our parent passed for us to own; nothing else here refers to it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let _ = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
        let ours = fs::metadata(home.root()).ok()?;
        let meta = file.metadata().ok()?;
        let same = meta.is_dir() && (meta.dev(), meta.ino()) == (ours.dev(), ours.ino());
        (same && file.try_lock().is_ok()).then_some(HomeLock(file))
    }

    /// The variable and fd that pass this lock to a child; the fd must be made inheritable
    /// between fork and exec (`inheritable`).
    pub(crate) fn pass(&self) -> (&'static str, String) {
        (LOCK_FD_VAR, self.0.as_raw_fd().to_string())
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        self.0.as_raw_fd()
    }
}

/// Between fork and exec: clears close-on-exec on FD so the program keeps it.
pub(crate) fn inheritable(fd: i32) -> io::Result<()> {
    // SAFETY: F_SETFD on an fd of this process, async-signal-safe.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
