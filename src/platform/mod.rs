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

/// The macOS side compiled in the Linux test build: nothing else here checks that it still
/// builds, or that it keeps the Linux signatures the runners and applets are written against.
#[cfg(all(test, target_os = "linux"))]
#[path = "macos.rs"]
#[allow(dead_code)]
mod macos_on_linux;

#[cfg(all(test, target_os = "linux"))]
mod facade {
    use std::ffi::{CStr, CString};
    use std::fs::File;
    use std::io;
    use std::os::unix::net::{UnixDatagram, UnixStream};
    use std::path::{Path, PathBuf};

    use super::MemfdError;

    type Received = io::Result<Option<(Vec<u8>, Option<u32>)>>;

    /// Binds each facade function of both platforms to one type: a signature that drifts on
    /// either side fails to compile. A type may name the platform's own types as `plat::T`.
    /// Returns the names, to check the list is complete.
    macro_rules! same_signatures {
        ($($name:ident: $ty:ty = |$($arg:ident),*| ;)*) => {{
            $(
                {
                    use super::linux as plat;
                    let _linux: $ty = |$($arg),*| plat::$name($($arg),*);
                }
                {
                    use super::macos_on_linux as plat;
                    let _macos: $ty = |$($arg),*| plat::$name($($arg),*);
                }
            )*
            vec![$(stringify!($name)),*]
        }};
    }

    /// The constants of the facade exist on both sides with the same type.
    const _: [bool; 2] = [super::linux::MEMFD_EXEC, super::macos_on_linux::MEMFD_EXEC];

    fn checked() -> Vec<&'static str> {
        same_signatures! {
            exec_memfd: fn(&str, bool) -> Result<File, MemfdError> = |a, b|;
            seal_memfd: fn(&File) -> Result<(), MemfdError> = |a|;
            exec_memfd_fd: fn(&File, bool, &[CString], &[CString]) -> MemfdError = |a, b, c, d|;
            splice_file: fn(&File, u64, u64, &File) -> io::Result<()> = |a, b, c, d|;
            file_offset_of: fn(*const u8) -> Option<u64> = |a|;
            gnu_build_id: fn() -> Option<Vec<u8>> = | |;
            sync_tree: fn(&Path) -> io::Result<()> = |a|;
            open_self: fn() -> io::Result<File> = | |;
            die_with_parent: fn(u32, nix::sys::signal::Signal) -> io::Result<()> = |a, b|;
            become_subreaper: fn() -> io::Result<()> = | |;
            noexec_mount: fn(&Path) -> Option<PathBuf> = |a|;
            memfd_support: fn() -> (Result<(), String>, Option<String>) = | |;
            proc_table: fn() -> Vec<plat::ProcEntry> = | |;
            environ_has: fn(u32, &str) -> bool = |a, b|;
            recv_with_pid: fn(&UnixDatagram) -> Received = |a|;
            pass_credentials: fn(&UnixDatagram) -> io::Result<()> = |a|;
            send_to_abstract: fn(&UnixDatagram, &[u8], &[u8]) -> io::Result<usize> = |a, b, c|;
            peer_process: fn(&UnixStream) -> io::Result<(u32, u32)> = |a|;
            name_process: fn(&CStr) = |a|;
            process_state: fn(u32) -> Option<char> = |a|;
            join_cgroup: fn(&CStr) -> io::Result<()> = |a|;
            cgroup_for_services: fn() -> Result<PathBuf, String> = | |;
        }
    }

    /// Every `pub(crate) fn` of linux.rs is in the list above (so it exists on macOS too, with
    /// the same type). A new Linux function fails here until macos.rs has its twin.
    #[test]
    fn macos_implements_every_linux_function_with_the_same_signature() {
        let linux_fns: Vec<&str> = include_str!("linux.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub(crate) fn "))
            .filter_map(|rest| rest.split(['(', '<']).next())
            .collect();
        let mut listed = checked();
        let mut expected = linux_fns.clone();
        listed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed, expected, "platform functions of linux.rs vs the facade list in platform/mod.rs");
    }
}
