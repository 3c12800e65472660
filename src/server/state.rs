//! What a supervisor reports about itself (the `status` reply of the control protocol) and the
//! files of `$STIGMER_HOME/run`: `supervisor.lock`, held by the supervisor for its whole life
//! (the kernel drops it with the process, so a killed supervisor never leaves a stale lock), the
//! control socket and the notify socket. No pid is ever read back from a file: who runs is what
//! answers on the control socket.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
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
    /// "pid-namespace", "user+pid-namespace" or "process-groups".
    pub(crate) kind: String,
    /// What can get away, when something can.
    pub(crate) escapes: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct StatusReport {
    pub(crate) version: String,
    pub(crate) build: String,
    pub(crate) supervisor_pid: u32,
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

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.dir.join("supervisor.lock")
    }

    pub(crate) fn control_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    pub(crate) fn notify_path(&self) -> PathBuf {
        self.dir.join("notify.sock")
    }

    /// Takes the one-supervisor-per-home lock, or None if a live supervisor holds it.
    pub(crate) fn try_lock(&self) -> io::Result<Option<File>> {
        let file = crate::home::files::open_lock(&self.lock_path())?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// The lock for a new supervisor. Another command may hold it for an instant to see whether
    /// a supervisor lives (`lock_held`), so a short wait tells that apart from a live one.
    pub(crate) fn lock_for_supervisor(&self) -> io::Result<Option<File>> {
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            match self.try_lock()? {
                Some(file) => return Ok(Some(file)),
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                None => return Ok(None),
            }
        }
    }

    /// Whether some process holds the supervisor lock (a supervisor alive, or starting).
    pub(crate) fn lock_held(&self) -> io::Result<bool> {
        Ok(self.try_lock()?.is_none())
    }
}
