//! The control channel: the CLI and the running supervisor talk over a unix stream socket in
//! `$STIGMER_HOME/run` (a 0700 directory; the socket 0600), one JSON line each way. Both ends
//! check that the other runs as the same user (SO_PEERCRED). Being able to connect is the proof
//! that a supervisor of this home lives; nothing is ever signalled by a pid read from a file.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
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

fn check_peer(stream: &UnixStream) -> io::Result<()> {
    let theirs = platform::peer_uid(stream)?;
    let mine = platform::effective_uid();
    if theirs != mine {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the control socket's peer runs as uid {theirs}, not {mine}"),
        ));
    }
    Ok(())
}

/// The CLI side: Ok(None) when no supervisor answers (none runs for this home).
pub(crate) fn call(run: &RunDir, request: &Request, timeout: Option<Duration>) -> anyhow::Result<Option<Reply>> {
    let path = run.control_path();
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("connecting to {}: {e}", path.display())),
    };
    check_peer(&stream).map_err(|e| anyhow::anyhow!("{}: {e}; not talking to it", path.display()))?;
    stream.set_read_timeout(timeout)?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    let mut answer = String::new();
    let exchanged = stream.write_all(&line).and_then(|()| BufReader::new(&stream).read_line(&mut answer));
    match exchanged {
        // The supervisor exited while we asked (it had stopped; its socket was still open): as
        // good as not running, which the caller confirms with the lock.
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => Ok(None),
        Err(e) => Err(anyhow::anyhow!("talking to the supervisor on {}: {e}", path.display())),
        Ok(_) if answer.is_empty() => Ok(None),
        Ok(_) => Ok(Some(serde_json::from_str(&answer)?)),
    }
}

/// The supervisor side: binds the socket (the caller holds the lock, so a file left there is a
/// dead supervisor's) and forwards each request to the returned receiver.
pub(crate) fn listen(run: &RunDir) -> io::Result<Receiver<Call>> {
    let path = run.control_path();
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || serve(stream, tx));
        }
    });
    Ok(rx)
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
    let (tx, rx) = mpsc::channel();
    UNWRITTEN.fetch_add(1, Ordering::SeqCst);
    if calls.send((request, tx)).is_ok()
        && let Ok(reply) = rx.recv()
    {
        write_reply(&stream, &reply);
    }
    UNWRITTEN.fetch_sub(1, Ordering::SeqCst);
}

fn write_reply(mut stream: &UnixStream, reply: &Reply) {
    if let Ok(mut text) = serde_json::to_vec(reply) {
        text.push(b'\n');
        let _ = stream.write_all(&text);
    }
}
