//! `$STIGMER_HOME` (default `~/.stigmer`) and every directory and file under it: nothing else
//! joins "logs" or "run" by hand, so the layout is decided here once.
//!
//! The home is also where stigmer decides whether it may trust what it finds there.
//! `Home::trusted()` refuses a home (or a well-known child of it) that another user owns or can
//! write into, and a home reached through a directory another user could change: programs are
//! executed, and PyInstaller finds its files, through paths under the home that are looked up
//! again at every use, so the whole path must be as safe as its last component (sshd's
//! StrictModes rule: every ancestor owned by root or by us, and not writable by others unless
//! sticky). Paths stay bytes (`OsStr`) throughout; only messages render them.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::{env, platform};

pub(crate) mod files;
pub(crate) mod links;

pub(crate) const HOME_VAR: &str = "STIGMER_HOME";

#[derive(Debug, thiserror::Error)]
#[error("cannot tell where stigmer's home is: set STIGMER_HOME (or HOME)")]
pub(crate) struct NoHome;

/// A home, or something in it, that another user could have written or could swap.
#[derive(Debug, thiserror::Error)]
#[error("refusing to use {path}: {why}; {fix}")]
pub(crate) struct Untrusted {
    pub(crate) path: String,
    pub(crate) why: String,
    pub(crate) fix: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HomeError {
    #[error(transparent)]
    NoHome(#[from] NoHome),
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
}

#[derive(Debug, Clone)]
pub(crate) struct Home {
    root: PathBuf,
}

impl Home {
    /// Where the home is, without looking at it: for messages and `cache path`.
    pub(crate) fn from_env() -> Result<Self, NoHome> {
        let root = match env::var_os(HOME_VAR) {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(env::var_os("HOME").ok_or(NoHome)?).join(".stigmer"),
        };
        // Components may change directory; every path we hand out must not depend on ours.
        let root = if root.is_absolute() { root } else { std::env::current_dir().map_err(|_| NoHome)?.join(root) };
        Ok(Self { root })
    }

    /// The home, checked: what `exec`, the cache runner, `server` and `doctor` use.
    pub(crate) fn trusted() -> Result<Self, HomeError> {
        let home = Self::from_env()?;
        home.check()?;
        Ok(home)
    }

    /// Every check `trusted()` makes. A home that does not exist yet is fine (stigmer creates
    /// it privately), as long as the directories it would be created in are safe.
    pub(crate) fn check(&self) -> Result<(), Untrusted> {
        check_ancestors(&self.root)?;
        let Some(meta) = stat(&self.root)? else { return Ok(()) };
        check_owned(&self.root, &meta, true)?;
        for child in [self.config(), self.bin(), self.run(), self.cache(), self.logs(), self.data_root()] {
            if let Some(meta) = stat(&child)? {
                check_owned(&child, &meta, child != self.config())?;
            }
        }
        // Each service's data directory is its working directory: a foreign one could hold
        // anything the service then loads.
        if let Ok(dir) = fs::read_dir(self.data_root()) {
            for e in dir.flatten() {
                let path = e.path();
                if let Some(meta) = stat(&path)? {
                    check_owned(&path, &meta, meta.is_dir())?;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Content-addressed component cache.
    pub(crate) fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Component symlinks, first on the services' PATH.
    pub(crate) fn bin(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// The supervisor's lock, state and control socket.
    pub(crate) fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Service and supervisor logs.
    pub(crate) fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// A service's working directory and data, kept across restarts. `service` is a checked
    /// name (crate::names), never a path.
    pub(crate) fn data(&self, service: &str) -> PathBuf {
        self.data_root().join(service)
    }

    fn data_root(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The user's service overrides and additions.
    pub(crate) fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
}

fn untrusted(path: &Path, why: String, fix: String) -> Untrusted {
    Untrusted { path: path.display().to_string(), why, fix }
}

/// The metadata of `path` (a symlink followed: a link to a safe place is fine, and the link
/// itself lives in a directory that was checked), or None if nothing is there.
fn stat(path: &Path) -> Result<Option<fs::Metadata>, Untrusted> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(untrusted(path, format!("cannot check it ({e})"), "make it readable by you".into())),
    }
}

/// A directory (or file) of the home: ours, and writable by nobody else. A symlink is followed
/// (its own directory was checked); `want_dir` refuses anything but a directory.
fn check_owned(path: &Path, meta: &fs::Metadata, want_dir: bool) -> Result<(), Untrusted> {
    let not_dir = "move it away, or set STIGMER_HOME to a directory of your own";
    check_private(path, meta, &Private { symlink_fix: None, not_dir_fix: want_dir.then_some(not_dir) })
}

/// What [`check_private`] refuses besides another owner and others' write bits, and the fix
/// each refusal names.
pub(crate) struct Private<'a> {
    /// Refuse a symlink (metadata of the link itself), saying this.
    pub(crate) symlink_fix: Option<&'a str>,
    /// Refuse anything but a directory, saying this.
    pub(crate) not_dir_fix: Option<&'a str>,
}

/// The one rule for what stigmer keeps under the home (the home, its children, the cache and
/// its entries): owned by the effective uid and writable by nobody else.
pub(crate) fn check_private(path: &Path, meta: &fs::Metadata, rule: &Private<'_>) -> Result<(), Untrusted> {
    let shown = path.display();
    if let Some(fix) = rule.symlink_fix
        && meta.file_type().is_symlink()
    {
        return Err(untrusted(path, "it is a symlink".into(), fix.into()));
    }
    if let Some(fix) = rule.not_dir_fix
        && !meta.is_dir()
    {
        return Err(untrusted(path, "it is not a directory".into(), fix.into()));
    }
    let me = platform::effective_uid();
    if meta.uid() != me {
        return Err(untrusted(
            path,
            format!("it is owned by uid {}, not by you (uid {me})", meta.uid()),
            format!("run `chown -R {me} {shown}` if it is yours, or set {HOME_VAR} to a directory of your own"),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(untrusted(
            path,
            format!("others can write to it (mode {mode:04o})"),
            format!("run `chmod go-w {shown}`"),
        ));
    }
    Ok(())
}

/// Every directory above `root`, as given and as resolved: owned by root or by us and not
/// writable by others unless sticky (then others cannot rename or delete what is ours).
fn check_ancestors(root: &Path) -> Result<(), Untrusted> {
    // One lstat per directory when no symlink is on the way (most homes): the lstat of a real
    // directory is its stat, and the path resolves to itself.
    let mut linked = fs::symlink_metadata(root).is_ok_and(|m| m.file_type().is_symlink());
    for dir in root.ancestors().skip(1) {
        let meta = match fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() => {
                linked = true;
                fs::metadata(dir)
            }
            other => other,
        };
        if let Ok(meta) = meta {
            check_ancestor(root, dir, &meta)?;
        }
    }
    let Some(resolved) = linked.then(|| nearest_existing(root).and_then(|p| fs::canonicalize(p).ok())).flatten() else {
        return Ok(());
    };
    for dir in resolved.ancestors().skip(usize::from(resolved == root)) {
        if let Ok(meta) = fs::metadata(dir) {
            check_ancestor(root, dir, &meta)?;
        }
    }
    Ok(())
}

/// One directory above `root` (see check_ancestors).
fn check_ancestor(root: &Path, dir: &Path, meta: &fs::Metadata) -> Result<(), Untrusted> {
    let me = platform::effective_uid();
    let mode = meta.mode() & 0o7777;
    let owner_ok = meta.uid() == 0 || meta.uid() == me;
    let sticky = mode & 0o1000 != 0;
    if !owner_ok {
        return Err(untrusted(
            dir,
            format!(
                "it is a directory above {} owned by uid {}, who could swap what stigmer runs",
                root.display(),
                meta.uid()
            ),
            format!("set {HOME_VAR} to a directory whose every parent belongs to you or to root"),
        ));
    }
    if mode & 0o022 != 0 && !sticky {
        return Err(untrusted(
            dir,
            format!(
                "it is a directory above {} that others can write to (mode {mode:04o}), so they could swap what stigmer runs",
                root.display()
            ),
            format!("run `chmod go-w {}`, or set {HOME_VAR} elsewhere", dir.display()),
        ));
    }
    Ok(())
}

fn nearest_existing(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| fs::symlink_metadata(p).is_ok())
}
