//! The cache runner: `$STIGMER_HOME/cache/<sha256>/NAME`, filled once and executed from disk.
//!
//! A fill writes into a hidden temp sibling, checks the sha256 of every byte it wrote, syncs,
//! and renames into place under a per-entry lock, so concurrent first runs do the work once and
//! a crash leaves nothing that looks complete. After the rename a stamp records each file's
//! inode, size and ctime; the hot path compares those (a few stats, no hashing) and refills an
//! entry that was truncated, deleted or modified in place, since any write moves ctime and no
//! user-space call can set it back. `stigmer verify` hashes everything.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::embed::{self, Component, HashingReader, IndexEntry, Kind, UnpackError};
use crate::home::Home;
use crate::platform;

const LOCK_FILE: &str = ".lock";
const STAMP_HEADER: &str = "stigmer-stamp 1";
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

/// The cache directory, checked to be ours and private before anything in it is trusted.
pub(crate) struct CacheRoot {
    path: PathBuf,
}

impl CacheRoot {
    /// Creates the cache (0700) if needed and refuses one that others could write into.
    pub(crate) fn open(home: &Home) -> Result<Self, CacheError> {
        let path = home.cache();
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

    /// The path to exec for `c`, filling the entry first if it is missing or damaged.
    pub(crate) fn ensure(&self, c: &'static Component) -> Result<PathBuf, CacheError> {
        let entry = self.entry(c);
        if entry.state()? != EntryState::Intact {
            entry.fill()?;
        }
        Ok(entry.exe())
    }

    /// Names in the cache directory that are not stigmer's own hidden bookkeeping.
    pub(crate) fn entry_names(&self) -> Result<Vec<String>, CacheError> {
        let mut names = Vec::new();
        for e in fs::read_dir(&self.path).map_err(io_err(&self.path))? {
            let name = e.map_err(io_err(&self.path))?.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Removes the entry `name` unless a fill holds it; false if it was busy.
    pub(crate) fn remove_entry(&self, name: &str) -> Result<bool, CacheError> {
        let dir = self.path.join(name);
        let meta = fs::symlink_metadata(&dir).map_err(io_err(&dir))?;
        if meta.is_dir()
            && let Ok(lock) = File::open(dir.join(LOCK_FILE))
            && lock.try_lock().is_err()
        {
            return Ok(false);
        }
        // Rename first so no reader ever sees a half-deleted entry under its real name.
        let trash = self.path.join(format!(".trash-{name}-{}", std::process::id()));
        fs::rename(&dir, &trash).map_err(io_err(&dir))?;
        remove_any(&trash).map_err(io_err(&trash))?;
        Ok(true)
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

fn check_private(path: &Path, meta: &fs::Metadata, fix_symlink: &str) -> Result<(), CacheError> {
    let unsafe_dir = |why: String, fix: String| CacheError::Unsafe { path: path.display().to_string(), why, fix };
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("it is a symlink".into(), fix_symlink.into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into(), fix_symlink.into()));
    }
    let me = platform::effective_uid();
    if meta.uid() != me {
        return Err(unsafe_dir(
            format!("it is owned by uid {}, not by you (uid {me})", meta.uid()),
            format!("run `chown -R {me} {}` or set STIGMER_HOME to a directory of your own", path.display()),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(
            format!("others can write into it (mode {mode:04o})"),
            format!("run `chmod 700 {}`", path.display()),
        ));
    }
    Ok(())
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

    /// The hot-path check: stats only, compared with the stamp. An entry directory that is not
    /// a real directory of ours is refused, never followed.
    pub(crate) fn state(&self) -> Result<EntryState, CacheError> {
        match fs::symlink_metadata(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(EntryState::Stale),
            Err(e) => return Err(io_err(&self.dir)(e)),
            Ok(meta) => check_private(&self.dir, &meta, ENTRY_FIX)?,
        }
        let Ok(stamp) = fs::read_to_string(&self.stamp) else { return Ok(EntryState::Stale) };
        let mut lines = stamp.lines();
        if lines.next() != Some(STAMP_HEADER) {
            return Ok(EntryState::Stale);
        }
        for path in self.stamped_paths() {
            let now = fs::symlink_metadata(&path).ok().map(|m| stamp_line(&m));
            if now.is_none() || now.as_deref() != lines.next() {
                return Ok(EntryState::Stale);
            }
        }
        Ok(if lines.next().is_none() { EntryState::Intact } else { EntryState::Stale })
    }

    /// The paths the stamp covers, in index order: the item, then everything in a tree.
    fn stamped_paths(&self) -> impl Iterator<Item = PathBuf> + '_ {
        let index: &[IndexEntry] = match self.c.kind {
            Kind::File => &[],
            Kind::Dir(index) => index,
        };
        std::iter::once(self.item.clone()).chain(index.iter().map(|e| {
            self.item.join(match e {
                IndexEntry::Dir { path, .. } | IndexEntry::File { path, .. } | IndexEntry::Symlink { path, .. } => path,
            })
        }))
    }

    /// Fills the entry under its lock; a no-op if another process filled it meanwhile.
    fn fill(&self) -> Result<(), CacheError> {
        // Filling a cache nothing can run from would only waste the time and the space.
        let root = self.dir.parent().unwrap_or(&self.dir);
        if let Some(mount) = platform::noexec_mount(root) {
            return Err(CacheError::NoExec { path: root.display().to_string(), mount: mount.display().to_string() });
        }
        let created = match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        check_private_dir(&self.dir, ENTRY_FIX)?;
        let lock_path = self.dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        if self.state()? == EntryState::Intact {
            return Ok(());
        }
        self.remove_leftovers()?;

        let tmp = self.dir.join(format!(".{}.tmp-{}", self.c.name, std::process::id()));
        let _progress = Progress::start(self.c);
        if let Err(e) = self.write_item(&tmp) {
            let _ = remove_any(&tmp);
            if created {
                let _ = fs::remove_file(&lock_path);
                let _ = fs::remove_dir(&self.dir);
            }
            return Err(e);
        }
        // Nobody may trust the old stamp while the item changes under it.
        let _ = fs::remove_file(&self.stamp);
        if fs::symlink_metadata(&self.item).is_ok() {
            let trash = self.dir.join(format!(".{}.trash-{}", self.c.name, std::process::id()));
            fs::rename(&self.item, &trash).map_err(io_err(&self.item))?;
            remove_any(&trash).map_err(io_err(&trash))?;
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

    /// Temp and trash items of an interrupted fill (we hold the lock, so nobody else's).
    fn remove_leftovers(&self) -> Result<(), CacheError> {
        let tmp_prefix = format!(".{}.tmp-", self.c.name);
        let trash_prefix = format!(".{}.trash-", self.c.name);
        remove_where(&self.dir, |name| name.starts_with(&tmp_prefix) || name.starts_with(&trash_prefix))
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
                file.sync_all().map_err(io_err(tmp))?;
            }
            Kind::Dir(_) => {
                fs::DirBuilder::new().mode(0o700).create(tmp).map_err(io_err(tmp))?;
                embed::unpack(&mut reader, tmp).map_err(|source| CacheError::Unpack { name: c.name, source })?;
                check_digest(c, reader)?;
                platform::sync_tree(tmp).map_err(io_err(tmp))?;
            }
        }
        Ok(())
    }

    fn write_stamp(&self) -> Result<(), CacheError> {
        let mut text = format!("{STAMP_HEADER}\n");
        for path in self.stamped_paths() {
            let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
            let _ = writeln!(text, "{}", stamp_line(&meta));
        }
        let tmp = self.dir.join(format!(".{}.stamp.tmp-{}", self.c.name, std::process::id()));
        fs::write(&tmp, text).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &self.stamp).map_err(io_err(&self.stamp))
    }

    /// Hashes everything in the entry against the embedded sha256s: what `stigmer verify` runs.
    /// Returns the problems found (empty when intact).
    pub(crate) fn verify(&self) -> Vec<String> {
        let problems = match self.c.kind {
            Kind::File => vec![verify_file(&self.item, self.c.size, self.c.sha256, 0o755)],
            Kind::Dir(index) => index
                .iter()
                .map(|e| match e {
                    IndexEntry::File { path, mode, size, sha256 } => {
                        verify_file(&self.item.join(path), *size, sha256, *mode)
                    }
                    IndexEntry::Dir { path, .. } => {
                        let p = self.item.join(path);
                        (!fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()))
                            .then(|| format!("{}: missing directory", p.display()))
                    }
                    IndexEntry::Symlink { path, target } => {
                        let p = self.item.join(path);
                        (fs::read_link(&p).ok().as_deref() != Some(Path::new(target)))
                            .then(|| format!("{}: not a symlink to {target}", p.display()))
                    }
                })
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

/// What is wrong with one cached file, if anything: type, size, execute bits, then sha256.
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
    } else if got_mode & 0o111 != mode & 0o111 {
        Some(format!("{shown}: mode {:04o}, expected {mode:04o}", got_mode & 0o7777))
    } else {
        match hash_path(path) {
            Ok(got) if got == sha256 => None,
            Ok(got) => Some(format!("{shown}: sha256 {got}, expected {sha256}")),
            Err(e) => Some(format!("{shown}: {e}")),
        }
    }
}

fn stamp_line(m: &fs::Metadata) -> String {
    let kind = if m.is_dir() {
        'd'
    } else if m.file_type().is_symlink() {
        'l'
    } else {
        'f'
    };
    // A directory's ctime moves whenever a program writes next to itself; its inode is enough.
    if kind == 'd' {
        return format!("d {}", m.ino());
    }
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

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
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
