//! CLI applets: --list, components, --version, install-links.

use std::collections::BTreeSet;
use std::fs;

use crate::util::*;

#[test]
fn list_prints_sorted_names() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.arg("--list");
    let out = run(cmd);
    assert_code(&out, 0);
    assert_eq!(stdout(&out).lines().collect::<Vec<_>>(), ALL_COMPONENTS);
}

#[test]
fn components_json_describes_every_component() {
    let sb = Sandbox::new();
    let fixtures = fixtures_dir();
    let all = components(&sb);
    let names: BTreeSet<_> = all.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ALL_COMPONENTS.iter().copied().collect());
    for c in &all {
        assert_eq!(c.sha256.len(), 64, "{c:?}");
        assert!(c.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(c.stored_size > 0, "{c:?}");
        if c.compression == "none" {
            assert_eq!(c.stored_size, c.size, "{c:?}");
        }
        if c.kind == "file" {
            let path = fixtures.join(&c.name);
            assert_eq!(c.size, fs::metadata(&path).unwrap().len(), "{c:?}");
            assert_eq!(c.sha256, sha256_file(&path), "{c:?}");
        }
    }
    let get = |n: &str| all.iter().find(|c| c.name == n).unwrap();
    let expect = [
        // name, kind, runner, compression, version
        ("probe", "file", "memfd", "none", Some("1.2.3")),
        ("probe-static", "file", "memfd", "none", None),
        ("probe-cached", "file", "cache", "none", None),
        ("probe-zstd", "file", "memfd", "zstd", None),
        // 50 MiB: over the auto policy's memfd size.
        ("big-probe", "file", "cache", "none", None),
        ("hello-script", "file", "memfd", "none", None),
        ("pyapp", "dir", "cache", "zstd", None),
        ("pyapp-onefile", "file", "cache", "none", None),
    ];
    for (name, kind, runner, compression, version) in expect {
        let c = get(name);
        assert_eq!(c.kind, kind, "{c:?}");
        assert_eq!(c.runner, runner, "{c:?}");
        assert_eq!(c.compression, compression, "{c:?}");
        assert_eq!(c.version.as_deref(), version, "{c:?}");
    }
    let zstd = get("probe-zstd");
    assert!(zstd.stored_size < zstd.size, "{zstd:?}");
    let pyapp = get("pyapp");
    assert!(pyapp.stored_size < pyapp.size, "{pyapp:?}");
    assert!(pyapp.size > fs::metadata(fixtures.join("pyapp/pyapp")).unwrap().len());
}

#[test]
fn components_table_names_everything() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.arg("components");
    let out = run(cmd);
    assert_code(&out, 0);
    let text = stdout(&out);
    for name in ALL_COMPONENTS {
        assert!(text.lines().any(|l| l.split_whitespace().any(|w| w == *name)), "{name} missing from table:\n{text}");
    }
}

#[test]
fn version_lists_components() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.arg("--version");
    let out = run(cmd);
    assert_code(&out, 0);
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(concat!("stigmer ", env!("CARGO_PKG_VERSION"))), "{text}");
    let rest: Vec<_> = lines.collect();
    for c in components(&sb) {
        let line = rest
            .iter()
            .find(|l| l.split_whitespace().next() == Some(c.name.as_str()))
            .unwrap_or_else(|| panic!("no --version line for {}:\n{text}", c.name));
        assert!(line.contains(&c.sha256[..12]), "{line}");
        if let Some(v) = &c.version {
            assert!(line.contains(v.as_str()), "{line}");
        }
    }
}

#[test]
fn install_links_creates_working_symlinks_idempotently() {
    let sb = Sandbox::new();
    let dir = tempdir();
    let target = canon(&stigmer_bin());
    // A stale link pointing elsewhere is replaced.
    std::os::unix::fs::symlink("/nonexistent/stigmer", dir.path().join("probe")).unwrap();
    for _ in 0..2 {
        let mut cmd = sb.stigmer();
        cmd.arg("install-links").arg(dir.path());
        let out = run(cmd);
        assert_code(&out, 0);
        for name in ALL_COMPONENTS {
            let link = dir.path().join(name);
            assert_eq!(fs::read_link(&link).unwrap(), target, "{name}");
        }
    }
    let link = dir.path().join("probe");
    let mut cmd = std::process::Command::new(&link);
    sb.configure(&mut cmd);
    cmd.arg("via-link");
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.argv, [link.to_str().unwrap(), "via-link"]);
}

#[test]
fn install_links_defaults_to_home_bin() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.arg("install-links");
    assert_code(&run(cmd), 0);
    let bin = sb.home().join("bin");
    for name in ALL_COMPONENTS {
        assert_eq!(fs::read_link(bin.join(name)).unwrap(), canon(&stigmer_bin()), "{name}");
    }
    let link = bin.join("probe-static");
    let mut cmd = std::process::Command::new(&link);
    sb.configure(&mut cmd);
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.argv, [link.to_str().unwrap()]);
}

#[test]
fn install_links_does_not_clobber_regular_files() {
    let sb = Sandbox::new();
    let dir = tempdir();
    let keep = dir.path().join("probe-static");
    fs::write(&keep, b"mine").unwrap();
    let mut cmd = sb.stigmer();
    cmd.arg("install-links").arg(dir.path());
    let out = run(cmd);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("probe-static"), "{}", describe(&out));
    assert_eq!(fs::read(&keep).unwrap(), b"mine");
    assert!(fs::symlink_metadata(&keep).unwrap().file_type().is_file());
}

#[test]
fn cli_help_works() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.arg("--help");
    let out = run(cmd);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("exec"), "{}", describe(&out));
}
