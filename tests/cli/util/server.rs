//! `stigmer server`: free ports, a tiny HTTP client, the jobs API, and a guard that always stops
//! the server it started.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::*;

/// A TCP port that was free a moment ago (bound to 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// One HTTP/1.0 request to 127.0.0.1:PORT; (status, body). Err when nothing
/// answers or the answer is not HTTP.
pub fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
    http_to(std::net::SocketAddr::from(([127, 0, 0, 1], port)), method, path, body)
}

/// One HTTP/1.0 request to ADDR (a container's address); as `http`.
pub fn http_to(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    use std::io::Read;
    use std::net::TcpStream;
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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

/// The reference services switched off: tests that declare their own services start with it.
pub const NO_REFERENCE: &str = "[services.stigmer-server]\nenabled = false\n[services.workflow-runner]\nenabled = false\n[services.agent-runner]\nenabled = false\n";

/// A service's port variable could leak in from a developer's shell.
pub const SERVER_PORT_VARS: &[&str] =
    &["STIGMER_SERVER_PORT", "STIGMER_WORKFLOW_RUNNER_PORT", "STIGMER_AGENT_RUNNER_PORT"];

/// A sandbox for `stigmer server` with stigmer-server on a free port, run by the test's own
/// user or by another one (a [`UserWorld`]: its own copy of the binary, its home under
/// root-owned directories). Dropping it stops the server (`stigmer server stop`, then SIGKILL
/// to every process whose environment names this STIGMER_HOME), so nothing leaks even when a
/// test fails.
pub struct Server {
    pub sb: Sandbox,
    pub port: u16,
    /// The other user who runs this server, if one does.
    pub user: Option<UserWorld>,
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
        Server { sb: Sandbox::new(), port, user: None }
    }

    /// As [`Server::new`], run by UID (None: the test's own user) in a world of its own.
    pub fn new_as(uid: Option<u32>, extra: &str) -> Server {
        let port = free_port();
        let server = Server::bare_as(uid, port);
        server.write_config(&format!("[services.stigmer-server]\nport = {port}\n\n{extra}"));
        server
    }

    /// As [`Server::bare`], run by UID (None: the test's own user).
    pub fn bare_as(uid: Option<u32>, port: u16) -> Server {
        Server { sb: Sandbox::new(), port, user: uid.map(UserWorld::of) }
    }

    /// Who runs it, for messages.
    pub fn who(&self) -> String {
        match &self.user {
            Some(world) => format!("uid {}", world.uid),
            None => "the test's own user".into(),
        }
    }

    pub fn home(&self) -> &Path {
        match &self.user {
            Some(world) => &world.home,
            None => self.sb.home(),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.home().join("config.toml")
    }

    /// Writes config.toml, owned by whoever runs the server.
    pub fn write_config(&self, text: &str) {
        fs::write(self.config_path(), text).unwrap();
        if let Some(world) = &self.user {
            std::os::unix::fs::chown(self.config_path(), Some(world.uid), Some(world.uid)).unwrap();
        }
    }

    /// `stigmer ARGS...` in this sandbox, as whoever runs the server.
    pub fn stigmer(&self, args: &[&str]) -> Command {
        let Some(world) = &self.user else { return self.stigmer_from(&stigmer_bin(), args) };
        let mut cmd = world.stigmer(args);
        for var in STIGMER_VARS.iter().chain(SERVER_PORT_VARS).filter(|v| **v != "STIGMER_HOME") {
            cmd.env_remove(var);
        }
        cmd
    }

    /// `sh -c SCRIPT` as whoever runs the server (what a service of it sees when run directly).
    pub fn sh(&self, script: &str) -> Command {
        match &self.user {
            Some(world) => world.sh(&world.user_home, script),
            None => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg(script);
                cmd
            }
        }
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
            kill(p.pid, libc::SIGKILL);
        }
    }
}
