//! Unix primitives shared by Linux and macOS: exec in place, signal state, terminal checks.

use std::ffi::{CStr, CString};
use std::io::IsTerminal;

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};

/// Undoes what the Rust runtime changed, so the component starts as if exec'd directly:
/// std ignores SIGPIPE, and an ignored signal stays ignored across exec.
pub(crate) fn reset_signals_for_exec() {
    // SAFETY: restoring the default disposition installs no handler.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Replaces this process with `path`; returns only on failure.
pub(crate) fn exec_path(path: &CStr, argv: &[CString], envp: &[CString]) -> Errno {
    reset_signals_for_exec();
    let Err(errno) = nix::unistd::execve::<CString, CString>(path, argv, envp);
    errno
}

pub(crate) fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

pub(crate) fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

pub(crate) fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Bytes an unprivileged user may still write on the filesystem holding `path`.
pub(crate) fn free_space(path: &std::path::Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Whether this process may open `path` for writing as its mode bits stand now: for a
/// read-only file, only a process that overrides file modes (root, CAP_DAC_OVERRIDE) may.
/// The cache asks it of a read-only entry point to learn whether the modes of a cached tree
/// bind this process. One faccessat(AT_EACCESS); false on any error (missing, read-only mount).
pub(crate) fn may_write(path: &std::path::Path) -> bool {
    use nix::unistd::{AccessFlags, faccessat};
    faccessat(nix::fcntl::AT_FDCWD, path, AccessFlags::W_OK, nix::fcntl::AtFlags::AT_EACCESS).is_ok()
}
