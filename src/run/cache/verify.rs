//! `stigmer verify`: everything in an entry hashed and compared with what is embedded, every
//! mode, every symlink target, and no name the component does not have.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::entry::Entry;
use crate::embed::{HashingReader, Index, IndexEntry, Kind};

impl Entry {
    /// Hashes everything in the entry against the embedded sha256s: what `stigmer verify` runs.
    /// Returns the problems found (empty when intact).
    pub(crate) fn verify(&self) -> Vec<String> {
        let problems = match self.c.kind {
            Kind::File => vec![verify_file(&self.item, self.c.size, self.c.sha256, 0o755)],
            Kind::Dir(index) => std::iter::once(verify_dir(&self.item))
                .chain(index.entries().map(|e| match e {
                    IndexEntry::File { path, mode, size, sha256 } => {
                        verify_file(&self.item.join(path), size, sha256, mode)
                    }
                    IndexEntry::Dir { path, .. } => verify_dir(&self.item.join(path)),
                    IndexEntry::Symlink { path, target } => {
                        let p = self.item.join(path);
                        (fs::read_link(&p).ok().as_deref() != Some(Path::new(target)))
                            .then(|| format!("{}: not a symlink to {target}", p.display()))
                    }
                }))
                .chain(extra_names(&self.item, index).into_iter().map(Some))
                .collect(),
        };
        problems.into_iter().flatten().collect()
    }
}

/// Names in the tree at TOP that INDEX does not have (a file, link or directory added), each
/// reported once: an added directory's contents are not listed. Nothing is followed.
fn extra_names(top: &Path, index: Index) -> Vec<String> {
    let known: HashSet<&str> = index
        .entries()
        .map(|(IndexEntry::Dir { path, .. } | IndexEntry::File { path, .. } | IndexEntry::Symlink { path, .. })| path)
        .collect();
    let mut extra = Vec::new();
    let mut dirs = vec![(top.to_path_buf(), String::new())];
    while let Some((dir, rel)) = dirs.pop() {
        // A directory that cannot be read is reported by its own check (missing, not a directory).
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        let mut names: Vec<_> = entries.filter_map(Result::ok).collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                extra.push(format!("{}: not part of the component", e.path().display()));
                continue;
            };
            let path = if rel.is_empty() { name.to_owned() } else { format!("{rel}/{name}") };
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if !known.contains(path.as_str()) {
                let what = match e.file_type() {
                    Ok(t) if t.is_dir() => "a directory",
                    Ok(t) if t.is_symlink() => "a symlink",
                    Ok(t) if t.is_file() => "a file",
                    _ => "a special file",
                };
                extra.push(format!("{}: {what} that is not part of the component", e.path().display()));
            } else if is_dir {
                dirs.push((e.path(), path));
            }
        }
    }
    extra
}

/// What is wrong with one cached directory, if anything: missing, or writable (the start-up
/// check trusts a read-only tree; see `Entry::state`).
fn verify_dir(path: &Path) -> Option<String> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && m.mode() & 0o222 == 0 => None,
        Ok(m) if m.is_dir() => Some(format!(
            "{}: writable directory (mode {:04o}); cached trees are read-only",
            path.display(),
            m.mode() & 0o7777
        )),
        _ => Some(format!("{}: missing directory", path.display())),
    }
}

/// What is wrong with one cached file, if anything: type, size, mode, then sha256.
fn verify_file(path: &Path, size: u64, sha256: &str, mode: u32) -> Option<String> {
    let shown = path.display();
    let meta = match fs::symlink_metadata(path) {
        Err(e) => return Some(format!("{shown}: {e}")),
        Ok(m) => m,
    };
    let got_mode = meta.permissions().mode();
    if !meta.is_file() {
        Some(format!("{shown}: not a regular file"))
    } else if meta.len() != size {
        Some(format!("{shown}: {} bytes, expected {size}", meta.len()))
    } else if got_mode & 0o111 != mode & 0o111 || got_mode & 0o222 != 0 {
        Some(format!("{shown}: mode {:04o}, expected {:04o}", got_mode & 0o7777, mode & 0o555))
    } else {
        match hash_path(path) {
            Ok(got) if got == sha256 => None,
            Ok(got) => Some(format!("{shown}: sha256 {got}, expected {sha256}")),
            Err(e) => Some(format!("{shown}: {e}")),
        }
    }
}

pub(crate) fn hash_path(path: &Path) -> io::Result<String> {
    HashingReader::new(File::open(path)?).finish()
}
