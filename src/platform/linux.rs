//! Linux: executing from a sealed memfd, locating the payload in our own file, syncing a tree.

use std::ffi::{CString, c_int, c_void};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use super::MemfdError;

/// A new, empty memfd named `name` that can be sealed and executed: the one capability probe
/// the memfd runner and doctor share. Kernels before 6.3 do not know
/// MFD_EXEC (EINVAL; their memfds are executable anyway); vm.memfd_noexec=1 makes new memfds
/// non-executable unless asked, =2 refuses MFD_EXEC (EACCES) or leaves them non-executable.
pub(crate) fn exec_memfd(name: &str, cloexec: bool) -> Result<File, MemfdError> {
    let cname = CString::new(name).map_err(|e| MemfdError::Failed { step: "memfd name", source: e.into() })?;
    let exec = MFdFlags::from_bits_retain(libc::MFD_EXEC);
    let mut flags = MFdFlags::MFD_ALLOW_SEALING | exec;
    if cloexec {
        flags |= MFdFlags::MFD_CLOEXEC;
    }
    let fd = match memfd_create(cname.as_c_str(), flags) {
        Err(Errno::EINVAL) => memfd_create(cname.as_c_str(), flags.difference(exec)),
        other => other,
    }
    .map_err(|e| match e {
        Errno::ENOSYS | Errno::EACCES | Errno::EPERM => MemfdError::Unavailable(format!("memfd_create: {e}")),
        e => MemfdError::Failed { step: "memfd_create", source: e.into() },
    })?;
    let file = File::from(fd);
    let mode =
        file.metadata().map_err(|source| MemfdError::Failed { step: "fstat memfd", source })?.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(MemfdError::Unavailable("new memfds are not executable (vm.memfd_noexec)".into()));
    }
    Ok(file)
}

const FULL_SEALS: SealFlag =
    SealFlag::F_SEAL_SHRINK.union(SealFlag::F_SEAL_GROW).union(SealFlag::F_SEAL_WRITE).union(SealFlag::F_SEAL_SEAL);

/// Seals a filled memfd against writes, growth, shrinking and further seals: from here on
/// its bytes are fixed for everyone who holds it.
pub(crate) fn seal_memfd(file: &File) -> Result<(), MemfdError> {
    fcntl(file, FcntlArg::F_ADD_SEALS(FULL_SEALS))
        .map(drop)
        .map_err(|e| MemfdError::Failed { step: "sealing the memfd", source: e.into() })
}

/// Executes the sealed memfd `file` in place of this process. `keep_open` leaves the fd open
/// across exec, which `#!` scripts need: the kernel hands the interpreter /dev/fd/N.
pub(crate) fn exec_memfd_fd(file: &File, keep_open: bool, argv: &[CString], envp: &[CString]) -> MemfdError {
    if keep_open && let Err(e) = fcntl(file, FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())) {
        return MemfdError::Failed { step: "clearing close-on-exec", source: e.into() };
    }
    super::reset_signals_for_exec();
    let Err(errno) = nix::unistd::fexecve::<_, CString, CString>(file.as_fd(), argv, envp);
    match errno {
        Errno::EACCES | Errno::EPERM => MemfdError::Unavailable(format!("fexecve: {errno}")),
        e => MemfdError::Failed { step: "fexecve", source: e.into() },
    }
}

/// Whether this platform can execute a program from a memfd at all (the runner policy asks).
pub(crate) const MEMFD_EXEC: bool = true;

/// Copies `len` bytes of `from` starting at `offset` into `to`, in the kernel.
pub(crate) fn splice_file(from: &File, offset: u64, len: u64, to: &File) -> io::Result<()> {
    let mut off = offset as libc::off64_t;
    let end = off + len as libc::off64_t;
    while off < end {
        let count = (end - off) as usize;
        let n = nix::sys::sendfile::sendfile64(to, from, Some(&mut off), count)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// The offset in the main executable's file of the mapped byte at `ptr`.
pub(crate) fn file_offset_of(ptr: *const u8) -> Option<u64> {
    struct Search {
        addr: usize,
        found: Option<u64>,
    }
    unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: the loader passes a valid info for the duration of the call, and data is the
        // &mut Search given below.
        let (info, search) = unsafe { (&*info, &mut *(data as *mut Search)) };
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        for h in headers.iter().filter(|h| h.p_type == libc::PT_LOAD) {
            let start = info.dlpi_addr as usize + h.p_vaddr as usize;
            if (start..start + h.p_filesz as usize).contains(&search.addr) {
                search.found = Some(h.p_offset + (search.addr - start) as u64);
            }
        }
        1 // the first object is the main program; stop there
    }
    let mut search = Search { addr: ptr as usize, found: None };
    // SAFETY: visit matches the callback type and only touches `search` during the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), &mut search as *mut Search as *mut c_void) };
    search.found
}

/// The GNU build-id note of the main program (what `file` and debuggers show), if it was
/// linked with one (gcc and clang pass --build-id by default on most distributions).
pub(crate) fn gnu_build_id() -> Option<Vec<u8>> {
    unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: as in file_offset_of: a valid info during the call; data is our Option.
        let (info, found) = unsafe { (&*info, &mut *(data as *mut Option<Vec<u8>>)) };
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        for h in headers.iter().filter(|h| h.p_type == libc::PT_NOTE) {
            let start = info.dlpi_addr as usize + h.p_vaddr as usize;
            // SAFETY: a PT_NOTE segment is mapped (it lies within a PT_LOAD) for p_memsz bytes.
            let notes = unsafe { std::slice::from_raw_parts(start as *const u8, h.p_memsz as usize) };
            if let Some(id) = find_build_id(notes, if h.p_align == 8 { 8 } else { 4 }) {
                *found = Some(id.to_vec());
            }
        }
        1 // the first object is the main program
    }
    let mut found: Option<Vec<u8>> = None;
    // SAFETY: visit matches the callback type and only touches `found` during the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), &mut found as *mut Option<Vec<u8>> as *mut c_void) };
    found
}

/// The descriptor of the NT_GNU_BUILD_ID note in a PT_NOTE segment's bytes.
fn find_build_id(mut notes: &[u8], align: usize) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8], at: usize| b.get(at..at + 4).map(|w| u32::from_ne_bytes(w.try_into().unwrap()));
    let pad = |n: usize| n.div_ceil(align) * align;
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (word(notes, 0)? as usize, word(notes, 4)? as usize, word(notes, 8)?);
        let name = notes.get(12..12 + namesz)?;
        let desc_at = 12 + pad(namesz);
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc);
        }
        notes = notes.get(desc_at + pad(descsz)..)?;
    }
    None
}

/// Makes everything written under `dir` durable with one syncfs rather than an fsync per file.
pub(crate) fn sync_tree(dir: &std::path::Path) -> io::Result<()> {
    nix::unistd::syncfs(File::open(dir)?).map_err(io::Error::from)
}

/// `/proc/self/exe`: our own file, even if the path we were started from has since changed.
pub(crate) fn open_self() -> io::Result<File> {
    File::open("/proc/self/exe")
}

/// Runs in a service's child between fork and exec: die with the supervisor. The signal is
/// tied to the *thread* that forked, so services are spawned from the supervisor's main thread.
pub(crate) fn die_with_parent(parent: u32) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    // The parent may have died before the prctl took effect.
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return Err(io::Error::other("supervisor exited"));
    }
    Ok(())
}

/// Orphans of our services are reparented to us, so we reap them (no zombies) and they stay
/// in their service's process group for the final kill.
pub(crate) fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// The mount point holding `path` if that filesystem is mounted noexec (nothing on it can run).
pub(crate) fn noexec_mount(path: &std::path::Path) -> Option<std::path::PathBuf> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    if !st.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC) {
        return None;
    }
    let path = std::fs::canonicalize(path).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Field 5 is the mount point, with spaces and the like octal-escaped.
    let unescape = |s: &str| s.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\");
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(|m| std::path::PathBuf::from(unescape(m))))
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
}

/// Whether this process could execute a memfd now, and the vm.memfd_noexec setting, for doctor.
pub(crate) fn memfd_support() -> (Result<(), String>, Option<String>) {
    let sysctl = std::fs::read_to_string("/proc/sys/vm/memfd_noexec").ok().map(|s| s.trim().to_owned());
    let verdict = match exec_memfd("stigmer-doctor", true) {
        Ok(_) => Ok(()),
        Err(MemfdError::Unavailable(why)) => Err(why),
        Err(e) => Err(e.to_string()),
    };
    (verdict, sysctl)
}

/// Prepared before fork (no allocation may happen between fork and exec): what moving the
/// supervisor into a PID namespace of its own writes.
pub(crate) struct PidNamespacePrep {
    uid_map: String,
    gid_map: String,
}

pub(crate) fn prepare_pid_namespace() -> PidNamespacePrep {
    let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
    PidNamespacePrep { uid_map: format!("{uid} {uid} 1\n"), gid_map: format!("{gid} {gid} 1\n") }
}

impl PidNamespacePrep {
    /// Runs between fork and exec of the supervisor: makes it the init (pid 1) of a new PID
    /// namespace, so that the kernel kills every process of the services when it dies, however
    /// it dies (SIGKILL included) and however they detached (setsid, double fork). Root gets a
    /// plain PID namespace; a user tries an unprivileged user namespace mapping only itself.
    /// Neither possible: returns Ok and the supervisor runs as it is (process groups then).
    /// The process that unshared is not in the namespace itself; its child is, so it forks and
    /// the parent leaves at once (the caller learns the supervisor's fate over the start pipe).
    pub(crate) fn enter(&self) -> io::Result<()> {
        // SAFETY: every call below is async-signal-safe; the strings were built before fork.
        unsafe {
            if libc::unshare(libc::CLONE_NEWPID) != 0 {
                if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID) != 0 {
                    return Ok(());
                }
                for (path, text) in [
                    (c"/proc/self/setgroups", "deny"),
                    (c"/proc/self/uid_map", self.uid_map.as_str()),
                    (c"/proc/self/gid_map", self.gid_map.as_str()),
                ] {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let n = libc::write(fd, text.as_ptr().cast(), text.len());
                    libc::close(fd);
                    if n < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            match libc::fork() {
                -1 => Err(io::Error::last_os_error()),
                0 => Ok(()),
                _ => libc::_exit(0),
            }
        }
    }
}

/// Which containment this supervisor process got (see PidNamespacePrep::enter).
pub(crate) fn pid_namespace_kind() -> Option<&'static str> {
    if std::process::id() != 1 {
        return None;
    }
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let initial = map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    Some(if initial { "pid-namespace" } else { "user+pid-namespace" })
}

/// Our pid as the rest of the machine (and /proc) numbers it, even as the init of a namespace.
pub(crate) fn host_pid() -> u32 {
    std::fs::read_link("/proc/self").ok().and_then(|p| p.to_str()?.parse().ok()).unwrap_or_else(std::process::id)
}

/// One process as /proc (the host's numbering) shows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcEntry {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
}

/// Every live (not zombie) process /proc lists.
pub(crate) fn proc_table() -> Vec<ProcEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The fields after the parenthesised command name: state, ppid, ...
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            let state = fields.next()?;
            let ppid = fields.next()?.parse().ok()?;
            (state != "Z").then_some(ProcEntry { pid, ppid })
        })
        .collect()
}

/// The pid of host process PID in the innermost PID namespace it belongs to (ours, for the
/// services of a namespaced supervisor): the number kill() and waitpid() take here.
pub(crate) fn local_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().last()?.parse().ok()
}

/// Whether host process PID's initial environment holds ENTRY (`KEY=value`).
pub(crate) fn environ_has(pid: u32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|e| e == entry.as_bytes()))
        .unwrap_or(false)
}

/// Receives one datagram and the pid of its sender (SCM_CREDENTIALS); None when none waits.
pub(crate) fn recv_with_pid(sock: &std::os::unix::net::UnixDatagram) -> io::Result<Option<(Vec<u8>, Option<u32>)>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 4096];
    let mut space = nix::cmsg_space!(libc::ucred);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let msg = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT) {
        Ok(msg) => msg,
        Err(Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let pid = msg.cmsgs().ok().into_iter().flatten().find_map(|c| match c {
        ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid() as u32),
        _ => None,
    });
    let len = msg.bytes;
    buf.truncate(len);
    Ok(Some((buf, pid)))
}

/// Asks the kernel to attach the sender's credentials to every datagram (SO_PASSCRED).
pub(crate) fn pass_credentials(sock: &std::os::unix::net::UnixDatagram) -> io::Result<()> {
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::PassCred, &true).map_err(io::Error::from)
}

/// The uid of the process at the other end of a unix stream (SO_PEERCRED).
pub(crate) fn peer_uid(stream: &std::os::unix::net::UnixStream) -> io::Result<u32> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(cred.uid())
}

/// For doctor: which PID namespace a new supervisor would get, tried in a throwaway child.
pub(crate) fn pid_namespace_probe() -> Option<&'static str> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/bin/true");
    // SAFETY: unshare and _exit are async-signal-safe; the child never reaches exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWPID) == 0 {
                libc::_exit(10);
            }
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID) == 0 {
                libc::_exit(11);
            }
            libc::_exit(12)
        });
    }
    match cmd.status().ok()?.code() {
        Some(10) => Some("pid-namespace"),
        Some(11) => Some("user+pid-namespace"),
        _ => None,
    }
}

/// Sends BYTES to the abstract unix socket NAME (a NOTIFY_SOCKET of the form "@name").
pub(crate) fn send_to_abstract(
    sock: &std::os::unix::net::UnixDatagram,
    name: &[u8],
    bytes: &[u8],
) -> io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(bytes, &addr)
}

/// The host pid (as /proc numbers it) of our child LOCAL: a pidfd's fdinfo gives it in the
/// numbering of the /proc mount, without scanning /proc.
pub(crate) fn host_pid_of_child(local: u32) -> Option<u32> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, local as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd to us.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines().find_map(|l| l.strip_prefix("Pid:"))?.trim().parse().ok().filter(|&p: &u32| p > 0)
}
