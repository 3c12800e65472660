//! The platform facade: every `cfg(target_os)` lives here, behind functions with the same
//! signatures on each platform, so the runners and applets never branch on the OS.

mod unix;
pub(crate) use unix::*;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
mod macos;
#[cfg(not(target_os = "linux"))]
pub(crate) use macos::*;

/// Why a component could not be started from a memfd.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MemfdError {
    /// This machine cannot execute memfds (old kernel, seccomp, vm.memfd_noexec, macOS).
    #[error("memfd execution is not available here: {0}")]
    Unavailable(String),
    #[error("{step}: {source}")]
    Failed { step: &'static str, source: std::io::Error },
}
