//! The memfd holder (src/run/holder.rs): one sealed memfd per component shared by every
//! start, and every way it can fail falling back to a private memfd. Real processes
//! throughout; each test ends the holders of its home (proved ours: a `stigmer-holder`
//! process whose environment names this test's temp home).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

/// A memfd run writes nothing under HOME: the only entries it may make are the holder's empty
/// lock file and its socket under run/.
#[track_caller]
pub fn assert_memfd_run_wrote_nothing(home: &std::path::Path) {
    let entries: Vec<PathBuf> = fs::read_dir(home).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(entries.iter().all(|e| e.ends_with("run")), "memfd run wrote under STIGMER_HOME: {entries:?}");
    for e in entries.iter().flat_map(|run| fs::read_dir(run).unwrap()) {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        // A holder renames its fresh pid link (memfd-<build>.pid.<pid>) over the old one: what
        // read_dir listed may be gone by now.
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if meta.file_type().is_symlink() {
            // The holder's pid link, or its fresh copy: a name, its target held in the inode.
            let Ok(target) = fs::read_link(&path) else { continue };
            let pid_link = name.starts_with("memfd-") && (name.ends_with(".pid") || name.contains(".pid."));
            assert!(pid_link && target.to_str().unwrap().parse::<u32>().is_ok(), "run/{name} -> {target:?}");
            continue;
        }
        assert!(name.starts_with("memfd-") && meta.len() == 0, "memfd run wrote run/{name} ({} bytes)", meta.len());
    }
}

/// Holders started by these tests leave soon after the test, even if a kill is missed.
const IDLE: &str = "20";

/// A sandbox whose holders are killed when it is dropped.
struct HolderSandbox(Sandbox);

impl HolderSandbox {
    fn new() -> Self {
        HolderSandbox(Sandbox::new())
    }

    fn component(&self, name: &str) -> Command {
        let mut cmd = self.0.component(name);
        cmd.env("STIGMER_MEMFD_HOLDER_IDLE", IDLE);
        cmd
    }

    /// Holder processes of this home: named stigmer-holder, carrying our STIGMER_HOME.
    fn holders(&self) -> Vec<i32> {
        home_procs(self.0.home())
            .into_iter()
            .filter(|p| p.state != 'Z' && comm(p.pid) == "stigmer-holder")
            .map(|p| p.pid)
            .collect()
    }

    /// What `stigmer doctor --json` says about the running holder (null when none).
    fn doctor_holder(&self) -> serde_json::Value {
        let out = run(stigmer(&self.0, &["doctor", "--json"]));
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
        report["memfd_holder"].clone()
    }

    /// Waits until a holder runs that holds NAME; its pid (as doctor proves it) and socket.
    #[track_caller]
    fn wait_holder_with(&self, name: &str) -> (i32, PathBuf) {
        wait_for(Duration::from_secs(20), &format!("a memfd holder holding {name}"), || {
            let h = self.doctor_holder();
            let held = h["components"].as_array()?.iter().any(|c| c["name"] == name);
            held.then(|| (h["pid"].as_i64().unwrap() as i32, PathBuf::from(h["socket"].as_str().unwrap())))
        })
    }

    #[track_caller]
    fn kill_holder(&self, pid: i32) {
        assert!(self.holders().contains(&pid), "pid {pid} is not a holder of this home");
        kill(pid, libc::SIGKILL);
        wait_for(Duration::from_secs(10), "the holder to die", || (!self.holders().contains(&pid)).then_some(()));
    }

    /// Runs probe (a holder starts and holds it), then kills that holder: the socket's path and
    /// probe's fd slot there (200 + its place in the embedded table), for another program to
    /// take the holder's place.
    #[track_caller]
    fn gone_holder_of_probe(&self) -> (PathBuf, usize) {
        Probe::from_success(&run(self.component("probe")));
        let (holder, socket) = self.wait_holder_with("probe");
        self.kill_holder(holder);
        (socket, 200 + components(&self.0).iter().position(|c| c.name == "probe").unwrap())
    }
}

impl Drop for HolderSandbox {
    fn drop(&mut self) {
        for pid in self.holders() {
            kill(pid, libc::SIGKILL);
        }
    }
}

fn stigmer(sb: &Sandbox, args: &[&str]) -> Command {
    let mut cmd = sb.stigmer();
    cmd.args(args);
    cmd
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim_end().to_owned()
}

fn inode_of_exe(pid: u32) -> u64 {
    fs::metadata(format!("/proc/{pid}/exe")).unwrap_or_else(|e| panic!("stat /proc/{pid}/exe: {e}")).ino()
}

/// A probe that stays running (it echoes stdin) until `finish`: its pid and its report.
struct Running {
    child: ChildGuard,
    probe: Probe,
}

fn start_running(mut cmd: Command) -> Running {
    cmd.env("PROBE_STDIN", "1").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().expect("spawn probe"));
    let mut text = String::new();
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    while !text.lines().any(|l| l.starts_with("pid=")) {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "probe ended before its report:\n{text}");
        text.push_str(&line);
    }
    child.0.stdout = Some(out.into_inner());
    Running { child, probe: Probe::parse(&text) }
}

impl Running {
    /// Sends INPUT, closes stdin and checks the probe echoes it and exits 0.
    fn finish(mut self, input: &str) {
        self.child.0.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(self.child.0.stdout.as_mut().unwrap(), &mut rest).unwrap();
        assert_eq!(rest, input);
        assert!(self.child.0.wait().unwrap().success());
    }
}

#[test]
fn concurrent_instances_share_one_memfd() {
    let sb = HolderSandbox::new();
    // The first start seeds the holder with its own memfd.
    let first = start_running(sb.component("probe"));
    assert_eq!(first.probe.exe, memfd_exe("probe"));
    let (holder, _) = sb.wait_holder_with("probe");
    let second = start_running(sb.component("probe"));
    let third = start_running(sb.component("probe"));
    let inodes: Vec<u64> = [&first, &second, &third].iter().map(|r| inode_of_exe(r.probe.pid)).collect();
    assert_eq!(second.probe.exe, memfd_exe("probe"));
    assert!(inodes.iter().all(|i| *i == inodes[0]), "instances run different memfds: {inodes:?}");
    assert_eq!(sb.holders(), [holder], "exactly one holder");
    for r in [first, second, third] {
        r.finish("bye\n");
    }

    // A script through the same holder: the interpreter reopens the shared fd.
    let mut cmd = sb.component("hello-script");
    cmd.args(["a", "b"]).env("STIGMER_LOG", "debug");
    let out = run(cmd);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).starts_with("script args: a b\n"), "{}", describe(&out));
    // The holder fills a component it does not hold yet from its own payload.
    assert!(stderr(&out).contains("shared=true"), "the holder fills the script: {}", describe(&out));
    let mut cmd = sb.component("hello-script");
    cmd.arg("c").env("STIGMER_LOG", "debug");
    let out = run(cmd);
    assert!(stdout(&out).starts_with("script args: c\n"), "{}", describe(&out));
    assert!(stderr(&out).contains("shared=true"), "{}", describe(&out));
    let h = sb.doctor_holder();
    assert_eq!(h["pid"].as_i64(), Some(holder as i64));
    let names: Vec<&str> = h["components"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["probe", "hello-script"]);
    let info = component_info(&sb.0, "probe");
    assert_eq!(h["components"][0]["size"].as_u64(), Some(info.size));

    // components --json says which start a memfd component takes now.
    let out = run(stigmer(&sb.0, &["components", "--json"]));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |n: &str| rows.as_array().unwrap().iter().find(|r| r["name"] == n).unwrap().clone();
    assert_eq!(row("probe")["start"], "memfd (shared)");
    assert_eq!(row("probe-cached")["start"], "cache");
}

/// An idle time too long to represent is bounded (a day), not a panic of the holder (issue 20,
/// item 10): the holder starts and holds the component.
#[test]
fn a_huge_idle_time_still_makes_a_holder() {
    let sb = HolderSandbox::new();
    let mut cmd = sb.component("probe");
    cmd.env("STIGMER_MEMFD_HOLDER_IDLE", "1e300");
    Probe::from_success(&run(cmd));
    let (holder, _) = sb.wait_holder_with("probe");
    sb.kill_holder(holder);
}

/// A warm start takes the held memfd from the holder's fd slot (/proc/PID/fd/SLOT) without a
/// request, and such starts keep the holder from its idle exit: they connect, which it counts.
#[test]
fn warm_starts_take_the_slot_and_keep_the_holder() {
    let sb = HolderSandbox::new();
    let idle = Duration::from_secs(3);
    let start = || {
        let mut cmd = sb.component("probe");
        cmd.env("STIGMER_MEMFD_HOLDER_IDLE", idle.as_secs().to_string()).env("STIGMER_LOG", "debug");
        run(cmd)
    };
    Probe::from_success(&start());
    let (holder, _) = sb.wait_holder_with("probe");
    let began = std::time::Instant::now();
    while began.elapsed() < idle * 2 {
        std::thread::sleep(Duration::from_millis(500));
        let out = start();
        assert_eq!(Probe::from_success(&out).exe, memfd_exe("probe"));
        assert!(
            stderr(&out).contains(&format!("shared memfd from /proc/{holder}/fd/")),
            "after {:?}: {}",
            began.elapsed(),
            describe(&out)
        );
    }
    sb.kill_holder(holder);
}

#[test]
fn holder_killed_mid_run_and_stale_socket_fall_back() {
    let sb = HolderSandbox::new();
    Probe::from_success(&run(sb.component("probe")));
    let (holder, socket) = sb.wait_holder_with("probe");
    let running = start_running(sb.component("probe"));
    let shared = inode_of_exe(running.probe.pid);
    sb.kill_holder(holder);
    // The instance it served runs on, on its own reference to the memfd.
    assert!(socket.exists(), "a killed holder leaves its socket file behind");
    // Nobody serves the stale socket: the start fills a private memfd and a new holder
    // replaces the stale socket.
    let mut cmd = sb.component("probe");
    cmd.env("STIGMER_LOG", "debug").arg("x");
    let out = run(cmd);
    let p = Probe::from_success(&out);
    assert_eq!(p.argv, [sb.0.arg0("probe"), "x".to_owned()]);
    assert_eq!(p.exe, memfd_exe("probe"));
    assert!(stderr(&out).contains("shared=false"), "{}", describe(&out));
    running.finish("still here\n");
    let (second, _) = sb.wait_holder_with("probe");
    assert_ne!(second, holder);
    let again = start_running(sb.component("probe"));
    assert_ne!(inode_of_exe(again.probe.pid), shared, "the new holder holds a new memfd");
    again.finish("");

    // A regular file where the socket was: the holder leaves (its socket is gone), starts
    // keep working, and the next one to find no holder makes a new one.
    fs::remove_file(&socket).unwrap();
    fs::write(&socket, "not a socket").unwrap();
    let p = Probe::from_success(&run(sb.component("probe")));
    assert_eq!(p.exe, memfd_exe("probe"));
    wait_for(Duration::from_secs(20), "the orphaned holder to leave", || {
        (!sb.holders().contains(&second)).then_some(())
    });
    wait_for(Duration::from_secs(20), "a new holder in place of the regular file", || {
        Probe::from_success(&run(sb.component("probe")));
        fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()).then_some(())
    });
    let (third, _) = sb.wait_holder_with("probe");
    assert!(third != second && third != holder);
}

#[test]
fn deleted_home_ends_the_holder() {
    let sb = HolderSandbox::new();
    Probe::from_success(&run(sb.component("probe")));
    let (holder, _) = sb.wait_holder_with("probe");
    let stat = proc_stat(holder).unwrap();
    fs::remove_dir_all(sb.0.home()).unwrap();
    wait_for(Duration::from_secs(20), "the holder of a deleted home to leave", || {
        still_exists(&stat).is_none_or(|s| s.state == 'Z').then_some(())
    });
}

/// A same-uid program (Python) serving the holder's socket: it passes the uid check, and even
/// the executable check (the process that called listen() then becomes stigmer, blocked on a
/// full stdout pipe), but offers a memfd that is unsealed, of the wrong size, or no memfd,
/// both in its reply and at the component's fd slot (the fast path's /proc/PID/fd/SLOT, its pid
/// named by the holder's pid link).
/// Its content would print FORGED. Every start must refuse it and run from its own memfd.
const FORGER: &str = r##"
import fcntl, os, socket, sys, time
sock_path, lock_path, mode, size, stigmer, log, slot, pid_link = sys.argv[1:9]
size, slot = int(size), int(slot)
lock = open(lock_path, "a")
fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
body = b"#!/bin/sh\necho FORGED\nexit 0\n"
if mode == "wrong-size":
    size += 1
body += b"#" * (size - len(body) - 1) + b"\n"
if mode == "not-memfd":
    fd = os.open(os.path.dirname(log), os.O_RDWR | os.O_TMPFILE, 0o755)
else:
    fd = os.memfd_create("probe", os.MFD_ALLOW_SEALING)
os.write(fd, body)
os.fchmod(fd, 0o755)
if mode == "wrong-size":
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
try:
    os.unlink(sock_path)
except FileNotFoundError:
    pass
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sock_path)
srv.listen(16)
parent = os.getpid()
if os.fork() == 0:
    srv.settimeout(0.5)
    while os.getppid() == parent:
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        request = conn.recv(256)
        with open(log, "a") as f:
            f.write(request.decode())
        socket.send_fds(conn, [b"+"], [fd])
        conn.close()
    os._exit(0)
# Become stigmer, blocked for good writing its help into a full pipe we keep open.
r, w = os.pipe()
os.set_inheritable(r, True)
os.set_blocking(w, False)
try:
    while True:
        os.write(w, b"x" * 65536)
except BlockingIOError:
    pass
os.set_blocking(w, True)
os.dup2(w, 1)
os.dup2(fd, slot, inheritable=True)
os.symlink(str(os.getpid()), pid_link + ".tmp")
os.rename(pid_link + ".tmp", pid_link)
with open(log + ".ready", "w") as f:
    f.write("ready")
os.execv(stigmer, ["stigmer", "--help"])
"##;

#[test]
fn forged_holder_is_refused() {
    let sb = HolderSandbox::new();
    // A real holder first, to learn the socket's name and the slot; then it goes.
    let (socket, slot) = sb.gone_holder_of_probe();
    let lock = socket.with_extension("lock");
    let size = component_info(&sb.0, "probe").size;
    let work = tempdir();
    for mode in ["unsealed", "wrong-size", "not-memfd"] {
        let log = work.path().join(format!("{mode}.log"));
        let mut forger = Command::new("python3");
        forger.args(["-c", FORGER]).arg(&socket).arg(&lock).arg(mode).arg(size.to_string());
        forger.arg(stigmer_bin()).arg(&log).arg(slot.to_string()).arg(socket.with_extension("pid"));
        forger.stdin(Stdio::null()).stderr(Stdio::inherit());
        let forger = ChildGuard(forger.spawn().expect("python3"));
        wait_for(Duration::from_secs(20), "the forger to serve as stigmer", || {
            let ready = log.with_extension("log.ready").exists();
            (ready && fs::read_link(format!("/proc/{}/exe", forger.0.id())).ok()? == canon(&stigmer_bin()))
                .then_some(())
        });
        let mut cmd = sb.component("probe");
        cmd.env("STIGMER_LOG", "debug").arg(mode);
        let out = run(cmd);
        let p = Probe::from_success(&out);
        assert_eq!(p.argv, [sb.0.arg0("probe"), mode.to_owned()]);
        assert_eq!(p.exe, memfd_exe("probe"), "{mode}");
        assert!(!stdout(&out).contains("FORGED"));
        assert_eq!(fs::read_to_string(&log).unwrap(), "fd probe\n", "{mode}: the start asked the forger");
        let why = match mode {
            "unsealed" => "not fully sealed",
            "wrong-size" => &format!("{} bytes, expected {size}", size + 1),
            _ => "not a memfd",
        };
        let fast = format!("/proc/{}/fd/{slot}: {why}", forger.0.id());
        assert!(stderr(&out).contains(&fast), "{mode}: the fast path refused it too: {}", describe(&out));
        assert!(stderr(&out).contains(&format!("unusable: {why}")), "{mode}: {}", describe(&out));
        drop(forger);
        // The forger's server child leaves with it (it watches its parent).
        wait_for(Duration::from_secs(10), "the forger's lock to be free", || {
            let f = fs::OpenOptions::new().write(true).open(&lock).ok()?;
            f.try_lock().ok()
        });
    }
    assert!(sb.holders().is_empty(), "the forger held the lock: no holder was started");
}

/// The pid link of a holder that is gone (killed here; after a reboot run/ keeps it) may name a
/// pid reused by another program of ours. A start must not open that program's fds (here a FIFO
/// with no writer at the slot, whose open would block): it refuses the pid and runs.
#[test]
fn stale_pid_link_to_another_program_is_refused() {
    let sb = HolderSandbox::new();
    let (socket, slot) = sb.gone_holder_of_probe();
    let work = tempdir();
    let ready = work.path().join("ready");
    let script = r#"
import os, sys, time
fifo, slot, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.mkfifo(fifo)
fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
os.dup2(fd, slot)
open(ready, "w").close()
time.sleep(60)
"#;
    let mut other = Command::new("python3");
    other.args(["-c", script]).arg(work.path().join("fifo")).arg(slot.to_string()).arg(&ready);
    let other = ChildGuard(other.stdin(Stdio::null()).spawn().expect("python3"));
    wait_for(Duration::from_secs(20), "the other program to hold the FIFO", || ready.exists().then_some(()));
    let link = socket.with_extension("pid");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(other.0.id().to_string(), &link).unwrap();
    let mut cmd = sb.component("probe");
    cmd.env("STIGMER_LOG", "debug");
    let out = run(cmd);
    assert_eq!(Probe::from_success(&out).exe, memfd_exe("probe"));
    let why = format!("pid {} is not this stigmer build", other.0.id());
    assert!(stderr(&out).contains(&why), "{}", describe(&out));
}

#[test]
fn memfd_noexec_ignores_a_running_holder() {
    let sb = HolderSandbox::new();
    Probe::from_success(&run(sb.component("probe")));
    sb.wait_holder_with("probe");
    let link = sb.0.link("probe");
    let Some(mut cmd) = with_memfd_noexec(&sb.0, 2, &link, &[]) else { return };
    cmd.env("STIGMER_MEMFD_HOLDER_IDLE", IDLE);
    let out = run(cmd);
    let p = Probe::from_success(&out);
    let info = component_info(&sb.0, "probe");
    assert_eq!(p.exe, canon(&cached_entry_point(&sb.0, &info)).to_str().unwrap(), "vm.memfd_noexec=2: from the cache");
    assert!(out.stderr.is_empty(), "{}", describe(&out));
}

#[test]
fn sixty_four_first_starts_make_one_holder() {
    let sb = HolderSandbox::new();
    assert!(!sb.0.home().join("run").exists());
    let results: Vec<(usize, std::process::Output)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..64)
            .map(|i| {
                let mut cmd = sb.component(if i % 2 == 0 { "probe" } else { "probe-static" });
                cmd.arg(i.to_string());
                s.spawn(move || (i, run(cmd)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, out) in &results {
        let p = Probe::from_success(out);
        let name = if i % 2 == 0 { "probe" } else { "probe-static" };
        assert_eq!(p.argv, [sb.0.arg0(name), i.to_string()]);
        assert_eq!(p.exe, memfd_exe(name));
    }
    // Every starter waited for its holder's middle process, so whatever holder exists exists
    // now: once one answers, it must be the only process left of this home.
    let (pid, _) = sb.wait_holder_with("probe");
    let left: Vec<ProcStat> = home_procs(sb.0.home()).into_iter().filter(|p| p.state != 'Z').collect();
    assert_eq!(left.iter().map(|p| p.pid).collect::<Vec<_>>(), [pid], "holders:\n{}", describe_procs(&left));
    // Both components end up in the one holder.
    Probe::from_success(&run(sb.component("probe-static")));
    sb.wait_holder_with("probe-static");
    assert_eq!(sb.holders(), [pid]);
}
