//! macOS (and other non-Linux Unix): no memfd, so every component runs from the cache.
//! Not built or tested on this project's Linux CI; keep it this small.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io;

use super::MemfdError;

pub(crate) fn memfd_exec(
    _name: &str,
    _keep_open: bool,
    _fill: impl FnOnce(&mut File) -> io::Result<()>,
    _argv: &[CString],
    _envp: &[CString],
) -> Result<Infallible, MemfdError> {
    Err(MemfdError::Unavailable("this platform has no memfd".into()))
}

pub(crate) fn splice_file(_from: &File, _offset: u64, _len: u64, _to: &File) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

pub(crate) fn file_offset_of(_ptr: *const u8) -> Option<u64> {
    None
}

/// Mach-O has LC_UUID instead; the caller falls back to version + payload digests.
pub(crate) fn gnu_build_id() -> Option<Vec<u8>> {
    None
}

/// fsyncs every file and directory under `dir` (there is no syncfs).
pub(crate) fn sync_tree(dir: &std::path::Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}

pub(crate) fn open_self() -> io::Result<File> {
    File::open(std::env::current_exe()?)
}

/// No parent-death signal on macOS: services are still in their own process groups, which the
/// supervisor kills on every way out it controls.
pub(crate) fn die_with_parent(_parent: u32) -> io::Result<()> {
    Ok(())
}

pub(crate) fn become_subreaper() -> io::Result<()> {
    Ok(())
}

/// Without a subreaper nothing is adopted; the services' process groups are all there is.
pub(crate) fn child_pids() -> Vec<u32> {
    Vec::new()
}

pub(crate) fn noexec_mount(_path: &std::path::Path) -> Option<std::path::PathBuf> {
    None
}

pub(crate) fn memfd_support() -> (Result<(), String>, Option<String>) {
    (Err("this platform has no memfd; every component runs from the cache".into()), None)
}
