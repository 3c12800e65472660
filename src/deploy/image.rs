//! `stigmer image OUT`: this very binary as an OCI image, written without a daemon: an OCI image
//! layout directory (OUT/oci: oci-layout, index.json, blobs/sha256/...) and one archive of it
//! (OUT/stigmer.tar) that `podman load` and `docker load` (25+) take, carrying a Docker
//! `manifest.json` beside the layout as `docker save` does.
//!
//! One uncompressed layer, no base distribution (the release binary is static-pie):
//! - /usr/local/bin/stigmer, and a symlink per component name beside it (PATH is that dir);
//! - /etc/passwd and /etc/group naming root and the image's user, 65532 (distroless's nonroot);
//! - /usr/lib/stigmer/cache/<sha256>/NAME: every component a start would run from the cache
//!   (directory and PyInstaller components) unpacked read-only, the system cache that
//!   src/run/system.rs trusts on a read-only root instead of unpacking into a home;
//! - /var/lib/stigmer, owned 65532:0 and group-writable: where `stigmer deploy` mounts a
//!   service's volume, so a fresh volume takes its owner, and an arbitrary uid in group 0 writes.
//!
//! Reproducible: entries sorted, owners root (or 65532) with no names, fixed modes, every mtime
//! and the config's `created` from SOURCE_DATE_EPOCH, no xattrs, no compression; the JSON
//! documents are serde_json with sorted keys. Two runs over the same binary give the same bytes.
//!
//! The documents are written with serde_json rather than the `oci-spec` crate: three small
//! documents whose fields the image-spec fixes, against a crate that brings builder and getter
//! derive macros for every type of the spec.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component as PathPart, Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::IMAGE_UID;
use crate::embed::{self, Kind};
use crate::run::{Overrides, Runner, SYSTEM_CACHE, choose};

pub(crate) const BIN_DIR: &str = "usr/local/bin";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// What the labels say; `created` is SOURCE_DATE_EPOCH.
pub(crate) struct Meta {
    pub(crate) tag: String,
    pub(crate) source: String,
    pub(crate) revision: String,
    pub(crate) epoch: u64,
}

/// What was written, for the applet to print.
pub(crate) struct Built {
    pub(crate) digest: String,
    pub(crate) layer_size: u64,
    pub(crate) layout: PathBuf,
    pub(crate) archive: PathBuf,
    pub(crate) unpacked: Vec<&'static str>,
    /// The build machine's shared libraries added for them (the C library and its loader).
    pub(crate) libraries: Vec<String>,
}

/// One layer entry, before it is written.
enum Node {
    Dir { mode: u32, uid: u32 },
    File { mode: u32, data: Vec<u8> },
    Link { target: String },
}

pub(crate) fn build(out: &Path, meta: &Meta) -> anyhow::Result<Built> {
    let exe = fs::read("/proc/self/exe").context("reading this stigmer binary (/proc/self/exe)")?;
    let mut tree: BTreeMap<String, Node> = BTreeMap::new();
    let dirs = |tree: &mut BTreeMap<String, Node>, path: &str| {
        let mut at = String::new();
        for part in path.split('/') {
            at = if at.is_empty() { part.to_owned() } else { format!("{at}/{part}") };
            tree.entry(at.clone()).or_insert(Node::Dir { mode: 0o755, uid: 0 });
        }
    };
    dirs(&mut tree, BIN_DIR);
    tree.insert(format!("{BIN_DIR}/stigmer"), Node::File { mode: 0o755, data: exe });
    for c in embed::components() {
        tree.insert(format!("{BIN_DIR}/{}", c.name), Node::Link { target: "stigmer".into() });
    }
    dirs(&mut tree, "etc");
    let passwd =
        format!("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{IMAGE_UID}:{IMAGE_UID}:nonroot:/:/sbin/nologin\n");
    let group = format!("root:x:0:\nnonroot:x:{IMAGE_UID}:\n");
    tree.insert("etc/passwd".into(), Node::File { mode: 0o644, data: passwd.into_bytes() });
    tree.insert("etc/group".into(), Node::File { mode: 0o644, data: group.into_bytes() });
    dirs(&mut tree, "var/lib");
    tree.insert("var/lib/stigmer".into(), Node::Dir { mode: 0o775, uid: IMAGE_UID });

    let cache = SYSTEM_CACHE.trim_start_matches('/');
    let mut unpacked = Vec::new();
    let mut libraries = std::collections::BTreeSet::new();
    for c in embed::components() {
        if choose(c, Overrides::default()).runner != Runner::Cache {
            continue;
        }
        c.verify_payload().map_err(|why| anyhow::anyhow!("the embedded {}: {why}; this binary is damaged", c.name))?;
        let entry = format!("{cache}/{}", c.sha256);
        dirs(&mut tree, &entry);
        // Read-only, as the per-user cache keeps them.
        let item = format!("{entry}/{}", c.name);
        match c.kind {
            Kind::File => {
                let mut data = Vec::new();
                c.reader()?.read_to_end(&mut data)?;
                tree.insert(item, Node::File { mode: 0o555, data });
            }
            Kind::Dir(_) => {
                tree.insert(item.clone(), Node::Dir { mode: 0o555, uid: 0 });
                add_tree(&mut tree, &item, c.reader()?).with_context(|| format!("unpacking {}", c.name))?;
            }
        }
        for lib in host_libraries(c, out)? {
            let rel = lib.trim_start_matches('/').to_owned();
            if let Some(parent) = rel.rsplit_once('/').map(|(p, _)| p) {
                dirs(&mut tree, parent);
            }
            let data = fs::read(&lib).with_context(|| format!("reading {lib}, which {} needs", c.name))?;
            tree.entry(rel).or_insert(Node::File { mode: 0o755, data });
            libraries.insert(lib);
        }
        unpacked.push(c.name);
    }
    // The system cache's directories are read-only too: nothing is added there at run time.
    for (path, node) in &mut tree {
        if path.starts_with(cache)
            && path.len() > cache.len()
            && let Node::Dir { mode, .. } = node
        {
            *mode = 0o555;
        }
    }

    let layer = layer(&tree, meta.epoch)?;
    let layer_digest = sha256(&layer);
    let created = humantime::format_rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(meta.epoch));
    let version = env!("CARGO_PKG_VERSION");
    let license = option_env!("CARGO_PKG_LICENSE").filter(|l| !l.is_empty()).unwrap_or("NOASSERTION");
    let labels = json!({
        "org.opencontainers.image.created": created.to_string(),
        "org.opencontainers.image.licenses": license,
        "org.opencontainers.image.revision": meta.revision,
        "org.opencontainers.image.source": meta.source,
        "org.opencontainers.image.title": "stigmer",
        "org.opencontainers.image.version": version,
    });
    let config = json!({
        "architecture": arch(),
        "os": "linux",
        "created": created.to_string(),
        "config": {
            "User": format!("{IMAGE_UID}"),
            "Entrypoint": [format!("/{BIN_DIR}/stigmer")],
            "Env": [format!("PATH=/{BIN_DIR}")],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [{ "created": created.to_string(), "created_by": format!("stigmer image ({version})") }],
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = sha256(&config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": format!("sha256:{config_digest}"), "size": config.len() },
        "layers": [{ "mediaType": MEDIA_LAYER, "digest": format!("sha256:{layer_digest}"), "size": layer.len() }],
        "annotations": labels,
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = sha256(&manifest);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "platform": { "architecture": arch(), "os": "linux" },
            "annotations": { "io.containerd.image.name": meta.tag, "org.opencontainers.image.ref.name": meta.tag },
        }],
    });
    let index = serde_json::to_vec(&index)?;
    let docker = json!([{
        "Config": format!("blobs/sha256/{config_digest}"),
        "RepoTags": [meta.tag],
        "Layers": [format!("blobs/sha256/{layer_digest}")],
    }]);
    let docker = serde_json::to_vec(&docker)?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();

    // The layout directory and the archive hold the same files.
    let mut files: BTreeMap<String, &[u8]> = BTreeMap::new();
    files.insert("oci-layout".into(), &layout);
    files.insert("index.json".into(), &index);
    files.insert("manifest.json".into(), &docker);
    files.insert(format!("blobs/sha256/{layer_digest}"), &layer);
    files.insert(format!("blobs/sha256/{config_digest}"), &config);
    files.insert(format!("blobs/sha256/{manifest_digest}"), &manifest);

    let layout_dir = out.join("oci");
    if layout_dir.exists() {
        fs::remove_dir_all(&layout_dir).with_context(|| format!("removing the old {}", layout_dir.display()))?;
    }
    for (name, data) in &files {
        let path = layout_dir.join(name);
        fs::create_dir_all(path.parent().expect("under the layout"))
            .with_context(|| format!("creating {}", layout_dir.display()))?;
        fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    }
    let archive = out.join("stigmer.tar");
    let tmp = out.join(".stigmer.tar.tmp");
    let mut tar = tar::Builder::new(io::BufWriter::new(
        fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    ));
    for dir in ["blobs", "blobs/sha256"] {
        tar.append_data(&mut header(tar::EntryType::Directory, 0o755, 0, 0, meta.epoch), dir, io::empty())?;
    }
    for (name, data) in &files {
        let mut h = header(tar::EntryType::Regular, 0o644, 0, data.len() as u64, meta.epoch);
        tar.append_data(&mut h, name, *data)?;
    }
    tar.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    fs::rename(&tmp, &archive).with_context(|| format!("writing {}", archive.display()))?;
    Ok(Built {
        digest: format!("sha256:{manifest_digest}"),
        layer_size: layer.len() as u64,
        layout: layout_dir,
        archive,
        unpacked,
        libraries: libraries.into_iter().collect(),
    })
}

/// The shared libraries of the build machine that C's unpacked copy needs and does not carry
/// (a PyInstaller build leaves out the C library and its loader by design), found by `ldd`
/// over every file of the copy unpacked into OUT/.unpack (the payload's hash checked first; ldd
/// may run the loader on them, so only this binary's own components ever meet it). A
/// statically linked component needs none.
fn host_libraries(c: &'static embed::Component, out: &Path) -> anyhow::Result<Vec<String>> {
    let work = out.join(".unpack");
    if work.exists() {
        remove_tree(&work)?;
    }
    let dest = work.join(c.name);
    let mut files = Vec::new();
    match c.kind {
        Kind::File => {
            fs::create_dir_all(&work)?;
            let mut data = Vec::new();
            c.reader()?.read_to_end(&mut data)?;
            fs::write(&dest, data)?;
            files.push(dest.clone());
        }
        Kind::Dir(_) => {
            fs::create_dir_all(&dest)?;
            embed::unpack(c.reader()?, &dest)?;
            walk(&dest, &mut files)?;
        }
    }
    let carried: std::collections::BTreeSet<_> = files.iter().filter_map(|f| f.file_name()).collect();
    let mut libs = std::collections::BTreeSet::new();
    for file in &files {
        let head = fs::read(file).map(|d| d.get(..4) == Some(b"\x7fELF")).unwrap_or(false);
        if !head {
            continue;
        }
        let ldd = std::process::Command::new("ldd").arg(file).output().context("running ldd (Debian: libc-bin)")?;
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = line.split("=>").last().unwrap_or_default().split_whitespace().next().unwrap_or_default();
            // A library the copy carries serves what the program loads later (PyInstaller's
            // extension modules), not the entry point, which the loader links before it runs.
            let entry = *file == dest || *file == dest.join(c.name);
            if path.starts_with('/')
                && !Path::new(path).starts_with(&work)
                && (entry || !Path::new(path).file_name().is_some_and(|n| carried.contains(n)))
            {
                libs.insert(path.to_owned());
            }
        }
    }
    remove_tree(&work)?;
    Ok(libs.into_iter().collect())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(&e.path(), out)?;
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

/// Removes an unpacked tree, whose directories are read-only.
pub(crate) fn remove_tree(dir: &Path) -> io::Result<()> {
    let mut dirs = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
        }
        dirs.push(d);
    }
    fs::remove_dir_all(dir)
}

/// Adds the entries of a directory component's tar stream under PREFIX: plain relative paths,
/// files, directories and symlinks only, modes without write or special bits.
fn add_tree(tree: &mut BTreeMap<String, Node>, prefix: &str, reader: impl Read) -> anyhow::Result<()> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path.as_os_str().is_empty() || !path.components().all(|p| matches!(p, PathPart::Normal(_))) {
            bail!("archive entry {} is not a plain relative path", path.display());
        }
        let name = format!("{prefix}/{}", path.to_str().context("a path that is not UTF-8")?);
        let mode = entry.header().mode()? & 0o555;
        let node = match entry.header().entry_type() {
            tar::EntryType::Directory => Node::Dir { mode: 0o555, uid: 0 },
            tar::EntryType::Regular => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data)?;
                Node::File { mode: mode | 0o444, data }
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name()?.context("a symlink without a target")?;
                Node::Link { target: target.to_str().context("a link target that is not UTF-8")?.to_owned() }
            }
            other => bail!("archive entry {} is a {other:?}", path.display()),
        };
        tree.insert(name, node);
    }
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32, uid: u32, size: u64, epoch: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid.into());
    h.set_gid(0);
    h.set_size(size);
    h.set_mtime(epoch);
    h
}

/// The layer: every node in path order (parents before children), as a tar stream.
fn layer(tree: &BTreeMap<String, Node>, epoch: u64) -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    for (path, node) in tree {
        match node {
            Node::Dir { mode, uid } => {
                let mut h = header(tar::EntryType::Directory, *mode, *uid, 0, epoch);
                tar.append_data(&mut h, format!("{path}/"), io::empty())?;
            }
            Node::File { mode, data } => {
                let mut h = header(tar::EntryType::Regular, *mode, 0, data.len() as u64, epoch);
                tar.append_data(&mut h, path, data.as_slice())?;
            }
            Node::Link { target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0, epoch);
                tar.append_link(&mut h, path, target)?;
            }
        }
    }
    let mut out = tar.into_inner()?;
    out.flush()?;
    Ok(out)
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The OCI name of this build's architecture.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
