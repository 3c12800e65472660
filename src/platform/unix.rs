//! Unix primitives shared by Linux and macOS: exec in place, signal state, terminal checks.

use std::ffi::{CStr, CString};
use std::io::IsTerminal;
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, Signal, signal};

/// SIGPIPE's disposition when the process started, restored before any exec.
static SIGPIPE_AT_START: OnceLock<SigHandler> = OnceLock::new();

/// What std's runtime does before a Rust `main` and stigmer relies on (`main` is the C entry
/// point, src/main.rs): the standard fds 0-2 open, a closed one on /dev/null, so that no file
/// stigmer opens becomes a component's stdin, stdout or stderr; SIGPIPE ignored, so a closed
/// pipe or socket is an EPIPE error to handle rather than death (the launcher's own messages,
/// the supervisor's clients).
pub(crate) fn process_start() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the fd's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 && Errno::last() == Errno::EBADF {
            // Lands on the lowest free fd: this one (those below it are open). Kept open for life.
            // SAFETY: a plain open of a constant path.
            if unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } == -1 {
                std::process::abort();
            }
        }
    }
    // SAFETY: ignoring a signal installs no handler.
    if let Ok(old) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) } {
        let _ = SIGPIPE_AT_START.set(old);
    }
}

/// Undoes what stigmer changed, so the component starts as if exec'd directly: SIGPIPE as the
/// process found it (an ignored signal stays ignored across exec). The signal mask is the
/// caller's: stigmer never blocks a signal on the way to an exec.
pub(crate) fn reset_signals_for_exec() {
    let at_start = SIGPIPE_AT_START.get().copied().unwrap_or(SigHandler::SigDfl);
    // SAFETY: at exec a process can only have found SIG_DFL or SIG_IGN: no handler is installed.
    let _ = unsafe { signal(Signal::SIGPIPE, at_start) };
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

/// Asked once: the launcher checks ownership several times on every start.
pub(crate) fn effective_uid() -> u32 {
    static EUID: OnceLock<u32> = OnceLock::new();
    *EUID.get_or_init(|| nix::unistd::geteuid().as_raw())
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
