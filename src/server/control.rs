//! The control channel: the CLI and the running supervisor talk over a unix stream socket in
//! `$STIGMER_HOME/run` (a 0700 directory; the socket 0600), one JSON line each way. Both ends
//! check that the other runs as the same user (SO_PEERCRED). Being able to connect is the proof
//! that a supervisor of this home lives; nothing is ever signalled by a pid read from a file.
//! The supervisor binds the socket again when it finds it gone (run/ deleted), and a caller
//! that gets no answer says why: the supervisor is stopped (SIGSTOP), or silent past a limit.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::state::{RunDir, StatusReport};
use crate::platform;

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub(crate) enum Request {
    Status,
    /// Stop every service and exit; the reply comes when the services are gone.
    Stop,
    /// One service: start it (if stopped), stop it (it stays down), restart it.
    Start {
        name: String,
    },
    StopService {
        name: String,
    },
    Restart {
        name: String,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub(crate) struct Reply {
    pub(crate) ok: bool,
    pub(crate) error: Option<String>,
    pub(crate) status: Option<Box<StatusReport>>,
}

impl Reply {
    pub(crate) fn done() -> Self {
        Reply { ok: true, ..Reply::default() }
    }

    pub(crate) fn failed(error: impl Into<String>) -> Self {
        Reply { ok: false, error: Some(error.into()), status: None }
    }
}

/// A request the supervisor's main loop answers (now or once the work is done).
pub(crate) type Call = (Request, Sender<Reply>);

/// Replies handed to a connection's thread and not yet written.
static UNWRITTEN: AtomicUsize = AtomicUsize::new(0);

/// Before the supervisor exits: lets the last replies (the `stop` that ended it) reach their
/// callers, who would otherwise see a closed socket.
pub(crate) fn flush_replies(within: Duration) {
    let deadline = Instant::now() + within;
    while UNWRITTEN.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The peer's pid, once its uid is ours (SO_PEERCRED: for the CLI, the supervisor that called
/// listen(); for the supervisor, the CLI that connected).
fn check_peer(stream: &UnixStream) -> io::Result<u32> {
    let (theirs, pid) = platform::peer_process(stream)?;
    let mine = platform::effective_uid();
    if theirs != mine {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the control socket's peer runs as uid {theirs}, not {mine}"),
        ));
    }
    Ok(pid)
}

/// How often a caller waiting for an answer looks at the supervisor's state.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Why a connected supervisor gave no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Silence {
    #[error(
        "the stigmer server supervisor (pid {pid}) is stopped (SIGSTOP) and cannot answer; resume it with `kill -CONT {pid}`, then try again"
    )]
    Stopped { pid: u32 },
    #[error(
        "the stigmer server supervisor (pid {pid}) did not answer within {within:?}; see {log}; if it stays silent, `kill -9 {pid}` ends it and its keeper then ends every service"
    )]
    Silent { pid: u32, within: Duration, log: String },
}

/// The CLI side: Ok(None) when no supervisor answers (none runs for this home). WITHIN bounds
/// the wait for the answer (None: as long as the supervisor works on it); a stopped supervisor
/// is reported at once, whatever WITHIN.
pub(crate) fn call(
    run: &RunDir,
    request: &Request,
    within: Option<Duration>,
    log: &Path,
) -> anyhow::Result<Option<Reply>> {
    let path = run.control_path();
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("connecting to {}: {e}", path.display())),
    };
    let pid = check_peer(&stream).map_err(|e| anyhow::anyhow!("{}: {e}; not talking to it", path.display()))?;
    stream.set_read_timeout(Some(LOOK_EVERY))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    if let Err(e) = (&stream).write_all(&line) {
        // The supervisor exited while we asked (it had stopped; its socket was still open): as
        // good as not running, which the caller confirms with the lock.
        return match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Ok(None),
            _ => Err(anyhow::anyhow!("talking to the supervisor on {}: {e}", path.display())),
        };
    }
    let started = Instant::now();
    let mut reader = BufReader::new(&stream);
    let mut answer = Vec::new();
    loop {
        match reader.read_until(b'\n', &mut answer) {
            Ok(_) if answer.is_empty() => return Ok(None),
            Ok(_) => return Ok(Some(serde_json::from_slice(&answer)?)),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if matches!(platform::process_state(pid), Some('T' | 't')) {
                    return Err(Silence::Stopped { pid }.into());
                }
                if let Some(within) = within.filter(|w| started.elapsed() >= *w) {
                    return Err(Silence::Silent { pid, within, log: log.display().to_string() }.into());
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => {
                return Ok(None);
            }
            Err(e) => return Err(anyhow::anyhow!("talking to the supervisor on {}: {e}", path.display())),
        }
    }
}

/// The supervisor side: the bound socket, bound again at the same path when the path no longer
/// names it (run/ or the socket deleted), so the CLI always finds the supervisor.
pub(crate) struct ControlSocket {
    path: PathBuf,
    bound: (u64, u64),
    /// The listening socket of the current accept thread, to wake it when it is replaced.
    listening: i32,
    calls: Sender<Call>,
}

/// Binds the socket (the caller holds the home's lock, so a file left there is a dead
/// supervisor's) and forwards each request to the returned receiver.
pub(crate) fn listen(run: &RunDir) -> io::Result<(ControlSocket, Receiver<Call>)> {
    let (tx, rx) = mpsc::channel();
    let mut socket = ControlSocket { path: run.control_path(), bound: (0, 0), listening: -1, calls: tx };
    socket.bind()?;
    Ok((socket, rx))
}

impl ControlSocket {
    fn bind(&mut self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(dir)?;
        }
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&self.path)?;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))?;
        let meta = std::fs::symlink_metadata(&self.path)?;
        self.bound = (meta.dev(), meta.ino());
        if self.listening >= 0 {
            // Wakes the old accept thread (accept fails on a shut-down socket), which then ends.
            let _ = nix::sys::socket::shutdown(self.listening, nix::sys::socket::Shutdown::Both);
        }
        self.listening = listener.as_raw_fd();
        let tx = self.calls.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        let tx = tx.clone();
                        std::thread::spawn(move || serve(stream, tx));
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                    Err(_) => {}
                }
            }
        });
        Ok(())
    }

    /// Binds again if the path no longer names our socket; Ok(true) when it did.
    pub(crate) fn ensure(&mut self) -> io::Result<bool> {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.bound);
        if ours {
            return Ok(false);
        }
        self.bind()?;
        Ok(true)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

fn serve(stream: UnixStream, calls: Sender<Call>) {
    if let Err(e) = check_peer(&stream) {
        tracing::warn!("control socket: {e}");
        return;
    }
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line).is_err() {
        return;
    }
    let request = match serde_json::from_str::<Request>(&line) {
        Ok(request) => request,
        Err(e) => return write_reply(&stream, &Reply::failed(format!("bad request: {e}"))),
    };
    if hung_up(&stream) {
        // Asked while we were stopped (SIGSTOP) and given up on: the caller was told to ask
        // again, so a request it no longer waits for is not carried out later by surprise.
        tracing::info!("control socket: dropped a {request:?} request whose caller has gone");
        return;
    }
    let (tx, rx) = mpsc::channel();
    UNWRITTEN.fetch_add(1, Ordering::SeqCst);
    if calls.send((request, tx)).is_ok()
        && let Ok(reply) = rx.recv()
    {
        write_reply(&stream, &reply);
    }
    UNWRITTEN.fetch_sub(1, Ordering::SeqCst);
}

/// Whether the caller closed its end (it stopped waiting for the answer): after its one
/// request line, a peek finds the end of the stream rather than nothing yet.
fn hung_up(stream: &UnixStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    let mut byte = [0u8; 1];
    matches!(recv(stream.as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT), Ok(0))
}

fn write_reply(mut stream: &UnixStream, reply: &Reply) {
    if let Ok(mut text) = serde_json::to_vec(reply) {
        text.push(b'\n');
        let _ = stream.write_all(&text);
    }
}
