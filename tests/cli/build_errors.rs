//! A bad STIGMER_COMPONENTS_DIR fails the build with a message naming the offending path (and
//! the line, for components.toml). The messages are checked by running the build script cargo
//! compiled for this test run (target/<profile>/build/stigmer-*/build-script-main) the way cargo
//! runs it: seconds, not a build per case. One test goes through a real `cargo check` in its own
//! target dir, so the path through cargo (the error shown, the warning, when the script reruns)
//! stays covered.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

/// Cargo names the compiled build script after its source file (`build = "build/main.rs"`).
const SCRIPT: &str = "build-script-main";

/// The newest compiled build script of this package, next to the binary under test.
fn build_script() -> PathBuf {
    let build = Path::new(env!("CARGO_BIN_EXE_stigmer")).parent().expect("the binary's directory").join("build");
    let scripts = fs::read_dir(&build).unwrap_or_else(|e| panic!("{}: {e}", build.display()));
    scripts
        .filter_map(|e| {
            let e = e.ok()?;
            if !e.file_name().to_string_lossy().starts_with("stigmer-") {
                return None;
            }
            let script = e.path().join(SCRIPT);
            let modified = fs::metadata(&script).ok()?.modified().ok()?;
            Some((modified, script))
        })
        .max()
        .map(|(_, script)| script)
        .unwrap_or_else(|| panic!("no stigmer-*/{SCRIPT} under {}", build.display()))
}

/// What one run of the build script did.
struct Script {
    ok: bool,
    /// The `cargo::` directives.
    stdout: String,
    stderr: String,
    out_dir: tempfile::TempDir,
}

/// Runs the build script as cargo does: in the package root, with OUT_DIR, the target's cfg and
/// COMPONENTS as STIGMER_COMPONENTS_DIR.
fn run_script(components: Option<&Path>) -> Script {
    let out_dir = tempdir();
    let mut cmd = Command::new(build_script());
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("OUT_DIR", out_dir.path())
        .env("CARGO_MANIFEST_DIR", env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_CFG_TARGET_VENDOR", "unknown")
        .env("CARGO_CFG_TARGET_OS", "linux");
    match components {
        Some(dir) => cmd.env("STIGMER_COMPONENTS_DIR", dir),
        None => cmd.env_remove("STIGMER_COMPONENTS_DIR"),
    };
    let out = run(cmd);
    Script { ok: out.status.success(), stdout: stdout(&out), stderr: stderr(&out), out_dir }
}

#[track_caller]
fn assert_build_fails(dir: &Path, needles: &[&str]) {
    let script = run_script(Some(dir));
    let err = &script.stderr;
    assert!(!script.ok, "build with STIGMER_COMPONENTS_DIR={} should fail:\n{err}", dir.display());
    assert!(err.starts_with("error: "), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "build error for {} should mention {needle:?}:\n{err}", dir.display());
    }
}

fn cargo_check(components: Option<&Path>) -> (bool, String) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target: PathBuf = manifest.join("target").join("build-errors");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(manifest)
        .args(["check", "--offline", "--bin", "stigmer", "--message-format", "short", "-v"])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTC_WRAPPER");
    match components {
        Some(dir) => cmd.env("STIGMER_COMPONENTS_DIR", dir),
        None => cmd.env_remove("STIGMER_COMPONENTS_DIR"),
    };
    let out = cmd.output().expect("run cargo check");
    (out.status.success(), stderr(&out))
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

    // Sanity: the good dir itself builds (so the failures above are the dirs'), and so does a
    // build without any components dir; each asks cargo to rerun it when the variable changes.
    let dir = good_dir();
    let script = run_script(Some(dir.path()));
    assert!(script.ok, "a valid components dir must build:\n{}", script.stderr);
    let manifest = fs::read_to_string(script.out_dir.path().join("manifest.rs")).unwrap();
    assert!(manifest.contains("name: \"ok\"") && manifest.contains("Format::Script"), "{manifest}");
    assert!(
        script.stdout.contains(&format!("cargo::rerun-if-changed={}\n", dir.path().display())),
        "{}",
        script.stdout
    );
    let script = run_script(None);
    assert!(script.ok, "building without STIGMER_COMPONENTS_DIR must work:\n{}", script.stderr);
    assert!(script.stdout.contains("cargo::rerun-if-env-changed=STIGMER_COMPONENTS_DIR\n"), "{}", script.stdout);
    let manifest = fs::read_to_string(script.out_dir.path().join("manifest.rs")).unwrap();
    assert!(manifest.contains("COMPONENTS: &[Component] = &[\n];"), "{manifest}");
}

/// The one trip through cargo: the script's error reaches the user, its warning too, and it
/// reruns exactly when the components change.
#[test]
fn cargo_shows_build_errors_and_reruns_the_script_when_components_change() {
    let dir = good_dir();
    let ran_build_script = |err: &str| err.contains(&format!("{SCRIPT}`"));
    let (ok, err) = cargo_check(Some(dir.path()));
    assert!(ok, "a valid components dir must build:\n{err}");
    let (ok, err) = cargo_check(Some(dir.path()));
    assert!(ok && !ran_build_script(&err), "nothing changed, no rerun expected:\n{err}");
    let file = dir.path().join("ok");
    fs::write(&file, "#!/bin/sh\necho changed\n").unwrap();
    let (ok, err) = cargo_check(Some(dir.path()));
    assert!(ok && ran_build_script(&err), "changed component must rerun build.rs:\n{err}");
    let (ok, err) = cargo_check(Some(dir.path()));
    assert!(ok && !ran_build_script(&err), "nothing changed, no rerun expected:\n{err}");
    // An added directory component carrying a setuid file: built, with a warning naming it.
    let tool = dir.path().join("added");
    fs::create_dir(&tool).unwrap();
    executable(&tool.join("added"), "#!/bin/sh\n");
    fs::set_permissions(tool.join("added"), fs::Permissions::from_mode(0o4755)).unwrap();
    let (ok, err) = cargo_check(Some(dir.path()));
    assert!(ok && ran_build_script(&err), "added component must rerun build.rs:\n{err}");
    let warning = format!("{}: setuid/setgid/sticky bits dropped", tool.join("added").display());
    assert!(err.contains(&warning), "the build warns, naming the file:\n{err}");

    // A bad dir fails the build through cargo too, with the script's message.
    let file = dir.path().join("notexec");
    fs::write(&file, "#!/bin/sh\n").unwrap();
    let (ok, err) = cargo_check(Some(dir.path()));
    assert!(!ok, "a non-executable component must fail the build:\n{err}");
    let message = format!("error: {}: not executable", file.display());
    assert!(err.contains(&message), "cargo shows the script's error:\n{err}");
}
