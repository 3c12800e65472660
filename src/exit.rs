//! The launcher's own exit codes (as in coreutils' env/timeout and POSIX shells). A component's
//! own exit status is never mapped: exec in place hands it to the caller untouched.

use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// The CLI applet reported a problem it found (verify, install-links).
    Failure = 1,
    /// The launcher failed: a corrupt embedded payload, a bad setting, a bug.
    Internal = 125,
    /// The component exists but cannot be executed here (memfd forced but unavailable, unsafe
    /// or unwritable cache, exec error, recursion).
    CannotExecute = 126,
    /// No component has that name.
    NotFound = 127,
}

impl From<Status> for ExitCode {
    fn from(status: Status) -> Self {
        ExitCode::from(status as u8)
    }
}
