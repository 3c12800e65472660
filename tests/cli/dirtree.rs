//! Directory components in the cache (issue 13): a start does not stat every file of the tree,
//! yet a deleted, truncated, rewritten or replaced file is never run. The fixture is shdir with
//! its 3,000 generated files under lib/ (tests/fixtures/build.sh); SHDIR_SHOW=PATH makes it
//! print one of them, so a run shows exactly what a start would read.
//!
//! What the start checks depends on who runs it (src/run/cache.rs, `Entry::state`): for a
//! process the read-only modes bind, the top of the tree and its entry point; for one that may
//! write whatever the modes say (root), every path. Both are tested: as the test user (root in
//! CI) and as other users (4242 and nobody, 65534).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::util::*;

const SHOWN: &str = "lib/pkg42/mod17.txt";
/// A file near the end of the tree's 3,106 paths: with two or more CPUs, a root start compares
/// that part in a thread of its own (SHOWN is in the first half).
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

/// A start of shdir showing FILE, with its debug log: what it printed, and whether the holder
/// vouched for the tree (src/run/vouch.rs) rather than the start comparing every path.
fn start_logged(sb: &Sandbox, file: &str) -> (String, bool) {
    let mut cmd = shdir(sb);
    cmd.env("SHDIR_SHOW", file).env("STIGMER_LOG", "debug");
    let out = run(cmd);
    assert_code(&out, 0);
    (stdout(&out), stderr(&out).contains("vouches for the tree"))
}

/// Whether this kernel grants leases (`fs.leases-enable`, on by default): without them the
/// holder vouches for nothing and every root start compares every path (tested as well).
fn leases_enabled() -> bool {
    fs::read_to_string("/proc/sys/fs/leases-enable").is_ok_and(|v| v.trim() != "0")
}

/// A sandbox whose shdir tree a first start filled, showing FILE: the sandbox, FILE's bytes,
/// the cached tree.
fn filled_showing(file: &str) -> (Sandbox, String, PathBuf) {
    let sb = Sandbox::new();
    let want = fs::read_to_string(fixtures_dir().join("shdir").join(file)).unwrap();
    assert_eq!(shown_file(shdir(&sb), file), want);
    let top = tree(&sb.cache(), &component_info(&sb, "shdir").sha256);
    (sb, want, top)
}

/// Whether a holder can vouch for a tree here (else says why the test is skipped): only to
/// root's starts, and only where the kernel grants leases.
fn holder_vouches_here() -> bool {
    let here = is_root() && leases_enabled();
    if !here {
        eprintln!("skipped: a holder vouches for trees only to root starts, and only with fs.leases-enable=1");
    }
    here
}

/// Starts shdir until the holder vouches for its tree (it takes a tree after a start asked
/// about it), each start showing FILE as WANT.
#[track_caller]
fn wait_vouched(sb: &Sandbox, file: &str, want: &str) {
    wait_for(Duration::from_secs(60), "the holder to vouch for shdir's tree", || {
        let (shown, vouched) = start_logged(sb, file);
        assert_eq!(shown, want);
        vouched.then_some(())
    });
}

/// What `stigmer doctor --json` says of SB's holder (null when none runs).
fn doctor_holder(sb: &Sandbox) -> serde_json::Value {
    let mut cmd = sb.stigmer();
    cmd.args(["doctor", "--json"]);
    let out = run(cmd);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    report["memfd_holder"].clone()
}

/// The holders of SB's home: `stigmer-holder` processes whose environment names it.
fn holders(sb: &Sandbox) -> Vec<i32> {
    let comm = |pid: i32| fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    home_procs(sb.home())
        .into_iter()
        .filter(|p| p.state != 'Z' && comm(p.pid).trim_end() == "stigmer-holder")
        .map(|p| p.pid)
        .collect()
}

/// Kills the holders of SB's home and waits until they are gone.
fn end_holders(sb: &Sandbox) {
    for pid in holders(sb) {
        kill(pid, libc::SIGKILL);
    }
    wait_for(Duration::from_secs(10), "the holders to die", || holders(sb).is_empty().then_some(()));
}

/// As root, the modes bind nothing: every damage succeeds without a chmod, and the next start
/// finds it and refills the tree before anything runs, both when the holder vouched for the
/// tree (its lease or watch saw the damage) and when no holder runs (the start compares every
/// path).
/// HOLDER: the holder's states to damage the tree in (true: vouching for it; false: none runs).
fn damaged_file_is_refilled_before_a_root_start(
    shown: &str,
    damages: &[Damage],
    holder: &[bool],
    entry_point_too: bool,
) {
    if !is_root() {
        eprintln!("skipped: damaging a read-only tree without a chmod needs root");
        return;
    }
    let sb = Sandbox::new();
    let want = fs::read_to_string(fixtures_dir().join("shdir").join(shown)).unwrap();
    assert_eq!(shown_file(shdir(&sb), shown), want);
    let sha = component_info(&sb, "shdir").sha256;
    let file = tree(&sb.cache(), &sha).join(shown);
    let holder: Vec<bool> = holder.iter().copied().filter(|&v| !v || leases_enabled()).collect();
    for (&how, &vouched) in damages.iter().flat_map(|how| holder.iter().map(move |v| (how, v))) {
        if vouched {
            wait_vouched(&sb, shown, &want);
        } else {
            end_holders(&sb);
        }
        let started = std::time::Instant::now();
        damage(&file, how).unwrap();
        // A writer's open waits until the holder lets its lease go: at once, not after the
        // kernel's lease-break-time (45 s by default).
        assert!(started.elapsed() < Duration::from_secs(20), "{how:?} waited {:?} for the holder", started.elapsed());
        let (shown_now, vouched_now) = start_logged(&sb, shown);
        assert!(!vouched_now, "after {how:?}: the holder vouched for the damaged tree");
        assert_eq!(shown_now, want, "after {how:?} (holder vouching before: {vouched}): the damaged file was read");
        assert_eq!(fs::read_to_string(&file).unwrap(), want, "after {how:?}");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o444, "after {how:?}");
        let dir = fs::symlink_metadata(file.parent().unwrap()).unwrap();
        assert!(dir.is_dir(), "after {how:?}: the file's directory is a real one again (refilled)");
    }
    if entry_point_too {
        // The entry point itself, rewritten with the same size: the original runs.
        let entry = tree(&sb.cache(), &sha).join("shdir");
        let len = fs::metadata(&entry).unwrap().len() as usize;
        let head = "#!/bin/sh\necho evil\n";
        fs::write(&entry, format!("{head}{}", "#".repeat(len - head.len()))).unwrap();
        assert_eq!(fs::metadata(&entry).unwrap().len() as usize, len);
        assert_eq!(shown_file(shdir(&sb), shown), want, "the rewritten entry point ran");
    }
    end_holders(&sb);
}

#[test]
fn deleted_or_truncated_file_is_refilled_before_a_root_start() {
    damaged_file_is_refilled_before_a_root_start(SHOWN, &[Damage::Delete, Damage::Truncate], &[true, false], false);
    // Without a holder, the last thread's share of the comparison.
    damaged_file_is_refilled_before_a_root_start(LATE, &[Damage::Delete, Damage::Truncate], &[false], false);
}

#[test]
fn rewritten_or_replaced_file_is_refilled_before_a_root_start() {
    damaged_file_is_refilled_before_a_root_start(SHOWN, &[Damage::Rewrite, Damage::Replace], &[true, false], true);
    damaged_file_is_refilled_before_a_root_start(LATE, &[Damage::Rewrite, Damage::Replace], &[false], false);
}

#[test]
fn directory_moved_behind_a_symlink_is_refilled_before_a_root_start() {
    damaged_file_is_refilled_before_a_root_start(LATE, &[Damage::DirBehindSymlink], &[true, false], false);
}

/// Names the index does not have, made in the tree by a root run (Python writes __pycache__
/// next to its modules), change nothing the holder vouches for: it goes on vouching, and
/// doctor says for what.
#[test]
fn new_names_in_a_vouched_tree_keep_it_vouched() {
    if !holder_vouches_here() {
        return;
    }
    let (sb, want, top) = filled_showing(SHOWN);
    wait_vouched(&sb, SHOWN, &want);
    let cache = top.join("lib/pkg42/__pycache__");
    fs::create_dir(&cache).unwrap();
    fs::write(cache.join("mod17.cpython-311.pyc"), b"compiled\n").unwrap();
    fs::write(top.join("new.txt"), b"new\n").unwrap();
    assert_eq!(start_logged(&sb, SHOWN), (want.clone(), true), "after new names were made in the tree");
    let holder = doctor_holder(&sb);
    assert_eq!(holder["trees"][0]["name"], "shdir", "{holder}");
    assert!(holder["trees"][0]["paths"].as_u64().is_some_and(|n| n > 3000), "{holder}");
    end_holders(&sb);
}

/// A file of the tree open for writing when the holder would take the tree cannot be leased:
/// the holder does not vouch for that tree, and what the writer then writes is found by the
/// start's own comparison.
#[test]
fn tree_with_a_file_open_for_writing_is_not_vouched_for() {
    if !holder_vouches_here() {
        return;
    }
    let (sb, want, top) = filled_showing(LATE);
    let file = top.join(LATE);
    let mut writer = fs::OpenOptions::new().write(true).open(&file).unwrap();
    // The writer's open broke the lease of the holder the fill made (if it had taken the tree
    // yet); asked again, the holder tries the tree, fails to lease the file, and says so.
    let why = wait_for(Duration::from_secs(30), "the holder to refuse the tree", || {
        assert_eq!(start_logged(&sb, LATE), (want.clone(), false), "vouched for with a writer open");
        let refused = doctor_holder(&sb)["refused"].as_array().cloned().unwrap_or_default();
        refused.iter().find(|r| r["name"] == "shdir").map(|r| r["why"].as_str().unwrap().to_owned())
    });
    assert!(why.contains(LATE) && why.contains("temporarily unavailable"), "{why}");
    let out = run({
        let mut cmd = sb.stigmer();
        cmd.arg("doctor");
        cmd
    });
    assert!(stdout(&out).contains("cannot vouch for shdir"), "{}", describe(&out));
    assert_eq!(start_logged(&sb, LATE), (want.clone(), false), "vouched for with a writer open");
    std::io::Write::write_all(&mut writer, "X".repeat(want.len()).as_bytes()).unwrap();
    drop(writer);
    assert_eq!(start_logged(&sb, LATE), (want.clone(), false), "the writer's bytes were read");
    end_holders(&sb);
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
