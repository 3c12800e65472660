//! The stamp of a cache entry, `.NAME.stamp`, written right after a fill: a header, then one line
//! for the item (the file, or the top of the tree) and one for the entry point, each its kind,
//! inode, size and ctime. Any write, truncation, chmod or rename onto a path moves its ctime, and
//! no user-space call sets it back, so a start that finds both lines unchanged finds the entry as
//! it was filled (entry.rs, `Entry::state`, says how far that reaches into a tree).

use std::fs::{self, File};
use std::io::{self, BufRead};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const HEADER: &str = "stigmer-stamp 2";

/// The line that records M.
pub(super) fn line(m: &fs::Metadata) -> String {
    let kind = if m.is_dir() {
        'd'
    } else if m.file_type().is_symlink() {
        'l'
    } else {
        'f'
    };
    format!("{kind} {} {} {} {}", m.ino(), m.len(), m.ctime(), m.ctime_nsec())
}

/// A stamp recording PATHS, in order.
pub(super) fn text<'a>(paths: impl IntoIterator<Item = &'a fs::Metadata>) -> String {
    let mut text = format!("{HEADER}\n");
    for m in paths {
        text.push_str(&line(m));
        text.push('\n');
    }
    text
}

/// The first N lines after the header of the stamp at PATH; None when it is missing, has
/// another header or fewer lines. Reads 512 bytes (stamps of older builds list every path of a
/// tree after these).
pub(super) fn head<const N: usize>(path: &Path) -> Option<[String; N]> {
    let mut stamp = io::BufReader::with_capacity(512, File::open(path).ok()?);
    let mut next = || {
        let mut line = String::new();
        match stamp.read_line(&mut line) {
            Ok(n) if n > 0 && line.ends_with('\n') => {
                line.pop();
                Some(line)
            }
            _ => None,
        }
    };
    if next()? != HEADER {
        return None;
    }
    let lines: Vec<String> = (0..N).map_while(|_| next()).collect();
    lines.try_into().ok()
}

/// Whether LINE records the directory M by its inode, whatever its ctime.
pub(super) fn same_dir(line: &str, m: &fs::Metadata) -> bool {
    m.is_dir() && line.strip_prefix(&format!("d {} ", m.ino())).is_some()
}
