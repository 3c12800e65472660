//! Unpacks a directory component's tar stream, refusing anything that could write outside the
//! destination: absolute or `..` paths, links, devices, and symlinks whose target leaves the tree.
//! The stream is hash-checked by the caller, but this stays safe for any input.

use std::io::{self, Read};
use std::path::{Component as PathPart, Path};

use super::links::link_stays_inside;

#[derive(Debug, thiserror::Error)]
pub(crate) enum UnpackError {
    #[error("archive entry {path:?} {why}")]
    Refused { path: String, why: &'static str },
    #[error("unpacking into {dest}: {source}")]
    Io { dest: String, source: io::Error },
}

/// Unpacks `reader` (a tar stream) into the existing, empty directory `dest`.
pub(crate) fn unpack(reader: impl Read, dest: &Path) -> Result<(), UnpackError> {
    let io_err = |source| UnpackError::Io { dest: dest.display().to_string(), source };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let path = entry.path().map_err(io_err)?.into_owned();
        let shown = || path.display().to_string();
        let refuse = |why| UnpackError::Refused { path: shown(), why };
        if !path.components().all(|p| matches!(p, PathPart::Normal(_))) || path.as_os_str().is_empty() {
            return Err(refuse("is not a plain relative path"));
        }
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target =
                    entry.link_name().map_err(io_err)?.ok_or_else(|| refuse("is a symlink without a target"))?;
                if !link_stays_inside(&path, &target) {
                    return Err(refuse("is a symlink pointing outside the component"));
                }
            }
            _ => return Err(refuse("is not a file, directory or symlink")),
        }
        // unpack_in re-checks the path and refuses to write through a symlinked parent.
        if !entry.unpack_in(dest).map_err(io_err)? {
            return Err(refuse("escapes the destination"));
        }
    }
    Ok(())
}
