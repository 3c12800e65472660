//! One component's place in the cache, `cache/<sha256>/NAME`: how a start checks it and how it is
//! filled. A fill writes into a hidden temp sibling, checks the sha256 of every byte it wrote,
//! syncs, and renames into place under the entry's lock, so concurrent first runs do the work
//! once and a crash leaves nothing that looks complete; then it writes the stamp (stamp.rs).
//! Cached files and directories are read-only, so changing anything takes a chmod first, which
//! moves ctime even where a write through a shared mapping does not (tmpfs).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::stamp;
use super::store::{
    CacheError, CacheRoot, ENTRY_FIX, LOCK_FILE, LockMode, START_ATTEMPTS, USE_FILE, check_private, check_private_dir,
    io_err, lock_at, remove_any, remove_where, sync_dir,
};
use crate::embed::{self, Component, HashingReader, Kind};
use crate::home::files;
use crate::platform;

impl CacheRoot {
    /// The place of C's entry (it may not exist yet).
    pub(crate) fn entry(&self, c: &'static Component) -> Entry {
        let dir = self.path.join(c.sha256);
        Entry { c, item: dir.join(c.name), stamp: dir.join(format!(".{}.stamp", c.name)), dir }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryState {
    Intact,
    /// Missing, or changed since it was filled: the next run refills it.
    Stale,
}

/// One component's place in the cache.
pub(crate) struct Entry {
    pub(super) c: &'static Component,
    /// `cache/<sha256>`: shared by components with identical content.
    pub(super) dir: PathBuf,
    /// `cache/<sha256>/NAME`: the file, or the directory tree.
    pub(super) item: PathBuf,
    /// `cache/<sha256>/.NAME.stamp`: what the item looked like right after its fill.
    pub(super) stamp: PathBuf,
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
    pub(super) fn hold(&self) -> Result<Option<File>, CacheError> {
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
        let Some([item_line, exe_line]) = stamp::head(&self.stamp) else { return Ok(EntryState::Stale) };
        let intact = match (fs::symlink_metadata(&self.item), &self.c.kind) {
            (Err(_), _) => false,
            // A file is its own entry point: one stat for both lines.
            (Ok(m), Kind::File) => stamp::line(&m) == item_line && stamp::line(&m) == exe_line,
            (Ok(m), Kind::Dir(_)) => {
                let exe = self.exe();
                // A program the modes do not bind (root) may write next to itself at the top of
                // its tree (Python's __pycache__), which moves the top's ctime: its inode is
                // checked instead.
                let top_ok = if platform::may_write(&exe) {
                    stamp::same_dir(&item_line, &m)
                } else {
                    stamp::line(&m) == item_line
                };
                top_ok && fs::symlink_metadata(&exe).is_ok_and(|m| stamp::line(&m) == exe_line)
            }
        };
        Ok(if intact { EntryState::Intact } else { EntryState::Stale })
    }

    /// Fills the entry under its lock; a no-op if another process filled it meanwhile, unless
    /// `force` (the item is intact but must be replaced: it is open for writing somewhere).
    pub(super) fn fill(&self, force: bool) -> Result<(), CacheError> {
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

        let tmp = self.dir.join(format!("{}{}", files::temp_prefix(&self.item), std::process::id()));
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
        let stat = |path: &Path| fs::symlink_metadata(path).map_err(io_err(path));
        let text = stamp::text([&stat(&self.item)?, &stat(&self.exe())?]);
        files::write_atomic(&self.stamp, text.as_bytes(), 0o600).map_err(io_err(&self.stamp))?;
        sync_dir(&self.dir)?;
        if created {
            sync_dir(self.dir.parent().unwrap_or(&self.dir))?;
        }
        tracing::debug!(component = self.c.name, path = %self.item.display(), "cache entry filled");
        Ok(())
    }

    /// Temp items and stamps of an interrupted fill (we hold the fill lock, so nobody else's), and
    /// old items moved aside by earlier refills once no run holds the entry.
    fn remove_leftovers(&self) -> Result<(), CacheError> {
        let (item_tmp, stamp_tmp) = (files::temp_prefix(&self.item), files::temp_prefix(&self.stamp));
        remove_where(&self.dir, |name| name.starts_with(&item_tmp) || name.starts_with(&stamp_tmp))?;
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

fn check_digest<R: Read>(c: &Component, reader: HashingReader<R>) -> Result<(), CacheError> {
    let got = reader.finish().map_err(|e| CacheError::Io { path: c.name.to_owned(), source: e })?;
    if got != c.sha256 {
        return Err(CacheError::Corrupt { name: c.name, got, want: c.sha256 });
    }
    Ok(())
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
