//! What the build script (build/) embedded: the component table and each component's payload bytes.

mod archive;
mod links;
mod model;
mod payload;

pub(crate) use archive::{UnpackError, unpack};
#[allow(unused_imports)] // named only by the generated manifest, when it holds a directory
pub(crate) use model::Index;
pub(crate) use model::{Compression, Format, IndexEntry, Kind, RunnerSetting};
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
        self.compression.name()
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
