//! What the supervisor tells the other `stigmer server` commands: `run/supervisor.lock`, held by
//! the supervisor for its whole life (so a killed supervisor never leaves a stale lock: the
//! kernel drops it with the process), and `run/state.json`, rewritten atomically on every change.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

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

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct ServiceState {
    pub(crate) name: String,
    pub(crate) state: Phase,
    pub(crate) pid: Option<u32>,
    /// Unix seconds when the current process started.
    pub(crate) since: Option<u64>,
    pub(crate) restarts: u32,
    /// Unix seconds when it first became ready in this supervisor's life.
    pub(crate) ready_at: Option<u64>,
    pub(crate) port: Option<u16>,
    pub(crate) addr: Option<String>,
    pub(crate) last_exit: Option<String>,
    pub(crate) message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct State {
    pub(crate) supervisor_pid: u32,
    pub(crate) started: u64,
    /// Set once every service is ready (or the start failed, with `error`).
    pub(crate) ready: bool,
    pub(crate) error: Option<String>,
    /// The supervisor has finished: everything it started is gone.
    pub(crate) exited: bool,
    pub(crate) services: Vec<ServiceState>,
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

    fn lock_path(&self) -> PathBuf {
        self.dir.join("supervisor.lock")
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Takes the one-supervisor-per-home lock, or None if a live supervisor holds it.
    pub(crate) fn try_lock(&self) -> io::Result<Option<File>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.lock_path())?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Whether a supervisor is alive for this home (its lock is held).
    pub(crate) fn supervisor_alive(&self) -> io::Result<bool> {
        Ok(self.try_lock()?.is_none())
    }

    pub(crate) fn read(&self) -> Option<State> {
        let text = fs::read_to_string(self.state_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub(crate) fn write(&self, state: &State) -> io::Result<()> {
        let tmp = self.dir.join(format!(".state.json.tmp-{}", std::process::id()));
        fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
        fs::rename(&tmp, self.state_path())
    }
}
