//! The cache runner: `$STIGMER_HOME/cache/<sha256>/NAME`, filled once and executed from disk.
//!
//! A fill writes into a hidden temp sibling, checks the sha256 of every byte it wrote, syncs,
//! and renames into place under a per-entry lock, so concurrent first runs do the work once and
//! a crash leaves nothing that looks complete. After the rename a stamp records the item's and
//! the entry point's inode, size and ctime, and, for a directory, every path of the tree; the
//! hot path compares a few stats with it (no hashing) and refills an entry that was truncated,
//! deleted or modified in place, since any write moves ctime and no user-space call can set it
//! back. Cached files and directories are read-only, so changing anything takes a chmod first,
//! which moves ctime even where a write through a shared mapping does not (tmpfs); that is also
//! why a start of a directory component need not stat every file of it (see `Entry::state`).
//! `stigmer verify` hashes everything.
//!
//! Entries in use are kept: every run holds a shared flock on its entry's `.use` file, opened
//! without close-on-exec, for as long as the program (and whatever inherits the fd) lives.
//! Removal (`cache clear`/`prune`) takes it exclusively without waiting, skips what it cannot
//! get, and renames the entry away while holding it; a start that finds its entry gone after
//! taking the lock starts over (refilling it). A refill moves the old item aside and deletes it
//! only when no run holds the entry.

use std::convert::Infallible;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::RunError;
use crate::embed::{self, Component, HashingReader, IndexEntry, Kind, UnpackError};
use crate::home::{self, Home, files};
use crate::platform;

/// Held exclusively while an entry is filled.
const LOCK_FILE: &str = ".lock";
/// Held shared by every run of the entry, exclusively by its removal.
const USE_FILE: &str = ".use";
/// How many times a start goes round (entry removed, refilled or busy under it) before giving up.
const START_ATTEMPTS: u32 = 5;
const STAMP_HEADER: &str = "stigmer-stamp 2";
const ROOT_FIX: &str = "remove it; stigmer recreates it as a private directory";
const ENTRY_FIX: &str = "remove it; stigmer refills it";

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

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.display().to_string(), source }
}

/// The cache runner: a trusted home, the entry filled and held in use, exec in place.
pub(super) fn exec(c: &'static Component, argv: &[CString], envp: &[CString]) -> Result<Infallible, RunError> {
    let root = CacheRoot::open(&Home::trusted()?)?;
    let entry = root.entry(c);
    let mut last = Errno::ENOENT;
    for _ in 0..START_ATTEMPTS {
        if entry.state()? != EntryState::Intact {
            entry.fill(false)?;
        }
        // Removed between the check and the lock: start over, which refills it.
        let Some(in_use) = entry.hold()? else { continue };
        let exe = entry.exe();
        tracing::debug!(component = c.name, path = %exe.display(), "runner=cache");
        let path = CString::new(exe.into_os_string().into_encoded_bytes()).unwrap_or_default();
        match platform::exec_path(&path, argv, envp) {
            // A concurrent refill swapped the item under our exec.
            Errno::ENOENT => last = Errno::ENOENT,
            // Someone holds the cached file open for writing: never run what they may be
            // changing; refill into a fresh file (renamed over, so theirs is detached) and run that.
            Errno::ETXTBSY => {
                last = Errno::ETXTBSY;
                drop(in_use);
                entry.fill(true)?;
            }
            errno => return Err(exec_error(&entry.exe(), errno)),
        }
    }
    Err(exec_error(&entry.exe(), last))
}

fn exec_error(exe: &Path, errno: Errno) -> RunError {
    let hint = if errno == Errno::EACCES && platform::noexec_mount(exe).is_some() {
        " (the cache is on a noexec mount: set STIGMER_HOME to a directory on another filesystem)"
    } else {
        ""
    };
    RunError::Exec { path: exe.display().to_string(), errno, hint }
}

/// How a lock is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LockMode {
    Shared,
    Exclusive,
    /// Exclusive, or None at once if anyone holds it.
    TryExclusive,
}

/// Opens (creating, never through a symlink) and locks the lock file `path`, and proves the
/// locked file is still the one at `path`: None if it went away meanwhile (its entry was removed
/// while we waited) or, for TryExclusive, if someone holds it. The fd is close-on-exec unless
/// `inherit`.
fn lock_at(path: &Path, mode: LockMode, inherit: bool) -> Result<Option<File>, CacheError> {
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

/// The file name of a pinned stigmer binary inside its entry.
pub(crate) const PINNED_NAME: &str = "stigmer";

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
    let stamp_of = |m: &fs::Metadata| format!("{STAMP_HEADER}\n{}\n", seal_line(m));
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
        return Ok(SelfPin { exe, _in_use: in_use });
    }
    Err(io_err(&dir)(io::Error::other("the entry keeps being removed while it is pinned")))
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
    path: PathBuf,
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

    pub(crate) fn entry(&self, c: &'static Component) -> Entry {
        let dir = self.path.join(c.sha256);
        Entry { c, item: dir.join(c.name), stamp: dir.join(format!(".{}.stamp", c.name)), dir }
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

    /// Removes leftovers of interrupted removals at the top level.
    pub(crate) fn remove_trash(&self) -> Result<(), CacheError> {
        remove_where(&self.path, |name| name.starts_with(".trash-"))
    }
}

/// Refuses a directory that is a symlink, not a directory, someone else's, or writable by others.
fn check_private_dir(path: &Path, fix_symlink: &str) -> Result<(), CacheError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    check_private(path, &meta, fix_symlink)
}

/// The home's rule (crate::home::check_private), with the link itself refused: a cache
/// directory is only ever one stigmer made.
fn check_private(path: &Path, meta: &fs::Metadata, fix: &str) -> Result<(), CacheError> {
    let rule = home::Private { symlink_fix: Some(fix), not_dir_fix: Some(fix) };
    home::check_private(path, meta, &rule).map_err(|u| CacheError::Unsafe { path: u.path, why: u.why, fix: u.fix })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryState {
    Intact,
    /// Missing, or changed since it was filled: the next run refills it.
    Stale,
}

/// One component's place in the cache.
pub(crate) struct Entry {
    c: &'static Component,
    /// `cache/<sha256>`: shared by components with identical content.
    dir: PathBuf,
    /// `cache/<sha256>/NAME`: the file, or the directory tree.
    item: PathBuf,
    /// `cache/<sha256>/.NAME.stamp`: what the item looked like right after its fill.
    stamp: PathBuf,
}

impl Entry {
    pub(crate) fn exe(&self) -> PathBuf {
        match self.c.kind {
            Kind::File => self.item.clone(),
            Kind::Dir(_) => self.item.join(self.c.name),
        }
    }

    /// Takes the entry's in-use lock (shared, inherited across exec) for the program about to
    /// run; None if the entry was removed while we waited for it.
    fn hold(&self) -> Result<Option<File>, CacheError> {
        lock_at(&self.dir.join(USE_FILE), LockMode::Shared, true)
    }

    /// The hot-path check: a few stats compared with the head of the stamp, whatever the size
    /// of the tree. An entry directory that is not a real directory of ours is refused, never
    /// followed.
    ///
    /// The item (inode and ctime) and the entry point (inode, size, ctime), for everyone. Deeper
    /// in a tree nothing is looked at: it is read-only (files 0444/0555, directories 0555, made
    /// so by the fill), so nothing running as an ordinary user changes anything there without a
    /// chmod first, which is no accident. Root is not bound by the modes: a change it makes deep
    /// in a tree is found by `stigmer verify` (which hashes every file and checks every mode and
    /// name), as is an owner's deliberate chmod. docs/DESIGN.md, "What a start checks".
    pub(crate) fn state(&self) -> Result<EntryState, CacheError> {
        match fs::symlink_metadata(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(EntryState::Stale),
            Err(e) => return Err(io_err(&self.dir)(e)),
            Ok(meta) => check_private(&self.dir, &meta, ENTRY_FIX)?,
        }
        let Ok(file) = File::open(&self.stamp) else { return Ok(EntryState::Stale) };
        // The head is all a start reads (stamps of older builds list every path after it).
        let mut stamp = io::BufReader::with_capacity(512, file);
        let mut line = String::new();
        let mut next_line = |line: &mut String| {
            line.clear();
            match stamp.read_line(line) {
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    line.pop();
                    true
                }
                _ => false,
            }
        };
        let item_now = fs::symlink_metadata(&self.item).ok();
        let item_ok = |line: &str| match (&item_now, &self.c.kind) {
            // A program the modes do not bind (root) may write next to itself at the top of its
            // tree (Python's __pycache__), which moves the top's ctime: its inode is checked.
            (Some(m), Kind::Dir(_)) if platform::may_write(&self.exe()) => {
                line.strip_prefix(&format!("d {} ", m.ino())).is_some()
            }
            (Some(m), _) => seal_line(m) == line,
            (None, _) => false,
        };
        let exe_ok = |line: &str| match self.c.kind {
            // A file is its own entry point: one stat for both lines.
            Kind::File => item_now.as_ref().is_some_and(|m| seal_line(m) == line),
            Kind::Dir(_) => fs::symlink_metadata(self.exe()).is_ok_and(|m| seal_line(&m) == line),
        };
        let intact = next_line(&mut line)
            && line == STAMP_HEADER
            && next_line(&mut line)
            && item_ok(&line)
            && next_line(&mut line)
            && exe_ok(&line);
        Ok(if intact { EntryState::Intact } else { EntryState::Stale })
    }

    /// Fills the entry under its lock; a no-op if another process filled it meanwhile, unless
    /// `force` (the item is intact but must be replaced: it is open for writing somewhere).
    fn fill(&self, force: bool) -> Result<(), CacheError> {
        // Filling a cache nothing can run from would only waste the time and the space.
        let root = self.dir.parent().unwrap_or(&self.dir);
        if let Some(mount) = platform::noexec_mount(root) {
            return Err(CacheError::NoExec { path: root.display().to_string(), mount: mount.display().to_string() });
        }
        let lock_path = self.dir.join(LOCK_FILE);
        let mut attempt = 0;
        let (created, _lock) = loop {
            let created = match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(io_err(&self.dir)(e)),
            };
            check_private_dir(&self.dir, ENTRY_FIX)?;
            // None: a removal took the directory away between our mkdir and our lock.
            if let Some(lock) = lock_at(&lock_path, LockMode::Exclusive, false)? {
                break (created, lock);
            }
            attempt += 1;
            if attempt == START_ATTEMPTS {
                return Err(io_err(&lock_path)(io::Error::other("the entry keeps being removed while it is filled")));
            }
        };
        if !force && self.state()? == EntryState::Intact {
            return Ok(());
        }
        self.remove_leftovers()?;

        let tmp = self.dir.join(format!(".{}.tmp-{}", self.c.name, std::process::id()));
        let _progress = Progress::start(self.c);
        if let Err(e) = self.write_item(&tmp) {
            let _ = remove_any(&tmp);
            if created {
                let _ = fs::remove_file(&lock_path);
                let _ = fs::remove_file(self.dir.join(USE_FILE));
                let _ = fs::remove_dir(&self.dir);
            }
            return Err(e);
        }
        // Nobody may trust the old stamp while the item changes under it.
        let _ = fs::remove_file(&self.stamp);
        if fs::symlink_metadata(&self.item).is_ok() {
            // Programs may be running from the old item: move it aside, and delete it only once
            // no run holds the entry (else the next fill or removal does).
            let trash = self.dir.join(format!(".{}.trash-{}", self.c.name, std::process::id()));
            fs::rename(&self.item, &trash).map_err(io_err(&self.item))?;
            if lock_at(&self.dir.join(USE_FILE), LockMode::TryExclusive, false)?.is_some() {
                remove_any(&trash).map_err(io_err(&trash))?;
            }
        }
        fs::rename(&tmp, &self.item).map_err(io_err(&self.item))?;
        self.write_stamp()?;
        sync_dir(&self.dir)?;
        if created {
            sync_dir(self.dir.parent().unwrap_or(&self.dir))?;
        }
        tracing::debug!(component = self.c.name, path = %self.item.display(), "cache entry filled");
        Ok(())
    }

    /// Temp items of an interrupted fill (we hold the fill lock, so nobody else's), and old
    /// items moved aside by earlier refills once no run holds the entry.
    fn remove_leftovers(&self) -> Result<(), CacheError> {
        let tmp_prefix = format!(".{}.tmp-", self.c.name);
        remove_where(&self.dir, |name| name.starts_with(&tmp_prefix))?;
        if let Some(_unused) = lock_at(&self.dir.join(USE_FILE), LockMode::TryExclusive, false)? {
            let trash_prefix = format!(".{}.trash-", self.c.name);
            remove_where(&self.dir, |name| name.starts_with(&trash_prefix))?;
        }
        Ok(())
    }

    /// Writes the raw content to `tmp`, hashing exactly the bytes written, and makes it durable.
    fn write_item(&self, tmp: &Path) -> Result<(), CacheError> {
        let c = self.c;
        let mut reader = HashingReader::new(c.reader().map_err(io_err(tmp))?);
        match c.kind {
            Kind::File => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o755)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(tmp)
                    .map_err(io_err(tmp))?;
                io::copy(&mut reader, &mut file).map_err(io_err(tmp))?;
                check_digest(c, reader)?;
                // Read-only: changing it takes a chmod first, which moves ctime (the stamp).
                file.set_permissions(fs::Permissions::from_mode(0o555)).map_err(io_err(tmp))?;
                file.sync_all().map_err(io_err(tmp))?;
            }
            Kind::Dir(_) => {
                fs::DirBuilder::new().mode(0o700).create(tmp).map_err(io_err(tmp))?;
                embed::unpack(&mut reader, tmp).map_err(|source| CacheError::Unpack { name: c.name, source })?;
                check_digest(c, reader)?;
                // Read-only like everything in it (see `state`); renamed within its parent only.
                fs::set_permissions(tmp, fs::Permissions::from_mode(0o555)).map_err(io_err(tmp))?;
                platform::sync_tree(tmp).map_err(io_err(tmp))?;
            }
        }
        Ok(())
    }

    /// The stamp: the header, then the item and the entry point with their ctimes (what every
    /// start compares; see `state`).
    fn write_stamp(&self) -> Result<(), CacheError> {
        let stat = |path: &Path| fs::symlink_metadata(path).map_err(io_err(path));
        let text = format!("{STAMP_HEADER}\n{}\n{}\n", seal_line(&stat(&self.item)?), seal_line(&stat(&self.exe())?));
        files::write_atomic(&self.stamp, text.as_bytes(), 0o600).map_err(io_err(&self.stamp))
    }

    /// Hashes everything in the entry against the embedded sha256s: what `stigmer verify` runs.
    /// Returns the problems found (empty when intact).
    pub(crate) fn verify(&self) -> Vec<String> {
        let problems = match self.c.kind {
            Kind::File => vec![verify_file(&self.item, self.c.size, self.c.sha256, 0o755)],
            Kind::Dir(index) => std::iter::once(verify_dir(&self.item))
                .chain(index.entries().map(|e| match e {
                    IndexEntry::File { path, mode, size, sha256 } => {
                        verify_file(&self.item.join(path), size, sha256, mode)
                    }
                    IndexEntry::Dir { path, .. } => verify_dir(&self.item.join(path)),
                    IndexEntry::Symlink { path, target } => {
                        let p = self.item.join(path);
                        (fs::read_link(&p).ok().as_deref() != Some(Path::new(target)))
                            .then(|| format!("{}: not a symlink to {target}", p.display()))
                    }
                }))
                .collect(),
        };
        problems.into_iter().flatten().collect()
    }

    /// Drops the stamp so the next run refills the entry (after `verify` found it damaged).
    pub(crate) fn invalidate(&self) -> io::Result<()> {
        match fs::remove_file(&self.stamp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub(crate) fn exists(&self) -> bool {
        fs::symlink_metadata(&self.item).is_ok()
    }
}

/// What is wrong with one cached directory, if anything: missing, or writable (the start-up
/// check trusts a read-only tree; see `Entry::state`).
fn verify_dir(path: &Path) -> Option<String> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && m.mode() & 0o222 == 0 => None,
        Ok(m) if m.is_dir() => Some(format!(
            "{}: writable directory (mode {:04o}); cached trees are read-only",
            path.display(),
            m.mode() & 0o7777
        )),
        _ => Some(format!("{}: missing directory", path.display())),
    }
}

/// What is wrong with one cached file, if anything: type, size, mode, then sha256.
fn verify_file(path: &Path, size: u64, sha256: &str, mode: u32) -> Option<String> {
    let shown = path.display();
    let meta = match fs::symlink_metadata(path) {
        Err(e) => return Some(format!("{shown}: {e}")),
        Ok(m) => m,
    };
    let got_mode = meta.permissions().mode();
    if !meta.is_file() {
        Some(format!("{shown}: not a regular file"))
    } else if meta.len() != size {
        Some(format!("{shown}: {} bytes, expected {size}", meta.len()))
    } else if got_mode & 0o111 != mode & 0o111 || got_mode & 0o222 != 0 {
        Some(format!("{shown}: mode {:04o}, expected {:04o}", got_mode & 0o7777, mode & 0o555))
    } else {
        match hash_path(path) {
            Ok(got) if got == sha256 => None,
            Ok(got) => Some(format!("{shown}: sha256 {got}, expected {sha256}")),
            Err(e) => Some(format!("{shown}: {e}")),
        }
    }
}

/// What the stamp records of one path: its kind, inode, size and ctime. Any write,
/// truncation, chmod or rename onto it moves ctime, and no user-space call sets it back.
fn seal_line(m: &fs::Metadata) -> String {
    let kind = if m.is_dir() {
        'd'
    } else if m.file_type().is_symlink() {
        'l'
    } else {
        'f'
    };
    format!("{kind} {} {} {} {}", m.ino(), m.len(), m.ctime(), m.ctime_nsec())
}

fn check_digest<R: Read>(c: &Component, reader: HashingReader<R>) -> Result<(), CacheError> {
    let got = reader.finish().map_err(|e| CacheError::Io { path: c.name.to_owned(), source: e })?;
    if got != c.sha256 {
        return Err(CacheError::Corrupt { name: c.name, got, want: c.sha256 });
    }
    Ok(())
}

pub(crate) fn hash_path(path: &Path) -> io::Result<String> {
    HashingReader::new(File::open(path)?).finish()
}

fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Removes every entry of `dir` whose name matches.
fn remove_where(dir: &Path, matches: impl Fn(&str) -> bool) -> Result<(), CacheError> {
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
fn remove_any(path: &Path) -> io::Result<()> {
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

/// A line on stderr when a fill takes long enough to look like a hang, only on a terminal.
struct Progress {
    done: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(c: &'static Component) -> Self {
        if !platform::stderr_is_terminal() {
            return Self { done: None, thread: None };
        }
        let (done, rx) = mpsc::channel::<()>();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            if rx.recv_timeout(Duration::from_millis(500)) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            eprint!("stigmer: unpacking {} ({:.1} MiB, first run only)...", c.name, c.size as f64 / 1048576.0);
            let _ = rx.recv();
            eprintln!(" done in {:.1} s", started.elapsed().as_secs_f64());
        });
        Self { done: Some(done), thread: Some(thread) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
