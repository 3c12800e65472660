//! A bad STIGMER_COMPONENTS_DIR fails the build with a message naming the
//! offending path (and the line, for components.toml). Runs `cargo check` on
//! this package in its own target dir so it never contends with the main build.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

fn cargo_check(components: &Path) -> (bool, String) {
    cargo_check_with(Some(components), false)
}

fn cargo_check_with(components: Option<&Path>, verbose: bool) -> (bool, String) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target: PathBuf = manifest.join("target").join("build-errors");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(manifest)
        .args(["check", "--offline", "--bin", "stigmer", "--message-format", "short"])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTC_WRAPPER");
    if verbose {
        cmd.arg("-v");
    }
    match components {
        Some(dir) => cmd.env("STIGMER_COMPONENTS_DIR", dir),
        None => cmd.env_remove("STIGMER_COMPONENTS_DIR"),
    };
    let out = cmd.output().expect("run cargo check");
    (out.status.success(), stderr(&out))
}

#[track_caller]
fn assert_build_fails(dir: &Path, needles: &[&str]) {
    let (ok, err) = cargo_check(dir);
    assert!(!ok, "build with STIGMER_COMPONENTS_DIR={} should fail:\n{err}", dir.display());
    for needle in needles {
        assert!(err.contains(needle), "build error for {} should mention {needle:?}:\n{err}", dir.display());
    }
}

fn executable(path: &Path, body: &str) {
    fs::write(path, body).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A valid components dir with one script component `ok`.
fn good_dir() -> tempfile::TempDir {
    let dir = tempdir();
    executable(&dir.path().join("ok"), "#!/bin/sh\necho ok\n");
    dir
}

fn toml(dir: &Path, text: &str) -> String {
    let path = dir.join("components.toml");
    fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn bad_components_dirs_fail_the_build_naming_the_path() {
    // Nonexistent directory.
    let missing = tempdir();
    let gone = missing.path().join("does-not-exist");
    assert_build_fails(&gone, &[gone.to_str().unwrap()]);

    // A regular file without the x bit.
    let dir = good_dir();
    let file = dir.path().join("notexec");
    fs::write(&file, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    assert_build_fails(dir.path(), &[file.to_str().unwrap()]);

    // A directory component without its entry point foo/foo.
    let dir = good_dir();
    let foo = dir.path().join("foo");
    fs::create_dir(&foo).unwrap();
    executable(&foo.join("other"), "#!/bin/sh\n");
    assert_build_fails(dir.path(), &[foo.to_str().unwrap()]);

    // components.toml syntax error on line 3.
    let dir = good_dir();
    let path = toml(dir.path(), "[components.ok]\nversion = \"1\"\nrunner = \n");
    assert_build_fails(dir.path(), &[&path, "line 3"]);

    // A bad runner value on line 4.
    let dir = good_dir();
    let path = toml(dir.path(), "# settings\n[components.ok]\nversion = \"1\"\nrunner = \"bogus\"\n");
    assert_build_fails(dir.path(), &[&path, "line 4"]);

    // A component that is not in the directory.
    let dir = good_dir();
    let path = toml(dir.path(), "[components.ok]\n\n[components.ghost]\nversion = \"2\"\n");
    assert_build_fails(dir.path(), &[&path, "ghost"]);

    // A name that is no component name (it would be a path in the cache and the home).
    let dir = good_dir();
    let file = dir.path().join("-rf");
    executable(&file, "#!/bin/sh\n");
    assert_build_fails(dir.path(), &[file.to_str().unwrap()]);

    // Sanity: the good dir itself builds (so the failures above are the dirs'),
    // and so does a build without any components dir.
    let dir = good_dir();
    let (ok, err) = cargo_check(dir.path());
    assert!(ok, "a valid components dir must build:\n{err}");
    let (ok, err) = cargo_check_with(None, false);
    assert!(ok, "building without STIGMER_COMPONENTS_DIR must work:\n{err}");

    // Changing the dir's contents reruns the build script; no change does not.
    let ran_build_script = |err: &str| err.contains("build-script-build`");
    let (ok, err) = cargo_check_with(Some(dir.path()), true);
    assert!(ok, "{err}");
    let (ok, err) = cargo_check_with(Some(dir.path()), true);
    assert!(ok && !ran_build_script(&err), "nothing changed, no rerun expected:\n{err}");
    let file = dir.path().join("ok");
    fs::write(&file, "#!/bin/sh\necho changed\n").unwrap();
    let (ok, err) = cargo_check_with(Some(dir.path()), true);
    assert!(ok && ran_build_script(&err), "changed component must rerun build.rs:\n{err}");
    let (ok, err) = cargo_check_with(Some(dir.path()), true);
    assert!(ok && !ran_build_script(&err), "nothing changed, no rerun expected:\n{err}");
    // An added directory component carrying a setuid file: built, with a warning naming it.
    let tool = dir.path().join("added");
    fs::create_dir(&tool).unwrap();
    executable(&tool.join("added"), "#!/bin/sh\n");
    fs::set_permissions(tool.join("added"), fs::Permissions::from_mode(0o4755)).unwrap();
    let (ok, err) = cargo_check_with(Some(dir.path()), true);
    assert!(ok && ran_build_script(&err), "added component must rerun build.rs:\n{err}");
    let warning = format!("{}: setuid/setgid/sticky bits dropped", tool.join("added").display());
    assert!(err.contains(&warning), "the build warns, naming the file:\n{err}");
}
