//! Unpacks a directory component's tar stream, refusing anything that could write outside the
//! destination: absolute or `..` paths, links, devices, and symlinks whose target leaves the tree.
//! The stream is hash-checked by the caller, but this stays safe for any input.
//!
//! Modes: setuid, setgid and sticky bits never reach the disk (build/archive.rs drops them too, with a
//! warning); files and directories are read-only (changing, adding, removing or renaming
//! anything takes a chmod first, which moves the ctime the cache's stamp checks); directories
//! are created writable and get their final mode after everything in them, as tar does, so a
//! read-only (0555) directory unpacks for any user.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component as PathPart, Path, PathBuf};

use super::links::link_stays_inside;

#[derive(Debug, thiserror::Error)]
pub(crate) enum UnpackError {
    #[error("archive entry {path:?} {why}")]
    Refused { path: String, why: &'static str },
    #[error(
        "unpacking into {dest}: {} (free some space, or set STIGMER_HOME to a writable directory)",
        with_cause(source)
    )]
    Io { dest: String, source: io::Error },
}

/// The tar crate wraps the OS error ("No space left on device") under its own description.
fn with_cause(e: &io::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(inner) = cause {
        text = format!("{text}: {inner}");
        cause = inner.source();
    }
    text
}

/// Unpacks `reader` (a tar stream) into the existing, empty directory `dest`.
pub(crate) fn unpack(reader: impl Read, dest: &Path) -> Result<(), UnpackError> {
    let io_err = |source| UnpackError::Io { dest: dest.display().to_string(), source };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    // Applied by tar to files through their handle: no special bits, no write bits.
    archive.set_mask(FILE_MASK);
    archive.set_overwrite(false);
    archive.set_unpack_xattrs(false);
    // Directories and their final modes, applied deepest first once the contents are in.
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let path = entry.path().map_err(io_err)?.into_owned();
        let shown = || path.display().to_string();
        let refuse = |why| UnpackError::Refused { path: shown(), why };
        if !path.components().all(|p| matches!(p, PathPart::Normal(_))) || path.as_os_str().is_empty() {
            return Err(refuse("is not a plain relative path"));
        }
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target =
                    entry.link_name().map_err(io_err)?.ok_or_else(|| refuse("is a symlink without a target"))?;
                if !link_stays_inside(&path, &target) {
                    return Err(refuse("is a symlink pointing outside the component"));
                }
            }
            _ => return Err(refuse("is not a file, directory or symlink")),
        }
        // unpack_in re-checks the path and refuses to write through a symlinked parent.
        if !entry.unpack_in(dest).map_err(io_err)? {
            return Err(refuse("escapes the destination"));
        }
        let full = dest.join(&path);
        // A directory entry over an earlier symlink of the same name is left to that symlink:
        // never chmod through one.
        let is_real_dir = fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir());
        if entry.header().entry_type() == tar::EntryType::Directory && is_real_dir {
            let mode = entry.header().mode().map_err(io_err)?;
            // tar gave it its masked mode; writable by us until its contents are in. unpack_in
            // proved no symlink on the way, and nothing else writes into our private temp dir.
            fs::set_permissions(&full, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
            // The owner keeps read and search: the cache must stat what it stamps.
            dirs.push((full, mode & DIR_KEEP | 0o500));
        }
    }
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (dir, mode) in dirs {
        if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(io_err)?;
        }
    }
    Ok(())
}

/// Bits cleared on files: setuid, setgid, sticky, and every write bit.
const FILE_MASK: u32 = 0o7222;
/// Bits kept on directories: read and search, never write: a read-only tree is what lets the
/// cache's start-up check look at its top only (src/run/cache.rs, `Entry::state`).
const DIR_KEEP: u32 = 0o555;

#[cfg(test)]
mod tests {
    //! Property tests: arbitrary tar streams, hostile ones included (`..` and absolute names,
    //! escaping symlinks and hardlinks, devices, writes through a symlinked directory, names
    //! hidden in GNU long-name and pax records), unpacked into `root/l1/l2/dest`. Whatever the
    //! stream, `unpack` returns (Ok or Err) and nothing appears outside `dest`, a file outside
    //! stays untouched, and what is inside holds no device, fifo, hardlink or escaping symlink.

    use std::collections::BTreeSet;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::{Path, PathBuf};

    use proptest::prelude::*;

    use super::*;

    /// Where an absolute name or target in the generated stream points: substituted at run
    /// time so that a wrong write lands inside the test's own tree (and is caught), never in `/`.
    const ROOT: &str = "@ROOT";

    #[derive(Debug, Clone)]
    enum Kind {
        File(Vec<u8>),
        Dir,
        Symlink(String),
        Hardlink(String),
        CharDevice,
        BlockDevice,
        Fifo,
    }

    #[derive(Debug, Clone, Copy)]
    enum NameEncoding {
        Header,
        GnuLongName,
        Pax,
    }

    #[derive(Debug, Clone)]
    struct Item {
        name: String,
        kind: Kind,
        encoding: NameEncoding,
        mode: u32,
    }

    /// Paths from a small alphabet so entries collide and build on each other: `s` made a
    /// symlink, then `s/x` written through it.
    fn rel_path() -> impl Strategy<Value = String> {
        let part = prop_oneof![
            24 => prop::sample::select(vec!["a", "b", "s", "x", "victim"]),
            2 => Just(".."),
            1 => Just("."),
            1 => Just(""),
        ];
        prop::collection::vec(part, 1..4).prop_map(|parts| parts.join("/"))
    }

    fn any_path() -> impl Strategy<Value = String> {
        prop_oneof![
            30 => rel_path(),
            1 => rel_path().prop_map(|p| format!("{ROOT}/{p}")),
            1 => rel_path().prop_map(|p| format!("{ROOT}/l1/l2/{p}")),
            1 => Just(format!("{ROOT}/victim")),
            1 => Just(ROOT.to_string()),
            1 => rel_path().prop_map(|p| format!("./{p}/")),
        ]
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            8 => prop::collection::vec(any::<u8>(), 0..600).prop_map(Kind::File),
            4 => Just(Kind::Dir),
            6 => any_path().prop_map(Kind::Symlink),
            1 => any_path().prop_map(Kind::Hardlink),
            1 => Just(Kind::CharDevice),
            1 => Just(Kind::BlockDevice),
            1 => Just(Kind::Fifo),
        ]
    }

    fn item() -> impl Strategy<Value = Item> {
        let encoding = prop_oneof![
            6 => Just(NameEncoding::Header),
            1 => Just(NameEncoding::GnuLongName),
            1 => Just(NameEncoding::Pax),
        ];
        let mode = prop::sample::select(vec![0o644, 0o755, 0o777, 0o4755, 0o000, 0o7777]);
        (any_path(), kind(), encoding, mode).prop_map(|(name, kind, encoding, mode)| Item {
            name,
            kind,
            encoding,
            mode,
        })
    }

    fn block(data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        v.resize(data.len().div_ceil(512) * 512, 0);
        v
    }

    fn header(name: &[u8], link: &[u8], ty: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        // Raw bytes, bypassing the builder's own path checks: the point is hostile input.
        let old = h.as_old_mut();
        let n = name.len().min(old.name.len());
        old.name[..n].copy_from_slice(&name[..n]);
        let n = link.len().min(old.linkname.len());
        old.linkname[..n].copy_from_slice(&link[..n]);
        h.set_entry_type(ty);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        if matches!(ty, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        h
    }

    /// The raw tar stream for ITEMS, absolute names rooted at ROOT_DIR.
    fn stream(items: &[Item], root_dir: &Path) -> Vec<u8> {
        let root = root_dir.to_str().unwrap();
        let mut out = Vec::new();
        for it in items {
            let name = it.name.replace(ROOT, root);
            let (ty, link, data) = match &it.kind {
                Kind::File(data) => (tar::EntryType::Regular, String::new(), data.clone()),
                Kind::Dir => (tar::EntryType::Directory, String::new(), Vec::new()),
                Kind::Symlink(t) => (tar::EntryType::Symlink, t.replace(ROOT, root), Vec::new()),
                Kind::Hardlink(t) => (tar::EntryType::Link, t.replace(ROOT, root), Vec::new()),
                Kind::CharDevice => (tar::EntryType::Char, String::new(), Vec::new()),
                Kind::BlockDevice => (tar::EntryType::Block, String::new(), Vec::new()),
                Kind::Fifo => (tar::EntryType::Fifo, String::new(), Vec::new()),
            };
            let header_name = match it.encoding {
                NameEncoding::Header => name.as_bytes().to_vec(),
                NameEncoding::GnuLongName => {
                    let mut long = name.as_bytes().to_vec();
                    long.push(0);
                    let h = header(b"././@LongLink", b"", tar::EntryType::GNULongName, long.len() as u64, 0o644);
                    out.extend_from_slice(h.as_bytes());
                    out.extend(block(&long));
                    b"innocent".to_vec()
                }
                NameEncoding::Pax => {
                    let mut records = Vec::new();
                    for (key, value) in [("path", &name), ("linkpath", &link)] {
                        if key == "linkpath" && value.is_empty() {
                            continue;
                        }
                        let body = format!(" {key}={value}\n");
                        // The length prefix counts its own digits.
                        let mut len = body.len() + 1;
                        while len.to_string().len() + body.len() != len {
                            len += 1;
                        }
                        records.extend_from_slice(format!("{len}{body}").as_bytes());
                    }
                    let h = header(b"PaxHeader", b"", tar::EntryType::XHeader, records.len() as u64, 0o644);
                    out.extend_from_slice(h.as_bytes());
                    out.extend(block(&records));
                    b"innocent".to_vec()
                }
            };
            let link_bytes =
                if matches!(it.encoding, NameEncoding::Pax) { b"innocent".to_vec() } else { link.into_bytes() };
            let h = header(&header_name, &link_bytes, ty, data.len() as u64, it.mode);
            out.extend_from_slice(h.as_bytes());
            out.extend(block(&data));
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd {
            let e = e.unwrap();
            let path = e.path();
            out.push(path.clone());
            if e.file_type().unwrap().is_dir() {
                walk(&path, out);
            }
        }
    }

    /// Unpacks ITEMS and checks the invariants; Err(reason) on a violation.
    fn check(items: &[Item]) -> Result<(), String> {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let dest = root.join("l1/l2/dest");
        fs::create_dir_all(&dest).unwrap();
        let victim = root.join("victim");
        fs::write(&victim, b"untouched").unwrap();
        let victim_meta = fs::metadata(&victim).unwrap();

        let bytes = stream(items, &root);
        let result = std::panic::catch_unwind(|| unpack(&bytes[..], &dest));
        let outcome = result.map_err(|_| "unpack panicked".to_string())?;

        let expected_outside: BTreeSet<PathBuf> =
            [root.join("l1"), root.join("l1/l2"), dest.clone(), victim.clone()].into_iter().collect();
        let mut all = Vec::new();
        walk(&root, &mut all);
        let outside: Vec<_> = all.iter().filter(|p| !p.starts_with(&dest) && !expected_outside.contains(*p)).collect();
        let victim_now = fs::symlink_metadata(&victim).map_err(|e| format!("victim: {e}"))?;
        let content = fs::read(&victim).map_err(|e| format!("victim: {e}"))?;
        // Make the tree removable whatever modes it was given, before any early return.
        for p in &all {
            if fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
                let _ = fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755));
            }
        }
        if !outside.is_empty() {
            return Err(format!("created outside dest: {outside:?} (unpack: {outcome:?})"));
        }
        if content != b"untouched"
            || victim_now.ino() != victim_meta.ino()
            || victim_now.nlink() != 1
            || victim_now.mode() != victim_meta.mode()
        {
            return Err(format!("the file outside dest was changed or linked to (unpack: {outcome:?})"));
        }
        for p in all.iter().filter(|p| p.starts_with(&dest) && **p != dest) {
            let meta = fs::symlink_metadata(p).unwrap();
            let ft = meta.file_type();
            if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
                return Err(format!("special file {} created (unpack: {outcome:?})", p.display()));
            }
            if ft.is_file() && meta.nlink() != 1 {
                return Err(format!("hardlink {} created (unpack: {outcome:?})", p.display()));
            }
            if ft.is_symlink() {
                let target = fs::read_link(p).unwrap();
                let rel = p.strip_prefix(&dest).unwrap();
                if !link_stays_inside(rel, &target) {
                    return Err(format!(
                        "escaping symlink {} -> {} (unpack: {outcome:?})",
                        p.display(),
                        target.display()
                    ));
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn unpack_never_writes_outside_the_destination(items in prop::collection::vec(item(), 1..7)) {
            if let Err(why) = check(&items) {
                prop_assert!(false, "{}", why);
            }
        }
    }

    /// The attacks the generator should find, spelled out once so they surely run.
    #[test]
    fn classic_escapes_are_refused() {
        let f = |name: &str, kind: Kind| Item { name: name.into(), kind, encoding: NameEncoding::Header, mode: 0o644 };
        let cases: Vec<Vec<Item>> = vec![
            vec![f("../../../evil", Kind::File(b"x".to_vec()))],
            vec![f(&format!("{ROOT}/evil"), Kind::File(b"x".to_vec()))],
            vec![f("s", Kind::Symlink(ROOT.into())), f("s/evil", Kind::File(b"x".to_vec()))],
            vec![f("s", Kind::Symlink("../../..".into())), f("s/evil", Kind::File(b"x".to_vec()))],
            vec![f("v", Kind::Symlink(format!("{ROOT}/victim"))), f("v", Kind::File(b"x".to_vec()))],
            vec![f("h", Kind::Hardlink(format!("{ROOT}/victim"))), f("h", Kind::File(b"x".to_vec()))],
            vec![f("h", Kind::Hardlink("../../../victim".into()))],
            vec![f("d", Kind::CharDevice)],
            vec![Item { encoding: NameEncoding::GnuLongName, ..f("../../../evil", Kind::File(b"x".to_vec())) }],
            vec![Item { encoding: NameEncoding::Pax, ..f("../../../evil", Kind::File(b"x".to_vec())) }],
        ];
        for items in cases {
            check(&items).unwrap_or_else(|why| panic!("{items:?}: {why}"));
        }
    }
}
