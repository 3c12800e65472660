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

/// The peer's uid (getpeereid); no pid here (0, as for a peer outside our PID namespace).
pub(crate) fn peer_process(stream: &std::os::unix::net::UnixStream) -> io::Result<(u32, u32)> {
    #[cfg(not(target_os = "linux"))]
    {
        let (uid, _) = nix::unistd::getpeereid(stream)?;
        Ok((uid.as_raw(), 0))
    }
    // Only the Linux test build's compile check of this file gets here (getpeereid is BSD's).
    #[cfg(target_os = "linux")]
    {
        let _ = stream;
        Err(io::ErrorKind::Unsupported.into())
    }
}

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
pub(crate) fn die_with_parent(_parent: u32, _signal: nix::sys::signal::Signal) -> io::Result<()> {
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

#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcEntry {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
}

pub(crate) fn proc_table() -> Vec<ProcEntry> {
    Vec::new()
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

/// No abstract socket namespace here.
pub(crate) fn send_to_abstract(
    _sock: &std::os::unix::net::UnixDatagram,
    _name: &[u8],
    _bytes: &[u8],
) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}

pub(crate) fn name_process(_name: &std::ffi::CStr) {}

pub(crate) fn process_state(_pid: u32) -> Option<char> {
    None
}

pub(crate) fn join_cgroup(_procs: &std::ffi::CStr) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// No cgroups here: the supervisor contains its services with process groups.
pub(crate) fn cgroup_for_services() -> Result<std::path::PathBuf, String> {
    Err("this platform has no cgroups".into())
}

pub(crate) struct Cgroup(std::convert::Infallible);

impl Cgroup {
    pub(crate) fn create_for_server() -> Result<Cgroup, String> {
        Err("this platform has no cgroups".into())
    }

    pub(crate) fn of_server(_pid: u32) -> Option<Cgroup> {
        None
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        match self.0 {}
    }

    pub(crate) fn child(&self, _name: &str) -> io::Result<Cgroup> {
        match self.0 {}
    }

    pub(crate) fn procs_file(&self) -> std::ffi::CString {
        match self.0 {}
    }

    pub(crate) fn holds(&self, _pid: u32) -> bool {
        match self.0 {}
    }

    pub(crate) fn kill(&self) -> io::Result<()> {
        match self.0 {}
    }

    pub(crate) fn populated(&self) -> bool {
        match self.0 {}
    }

    pub(crate) fn remove(&self) {
        match self.0 {}
    }
}
