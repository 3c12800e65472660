//! Running stigmer as another user than the one that built it, for the checks whose answer
//! depends on who asks (modes bind an ordinary user, not root). The world is laid out as on a
//! laptop: a copy of the binary and the user's home directory under root-owned 0755
//! directories, the home owned by the user (`<top>/bin/stigmer`, `<top>/home/u<uid>/.stigmer`).
//!
//! The default user is 4242: neither root nor the overflow uid 65534, which is also what every
//! root-owned file shows as inside a user namespace, so a test as 65534 alone cannot tell "owned
//! by me" from "owned by someone the kernel cannot map". Tests whose answer depends on the user
//! run as each of [`OTHER_USERS`].

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::stigmer_bin;

/// The overflow uid (and gid): nobody.
pub const NOBODY: u32 = 65534;
/// An ordinary user with no passwd entry: neither root nor nobody.
pub const USER: u32 = 4242;
/// The users the "another user" cases run as.
pub const OTHER_USERS: [u32; 2] = [USER, NOBODY];

/// A copy of the stigmer binary and a home owned by one user (uid = gid), under root-owned
/// directories that user can enter but not change.
pub struct UserWorld {
    top: tempfile::TempDir,
    pub uid: u32,
    pub bin: PathBuf,
    /// The user's $HOME, owned by the user (0755).
    pub user_home: PathBuf,
    /// STIGMER_HOME: `<user_home>/.stigmer`, owned by the user (0700).
    pub home: PathBuf,
}

impl UserWorld {
    /// The world of [`USER`] (4242).
    #[allow(dead_code, reason = "not every test module that includes the harness uses each helper")]
    pub fn new() -> UserWorld {
        UserWorld::of(USER)
    }

    /// The world of UID (uid = gid).
    pub fn of(uid: u32) -> UserWorld {
        // /tmp, not target/: the checkout may sit in a directory only root can enter.
        let top = tempfile::Builder::new().prefix(&format!("stigmer-u{uid}-")).tempdir().unwrap();
        let root_dir = |p: &Path| {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(p, Some(0), Some(0)).unwrap();
        };
        root_dir(top.path());
        let bin_dir = top.path().join("bin");
        fs::create_dir(&bin_dir).unwrap();
        root_dir(&bin_dir);
        let bin = bin_dir.join("stigmer");
        fs::copy(stigmer_bin(), &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let homes = top.path().join("home");
        fs::create_dir(&homes).unwrap();
        root_dir(&homes);
        let user_home = homes.join(format!("u{uid}"));
        fs::create_dir(&user_home).unwrap();
        fs::set_permissions(&user_home, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&user_home, Some(uid), Some(uid)).unwrap();
        let home = user_home.join(".stigmer");
        fs::create_dir(&home).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&home, Some(uid), Some(uid)).unwrap();
        UserWorld { top, uid, bin, user_home, home }
    }

    /// The root-owned directory everything of this world is under.
    #[allow(dead_code, reason = "not every test module that includes the harness uses each helper")]
    pub fn top(&self) -> &Path {
        self.top.path()
    }

    /// PROGRAM as this user (uid, gid, no supplementary groups), with HOME set, in the user's
    /// home directory, stdin from /dev/null.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("HOME", &self.user_home).current_dir(&self.user_home).stdin(Stdio::null());
        // std drops the supplementary groups when root sets a uid.
        cmd.uid(self.uid).gid(self.uid);
        cmd
    }

    /// The binary with ARGS, as this user, in this world's home.
    pub fn stigmer(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(&self.bin);
        cmd.args(args).env_remove("STIGMER_RUNNER").env("STIGMER_HOME", &self.home);
        cmd
    }

    /// `sh -c SCRIPT` as this user, in DIR.
    pub fn sh(&self, dir: &Path, script: &str) -> Command {
        let mut cmd = self.command("sh");
        cmd.arg("-c").arg(script).current_dir(dir);
        cmd
    }
}
