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
/// in it: an [`Index`] at run time, a `Vec` while the build collects it.
#[derive(Debug)]
pub(crate) enum Kind<I: 'static = Index> {
    File,
    Dir(I),
}

/// One path inside a directory component; `S` is `&'static str` at run time, `String` in the
/// build.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IndexEntry<S: 'static = &'static str> {
    Dir { path: S, mode: u32 },
    File { path: S, mode: u32, size: u64, sha256: S },
    Symlink { path: S, target: S },
}

impl<S: AsRef<str>> IndexEntry<S> {
    pub(crate) fn path(&self) -> &str {
        match self {
            IndexEntry::Dir { path, .. } | IndexEntry::File { path, .. } | IndexEntry::Symlink { path, .. } => {
                path.as_ref()
            }
        }
    }
}

/// Every path of a directory component as one string of NUL-terminated fields (`d MODE PATH`,
/// `f MODE SIZE SHA256 PATH`, `l PATH TARGET`), written by the build and parsed where it is used
/// (a fill, `verify`, a privileged start). A table of `&str`s would hold pointers, and each is a
/// relocation that every start of a position-independent stigmer pays before main, whatever it
/// runs: a site-packages tree of 8,700 files made 17,000 of them, ~100 copied-on-write pages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Index(pub(crate) &'static str);

impl Index {
    /// The index text of ENTRIES (the build's side).
    pub(crate) fn encode<S: AsRef<str>>(entries: &[IndexEntry<S>]) -> String {
        let mut text = String::new();
        let mut field = |f: &str| {
            text.push_str(f);
            text.push('\0');
        };
        for e in entries {
            match e {
                IndexEntry::Dir { path, mode } => {
                    field("d");
                    field(&mode.to_string());
                    field(path.as_ref());
                }
                IndexEntry::File { path, mode, size, sha256 } => {
                    field("f");
                    field(&mode.to_string());
                    field(&size.to_string());
                    field(sha256.as_ref());
                    field(path.as_ref());
                }
                IndexEntry::Symlink { path, target } => {
                    field("l");
                    field(path.as_ref());
                    field(target.as_ref());
                }
            }
        }
        text
    }

    /// The entries, in the order the build wrote them (the run time's side).
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
