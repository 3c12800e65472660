//! Every way the build can fail, each with the one line it prints: what is wrong, where (the
//! path, and the line for components.toml), and what to do.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::DIR_VAR;

#[derive(Debug, Error)]
pub(crate) enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("OUT_DIR: {0}")]
    OutDir(std::env::VarError),
    #[error("{DIR_VAR}={}: {source} (point it at a directory of components, or unset it)", dir.display())]
    NoDir { dir: PathBuf, source: io::Error },
    #[error("{DIR_VAR}={}: not a directory", dir.display())]
    NotADir { dir: PathBuf },
    #[error("{}: {source}", path.display())]
    Settings { path: PathBuf, source: Box<toml::de::Error> },
    #[error(
        "{}: line {line}: components.{name}.level = {level} is out of range (zstd levels are 1..=22)",
        path.display()
    )]
    LevelOutOfRange { path: PathBuf, line: usize, name: String, level: i32 },
    #[error(
        "{}: line {line}: components.{name}.compression = {value:?} is no compression (use {})",
        path.display(),
        crate::model::Compression::NAMES
    )]
    UnknownCompression { path: PathBuf, line: usize, name: String, value: String },
    #[error(
        "{}: {}components.{name} names no component: there is no {} (add it, or remove the table)",
        path.display(),
        line.map(|l| format!("line {l}: ")).unwrap_or_default(),
        missing.display()
    )]
    NoSuchComponent { path: PathBuf, line: Option<usize>, name: String, missing: PathBuf },
    #[error("{}: component names must be UTF-8", path.display())]
    NameNotUtf8 { path: PathBuf },
    #[error("{}: {why}", path.display())]
    BadName { path: PathBuf, why: String },
    #[error("{}: not executable (chmod +x it, or move it out of {DIR_VAR})", path.display())]
    NotExecutable { path: PathBuf },
    #[error(
        "{}: a directory component needs its entry point {} (the PyInstaller onedir layout)",
        dir.display(),
        entry.display()
    )]
    NoEntryPoint { dir: PathBuf, entry: PathBuf },
    #[error("{}: entry point is not a regular file", entry.display())]
    EntryNotAFile { entry: PathBuf },
    #[error(
        "{}: line {line}: components.{name}: a directory component cannot use runner = \"memfd\" (use \"cache\" or \"auto\")",
        path.display()
    )]
    DirWithMemfd { path: PathBuf, line: usize, name: String },
    #[error("{}: neither a regular file nor a directory", path.display())]
    NotFileOrDir { path: PathBuf },
    #[error("{}: {}: path is not UTF-8", dir.display(), path.display())]
    PathNotUtf8 { dir: PathBuf, path: PathBuf },
    #[error("{}: {}: link target is not UTF-8", dir.display(), path.display())]
    LinkNotUtf8 { dir: PathBuf, path: PathBuf },
    #[error("{}: {}: symlink to {target} leaves the component directory", dir.display(), path.display())]
    LinkLeaves { dir: PathBuf, path: PathBuf, target: String },
    #[error("{}: {}: unsupported file type", dir.display(), path.display())]
    Unsupported { dir: PathBuf, path: PathBuf },
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

/// Names the path an I/O error happened on: `.map_err(at(&path))`.
pub(crate) fn at(path: &std::path::Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_owned(), source }
}
