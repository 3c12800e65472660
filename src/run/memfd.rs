//! The memfd runner: the component's bytes go from our own file into a sealed anonymous memory
//! file (sendfile, no user-space copy, for uncompressed payloads) and are exec'd from there.
//! Nothing touches the disk. The payload is not hashed here: it is part of this executable's
//! read-only image, as trusted as the code doing the copy; the cache, which lives on a mutable
//! disk, is where hashes are checked. Each start fills its own memfd: nothing is shared between
//! starts, nothing is left behind, and nothing in the home is read or written.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use crate::embed::{Component, Compression, Format, blob_file_offset};
use crate::platform::{self, MemfdError};

/// Runs `c` from a private sealed memfd filled here.
pub(super) fn exec(c: &'static Component, argv: &[CString], envp: &[CString]) -> Result<Infallible, MemfdError> {
    let keep_open = c.format == Format::Script;
    tracing::debug!(component = c.name, "runner=memfd");
    let file = filled(c, !keep_open)?;
    Err(platform::exec_memfd_fd(&file, keep_open, argv, envp))
}

/// A new sealed memfd holding `c`'s program. `cloexec` false for scripts, whose interpreter
/// reopens the fd.
fn filled(c: &Component, cloexec: bool) -> Result<File, MemfdError> {
    let mut file = platform::exec_memfd(c.name, cloexec)?;
    write_payload(c, &mut file).map_err(|source| MemfdError::Failed { step: "writing the memfd", source })?;
    platform::seal_memfd(&file)?;
    Ok(file)
}

fn write_payload(c: &Component, memfd: &mut File) -> io::Result<()> {
    let stored = c.stored();
    match c.compression {
        Compression::Zstd(_) => zstd::stream::copy_decode(stored, &mut *memfd),
        Compression::None => match self_offset(stored) {
            Some((own, offset)) => platform::splice_file(&own, offset, stored.len() as u64, memfd),
            None => memfd.write_all(stored),
        },
    }
}

/// Our own file and the offset of the payload in it, so the kernel can copy it without a pass
/// through user space. None if it cannot be located; the caller then copies from the mapped
/// image (the same bytes).
fn self_offset(stored: &'static [u8]) -> Option<(File, u64)> {
    let offset = blob_file_offset(stored)?;
    let own = platform::open_self().ok()?;
    // A cheap check that the offset arithmetic found our bytes.
    let probe_len = stored.len().min(64);
    let mut head = [0u8; 64];
    own.read_exact_at(&mut head[..probe_len], offset).ok()?;
    if head[..probe_len] != stored[..probe_len] {
        tracing::debug!("payload offset mismatch; copying from memory");
        return None;
    }
    Some((own, offset))
}
