//! The torture suite's tools: a seeded random source, tmpfs mounts, leftovers, trees removed
//! whatever their modes, and a vm.memfd_noexec namespace.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// A small xorshift64* generator. The seed comes from STIGMER_TORTURE_SEED or the clock and is
/// printed, so a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(what: &str) -> Rng {
        let seed = std::env::var("STIGMER_TORTURE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("{what}: STIGMER_TORTURE_SEED={seed}");
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..=max.
    pub fn upto(&mut self, max: u64) -> u64 {
        self.next_u64() % (max + 1)
    }
}

/// A tmpfs mounted over an existing directory for the life of the guard (root only).
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs with OPTIONS (e.g. "size=8m,noexec") on DIR; None, with the reason
    /// printed, when not root. A failing mount as root is a test failure, not a skip.
    pub fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("{options},mode=0755"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount -t tmpfs -o {options} {}: {}", dir.display(), describe(&out));
        Some(Tmpfs { dir: dir.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Paths under DIR that a fill or a removal leaves behind when interrupted (".tmp", ".trash").
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.contains(".tmp") || n.contains(".trash")
        })
        .collect()
}

/// Removes PATH (a file or a tree) whatever its modes.
pub fn remove_tree(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else { return };
    if meta.is_dir() {
        for p in walk(path).into_iter().chain([path.to_path_buf()]) {
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o700));
            }
        }
        fs::remove_dir_all(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    } else {
        fs::remove_file(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
}

/// `unshare` into a new pid namespace with its own /proc, set vm.memfd_noexec (per pid
/// namespace) to VALUE there, then exec PROGRAM ARGS. None, with the reason printed, when not root.
pub fn with_memfd_noexec(sb: &Sandbox, value: u8, program: &Path, args: &[&str]) -> Option<Command> {
    if !is_root() {
        eprintln!("skipped: vm.memfd_noexec needs root to set in a new pid namespace");
        return None;
    }
    let mut cmd = Command::new("unshare");
    sb.configure(&mut cmd);
    cmd.args(["--pid", "--fork", "--mount-proc", "sh", "-c"])
        .arg(format!(r#"echo {value} > /proc/sys/vm/memfd_noexec && exec "$@""#))
        .arg("sh")
        .arg(program)
        .args(args);
    Some(cmd)
}
