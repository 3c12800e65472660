//! What build.rs embedded: the component table and each component's payload bytes.

mod archive;
mod links;
mod payload;

pub(crate) use archive::{UnpackError, unpack};
pub(crate) use payload::{HashingReader, blob_file_offset};

use std::io::{self, Read};

pub(crate) use manifest::COMPONENTS_TOML;

mod manifest {
    use super::*;
    include!(concat!(env!("OUT_DIR"), "/manifest.rs"));
}

/// An executable embedded at build time.
#[derive(Debug)]
pub(crate) struct Component {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) format: Format,
    pub(crate) runner: RunnerSetting,
    pub(crate) compression: Compression,
    pub(crate) version: Option<&'static str>,
    /// Size of the raw content: the file, or the tar stream of a directory.
    pub(crate) size: u64,
    /// Size in the binary, after compression.
    pub(crate) stored_size: u64,
    /// Where the stored bytes start within the payload blob.
    pub(crate) offset: u64,
    /// sha256 of the raw content, lowercase hex; also the cache entry's name.
    pub(crate) sha256: &'static str,
}

#[allow(dead_code)] // variants are built by the generated manifest, which may be empty
#[derive(Debug)]
pub(crate) enum Kind {
    File,
    /// A directory tree, carried as a tar stream; the index lists every path in it.
    Dir(Index),
}

/// Every path of a directory component, as build.rs wrote it: one string of NUL-terminated
/// fields (`d MODE PATH`, `f MODE SIZE SHA256 PATH`, `l PATH TARGET`), parsed where it is used
/// (a fill, `verify`, a privileged start). A table of `&str`s would hold pointers, and each is a
/// relocation that every start of a position-independent stigmer pays before main, whatever it
/// runs: a site-packages tree of 8,700 files made 17,000 of them, ~100 copied-on-write pages.
#[allow(dead_code)] // built by the generated manifest, which may hold no directory
#[derive(Debug, Clone, Copy)]
pub(crate) struct Index(pub(crate) &'static str);

impl Index {
    pub(crate) fn entries(self) -> impl Iterator<Item = IndexEntry> {
        let mut fields = self.0.split('\0');
        std::iter::from_fn(move || {
            let mut next = || fields.next();
            Some(match next()? {
                "d" => IndexEntry::Dir { mode: next()?.parse().ok()?, path: next()? },
                "f" => IndexEntry::File {
                    mode: next()?.parse().ok()?,
                    size: next()?.parse().ok()?,
                    sha256: next()?,
                    path: next()?,
                },
                "l" => IndexEntry::Symlink { path: next()?, target: next()? },
                _ => return None,
            })
        })
    }
}

#[allow(dead_code)] // a directory's mode is carried by the tar stream; the index keeps it for reference
#[derive(Debug, Clone, Copy)]
pub(crate) enum IndexEntry {
    Dir { path: &'static str, mode: u32 },
    File { path: &'static str, mode: u32, size: u64, sha256: &'static str },
    Symlink { path: &'static str, target: &'static str },
}

impl IndexEntry {
    pub(crate) fn path(&self) -> &'static str {
        match self {
            IndexEntry::Dir { path, .. } | IndexEntry::File { path, .. } | IndexEntry::Symlink { path, .. } => path,
        }
    }
}

/// What the build sniffed from the (entry point's) first bytes; drives the runner policy.
#[allow(dead_code)] // variants are built by the generated manifest, which may be empty
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Elf,
    /// An ELF Go program that links os.Executable: routed to the cache (it looks for its own file).
    GoOsExecutable,
    Script,
    /// Carries the PyInstaller archive cookie: cannot run from a memfd.
    PyInstaller,
    Other,
}

/// The `runner` key of components.toml.
#[allow(dead_code)] // variants are built by the generated manifest, which may be empty
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunnerSetting {
    Auto,
    Memfd,
    Cache,
}

#[allow(dead_code)] // variants are built by the generated manifest, which may be empty
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Zstd(i32),
}

impl Component {
    /// The stored bytes, as linked into this executable.
    pub(crate) fn stored(&self) -> &'static [u8] {
        let start = self.offset as usize;
        &payload::blob()[start..start + self.stored_size as usize]
    }

    /// A reader of the raw content (decompressing if needed).
    pub(crate) fn reader(&self) -> io::Result<Box<dyn Read>> {
        Ok(match self.compression {
            Compression::None => Box::new(self.stored()),
            Compression::Zstd(_) => Box::new(zstd::stream::read::Decoder::with_buffer(self.stored())?),
        })
    }

    /// Hashes the raw content against the sha256 recorded at build time.
    pub(crate) fn verify_payload(&self) -> Result<(), String> {
        match self.reader().and_then(|r| HashingReader::new(r).finish()) {
            Ok(got) if got == self.sha256 => Ok(()),
            Ok(got) => Err(format!("sha256 {got}, expected {}", self.sha256)),
            Err(e) => Err(e.to_string()),
        }
    }

    pub(crate) fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::File => "file",
            Kind::Dir(_) => "dir",
        }
    }

    pub(crate) fn compression_name(&self) -> &'static str {
        match self.compression {
            Compression::None => "none",
            Compression::Zstd(_) => "zstd",
        }
    }
}

/// Every embedded component, sorted by name.
pub(crate) fn components() -> &'static [Component] {
    manifest::COMPONENTS
}

pub(crate) fn find(name: &str) -> Option<&'static Component> {
    components().iter().find(|c| c.name == name)
}

/// A stable id of this exact stigmer build: the GNU build-id of our own image (hex), or, where
/// there is none, the version and a digest of every embedded payload's sha256.
pub(crate) fn build_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| match crate::platform::gnu_build_id() {
        Some(id) if !id.is_empty() => hex::encode(id),
        _ => {
            use sha2::Digest as _;
            let mut h = sha2::Sha256::new();
            for c in components() {
                h.update(c.name.as_bytes());
                h.update(c.sha256.as_bytes());
            }
            format!("{}-{}", env!("CARGO_PKG_VERSION"), &hex::encode(h.finalize())[..16])
        }
    })
}

/// Names of all components, for messages that list them.
pub(crate) fn names() -> String {
    let names: Vec<&str> = components().iter().map(|c| c.name).collect();
    if names.is_empty() {
        "none: this stigmer was built without STIGMER_COMPONENTS_DIR".to_owned()
    } else {
        names.join(", ")
    }
}
