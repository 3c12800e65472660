//! Linux: executing from a sealed memfd, locating the payload in our own file, syncing a tree.

use std::convert::Infallible;
use std::ffi::{CString, c_int, c_void};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use super::MemfdError;

/// Runs `fill` to write the program into a fresh memfd named `name`, seals it and execs it in
/// place. `keep_open` leaves the fd open across exec, which `#!` scripts need: the kernel hands
/// the interpreter /dev/fd/N.
pub(crate) fn memfd_exec(
    name: &str,
    keep_open: bool,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
    argv: &[CString],
    envp: &[CString],
) -> Result<Infallible, MemfdError> {
    let cname = CString::new(name).map_err(|e| MemfdError::Failed { step: "memfd name", source: e.into() })?;
    let exec = MFdFlags::from_bits_retain(libc::MFD_EXEC);
    let mut flags = MFdFlags::MFD_ALLOW_SEALING | exec;
    if !keep_open {
        flags |= MFdFlags::MFD_CLOEXEC;
    }
    let fd = match memfd_create(cname.as_c_str(), flags) {
        // Kernels before 6.3 do not know MFD_EXEC; their memfds are executable anyway.
        Err(Errno::EINVAL) => memfd_create(cname.as_c_str(), flags.difference(exec)),
        other => other,
    }
    .map_err(|e| match e {
        Errno::ENOSYS | Errno::EACCES | Errno::EPERM => MemfdError::Unavailable(format!("memfd_create: {e}")),
        e => MemfdError::Failed { step: "memfd_create", source: e.into() },
    })?;
    let mut file = File::from(fd);
    let mode =
        file.metadata().map_err(|source| MemfdError::Failed { step: "fstat memfd", source })?.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(MemfdError::Unavailable("new memfds are not executable (vm.memfd_noexec)".into()));
    }
    fill(&mut file).map_err(|source| MemfdError::Failed { step: "writing the memfd", source })?;
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))
        .map_err(|e| MemfdError::Failed { step: "sealing the memfd", source: e.into() })?;
    super::reset_signals_for_exec();
    let Err(errno) = nix::unistd::fexecve::<_, CString, CString>(file.as_fd(), argv, envp);
    Err(match errno {
        Errno::EACCES | Errno::EPERM => MemfdError::Unavailable(format!("fexecve: {errno}")),
        e => MemfdError::Failed { step: "fexecve", source: e.into() },
    })
}

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

/// Our own live children (everything a subreaper adopted included), from /proc.
pub(crate) fn child_pids() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // The fields after the parenthesised command name: state, ppid, ...
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| {
                let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
                let state = fields.next()?;
                let ppid: u32 = fields.next()?.parse().ok()?;
                Some(ppid == me && state != "Z")
            }) == Some(true)
        })
        .collect()
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
    let exec = MFdFlags::from_bits_retain(libc::MFD_EXEC);
    let result = match memfd_create(c"stigmer-doctor", MFdFlags::MFD_CLOEXEC | exec) {
        Err(Errno::EINVAL) => memfd_create(c"stigmer-doctor", MFdFlags::MFD_CLOEXEC),
        other => other,
    };
    let verdict = match result {
        Err(e) => Err(format!("memfd_create: {e}")),
        Ok(fd) => match File::from(fd).metadata() {
            Ok(m) if m.permissions().mode() & 0o111 == 0 => Err("new memfds are not executable".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("fstat: {e}")),
        },
    };
    (verdict, sysctl)
}
