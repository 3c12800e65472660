//! Lists STIGMER_COMPONENTS_DIR: validates every entry (name, x bit, the onedir layout, what
//! components.toml says of it) and hashes its payload, packing directories on the way.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::archive::pack_dir;
use crate::error::{Error, Result, at};
use crate::model::{Compression, Format, IndexEntry, Kind, RunnerSetting};
use crate::names;
use crate::settings::{ComponentSettings, SETTINGS_FILE, Settings, line_of};
use crate::sniff::hash_file;

/// One component as the build collects it; the manifest is written from these.
pub(crate) struct Component {
    pub(crate) name: String,
    pub(crate) kind: Kind<Vec<IndexEntry<String>>>,
    /// A directory's tar stream, packed once here and stored later.
    pub(crate) packed: Option<Vec<u8>>,
    pub(crate) format: Format,
    pub(crate) settings: ComponentSettings,
    pub(crate) compression: Compression,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    /// Where the stored bytes start in the blob, and how many there are (set by the blob writer).
    pub(crate) offset: u64,
    pub(crate) stored_size: u64,
}

/// Lists DIR's components, validates them, and hashes each payload.
pub(crate) fn scan(
    dir: &Path,
    settings: &Settings,
    settings_path: &Path,
    settings_text: &str,
) -> Result<Vec<Component>> {
    let mut names: Vec<String> = Vec::new();
    for entry in fs::read_dir(dir).map_err(at(dir))? {
        let entry = entry.map_err(at(dir))?;
        let name = entry.file_name().into_string().map_err(|n| Error::NameNotUtf8 { path: dir.join(n) })?;
        if name.starts_with('.') || name == SETTINGS_FILE {
            continue;
        }
        names.push(name);
    }
    names.sort();
    for name in settings.components.keys() {
        if !names.contains(name) {
            let line = line_of(settings_text, &format!("[components.{name}]")).or_else(|| line_of(settings_text, name));
            return Err(Error::NoSuchComponent {
                path: settings_path.to_owned(),
                line,
                name: name.clone(),
                missing: dir.join(name),
            });
        }
    }

    let mut out = Vec::new();
    for name in names {
        let path = dir.join(&name);
        check_name(&name).map_err(|why| Error::BadName { path: path.clone(), why })?;
        let meta = fs::metadata(&path).map_err(at(&path))?;
        let settings = settings.components.get(&name).cloned().unwrap_or_default();
        let (kind, packed, format, size, sha256) = if meta.is_file() {
            check_executable(&path, &meta)?;
            let sniffed = hash_file(&path).map_err(at(&path))?;
            (Kind::File, None, sniffed.format, sniffed.size, sniffed.sha256)
        } else if meta.is_dir() {
            let entry = path.join(&name);
            let entry_meta =
                fs::metadata(&entry).map_err(|_| Error::NoEntryPoint { dir: path.clone(), entry: entry.clone() })?;
            if !entry_meta.is_file() {
                return Err(Error::EntryNotAFile { entry });
            }
            check_executable(&entry, &entry_meta)?;
            let format = hash_file(&entry).map_err(at(&entry))?.format;
            if settings.runner == RunnerSetting::Memfd {
                let line = line_of(settings_text, &format!("[components.{name}]")).unwrap_or(0);
                return Err(Error::DirWithMemfd { path: settings_path.to_owned(), line, name });
            }
            let (index, tar) = pack_dir(&path)?;
            let sha256 = hex::encode(Sha256::digest(&tar));
            let size = tar.len() as u64;
            (Kind::Dir(index), Some(tar), format, size, sha256)
        } else {
            return Err(Error::NotFileOrDir { path });
        };
        let compression = settings.compression(packed.is_some());
        out.push(Component {
            name,
            kind,
            packed,
            format,
            settings,
            compression,
            size,
            sha256,
            offset: 0,
            stored_size: 0,
        });
    }
    Ok(out)
}

fn check_name(name: &str) -> std::result::Result<(), String> {
    if name == "stigmer" {
        return Err("'stigmer' is the launcher's own name and cannot be a component".into());
    }
    names::check(name).map_err(|bad| bad.to_string())
}

fn check_executable(path: &Path, meta: &fs::Metadata) -> Result<()> {
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(Error::NotExecutable { path: path.to_owned() });
    }
    Ok(())
}
