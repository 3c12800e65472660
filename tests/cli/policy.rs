//! `stigmer components` names the runner a start takes and why, from the same decision the exec
//! path makes: the policy per format, components.toml's `runner`, and STIGMER_RUNNER. The build's
//! sniffing of Go programs that link os.Executable is checked on real Go builds.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

/// (name, runner, why) rows of `components --json`, with ENV applied.
fn choices(sb: &Sandbox, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = sb.stigmer();
    cmd.args(["components", "--json"]).envs(env.iter().copied());
    run(cmd)
}

fn rows(out: &std::process::Output) -> Vec<(String, String, String)> {
    assert_code(out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_else(|| panic!("{k} missing in {r}")).to_owned();
            (s("name"), s("runner"), s("why"))
        })
        .collect()
}

#[test]
fn components_says_which_runner_and_why() {
    let sb = Sandbox::new();
    let rows = rows(&choices(&sb, &[]));
    let get = |n: &str| rows.iter().find(|r| r.0 == n).unwrap_or_else(|| panic!("{n} in {rows:?}")).clone();
    for (name, runner, why) in [
        ("probe", "memfd", "single-file ELF"),
        // The reference Go services do not link os.Executable: they stay on memfd.
        ("stigmer-server", "memfd", "single-file ELF"),
        ("workflow-runner", "memfd", "single-file ELF"),
        ("hello-script", "memfd", "script"),
        ("probe-cached", "cache", "runner = \"cache\" in components.toml"),
        ("pyapp", "cache", "directory component"),
        ("pyapp-onefile", "cache", "PyInstaller"),
    ] {
        let (_, got_runner, got_why) = get(name);
        assert_eq!(got_runner, runner, "{name}: {got_why}");
        assert!(got_why.contains(why), "{name}: why is {got_why:?}, expected it to say {why:?}");
    }
    // The table says the same, in a WHY column.
    let mut cmd = sb.stigmer();
    cmd.arg("components");
    let out = run(cmd);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.lines().next().unwrap().ends_with("WHY"), "{text}");
    let line = text.lines().find(|l| l.starts_with("pyapp-onefile ")).unwrap();
    assert!(line.contains("cache") && line.contains("PyInstaller"), "{line}");
}

#[test]
fn components_follows_stigmer_runner() {
    let sb = Sandbox::new();
    for runner in ["memfd", "cache"] {
        for (name, got, why) in rows(&choices(&sb, &[("STIGMER_RUNNER", runner)])) {
            assert_eq!(got, runner, "{name}");
            assert_eq!(why, format!("STIGMER_RUNNER={runner}"), "{name}");
        }
    }
    let err = assert_launcher_error(&choices(&sb, &[("STIGMER_RUNNER", "bogus")]), 1);
    assert!(err.contains("STIGMER_RUNNER") && err.contains("bogus"), "{err}");
}

/// Builds Go SOURCE (stripped, as distributions ship) into DIR/NAME.
fn go_build(dir: &Path, name: &str, source: &str) {
    let src = dir.join(format!(".{name}-src"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("main.go"), source).unwrap();
    fs::write(src.join("go.mod"), format!("module example.com/{name}\n\ngo 1.19\n")).unwrap();
    let out = Command::new("go")
        .args(["build", "-trimpath", "-ldflags=-s -w", "-o"])
        .arg(dir.join(name))
        .current_dir(&src)
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("go (installed by packaging/scripts/deps.sh)");
    assert!(out.status.success(), "go build {name}: {}", describe(&out));
    fs::remove_dir_all(&src).unwrap();
}

/// The format build.rs sniffed for each component, from the generated manifest of a `cargo check`
/// in its own target dir.
fn sniffed_formats(components: &Path) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target: PathBuf = manifest.join("target").join("policy-sniff");
    let out = Command::new(cargo)
        .current_dir(manifest)
        .args(["check", "--offline", "--bin", "stigmer", "--message-format", "short"])
        .env("CARGO_TARGET_DIR", &target)
        .env("STIGMER_COMPONENTS_DIR", components)
        .env_remove("RUSTC_WRAPPER")
        .output()
        .expect("cargo check");
    assert!(out.status.success(), "cargo check: {}", describe(&out));
    let build = target.join("debug/build");
    let text = fs::read_dir(&build)
        .unwrap()
        .filter_map(|e| fs::read_to_string(e.unwrap().path().join("out/manifest.rs")).ok())
        .find(|t| t.contains("\"uses-exe\""))
        .unwrap_or_else(|| panic!("no manifest.rs naming uses-exe under {}", build.display()));
    text
}

#[test]
fn build_routes_go_programs_linking_os_executable_to_the_cache() {
    let dir = tempdir();
    go_build(
        dir.path(),
        "uses-exe",
        "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() {\n\tp, err := os.Executable()\n\tfmt.Println(p, err)\n}\n",
    );
    // Names os.Executable only in a string: not linked, stays on memfd.
    go_build(
        dir.path(),
        "mentions-exe",
        "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"os.Executable\")\n}\n",
    );
    // A C program with the name, NUL-terminated, in its data: no Go buildinfo, stays on memfd.
    let c = dir.path().join(".c.c");
    fs::write(&c, "#include <stdio.h>\nint main(void) { puts(\"\\0os.Executable\"); return 0; }\n").unwrap();
    let out = Command::new("cc").arg("-o").arg(dir.path().join("c-mentions-exe")).arg(&c).output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    fs::remove_file(&c).unwrap();
    let manifest = sniffed_formats(dir.path());
    let format_of = |name: &str| {
        let line = manifest
            .lines()
            .find(|l| l.contains(&format!("name: \"{name}\"")))
            .unwrap_or_else(|| panic!("{name} not in manifest:\n{manifest}"));
        line.split("format: Format::").nth(1).unwrap().split(',').next().unwrap().to_owned()
    };
    assert_eq!(format_of("uses-exe"), "GoOsExecutable");
    assert_eq!(format_of("mentions-exe"), "Elf");
    assert_eq!(format_of("c-mentions-exe"), "Elf");
}
