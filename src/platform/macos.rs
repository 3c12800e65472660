//! macOS (and other non-Linux Unix): no memfd, so every component runs from the cache.
//! Not built or tested on this project's Linux CI; keep it this small.

use std::ffi::CString;
use std::fs::File;
use std::io;

use super::MemfdError;

pub(crate) fn exec_memfd(_name: &str, _cloexec: bool) -> Result<File, MemfdError> {
    Err(MemfdError::Unavailable("this platform has no memfd".into()))
}

pub(crate) fn seal_memfd(_file: &File) -> Result<(), MemfdError> {
    Err(MemfdError::Unavailable("this platform has no memfd".into()))
}

pub(crate) fn exec_memfd_fd(_file: &File, _keep_open: bool, _argv: &[CString], _envp: &[CString]) -> MemfdError {
    MemfdError::Unavailable("this platform has no memfd".into())
}

/// No memfd execution here: everything runs from the cache.
pub(crate) const MEMFD_EXEC: bool = false;

pub(crate) fn splice_file(_from: &File, _offset: u64, _len: u64, _to: &File) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

pub(crate) fn file_offset_of(_ptr: *const u8) -> Option<u64> {
    None
}

/// Mach-O has LC_UUID instead; the caller falls back to version + payload digests.
pub(crate) fn gnu_build_id() -> Option<Vec<u8>> {
    None
}

/// fsyncs every file and directory under `dir` (there is no syncfs).
pub(crate) fn sync_tree(dir: &std::path::Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}

pub(crate) fn open_self() -> io::Result<File> {
    File::open(std::env::current_exe()?)
}

/// No parent-death signal on macOS: services are still in their own process groups, which the
/// supervisor kills on every way out it controls.
pub(crate) fn die_with_parent(_parent: u32) -> io::Result<()> {
    Ok(())
}

pub(crate) fn become_subreaper() -> io::Result<()> {
    Ok(())
}

pub(crate) fn noexec_mount(_path: &std::path::Path) -> Option<std::path::PathBuf> {
    None
}

pub(crate) fn memfd_support() -> (Result<(), String>, Option<String>) {
    (Err("this platform has no memfd; every component runs from the cache".into()), None)
}

/// No PID namespaces here: the supervisor runs as it is, with process groups.
pub(crate) struct PidNamespacePrep;

pub(crate) fn prepare_pid_namespace() -> PidNamespacePrep {
    PidNamespacePrep
}

impl PidNamespacePrep {
    pub(crate) fn enter(&self) -> io::Result<()> {
        Ok(())
    }
}

pub(crate) fn pid_namespace_kind() -> Option<&'static str> {
    None
}

pub(crate) fn host_pid() -> u32 {
    std::process::id()
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcEntry {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
}

pub(crate) fn proc_table() -> Vec<ProcEntry> {
    Vec::new()
}

pub(crate) fn local_pid(pid: u32) -> Option<u32> {
    Some(pid)
}

pub(crate) fn environ_has(_pid: u32, _entry: &str) -> bool {
    false
}

/// No SCM_CREDENTIALS: datagrams are read without a sender, which attributes none of them.
pub(crate) fn recv_with_pid(sock: &std::os::unix::net::UnixDatagram) -> io::Result<Option<(Vec<u8>, Option<u32>)>> {
    let mut buf = vec![0u8; 4096];
    sock.set_nonblocking(true)?;
    match sock.recv(&mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some((buf, None)))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn pass_credentials(_sock: &std::os::unix::net::UnixDatagram) -> io::Result<()> {
    Ok(())
}

pub(crate) fn peer_uid(stream: &std::os::unix::net::UnixStream) -> io::Result<u32> {
    #[cfg(not(target_os = "linux"))]
    {
        let (uid, _) = nix::unistd::getpeereid(stream)?;
        Ok(uid.as_raw())
    }
    // Only the Linux test build's compile check of this file gets here (getpeereid is BSD's).
    #[cfg(target_os = "linux")]
    {
        let _ = stream;
        Err(io::ErrorKind::Unsupported.into())
    }
}

pub(crate) fn pid_namespace_probe() -> Option<&'static str> {
    None
}

/// No abstract socket namespace here.
pub(crate) fn send_to_abstract(
    _sock: &std::os::unix::net::UnixDatagram,
    _name: &[u8],
    _bytes: &[u8],
) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}

pub(crate) fn host_pid_of_child(local: u32) -> Option<u32> {
    Some(local)
}
