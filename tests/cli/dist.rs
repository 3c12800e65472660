//! Packaging: the release tarball `make dist` builds (packed by packaging/scripts/dist.sh from
//! the test build, which embeds the fixtures), unpacked and run through every link; the
//! install script; the Homebrew formula against Cargo.toml and components.toml; the release
//! workflow through actionlint; the size budget of the reference build.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The reference components (packaging/components), which the fixture build embeds too.
const REFERENCE: &[&str] = &["agent-runner", "stigmer-server", "workflow-runner"];
/// Where the shipped files live inside the tarball's top directory.
const SHARE_FILES: &[&str] = &[
    "share/man/man1/stigmer.1",
    "share/bash-completion/completions/stigmer",
    "share/zsh/site-functions/_stigmer",
    "share/fish/vendor_completions.d/stigmer.fish",
    "README.md",
    "install.sh",
    "share/systemd/user/stigmer.service",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// packaging/scripts/NAME ARGS..., without the launcher's variables from the developer's shell.
fn script<S: AsRef<OsStr>>(name: &str, args: impl IntoIterator<Item = S>) -> Command {
    let mut cmd = Command::new(repo().join("packaging/scripts").join(name));
    cmd.args(args);
    for var in STIGMER_VARS {
        cmd.env_remove(var);
    }
    cmd.stdin(std::process::Stdio::null());
    cmd
}

fn host_triple() -> String {
    let out = Command::new("rustc").arg("-vV").output().expect("rustc -vV");
    stdout(&out).lines().find_map(|l| l.strip_prefix("host: ")).expect("host: line in rustc -vV").to_owned()
}

fn names(stigmer: &Path) -> Vec<String> {
    let mut cmd = Command::new(stigmer);
    cmd.arg("--list").env_remove("STIGMER_FORCE_ARG0");
    let out = run(cmd);
    assert_code(&out, 0);
    stdout(&out).lines().map(str::to_owned).collect()
}

/// Runs component NAME through the link BIN/NAME and checks it is that component answering.
fn check_component(bin: &Path, home: &Path, name: &str) {
    let mut cmd = Command::new(bin.join(name));
    cmd.env("STIGMER_HOME", home).env_remove("STIGMER_FORCE_ARG0").env_remove("STIGMER_RUNNER");
    let expected = match name {
        "probe" | "probe-static" | "probe-cached" | "probe-zstd" | "big-probe" => {
            cmd.arg("x");
            format!("argv[0]={}\n", bin.join(name).display())
        }
        "hello-script" => {
            cmd.arg("x");
            "script args: x".to_owned()
        }
        "pyapp" | "pyapp-onefile" => "\"sum\": 55".to_owned(),
        "shdir" => "shdir: data from a read-only directory".to_owned(),
        "stigmer-server" | "workflow-runner" | "agent-runner" => {
            cmd.arg("--version");
            format!("{name} ")
        }
        // Re-enters itself through PATH: the recursion guard's business (tests/cli/dispatch.rs).
        "loop-script" => return,
        other => panic!("no check for component '{other}': add one to tests/cli/dist.rs"),
    };
    let out = run(cmd);
    assert_code(&out, 0);
    assert!(stdout(&out).contains(&expected), "{name}: expected {expected:?}\n{}", describe(&out));
}

#[test]
fn dist_tarball_unpacks_and_runs_every_name_through_its_link() {
    let out_dir = tempdir();
    let out = run(script("dist.sh", [stigmer_bin().as_os_str(), out_dir.path().as_os_str()]));
    assert_code(&out, 0);

    let name = format!("stigmer-{VERSION}-{}", host_triple());
    let tarball = out_dir.path().join(format!("{name}.tar.gz"));
    assert_eq!(stdout(&out).trim(), tarball.to_str().unwrap(), "{}", describe(&out));
    let entries = visible_entries(out_dir.path());
    assert_eq!(entries, [format!("{name}.tar.gz"), format!("{name}.tar.gz.sha256")]);

    // sha256sum format: "<hex>  <file name>", and it verifies.
    let sums = fs::read_to_string(out_dir.path().join(format!("{name}.tar.gz.sha256"))).unwrap();
    assert_eq!(sums, format!("{}  {name}.tar.gz\n", sha256_file(&tarball)));
    let check = run({
        let mut c = Command::new("sha256sum");
        c.arg("-c").arg(format!("{name}.tar.gz.sha256")).current_dir(out_dir.path());
        c
    });
    assert_code(&check, 0);

    let prefix = tempdir();
    let untar = run({
        let mut c = Command::new("tar");
        c.arg("-xzf").arg(&tarball).arg("-C").arg(prefix.path());
        c
    });
    assert_code(&untar, 0);
    assert_eq!(visible_entries(prefix.path()), std::slice::from_ref(&name), "one top directory");
    let top = prefix.path().join(&name);

    let stigmer = top.join("bin/stigmer");
    let meta = fs::symlink_metadata(&stigmer).unwrap();
    assert!(meta.is_file(), "bin/stigmer is the real binary");
    assert_eq!(fs::read(&stigmer).unwrap().len() as u64, fs::metadata(stigmer_bin()).unwrap().len());

    let components = names(&stigmer);
    assert!(REFERENCE.iter().all(|r| components.iter().any(|c| c == r)), "{components:?}");
    let mut expected_bin: BTreeSet<String> = components.iter().cloned().collect();
    expected_bin.insert("stigmer".into());
    assert_eq!(visible_entries(&top.join("bin")).into_iter().collect::<BTreeSet<_>>(), expected_bin);
    for component in &components {
        let link = top.join("bin").join(component);
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("stigmer"), "{component}: relative link");
    }

    let home = tempdir();
    let version = run({
        let mut c = Command::new(&stigmer);
        c.arg("--version").env("STIGMER_HOME", home.path()).env_remove("STIGMER_FORCE_ARG0");
        c
    });
    assert_code(&version, 0);
    assert!(stdout(&version).starts_with(&format!("stigmer {VERSION}")), "{}", describe(&version));
    for component in &components {
        check_component(&top.join("bin"), home.path(), component);
    }

    for file in SHARE_FILES {
        let len = fs::metadata(top.join(file)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{file} missing or empty in the tarball");
    }
    let man = fs::read_to_string(top.join("share/man/man1/stigmer.1")).unwrap();
    assert!(man.contains(".TH stigmer 1") && man.contains(&format!("stigmer {VERSION}")), "{man}");
    let bash = fs::read_to_string(top.join("share/bash-completion/completions/stigmer")).unwrap();
    assert!(bash.contains("complete ") && bash.contains("install-links"), "bash completion");
    let zsh = fs::read_to_string(top.join("share/zsh/site-functions/_stigmer")).unwrap();
    assert!(zsh.starts_with("#compdef stigmer"), "zsh completion");
    let fish = fs::read_to_string(top.join("share/fish/vendor_completions.d/stigmer.fish")).unwrap();
    assert!(fish.contains("complete -c stigmer"), "fish completion");
}

/// An unpacked tarball without packing one: the test binary hard-linked, small share files.
fn fake_unpacked() -> tempfile::TempDir {
    let dir = tempdir();
    fs::create_dir_all(dir.path().join("bin")).unwrap();
    fs::hard_link(stigmer_bin(), dir.path().join("bin/stigmer"))
        .or_else(|_| fs::copy(stigmer_bin(), dir.path().join("bin/stigmer")).map(drop))
        .unwrap();
    for file in &SHARE_FILES[..4] {
        let path = dir.path().join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, format!("{file}\n")).unwrap();
    }
    dir
}

#[test]
fn install_script_places_binary_links_and_docs_idempotently() {
    let unpacked = fake_unpacked();
    let prefix = tempdir();
    let install = || run(script("install.sh", [prefix.path(), unpacked.path()]));

    let first = install();
    assert_code(&first, 0);
    let bin = prefix.path().join("bin");
    let components = names(&bin.join("stigmer"));
    for component in &components {
        assert_eq!(fs::read_link(bin.join(component)).unwrap(), Path::new("stigmer"));
    }
    for file in &SHARE_FILES[..4] {
        assert_eq!(fs::read_to_string(prefix.path().join(file)).unwrap(), format!("{file}\n"));
    }
    let home = tempdir();
    check_component(&bin, home.path(), "probe");

    let second = install();
    assert_code(&second, 0);
    assert_eq!(stderr(&second), "", "a second install changes nothing\n{}", describe(&second));

    // A real file under a component's name is never clobbered: reported, exit 1, others kept.
    fs::remove_file(bin.join("probe")).unwrap();
    fs::write(bin.join("probe"), "mine\n").unwrap();
    fs::remove_file(bin.join("hello-script")).unwrap();
    let third = install();
    assert_code(&third, 1);
    assert!(stderr(&third).contains("probe exists and is not a link to stigmer"), "{}", describe(&third));
    assert_eq!(fs::read_to_string(bin.join("probe")).unwrap(), "mine\n");
    assert_eq!(fs::read_link(bin.join("hello-script")).unwrap(), Path::new("stigmer"), "relinked");
}

/// The component names of packaging/components/components.toml, the formula's source.
fn reference_components() -> BTreeSet<String> {
    let text = fs::read_to_string(repo().join("packaging/components/components.toml")).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    doc["components"].as_table().unwrap().keys().cloned().collect()
}

fn formula_links(formula: &str) -> BTreeSet<String> {
    formula
        .lines()
        .filter_map(|l| l.trim().strip_prefix("bin.install_symlink \"stigmer\" => \""))
        .map(|rest| rest.trim_end_matches('"').to_owned())
        .collect()
}

#[test]
fn homebrew_formula_follows_cargo_toml_and_the_component_list() {
    let out = run(script("formula.sh", [""; 0]));
    assert_code(&out, 0);
    let formula = stdout(&out);
    assert!(formula.contains(&format!("  version \"{VERSION}\"\n")), "{formula}");
    assert_eq!(formula_links(&formula), reference_components());
    assert_eq!(formula.matches("sha256 \"").count(), 4);
    for target in
        ["aarch64-apple-darwin", "x86_64-apple-darwin", "aarch64-unknown-linux-gnu", "x86_64-unknown-linux-gnu"]
    {
        let url = format!("/v{VERSION}/stigmer-{VERSION}-{target}.tar.gz\"");
        assert_eq!(formula.matches(&url).count(), 1, "{target} url\n{formula}");
    }
    for line in [
        "bin.install \"bin/stigmer\"",
        "bash_completion.install \"share/bash-completion/completions/stigmer\"",
        "zsh_completion.install \"share/zsh/site-functions/_stigmer\"",
        "fish_completion.install \"share/fish/vendor_completions.d/stigmer.fish\"",
        "man1.install \"share/man/man1/stigmer.1\"",
        "shell_output(\"#{bin}/stigmer --version\")",
        "shell_output(\"#{bin}/agent-runner --version\")",
    ] {
        assert!(formula.contains(line), "formula lacks {line}\n{formula}");
    }

    // The template hard-codes neither the version nor a component: it cannot drift.
    let template = fs::read_to_string(repo().join("packaging/homebrew/stigmer.rb.in")).unwrap();
    assert!(!template.contains(VERSION), "stigmer.rb.in names a version: use @VERSION@");
    assert!(formula_links(&template).is_empty(), "stigmer.rb.in names components");
    // A committed rendered formula, if any, must match Cargo.toml and the component list.
    if let Ok(committed) = fs::read_to_string(repo().join("packaging/homebrew/stigmer.rb")) {
        assert!(committed.contains(&format!("  version \"{VERSION}\"\n")), "stigmer.rb drifted from Cargo.toml");
        assert_eq!(formula_links(&committed), reference_components(), "stigmer.rb drifted");
    }
}

#[test]
fn homebrew_formula_takes_the_release_checksums() {
    let sums = tempdir();
    let targets =
        ["aarch64-apple-darwin", "x86_64-apple-darwin", "aarch64-unknown-linux-gnu", "x86_64-unknown-linux-gnu"];
    for (i, target) in targets.iter().enumerate() {
        let file = format!("stigmer-{VERSION}-{target}.tar.gz");
        fs::write(sums.path().join(format!("{file}.sha256")), format!("{}  {file}\n", i.to_string().repeat(64)))
            .unwrap();
    }
    let out = run(script("formula.sh", [sums.path()]));
    assert_code(&out, 0);
    let formula = stdout(&out);
    for (i, target) in targets.iter().enumerate() {
        let url = formula.find(&format!("-{target}.tar.gz\"")).unwrap();
        let sha = &formula[url..].lines().nth(1).unwrap().trim();
        assert_eq!(*sha, format!("sha256 \"{}\"", i.to_string().repeat(64)), "{target}");
    }

    fs::remove_file(sums.path().join(format!("stigmer-{VERSION}-x86_64-apple-darwin.tar.gz.sha256"))).unwrap();
    let out = run(script("formula.sh", [sums.path()]));
    assert_code(&out, 1);
    assert!(stderr(&out).contains("x86_64-apple-darwin.tar.gz.sha256"), "{}", describe(&out));
}

#[test]
fn release_workflow_passes_actionlint() {
    let out = run(script("lint-workflows.sh", [""; 0]));
    assert_code(&out, 0);
    assert!(stderr(&out).contains("release.yml: checked"), "{}", describe(&out));
    let workflow = fs::read_to_string(repo().join(".github/workflows/release.yml")).unwrap();
    for needle in [
        "ubuntu-latest",
        "ubuntu-24.04-arm",
        "macos-14",
        "macos-15-intel",
        "make -o deps -o components dist",
        "formula.sh dist",
    ] {
        assert!(workflow.contains(needle), "release.yml lacks {needle}");
    }
}

#[test]
fn reference_build_fits_the_size_budget() {
    // The test build embeds the fixtures besides the reference components, and a debug launcher:
    // project the release binary as this launcher (an overestimate) + the reference payloads.
    let only = REFERENCE.join(" ");
    let bin = stigmer_bin();
    let out = run(script(
        "size.py",
        [OsStr::new("--budget"), OsStr::new("120"), OsStr::new("--only"), OsStr::new(&only), bin.as_os_str()],
    ));
    assert_code(&out, 0);
    let report = stdout(&out);
    for name in REFERENCE {
        assert!(report.lines().any(|l| l.starts_with(name)), "{name} in the size report\n{report}");
    }
    assert!(report.contains("budget: launcher + ") && report.contains(": ok"), "{report}");
}

/// An option is never taken for the prefix: `--help` prints the usage, an unknown one is refused.
#[test]
fn install_script_help_and_unknown_options_install_nothing() {
    let cwd = tempdir();
    for help in ["--help", "-h"] {
        let mut cmd = script("install.sh", [help]);
        cmd.current_dir(cwd.path());
        let out = run(cmd);
        assert_code(&out, 0);
        assert!(stdout(&out).starts_with("usage: ") && stdout(&out).contains("PREFIX"), "{}", describe(&out));
        assert_eq!(stderr(&out), "", "{}", describe(&out));
    }
    let mut cmd = script("install.sh", ["--prefix=/tmp/x"]);
    cmd.current_dir(cwd.path());
    let out = run(cmd);
    assert_code(&out, 2);
    assert!(stderr(&out).starts_with("install: unknown option '--prefix=/tmp/x'\nusage: "), "{}", describe(&out));
    assert!(out.stdout.is_empty());
    assert_eq!(fs::read_dir(cwd.path()).unwrap().count(), 0, "nothing created in the working directory");
}

/// A retired GitHub runner label is refused with one line naming the file, the job and the label;
/// the real release workflow passes (the check needs no actionlint, so it runs everywhere).
#[test]
fn retired_runner_labels_are_refused() {
    let dir = tempdir();
    let workflow = dir.path().join("old.yml");
    fs::write(
        &workflow,
        "on: push\njobs:\n  ok:\n    runs-on: macos-15-intel\n    steps: [{ run: 'true' }]\n  \
         mac:\n    runs-on: ${{ matrix.os }}\n    strategy:\n      matrix:\n        include:\n          \
         - { os: macos-13, target: x86_64-apple-darwin }\n    steps: [{ run: 'true' }]\n  \
         win:\n    runs-on: windows-2019 # still fine?\n    steps: [{ run: 'echo macos-13x' }]\n",
    )
    .unwrap();
    let out = run(script("check-runner-labels.sh", [&workflow]));
    assert_code(&out, 1);
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "one line per retired label, macos-13x is not one\n{}", describe(&out));
    let name = workflow.display();
    assert!(lines[0].starts_with(&format!("{name}:11: job mac: runner label \"macos-13\" is retired")), "{err}");
    assert!(lines[1].starts_with(&format!("{name}:14: job win: runner label \"windows-2019\" is retired")), "{err}");
    assert!(err.contains("macos-15-intel"), "says what to use instead: {err}");

    let real = run(script("check-runner-labels.sh", [repo().join(".github/workflows/release.yml")]));
    assert_code(&real, 0);
    assert_eq!(stderr(&real), "", "{}", describe(&real));
}

/// `brew services start stigmer` runs the supervisor in the foreground, kept alive, logging
/// under Homebrew's var/log: the rendered formula's `service do` block, after `install`.
#[test]
fn homebrew_formula_runs_the_server_as_a_service() {
    let out = run(script("formula.sh", [""; 0]));
    assert_code(&out, 0);
    let formula = stdout(&out);
    let start = formula.find("\n  service do\n").unwrap_or_else(|| panic!("no service block\n{formula}"));
    let len = formula[start + 1..].find("\n  end\n").expect("service block closed") + 1;
    let block: Vec<&str> = formula[start + 1..start + 1 + len].lines().skip(1).map(str::trim).collect();
    assert_eq!(
        block,
        [
            "run [opt_bin/\"stigmer\", \"server\", \"--foreground\"]",
            "keep_alive true",
            "log_path var/\"log/stigmer.log\"",
            "error_log_path var/\"log/stigmer.err.log\"",
        ],
        "{formula}"
    );
    assert!(formula.find("  def install").unwrap() < start, "service comes after install\n{formula}");
    assert!(start < formula.find("  test do").unwrap(), "{formula}");
}

/// The systemd user unit: Type=notify, installed under PREFIX/share/systemd/user with ExecStart
/// on PREFIX's stigmer (quoted, % escaped), never enabled (nothing written under HOME).
#[test]
fn install_script_installs_the_systemd_user_unit_without_enabling_it() {
    let unit = "share/systemd/user/stigmer.service";
    let shipped = fs::read_to_string(repo().join("packaging/systemd/stigmer.service")).unwrap();
    for line in ["Type=notify", "NotifyAccess=main", "KillMode=mixed", "WantedBy=default.target"] {
        assert!(shipped.lines().any(|l| l == line), "the unit lacks {line}\n{shipped}");
    }
    assert!(shipped.contains("\nExecStart=%h/.local/bin/stigmer server --foreground\n"), "{shipped}");

    let unpacked = fake_unpacked();
    fs::create_dir_all(unpacked.path().join("share/systemd/user")).unwrap();
    fs::copy(repo().join("packaging/systemd/stigmer.service"), unpacked.path().join(unit)).unwrap();
    let parent = tempdir();
    let prefix = parent.path().join("my 100% prefix");
    fs::create_dir(&prefix).unwrap();
    let home = tempdir();
    let install = || {
        let mut cmd = script("install.sh", [prefix.as_os_str(), unpacked.path().as_os_str()]);
        cmd.env("HOME", home.path()).env_remove("XDG_CONFIG_HOME");
        run(cmd)
    };
    let first = install();
    assert_code(&first, 0);
    assert!(stderr(&first).contains("systemctl --user enable --now stigmer"), "{}", describe(&first));
    let installed = fs::read_to_string(prefix.join(unit)).unwrap();
    let exec =
        format!("ExecStart=\"{}/my 100%% prefix/bin/stigmer\" server --foreground", canon(parent.path()).display());
    let expected: Vec<String> =
        shipped.lines().map(|l| if l.starts_with("ExecStart=") { exec.clone() } else { l.to_owned() }).collect();
    assert_eq!(installed.lines().collect::<Vec<_>>(), expected, "only ExecStart differs");
    assert_eq!(fs::metadata(prefix.join(unit)).unwrap().permissions().mode() & 0o777, 0o644);
    assert!(visible_entries(home.path()).is_empty(), "nothing enabled under HOME: {:?}", walk(home.path()));

    let second = install();
    assert_code(&second, 0);
    assert_eq!(stderr(&second), "", "a second install changes nothing\n{}", describe(&second));
}

/// Plain `cargo build` (this suite's binary is built that way: no `--target`, no RUSTFLAGS) links
/// stigmer static-pie on Linux, as `make build` does, through .cargo/rustc-static-pie: position
/// independent (ELF type ET_DYN, so ASLR applies) and no PT_INTERP (no dynamic loader at start).
#[test]
#[cfg(target_os = "linux")]
fn cargo_build_links_stigmer_static_pie() {
    let elf = fs::read(stigmer_bin()).unwrap();
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    assert_eq!(&elf[..5], b"\x7fELF\x02", "a 64-bit ELF");
    assert_eq!(u16_at(0x10), 3, "ET_DYN: position independent");
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, usize::from(u16_at(0x36)), usize::from(u16_at(0x38)));
    let types: Vec<u32> =
        (0..phnum).map(|i| u32::from_le_bytes(elf[phoff + i * phentsize..][..4].try_into().unwrap())).collect();
    assert!(types.contains(&2), "PT_DYNAMIC: it relocates itself ({types:?})");
    assert!(!types.contains(&3), "no PT_INTERP: the binary needs no dynamic loader ({types:?})");
}
