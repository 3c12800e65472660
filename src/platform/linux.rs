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

/// Runs in a child between fork and exec: SIGNAL when PARENT dies (a service gets SIGKILL when
/// the supervisor dies, the supervisor SIGTERM when its keeper does). The signal is tied to the
/// *thread* that forked, so services are spawned from the supervisor's main thread.
pub(crate) fn die_with_parent(parent: u32, signal: nix::sys::signal::Signal) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(signal)?;
    // The parent may have died before the prctl took effect.
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return Err(io::Error::other("the parent exited"));
    }
    Ok(())
}

/// Orphans of our descendants are reparented to us (not to init), so we reap them (no
/// zombies) and can end them.
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

/// One process as /proc shows it.
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

/// Whether process PID's initial environment holds ENTRY (`KEY=value`).
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

/// The uid and pid of the process at the other end of STREAM, as of connect (SO_PEERCRED).
/// The pid is 0 when that process is outside our PID namespace.
pub(crate) fn peer_process(stream: &std::os::unix::net::UnixStream) -> io::Result<(u32, u32)> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok((cred.uid(), cred.pid().max(0) as u32))
}

/// Names this process (its comm: what `ps -e`, `top` and `pgrep` show).
pub(crate) fn name_process(name: &std::ffi::CStr) {
    let _ = nix::sys::prctl::set_name(name);
}

/// The state letter of process PID (`ps`'s STAT: R, S, D, T stopped, t traced, Z zombie).
pub(crate) fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// Writes "0" to the cgroup.procs file PROCS: moves the calling process into that cgroup.
/// Async-signal-safe (a service's child calls it between fork and exec, the path made before).
pub(crate) fn join_cgroup(procs: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: open, write and close of a NUL-terminated path made before fork.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, c"0".as_ptr().cast(), 1);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n != 1 {
            return Err(err);
        }
    }
    Ok(())
}

/// The cgroup v2 directory process PROC (a pid, or "self") is in: the cgroup2 mount (from
/// /proc/self/mountinfo, beside v1 controllers or alone) joined with its path there (the `0::`
/// line of /proc/PROC/cgroup). Err says why there is none.
fn cgroup_of(proc: &str) -> Result<std::path::PathBuf, String> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let unescape =
        |s: &str| s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\");
    // Fields: id parent dev root mountpoint options [optional...] - fstype source superoptions.
    let mounts: Vec<(String, String)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            (tail.split(' ').next()? == "cgroup2").then_some(())?;
            let mut f = head.split(' ');
            Some((unescape(f.nth(3)?), unescape(f.next()?)))
        })
        .collect();
    if mounts.is_empty() {
        return Err("no cgroup2 filesystem is mounted".into());
    }
    let own =
        std::fs::read_to_string(format!("/proc/{proc}/cgroup")).map_err(|e| format!("/proc/{proc}/cgroup: {e}"))?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::")).ok_or("this process has no cgroup v2 path")?;
    mounts
        .iter()
        .find_map(|(root, at)| {
            let rel = std::path::Path::new(path).strip_prefix(root).ok()?;
            // Components, not join: the hierarchy's root is the mount point itself, no slash after.
            Some(std::path::Path::new(at).components().chain(rel.components()).collect::<std::path::PathBuf>())
        })
        .filter(|dir| dir.is_dir())
        .ok_or_else(|| format!("our cgroup {path} is not under a cgroup2 mount here"))
}

/// The cgroup a server whose supervisor is PID keeps its services in: `stigmer-server-PID`
/// under the cgroup the supervisor (and its keeper) run in.
fn server_cgroup_path(pid: u32) -> Result<std::path::PathBuf, String> {
    Ok(cgroup_of("self")?.join(format!("stigmer-server-{pid}")))
}

/// Where a new server would make its cgroup, or why it cannot: the cgroup we are in must be
/// ours to write (root, or a cgroup delegated to this user, as a systemd user session's).
pub(crate) fn cgroup_for_services() -> Result<std::path::PathBuf, String> {
    use nix::unistd::{AccessFlags, access};
    let base = cgroup_of("self")?;
    let procs = base.join("cgroup.procs");
    if access(&base, AccessFlags::W_OK).is_err() || access(&procs, AccessFlags::W_OK).is_err() {
        return Err(format!(
            "the cgroup this process is in ({}) is not writable by uid {}",
            base.display(),
            nix::unistd::geteuid()
        ));
    }
    Ok(base)
}

/// A cgroup v2 directory the server made: the server's own (`stigmer-server-PID`, holding
/// nothing itself) or one service's inside it.
pub(crate) struct Cgroup {
    dir: std::path::PathBuf,
}

impl Cgroup {
    /// Makes the server cgroup of this supervisor (see `cgroup_for_services`). A directory left
    /// by a dead server of the same pid is removed first when empty; Err says why there is none
    /// (then the services run without one). The kernel must know cgroup.kill (Linux 5.14).
    pub(crate) fn create_for_server() -> Result<Cgroup, String> {
        cgroup_for_services()?;
        let cgroup = Cgroup { dir: server_cgroup_path(std::process::id())? };
        if cgroup.dir.exists() {
            cgroup.remove();
        }
        std::fs::create_dir(&cgroup.dir).map_err(|e| format!("creating {}: {e}", cgroup.dir.display()))?;
        if !cgroup.dir.join("cgroup.kill").exists() {
            cgroup.remove();
            return Err("this kernel's cgroups have no cgroup.kill (Linux 5.14 and later have)".into());
        }
        Ok(cgroup)
    }

    /// The server cgroup of the supervisor PID (our child: the keeper asks), if it exists.
    pub(crate) fn of_server(pid: u32) -> Option<Cgroup> {
        server_cgroup_path(pid).ok().filter(|d| d.is_dir()).map(|dir| Cgroup { dir })
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.dir
    }

    /// The child cgroup NAME (made if missing).
    pub(crate) fn child(&self, name: &str) -> io::Result<Cgroup> {
        let dir = self.dir.join(name);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(Cgroup { dir }),
        }
    }

    /// Its cgroup.procs, for `join_cgroup` in a child between fork and exec.
    pub(crate) fn procs_file(&self) -> std::ffi::CString {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap_or_default()
    }

    /// Whether process PID is in it or in a cgroup below it.
    pub(crate) fn holds(&self, pid: u32) -> bool {
        cgroup_of(&pid.to_string()).is_ok_and(|dir| dir.starts_with(&self.dir))
    }

    /// SIGKILL to every process in it and in every cgroup below it, at once (cgroup.kill).
    pub(crate) fn kill(&self) -> io::Result<()> {
        std::fs::write(self.dir.join("cgroup.kill"), "1")
    }

    /// Whether any live process is in it or below it (cgroup.events; zombies do not count).
    pub(crate) fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events")).is_ok_and(|e| e.lines().any(|l| l == "populated 1"))
    }

    /// Removes it and every cgroup below it (deepest first); what still holds a process stays.
    pub(crate) fn remove(&self) {
        fn rmdir_tree(dir: &std::path::Path) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        rmdir_tree(&e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        rmdir_tree(&self.dir);
    }
}
