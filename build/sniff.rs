//! Format sniffing: what kind of program a payload is (ELF, a Go program that looks for its own
//! file, a script, a PyInstaller binary), found in the same pass that hashes it.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::model::Format;

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

/// A file's size, sha256 (hex) and format.
pub(crate) struct Sniffed {
    pub(crate) size: u64,
    pub(crate) sha256: String,
    pub(crate) format: Format,
}

/// Hashes a file and sniffs its format in one pass.
pub(crate) fn hash_file(path: &Path) -> io::Result<Sniffed> {
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
    Ok(Sniffed { size, sha256: hex::encode(hasher.finalize()), format })
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
