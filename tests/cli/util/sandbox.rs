//! The launcher's side: a per-test STIGMER_HOME, commands that reach the real built binary
//! (directly, through a symlink or a hard link), running them, the probe fixture's report,
//! `components --json`, and file hashes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// Environment variables of the launcher that every test clears unless it is
/// testing them, so a developer's shell cannot change the outcome.
pub const STIGMER_VARS: &[&str] = &["STIGMER_HOME", "STIGMER_RUNNER", "STIGMER_LOG", "STIGMER_FORCE_ARG0"];

/// Every component the fixture build produces (sorted, as `--list` prints them):
/// the test fixtures plus the reference services (agent-runner, stigmer-server,
/// workflow-runner) that `stigmer server` runs.
pub const ALL_COMPONENTS: &[&str] = &[
    "agent-runner",
    "big-probe",
    "hello-script",
    "loop-script",
    "probe",
    "probe-cached",
    "probe-static",
    "probe-zstd",
    "pyapp",
    "pyapp-onefile",
    "shdir",
    "stigmer-server",
    "workflow-runner",
];

/// The stigmer binary cargo built for this test run.
pub fn stigmer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stigmer"))
}

/// A copy of this binary whose GNU build-id note differs, as an upgrade's would.
pub fn other_build(dir: &Path) -> PathBuf {
    let other = dir.join("stigmer");
    let mut bytes = fs::read(stigmer_bin()).unwrap();
    let header: Vec<u8> = [4u32, 20, 3].iter().flat_map(|w| w.to_ne_bytes()).chain(*b"GNU\0").collect();
    let at = bytes.windows(header.len()).position(|w| w == header.as_slice()).expect("a GNU build-id note");
    bytes[at + 16] ^= 0xff;
    fs::write(&other, &bytes).unwrap();
    fs::set_permissions(&other, fs::Permissions::from_mode(0o755)).unwrap();
    other
}

/// The fixture components directory the binary was built with. Fails (never
/// skips) when the tests were started without the fixtures.
pub fn fixtures_dir() -> PathBuf {
    let dir = std::env::var_os("STIGMER_COMPONENTS_DIR").unwrap_or_else(|| {
        panic!(
            "STIGMER_COMPONENTS_DIR is not set: the tests need the fixture components. \
             Run them with `make test` (it builds tests/fixtures and sets the variable)."
        )
    });
    let dir = PathBuf::from(dir);
    assert!(dir.join("probe").is_file(), "fixture components missing in {}: run `make test`", dir.display());
    dir
}

/// A fresh temporary directory on the target filesystem (exec allowed, same
/// filesystem as the binary so hard links work).
pub fn tempdir() -> TempDir {
    tempfile::Builder::new().prefix("stigmer-test-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("create temp dir")
}

/// One test's world: its own STIGMER_HOME and a directory for links.
pub struct Sandbox {
    pub home: TempDir,
    pub links: TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        fixtures_dir();
        Sandbox { home: tempdir(), links: tempdir() }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// `$STIGMER_HOME/cache` as the launcher should spell it.
    pub fn cache(&self) -> PathBuf {
        self.home().join("cache")
    }

    /// Apply the sandbox environment to any command.
    pub fn configure(&self, cmd: &mut Command) {
        for var in STIGMER_VARS {
            cmd.env_remove(var);
        }
        cmd.env("STIGMER_HOME", self.home());
        cmd.stdin(Stdio::null());
    }

    /// The binary itself (argv[0] basename `stigmer`): the CLI.
    pub fn stigmer(&self) -> Command {
        let mut cmd = Command::new(stigmer_bin());
        self.configure(&mut cmd);
        cmd
    }

    /// A symlink NAME -> stigmer in the sandbox's link dir.
    pub fn link(&self, name: &str) -> PathBuf {
        let path = self.links.path().join(name);
        if fs::symlink_metadata(&path).is_err() {
            // Threads of one test may make the same link at once: the loser finds it made.
            match std::os::unix::fs::symlink(stigmer_bin(), &path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => panic!("symlink stigmer: {e}"),
                _ => {}
            }
        }
        path
    }

    /// The argv[0] a component started by `component(NAME)` receives: the link's path, as given.
    pub fn arg0(&self, name: &str) -> String {
        self.link(name).to_str().expect("UTF-8 temp path").to_owned()
    }

    /// A command running component NAME through a symlink named after it.
    pub fn component(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.link(name));
        self.configure(&mut cmd);
        cmd
    }

    /// Names of the entries directly in the cache dir that are not hidden.
    pub fn cache_entries(&self) -> Vec<String> {
        visible_entries(&self.cache())
    }
}

/// Non-hidden entry names of DIR (sorted); empty when DIR does not exist.
pub fn visible_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with('.')).collect()
        }
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Every path under DIR (recursive, not following symlinks).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for entry in rd {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

/// Asserts no fill leftovers (names containing ".tmp") remain under DIR.
pub fn assert_no_temp_items(dir: &Path) {
    let leftovers: Vec<_> =
        walk(dir).into_iter().filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp")).collect();
    assert!(leftovers.is_empty(), "temp items left behind: {leftovers:?}");
}

/// Runs CMD feeding STDIN, with a timeout so a hang fails instead of blocking.
pub fn run_with_input(cmd: Command, stdin: &[u8]) -> Output {
    let mut cmd = assert_cmd::Command::from_std(cmd);
    cmd.write_stdin(stdin.to_vec());
    cmd.timeout(Duration::from_secs(60));
    cmd.output().expect("run command")
}

/// Runs CMD (stdin null) with a generous timeout.
pub fn run(cmd: Command) -> Output {
    let mut cmd = assert_cmd::Command::from_std(cmd);
    cmd.timeout(Duration::from_secs(60));
    cmd.output().expect("run command")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Describes an Output for assertion messages.
pub fn describe(out: &Output) -> String {
    format!("status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", out.status, stdout(out), stderr(out))
}

/// Asserts OUT exited with CODE.
#[track_caller]
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", describe(out));
}

/// Asserts a launcher failure: exit CODE and exactly one line on stderr.
#[track_caller]
pub fn assert_launcher_error(out: &Output, code: i32) -> String {
    assert_code(out, code);
    let err = stderr(out);
    assert_eq!(err.trim_end().lines().count(), 1, "launcher errors are one line on stderr\n{}", describe(out));
    err
}

/// What the probe fixture reported about itself.
#[derive(Debug, Default)]
pub struct Probe {
    pub variant: Option<String>,
    pub argv: Vec<String>,
    pub cwd: String,
    pub exe: String,
    pub pid: u32,
    pub env: BTreeMap<String, String>,
    /// Everything after the report (stdin echo).
    pub rest: String,
}

impl Probe {
    pub fn parse(text: &str) -> Probe {
        let mut probe = Probe::default();
        let mut argc = None;
        let mut lines = text.split_inclusive('\n');
        for line in lines.by_ref() {
            let l = line.strip_suffix('\n').unwrap_or(line);
            if let Some(v) = l.strip_prefix("variant=") {
                probe.variant = Some(v.to_owned());
            } else if let Some(v) = l.strip_prefix("argc=") {
                argc = Some(v.parse::<usize>().expect("argc"));
            } else if let Some(rest) = l.strip_prefix("argv[") {
                let (_, v) = rest.split_once("]=").expect("argv line");
                probe.argv.push(v.to_owned());
            } else if let Some(v) = l.strip_prefix("cwd=") {
                probe.cwd = v.to_owned();
            } else if let Some(v) = l.strip_prefix("exe=") {
                probe.exe = v.to_owned();
            } else if let Some(v) = l.strip_prefix("pid=") {
                probe.pid = v.parse().expect("pid");
                break;
            } else {
                panic!("unexpected probe line {l:?} in:\n{text}");
            }
        }
        let mut rest = String::new();
        let mut in_env = true;
        for line in lines {
            let l = line.strip_suffix('\n').unwrap_or(line);
            if in_env {
                if let Some(kv) = l.strip_prefix("env:") {
                    let (k, v) = kv.split_once('=').expect("env line");
                    probe.env.insert(k.to_owned(), v.to_owned());
                    continue;
                }
                in_env = false;
            }
            rest.push_str(line);
        }
        probe.rest = rest;
        assert_eq!(Some(probe.argv.len()), argc, "argc does not match argv lines in:\n{text}");
        assert!(probe.pid != 0, "no pid line in probe output:\n{text}");
        probe
    }

    /// Parses OUT's stdout after asserting it succeeded.
    #[track_caller]
    pub fn from_success(out: &Output) -> Probe {
        assert!(out.status.success(), "{}", describe(out));
        Probe::parse(&stdout(out))
    }
}

/// What `stigmer components --json` says about one component.
#[derive(Debug, Clone)]
pub struct ComponentInfo {
    pub name: String,
    pub kind: String,
    pub size: u64,
    pub stored_size: u64,
    pub sha256: String,
    pub runner: String,
    pub compression: String,
    pub version: Option<String>,
}

/// Reads the embedded component table through `stigmer components --json`.
pub fn components(sandbox: &Sandbox) -> Vec<ComponentInfo> {
    let mut cmd = sandbox.stigmer();
    cmd.args(["components", "--json"]);
    let out = run(cmd);
    assert_code(&out, 0);
    let value: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", describe(&out)));
    let array = value.as_array().expect("components --json prints an array");
    array
        .iter()
        .map(|c| {
            let s = |k: &str| {
                c.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_else(|| panic!("key {k} missing or not a string in {c}"))
                    .to_owned()
            };
            let n = |k: &str| {
                c.get(k).and_then(|v| v.as_u64()).unwrap_or_else(|| panic!("key {k} missing or not a number in {c}"))
            };
            let version = match c.get("version") {
                Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(v)) => Some(v.clone()),
                other => panic!("version must be a string or null, got {other:?} in {c}"),
            };
            ComponentInfo {
                name: s("name"),
                kind: s("kind"),
                size: n("size"),
                stored_size: n("stored_size"),
                sha256: s("sha256"),
                runner: s("runner"),
                compression: s("compression"),
                version,
            }
        })
        .collect()
}

/// One component's row from `components --json`.
pub fn component_info(sandbox: &Sandbox, name: &str) -> ComponentInfo {
    components(sandbox)
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("component {name} not in `components --json`"))
}

/// sha256 (lower-case hex) of a file's bytes.
pub fn sha256_file(path: &Path) -> String {
    use std::io::Read;
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf).unwrap_or_else(|e| panic!("read {}: {e}", path.display())) {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    hex::encode(hasher.finalize())
}

/// sha256 (lower-case hex) of DATA.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Canonical form of PATH, for comparing with what a program reports.
pub fn canon(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|e| panic!("canonicalize {}: {e}", path.display()))
}

/// Where the cache runner puts a component's entry point.
pub fn cached_entry_point(sandbox: &Sandbox, info: &ComponentInfo) -> PathBuf {
    let entry = sandbox.cache().join(&info.sha256).join(&info.name);
    if info.kind == "dir" { entry.join(&info.name) } else { entry }
}

/// The memfd runner's `/proc/self/exe` for component NAME.
pub fn memfd_exe(name: &str) -> String {
    format!("/memfd:{name} (deleted)")
}

/// Overwrites one byte of FILE in place (same size, same inode).
pub fn flip_byte(file: &Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom};
    let mut perms = fs::metadata(file).unwrap().permissions();
    let mode = perms.mode();
    perms.set_mode(mode | 0o200);
    fs::set_permissions(file, perms.clone()).unwrap();
    let mut f = fs::OpenOptions::new().read(true).write(true).open(file).unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
    drop(f);
    perms.set_mode(mode);
    fs::set_permissions(file, perms).unwrap();
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
