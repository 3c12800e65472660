//! `$STIGMER_HOME` (default `~/.stigmer`) and every directory and file under it: nothing else
//! joins "logs" or "run" by hand, so the layout is decided here once.
//!
//! The home is also where stigmer decides whether it may trust what it finds there.
//! `Home::trusted()` refuses a home (or a child of it that stigmer runs or reads) that another
//! user owns or can write into, and a home reached through a directory or a symlink another user
//! could change: programs are executed, and PyInstaller finds its files, through paths under the
//! home, so the whole path must be as safe as its last component (sshd's StrictModes rule: every
//! ancestor owned by root or by us, and not writable by others unless sticky; every symlink on
//! the way owned by root or by us). The home it returns is at its resolved path, which is what
//! everything after the check uses. A service's own data directory is not checked: it is the
//! service's. Paths stay bytes (`OsStr`) throughout; only messages render them.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

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

    /// The home, checked, at its resolved path: what `exec`, the cache runner, `server` and
    /// `doctor` use.
    pub(crate) fn trusted() -> Result<Self, HomeError> {
        Ok(Self::from_env()?.checked()?)
    }

    /// Every check `trusted()` makes.
    pub(crate) fn check(&self) -> Result<(), Untrusted> {
        self.checked().map(drop)
    }

    /// This home checked, and the same home at its resolved path (no symlink, `.` or `..` in
    /// it), which is what everything after the check uses: a link on the way that is repointed
    /// after the check changes nothing. A home that does not exist yet is fine (stigmer creates
    /// it privately), as long as the directories it would be created in are safe.
    ///
    /// What is checked is what stigmer itself runs and reads: the path to the home (every
    /// directory and every symlink on the way), the home, config.toml, bin/, run/, cache/,
    /// logs/ and data/. A service's own data directory (data/NAME) is the service's: it may
    /// chown or chmod it as it likes (postgres does), and stigmer neither runs nor reads
    /// anything from it.
    pub(crate) fn checked(&self) -> Result<Home, Untrusted> {
        let home = Home { root: check_path(&self.root)? };
        let Some(meta) = stat(&home.root)? else { return Ok(home) };
        check_owned(&home.root, &meta, true)?;
        for child in [home.config(), home.bin(), home.run(), home.cache(), home.logs(), home.data_root()] {
            let Some(meta) = lstat(&child)? else { continue };
            let meta = if meta.file_type().is_symlink() {
                // A link in the home may lead anywhere: the path to where it leads is checked
                // as the path to the home is.
                check_path(&child)?;
                let Some(meta) = stat(&child)? else { continue };
                meta
            } else {
                meta
            };
            check_owned(&child, &meta, child != home.config())?;
        }
        Ok(home)
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

/// The metadata of `path` itself (a symlink not followed), or None if nothing is there.
fn lstat(path: &Path) -> Result<Option<fs::Metadata>, Untrusted> {
    match fs::symlink_metadata(path) {
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

/// Symlinks followed on the way to a home before giving up (the kernel's ELOOP limit).
const MAX_LINKS: usize = 40;

/// The path to `root`, as given and as resolved: every directory above it owned by root or by
/// us and not writable by others unless sticky (then others cannot rename or delete what is
/// ours), and every symlink on the way (`root` itself included) owned by root or by us: a link
/// is as much a part of the path as a directory, and its owner could repoint it. Returns the
/// resolved path (the path itself when nothing on the way is a link, `.` or `..`).
fn check_path(root: &Path) -> Result<PathBuf, Untrusted> {
    // One lstat per directory when no symlink is on the way (most homes): the lstat of a real
    // directory is its stat, and the path resolves to itself.
    let mut links = 0;
    let linked = check_spelling(root, root, &mut links)?;
    let plain = root.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !linked && plain {
        return Ok(root.to_path_buf());
    }
    let Some(existing) = nearest_existing(root) else { return Ok(root.to_path_buf()) };
    let resolved = fs::canonicalize(existing).map_err(|e| {
        untrusted(
            existing,
            format!("cannot resolve it ({e})"),
            format!("point it at a directory of yours, or set {HOME_VAR} to one"),
        )
    })?;
    let resolved = match root.strip_prefix(existing) {
        Ok(rest) if !rest.as_os_str().is_empty() => resolved.join(rest),
        _ => resolved,
    };
    // What the links lead to, checked at the path that will be used.
    for dir in resolved.ancestors().skip(1) {
        if let Ok(meta) = fs::symlink_metadata(dir) {
            check_ancestor(root, dir, &meta)?;
        }
    }
    Ok(resolved)
}

/// The directories and symlinks of PATH as spelled (and, for each symlink, of what it points
/// to, as spelled there): whether any was a link.
fn check_spelling(root: &Path, path: &Path, links: &mut usize) -> Result<bool, Untrusted> {
    let mut linked = false;
    for (i, p) in path.ancestors().enumerate() {
        let Ok(meta) = fs::symlink_metadata(p) else { continue };
        if meta.file_type().is_symlink() {
            linked = true;
            check_link(root, p, &meta)?;
            *links += 1;
            let target = fs::read_link(p).ok().filter(|_| *links <= MAX_LINKS).ok_or_else(|| {
                untrusted(
                    p,
                    "it is a symlink that cannot be followed".into(),
                    format!("set {HOME_VAR} to a real directory"),
                )
            })?;
            check_spelling(root, &p.parent().unwrap_or(Path::new("/")).join(target), links)?;
        } else if i > 0 {
            check_ancestor(root, p, &meta)?;
        }
    }
    Ok(linked)
}

/// A symlink on the way to `root`: owned by root or by us.
fn check_link(root: &Path, link: &Path, meta: &fs::Metadata) -> Result<(), Untrusted> {
    let me = platform::effective_uid();
    if meta.uid() == 0 || meta.uid() == me {
        return Ok(());
    }
    let target =
        fs::canonicalize(link).map_or_else(|_| "the directory it points to".into(), |t| t.display().to_string());
    Err(untrusted(
        link,
        format!(
            "it is a symlink on the way to {} owned by uid {}, who could repoint it at a home of their choosing",
            root.display(),
            meta.uid()
        ),
        format!("set {HOME_VAR} to {target} (the link's target, if that is the home you meant), not through the link"),
    ))
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
