//! The component model both sides of the build share: build/ (the build script) fills it from
//! STIGMER_COMPONENTS_DIR and writes it out as Rust source, the runtime (src/embed) reads it back.
//! Both compile this one file (`#[path]` in build/main.rs), and the generated manifest spells
//! each value with its `Debug` form, so a new variant is added here and nowhere else. Nothing
//! here may name the runtime crate (no `crate::`): the build script is another crate.

#![allow(dead_code)] // each side uses its own half; the generated manifest may be empty

/// What the build sniffed from the (entry point's) first bytes; drives the runner policy.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RunnerSetting {
    #[default]
    Auto,
    Memfd,
    Cache,
}

/// How a payload is stored in the binary; the zstd level is kept for `inspect` and dedup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Compression {
    None,
    Zstd(i32),
}

impl Compression {
    /// The names the `compression` key of components.toml accepts.
    pub(crate) const NAMES: &'static str = "\"none\" or \"zstd\"";

    /// The setting `name` with zstd level `level`, or None for a name no codec has.
    pub(crate) fn from_setting(name: &str, level: i32) -> Option<Compression> {
        match name {
            "none" => Some(Compression::None),
            "zstd" => Some(Compression::Zstd(level)),
            _ => None,
        }
    }

    /// The name components.toml and `inspect` use.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd(_) => "zstd",
        }
    }
}

/// A single file, or a directory tree carried as a tar stream whose index (`I`) lists every path
/// in it: `&'static [IndexEntry]` at run time, a `Vec` while the build collects it.
#[derive(Debug)]
pub(crate) enum Kind<I: 'static = &'static [IndexEntry]> {
    File,
    Dir(I),
}

/// One path inside a directory component; `S` is `&'static str` at run time, `String` in the
/// build.
#[derive(Debug)]
pub(crate) enum IndexEntry<S: 'static = &'static str> {
    Dir { path: S, mode: u32 },
    File { path: S, mode: u32, size: u64, sha256: S },
    Symlink { path: S, target: S },
}
