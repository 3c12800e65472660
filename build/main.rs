//! Embeds the components of `STIGMER_COMPONENTS_DIR` into the binary (the package's build
//! script, `build = "build/main.rs"`).
//!
//! Every top-level entry of the directory becomes a component: a regular executable is carried as
//! is, a directory `NAME/` (entry point `NAME/NAME`, the PyInstaller onedir layout) as a
//! deterministic tar stream with an index of its files. Payloads are hashed here, optionally
//! zstd-compressed, and concatenated page-aligned into `$OUT_DIR/payload.bin`, which the linker
//! pulls in with `.incbin` (no multi-megabyte Rust literal for rustc to chew on). The component
//! table becomes `$OUT_DIR/manifest.rs`. A bad directory fails the build with the path (and the
//! line, for components.toml).
//!
//! One job per module: settings (components.toml), scan (the directory), sniff (formats),
//! archive (tar, zstd, blob layout), codegen (manifest.rs and the assembly); error holds every
//! failure's message. The model the runtime reads back is src/embed/model.rs, compiled here too.

mod archive;
mod codegen;
mod error;
mod scan;
mod settings;
mod sniff;

#[path = "../src/embed/links.rs"]
mod links;
#[path = "../src/embed/model.rs"]
mod model;
#[path = "../src/names.rs"]
#[allow(dead_code)]
mod names;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use error::{Error, Result, at};

pub(crate) const DIR_VAR: &str = "STIGMER_COMPONENTS_DIR";

fn main() {
    println!("cargo::rerun-if-env-changed={DIR_VAR}");
    println!("cargo::rerun-if-changed=build");
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(Error::OutDir)?);
    let blob_path = out_dir.join("payload.bin");
    let mut blob = io::BufWriter::with_capacity(1 << 20, fs::File::create(&blob_path).map_err(at(&blob_path))?);
    let mut components = Vec::new();
    let mut settings_text = String::new();

    if let Some(dir) = std::env::var_os(DIR_VAR).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        println!("cargo::rerun-if-changed={}", dir.display());
        let meta = fs::metadata(&dir).map_err(|source| Error::NoDir { dir: dir.clone(), source })?;
        if !meta.is_dir() {
            return Err(Error::NotADir { dir });
        }
        let settings_path = dir.join(settings::SETTINGS_FILE);
        let settings = match fs::read_to_string(&settings_path) {
            Ok(text) => {
                let parsed = settings::parse(&settings_path, &text)?;
                settings_text = text;
                parsed
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => settings::Settings::default(),
            Err(e) => return Err(at(&settings_path)(e)),
        };
        components = scan::scan(&dir, &settings, &settings_path, &settings_text)?;
        archive::write_blob(&dir, &mut components, &mut blob, &blob_path)?;
    }
    blob.flush().map_err(at(&blob_path))?;
    drop(blob);

    let payload_len = fs::metadata(&blob_path).map_err(at(&blob_path))?.len();
    let manifest_text = codegen::manifest(&components, payload_len, &settings_text);
    // rustc tracks payload.s, not the file it .incbin's: naming the manifest's digest (every
    // payload's sha256 and place) in it makes an incremental build re-assemble changed payloads.
    let stamp = hex::encode(Sha256::digest(manifest_text.as_bytes()));
    let apple = std::env::var("CARGO_CFG_TARGET_VENDOR").as_deref() == Ok("apple");
    write_if_changed(&out_dir.join("manifest.rs"), &manifest_text)?;
    write_if_changed(
        &out_dir.join("payload.s"),
        &format!("/* payload {stamp} */\n{}", codegen::assembly(&blob_path, apple)),
    )?;
    Ok(())
}

/// Leaves unchanged files alone so their mtime does not trigger needless rebuilds.
fn write_if_changed(path: &Path, contents: &str) -> Result<()> {
    if fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    fs::write(path, contents).map_err(at(path))
}
