//! The cache directory: checked to be ours and private before anything in it is trusted, its
//! per-entry locks, the listing and the removal of entries (`cache clear`/`prune`).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::embed::UnpackError;
use crate::home::{self, Home, files};

/// Held exclusively while an entry is filled.
pub(super) const LOCK_FILE: &str = ".lock";
/// Held shared by every run of the entry, exclusively by its removal.
pub(super) const USE_FILE: &str = ".use";
/// How many times a start goes round (entry removed, refilled or busy under it) before giving up.
pub(super) const START_ATTEMPTS: u32 = 5;
const ROOT_FIX: &str = "remove it; stigmer recreates it as a private directory";
pub(super) const ENTRY_FIX: &str = "remove it; stigmer refills it";

#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheError {
    #[error("refusing to use the cache directory {path}: {why}; {fix}")]
    Unsafe { path: String, why: String, fix: String },
    #[error("cache {path}: {source} (free some space, or set STIGMER_HOME to a writable directory)")]
    Io { path: String, source: io::Error },
    #[error(
        "the cache {path} is on a filesystem mounted noexec ({mount}), so nothing in it can run; \
         set STIGMER_HOME to a directory on another filesystem, or remount {mount} with exec"
    )]
    NoExec { path: String, mount: String },
    #[error(
        "the embedded payload of {name} is corrupt (sha256 {got}, expected {want}); this stigmer binary is damaged, reinstall it"
    )]
    Corrupt { name: &'static str, got: String, want: &'static str },
    #[error("unpacking {name}: {source}")]
    Unpack { name: &'static str, source: UnpackError },
}

impl CacheError {
    /// Out of space or unwritable: a single-file program can still run from a memfd.
    pub(crate) fn is_io(&self) -> bool {
        matches!(self, CacheError::Io { .. } | CacheError::Unpack { source: UnpackError::Io { .. }, .. })
    }

    /// A damaged binary is the launcher's own failure; the rest are about this machine.
    pub(crate) fn is_internal(&self) -> bool {
        matches!(self, CacheError::Corrupt { .. } | CacheError::Unpack { source: UnpackError::Refused { .. }, .. })
    }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.display().to_string(), source }
}

/// How a lock is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum LockMode {
    Shared,
    Exclusive,
    /// Exclusive, or None at once if anyone holds it.
    TryExclusive,
}

/// Opens (creating, never through a symlink) and locks the lock file `path`, and proves the
/// locked file is still the one at `path`: None if it went away meanwhile (its entry was removed
/// while we waited) or, for TryExclusive, if someone holds it. The fd is close-on-exec unless
/// `inherit`.
pub(super) fn lock_at(path: &Path, mode: LockMode, inherit: bool) -> Result<Option<File>, CacheError> {
    let file = match files::open_lock(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    match mode {
        LockMode::Shared => file.lock_shared().map_err(io_err(path))?,
        LockMode::Exclusive => file.lock().map_err(io_err(path))?,
        LockMode::TryExclusive => match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(path)(e)),
        },
    }
    let held = file.metadata().map_err(io_err(path))?;
    match fs::symlink_metadata(path) {
        Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {}
        _ => return Ok(None),
    }
    if inherit {
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
            .map_err(|e| io_err(path)(e.into()))?;
    }
    Ok(Some(file))
}

/// What became of one name in the cache under `cache clear`/`prune`.
pub(crate) enum Removal {
    Removed,
    /// A fill holds it.
    Filling,
    /// A running program holds it.
    InUse,
    /// Another removal took it first.
    Gone,
}

/// A top-level name in the cache directory, sorted into what stigmer made and what it did not.
pub(crate) enum Listed {
    /// `<sha256>`: a real directory with a sha256 name.
    Entry(String),
    /// Anything else (a symlink, a file, a name that is no sha256): never followed or removed.
    NotOurs { name: OsString, what: &'static str },
}

impl Listed {
    pub(crate) fn shown(name: &OsStr) -> String {
        name.to_string_lossy().into_owned()
    }
}

/// The cache directory, checked to be ours and private before anything in it is trusted.
pub(crate) struct CacheRoot {
    pub(super) path: PathBuf,
}

impl CacheRoot {
    /// Creates the cache (0700) if needed and refuses one that others could write into.
    pub(crate) fn open(home: &Home) -> Result<Self, CacheError> {
        let path = home.cache();
        // Checked first: on every start but the first it is there, and that is one lstat.
        if let Ok(meta) = fs::symlink_metadata(&path) {
            check_private(&path, &meta, ROOT_FIX)?;
            return Ok(Self { path });
        }
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(&path).map_err(io_err(&path))?;
            }
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(&path)(e)),
            _ => {}
        }
        check_private_dir(&path, ROOT_FIX)?;
        Ok(Self { path })
    }

    /// The cache of an existing home, without creating it; None if there is none yet.
    pub(crate) fn existing(home: &Home) -> Result<Option<Self>, CacheError> {
        let path = home.cache();
        if fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        check_private_dir(&path, ROOT_FIX)?;
        Ok(Some(Self { path }))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Every visible name in the cache directory, sorted, each classified without following it.
    /// Names starting with '.' are stigmer's own bookkeeping (trash of interrupted removals).
    pub(crate) fn list(&self) -> Result<Vec<Listed>, CacheError> {
        let mut names = Vec::new();
        for e in fs::read_dir(&self.path).map_err(io_err(&self.path))? {
            let e = e.map_err(io_err(&self.path))?;
            let name = e.file_name();
            if name.as_bytes().first() == Some(&b'.') {
                continue;
            }
            let kind = e.file_type().map_err(io_err(&e.path()))?;
            let is_sha = name.len() == 64 && name.as_bytes().iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            names.push(if kind.is_symlink() {
                Listed::NotOurs { name, what: "a symlink" }
            } else if !kind.is_dir() {
                Listed::NotOurs { name, what: "not a directory" }
            } else if !is_sha {
                Listed::NotOurs { name, what: "not a sha256 entry name" }
            } else {
                Listed::Entry(name.to_string_lossy().into_owned())
            });
        }
        let key = |l: &Listed| match l {
            Listed::Entry(n) => OsString::from(n),
            Listed::NotOurs { name, .. } => name.clone(),
        };
        names.sort_by_key(key);
        Ok(names)
    }

    /// Removes the entry `name` (a sha256 directory) unless a fill or a running program holds it.
    pub(crate) fn remove_entry(&self, name: &str) -> Result<Removal, CacheError> {
        let dir = self.path.join(name);
        match check_private_dir(&dir, ENTRY_FIX) {
            Err(CacheError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Ok(Removal::Gone),
            other => other?,
        }
        let gone = || fs::symlink_metadata(&dir).is_err();
        let Some(_filling) = lock_at(&dir.join(LOCK_FILE), LockMode::TryExclusive, false)? else {
            return Ok(if gone() { Removal::Gone } else { Removal::Filling });
        };
        let Some(_in_use) = lock_at(&dir.join(USE_FILE), LockMode::TryExclusive, false)? else {
            return Ok(if gone() { Removal::Gone } else { Removal::InUse });
        };
        // Rename first (still holding both locks) so no start ever sees a half-deleted entry
        // under its real name; one waiting for the lock then finds its lock file gone.
        let trash = self.path.join(format!(".trash-{name}-{}", std::process::id()));
        fs::rename(&dir, &trash).map_err(io_err(&dir))?;
        remove_any(&trash).map_err(io_err(&trash))?;
        Ok(Removal::Removed)
    }

    /// Whether a running program holds the entry NAME (its in-use lock).
    pub(crate) fn in_use(&self, name: &str) -> Result<bool, CacheError> {
        Ok(lock_at(&self.path.join(name).join(USE_FILE), LockMode::TryExclusive, false)?.is_none())
    }

    /// Removes leftovers of interrupted removals at the top level.
    pub(crate) fn remove_trash(&self) -> Result<(), CacheError> {
        remove_where(&self.path, |name| name.starts_with(".trash-"))
    }
}

/// Refuses a directory that is a symlink, not a directory, someone else's, or writable by others.
pub(super) fn check_private_dir(path: &Path, fix_symlink: &str) -> Result<(), CacheError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    check_private(path, &meta, fix_symlink)
}

/// The home's rule (crate::home::check_private), with the link itself refused: a cache
/// directory is only ever one stigmer made.
pub(super) fn check_private(path: &Path, meta: &fs::Metadata, fix: &str) -> Result<(), CacheError> {
    let rule = home::Private { symlink_fix: Some(fix), not_dir_fix: Some(fix) };
    home::check_private(path, meta, &rule).map_err(|u| CacheError::Unsafe { path: u.path, why: u.why, fix: u.fix })
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Removes every entry of `dir` whose name matches.
pub(super) fn remove_where(dir: &Path, matches: impl Fn(&str) -> bool) -> Result<(), CacheError> {
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        if matches(&e.file_name().to_string_lossy()) {
            remove_any(&e.path()).map_err(io_err(&e.path()))?;
        }
    }
    Ok(())
}

/// Removes a file, symlink (never followed) or tree, read-only directories included (bundles
/// may carry 0555 directories, which a non-root user cannot empty without a chmod).
pub(super) fn remove_any(path: &Path) -> io::Result<()> {
    // Another removal (a concurrent `cache clear`) may be deleting the same trash.
    let gone = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            if m.mode() & 0o700 != 0o700 {
                gone(fs::set_permissions(path, fs::Permissions::from_mode(0o700)))?;
            }
            match fs::read_dir(path) {
                Ok(dir) => {
                    for e in dir {
                        match e {
                            Ok(e) => remove_any(&e.path())?,
                            Err(e) => gone(Err(e))?,
                        }
                    }
                }
                Err(e) => gone(Err(e))?,
            }
            gone(fs::remove_dir(path))
        }
        Ok(_) => gone(fs::remove_file(path)),
        Err(e) => gone(Err(e)),
    }
}
