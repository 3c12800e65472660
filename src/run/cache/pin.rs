//! The server's pin: the running stigmer binary copied into the cache, so that a server keeps
//! reaching exactly its own build when the installed binary is replaced or deleted.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::stamp;
use super::store::{
    CacheError, CacheRoot, ENTRY_FIX, LOCK_FILE, Listed, LockMode, Removal, START_ATTEMPTS, USE_FILE,
    check_private_dir, io_err, lock_at, remove_any, sync_dir,
};
use crate::embed::HashingReader;
use crate::home::{Home, files};
use crate::platform;

/// The file name of a pinned stigmer binary inside its entry.
const PINNED_NAME: &str = "stigmer";

/// This stigmer binary, copied into the cache (`cache/<its sha256>/stigmer`) and held in use
/// for as long as the value lives, so that a server keeps reaching exactly its own build when
/// the installed binary is replaced or deleted (`brew upgrade` + `brew cleanup`), and `cache
/// prune` keeps it while the server runs.
pub(crate) struct SelfPin {
    exe: PathBuf,
    _in_use: File,
}

impl SelfPin {
    pub(crate) fn exe(&self) -> &Path {
        &self.exe
    }
}

/// Pins this binary (see SelfPin): hashed from /proc/self/exe (the file we run, even if its
/// path now names another or nothing), copied once per build (hashed as it is written), then
/// reused while its stamp says it is untouched, as every entry is: stats, not a second hash.
pub(crate) fn pin_self(home: &Home) -> Result<SelfPin, CacheError> {
    let root = CacheRoot::open(home)?;
    let own = |what| move |e: io::Error| io_err(Path::new(what))(e);
    let sha = HashingReader::new(platform::open_self().map_err(own("/proc/self/exe"))?)
        .finish()
        .map_err(own("/proc/self/exe"))?;
    let dir = root.path.join(&sha);
    let exe = dir.join(PINNED_NAME);
    let stamp = dir.join(format!(".{PINNED_NAME}.stamp"));
    let stamp_of = |m: &fs::Metadata| stamp::text([m]);
    for _ in 0..START_ATTEMPTS {
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(&dir)(e)),
            _ => {}
        }
        check_private_dir(&dir, ENTRY_FIX)?;
        let Some(filling) = lock_at(&dir.join(LOCK_FILE), LockMode::Exclusive, false)? else { continue };
        let intact = fs::symlink_metadata(&exe)
            .is_ok_and(|m| m.is_file() && fs::read_to_string(&stamp).is_ok_and(|text| text == stamp_of(&m)));
        if !intact {
            let tmp = dir.join(format!(".{PINNED_NAME}.tmp-{}", std::process::id()));
            let _ = remove_any(&tmp);
            let copied = (|| {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o555)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&tmp)?;
                let mut reader = HashingReader::new(platform::open_self()?);
                io::copy(&mut reader, &mut file)?;
                if reader.finish()? != sha {
                    return Err(io::Error::other("this stigmer binary changed while it was being copied"));
                }
                file.sync_all()?;
                fs::rename(&tmp, &exe)
            })();
            if let Err(e) = copied {
                let _ = remove_any(&tmp);
                return Err(io_err(&exe)(e));
            }
            sync_dir(&dir)?;
            let meta = fs::symlink_metadata(&exe).map_err(io_err(&exe))?;
            files::write_atomic(&stamp, stamp_of(&meta).as_bytes(), 0o600).map_err(io_err(&stamp))?;
        }
        drop(filling);
        let Some(in_use) = lock_at(&dir.join(USE_FILE), LockMode::Shared, false)? else { continue };
        remove_unused_pins(&root, &sha);
        return Ok(SelfPin { exe, _in_use: in_use });
    }
    Err(io_err(&dir)(io::Error::other("the entry keeps being removed while it is pinned")))
}

/// Removes the pins of other builds that no running server holds (an upgrade leaves the old
/// build's pin behind once its server stops). One held by a running server, or being filled, is
/// kept (`CacheRoot::remove_entry`). Failures are left for `cache prune`: they do not stop a start.
fn remove_unused_pins(root: &CacheRoot, own: &str) {
    let Ok(listed) = root.list() else { return };
    for name in listed.into_iter().filter_map(|l| match l {
        Listed::Entry(name) => Some(name),
        Listed::NotOurs { .. } => None,
    }) {
        if name == own || !root.is_pin(&name) {
            continue;
        }
        match root.remove_entry(&name) {
            Ok(Removal::Removed) => tracing::debug!("removed the unused pin {name}"),
            Ok(_) => {}
            Err(e) => tracing::debug!("the pin {name} stays: {e}"),
        }
    }
}

impl CacheRoot {
    /// Whether the entry NAME is a pinned stigmer binary, which no embedded component is.
    pub(crate) fn is_pin(&self, name: &str) -> bool {
        !crate::embed::components().iter().any(|c| c.sha256 == name)
            && fs::symlink_metadata(self.path.join(name).join(PINNED_NAME)).is_ok_and(|m| m.is_file())
    }
}
