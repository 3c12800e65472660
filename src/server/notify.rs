//! The sd_notify protocol, both ways. As a service manager: one unix datagram socket per
//! `ready = { notify = true }` service in `$STIGMER_HOME/run` (0600), whose path that service
//! gets as NOTIFY_SOCKET. The socket a datagram arrives on says which service speaks: the pid in
//! its credentials (SO_PASSCRED / SCM_CREDENTIALS) is only checked to be one of that service's
//! processes (its main process or a descendant, as systemd's NotifyAccess=all), never used to
//! pick the service, so a root service that forges credentials speaks for itself alone. As a
//! service itself: READY=1 / STOPPING=1 to our own NOTIFY_SOCKET, when systemd (Type=notify) or
//! another manager set one.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use crate::platform;

pub(crate) struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    bound: (u64, u64),
}

/// One datagram: its `KEY=VALUE` lines and the pid that sent it.
pub(crate) struct Message {
    pub(crate) pid: Option<u32>,
    pub(crate) fields: Vec<(String, String)>,
}

impl NotifySocket {
    /// Binds PATH (0600 whatever the umask; run/ is 0700 anyway).
    pub(crate) fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let sock = UnixDatagram::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        platform::pass_credentials(&sock)?;
        sock.set_nonblocking(true)?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Self { sock, path: path.to_owned(), bound: (meta.dev(), meta.ino()) })
    }

    /// Binds again if the path no longer names this socket (run/ deleted): the service keeps
    /// its NOTIFY_SOCKET path, which then reaches us again.
    pub(crate) fn ensure(&mut self) -> io::Result<()> {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.bound) {
            return Ok(());
        }
        *self = Self::bind(&self.path)?;
        Ok(())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
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
