//! The memfd holder: one sealed memfd per component, filled once and handed to every later
//! start, so a warm memfd start costs a connect instead of a copy of the whole program, and
//! every running instance maps the same pages (one copy of Shmem, not one per instance).
//!
//! The holder is this same binary, forked (not re-executed) by the first start that finds
//! none: that start fills and seals its own memfd as it always did, takes the holder lock,
//! binds `run/memfd-<build>.sock`, forks a detached holder that inherits the memfd, the lock
//! and the socket, and execs; the holder listens. The holder fills other components from its own payload when
//! first asked. It leaves after `STIGMER_MEMFD_HOLDER_IDLE` seconds without a request (10
//! minutes by default) or as soon as its socket file is gone or replaced (a deleted home).
//!
//! Protocol (one request per connection, a line): `fd NAME` is answered with `+` and the
//! component's memfd attached (SCM_RIGHTS), or `-why`; `status` with one `NAME SIZE` line per
//! held memfd, `tree NAME PATHS` per tree vouched for, `refused NAME WHY` per tree it could
//! not take. Trust both ways: the holder answers
//! only its own uid; a client uses the holder only if it is its own uid and runs the very file
//! we run (the pid from SO_PEERCRED, its /proc/PID/exe), and uses a received fd only if it is
//! a fully sealed executable memfd of the component's size. Any failure: the caller fills a
//! private memfd, as before the holder.
//!
//! The fast path, without the holder at all: it keeps each memfd at a known fd number
//! (`SLOT_BASE` + the component's place in the embedded table, the same for every process of
//! this build) and names its pid in the symlink `run/memfd-<build>.pid` (the pid is the link's
//! target: no file data, like the socket and the lock). A start reads the link, opens
//! `/proc/PID/fd/SLOT` itself (a read-mode ptrace check: the same uid may; Yama's ptrace_scope
//! restricts only attaching) and proves what it opened as the socket path does: PID has our uid
//! and runs our executable (checked before the open and again after it, so neither a stale link
//! nor a pid reused meanwhile gets a start to use another program's fd), the file is a fully
//! sealed executable memfd of the size. It then touches the memfd's mtime (an in-memory
//! inode: nothing reaches a disk), which is how the holder's idle clock sees starts it never
//! hears from. Anything else (no link, a component not held yet, a refusal): the socket.
//!
//! The holder also vouches for cached trees (vouch.rs): `tree NAME DEV INO` is answered `+`
//! while it holds leases and watches on that tree and nothing of it changed, else `-` (and it
//! then takes the tree). A privileged start of a big directory component asks it, and makes a
//! holder that holds no memfd yet when none runs.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::embed::{self, Component, Kind};
use crate::home::{Home, files};
use crate::platform;

use super::vouch::Trees;
use super::{memfd, policy};

/// Seconds without a request after which the holder leaves (for tests; empty = the default).
pub(crate) const IDLE_VAR: &str = "STIGMER_MEMFD_HOLDER_IDLE";
const DEFAULT_IDLE: Duration = Duration::from_secs(600);
/// How often the holder checks that its socket file is still its own.
const WATCH: Duration = Duration::from_secs(2);
/// A holder that accepted but does not answer (stopped, swapped out) costs a start at most this.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that connects and says nothing blocks the holder's other clients at most this.
const HOLDER_TIMEOUT: Duration = Duration::from_secs(2);

/// What a running holder holds, as it answered `status`.
#[derive(Debug)]
pub(crate) struct HolderStatus {
    /// As SO_PEERCRED numbers it in our PID namespace: proved, not claimed.
    pub(crate) pid: u32,
    pub(crate) socket: PathBuf,
    pub(crate) held: Vec<(String, u64)>,
    /// The trees it vouches for (vouch.rs), with their number of paths.
    pub(crate) trees: Vec<(String, usize)>,
    /// The trees it could not vouch for when it last tried, and why.
    pub(crate) refused: Vec<(String, String)>,
}

/// The part of the build id in the socket's name: an upgraded binary never talks to the
/// holder of another build (which would hold other bytes under the same names).
fn build_tag() -> String {
    embed::build_id().chars().filter(char::is_ascii_alphanumeric).take(24).collect()
}

pub(crate) fn socket_path(home: &Home) -> PathBuf {
    home.run().join(format!("memfd-{}.sock", build_tag()))
}

/// The holder's pid, as the target of this symlink (the fast path's way to find it).
fn pid_link(home: &Home) -> PathBuf {
    home.run().join(format!("memfd-{}.pid", build_tag()))
}

/// Where the holder keeps the memfd of the component at INDEX of the embedded table.
const SLOT_BASE: usize = 200;

fn slot(c: &Component) -> Option<i32> {
    let index = embed::components().iter().position(|e| e.name == c.name)?;
    i32::try_from(SLOT_BASE + index).ok()
}

fn lock_path(home: &Home) -> PathBuf {
    home.run().join(format!("memfd-{}.lock", build_tag()))
}

/// Connects to the holder and checks it: our uid, our executable. Err says why not.
fn connect(home: &Home) -> Result<(UnixStream, u32), String> {
    let stream = open(home)?;
    let pid = check(&stream)?;
    Ok((stream, pid))
}

fn open(home: &Home) -> Result<UnixStream, String> {
    let path = socket_path(home);
    UnixStream::connect(&path).map_err(|e| format!("no memfd holder at {} ({e})", path.display()))
}

/// The holder behind STREAM is ours (uid, executable): its pid, with the client's timeouts set.
fn check(stream: &UnixStream) -> Result<u32, String> {
    let (uid, pid) = platform::peer_process(stream).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    prove_ours(pid, uid).map_err(|why| format!("the memfd holder socket's server: {why}"))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).map_err(|e| e.to_string())?;
    Ok(pid)
}

/// What makes a holder ours, whichever way its pid and uid were learned (the socket's peer
/// credentials, or /proc for the pid link): our uid, and this stigmer build's executable.
fn prove_ours(pid: u32, uid: u32) -> Result<(), String> {
    if uid != platform::effective_uid() {
        return Err(format!("pid {pid} runs as uid {uid}, not ours"));
    }
    if !platform::runs_our_executable(pid) {
        return Err(format!("pid {pid} is not this stigmer build"));
    }
    Ok(())
}

/// The holder's sealed memfd of `c`, checked; Err says why there is none to use.
pub(super) fn fetch(c: &Component) -> Result<File, String> {
    if platform::memfd_exec_forbidden() {
        return Err("vm.memfd_noexec=2 forbids executable memfds here".into());
    }
    let home = Home::from_env().map_err(|e| e.to_string())?;
    match from_slot(&home, c) {
        Ok(file) => return Ok(file),
        Err(why) => tracing::debug!(component = c.name, "{why}; asking the holder"),
    }
    let stream = open(&home)?;
    // Asked before the holder is checked, so that it answers while we check it (a wake-up of
    // another process is the dearest step here): the request names a component of this build,
    // nothing secret, and what comes back is used only from a holder proved ours. A few bytes
    // into a fresh connection never block.
    platform::send_with_fd(&stream, format!("fd {}\n", c.name).as_bytes(), None)
        .map_err(|e| format!("asking the holder: {e}"))?;
    check(&stream)?;
    let mut reply = [0u8; 512];
    let (n, fd) = platform::recv_with_fd(&stream, &mut reply).map_err(|e| format!("holder reply: {e}"))?;
    let Some(file) = fd else {
        let text = String::from_utf8_lossy(&reply[..n]);
        return Err(format!("the holder sent no memfd: {:?}", text.trim_end()));
    };
    platform::check_sealed_memfd(&file, c.size).map_err(|why| format!("the holder's memfd is unusable: {why}"))?;
    Ok(file)
}

/// Whether the holder vouches that `c`'s tree, whose top directory is TOP (dev, inode), is as
/// its stamp says (vouch.rs); a holder that does not hold it yet takes it after answering.
/// With no holder running, says no, having started one (which takes the tree) if START (call
/// only while single-threaded).
pub(super) fn vouches(c: &'static Component, top: (u64, u64), start: bool) -> Result<(), String> {
    let asked = Home::from_env().map_err(|e| e.to_string()).and_then(|home| match open(&home) {
        Ok(stream) => Ok(stream),
        Err(why) => {
            if let Err(e) = if start { try_start(&home, Seed::Tree(c)) } else { Ok(()) } {
                tracing::debug!(component = c.name, "no holder started: {e}");
            }
            Err(why)
        }
    });
    asked.and_then(|stream| {
        // Asked before the holder is checked, as in `fetch`.
        (&stream).write_all(format!("tree {} {} {}\n", c.name, top.0, top.1).as_bytes()).map_err(|e| e.to_string())?;
        check(&stream)?;
        let mut reply = [0u8; 256];
        let n = io::Read::read(&mut &stream, &mut reply).map_err(|e| format!("holder reply: {e}"))?;
        match &reply[..n] {
            b"+\n" => Ok(()),
            other => Err(format!("the holder does not vouch for it: {:?}", String::from_utf8_lossy(other).trim_end())),
        }
    })
}

/// `c`'s memfd taken from the holder's slot (the fast path of the module's doc).
fn from_slot(home: &Home, c: &Component) -> Result<File, String> {
    let slot = slot(c).ok_or("no slot")?;
    let link = pid_link(home);
    let target = std::fs::read_link(&link).map_err(|e| format!("{}: {e}", link.display()))?;
    let pid: u32 =
        target.to_str().and_then(|t| t.parse().ok()).ok_or_else(|| format!("{}: not a pid", link.display()))?;
    let path = format!("/proc/{pid}/fd/{slot}");
    // Proved before the open as well as after it: a link left by a holder that is gone (a reboot
    // keeps run/) may name a pid since reused by any program of ours, and opening its fds could
    // block (a FIFO) or have effects (a device). O_NONBLOCK for what is left of that window.
    let ours = || -> Result<(), String> {
        let owner = std::fs::metadata(format!("/proc/{pid}")).map_err(|e| format!("/proc/{pid}: {e}"))?.uid();
        prove_ours(pid, owner).map_err(|why| format!("{path}: {why}"))
    };
    ours()?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    ours()?;
    platform::check_sealed_memfd(&file, c.size).map_err(|why| format!("{path}: {why}"))?;
    // In use: the holder's idle clock reads the memfds' mtime.
    let now = nix::sys::time::TimeSpec::UTIME_NOW;
    let _ = nix::sys::stat::futimens(&file, &now, &now);
    tracing::debug!(component = c.name, "shared memfd from {path}");
    Ok(file)
}

/// Moves a held memfd to its component's slot (see `slot`); left where it is if that fails.
fn to_slot(c: &Component, file: File) -> File {
    use std::os::fd::FromRawFd;
    let Some(slot) = slot(c) else { return file };
    // SAFETY: dup3 onto a number this process keeps for this memfd alone.
    if unsafe { libc::dup3(file.as_raw_fd(), slot, libc::O_CLOEXEC) } != slot {
        return file;
    }
    drop(file);
    // SAFETY: the fd just made, owned by nothing else.
    unsafe { File::from_raw_fd(slot) }
}

/// Keeps every component's slot taken (by /dev/null until its memfd moves there), so that
/// nothing the holder opens later (a tree's thousands of leased files, a connection) gets a
/// slot's number, which `to_slot` would then close under it.
fn reserve_slots() {
    let Ok(null) = File::open("/dev/null") else { return };
    for slot in (SLOT_BASE..SLOT_BASE + embed::components().len()).filter_map(|s| i32::try_from(s).ok()) {
        // SAFETY: F_GETFD reads a flag; dup3 then fills a number nothing in this process uses.
        unsafe {
            if libc::fcntl(slot, libc::F_GETFD) < 0 {
                libc::dup3(null.as_raw_fd(), slot, libc::O_CLOEXEC);
            }
        }
    }
}

/// For doctor: the running holder of this build and what it holds; Ok(None) if none runs.
pub(crate) fn status(home: &Home) -> Result<Option<HolderStatus>, String> {
    let socket = socket_path(home);
    let (mut stream, pid) = match connect(home) {
        Ok(found) => found,
        // Nothing there, or a socket nobody serves: no holder.
        Err(_) if UnixStream::connect(&socket).is_err() => return Ok(None),
        Err(why) => return Err(why),
    };
    stream.write_all(b"status\n").map_err(|e| e.to_string())?;
    let (mut held, mut trees, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let bad = || format!("bad status line {line:?}");
        // A memfd's line has two words (a component may be called "tree"), the others more.
        match line.splitn(3, ' ').collect::<Vec<_>>()[..] {
            [name, size] => held.push((name.to_owned(), size.parse().map_err(|_| bad())?)),
            ["tree", name, paths] => trees.push((name.to_owned(), paths.parse().map_err(|_| bad())?)),
            ["refused", name, why] => refused.push((name.to_owned(), why.to_owned())),
            _ => return Err(bad()),
        }
    }
    Ok(Some(HolderStatus { pid, socket, held, trees, refused }))
}

/// Makes a holder around MEMFD (the sealed memfd of `c` this start just filled) unless one
/// runs or is being made. Best effort: any failure leaves this start as it was.
pub(super) fn start(c: &'static Component, memfd: &File) {
    if let Err(e) = Home::trusted().map_err(io::Error::other).and_then(|home| try_start(&home, Seed::Memfd(c, memfd))) {
        tracing::debug!(component = c.name, "no memfd holder started: {e}");
    }
}

/// What the start that makes a holder gives it to hold first.
enum Seed<'a> {
    /// The sealed memfd of a component, just filled.
    Memfd(&'static Component, &'a File),
    /// A tree to vouch for (vouch.rs), whose privileged start asked for a holder.
    Tree(&'static Component),
}

fn try_start(home: &Home, seed: Seed<'_>) -> io::Result<()> {
    let run = home.run();
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&run)?;
    let lock = files::open_lock(&lock_path(home))?;
    // Held by the holder for its whole life: one holder per home and build, however many
    // first starts race here (the losers run from their own memfd).
    if lock.try_lock().is_err() {
        return Ok(());
    }
    let path = socket_path(home);
    let (socket, bound) = bind(&path)?;
    let mut keep = vec![lock.as_raw_fd(), socket.as_raw_fd()];
    if let Seed::Memfd(_, memfd) = seed {
        keep.push(memfd.as_raw_fd());
    }
    if !platform::daemonize(&keep, c"stigmer-holder")? {
        return Ok(());
    }
    // The holder itself listens: SO_PEERCRED names the process that called listen(), and
    // clients check that pid's executable. Until then a connect is refused (clients fall back).
    if nix::sys::socket::listen(
        &socket,
        nix::sys::socket::Backlog::new(128).unwrap_or(nix::sys::socket::Backlog::MAXCONN),
    )
    .is_ok()
    {
        reserve_slots();
        let mut holding = Holding { home, memfds: Vec::new(), trees: Trees::default() };
        match seed {
            Seed::Memfd(c, memfd) => {
                if let Ok(first) = memfd.try_clone() {
                    holding.memfds.push((c, to_slot(c, first)));
                }
            }
            Seed::Tree(c) => holding.trees.take(home, c.name),
        }
        serve(UnixListener::from(socket), &path, &pid_link(home), bound, holding);
    }
    // SAFETY: the holder must never return into the start it was forked from.
    unsafe { libc::_exit(0) }
}

/// Binds the holder's socket file (0600) in the starting process, so that the home holds
/// everything the holder will ever create there before the start execs; returns it with its
/// (dev, inode).
fn bind(path: &Path) -> io::Result<(std::os::fd::OwnedFd, (u64, u64))> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, socket};
    // Whatever is there was left by a holder that is gone: it would still hold the lock.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    nix::sys::socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let meta = std::fs::symlink_metadata(path)?;
    Ok((fd, (meta.dev(), meta.ino())))
}

fn idle_limit() -> Duration {
    crate::env::var(IDLE_VAR)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        // At most a day: Duration::from_secs_f64 panics past u64 seconds (1e300 killed the holder).
        .map_or(DEFAULT_IDLE, |s| Duration::from_secs_f64(s.min(86_400.0)))
}

/// Whether PATH is still the socket file this holder bound (not deleted with its home, not
/// replaced by a newer holder after a restart of ours).
fn still_ours(path: &Path, bound: (u64, u64)) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == bound)
}

/// The holder's loop: answer requests until idle or orphaned.
fn serve(listener: UnixListener, path: &Path, pid_link: &Path, bound: (u64, u64), mut holding: Holding<'_>) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let idle = idle_limit();
    let mut last = Instant::now();
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    // Made next to the link and renamed over it: a reader sees the old pid or ours, never none.
    let fresh = pid_link.with_extension(format!("pid.{}", std::process::id()));
    let _ = std::fs::remove_file(&fresh);
    if std::os::unix::fs::symlink(std::process::id().to_string(), &fresh).is_ok() {
        let _ = std::fs::rename(&fresh, pid_link);
    }
    // Fast-path starts never talk to us: they touch the memfd they took.
    let used_lately = |held: &[(&'static Component, File)]| {
        held.iter()
            .any(|(_, f)| f.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e < idle)))
    };
    loop {
        let mut fds: Vec<PollFd<'_>> = std::iter::once(listener.as_fd())
            .chain(holding.trees.fds())
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        let _ = poll(&mut fds, PollTimeout::try_from(WATCH).unwrap_or(PollTimeout::MAX));
        drop(fds);
        // A broken lease keeps its writer waiting until we let go: first, before any request.
        holding.trees.refresh();
        while let Ok((stream, _)) = listener.accept() {
            answer(&stream, &mut holding);
            last = Instant::now();
        }
        if !still_ours(path, bound) {
            return;
        }
        if last.elapsed() >= idle && !used_lately(&holding.memfds) {
            if std::fs::read_link(pid_link).is_ok_and(|t| t.as_os_str() == std::process::id().to_string().as_str()) {
                let _ = std::fs::remove_file(pid_link);
            }
            let _ = std::fs::remove_file(path);
            return;
        }
    }
}

/// What a holder holds: memfds at their slots, trees it vouches for.
struct Holding<'a> {
    home: &'a Home,
    memfds: Vec<(&'static Component, File)>,
    trees: Trees,
}

/// One request. Errors end the connection; the client then falls back on its own.
fn answer(stream: &UnixStream, holding: &mut Holding<'_>) {
    let trusted = platform::peer_process(stream).is_ok_and(|(uid, _)| uid == platform::effective_uid());
    if !trusted
        || stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(HOLDER_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(HOLDER_TIMEOUT)).is_err()
    {
        return;
    }
    let mut line = String::new();
    if BufReader::new(io::Read::take(stream, 256)).read_line(&mut line).is_err() {
        return;
    }
    let request = line.trim_end_matches('\n');
    if request == "status" {
        let memfds =
            holding.memfds.iter().map(|(c, f)| format!("{} {}\n", c.name, f.metadata().map_or(0, |m| m.len())));
        let trees = holding.trees.held().map(|(name, paths)| format!("tree {name} {paths}\n"));
        let refused = holding.trees.refused().map(|(name, why)| format!("refused {name} {why}\n"));
        let _ = (&*stream).write_all(memfds.chain(trees).chain(refused).collect::<String>().as_bytes());
        return;
    }
    if let Some(tree) = request.strip_prefix("tree ") {
        let mut words = tree.split(' ');
        let (name, dev, ino) = (words.next().unwrap_or(""), words.next(), words.next());
        let top = dev.and_then(|d| d.parse().ok()).zip(ino.and_then(|i| i.parse().ok()));
        let vouched = top.is_some_and(|top| holding.trees.vouches(name, top));
        let _ = (&*stream).write_all(if vouched { b"+\n" } else { b"-\n" });
        if !vouched {
            // After the answer: the start compares the tree itself meanwhile.
            holding.trees.take(holding.home, name);
        }
        return;
    }
    let Some(name) = request.strip_prefix("fd ") else {
        let _ = platform::send_with_fd(stream, b"-unknown request\n", None);
        return;
    };
    let reply = match held_or_filled(name, &mut holding.memfds) {
        Ok(file) => platform::send_with_fd(stream, b"+", Some(file.as_fd())),
        Err(why) => platform::send_with_fd(stream, format!("-{why}\n").as_bytes(), None),
    };
    if let Err(e) = reply {
        tracing::debug!("memfd holder reply: {e}");
    }
}

fn held_or_filled<'a>(name: &str, held: &'a mut Vec<(&'static Component, File)>) -> Result<&'a File, String> {
    if let Some(i) = held.iter().position(|(c, _)| c.name == name) {
        return Ok(&held[i].1);
    }
    let c = embed::find(name).ok_or_else(|| format!("no component {name:?}"))?;
    if !matches!(c.kind, Kind::File) || !policy::memfd_capable(c) {
        return Err(format!("{name} cannot run from a memfd"));
    }
    let file = memfd::filled(c, true).map_err(|e| e.to_string())?;
    held.push((c, to_slot(c, file)));
    Ok(&held[held.len() - 1].1)
}
