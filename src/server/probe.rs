//! Readiness and health probes: an HTTP GET answering 2xx, a TCP port accepting, or a command
//! exiting 0. Each probe runs on a thread of its own with a timeout, so twenty services probed at
//! once cost no more wall time than one. Hand-written: one request line does not earn an HTTP
//! client crate.
//!
//! A command probe is a child of the supervisor, whose main loop reaps every child with
//! waitpid(-1): the probe registers its pid in EXEC_PROBES while spawning (under the lock the
//! reaper also holds), and the reaper hands it the exit status instead of treating it as a
//! service's exit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

/// Exec probes in flight: pid -> where its exit code goes.
pub(crate) static EXEC_PROBES: Mutex<Vec<(u32, Sender<i32>)>> = Mutex::new(Vec::new());

/// What to ask, resolved against the service (its address, its environment).
#[derive(Debug, Clone)]
pub(crate) enum Check {
    Http { addr: String, path: String },
    Tcp { addr: String },
    Exec { argv: Vec<String>, env: Vec<(std::ffi::OsString, std::ffi::OsString)>, cwd: std::path::PathBuf },
}

/// Starts CHECK on a thread; its verdict (Err: why not) arrives on the receiver.
pub(crate) fn start(check: Check, timeout: Duration) -> Receiver<Result<(), String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let verdict = match &check {
            Check::Http { addr, path } => http_ok(addr, path, timeout),
            Check::Tcp { addr } => connect(addr, timeout).map(drop),
            Check::Exec { argv, env, cwd } => exec_ok(argv, env, cwd, timeout),
        };
        let _ = tx.send(verdict);
    });
    rx
}

/// Whether something accepts connections at `host:port`.
pub(crate) fn reachable(addr: &str) -> bool {
    connect(addr, Duration::from_millis(500)).is_ok()
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(|e| format!("{addr}: {e}"))?.collect();
    let mut last = format!("{addr}: no address");
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connecting to {a}: {e}"),
        }
    }
    Err(last)
}

fn http_ok(addr: &str, path: &str, timeout: Duration) -> Result<(), String> {
    let mut stream = connect(addr, timeout)?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| format!("GET {path}: {e}"))?;
    // "HTTP/1.x 2xx"
    if head.starts_with(b"HTTP/1.") && head[9] == b'2' {
        Ok(())
    } else {
        Err(format!("GET {path}: {}", String::from_utf8_lossy(&head[9..]).trim()))
    }
}

fn exec_ok(
    argv: &[String],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
    cwd: &std::path::Path,
    timeout: Duration,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    let pid = {
        let mut probes = EXEC_PROBES.lock().unwrap_or_else(|e| e.into_inner());
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{}: {e}", argv[0]))?;
        probes.push((child.id(), tx));
        child.id()
    };
    let outcome = rx.recv_timeout(timeout);
    match outcome {
        Ok(0) => Ok(()),
        Ok(code) => Err(format!("{} exited with {}", argv[0], describe_code(code))),
        Err(_) => {
            let mut probes = EXEC_PROBES.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = probes.iter().position(|(p, _)| *p == pid) {
                probes.remove(at);
                // Not reaped yet (the reaper would have removed it): still ours to kill.
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
            }
            Err(format!("{} did not exit within {timeout:.1?}", argv[0]))
        }
    }
}

/// Exit codes as the reaper passes them: 128 + n for a signal.
fn describe_code(code: i32) -> String {
    if code > 128 { format!("signal {}", code - 128) } else { format!("code {code}") }
}
