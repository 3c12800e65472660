//! Embeds the components of `STIGMER_COMPONENTS_DIR` into the binary.
//!
//! Every top-level entry of the directory becomes a component: a regular executable is carried as
//! is, a directory `NAME/` (entry point `NAME/NAME`, the PyInstaller onedir layout) as a
//! deterministic tar stream with an index of its files. Payloads are hashed here, optionally
//! zstd-compressed, and concatenated page-aligned into `$OUT_DIR/payload.bin`, which the linker
//! pulls in with `.incbin` (no multi-megabyte Rust literal for rustc to chew on). The component
//! table becomes `$OUT_DIR/manifest.rs`. A bad directory fails the build with the path (and the
//! line, for components.toml).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[path = "src/embed/links.rs"]
mod links;
#[path = "src/names.rs"]
#[allow(dead_code)]
mod names;
use links::link_stays_inside;
use sha2::{Digest, Sha256};

const DIR_VAR: &str = "STIGMER_COMPONENTS_DIR";
const SETTINGS_FILE: &str = "components.toml";
/// Payloads start on page boundaries so the runtime may map or splice them.
const ALIGN: u64 = 4096;
/// PyInstaller's archive cookie: such a binary cannot run from a memfd (see DESIGN.md).
const PYINSTALLER_COOKIE: &[u8] = b"MEI\x0c\x0b\x0a\x0b\x0e";
/// The magic of a Go binary's build information (`.go.buildinfo`), present in every Go
/// executable since Go 1.13, stripped or not.
const GO_BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
/// `os.Executable` (and its Linux implementation) as Go's function name table stores it: the
/// names are NUL-terminated and packed, so the NULs on both sides rule out a mere mention in a
/// string constant. A program linking it looks for its own file, which a memfd does not have.
const GO_OS_EXECUTABLE: &[u8] = b"\0os.Executable\0";
const GO_OS_EXECUTABLE_IMPL: &[u8] = b"\0os.executable\0";
/// Default zstd level for directory components; single files default to no compression
/// so the memfd runner can splice them straight from the executable.
const DEFAULT_DIR_LEVEL: i32 = 3;

fn main() {
    println!("cargo::rerun-if-env-changed={DIR_VAR}");
    println!("cargo::rerun-if-changed=build.rs");
    // The contract's plain `cargo build --release` cannot link static-pie (the flag would reach
    // the proc-macros), so on glibc it links the executable non-PIE: no self-relocation on
    // every component start (docs/BENCHMARKS.md, section 10). crt-static builds (the Makefile's
    // static-pie release) keep their ASLR.
    let cfg = |key: &str| std::env::var(key).unwrap_or_default();
    if cfg("CARGO_CFG_TARGET_OS") == "linux"
        && cfg("CARGO_CFG_TARGET_ENV") == "gnu"
        && !cfg("CARGO_CFG_TARGET_FEATURE").split(',').any(|f| f == "crt-static")
    {
        println!("cargo::rustc-link-arg-bins=-no-pie");
    }
    if let Err(message) = run() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

type Result<T> = std::result::Result<T, String>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    components: BTreeMap<String, ComponentSettings>,
    /// Service definitions for `stigmer server`; parsed at run time from the embedded text.
    #[serde(default)]
    #[allow(dead_code)]
    services: Option<toml::Table>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct ComponentSettings {
    version: Option<String>,
    #[serde(default)]
    runner: RunnerSetting,
    compression: Option<Compression>,
    level: Option<toml::Spanned<i32>>,
}

#[derive(Deserialize, Default, Clone, Copy, Debug)]
#[serde(rename_all = "lowercase")]
enum RunnerSetting {
    #[default]
    Auto,
    Memfd,
    Cache,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
enum Compression {
    None,
    Zstd,
}

#[derive(Debug)]
enum Format {
    Elf,
    GoOsExecutable,
    Script,
    PyInstaller,
    Other,
}

enum Kind {
    File,
    /// The index and the packed tar stream (kept so it is packed once).
    Dir(Vec<IndexEntry>, Vec<u8>),
}

/// One path inside a directory component, as written to the manifest.
enum IndexEntry {
    Dir { path: String, mode: u32 },
    File { path: String, mode: u32, size: u64, sha256: String },
    Symlink { path: String, target: String },
}

struct Component {
    name: String,
    kind: Kind,
    format: Format,
    settings: ComponentSettings,
    compression: Compression,
    level: i32,
    size: u64,
    sha256: String,
    offset: u64,
    stored_size: u64,
}

fn run() -> Result<()> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let blob_path = out_dir.join("payload.bin");
    let mut blob = io::BufWriter::with_capacity(
        1 << 20,
        fs::File::create(&blob_path).map_err(|e| format!("{}: {e}", blob_path.display()))?,
    );
    let mut components = Vec::new();
    let mut settings_text = String::new();

    if let Some(dir) = std::env::var_os(DIR_VAR).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        println!("cargo::rerun-if-changed={}", dir.display());
        let meta = fs::metadata(&dir).map_err(|e| {
            format!("{DIR_VAR}={}: {e} (point it at a directory of components, or unset it)", dir.display())
        })?;
        if !meta.is_dir() {
            return Err(format!("{DIR_VAR}={}: not a directory", dir.display()));
        }
        let settings_path = dir.join(SETTINGS_FILE);
        let settings = match fs::read_to_string(&settings_path) {
            Ok(text) => {
                let parsed = parse_settings(&settings_path, &text)?;
                settings_text = text;
                parsed
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Settings::default(),
            Err(e) => return Err(format!("{}: {e}", settings_path.display())),
        };
        components = scan(&dir, &settings, &settings_path, &settings_text)?;
        let mut written: HashMap<(String, Compression, i32), (u64, u64)> = HashMap::new();
        let mut offset = 0u64;
        for c in &mut components {
            let source = dir.join(&c.name);
            let key = (c.sha256.clone(), c.compression, c.level);
            if let Some(&(at, stored)) = written.get(&key) {
                (c.offset, c.stored_size) = (at, stored);
                continue;
            }
            let pad = offset.next_multiple_of(ALIGN) - offset;
            blob.write_all(&vec![0; pad as usize]).map_err(|e| format!("{}: {e}", blob_path.display()))?;
            offset += pad;
            let stored = store(c, &source, &mut blob).map_err(|e| format!("{}: {e}", source.display()))?;
            (c.offset, c.stored_size) = (offset, stored);
            written.insert(key, (offset, stored));
            offset += stored;
        }
    }
    blob.flush().map_err(|e| format!("{}: {e}", blob_path.display()))?;
    drop(blob);

    let payload_len = fs::metadata(&blob_path).map_err(|e| e.to_string())?.len();
    let manifest_text = manifest(&components, payload_len, &settings_text);
    // rustc tracks payload.s, not the file it .incbin's: naming the manifest's digest (every
    // payload's sha256 and place) in it makes an incremental build re-assemble changed payloads.
    let stamp = hex::encode(Sha256::digest(manifest_text.as_bytes()));
    write_if_changed(&out_dir.join("manifest.rs"), &manifest_text)?;
    write_if_changed(&out_dir.join("payload.s"), &format!("/* payload {stamp} */\n{}", assembly(&blob_path)))?;
    Ok(())
}

fn parse_settings(path: &Path, text: &str) -> Result<Settings> {
    let settings: Settings = toml::from_str(text).map_err(|e| format!("{}: {e}", path.display()))?;
    for (name, c) in &settings.components {
        if let Some(level) = &c.level
            && !(1..=22).contains(level.get_ref())
        {
            let line = text[..level.span().start].lines().count();
            return Err(format!(
                "{}: line {line}: components.{name}.level = {} is out of range (zstd levels are 1..=22)",
                path.display(),
                level.get_ref()
            ));
        }
    }
    Ok(settings)
}

/// Lists DIR's components, validates them, and hashes each payload.
fn scan(dir: &Path, settings: &Settings, settings_path: &Path, settings_text: &str) -> Result<Vec<Component>> {
    let mut names: Vec<String> = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| format!("{}: component names must be UTF-8", dir.join(n).display()))?;
        if name.starts_with('.') || name == SETTINGS_FILE {
            continue;
        }
        names.push(name);
    }
    names.sort();
    for name in settings.components.keys() {
        if !names.contains(name) {
            let line = line_of(settings_text, &format!("[components.{name}]"))
                .or_else(|| line_of(settings_text, name))
                .map(|l| format!("line {l}: "))
                .unwrap_or_default();
            return Err(format!(
                "{}: {line}components.{name} names no component: there is no {} (add it, or remove the table)",
                settings_path.display(),
                dir.join(name).display()
            ));
        }
    }

    let mut out = Vec::new();
    for name in names {
        let path = dir.join(&name);
        check_name(&name).map_err(|why| format!("{}: {why}", path.display()))?;
        let meta = fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let settings = settings.components.get(&name).cloned().unwrap_or_default();
        let (kind, format, size, sha256) = if meta.is_file() {
            check_executable(&path, &meta)?;
            let (size, sha256, format) = hash_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            (Kind::File, format, size, sha256)
        } else if meta.is_dir() {
            let entry_point = path.join(&name);
            let entry_meta = fs::metadata(&entry_point).map_err(|_| {
                format!(
                    "{}: a directory component needs its entry point {} (the PyInstaller onedir layout)",
                    path.display(),
                    entry_point.display()
                )
            })?;
            if !entry_meta.is_file() {
                return Err(format!("{}: entry point is not a regular file", entry_point.display()));
            }
            check_executable(&entry_point, &entry_meta)?;
            let (_, _, format) = hash_file(&entry_point).map_err(|e| format!("{}: {e}", entry_point.display()))?;
            if matches!(settings.runner, RunnerSetting::Memfd) {
                let line = line_of(settings_text, &format!("[components.{name}]")).unwrap_or(0);
                return Err(format!(
                    "{}: line {line}: components.{name}: a directory component cannot use runner = \"memfd\" (use \"cache\" or \"auto\")",
                    settings_path.display()
                ));
            }
            let (index, tar) = pack_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let sha256 = hex::encode(Sha256::digest(&tar));
            let size = tar.len() as u64;
            (Kind::Dir(index, tar), format, size, sha256)
        } else {
            return Err(format!("{}: neither a regular file nor a directory", path.display()));
        };
        let compression = settings.compression.unwrap_or(match kind {
            Kind::File => Compression::None,
            Kind::Dir(..) => Compression::Zstd,
        });
        let level = settings.level.as_ref().map(|l| *l.get_ref()).unwrap_or(DEFAULT_DIR_LEVEL);
        out.push(Component {
            name,
            kind,
            format,
            settings,
            compression,
            level,
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
        return Err(format!("{}: not executable (chmod +x it, or move it out of {DIR_VAR})", path.display()));
    }
    Ok(())
}

fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// Hashes a file and sniffs its format in one pass.
fn hash_file(path: &Path) -> io::Result<(u64, String, Format)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    let mut needles = [
        Needle::new(PYINSTALLER_COOKIE),
        Needle::new(GO_BUILDINFO_MAGIC),
        Needle::new(GO_OS_EXECUTABLE),
        Needle::new(GO_OS_EXECUTABLE_IMPL),
    ];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        if head.len() < 4 {
            head.extend_from_slice(&chunk[..chunk.len().min(4 - head.len())]);
        }
        for needle in &mut needles {
            needle.scan(chunk);
        }
        size += n as u64;
    }
    let [pyinstaller, go, os_executable, os_executable_impl] = needles.map(|n| n.found);
    let format = if pyinstaller {
        Format::PyInstaller
    } else if head.starts_with(b"\x7fELF") {
        // A Go binary (its buildinfo) whose function table names os.Executable: Go keeps every
        // linked function's name there, NUL-separated, even when the binary is stripped.
        if go && (os_executable || os_executable_impl) { Format::GoOsExecutable } else { Format::Elf }
    } else if head.starts_with(b"#!") {
        Format::Script
    } else {
        Format::Other
    };
    Ok((size, hex::encode(hasher.finalize()), format))
}

/// A byte string searched for in a stream of chunks, found across chunk boundaries too.
struct Needle {
    pattern: &'static [u8],
    /// The previous chunk's last `pattern.len() - 1` bytes.
    tail: Vec<u8>,
    found: bool,
}

impl Needle {
    fn new(pattern: &'static [u8]) -> Needle {
        Needle { pattern, tail: Vec::new(), found: false }
    }

    fn scan(&mut self, chunk: &[u8]) {
        if self.found {
            return;
        }
        let keep = self.pattern.len() - 1;
        self.tail.extend_from_slice(&chunk[..chunk.len().min(keep)]);
        self.found = contains(&self.tail, self.pattern) || contains(chunk, self.pattern);
        if chunk.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            let drop = self.tail.len().saturating_sub(keep);
            self.tail.drain(..drop);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Packs a directory as a reproducible tar stream (sorted, zero times and owners) and indexes it.
fn pack_dir(root: &Path) -> io::Result<(Vec<IndexEntry>, Vec<u8>)> {
    let mut index = Vec::new();
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    let mut paths = Vec::new();
    while let Some(rel) = stack.pop() {
        let mut children: Vec<_> = fs::read_dir(root.join(&rel))?.collect::<io::Result<_>>()?;
        children.sort_by_key(|e| e.file_name());
        for child in children.into_iter().rev() {
            let rel = rel.join(child.file_name());
            if child.file_type()?.is_dir() {
                stack.push(rel.clone());
            }
            paths.push(rel);
        }
    }
    paths.sort();
    for rel in paths {
        let full = root.join(&rel);
        let meta = fs::symlink_metadata(&full)?;
        let path =
            rel.to_str().ok_or_else(|| io::Error::other(format!("{}: path is not UTF-8", full.display())))?.to_owned();
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
            let target = fs::read_link(&full)?;
            let target_str = target
                .to_str()
                .ok_or_else(|| io::Error::other(format!("{}: link target is not UTF-8", full.display())))?;
            if !link_stays_inside(&rel, &target) {
                return Err(io::Error::other(format!(
                    "{}: symlink to {target_str} leaves the component directory",
                    full.display()
                )));
            }
            builder.append_link(&mut header, &rel, &target)?;
            index.push(IndexEntry::Symlink { path, target: target_str.to_owned() });
        } else if meta.is_dir() {
            builder.append_data(&mut header, &rel, io::empty())?;
            index.push(IndexEntry::Dir { path, mode });
        } else if meta.is_file() {
            let data = fs::read(&full)?;
            builder.append_data(&mut header, &rel, data.as_slice())?;
            let sha256 = hex::encode(Sha256::digest(&data));
            index.push(IndexEntry::File { path, mode, size: meta.len(), sha256 });
        } else {
            return Err(io::Error::other(format!("{}: unsupported file type", full.display())));
        }
    }
    Ok((index, builder.into_inner()?))
}

/// Writes one payload to the blob, compressed as configured; returns the stored size.
fn store(c: &Component, source: &Path, blob: &mut impl Write) -> io::Result<u64> {
    let raw: Box<dyn Read> = match &c.kind {
        Kind::File => Box::new(fs::File::open(source)?),
        Kind::Dir(_, tar) => Box::new(tar.as_slice()),
    };
    let mut counter = CountingWriter { inner: blob, count: 0 };
    match c.compression {
        Compression::None => {
            io::copy(&mut io::BufReader::with_capacity(1 << 20, raw), &mut counter)?;
        }
        Compression::Zstd => {
            let mut encoder = zstd::stream::Encoder::new(&mut counter, c.level)?;
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

fn manifest(components: &[Component], payload_len: u64, settings_text: &str) -> String {
    let mut s = String::from("// @generated by build.rs from STIGMER_COMPONENTS_DIR\n");
    let _ = writeln!(s, "pub(crate) const PAYLOAD_LEN: usize = {payload_len};");
    let _ = writeln!(s, "pub(crate) static COMPONENTS_TOML: &str = {settings_text:?};");
    s.push_str("pub(crate) static COMPONENTS: &[Component] = &[\n");
    for c in components {
        let kind = match &c.kind {
            Kind::File => "Kind::File".to_owned(),
            Kind::Dir(index, _) => {
                // One string of NUL-terminated fields, no pointer per path (src/embed/mod.rs, Index).
                let mut text = String::new();
                for e in index {
                    let _ = match e {
                        IndexEntry::Dir { path, mode } => write!(text, "d\0{mode}\0{path}\0"),
                        IndexEntry::File { path, mode, size, sha256 } => {
                            write!(text, "f\0{mode}\0{size}\0{sha256}\0{path}\0")
                        }
                        IndexEntry::Symlink { path, target } => write!(text, "l\0{path}\0{target}\0"),
                    };
                }
                // NUL as \x00: `\0` followed by a digit reads as an octal escape (clippy).
                let literal: String = text
                    .chars()
                    .map(|c| if c == '\0' { "\\x00".to_owned() } else { c.escape_debug().to_string() })
                    .collect();
                format!("Kind::Dir(Index(\"{literal}\"))")
            }
        };
        let version = match &c.settings.version {
            Some(v) => format!("Some({v:?})"),
            None => "None".to_owned(),
        };
        let compression = match c.compression {
            Compression::None => "Compression::None".to_owned(),
            Compression::Zstd => format!("Compression::Zstd({})", c.level),
        };
        let _ = writeln!(
            s,
            "  Component {{ name: {:?}, kind: {kind}, format: Format::{:?}, runner: RunnerSetting::{:?}, \
             compression: {compression}, version: {version}, size: {}, stored_size: {}, offset: {}, sha256: {:?} }},",
            c.name, c.format, c.settings.runner, c.size, c.stored_size, c.offset, c.sha256
        );
    }
    s.push_str("];\n");
    s
}

/// The assembly that places the blob in its own read-only section.
fn assembly(blob: &Path) -> String {
    let path = blob.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
    if std::env::var("CARGO_CFG_TARGET_VENDOR").as_deref() == Ok("apple") {
        format!(
            ".pushsection __DATA,__stigmer_blob\n.p2align 14\n.globl _stigmer_payload\n.private_extern _stigmer_payload\n\
             _stigmer_payload:\n.incbin \"{path}\"\n.byte 0\n.popsection\n"
        )
    } else {
        format!(
            ".pushsection .stigmer_payload,\"a\",@progbits\n.balign 4096\n.globl stigmer_payload\n.hidden stigmer_payload\n\
             stigmer_payload:\n.incbin \"{path}\"\n.byte 0\n.popsection\n"
        )
    }
}

/// Leaves unchanged files alone so their mtime does not trigger needless rebuilds.
fn write_if_changed(path: &Path, contents: &str) -> Result<()> {
    if fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))
}
