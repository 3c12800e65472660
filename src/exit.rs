//! The launcher's own exit codes (as in coreutils' env/timeout and POSIX shells). A component's
//! own exit status is never mapped: exec in place hands it to the caller untouched.

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

/// What the process exits with: std's `ExitCode` without the runtime behind it. `main` is the
/// C entry point (src/main.rs), which hands this to `std::process::exit`, and std offers no
/// stable way to read its own ExitCode back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExitCode(u8);

impl ExitCode {
    pub(crate) const SUCCESS: ExitCode = ExitCode(0);

    pub(crate) fn code(self) -> i32 {
        i32::from(self.0)
    }
}

impl From<u8> for ExitCode {
    fn from(code: u8) -> Self {
        ExitCode(code)
    }
}

impl From<Status> for ExitCode {
    fn from(status: Status) -> Self {
        ExitCode(status as u8)
    }
}
