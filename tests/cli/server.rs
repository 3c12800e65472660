//! `stigmer server`: the real binary supervising the real reference services
//! (Go stigmer-server and workflow-runner, PyInstaller agent-runner), each
//! test in its own STIGMER_HOME with stigmer-server on a free port. Every
//! test's `Server` guard stops what it started, even when the test fails.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

const SERVICES: &[&str] = &["stigmer-server", "workflow-runner", "agent-runner"];

/// The analysis agent-runner wrote for INPUT (the job's output is a JSON string).
#[track_caller]
fn assert_analysis(job: &Value, input: &str) {
    assert_eq!(job["status"], "done", "{job:#}");
    assert_eq!(job["input"], input, "{job:#}");
    let output = job["output"].as_str().unwrap_or_else(|| panic!("output is not a string: {job:#}"));
    let a: Value = serde_json::from_str(output).unwrap_or_else(|e| panic!("output is not JSON ({e}): {output}"));
    assert_eq!(a["sha256"], sha256_hex(input.as_bytes()), "{a:#}");
    assert_eq!(a["engine"], "agent-runner", "{a:#}");
    // Words as agent-runner counts them (\w+); the test inputs keep punctuation apart.
    let words = input.split(|c: char| !c.is_alphanumeric() && c != '_').filter(|w| !w.is_empty()).count();
    assert_eq!(a["words"], words, "{a:#}");
    assert!(a["tls"].as_str().is_some_and(|t| t.contains("SSL")), "agent-runner reports its TLS library: {a:#}");
}

/// Services by name -> pid, asserting every one of SERVICES is running.
#[track_caller]
fn running_pids(status: &Value) -> Vec<(String, i32)> {
    SERVICES
        .iter()
        .map(|n| {
            let s = Server::service(status, n);
            assert_eq!(s["state"], "running", "{status:#}");
            (n.to_string(), s["pid"].as_i64().unwrap_or_else(|| panic!("no pid: {s:#}")) as i32)
        })
        .collect()
}

#[test]
fn start_runs_all_services_and_jobs_complete_through_the_embedded_agent_runner() {
    let srv = Server::new("");
    let out = srv.start();
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..3],
        ["Starting stigmer-server... ✓", "Starting workflow-runner... ✓", "Starting agent-runner... ✓"],
        "services start in dependency order\n{}",
        describe(&out)
    );
    assert!(lines[3].starts_with("All services running"), "{}", describe(&out));

    let status = srv.running_status();
    assert_eq!(status["ready"], true, "{status:#}");
    let names: Vec<_> = status["services"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, SERVICES, "{status:#}");
    running_pids(&status);
    let ss = Server::service(&status, "stigmer-server");
    assert_eq!(ss["port"], srv.port, "{ss:#}");
    assert_eq!(ss["addr"], format!("127.0.0.1:{}", srv.port), "{ss:#}");
    assert_eq!(http(srv.port, "GET", "/healthz", None).unwrap().0, 200);

    // $STIGMER_HOME/bin/agent-runner is a symlink to the supervisor's pinned copy of this very
    // binary (in the cache, so that an upgrade cannot pull it away).
    let link = srv.home().join("bin/agent-runner");
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "{}", link.display());
    assert!(canon(&link).starts_with(canon(&srv.home().join("cache"))), "{}", link.display());
    assert_eq!(sha256_file(&link), sha256_file(&stigmer_bin()));

    let wf_input = "the quick brown fox jumps over the lazy dog — naïve café";
    let ag_input = "agent job: to be or not to be, that is the question";
    let wf = srv.submit("workflow", wf_input);
    let ag = srv.submit("agent", ag_input);
    let wf_job = srv.wait_done(&wf);
    let ag_job = srv.wait_done(&ag);
    assert_eq!(wf_job["kind"], "workflow");
    assert_eq!(ag_job["kind"], "agent");
    assert_analysis(&wf_job, wf_input);
    assert_analysis(&ag_job, ag_input);
    let top: Value = serde_json::from_str(wf_job["output"].as_str().unwrap()).unwrap();
    assert_eq!(top["top_word"], "the", "{top:#}");

    // The onedir agent-runner ran from the cache: its entry exists under this home.
    let info = component_info(&srv.sb, "agent-runner");
    let entry = cached_entry_point(&srv.sb, &info);
    assert!(entry.is_file(), "agent-runner cache entry {} missing", entry.display());
    // workflow-runner really ran `agent-runner run` for the workflow job.
    let wf_log = fs::read_to_string(srv.home().join("logs/workflow-runner.log")).unwrap();
    assert!(wf_log.contains(&wf), "workflow-runner's log mentions job {wf}:\n{wf_log}");
}

#[test]
fn killed_service_is_restarted() {
    let srv = Server::new("");
    srv.start();
    let old = srv.service_pid("stigmer-server");
    let others: Vec<i32> = ["workflow-runner", "agent-runner"].iter().map(|n| srv.service_pid(n)).collect();
    signal(old, libc::SIGKILL);
    let st = wait_for(Duration::from_secs(20), "stigmer-server restarted and running", || {
        let (code, st) = srv.status();
        let s = Server::service(&st, "stigmer-server");
        (code == 0 && s["state"] == "running" && s["pid"].as_i64().is_some_and(|p| p as i32 != old)).then_some(s)
    });
    assert!(st["restarts"].as_u64().unwrap() >= 1, "{st:#}");
    assert_eq!(st["last_exit"], "signal SIGKILL", "{st:#}");
    let status = srv.running_status();
    let now: Vec<i32> = ["workflow-runner", "agent-runner"]
        .iter()
        .map(|n| Server::service(&status, n)["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(now, others, "the other services were not touched: {status:#}");
    // The restarted server serves jobs again.
    let input = "after the restart";
    let id = srv.submit("workflow", input);
    assert_analysis(&srv.wait_done(&id), input);
}

#[test]
fn crash_looping_service_is_marked_failed_and_the_others_keep_running() {
    let srv = Server::new(
        r#"
[services.crashy]
command = "probe"
env = { PROBE_EXIT = "1" }
ready = { started_ms = 0 }

[supervisor]
restart_limit = 3
backoff_max_ms = 200
"#,
    );
    let out = srv.server(&[]);
    assert_code(&out, 0);
    let crashy = wait_for(Duration::from_secs(20), "crashy failed", || {
        let (_, st) = srv.status();
        let s = Server::service(&st, "crashy");
        (s["state"] == "failed").then_some(s)
    });
    let message = crashy["message"].as_str().unwrap_or_default();
    assert!(message.contains("crash loop"), "{crashy:#}");
    assert_eq!(crashy["last_exit"], "exit 1", "{crashy:#}");
    assert_eq!(crashy["pid"], Value::Null, "{crashy:#}");
    assert_eq!(crashy["restarts"], 2, "3 failures = the first start and 2 restarts: {crashy:#}");
    // Its log was appended across the restarts: three reports from probe.
    let log = fs::read_to_string(srv.home().join("logs/crashy.log")).unwrap();
    // Started through its link in $STIGMER_HOME/bin, whose path is argv[0].
    let starts = log.lines().filter(|l| l.contains("argv[0]=") && l.ends_with("/bin/probe")).count();
    assert_eq!(starts, 3, "{log}");
    // The others are untouched and keep running a while later.
    std::thread::sleep(Duration::from_millis(700));
    let status = srv.running_status();
    for (name, _) in running_pids(&status) {
        assert_eq!(Server::service(&status, &name)["restarts"], 0, "{status:#}");
    }
    assert_eq!(Server::service(&status, "crashy")["state"], "failed");
    let table = stdout(&srv.server(&["status"]));
    assert!(
        table.lines().any(|l| l.starts_with("crashy") && l.contains("failed") && l.contains("crash loop")),
        "{table}"
    );
}

#[test]
fn stop_leaves_no_process_of_the_tree() {
    let srv = Server::new("");
    srv.start();
    let id = srv.submit("workflow", "one job so that agent-runner ran once");
    srv.wait_done(&id);
    let status = srv.running_status();
    let supervisor = status["supervisor_pid"].as_i64().unwrap() as i32;
    let keeper = status["keeper_pid"].as_i64().expect("a detached supervisor has a keeper") as i32;
    let services = running_pids(&status);
    let groups: BTreeSet<i32> = services.iter().map(|(_, p)| *p).collect();
    let home_env = format!("STIGMER_HOME={}", srv.home().display());
    let tree: Vec<ProcStat> = all_procs()
        .into_iter()
        .filter(|p| {
            p.pid == supervisor
                || p.pid == keeper
                || p.session == keeper
                || groups.contains(&p.pgid)
                || proc_environ(p.pid).contains(&home_env)
        })
        .collect();
    let pids: BTreeSet<i32> = tree.iter().map(|p| p.pid).collect();
    assert!(pids.contains(&supervisor), "supervisor {supervisor} not found:\n{}", describe_procs(&tree));
    for (name, pid) in &services {
        assert!(pids.contains(pid), "{name} ({pid}) not found:\n{}", describe_procs(&tree));
        let s = proc_stat(*pid).unwrap();
        assert_eq!(s.pgid, *pid, "{name} leads its own process group");
        assert_eq!(s.ppid, supervisor, "{name} is the supervisor's child");
    }
    assert!(pids.contains(&keeper), "keeper {keeper} not found:\n{}", describe_procs(&tree));
    let sup = proc_stat(supervisor).unwrap();
    assert_eq!(sup.ppid, keeper, "the keeper is the supervisor's parent");
    assert_eq!(sup.session, keeper, "the detached server leads its own session (the keeper's)");
    assert_eq!(proc_comm(keeper), "stigmer-keeper", "the keeper is named");

    let out = srv.stop();
    assert!(stdout(&out).contains("stigmer server stopped"), "{}", describe(&out));
    // The services were reaped by the supervisor before it exited: gone at once.
    let service_procs: Vec<ProcStat> = tree.iter().filter(|p| groups.contains(&p.pid)).copied().collect();
    assert_all_gone(&service_procs, Duration::ZERO, "services after stop");
    // The keeper itself is reaped by whoever adopted it; allow a moment.
    assert_all_gone(&tree, Duration::from_secs(2), "process tree after stop");
    assert!(srv.home_procs().is_empty(), "{}", describe_procs(&srv.home_procs()));

    let (code, st) = srv.status();
    assert_eq!(code, 3, "{st:#}");
    assert_eq!(st["running"], false, "{st:#}");
    let again = srv.server(&["stop"]);
    assert_code(&again, 0);
    assert!(stdout(&again).contains("not running"), "{}", describe(&again));
}

#[test]
fn killed_supervisor_takes_its_services_along_and_a_new_start_works() {
    let srv = Server::new("");
    srv.start();
    let status = srv.running_status();
    let supervisor = status["supervisor_pid"].as_i64().unwrap() as i32;
    let services: Vec<ProcStat> = running_pids(&status).iter().map(|(_, p)| proc_stat(*p).unwrap()).collect();
    signal(supervisor, libc::SIGKILL);
    assert_all_gone(&services, Duration::from_secs(3), "services after the supervisor was SIGKILLed");
    wait_for(Duration::from_secs(3), "no process of this home left", || srv.home_procs().is_empty().then_some(()));
    let (code, st) = srv.status();
    assert_eq!(code, 3, "a dead supervisor is not running: {st:#}");

    let out = srv.start();
    assert!(stdout(&out).contains("Starting agent-runner... ✓"), "{}", describe(&out));
    let status = srv.running_status();
    assert_ne!(status["supervisor_pid"].as_i64().unwrap() as i32, supervisor, "{status:#}");
    running_pids(&status);
    let input = "after a stale lock";
    let id = srv.submit("agent", input);
    assert_analysis(&srv.wait_done(&id), input);
}

#[test]
fn second_start_is_refused_while_one_runs() {
    let srv = Server::new("");
    srv.start();
    let before = srv.running_status();
    let out = srv.server(&[]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("already running"), "{}", describe(&out));
    let fg = srv.server(&["--foreground"]);
    assert_code(&fg, 1);
    assert!(stderr(&fg).contains("already running"), "{}", describe(&fg));
    let after = srv.running_status();
    assert_eq!(after["supervisor_pid"], before["supervisor_pid"]);
    assert_eq!(running_pids(&after), running_pids(&before), "the first server keeps its services");
}

#[test]
fn busy_port_is_refused_before_anything_starts() {
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = holder.local_addr().unwrap().port();
    let srv = Server::bare(port);
    srv.write_config(&format!("[services.stigmer-server]\nport = {port}\n"));
    let out = srv.server(&[]);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains(&port.to_string()) && err.contains("stigmer-server"), "{}", describe(&out));
    assert!(!stdout(&out).contains("Starting"), "{}", describe(&out));
    assert!(srv.home_procs().is_empty(), "{}", describe_procs(&srv.home_procs()));
    let (code, st) = srv.status();
    assert_eq!(code, 3, "{st:#}");
    assert!(!srv.home().join("data").exists(), "no service ran, so no data dir");
    assert!(!srv.home().join("logs/stigmer-server.log").exists(), "no service ran, so no service log");
    drop(holder);
}

#[test]
fn jobs_survive_a_restart() {
    let srv = Server::new("");
    srv.start();
    let input = "persist me across a restart";
    let id = srv.submit("workflow", input);
    let before = srv.wait_done(&id);
    let old_supervisor = srv.supervisor_pid();

    let out = srv.server(&["restart"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("stigmer server stopped") && text.contains("All services running"), "{}", describe(&out));
    assert_ne!(srv.supervisor_pid(), old_supervisor);

    let after = get_job(srv.port, &id);
    assert_analysis(&after, input);
    assert_eq!(after["output"], before["output"], "{after:#}");

    srv.stop();
    srv.start();
    assert_analysis(&get_job(srv.port, &id), input);
}

#[test]
fn logs_show_each_service_and_prefix_them_all() {
    let srv = Server::new("");
    srv.start();
    let id = srv.submit("workflow", "something to log");
    srv.wait_done(&id);

    let out = srv.server(&["logs", "-c", "stigmer-server", "--stderr", "-n", "5"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty() && lines.len() <= 5, "{}", describe(&out));
    assert!(lines.iter().all(|l| l.get(25..).is_some_and(|l| l.starts_with("stigmer-server ! "))), "{text}");
    assert!(text.contains("/v1/jobs"), "the job's requests are logged\n{text}");

    let all = srv.server(&["logs", "-n", "100"]);
    assert_code(&all, 0);
    let text = stdout(&all);
    let prefixed = |l: &str, name: &str| l.get(25..).is_some_and(|l| l.starts_with(&format!("{name} ")));
    for name in SERVICES {
        assert!(text.lines().any(|l| prefixed(l, name)), "no {name} lines in\n{text}");
    }
    for l in text.lines() {
        assert!(SERVICES.iter().chain(&["supervisor"]).any(|n| prefixed(l, n)), "unprefixed line {l:?} in\n{text}");
    }
    assert!(text.contains("workflow-runner ! workflow-runner: "), "{text}");

    // The file itself, appended across restarts.
    let log = srv.home().join("logs/stigmer-server.log");
    let before = fs::read_to_string(&log).unwrap();
    srv.server(&["restart"]);
    let after = fs::read_to_string(&log).unwrap();
    assert!(after.starts_with(&before) && after.len() > before.len(), "log appended, not truncated");

    let bad = srv.server(&["logs", "-c", "nope"]);
    assert_code(&bad, 1);
    assert!(stderr(&bad).contains("nope"), "{}", describe(&bad));
}

#[test]
fn external_stigmer_server_is_used_and_not_started() {
    let port = free_port();
    let srv = Server::bare(port);
    let data = tempdir();
    let mut cmd = srv.stigmer(&["exec", "stigmer-server"]);
    cmd.env("PORT", port.to_string()).env("STIGMER_DATA_DIR", data.path()).stdout(Stdio::null()).stderr(Stdio::null());
    let hand = ChildGuard(cmd.spawn().expect("start stigmer-server by hand"));
    wait_for(Duration::from_secs(20), "hand-started stigmer-server healthy", || {
        http(port, "GET", "/healthz", None).ok().filter(|(c, _)| *c == 200)
    });
    srv.write_config(&format!("[services.stigmer-server]\nexternal = \"127.0.0.1:{port}\"\n"));

    let out = srv.start();
    let text = stdout(&out);
    assert!(text.contains(&format!("Using stigmer-server at 127.0.0.1:{port}")), "{}", describe(&out));
    assert!(!text.contains("Starting stigmer-server"), "{}", describe(&out));
    assert!(
        text.contains("Starting workflow-runner... ✓") && text.contains("Starting agent-runner... ✓"),
        "{}",
        describe(&out)
    );

    let status = srv.running_status();
    let ss = Server::service(&status, "stigmer-server");
    assert_eq!(ss["state"], "external", "{ss:#}");
    assert_eq!(ss["pid"], Value::Null, "{ss:#}");
    assert_eq!(ss["addr"], format!("127.0.0.1:{port}"), "{ss:#}");
    for name in ["workflow-runner", "agent-runner"] {
        assert_eq!(Server::service(&status, name)["state"], "running", "{status:#}");
    }
    let supervisor = status["supervisor_pid"].as_i64().unwrap() as i32;
    let children: Vec<String> =
        all_procs().iter().filter(|p| p.ppid == supervisor).map(|p| proc_cmdline(p.pid)).collect();
    assert_eq!(children.len(), 2, "the supervisor runs exactly two services: {children:?}");
    let supervised: Vec<ProcStat> = srv
        .home_procs()
        .into_iter()
        .filter(|p| proc_environ(p.pid).iter().any(|e| e == "STIGMER_SERVICE=stigmer-server"))
        .collect();
    assert!(supervised.is_empty(), "no supervised stigmer-server:\n{}", describe_procs(&supervised));

    for (kind, input) in [("workflow", "external workflow"), ("agent", "external agent")] {
        let id = submit_job(port, kind, input);
        assert_analysis(&wait_job_done(port, &id), input);
    }
    srv.stop();
    assert_eq!(http(port, "GET", "/healthz", None).unwrap().0, 200, "stop leaves the external server alone");
    drop(hand);
}

#[test]
fn external_service_that_does_not_answer_is_refused_before_anything_starts() {
    let port = free_port();
    let srv = Server::bare(port);
    srv.write_config(&format!("[services.stigmer-server]\nexternal = \"127.0.0.1:{port}\"\n"));
    let out = srv.server(&[]);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("stigmer-server") && err.contains(&format!("127.0.0.1:{port}")), "{}", describe(&out));
    assert!(!stdout(&out).contains("Starting"), "{}", describe(&out));
    assert!(srv.home_procs().is_empty(), "{}", describe_procs(&srv.home_procs()));
    assert_eq!(srv.status().0, 3);
}

#[test]
fn foreground_prefixes_output_and_stops_on_sigint() {
    let srv = Server::new("");
    let mut cmd = srv.stigmer(&["server", "--foreground"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().expect("spawn --foreground"));
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let pipe = child.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        })
    };
    let fg_pid = child.0.id() as i32;
    let status = srv.wait_running(SERVICES);
    assert_eq!(status["supervisor_pid"], fg_pid, "the foreground process is the supervisor: {status:#}");
    let services: Vec<ProcStat> = running_pids(&status).iter().map(|(_, p)| proc_stat(*p).unwrap()).collect();
    let id = srv.submit("workflow", "foreground job");
    srv.wait_done(&id);
    // `TIME NAME ! text`: past the 24-byte stamp and its space, as `stigmer server logs` prints.
    let body = |l: &str| l.get(25..).unwrap_or_default().to_owned();
    wait_for(Duration::from_secs(10), "prefixed service lines on stdout", || {
        let l: Vec<String> = lines.lock().unwrap().iter().map(|l| body(l)).collect();
        (l.iter().any(|l| l.starts_with("stigmer-server ! ") && l.contains("listening"))
            && l.iter().any(|l| l.starts_with("workflow-runner ! ") && l.contains(&id))
            && l.iter().any(|l| l.starts_with("agent-runner ! ")))
        .then_some(())
    });

    signal(fg_pid, libc::SIGINT);
    let exit = wait_for(Duration::from_secs(20), "--foreground to exit after SIGINT", || child.0.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    reader.join().unwrap();
    assert_all_gone(&services, Duration::ZERO, "services after --foreground exited");
    assert!(srv.home_procs().is_empty(), "{}", describe_procs(&srv.home_procs()));
    assert_eq!(srv.status().0, 3);
    let l = lines.lock().unwrap();
    for line in l.iter().map(|l| body(l)) {
        assert!(
            SERVICES
                .iter()
                .chain(&["supervisor"])
                .any(|n| ["|", "!", "*"].iter().any(|mark| line.starts_with(&format!("{n} {mark} ")))),
            "unprefixed line {line:?} on --foreground's stdout"
        );
    }
}

#[test]
fn config_errors_are_refused_naming_the_cause() {
    // Unknown key.
    let srv = Server::new("[services.agent-runner]\nrestrat = \"always\"\n");
    let out = srv.server(&[]);
    assert_code(&out, 1);
    let path = srv.config_path().display().to_string();
    assert!(stderr(&out).contains(&path) && stderr(&out).contains("restrat"), "{}", describe(&out));
    assert!(srv.home_procs().is_empty());

    // A value of the wrong type.
    srv.write_config(&format!("[services.stigmer-server]\nport = \"{}\"\n", srv.port));
    let out = srv.server(&[]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains(&path), "{}", describe(&out));

    // STIGMER_SERVER_PORT that is not a port.
    srv.write_config(&format!("[services.stigmer-server]\nport = {}\n", srv.port));
    let mut cmd = srv.stigmer(&["server"]);
    cmd.env("STIGMER_SERVER_PORT", "seventy");
    let out = run(cmd);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("STIGMER_SERVER_PORT"), "{}", describe(&out));

    // A dependency cycle.
    srv.write_config(&format!(
        "[services.stigmer-server]\nport = {}\n\n[services.workflow-runner]\ndepends_on = [\"stigmer-server\", \"agent-runner\"]\n\n[services.agent-runner]\ndepends_on = [\"workflow-runner\"]\n",
        srv.port
    ));
    let out = srv.server(&[]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("cycle"), "{}", describe(&out));

    // Names are names, not paths: refused with the line, and nothing is made outside the home.
    for bad in ["../../escaped", ".hidden", "a b", "supervisor"] {
        srv.write_config(&format!(
            "[services.stigmer-server]\nport = {}\n\n[services.{bad:?}]\ncommand = \"sleep\"\nargs = [\"300\"]\n",
            srv.port
        ));
        let out = srv.server(&[]);
        assert_code(&out, 1);
        let want = if bad == "supervisor" { format!("{path}: [services.supervisor]") } else { format!("{path}:4:") };
        assert!(stderr(&out).contains(&want), "{bad:?} refused at line 4: {}", describe(&out));
    }
    assert!(!srv.home().parent().unwrap().parent().unwrap().join("escaped").exists());

    assert!(srv.home_procs().is_empty(), "{}", describe_procs(&srv.home_procs()));
    assert_eq!(srv.status().0, 3);
}

#[test]
fn port_env_var_overrides_the_config() {
    let srv = Server::new("");
    let port = free_port();
    let mut cmd = srv.stigmer(&["server"]);
    cmd.env("STIGMER_SERVER_PORT", port.to_string());
    let out = run(cmd);
    assert_code(&out, 0);
    let status = srv.running_status();
    assert_eq!(Server::service(&status, "stigmer-server")["port"], port, "{status:#}");
    assert_eq!(http(port, "GET", "/healthz", None).unwrap().0, 200);
    assert!(http(srv.port, "GET", "/healthz", None).is_err(), "the config's port is not used");
    let input = "via the env port";
    let id = submit_job(port, "workflow", input);
    assert_analysis(&wait_job_done(port, &id), input);
}

#[test]
fn service_ignoring_sigterm_is_killed_after_its_stop_timeout() {
    let srv = Server::new(
        r#"
[services.stubborn]
command = "sh"
args = ["-c", "trap '' TERM; while :; do sleep 0.1; done"]
stop_timeout_ms = 500
ready = { started_ms = 100 }
"#,
    );
    srv.start();
    let status = srv.running_status();
    let stubborn = Server::service(&status, "stubborn");
    assert_eq!(stubborn["state"], "running", "{stubborn:#}");
    let pid = stubborn["pid"].as_i64().unwrap() as i32;
    let group: Vec<ProcStat> = all_procs().into_iter().filter(|p| p.pgid == pid).collect();
    assert!(group.iter().any(|p| p.pid == pid), "{}", describe_procs(&group));

    let t = Instant::now();
    srv.stop();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    assert!(took >= Duration::from_millis(500), "stop took {took:?}: did it wait for stop_timeout_ms?");
    assert_all_gone(&group, Duration::from_secs(1), "the stubborn service's group after stop");
    let left: Vec<ProcStat> = srv
        .home_procs()
        .into_iter()
        .filter(|p| proc_environ(p.pid).iter().any(|e| e == "STIGMER_SERVICE=stubborn"))
        .collect();
    assert!(left.is_empty(), "{}", describe_procs(&left));
    let log = fs::read_to_string(srv.home().join("logs/supervisor.log")).unwrap();
    assert!(log.contains("stubborn"), "the supervisor logged the kill:\n{log}");
}

#[test]
fn service_exiting_during_start_fails_the_start_and_stops_the_rest() {
    let srv = Server::new(
        r#"
[services.workflow-runner]
command = "probe"
env = { PROBE_EXIT = "3" }
ready = { started_ms = 3000 }
"#,
    );
    let out = srv.server(&[]);
    assert_code(&out, 1);
    let text = stdout(&out);
    assert!(text.contains("Starting stigmer-server... ✓"), "{}", describe(&out));
    assert!(text.contains("Starting workflow-runner... ✗"), "{}", describe(&out));
    assert!(!text.contains("agent-runner"), "agent-runner never started\n{}", describe(&out));
    assert!(!text.contains("All services running"), "{}", describe(&out));
    let err = stderr(&out);
    let log = srv.home().join("logs/workflow-runner.log");
    assert!(err.contains("workflow-runner") && err.contains(&log.display().to_string()), "{}", describe(&out));
    // Everything the supervisor started is gone, and it is gone itself.
    wait_for(Duration::from_secs(5), "no process of this home", || srv.home_procs().is_empty().then_some(()));
    assert_eq!(srv.status().0, 3);
    assert!(http(srv.port, "GET", "/healthz", None).is_err(), "stigmer-server was stopped");
}

#[test]
fn service_never_ready_fails_the_start_after_its_ready_timeout() {
    let port = free_port();
    let srv = Server::new(&format!(
        "[services.agent-runner]\nport = {port}\nready = {{ tcp = true }}\nready_timeout_ms = 700\n"
    ));
    let t = Instant::now();
    let out = srv.server(&[]);
    assert_code(&out, 1);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(stdout(&out).contains("Starting agent-runner... ✗"), "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("agent-runner") && err.contains("not ready"), "{}", describe(&out));
    wait_for(Duration::from_secs(5), "no process of this home", || srv.home_procs().is_empty().then_some(()));
    assert_eq!(srv.status().0, 3);
}

#[test]
fn restart_policies_and_disabled_services() {
    let srv = Server::new(
        r#"
[services.agent-runner]
enabled = false

[services.once]
command = "sh"
args = ["-c", "sleep 0.3; exit 0"]
restart = "never"
ready = { started_ms = 100 }

[services.once-bad]
command = "sh"
args = ["-c", "sleep 0.3; exit 4"]
restart = "never"
ready = { started_ms = 100 }

[services.again]
command = "sh"
args = ["-c", "sleep 0.3; exit 0"]
restart = "always"
ready = { started_ms = 100 }

[supervisor]
backoff_max_ms = 200
restart_limit = 100
"#,
    );
    let out = srv.start();
    assert!(!stdout(&out).contains("agent-runner"), "disabled\n{}", describe(&out));
    let st = wait_for(Duration::from_secs(20), "once stopped, once-bad failed, again restarted twice", || {
        let (_, st) = srv.status();
        (Server::service(&st, "once")["state"] == "stopped"
            && Server::service(&st, "once-bad")["state"] == "failed"
            && Server::service(&st, "again")["restarts"].as_u64().unwrap_or(0) >= 2)
            .then_some(st)
    });
    let names: Vec<_> = st["services"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&"agent-runner"), "{st:#}");
    let once = Server::service(&st, "once");
    assert_eq!((once["restarts"].clone(), once["last_exit"].clone()), (0.into(), "exit 0".into()), "{once:#}");
    let bad = Server::service(&st, "once-bad");
    assert_eq!((bad["restarts"].clone(), bad["last_exit"].clone()), (0.into(), "exit 4".into()), "{bad:#}");
    assert_eq!(Server::service(&st, "again")["last_exit"], "exit 0", "restart = always restarts clean exits too");
    for name in ["stigmer-server", "workflow-runner"] {
        assert_eq!(Server::service(&st, name)["state"], "running", "{st:#}");
    }
}

#[test]
fn services_get_their_data_dir_path_and_substitutions() {
    let probe_port = free_port();
    // sh finds probe through PATH ($STIGMER_HOME/bin first), reports, then stays up.
    let srv = Server::new(&format!(
        r#"
[services.reporter]
command = "sh"
args = ["-c", "probe \"$@\"; exec sleep 300", "sh", "${{port}}", "${{addr}}", "${{data_dir}}", "${{home}}", "${{stigmer-server.addr}}", "${{stigmer-server.port}}"]
port = {probe_port}
depends_on = ["stigmer-server"]
env = {{ PROBE_ENV = "PATH,STIGMER_SERVICE,MY_DIR", MY_DIR = "${{data_dir}}/x" }}
ready = {{ started_ms = 100 }}
"#
    ));
    srv.start();
    // The report as probe wrote it: the text of reporter's stdout lines.
    let text = wait_for(Duration::from_secs(10), "probe's report in reporter's log", || {
        let out = srv.server(&["logs", "--json", "--stdout", "-c", "reporter"]);
        let text: String = stdout(&out)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["text"].as_str().unwrap().to_owned() + "\n")
            .collect();
        text.contains("env:MY_DIR=").then_some(text)
    });
    let p = Probe::parse(&text);
    let home = canon(srv.home());
    let data = home.join("data/reporter");
    let (sp, pp) = (srv.port.to_string(), probe_port.to_string());
    let expect = [
        // sh found it in PATH and passed the name as typed: argv[0] goes through as given.
        "probe".to_owned(),
        pp.clone(),
        format!("127.0.0.1:{pp}"),
        data.display().to_string(),
        home.display().to_string(),
        format!("127.0.0.1:{sp}"),
        sp.clone(),
    ];
    assert_eq!(p.argv, expect, "{text}");
    assert_eq!(canon(std::path::Path::new(&p.cwd)), data, "cwd is the data dir");
    assert!(data.is_dir());
    assert_eq!(p.env["STIGMER_SERVICE"], "reporter");
    assert_eq!(p.env["MY_DIR"], format!("{}/x", data.display()));
    let first = p.env["PATH"].split(':').next().unwrap();
    assert_eq!(canon(std::path::Path::new(first)), home.join("bin"), "PATH = {}", p.env["PATH"]);
    assert_eq!(p.exe, memfd_exe("probe"), "probe ran through the bin symlink -> stigmer -> memfd");
}

#[test]
fn logs_follow_prints_new_lines() {
    let srv = Server::new("");
    srv.start();
    let mut cmd = srv.stigmer(&["server", "logs", "-f", "-n", "0", "-c", "stigmer-server", "--stderr"]);
    cmd.stdout(Stdio::piped());
    let mut follow = ChildGuard(cmd.spawn().unwrap());
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let lines = lines.clone();
        let pipe = follow.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let id = srv.submit("agent", "follow me");
    srv.wait_done(&id);
    wait_for(Duration::from_secs(10), "the job's requests in logs -f", || {
        lines.lock().unwrap().iter().any(|l| l.contains(&format!("/v1/jobs/{id}"))).then_some(())
    });
}

#[test]
fn background_children_of_a_service_die_with_it() {
    // The service leaves a TERM-ignoring child in its process group.
    let srv = Server::new(
        r#"
[services.parent]
command = "sh"
args = ["-c", "sh -c \"trap '' TERM; exec sleep 300\" & exec sleep 300"]
ready = { started_ms = 200 }
stop_timeout_ms = 3000
"#,
    );
    srv.start();
    let pid = srv.service_pid("parent");
    let group = wait_for(Duration::from_secs(5), "the background child", || {
        let g: Vec<ProcStat> = all_procs().into_iter().filter(|p| p.pgid == pid).collect();
        (g.len() >= 2).then_some(g)
    });
    let t = Instant::now();
    srv.stop();
    assert!(t.elapsed() < Duration::from_secs(3), "the group's leader exits at once on TERM: {:?}", t.elapsed());
    assert_all_gone(&group, Duration::from_secs(1), "the service's process group after stop");
    assert!(srv.home_procs().is_empty(), "{}", describe_procs(&srv.home_procs()));
}

#[test]
fn a_child_that_left_its_service_group_does_not_outlive_stop() {
    // "No orphan ever": the supervisor is a subreaper, so a service's child
    // that moved to a session of its own (a daemonizing program) is still the
    // supervisor's to end when it stops.
    let srv = Server::new(
        r#"
[services.daemonizer]
command = "sh"
args = ["-c", "setsid sleep 300 & exec sleep 299"]
ready = { started_ms = 200 }
"#,
    );
    srv.start();
    let pid = srv.service_pid("daemonizer");
    let escapee = wait_for(Duration::from_secs(5), "the setsid child", || {
        srv.home_procs().into_iter().find(|p| p.pgid != pid && proc_cmdline(p.pid) == "sleep 300")
    });
    srv.stop();
    assert_all_gone(&[escapee], Duration::from_secs(2), "the service's setsid child after stop");
}

// ---------------------------------------------------------------------------
// Readiness by notification and by command, health, the control socket, containment.

/// A server whose config.toml declares only EXTRA's services.
fn own_services(extra: &str) -> Server {
    let srv = Server::bare(free_port());
    srv.write_config(&format!("{NO_REFERENCE}\n{extra}"));
    srv
}

/// A python3 program that waits for the file argv[1], then sends the rest of argv as one
/// sd_notify datagram to $NOTIFY_SOCKET and stays up.
const NOTIFIER: &str = r#"import os, socket, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.sendto("\n".join(sys.argv[2:]).encode(), os.environ["NOTIFY_SOCKET"])
time.sleep(3600)
"#;

/// `stigmer server` started in the background; its output once it exits.
fn start_in_background(srv: &Server) -> ChildGuard {
    let mut cmd = srv.stigmer(&["server"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    ChildGuard(cmd.spawn().expect("spawn stigmer server"))
}

fn finish(mut child: ChildGuard) -> (std::process::ExitStatus, String, String) {
    let status = wait_for(Duration::from_secs(30), "stigmer server to return", || child.0.try_wait().unwrap());
    let out = std::io::read_to_string(child.0.stdout.take().unwrap()).unwrap();
    let err = std::io::read_to_string(child.0.stderr.take().unwrap()).unwrap();
    (status, out, err)
}

#[test]
fn notify_readiness_orders_dependents_and_independent_services_start_at_once() {
    let gate = tempdir();
    let go = gate.path().join("a-may-be-ready");
    // A's READY=1 comes from a child of its main process (sh): a descendant, as systemd allows.
    let srv = own_services(&format!(
        r#"
[services.a]
command = "sh"
args = ["-c", "python3 -c \"$0\" \"$@\" & wait", '''{NOTIFIER}''', "{go}", "STATUS=serving a", "READY=1"]
ready = {{ notify = true }}

[services.b]
command = "sleep"
args = ["300"]
depends_on = ["a"]

[services.c]
command = "python3"
args = ["-c", '''{NOTIFIER}''', "/", "READY=1"]
ready = {{ notify = true }}
"#,
        go = go.display()
    ));
    let child = start_in_background(&srv);
    // C is independent: ready while A is not, and B waits for A.
    let st = wait_for(Duration::from_secs(20), "c running while a is starting", || {
        let (code, st) = srv.status();
        (code == 0 && Server::service(&st, "c")["state"] == "running").then_some(st)
    });
    assert_eq!(Server::service(&st, "a")["state"], "starting", "{st:#}");
    let b = Server::service(&st, "b");
    assert_eq!((b["state"].clone(), b["pid"].clone()), ("waiting".into(), Value::Null), "{st:#}");
    assert_eq!(st["ready"], false, "{st:#}");

    fs::write(&go, "").unwrap();
    let (status, out, err) = finish(child);
    assert!(status.success(), "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..3],
        ["Starting a... ✓", "Starting b... ✓", "Starting c... ✓"],
        "progress follows the configuration's order, not readiness order:\n{out}"
    );
    let st = srv.running_status();
    let names: Vec<_> = st["services"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c"], "{st:#}");
    assert_eq!(Server::service(&st, "a")["status"], "serving a", "STATUS= is shown: {st:#}");
    let (a, b) = (Server::service(&st, "a"), Server::service(&st, "b"));
    assert!(b["since"].as_u64().unwrap() >= a["ready_at"].as_u64().unwrap(), "b started after a was ready: {st:#}");
    let table = stdout(&srv.server(&["status"]));
    assert!(table.lines().any(|l| l.starts_with("a ") && l.contains("serving a")), "{table}");
}

#[test]
fn notify_from_a_process_that_is_not_the_service_is_ignored() {
    let srv = own_services(
        r#"
[services.quiet]
command = "sleep"
args = ["300"]
ready = { notify = true }
ready_timeout_ms = 1500
"#,
    );
    let child = start_in_background(&srv);
    wait_for(Duration::from_secs(10), "quiet starting", || {
        let (code, st) = srv.status();
        (code == 0 && Server::service(&st, "quiet")["state"] == "starting").then_some(())
    });
    // A stranger (this test's python, not a descendant of the service) claims readiness on the
    // service's own socket.
    let socket = srv.home().join("run/notify-quiet.sock");
    let sent = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket,sys; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', sys.argv[1])",
        ])
        .arg(&socket)
        .status()
        .unwrap();
    assert!(sent.success());
    let (status, out, err) = finish(child);
    assert!(!status.success(), "the forged READY=1 must not count:\n{out}\n{err}");
    assert!(err.contains("quiet") && err.contains("not ready"), "{err}");
}

#[test]
fn exec_readiness_waits_for_the_command_to_succeed() {
    let gate = tempdir();
    let go = gate.path().join("ready");
    let srv = own_services(&format!(
        r#"
[services.worker]
command = "sleep"
args = ["300"]
ready = {{ exec = ["test", "-e", "{go}"] }}
"#,
        go = go.display()
    ));
    let child = start_in_background(&srv);
    let st = wait_for(Duration::from_secs(10), "worker starting", || {
        let (code, st) = srv.status();
        (code == 0 && Server::service(&st, "worker")["pid"].is_number()).then_some(st)
    });
    assert_eq!(Server::service(&st, "worker")["state"], "starting", "{st:#}");
    fs::write(&go, "").unwrap();
    let (status, out, err) = finish(child);
    assert!(status.success() && out.contains("Starting worker... ✓"), "{out}\n{err}");
    assert_eq!(Server::service(&srv.running_status(), "worker")["state"], "running");
}

#[test]
fn failing_health_check_restarts_the_service() {
    let gate = tempdir();
    let sick = gate.path().join("sick");
    let srv = own_services(&format!(
        r#"
[services.patient]
command = "sleep"
args = ["300"]
health = {{ exec = ["sh", "-c", "! test -e {sick}"], interval_ms = 100, timeout_ms = 2000, failures = 2 }}

[supervisor]
backoff_max_ms = 100
"#,
        sick = sick.display()
    ));
    srv.start();
    let first = srv.service_pid("patient");
    wait_for(Duration::from_secs(10), "patient healthy", || {
        (Server::service(&srv.running_status(), "patient")["health"] == "healthy").then_some(())
    });
    fs::write(&sick, "").unwrap();
    let restarted = wait_for(Duration::from_secs(20), "patient restarted after failed checks", || {
        let s = Server::service(&srv.running_status(), "patient");
        (s["restarts"].as_u64().unwrap_or(0) >= 1).then_some(s)
    });
    assert!(restarted["message"].as_str().unwrap_or_default().contains("health"), "{restarted:#}");
    fs::remove_file(&sick).unwrap();
    let s = wait_for(Duration::from_secs(20), "patient running and healthy again", || {
        let s = Server::service(&srv.running_status(), "patient");
        (s["state"] == "running" && s["health"] == "healthy").then_some(s)
    });
    assert_ne!(s["pid"].as_i64().unwrap() as i32, first, "a new process: {s:#}");
    assert!(proc_stat(first).is_none(), "the unhealthy process is gone");
}

#[test]
fn forged_or_truncated_state_files_neither_hide_a_supervisor_nor_get_a_process_signalled() {
    let srv = own_services("[services.idle]\ncommand = \"sleep\"\nargs = [\"300\"]\n");
    let run = srv.home().join("run");
    fs::create_dir_all(&run).unwrap();
    // An unrelated live process whose pid a forged state file names as the supervisor.
    let bystander = ChildGuard(std::process::Command::new("sleep").arg("300").spawn().unwrap());
    let pid = bystander.0.id();
    let forged = format!(
        r#"{{"supervisor_pid": {pid}, "started": 0, "ready": true, "error": null, "exited": false, "services": []}}"#
    );
    for file in ["state.json", "supervisor.pid"] {
        fs::write(run.join(file), &forged).unwrap();
    }
    let out = srv.server(&["stop"]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("not running"), "{}", describe(&out));
    assert_eq!(srv.status().0, 3);
    assert!(proc_stat(pid as i32).is_some_and(|p| p.state != 'Z'), "the bystander {pid} was not signalled");

    srv.start();
    let supervisor = srv.supervisor_pid();
    fs::write(run.join("state.json"), "{\"supervisor_pid\": 1").unwrap();
    assert_eq!(srv.supervisor_pid(), supervisor, "a truncated state file does not hide the supervisor");
    fs::remove_file(run.join("state.json")).unwrap();
    assert_eq!(srv.supervisor_pid(), supervisor, "nor does a missing one");
    let out = srv.stop();
    assert!(stdout(&out).contains("stigmer server stopped"), "{}", describe(&out));
    wait_for(Duration::from_secs(5), "no process of this home", || srv.home_procs().is_empty().then_some(()));
    assert!(proc_stat(pid as i32).is_some_and(|p| p.state != 'Z'), "the bystander {pid} still runs");
}

#[test]
fn restart_with_a_broken_config_leaves_the_platform_running() {
    let srv = own_services("[services.idle]\ncommand = \"sleep\"\nargs = [\"300\"]\n");
    srv.start();
    let before = srv.running_status();
    let good = fs::read_to_string(srv.config_path()).unwrap();
    srv.write_config(&format!("{good}\n[services.idle2]\ncommand = \"sleep\"\nrestrat = 1\n"));
    let out = srv.server(&["restart"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("restrat") && stderr(&out).contains("keeps running"),
        "says why and that nothing was stopped: {}",
        describe(&out)
    );
    // A port some other process holds is refused the same way.
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = holder.local_addr().unwrap().port();
    srv.write_config(&format!("{good}\n[services.web]\ncommand = \"sleep\"\nargs = [\"300\"]\nport = {port}\n"));
    let out = srv.server(&["restart"]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains(&port.to_string()), "{}", describe(&out));
    let after = srv.running_status();
    assert_eq!(after["supervisor_pid"], before["supervisor_pid"], "{after:#}");
    assert_eq!(Server::service(&after, "idle")["pid"], Server::service(&before, "idle")["pid"]);
    srv.write_config(&good);
    assert_code(&srv.server(&["restart"]), 0);
    assert_ne!(srv.running_status()["supervisor_pid"], before["supervisor_pid"]);
}

#[test]
fn one_service_is_restarted_stopped_and_started_alone() {
    let srv = Server::new("");
    srv.start();
    let before = srv.running_status();
    let pids: Vec<(String, i32)> = running_pids(&before);
    let out = srv.server(&["restart", "workflow-runner"]);
    assert_code(&out, 0);
    let after = srv.running_status();
    for (name, pid) in &pids {
        let now = Server::service(&after, name)["pid"].as_i64().unwrap() as i32;
        if name == "workflow-runner" {
            assert_ne!(now, *pid, "{after:#}");
            assert!(proc_stat(*pid).is_none(), "the old workflow-runner is gone");
        } else {
            assert_eq!(now, *pid, "{name} untouched: {after:#}");
        }
    }
    let out = srv.server(&["stop", "agent-runner"]);
    assert_code(&out, 0);
    let st = srv.running_status();
    assert_eq!(Server::service(&st, "agent-runner")["state"], "stopped", "{st:#}");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(Server::service(&srv.running_status(), "agent-runner")["state"], "stopped", "stays stopped");
    assert_code(&srv.server(&["start", "agent-runner"]), 0);
    let id = srv.submit("agent", "after a one-service restart");
    assert_analysis(&srv.wait_done(&id), "after a one-service restart");
    let bad = srv.server(&["restart", "nope"]);
    assert_code(&bad, 1);
    assert!(stderr(&bad).contains("nope"), "{}", describe(&bad));
}

/// A supervisor started by another stigmer build (here a copy of this binary whose GNU build-id
/// note differs, as an upgrade's would) is named as such by this build's `status`, and `restart`
/// moves the platform to this build.
#[test]
fn status_from_another_build_says_so_and_restart_moves_to_this_one() {
    let srv = own_services("[services.idle]\ncommand = \"sleep\"\nargs = [\"300\"]\n");
    let dir = tempdir();
    let other = other_build(dir.path());
    let out = run(srv.stigmer_from(&other, &["server"]));
    assert_code(&out, 0);

    let out = srv.server(&["status"]);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("another stigmer build") && stdout(&out).contains("stigmer server restart"),
        "{}",
        describe(&out)
    );
    let before = srv.running_status();
    assert_eq!(before["same_build"], false, "{before:#}");
    assert_code(&srv.server(&["restart"]), 0);
    let after = srv.running_status();
    assert_eq!(after["same_build"], true, "{after:#}");
    assert_ne!(after["build"], before["build"], "{after:#}");
    assert!(!stdout(&srv.server(&["status"])).contains("another stigmer build"));
}

/// Under systemd (Type=notify) or any manager that sets NOTIFY_SOCKET, `stigmer server
/// --foreground` says READY=1 only once every service is ready, and STOPPING=1 on SIGTERM, then
/// exits 0. The test is that manager: it binds the socket and gates the one service's readiness.
#[test]
fn foreground_tells_its_own_manager_ready_only_when_all_services_are_and_stopping_on_sigterm() {
    let gate = tempdir();
    let go = gate.path().join("slow-may-be-ready");
    let srv = own_services(&format!(
        r#"
[services.slow]
command = "python3"
args = ["-c", '''{NOTIFIER}''', "{go}", "READY=1"]
ready = {{ notify = true }}
"#,
        go = go.display()
    ));
    let manager = tempdir();
    let socket_path = manager.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    let receive = |timeout: Duration| -> Option<String> {
        socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        match socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
            Err(e) => panic!("recv on the manager's socket: {e}"),
        }
    };
    let mut cmd = srv.stigmer(&["server", "--foreground"]);
    cmd.env("NOTIFY_SOCKET", &socket_path).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = ChildGuard(cmd.spawn().expect("spawn --foreground"));
    let fg_pid = child.0.id() as i32;

    let st = wait_for(Duration::from_secs(20), "slow to be started and waiting for readiness", || {
        let (code, st) = srv.status();
        (code == 0 && Server::service(&st, "slow")["state"] == "starting").then_some(st)
    });
    assert_eq!(st["supervisor_pid"], fg_pid, "{st:#}");
    let slow = Server::service(&st, "slow");
    // The service runs and is not ready: nothing may have reached the manager yet (give a wrong
    // early READY=1 time to arrive).
    assert_eq!(receive(Duration::from_millis(500)), None, "READY=1 before the service was ready");

    fs::write(&go, "").unwrap();
    let ready = receive(Duration::from_secs(30)).expect("READY=1 once the service is ready");
    assert_eq!(ready, "READY=1");
    let st = srv.running_status();
    let now = Server::service(&st, "slow");
    assert_eq!(now["state"], "running", "{st:#}");
    assert_eq!(now["pid"], slow["pid"], "the same process became ready: {st:#}");
    assert_eq!(st["ready"], true, "{st:#}");

    let service = proc_stat(srv.service_pid("slow")).unwrap();
    signal(fg_pid, libc::SIGTERM);
    let stopping = receive(Duration::from_secs(30)).expect("STOPPING=1 on SIGTERM");
    assert_eq!(stopping, "STOPPING=1");
    let exit = wait_for(Duration::from_secs(30), "--foreground to exit after SIGTERM", || child.0.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0), "a clean exit on SIGTERM: {exit:?}");
    assert_all_gone(&[service], Duration::ZERO, "the service after --foreground exited");
    assert_eq!(receive(Duration::from_millis(200)), None, "nothing after STOPPING=1");
}
