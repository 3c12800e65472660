//! The payload blob: every component's stored bytes, placed in a section of this executable by
//! `.incbin` (see build/codegen.rs), so the kernel maps them lazily and the memfd runner can splice them
//! straight from the file.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

core::arch::global_asm!(include_str!(concat!(env!("OUT_DIR"), "/payload.s")), options(raw));

unsafe extern "C" {
    /// First byte of the blob, defined by the assembly above.
    static stigmer_payload: u8;
}

pub(super) fn blob() -> &'static [u8] {
    // SAFETY: the assembly places PAYLOAD_LEN bytes (plus one guard byte) at the symbol, in a
    // read-only section that lives as long as the process.
    unsafe { std::slice::from_raw_parts(&raw const stigmer_payload, super::manifest::PAYLOAD_LEN) }
}

/// The offset in this executable's file at which `stored` begins, if it can be found.
pub(crate) fn blob_file_offset(stored: &'static [u8]) -> Option<u64> {
    crate::platform::file_offset_of(stored.as_ptr())
}

/// Hashes everything read through it, so a fill checks the bytes it writes as it writes them.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new() }
    }

    /// Reads to the end (a tar reader stops before trailing padding) and returns the hex digest.
    pub(crate) fn finish(mut self) -> io::Result<String> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
