//! One of each for the files stigmer keeps under the home: the atomic write (temp sibling,
//! fsync, rename, directory fsync), the atomic symlink replacement, and the lock-file open.
//! Nothing is ever written or locked through a symlink.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `.NAME.tmp-PID` beside `path`: hidden, and unique to this process.
fn temp_sibling(path: &Path) -> PathBuf {
    path.with_file_name(format!("{}{}", temp_prefix(path), std::process::id()))
}

/// How the temp siblings `write_atomic` makes for PATH begin: one left by a writer that was killed
/// before its rename starts so.
pub(crate) fn temp_prefix(path: &Path) -> String {
    format!(".{}.tmp-", path.file_name().unwrap_or_default().to_string_lossy())
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Replaces `path` with `contents` (mode `mode`): readers see the old file or the new one,
/// never a part, and after a crash the new one is either complete or absent.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_sibling(path);
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut file =
            OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(libc::O_NOFOLLOW).open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sync_parent(path)
}

/// Makes `link` a symlink to `target`, replacing what link was (the caller decides whether it
/// may be replaced): never a moment without a link.
pub(crate) fn symlink_atomic(target: &Path, link: &Path) -> io::Result<()> {
    let tmp = temp_sibling(link);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    if let Err(e) = std::fs::rename(&tmp, link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(link)
}

/// Opens the lock file `path` for flock, creating it (0600) if needed, never through a symlink.
/// Close-on-exec, as every fd std opens; a caller that wants the lock inherited clears it.
pub(crate) fn open_lock(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}
