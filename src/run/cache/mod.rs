//! The cache runner: `$STIGMER_HOME/cache/<sha256>/NAME`, filled once and executed from disk.
//! It is the one place that decides, for each start: the entry as it is (`Entry::state`), a fill
//! when it is missing or changed, the in-use lock, the exec, and what an exec failure leads to.
//!
//! - store.rs: the cache directory, its locks, listing and removal (`cache clear`/`prune`);
//! - entry.rs: one component's entry, how it is checked and filled;
//! - stamp.rs: what a fill records and a start compares;
//! - verify.rs: `stigmer verify`, which hashes everything;
//! - pin.rs: the server's pinned copy of its own binary.
//!
//! Entries in use are kept: every run holds a shared flock on its entry's `.use` file, opened
//! without close-on-exec, for as long as the program (and whatever inherits the fd) lives.
//! Removal takes it exclusively without waiting, skips what it cannot get, and renames the entry
//! away while holding it; a start that finds its entry gone after taking the lock starts over
//! (refilling it). A refill moves the old item aside and deletes it only when no run holds it.

mod entry;
mod pin;
mod stamp;
mod store;
mod verify;

pub(crate) use entry::EntryState;
pub(crate) use pin::{SelfPin, pin_self};
pub(crate) use store::{CacheError, CacheRoot, Listed, Removal};

use std::convert::Infallible;
use std::ffi::CString;
use std::path::Path;

use nix::errno::Errno;

use super::RunError;
use crate::embed::{Component, Format, Kind};
use crate::home::Home;
use crate::platform;
use store::START_ATTEMPTS;

/// The cache runner: a trusted home, the entry filled and held in use, exec in place.
pub(super) fn exec(c: &'static Component, argv: &[CString], envp: &[CString]) -> Result<Infallible, RunError> {
    let root = CacheRoot::open(&Home::trusted()?)?;
    let entry = root.entry(c);
    // A PyInstaller onedir program finds its Python files through its own path, which Python
    // must decode: from a path that is not UTF-8 it fails deep in its bootstrap. Said at once.
    if c.format == Format::PyInstaller && matches!(c.kind, Kind::Dir(_)) && entry.exe().to_str().is_none() {
        return Err(RunError::NotUtf8 { name: c.name, path: entry.exe().display().to_string() });
    }
    let mut last = Errno::ENOENT;
    for _ in 0..START_ATTEMPTS {
        if entry.state()? != EntryState::Intact {
            entry.fill(false)?;
        }
        // Removed between the check and the lock: start over, which refills it.
        let Some(in_use) = entry.hold()? else { continue };
        let exe = entry.exe();
        tracing::debug!(component = c.name, path = %exe.display(), "runner=cache");
        let path = CString::new(exe.into_os_string().into_encoded_bytes()).unwrap_or_default();
        match platform::exec_path(&path, argv, envp) {
            // A concurrent refill swapped the item under our exec.
            Errno::ENOENT => last = Errno::ENOENT,
            // Someone holds the cached file open for writing: never run what they may be
            // changing; refill into a fresh file (renamed over, so theirs is detached) and run that.
            Errno::ETXTBSY => {
                last = Errno::ETXTBSY;
                drop(in_use);
                entry.fill(true)?;
            }
            errno => return Err(exec_error(&entry.exe(), errno)),
        }
    }
    Err(exec_error(&entry.exe(), last))
}

fn exec_error(exe: &Path, errno: Errno) -> RunError {
    let hint = if errno == Errno::EACCES && platform::noexec_mount(exe).is_some() {
        " (the cache is on a noexec mount: set STIGMER_HOME to a directory on another filesystem)"
    } else {
        ""
    };
    RunError::Exec { path: exe.display().to_string(), errno, hint }
}
