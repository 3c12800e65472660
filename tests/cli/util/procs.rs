//! Processes: /proc walking, polling for a condition, the one way tests send signals, and a guard
//! that reaps a child.

use std::fs;
use std::path::Path;
use std::time::Duration;

/// Polls F every 50 ms until it returns Some, panicking with WHAT after TIMEOUT.
#[track_caller]
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What /proc/PID/stat says: state letter, ppid, process group, session, start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub session: i32,
    pub starttime: u64,
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        pid,
        state: f[0].chars().next()?,
        ppid: f[1].parse().ok()?,
        pgid: f[2].parse().ok()?,
        session: f[3].parse().ok()?,
        starttime: f[19].parse().ok()?,
    })
}

/// The name of PID (its comm, as `ps -e` shows it).
pub fn proc_comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim_end().to_owned()).unwrap_or_default()
}

/// The initial environment of PID as NAME=VALUE entries (empty if unreadable).
pub fn proc_environ(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|&c| c == 0).filter(|e| !e.is_empty()).map(|e| String::from_utf8_lossy(e).into_owned()).collect()
        })
        .unwrap_or_default()
}

pub fn proc_cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim_end().to_owned())
        .unwrap_or_default()
}

/// Every process on the system (but this one).
pub fn all_procs() -> Vec<ProcStat> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != me)
        .filter_map(proc_stat)
        .collect()
}

/// Whether the very process described by S (same pid, same start time) still
/// exists, zombie or not.
pub fn still_exists(s: &ProcStat) -> Option<ProcStat> {
    proc_stat(s.pid).filter(|now| now.starttime == s.starttime)
}

/// Asserts no process of PROCS exists any more (not even as a zombie),
/// allowing GRACE for the last exits to be reaped.
#[track_caller]
pub fn assert_all_gone(procs: &[ProcStat], grace: Duration, what: &str) {
    let deadline = std::time::Instant::now() + grace;
    loop {
        let left: Vec<ProcStat> = procs.iter().filter_map(still_exists).collect();
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("{what}: processes still there after {grace:?} (state Z = zombie):\n{}", describe_procs(&left));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Describes processes for assertion messages.
pub fn describe_procs(procs: &[ProcStat]) -> String {
    procs
        .iter()
        .map(|p| format!("  pid {} state {} ppid {} pgid {}: {}", p.pid, p.state, p.ppid, p.pgid, proc_cmdline(p.pid)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every process (but this one) whose initial environment has STIGMER_HOME=HOME.
pub fn home_procs(home: &Path) -> Vec<ProcStat> {
    let entry = format!("STIGMER_HOME={}", home.display());
    all_procs().into_iter().filter(|p| proc_environ(p.pid).contains(&entry)).collect()
}

/// The supervisor (`stigmer server --supervise`) of HOME, if one runs.
pub fn supervisor_of(home: &Path) -> Option<ProcStat> {
    home_procs(home).into_iter().find(|p| proc_cmdline(p.pid).contains("--supervise") && p.state != 'Z')
}

/// Sends SIG to PID: Ok, or the errno (ESRCH when it is already gone). The one place tests
/// send a signal; [`kill`] and [`signal`] say what a failure means.
pub fn send_signal(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Sends SIG to PID, which must exist (a test failure otherwise).
#[track_caller]
pub fn signal(pid: i32, sig: i32) {
    if let Err(e) = send_signal(pid, sig) {
        panic!("kill({pid}, {sig}): {e}");
    }
}

/// Sends SIG to PID, ignoring a process that is already gone (cleanup).
pub fn kill(pid: i32, sig: i32) {
    let _ = send_signal(pid, sig);
}

/// A child process of the test that is SIGKILLed and reaped when dropped.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
