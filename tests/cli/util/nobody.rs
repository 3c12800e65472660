//! Running stigmer as another user than the one that built it: nobody, with a copy of the binary
//! and a home of its own, for the checks whose answer depends on who asks (modes bind nobody,
//! not root).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::stigmer_bin;

pub const NOBODY: u32 = 65534;

/// A copy of the stigmer binary and a home, both in a directory nobody can reach, the home
/// owned by nobody.
pub struct NobodyWorld {
    _top: tempfile::TempDir,
    pub bin: PathBuf,
    pub home: PathBuf,
}

impl NobodyWorld {
    pub fn new() -> NobodyWorld {
        // /tmp, not target/: the checkout may sit in a directory only root can enter.
        let top = tempfile::Builder::new().prefix("stigmer-nobody-").tempdir().unwrap();
        fs::set_permissions(top.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let bin = top.path().join("stigmer");
        fs::copy(stigmer_bin(), &bin).unwrap();
        let home = top.path().join("home");
        fs::create_dir(&home).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
        NobodyWorld { _top: top, bin, home }
    }

    /// The binary with ARGS, as nobody, in this world's home.
    pub fn stigmer(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).env_remove("STIGMER_RUNNER").env("STIGMER_HOME", &self.home).stdin(Stdio::null());
        cmd.uid(NOBODY).gid(NOBODY);
        cmd
    }
}
