//! Directory components in the cache (issue 13): a start does not stat every file of the tree,
//! yet a deleted, truncated, rewritten or replaced file is never run. The fixture is shdir with
//! its 3,000 generated files under lib/ (tests/fixtures/build.sh); SHDIR_SHOW=PATH makes it
//! print one of them, so a run shows exactly what a start would read.
//!
//! A start checks the top of the tree and its entry point, whoever runs it (src/run/cache.rs,
//! `Entry::state`). For a process the read-only modes bind, nothing deeper can change without a
//! chmod; root is not bound, and `stigmer verify` finds what it changes deeper. Both are tested:
//! as the test user (root in CI) and as other users (4242 and nobody, 65534).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::*;

const SHOWN: &str = "lib/pkg42/mod17.txt";
/// A file near the end of the tree's 3,106 paths.
const LATE: &str = "lib/pkg99/mod17.txt";

/// The ways a file in the tree can be damaged, each done as the filesystem allows it to the
/// one doing it (no chmod: root needs none).
#[derive(Debug, Clone, Copy)]
enum Damage {
    Delete,
    Truncate,
    /// Same size, other bytes: only the ctime tells.
    Rewrite,
    /// Another file renamed over it.
    Replace,
    /// Its directory moved aside and a symlink to it put in its place: every file keeps its
    /// inode, ctime and contents; only the directory's own path tells.
    DirBehindSymlink,
}

fn damage(file: &Path, how: Damage) -> std::io::Result<()> {
    match how {
        Damage::Delete => fs::remove_file(file),
        Damage::Truncate => fs::OpenOptions::new().write(true).truncate(true).open(file).map(drop),
        Damage::Rewrite => {
            let len = fs::metadata(file)?.len() as usize;
            fs::write(file, "X".repeat(len))
        }
        Damage::Replace => {
            let other = file.with_extension("planted");
            fs::write(&other, b"planted\n")?;
            fs::rename(&other, file)
        }
        Damage::DirBehindSymlink => {
            let dir = file.parent().unwrap();
            let aside = dir.with_extension("aside");
            fs::rename(dir, &aside)?;
            std::os::unix::fs::symlink(aside.file_name().unwrap(), dir)
        }
    }
}

/// `shdir` with SHDIR_SHOW=SHOWN through COMMAND: what it printed.
fn shown(cmd: Command) -> String {
    shown_file(cmd, SHOWN)
}

/// `shdir` with SHDIR_SHOW=FILE through COMMAND: what it printed.
fn shown_file(mut cmd: Command, file: &str) -> String {
    cmd.env("SHDIR_SHOW", file);
    let out = run(cmd);
    assert_code(&out, 0);
    stdout(&out)
}

fn shdir(sb: &Sandbox) -> Command {
    let mut cmd = sb.stigmer();
    cmd.args(["exec", "shdir"]);
    cmd
}

/// The cached tree of shdir in the cache CACHE.
fn tree(cache: &Path, sha: &str) -> PathBuf {
    cache.join(sha).join("shdir")
}

#[test]
fn cached_tree_is_read_only() {
    let sb = Sandbox::new();
    let want = fs::read_to_string(fixtures_dir().join("shdir").join(SHOWN)).unwrap();
    assert_eq!(shown(shdir(&sb)), want);
    let root = tree(&sb.cache(), &component_info(&sb, "shdir").sha256);
    let mut dirs = 0;
    let mut files = 0;
    for path in std::iter::once(root.clone()).chain(walk(&root)) {
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o222, 0, "{} is writable ({:o})", path.display(), meta.mode());
        if meta.is_dir() {
            dirs += 1;
        } else if meta.is_file() {
            files += 1;
        }
    }
    assert!(files > 3000 && dirs > 100, "{files} files, {dirs} directories");
}

/// As root, the modes bind nothing, and a start checks what an ordinary user's start checks:
/// the entry directory, the stamp's head, the top of the tree and its entry point. The entry
/// point rewritten in place (same size), or the top of the tree replaced by a copy, is
/// refilled before anything runs.
#[test]
fn root_changes_at_the_top_are_refilled_before_a_start() {
    if !is_root() {
        eprintln!("skipped: damaging a read-only tree without a chmod needs root");
        return;
    }
    let sb = Sandbox::new();
    let want = fs::read_to_string(fixtures_dir().join("shdir").join(SHOWN)).unwrap();
    assert_eq!(shown(shdir(&sb)), want);
    let top = tree(&sb.cache(), &component_info(&sb, "shdir").sha256);
    let entry = top.join("shdir");
    let len = fs::metadata(&entry).unwrap().len() as usize;
    let head = "#!/bin/sh\necho evil\n";
    fs::write(&entry, format!("{head}{}", "#".repeat(len - head.len()))).unwrap();
    assert_eq!(fs::metadata(&entry).unwrap().len() as usize, len);
    assert_eq!(shown(shdir(&sb)), want, "the rewritten entry point ran");
    // The whole tree swapped for a copy with one file changed: a new top inode.
    let aside = top.with_extension("aside");
    fs::rename(&top, &aside).unwrap();
    let out = run({
        let mut cmd = Command::new("cp");
        cmd.arg("-a").arg(&aside).arg(&top);
        cmd
    });
    assert_code(&out, 0);
    fs::write(top.join(SHOWN), "planted\n").unwrap();
    assert_eq!(shown(shdir(&sb)), want, "the swapped tree ran");
}

/// Deeper in the tree, what root changes is not looked at by a start (docs/DESIGN.md, "What a
/// start checks"): `stigmer verify` reports every such damage, and the next start refills.
#[test]
fn root_changes_deep_are_found_by_verify() {
    if !is_root() {
        eprintln!("skipped: damaging a read-only tree without a chmod needs root");
        return;
    }
    let sb = Sandbox::new();
    let want = fs::read_to_string(fixtures_dir().join("shdir").join(LATE)).unwrap();
    let file = tree(&sb.cache(), &component_info(&sb, "shdir").sha256).join(LATE);
    for how in [Damage::Delete, Damage::Truncate, Damage::Rewrite, Damage::Replace, Damage::DirBehindSymlink] {
        assert_eq!(shown_file(shdir(&sb), LATE), want, "before {how:?}");
        damage(&file, how).unwrap();
        let out = run({
            let mut cmd = sb.stigmer();
            cmd.arg("verify");
            cmd
        });
        assert_ne!(out.status.code(), Some(0), "verify missed {how:?}: {}", describe(&out));
        assert!(stdout(&out).contains("pkg99"), "{how:?}: {}", describe(&out));
        assert_eq!(shown_file(shdir(&sb), LATE), want, "after {how:?} and verify: not refilled");
        assert_eq!(fs::read_to_string(&file).unwrap(), want, "after {how:?}");
        assert!(fs::symlink_metadata(file.parent().unwrap()).unwrap().is_dir(), "after {how:?}");
    }
}

/// What the tree tests do in another user's world.
trait TreeWorld {
    fn sh_in(&self, tree: &Path, script: &str) -> Output;
    fn filled_tree(&self) -> (PathBuf, String);
}

impl TreeWorld for UserWorld {
    /// `sh -c SCRIPT` as the world's user, in the cached tree.
    fn sh_in(&self, tree: &Path, script: &str) -> Output {
        run(self.sh(tree, script))
    }

    /// The cached tree, filled by a first start.
    fn filled_tree(&self) -> (PathBuf, String) {
        let want = fs::read_to_string(fixtures_dir().join("shdir").join(SHOWN)).unwrap();
        assert_eq!(shown(self.stigmer(&["exec", "shdir"])), want);
        let cache = self.home.join("cache");
        let entries = visible_entries(&cache);
        assert_eq!(entries.len(), 1, "{entries:?}");
        (tree(&cache, &entries[0]), want)
    }
}

/// As an ordinary user, none of the damages is possible without a chmod first: the kernel
/// refuses each (that is what lets a start look at the top of the tree only).
#[test]
fn read_only_tree_refuses_every_damage_to_its_owner() {
    if !is_root() {
        eprintln!("skipped: running as another user needs root");
        return;
    }
    for w in OTHER_USERS.map(UserWorld::of) {
        let (tree, want) = w.filled_tree();
        for (what, script) in [
            ("delete", format!("rm -f {SHOWN}")),
            ("truncate", format!(": > {SHOWN}")),
            ("rewrite", format!("printf X >> {SHOWN}")),
            ("replace", format!("cp {SHOWN} /tmp/x.$$ 2>/dev/null; mv -f /tmp/x.$$ {SHOWN}")),
            ("add", "echo new > lib/pkg42/new.txt".to_owned()),
            ("move a directory aside", "mv lib/pkg42 lib/pkg42.aside".to_owned()),
            ("replace the entry point", "cp shdir /tmp/y.$$ && mv -f /tmp/y.$$ shdir".to_owned()),
        ] {
            let out = w.sh_in(&tree, &script);
            assert_ne!(out.status.code(), Some(0), "{what} succeeded as uid {}: {}", w.uid, describe(&out));
        }
        assert_eq!(fs::read_to_string(tree.join(SHOWN)).unwrap(), want);
        assert_eq!(shown(w.stigmer(&["exec", "shdir"])), want);
    }
}

/// As an ordinary user, a change at the top of the tree or to its entry point, made after a
/// chmod, is found by the next start (the item's and the entry point's ctimes) and refilled.
#[test]
fn owner_changes_at_the_top_after_a_chmod_are_refilled() {
    if !is_root() {
        eprintln!("skipped: running as another user needs root");
        return;
    }
    for w in OTHER_USERS.map(UserWorld::of) {
        let (tree, _) = w.filled_tree();
        let run_ok = |what: &str| {
            let out = run(w.stigmer(&["exec", "shdir"]));
            assert_code(&out, 0);
            assert_eq!(stdout(&out), "shdir: data from a read-only directory\n", "after {what}: {}", describe(&out));
        };
        // The entry point rewritten in place (same size) after a chmod of the file.
        let out = w.sh_in(
            &tree,
            "chmod u+w shdir && n=$(wc -c < shdir) && { printf '#!/bin/sh\\necho evil\\n'; head -c $((n - 20)) /dev/zero | tr '\\0' '#'; } > /tmp/evil.$$ && test $(wc -c < /tmp/evil.$$) = $n && cat /tmp/evil.$$ > shdir; rc=$?; rm -f /tmp/evil.$$; chmod a-w shdir; exit $rc",
        );
        assert_code(&out, 0);
        run_ok("rewriting the entry point");
        // A top-level name moved away and back after a chmod of the tree's top.
        let out = w.sh_in(&tree, "chmod u+w . && mv shdir shdir.x && mv shdir.x shdir && chmod a-w .");
        assert_code(&out, 0);
        run_ok("renaming the entry point away and back");
    }
}

/// Deeper in the tree, a change made after a chmod of its own directory is left to `stigmer
/// verify` (docs/DESIGN.md, "What a start checks"), which reports it and makes the next start
/// refill.
#[test]
fn owner_changes_deep_after_a_chmod_are_found_by_verify() {
    if !is_root() {
        eprintln!("skipped: running as another user needs root");
        return;
    }
    for w in OTHER_USERS.map(UserWorld::of) {
        let (tree, want) = w.filled_tree();
        let out = w.sh_in(&tree, &format!("chmod u+w lib/pkg42 && rm {SHOWN} && chmod a-w lib/pkg42"));
        assert_code(&out, 0);
        let out = run(w.stigmer(&["verify"]));
        assert_ne!(out.status.code(), Some(0), "verify missed the deleted file: {}", describe(&out));
        assert!(stdout(&out).contains("mod17.txt"), "{}", describe(&out));
        assert_eq!(shown(w.stigmer(&["exec", "shdir"])), want, "the tree verify found damaged was refilled");
        assert_eq!(fs::read_to_string(tree.join(SHOWN)).unwrap(), want);
    }
}

/// Names the component does not have, planted in a cached tree (a file at the top, a symlink and
/// a directory deeper), are damage to `stigmer verify` (issue 20, item 12): each is reported,
/// and the next start refills a tree without them.
#[test]
fn verify_reports_planted_names_in_a_tree() {
    if !is_root() {
        eprintln!("skipped: planting names in a read-only tree without a chmod needs root");
        return;
    }
    let (sb, want, top) = {
        let sb = Sandbox::new();
        let want = fs::read_to_string(fixtures_dir().join("shdir").join(SHOWN)).unwrap();
        assert_eq!(shown(shdir(&sb)), want);
        let top = tree(&sb.cache(), &component_info(&sb, "shdir").sha256);
        (sb, want, top)
    };
    let verify = || {
        let mut cmd = sb.stigmer();
        cmd.arg("verify");
        run(cmd)
    };
    assert_code(&verify(), 0);
    fs::write(top.join("planted.txt"), b"planted\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", top.join("lib/pkg42/planted-link")).unwrap();
    fs::create_dir(top.join("lib/pkg99/planted-dir")).unwrap();
    fs::write(top.join("lib/pkg99/planted-dir/inside"), b"x\n").unwrap();
    let out = verify();
    assert_ne!(out.status.code(), Some(0), "verify missed the planted names: {}", describe(&out));
    let text = stdout(&out);
    for name in ["planted.txt", "planted-link", "planted-dir"] {
        assert!(text.contains(name), "verify did not name {name}: {}", describe(&out));
    }
    assert!(!text.contains("inside"), "an added directory is reported once: {}", describe(&out));
    assert_eq!(shown(shdir(&sb)), want);
    for name in ["planted.txt", "lib/pkg42/planted-link", "lib/pkg99/planted-dir"] {
        assert!(fs::symlink_metadata(top.join(name)).is_err(), "{name} survived the refill");
    }
    assert_code(&verify(), 0);
}
