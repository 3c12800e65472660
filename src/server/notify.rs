//! The sd_notify protocol, both ways. As a service manager: a unix datagram socket in
//! `$STIGMER_HOME/run` whose path each `ready = { notify = true }` service gets as
//! NOTIFY_SOCKET; each datagram carries its sender's pid (SO_PASSCRED / SCM_CREDENTIALS), which
//! the supervisor attributes to the service whose main process or descendant sent it, as
//! systemd's NotifyAccess=all does. As a service itself: READY=1 / STOPPING=1 to our own
//! NOTIFY_SOCKET, when systemd (Type=notify) or another manager set one.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use crate::platform;

pub(crate) struct NotifySocket {
    sock: UnixDatagram,
}

/// One datagram: its `KEY=VALUE` lines and the pid that sent it.
pub(crate) struct Message {
    pub(crate) pid: Option<u32>,
    pub(crate) fields: Vec<(String, String)>,
}

impl NotifySocket {
    pub(crate) fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let sock = UnixDatagram::bind(path)?;
        platform::pass_credentials(&sock)?;
        sock.set_nonblocking(true)?;
        Ok(Self { sock })
    }

    /// Every datagram waiting now.
    pub(crate) fn drain(&self) -> Vec<Message> {
        let mut out = Vec::new();
        while let Ok(Some((bytes, pid))) = platform::recv_with_pid(&self.sock) {
            let text = String::from_utf8_lossy(&bytes);
            let fields =
                text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            out.push(Message { pid, fields });
        }
        out
    }
}

/// Tells our own service manager STATE (e.g. "READY=1"), if it gave us a NOTIFY_SOCKET.
pub(crate) fn tell_own_manager(state: &str) {
    let Some(path) = crate::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        platform::send_to_abstract(&sock, name, state.as_bytes())
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = result {
        tracing::warn!("telling our service manager {state}: {e}");
    }
}
