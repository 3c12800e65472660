//! Trees the holder vouches for: how a privileged start of a big directory component costs
//! one question to the holder instead of a stat of every path.
//!
//! A start the read-only modes do not bind (root) must compare every path of a tree with its
//! stamp (`cache::Entry::state`), 8,700 paths in ~26 ms. The holder (holder.rs) can know
//! instead, because it is told of every change as it happens: it holds a read lease on every
//! file of the tree and an inotify watch on every directory. A lease is broken by any open of
//! the file's inode for writing and by any truncate, through any path or hard link, before
//! that open returns (the opener waits until the holder lets go: a signal, then a close), so no
//! byte of a leased file changes unseen, mappings included (a writable mapping needs a
//! writable open). The watches report what changes names instead of bytes (a file deleted,
//! renamed over, chmod'ed; a directory moved aside or removed), each queued before the call
//! that made it returns. So the holder takes its leases and watches first, then compares
//! every path with the stamp once (what happened before it took them), and from then on
//! vouches for the tree until anything of it changes: a broken lease drops every tree it holds
//! (and with them the leases, letting the writer go on), a change of an indexed name drops
//! that tree. Before each answer it reads every pending signal and change, so a change whose
//! call returned before the start asked is always seen.
//!
//! The holder vouches only for what it can see whole: a tree on a local filesystem (a lease
//! sees nothing another NFS client or a FUSE server writes), every file leased (refused while
//! anyone has one open for writing), every directory watched, within its fd limit. Anything
//! else, or no holder at all, leaves the start comparing every path itself, as before.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use crate::embed::{self, Component, IndexEntry, Kind};
use crate::home::Home;
use crate::platform::{self, DirWatch, LeaseBreaks};

use super::cache::{CacheRoot, EntryState, open_dir};

/// A tree the holder could not take is tried again when asked after this long (a file that
/// was open for writing may be closed by then).
const RETRY: Duration = Duration::from_secs(30);

/// The holder's trees, and what tells it that one changed.
#[derive(Default)]
pub(super) struct Trees {
    /// Made with the first tree taken (it blocks SIGIO for good).
    breaks: Option<LeaseBreaks>,
    held: Vec<Held>,
    /// Trees that could not be taken, by their top directory, when and why: not tried again
    /// for `RETRY` (a start asks on every run; a take costs the holder ~1 ms per 100 paths).
    refused: Vec<Refusal>,
}

struct Refusal {
    name: &'static str,
    top: (u64, u64),
    when: Instant,
    why: String,
}

impl Trees {
    /// What the holder polls besides its socket.
    pub(super) fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.breaks.iter().map(LeaseBreaks::fd).chain(self.held.iter().map(|h| h.watch.fd())).collect()
    }

    /// Drops every tree something changed in: all of them on a broken lease (closing their
    /// files lets the writer go on), else each whose watches saw an indexed name change.
    pub(super) fn refresh(&mut self) {
        if self.breaks.as_mut().is_some_and(LeaseBreaks::any) {
            for h in self.held.drain(..) {
                tracing::debug!(component = h.c.name, "a lease broke: no longer vouching for the tree");
            }
        }
        self.held.retain(|h| {
            let changed = h.changed();
            if changed {
                tracing::debug!(component = h.c.name, "the tree changed: no longer vouching for it");
            }
            !changed
        });
    }

    /// The answer to a start: whether NAME's tree with the top directory TOP is unchanged.
    pub(super) fn vouches(&mut self, name: &str, top: (u64, u64)) -> bool {
        self.refresh();
        self.held.iter().any(|h| h.c.name == name && h.top == top)
    }

    /// Takes NAME's tree in HOME's cache (after a start asked about it and was told no),
    /// unless it is held or was refused as it is now.
    pub(super) fn take(&mut self, home: &Home, name: &str) {
        let Some(c) = embed::find(name).filter(|c| matches!(c.kind, Kind::Dir(_))) else { return };
        let Ok(Some(root)) = CacheRoot::existing(home) else { return };
        let entry = root.entry(c);
        let Ok(top) = std::fs::symlink_metadata(entry.item()).map(|m| (m.dev(), m.ino())) else { return };
        if self.held.iter().any(|h| h.c.name == name && h.top == top) {
            return;
        }
        // Another tree of that name is no longer at its place (a refill moved it away).
        self.held.retain(|h| h.c.name != name);
        if self.refused.iter().any(|r| r.name == c.name && r.top == top && r.when.elapsed() < RETRY) {
            return;
        }
        // The last refusal of each tree is kept for `status` (doctor says why).
        self.refused.retain(|r| r.name != c.name);
        if self.breaks.is_none() {
            match LeaseBreaks::new() {
                Ok(breaks) => self.breaks = Some(breaks),
                Err(e) => return tracing::debug!("lease signals: {e}"),
            }
        }
        let taken = match Held::take(c, &entry) {
            // Taken without the entry's fill lock (`cache clear` skips an entry whose lock is
            // held), so a tree just renamed into place, whose stamp a fill has not written yet,
            // differs from its stamp: judged again under the lock, or later if a fill holds it.
            Err(NotTaken::Stale) => match entry.unless_filling(|| Held::take(c, &entry)) {
                Some(taken) => taken,
                None => return,
            },
            taken => taken,
        };
        match taken {
            Ok(held) => {
                tracing::debug!(component = c.name, paths = held.paths, "vouching for the tree");
                self.held.push(held);
            }
            Err(not) => {
                let why = not.to_string();
                tracing::debug!(component = c.name, "not vouching for the tree: {why}");
                self.refused.push(Refusal { name: c.name, top, when: Instant::now(), why });
            }
        }
    }

    /// For `status`: each tree vouched for and its number of paths.
    pub(super) fn held(&self) -> impl Iterator<Item = (&'static str, usize)> + '_ {
        self.held.iter().map(|h| (h.c.name, h.paths))
    }

    /// For `status`: why each tree not vouched for was refused when last taken (one line).
    pub(super) fn refused(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        self.refused
            .iter()
            .filter(|r| !self.held.iter().any(|h| h.c.name == r.name))
            .map(|r| (r.name, r.why.replace('\n', " ")))
    }
}

/// One tree, leased and watched.
struct Held {
    c: &'static Component,
    /// The top directory's (dev, inode): what a start names.
    top: (u64, u64),
    paths: usize,
    watch: DirWatch,
    /// Every path of the index: the names whose change drops the tree.
    indexed: HashSet<&'static str>,
    /// The top, every directory and every leased file.
    _open: Vec<OwnedFd>,
}

impl Held {
    /// Leases every file and watches every directory of the entry's tree, then compares the
    /// tree with its stamp; Err says why it cannot be vouched for.
    fn take(c: &'static Component, entry: &super::cache::Entry) -> Result<Held, NotTaken> {
        let Kind::Dir(index) = c.kind else { return Err("not a directory component".into()) };
        raise_fd_limit();
        let top = open_dir(nix::fcntl::AT_FDCWD, entry.item()).ok_or("the tree's top is not a directory")?;
        if !platform::local_filesystem(top.as_fd()) {
            return Err("not on a local filesystem".into());
        }
        let stat = nix::sys::stat::fstat(&top).map_err(|e| e.to_string())?;
        let mut watch = DirWatch::new().map_err(|e| format!("inotify: {e}"))?;
        watch.add(top.as_fd(), "").map_err(|e| format!("watching the top: {e}"))?;
        let mut dirs: Vec<(&'static str, OwnedFd)> = Vec::new();
        let mut files = Vec::new();
        let mut indexed = HashSet::new();
        for e in index.entries() {
            let (IndexEntry::Dir { path, .. } | IndexEntry::File { path, .. } | IndexEntry::Symlink { path, .. }) = e;
            indexed.insert(path);
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            // The index lists each directory before what it holds.
            let parent = if dir.is_empty() {
                top.as_fd()
            } else {
                dirs.iter().rev().find(|(p, _)| *p == dir).map(|(_, fd)| fd.as_fd()).ok_or("index out of order")?
            };
            match e {
                IndexEntry::Dir { .. } => {
                    let fd = open_dir(parent, name).ok_or_else(|| format!("{path}: not a directory"))?;
                    watch.add(fd.as_fd(), path).map_err(|e| format!("watching {path}: {e}"))?;
                    dirs.push((path, fd));
                }
                IndexEntry::File { .. } => files.push(leased(parent, name).map_err(|e| format!("{path}: {e}"))?),
                // Changing a symlink means replacing it: its directory's watch sees that.
                IndexEntry::Symlink { .. } => {}
            }
        }
        let mut open = vec![top];
        open.extend(dirs.into_iter().map(|(_, fd)| fd));
        open.extend(files);
        let held = Held { c, top: (stat.st_dev, stat.st_ino), paths: indexed.len(), watch, indexed, _open: open };
        // What happened before the leases and watches: the stamp tells.
        match entry.compared_state() {
            Ok(EntryState::Intact) => {}
            Ok(EntryState::Stale) => return Err(NotTaken::Stale),
            Err(e) => return Err(e.to_string().into()),
        }
        if held.changed() {
            return Err("the tree changed while it was being taken".into());
        }
        Ok(held)
    }

    /// Whether an indexed path changed since the last call (the watches drained).
    fn changed(&self) -> bool {
        let mut changed = false;
        let whole = self.watch.drain(|dir, name| {
            changed |= match name.map(|n| n.to_str()) {
                // The directory itself moved or went away.
                None => true,
                // A name no index path has (not UTF-8): nothing vouched for changed.
                Some(None) => false,
                Some(Some(name)) if dir.is_empty() => self.indexed.contains(name),
                // New names (Python's __pycache__ under a root start) change nothing indexed.
                Some(Some(name)) => self.indexed.contains(format!("{dir}/{name}").as_str()),
            };
        });
        changed || !whole
    }
}

/// Why a tree was not taken.
#[derive(Debug, thiserror::Error)]
enum NotTaken {
    #[error("the tree differs from its stamp")]
    Stale,
    #[error("{0}")]
    Why(String),
}

impl From<String> for NotTaken {
    fn from(why: String) -> Self {
        NotTaken::Why(why)
    }
}

impl From<&str> for NotTaken {
    fn from(why: &str) -> Self {
        NotTaken::Why(why.to_owned())
    }
}

/// The file NAME in PARENT, opened read-only (never through a symlink, never blocking: not a
/// FIFO's writer, not another's lease) and leased.
fn leased(parent: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(parent, name, flags, nix::sys::stat::Mode::empty())?;
    if nix::sys::stat::fstat(&fd)?.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::other("not a regular file"));
    }
    platform::read_lease(fd.as_fd())?;
    Ok(fd)
}

/// A tree holds an fd per file: the soft limit (often 1,024) raised to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
