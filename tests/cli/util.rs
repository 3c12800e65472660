//! Shared test scaffolding: a per-test STIGMER_HOME, commands that reach the
//! real built binary (directly, through a symlink or a hard link), and a parser
//! for the probe fixture's report.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

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
            std::os::unix::fs::symlink(stigmer_bin(), &path).expect("symlink stigmer");
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

/// sha256 of a file, via coreutils' sha256sum (no hashing crate in dev-deps).
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    stdout(&out).split_whitespace().next().unwrap().to_owned()
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

// ---------------------------------------------------------------------------
// `stigmer server`: free ports, a tiny HTTP client, /proc walking, and a
// guard that always stops the server it started.

/// A TCP port that was free a moment ago (bound to 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// sha256 (lower-case hex) of DATA, via coreutils' sha256sum.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut cmd = Command::new("sha256sum");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sha256sum failed");
    stdout(&out).split_whitespace().next().unwrap().to_owned()
}

/// One HTTP/1.0 request to 127.0.0.1:PORT; (status, body). Err when nothing
/// answers or the answer is not HTTP.
pub fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
    use std::io::Read;
    use std::net::TcpStream;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no header end in {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((code, body.to_owned()))
}

/// Polls F every 50 ms until it returns Some, panicking with WHAT after TIMEOUT.
#[track_caller]
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What /proc/PID/stat says: state letter, ppid, process group, session, start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub session: i32,
    pub starttime: u64,
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        pid,
        state: f[0].chars().next()?,
        ppid: f[1].parse().ok()?,
        pgid: f[2].parse().ok()?,
        session: f[3].parse().ok()?,
        starttime: f[19].parse().ok()?,
    })
}

/// The initial environment of PID as NAME=VALUE entries (empty if unreadable).
pub fn proc_environ(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|&c| c == 0).filter(|e| !e.is_empty()).map(|e| String::from_utf8_lossy(e).into_owned()).collect()
        })
        .unwrap_or_default()
}

pub fn proc_cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim_end().to_owned())
        .unwrap_or_default()
}

/// Every process on the system (but this one).
pub fn all_procs() -> Vec<ProcStat> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != me)
        .filter_map(proc_stat)
        .collect()
}

/// Whether the very process described by S (same pid, same start time) still
/// exists, zombie or not.
pub fn still_exists(s: &ProcStat) -> Option<ProcStat> {
    proc_stat(s.pid).filter(|now| now.starttime == s.starttime)
}

/// Describes processes for assertion messages.
pub fn describe_procs(procs: &[ProcStat]) -> String {
    procs
        .iter()
        .map(|p| format!("  pid {} state {} ppid {} pgid {}: {}", p.pid, p.state, p.ppid, p.pgid, proc_cmdline(p.pid)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A service's port variable could leak in from a developer's shell.
pub const SERVER_PORT_VARS: &[&str] =
    &["STIGMER_SERVER_PORT", "STIGMER_WORKFLOW_RUNNER_PORT", "STIGMER_AGENT_RUNNER_PORT"];

/// A sandbox for `stigmer server` with stigmer-server on a free port. Dropping
/// it stops the server (`stigmer server stop`, then SIGKILL to every process
/// whose environment names this STIGMER_HOME), so nothing leaks even when a
/// test fails.
pub struct Server {
    pub sb: Sandbox,
    pub port: u16,
}

impl Server {
    /// config.toml = `[services.stigmer-server] port = <free>` followed by EXTRA.
    pub fn new(extra: &str) -> Server {
        let port = free_port();
        let server = Server::bare(port);
        server.write_config(&format!("[services.stigmer-server]\nport = {port}\n\n{extra}"));
        server
    }

    /// No config.toml written: the test writes its own.
    pub fn bare(port: u16) -> Server {
        Server { sb: Sandbox::new(), port }
    }

    pub fn home(&self) -> &Path {
        self.sb.home()
    }

    pub fn config_path(&self) -> PathBuf {
        self.home().join("config.toml")
    }

    pub fn write_config(&self, text: &str) {
        fs::write(self.config_path(), text).unwrap();
    }

    /// `stigmer ARGS...` in this sandbox.
    pub fn stigmer(&self, args: &[&str]) -> Command {
        self.stigmer_from(&stigmer_bin(), args)
    }

    /// The same through another stigmer binary (a copy, another build).
    pub fn stigmer_from(&self, exe: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(exe);
        self.sb.configure(&mut cmd);
        for var in SERVER_PORT_VARS {
            cmd.env_remove(var);
        }
        cmd.args(args);
        cmd
    }

    /// `stigmer server ARGS...`, run to completion.
    pub fn server(&self, args: &[&str]) -> Output {
        let mut all = vec!["server"];
        all.extend_from_slice(args);
        run(self.stigmer(&all))
    }

    /// `stigmer server` (detached), asserted to succeed with every service ready.
    #[track_caller]
    pub fn start(&self) -> Output {
        let out = self.server(&[]);
        assert_code(&out, 0);
        assert!(stdout(&out).contains("All services running"), "{}", describe(&out));
        out
    }

    #[track_caller]
    pub fn stop(&self) -> Output {
        let out = self.server(&["stop"]);
        assert_code(&out, 0);
        out
    }

    /// `stigmer server status --json`: (exit code, parsed report).
    #[track_caller]
    pub fn status(&self) -> (i32, serde_json::Value) {
        let out = self.server(&["status", "--json"]);
        let value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}\n{}", describe(&out)));
        (out.status.code().expect("status exited by signal"), value)
    }

    /// The running report, asserting exit 0.
    #[track_caller]
    pub fn running_status(&self) -> serde_json::Value {
        let (code, value) = self.status();
        assert_eq!(code, 0, "status --json: {value:#}");
        assert_eq!(value["running"], true, "{value:#}");
        value
    }

    /// SERVICE's entry of the status report.
    #[track_caller]
    pub fn service(status: &serde_json::Value, name: &str) -> serde_json::Value {
        status["services"]
            .as_array()
            .unwrap_or_else(|| panic!("no services array in {status:#}"))
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("service {name} not in {status:#}"))
            .clone()
    }

    /// Pid of a service from `status --json`.
    #[track_caller]
    pub fn service_pid(&self, name: &str) -> i32 {
        let status = self.running_status();
        let s = Self::service(&status, name);
        s["pid"].as_i64().unwrap_or_else(|| panic!("{name} has no pid: {s:#}")) as i32
    }

    #[track_caller]
    pub fn supervisor_pid(&self) -> i32 {
        self.running_status()["supervisor_pid"].as_i64().expect("supervisor_pid") as i32
    }

    /// Polls `status --json` until every named service is "running".
    #[track_caller]
    pub fn wait_running(&self, names: &[&str]) -> serde_json::Value {
        wait_for(Duration::from_secs(20), &format!("{names:?} running"), || {
            let (code, st) = self.status();
            (code == 0 && names.iter().all(|n| Self::service(&st, n)["state"] == "running")).then_some(st)
        })
    }

    /// POST /v1/jobs; the new job's id.
    #[track_caller]
    pub fn submit(&self, kind: &str, input: &str) -> String {
        submit_job(self.port, kind, input)
    }

    /// Polls GET /v1/jobs/ID until the job is done (panics if it failed).
    #[track_caller]
    pub fn wait_done(&self, id: &str) -> serde_json::Value {
        wait_job_done(self.port, id)
    }

    /// Processes whose environment names this STIGMER_HOME.
    pub fn home_procs(&self) -> Vec<ProcStat> {
        home_procs(self.home())
    }
}

/// Every process (but this one) whose initial environment has STIGMER_HOME=HOME.
pub fn home_procs(home: &Path) -> Vec<ProcStat> {
    let entry = format!("STIGMER_HOME={}", home.display());
    all_procs().into_iter().filter(|p| proc_environ(p.pid).contains(&entry)).collect()
}

#[track_caller]
pub fn submit_job(port: u16, kind: &str, input: &str) -> String {
    let body = serde_json::json!({ "kind": kind, "input": input }).to_string();
    let (code, text) = http(port, "POST", "/v1/jobs", Some(&body)).unwrap_or_else(|e| panic!("POST /v1/jobs: {e}"));
    assert_eq!(code, 201, "POST /v1/jobs: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {text}")).to_owned()
}

#[track_caller]
pub fn get_job(port: u16, id: &str) -> serde_json::Value {
    let (code, text) = http(port, "GET", &format!("/v1/jobs/{id}"), None).unwrap_or_else(|e| panic!("GET job: {e}"));
    assert_eq!(code, 200, "GET /v1/jobs/{id}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[track_caller]
pub fn wait_job_done(port: u16, id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let last = get_job(port, id);
        match last["status"].as_str() {
            Some("done") => return last,
            Some("failed") => panic!("job {id} failed: {last:#}"),
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            panic!("job {id} not done within 20 s: {last:#}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut cmd = assert_cmd::Command::from_std(self.stigmer(&["server", "stop"]));
        cmd.timeout(Duration::from_secs(40));
        let _ = cmd.output();
        // Last resort: whatever still carries this home in its environment.
        for p in self.home_procs() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
    }
}

/// A child process of the test that is SIGKILLed and reaped when dropped.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------
// Torture suite: a seeded random source, tmpfs mounts, leftovers, /proc lookups.

/// A small xorshift64* generator. The seed comes from STIGMER_TORTURE_SEED or the clock and is
/// printed, so a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(what: &str) -> Rng {
        let seed = std::env::var("STIGMER_TORTURE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("{what}: STIGMER_TORTURE_SEED={seed}");
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..=max.
    pub fn upto(&mut self, max: u64) -> u64 {
        self.next_u64() % (max + 1)
    }
}

/// A tmpfs mounted over an existing directory for the life of the guard (root only).
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs with OPTIONS (e.g. "size=8m,noexec") on DIR; None, with the reason
    /// printed, when not root. A failing mount as root is a test failure, not a skip.
    pub fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("{options},mode=0755"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount -t tmpfs -o {options} {}: {}", dir.display(), describe(&out));
        Some(Tmpfs { dir: dir.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Paths under DIR that a fill or a removal leaves behind when interrupted (".tmp", ".trash").
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.contains(".tmp") || n.contains(".trash")
        })
        .collect()
}

/// Removes PATH (a file or a tree) whatever its modes.
pub fn remove_tree(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else { return };
    if meta.is_dir() {
        for p in walk(path).into_iter().chain([path.to_path_buf()]) {
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o700));
            }
        }
        fs::remove_dir_all(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    } else {
        fs::remove_file(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
}

/// Sends SIG to PID, ignoring a process that is already gone.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// The supervisor (`stigmer server --supervise`) of HOME, if one runs.
pub fn supervisor_of(home: &Path) -> Option<ProcStat> {
    home_procs(home).into_iter().find(|p| proc_cmdline(p.pid).contains("--supervise") && p.state != 'Z')
}

/// `unshare` into a new pid namespace with its own /proc, set vm.memfd_noexec (per pid
/// namespace) to VALUE there, then exec PROGRAM ARGS. None, with the reason printed, when not root.
pub fn with_memfd_noexec(sb: &Sandbox, value: u8, program: &Path, args: &[&str]) -> Option<Command> {
    if !is_root() {
        eprintln!("skipped: vm.memfd_noexec needs root to set in a new pid namespace");
        return None;
    }
    let mut cmd = Command::new("unshare");
    sb.configure(&mut cmd);
    cmd.args(["--pid", "--fork", "--mount-proc", "sh", "-c"])
        .arg(format!(r#"echo {value} > /proc/sys/vm/memfd_noexec && exec "$@""#))
        .arg("sh")
        .arg(program)
        .args(args);
    Some(cmd)
}
