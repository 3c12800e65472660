//! The system cache: components unpacked at image build time (`stigmer image`) under
//! SYSTEM_CACHE/<sha256>/NAME, used before the per-user cache so that a container starts a
//! directory or PyInstaller component with a read-only root, any uid and no home at all.
//!
//! Trust rule. A tree cannot carry the per-user stamp (inode and ctime change with every layer
//! unpack), so it is trusted only when nobody but root can have put it there or changed it since:
//! - every directory from / down to the entry is a real directory (no symlink), owned by root
//!   and writable by no one else;
//! - nothing this process could do changes it: the entry is on a read-only mount (ST_RDONLY, a
//!   container's read-only root), or this process is not root (a root-owned tree that is
//!   writable by no one else changes only by root);
//! - every path of the build-time manifest, which is the index embedded in this binary (the
//!   entry is named by the payload's sha256), is there with its type, size, execute bits and
//!   link target, owned by root and not writable.
//!
//! Anything else is not trusted, silently: the start goes on to the per-user cache, as before.
//! `stigmer verify` hashes the per-user cache; this tree is covered by the image's digest.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::embed::{Component, IndexEntry, Kind};
use crate::platform;

use super::{CacheError, RunError};
use crate::embed::UnpackError;

/// Where `stigmer image` puts the unpacked components.
pub(crate) const SYSTEM_CACHE: &str = "/usr/lib/stigmer/cache";

/// The entry point of `c` in the system cache, if the trust rule holds for it.
pub(super) fn trusted_exe(c: &Component) -> Option<PathBuf> {
    let item = Path::new(SYSTEM_CACHE).join(c.sha256).join(c.name);
    let meta = fs::symlink_metadata(&item).ok()?;
    let st = nix::sys::statvfs::statvfs(&item).ok()?;
    if !st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) && nix::unistd::geteuid().is_root() {
        return None;
    }
    let sealed = |m: &fs::Metadata| m.uid() == 0 && m.mode() & 0o222 == 0;
    let mut dir = item.parent();
    while let Some(d) = dir {
        let m = fs::symlink_metadata(d).ok()?;
        if !m.is_dir() || m.uid() != 0 || m.mode() & 0o022 != 0 {
            return None;
        }
        dir = d.parent();
    }
    match c.kind {
        Kind::File => {
            (meta.is_file() && sealed(&meta) && meta.len() == c.size && meta.mode() & 0o111 != 0).then(|| item.clone())
        }
        Kind::Dir(index) => {
            if !meta.is_dir() || !sealed(&meta) {
                return None;
            }
            for e in index.entries() {
                let m = fs::symlink_metadata(item.join(e.path())).ok()?;
                let ok = match e {
                    IndexEntry::Dir { .. } => m.is_dir() && sealed(&m),
                    IndexEntry::File { mode, size, .. } => {
                        m.is_file() && sealed(&m) && m.len() == size && m.permissions().mode() & 0o111 == mode & 0o111
                    }
                    IndexEntry::Symlink { path, target } => {
                        m.file_type().is_symlink()
                            && m.uid() == 0
                            && fs::read_link(item.join(path)).ok().as_deref() == Some(Path::new(target))
                    }
                };
                if !ok {
                    return None;
                }
            }
            Some(item.join(c.name))
        }
    }
}

/// The cache runner's start: from the system cache when it holds a trusted `c`, else from the
/// per-user cache (PER_USER); a per-user cache that cannot be written is named with its fix.
pub(super) fn start(
    c: &'static Component,
    argv: &[CString],
    envp: &[CString],
    per_user: impl FnOnce() -> Result<std::convert::Infallible, RunError>,
) -> Result<std::convert::Infallible, RunError> {
    if let Some(exe) = trusted_exe(c) {
        return Err(exec(&exe, argv, envp));
    }
    per_user().map_err(|e| unwritable(c, e))
}

/// A read-only or foreign directory where the cache must write is no matter of space (what the
/// cache's I/O error suggests): say which directory and what gives the component one.
fn unwritable(c: &'static Component, e: RunError) -> RunError {
    let (path, source) = match &e {
        RunError::Cache(CacheError::Io { path, source }) => (path.clone(), source),
        RunError::Cache(CacheError::Unpack { source: UnpackError::Io { dest, source }, .. }) => (dest.clone(), source),
        _ => return e,
    };
    match source.raw_os_error() {
        Some(errno @ (libc::EROFS | libc::EACCES | libc::EPERM)) => {
            RunError::Unwritable { name: c.name, path, reason: nix::errno::Errno::from_raw(errno).desc().to_owned() }
        }
        _ => e,
    }
}

/// Runs EXE in place; returns only on failure.
pub(super) fn exec(exe: &Path, argv: &[CString], envp: &[CString]) -> RunError {
    tracing::debug!(path = %exe.display(), "runner=cache system=true");
    let path = CString::new(exe.as_os_str().as_encoded_bytes()).unwrap_or_default();
    let errno = platform::exec_path(&path, argv, envp);
    RunError::Exec { path: exe.display().to_string(), errno, hint: "" }
}
