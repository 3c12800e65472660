//! Real programs no one here wrote (tests/corpus/build.sh: busybox, jq, caddy, ripgrep, bun,
//! yamllint as PyInstaller onedir and onefile), embedded in a second stigmer build (`make
//! corpus`). Each runs directly from the corpus directory and through that stigmer with the same
//! argv, environment, cwd and stdin: stdout, stderr and the exit status must be equal, and the
//! runner must be the one the policy names (small ELF from a memfd; big ELF, PyInstaller and
//! os.Executable users from the cache). caddy also runs as a service of `stigmer server` declared in config.toml
//! alone, and re-runs itself through argv[0] (`caddy start`).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::util::*;

/// The stigmer built with the corpus (STIGMER_CORPUS_BIN, set by `make test`).
fn corpus_bin() -> PathBuf {
    let bin = std::env::var_os("STIGMER_CORPUS_BIN").unwrap_or_else(|| {
        panic!("STIGMER_CORPUS_BIN is not set: the corpus tests need `make corpus`; run them with `make test`")
    });
    let bin = PathBuf::from(bin);
    assert!(bin.is_file(), "STIGMER_CORPUS_BIN={}: no such file: run `make corpus`", bin.display());
    bin
}

/// The corpus components directory (STIGMER_CORPUS_DIR): the programs run directly from here.
fn corpus_dir() -> PathBuf {
    let dir = PathBuf::from(std::env::var_os("STIGMER_CORPUS_DIR").unwrap_or_else(|| {
        panic!("STIGMER_CORPUS_DIR is not set: the corpus tests need `make corpus`; run them with `make test`")
    }));
    assert!(dir.join("components.toml").is_file(), "{}: not the corpus: run `make corpus`", dir.display());
    dir
}

/// The program itself: the file, or a directory component's entry point.
fn direct_path(name: &str) -> PathBuf {
    let path = corpus_dir().join(name);
    if path.is_dir() { path.join(name) } else { path }
}

/// A home, a directory of links to the corpus stigmer, and a working directory.
struct World {
    home: tempfile::TempDir,
    links: tempfile::TempDir,
    cwd: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        World { home: tempdir(), links: tempdir(), cwd: tempdir() }
    }

    fn link(&self, name: &str) -> PathBuf {
        let path = self.links.path().join(name);
        if fs::symlink_metadata(&path).is_err() {
            std::os::unix::fs::symlink(corpus_bin(), &path).unwrap();
        }
        path
    }

    fn configure(&self, cmd: &mut Command) {
        for var in STIGMER_VARS {
            cmd.env_remove(var);
        }
        cmd.env("STIGMER_HOME", self.home.path()).current_dir(self.cwd.path());
    }

    /// The corpus stigmer's CLI.
    fn stigmer(&self) -> Command {
        let mut cmd = Command::new(corpus_bin());
        self.configure(&mut cmd);
        cmd
    }

    /// Runs NAME ARGS with STDIN, directly and through a link, both with argv[0] = NAME (so a
    /// program naming itself in messages says the same thing both ways).
    fn both(&self, name: &str, args: &[&str], stdin: &[u8]) -> (Output, Output) {
        let mut direct = Command::new(direct_path(name));
        let mut via = Command::new(self.link(name));
        for cmd in [&mut direct, &mut via] {
            self.configure(cmd);
            cmd.arg0(name).args(args);
        }
        (run_with_input(direct, stdin), run_with_input(via, stdin))
    }

    /// NAME ARGS through its link, as a user would start it.
    fn command(&self, name: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.link(name));
        self.configure(&mut cmd);
        cmd.args(args);
        cmd
    }

    fn cache_entries(&self) -> Vec<String> {
        visible_entries(&self.home.path().join("cache"))
    }
}

/// (runner, why, sha256) of NAME from the corpus stigmer's `components --json`.
fn runner_of(world: &World, name: &str) -> (String, String, String) {
    let mut cmd = world.stigmer();
    cmd.args(["components", "--json"]);
    let out = run(cmd);
    assert_code(&out, 0);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name}: {rows}"));
    let s = |k: &str| row[k].as_str().unwrap_or_else(|| panic!("{k} in {row}")).to_owned();
    (s("runner"), s("why"), s("sha256"))
}

/// NAME behaves the same directly and through stigmer for every (args, stdin, exit code) case,
/// and ran from the runner RUNNER (memfd: nothing under STIGMER_HOME; cache: its entry filled).
fn same_both_ways(name: &str, runner: &str, cases: &[(&[&str], &str, i32)]) {
    same_both_ways_in(name, runner, cases, |_| {});
}

/// `same_both_ways`, with SETUP preparing the working directory first.
fn same_both_ways_in(name: &str, runner: &str, cases: &[(&[&str], &str, i32)], setup: impl Fn(&Path)) {
    let world = World::new();
    setup(world.cwd.path());
    let (expected_runner, why, sha256) = runner_of(&world, name);
    assert_eq!(expected_runner, runner, "{name}: components --json says {expected_runner} ({why})");
    for (args, stdin, code) in cases {
        let (direct, via) = world.both(name, args, stdin.as_bytes());
        assert_eq!(direct.status.code(), Some(*code), "{name} {args:?} directly:\n{}", describe(&direct));
        let what = format!(
            "{name} {args:?}\n--- direct ---\n{}\n--- through stigmer ---\n{}",
            describe(&direct),
            describe(&via)
        );
        assert_eq!(via.status.code(), direct.status.code(), "exit status differs: {what}");
        assert_eq!(stdout(&via), stdout(&direct), "stdout differs: {what}");
        assert_eq!(stderr(&via), stderr(&direct), "stderr differs: {what}");
    }
    let entries = world.cache_entries();
    match runner {
        "memfd" => assert!(entries.is_empty(), "{name} should run from a memfd, but the cache has {entries:?}"),
        _ => assert_eq!(entries, [sha256], "{name} should run from its cache entry"),
    }
}

#[test]
fn busybox_static_multicall() {
    same_both_ways(
        "busybox",
        "memfd",
        &[
            (&["echo", "hello", "world"], "", 0),
            (&["wc", "-l"], "one\ntwo\nthree\n", 0),
            (&["sh", "-c", "echo out; echo err >&2; exit 3"], "", 3),
            (&["cat", "/nonexistent/file"], "", 1),
        ],
    );
}

#[test]
fn jq_dynamic() {
    same_both_ways(
        "jq",
        "memfd",
        &[
            (&["-c", ".a[2]"], r#"{"a": [1, 2, {"b": "c"}]}"#, 0),
            (&["."], "not json", 4),
            (&["-e", ".missing"], "{}", 1),
        ],
    );
}

#[test]
fn ripgrep_rust() {
    // 4.4 MiB: over the auto policy's memfd size.
    same_both_ways_in(
        "rg",
        "cache",
        &[
            (&["-n", "--sort", "path", "needle", "."], "", 0),
            (&["-c", "line"], "line one\nline two\nother\n", 0),
            (&["nomatch-anywhere", "."], "", 1),
            (&["(", "."], "", 2),
        ],
        |cwd| {
            fs::write(cwd.join("a.txt"), "a needle here\nother\n").unwrap();
            fs::write(cwd.join("b.txt"), "no\nneedle again\n").unwrap();
        },
    );
}

#[test]
fn bun_large_single_file_elf() {
    let size = fs::metadata(direct_path("bun")).unwrap().len();
    assert!(size >= 80 << 20, "bun is {size} bytes: the corpus needs a single-file ELF of at least 80 MB");
    // Over the auto policy's memfd size: from the cache.
    same_both_ways(
        "bun",
        "cache",
        &[
            (&["--version"], "", 0),
            (&["-e", "console.log('out', 6 * 7); console.error('err'); process.exit(4)"], "", 4),
            (&["-e", "throw new Error('on purpose')"], "", 1),
        ],
    );
}

#[test]
fn caddy_go_links_os_executable_so_runs_from_cache() {
    let world = World::new();
    let (_, why, _) = runner_of(&world, "caddy");
    assert!(why.contains("os.Executable"), "caddy's runner reason should name os.Executable: {why}");
    drop(world);
    same_both_ways("caddy", "cache", &[(&["version"], "", 0), (&["nosuch-command"], "", 1)]);
}

#[test]
fn caddy_runner_memfd_in_components_toml_wins() {
    let world = World::new();
    let (_, why, _) = runner_of(&world, "caddy-memfd");
    assert!(why.contains("components.toml"), "{why}");
    drop(world);
    same_both_ways("caddy-memfd", "memfd", &[(&["version"], "", 0), (&["nosuch-command"], "", 1)]);
}

/// The yamllint cases; a onefile build re-extracts itself on every start (~1.5 s each on a loaded
/// machine), so it gets the first four only.
const YAMLLINT_CASES: &[(&[&str], &str, i32)] = &[
    (&["-f", "parsable", "good.yaml"], "", 0),
    (&["-f", "parsable", "bad.yaml"], "", 1),
    (&["-f", "parsable", "-"], "key: [1,2]\n", 1),
    (&["--no-such-flag"], "", 2),
    (&["--version"], "", 0),
    (&["-f", "parsable", "missing.yaml"], "", 255),
];

fn yamllint(name: &str, cases: &[(&[&str], &str, i32)]) {
    same_both_ways_in(name, "cache", cases, |cwd| {
        fs::write(cwd.join("good.yaml"), "---\na: 1\nb: [1, 2]\n").unwrap();
        fs::write(cwd.join("bad.yaml"), "a: 1\nb:  [1,2]\na: 3\n").unwrap();
    });
}

#[test]
fn yamllint_pyinstaller_onedir() {
    yamllint("yamllint", YAMLLINT_CASES);
}

#[test]
fn yamllint_pyinstaller_onefile() {
    yamllint("yamllint-onefile", &YAMLLINT_CASES[..4]);
}

/// Stops the corpus stigmer's server of HOME and kills whatever still carries HOME.
struct ServerGuard<'a>(&'a World);

impl Drop for ServerGuard<'_> {
    fn drop(&mut self) {
        let mut cmd = self.0.stigmer();
        cmd.args(["server", "stop"]);
        let mut cmd = assert_cmd::Command::from_std(cmd);
        cmd.timeout(Duration::from_secs(40));
        let _ = cmd.output();
        for p in home_procs(self.0.home.path()) {
            kill(p.pid, libc::SIGKILL);
        }
    }
}

#[test]
fn caddy_served_by_stigmer_server_from_config_toml_alone() {
    let world = World::new();
    let port = free_port();
    fs::write(
        world.home.path().join("config.toml"),
        format!(
            "[services.caddy]\nport = {port}\nargs = [\"respond\", \"--listen\", \"127.0.0.1:${{port}}\", \"--body\", \"hello from caddy\"]\nready = {{ http = \"/\" }}\n"
        ),
    )
    .unwrap();
    let _guard = ServerGuard(&world);
    let mut cmd = world.stigmer();
    cmd.arg("server");
    let out = run(cmd);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("All services running"), "{}", describe(&out));
    // Ready means answering: no poll needed.
    assert_eq!(http(port, "GET", "/", None), Ok((200, "hello from caddy".to_owned())));

    let mut cmd = world.stigmer();
    cmd.args(["server", "status", "--json"]);
    let out = run(cmd);
    assert_code(&out, 0);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let caddy = status["services"].as_array().unwrap().iter().find(|s| s["name"] == "caddy").unwrap().clone();
    assert_eq!(caddy["state"], "running", "{status:#}");
    let pid = caddy["pid"].as_i64().unwrap();
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let (_, _, sha256) = runner_of(&world, "caddy");
    assert_eq!(exe, canon(&world.home.path().join("cache").join(&sha256).join("caddy")), "caddy runs from the cache");

    let mut cmd = world.stigmer();
    cmd.args(["server", "stop"]);
    assert_code(&run(cmd), 0);
    assert!(http(port, "GET", "/", None).is_err(), "caddy still answers after stop");
}

/// caddy's `start` spawns `<argv[0]> run`: through a link, argv[0] must stay the path the caller
/// used, or the child is looked up in PATH and not found.
#[test]
fn caddy_start_reruns_itself_through_argv0() {
    let world = World::new();
    let (admin, port) = (free_port(), free_port());
    let config = world.cwd.path().join("caddy.json");
    fs::write(
        &config,
        serde_json::json!({
            "admin": { "listen": format!("127.0.0.1:{admin}") },
            "apps": { "http": { "servers": { "s": {
                "listen": [format!("127.0.0.1:{port}")],
                "routes": [{ "handle": [{ "handler": "static_response", "body": "started" }] }]
            } } } }
        })
        .to_string(),
    )
    .unwrap();
    let _guard = ServerGuard(&world);
    // The caller's PATH does not reach caddy: only argv[0] can.
    let path = "/usr/bin:/bin";
    let link = world.link("caddy");
    let mut cmd = Command::new(&link);
    world.configure(&mut cmd);
    cmd.env("PATH", path).args(["start", "--config"]).arg(&config);
    let (code, err) = run_detaching(cmd, world.cwd.path());
    assert_eq!(code, Some(0), "caddy start through its link:\n{err}");
    assert_eq!(http(port, "GET", "/", None), Ok((200, "started".to_owned())));
    let mut cmd = Command::new(&link);
    world.configure(&mut cmd);
    cmd.env("PATH", path).args(["stop", "--address", &format!("127.0.0.1:{admin}")]);
    assert_code(&run(cmd), 0);
    wait_for(Duration::from_secs(20), "caddy to stop", || http(port, "GET", "/", None).is_err().then_some(()));

    // `stigmer exec caddy` gives argv[0] = "caddy" on purpose: the same start cannot find itself.
    let mut cmd = world.stigmer();
    cmd.env("PATH", path).args(["exec", "caddy", "start", "--config"]).arg(&config);
    let (code, err) = run_detaching(cmd, world.cwd.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("executable file not found in $PATH"), "{err}");
}

/// Runs CMD with stdout and stderr in files under DIR (a server it starts inherits them, so pipes
/// would stay open); its exit code and stderr. Fails after 60 s.
fn run_detaching(mut cmd: Command, dir: &Path) -> (Option<i32>, String) {
    let (out, err) = (dir.join("start.out"), dir.join("start.err"));
    cmd.stdin(std::process::Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap());
    let mut child = ChildGuard(cmd.spawn().unwrap());
    let status = wait_for(Duration::from_secs(60), "the command to exit", || child.0.try_wait().unwrap());
    (status.code(), fs::read_to_string(&err).unwrap())
}

/// build.rs recognises a Go program linking os.Executable, stripped, by its function table and
/// its Go buildinfo; a Go program or a C program that only names it stays on memfd.
#[test]
fn build_sniffs_go_programs_that_link_os_executable() {
    let world = World::new();
    for (name, runner, why) in [
        ("go-exe", "cache", "os.Executable"),
        ("go-exe-memfd", "memfd", "runner = \"memfd\" in components.toml"),
        ("go-mentions", "memfd", "single-file ELF"),
        ("c-mentions", "memfd", "single-file ELF"),
    ] {
        let (got, got_why, _) = runner_of(&world, name);
        assert_eq!(got, runner, "{name}: {got_why}");
        assert!(got_why.contains(why), "{name}: {got_why:?} should say {why:?}");
    }
    same_both_ways("go-mentions", "memfd", &[(&[], "", 0)]);
    same_both_ways("c-mentions", "memfd", &[(&[], "", 0)]);
}

/// From the cache, os.Executable names a real file and the program re-runs itself through it.
#[test]
fn go_program_reruns_itself_through_os_executable_from_the_cache() {
    let world = World::new();
    let out = run(world.command("go-exe", &[]));
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "re-ran itself: child ran\n", "{}", describe(&out));
    assert!(out.stderr.is_empty(), "{}", describe(&out));
    let (_, _, sha256) = runner_of(&world, "go-exe");
    assert_eq!(world.cache_entries(), [sha256]);
}

/// The documented limit: forced onto a memfd (`runner = "memfd"`), os.Executable names
/// `/memfd:NAME (deleted)`, which does not exist, and the program's own error says so.
#[test]
fn go_program_forced_onto_a_memfd_cannot_find_itself() {
    let world = World::new();
    let out = run(world.command("go-exe-memfd", &[]));
    assert_code(&out, 4);
    let err = stderr(&out);
    assert!(err.contains("/memfd:go-exe-memfd"), "{}", describe(&out));
    assert!(world.cache_entries().is_empty());
}

#[test]
fn corpus_dir_is_what_the_binary_embeds() {
    // The comparisons above are only meaningful if the direct runs use the embedded bytes.
    let world = World::new();
    for name in ["busybox", "jq", "rg", "bun", "caddy", "yamllint-onefile", "go-exe", "c-mentions"] {
        let (_, _, sha256) = runner_of(&world, name);
        assert_eq!(sha256_file(&direct_path(name)), sha256, "{name}: corpus dir and binary differ: run `make corpus`");
    }
}
