//! Payload storage: directories packed as reproducible tar streams, payloads optionally zstd
//! compressed, laid out page-aligned (and deduplicated) in the blob the linker pulls in.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result, at};
use crate::links::link_stays_inside;
use crate::model::{Compression, IndexEntry};
use crate::scan::Component;

/// Payloads start on page boundaries so the runtime may map or splice them.
const ALIGN: u64 = 4096;

/// Packs a directory as a reproducible tar stream (sorted, zero times and owners) and indexes it.
pub(crate) fn pack_dir(root: &Path) -> Result<(Vec<IndexEntry<String>>, Vec<u8>)> {
    let mut index = Vec::new();
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    let mut paths = Vec::new();
    while let Some(rel) = stack.pop() {
        let here = root.join(&rel);
        let mut children: Vec<_> = fs::read_dir(&here).and_then(Iterator::collect).map_err(at(&here))?;
        children.sort_by_key(fs::DirEntry::file_name);
        for child in children.into_iter().rev() {
            let rel = rel.join(child.file_name());
            if child.file_type().map_err(at(&here))?.is_dir() {
                stack.push(rel.clone());
            }
            paths.push(rel);
        }
    }
    paths.sort();
    let dir = || root.to_owned();
    for rel in paths {
        let full = root.join(&rel);
        let meta = fs::symlink_metadata(&full).map_err(at(&full))?;
        let path = rel.to_str().ok_or_else(|| Error::PathNotUtf8 { dir: dir(), path: full.clone() })?.to_owned();
        let mut mode = meta.mode() & 0o7777;
        // Never carried into anyone's cache: a setuid file there would be a setuid file of
        // whoever runs stigmer (root included). The runtime drops them too.
        if mode & 0o7000 != 0 && !meta.file_type().is_symlink() {
            println!("cargo::warning={}: setuid/setgid/sticky bits dropped (mode {mode:04o})", full.display());
            mode &= 0o777;
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        header.set_mode(mode);
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&full).map_err(at(&full))?;
            let target_str = target.to_str().ok_or_else(|| Error::LinkNotUtf8 { dir: dir(), path: full.clone() })?;
            if !link_stays_inside(&rel, &target) {
                return Err(Error::LinkLeaves { dir: dir(), path: full, target: target_str.to_owned() });
            }
            builder.append_link(&mut header, &rel, &target).map_err(at(&full))?;
            index.push(IndexEntry::Symlink { path, target: target_str.to_owned() });
        } else if meta.is_dir() {
            builder.append_data(&mut header, &rel, io::empty()).map_err(at(&full))?;
            index.push(IndexEntry::Dir { path, mode });
        } else if meta.is_file() {
            let data = fs::read(&full).map_err(at(&full))?;
            builder.append_data(&mut header, &rel, data.as_slice()).map_err(at(&full))?;
            let sha256 = hex::encode(Sha256::digest(&data));
            index.push(IndexEntry::File { path, mode, size: meta.len(), sha256 });
        } else {
            return Err(Error::Unsupported { dir: dir(), path: full });
        }
    }
    Ok((index, builder.into_inner().map_err(at(root))?))
}

/// Writes every component's payload to `blob` (found under `dir`), page-aligned, storing equal
/// payloads once; sets each component's offset and stored size.
pub(crate) fn write_blob(
    dir: &Path,
    components: &mut [Component],
    blob: &mut impl Write,
    blob_path: &Path,
) -> Result<()> {
    let mut written: HashMap<(String, Compression), (u64, u64)> = HashMap::new();
    let mut offset = 0u64;
    for c in components {
        let key = (c.sha256.clone(), c.compression);
        if let Some(&(start, stored)) = written.get(&key) {
            (c.offset, c.stored_size) = (start, stored);
            continue;
        }
        let pad = offset.next_multiple_of(ALIGN) - offset;
        blob.write_all(&vec![0; pad as usize]).map_err(at(blob_path))?;
        offset += pad;
        let source = dir.join(&c.name);
        let stored = store(c, &source, blob).map_err(at(&source))?;
        (c.offset, c.stored_size) = (offset, stored);
        written.insert(key, (offset, stored));
        offset += stored;
    }
    Ok(())
}

/// Writes one payload to the blob, compressed as configured; returns the stored size.
fn store(c: &Component, source: &Path, blob: &mut impl Write) -> io::Result<u64> {
    let raw: Box<dyn Read> = match &c.packed {
        None => Box::new(fs::File::open(source)?),
        Some(tar) => Box::new(tar.as_slice()),
    };
    let mut counter = CountingWriter { inner: blob, count: 0 };
    match c.compression {
        Compression::None => {
            io::copy(&mut io::BufReader::with_capacity(1 << 20, raw), &mut counter)?;
        }
        Compression::Zstd(level) => {
            let mut encoder = zstd::stream::Encoder::new(&mut counter, level)?;
            encoder.include_checksum(true)?;
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            encoder.multithread(threads)?;
            io::copy(&mut io::BufReader::with_capacity(1 << 20, raw), &mut encoder)?;
            encoder.finish()?;
        }
    }
    Ok(counter.count)
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
