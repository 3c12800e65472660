//! `stigmer server` for every user, its services in the same world as outside: run as the
//! test's own user (root here) and as an ordinary uid (4242, its home under root-owned
//! directories, `UserWorld`). A service sees the pids, ids and `ps` it sees when run directly;
//! what contains the services (a cgroup v2 where the supervisor may write one, else process
//! groups; a keeper that outlives a SIGKILLed supervisor) is what `status --json` says; the
//! one supervisor of a home stays reachable and alone whatever happens to `run/`. No test here
//! signals pid 1: outside a PID namespace that is the machine's init.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// Who runs a server in these tests: the test's own user and, when the test may switch users
/// (root), the ordinary user 4242.
fn users() -> Vec<Option<u32>> {
    if is_root() {
        vec![None, Some(USER)]
    } else {
        eprintln!("only the test's own user: running as another uid needs root");
        vec![None]
    }
}

/// A server run by UID whose config.toml declares only EXTRA's services.
fn own_services(uid: Option<u32>, extra: &str) -> Server {
    let srv = Server::bare_as(uid, free_port());
    srv.write_config(&format!("{NO_REFERENCE}\n{extra}"));
    srv
}

/// The first field of the `Uid:` line of /proc/PID/status.
fn proc_uid(pid: i32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// Live processes whose command line is exactly CMDLINE.
fn procs_running(cmdline: &str) -> Vec<ProcStat> {
    all_procs().into_iter().filter(|p| p.state != 'Z' && proc_cmdline(p.pid) == cmdline).collect()
}

#[track_caller]
fn supervisor_and_keeper(st: &Value) -> (i32, i32) {
    let supervisor = st["supervisor_pid"].as_i64().unwrap_or_else(|| panic!("no supervisor_pid: {st:#}")) as i32;
    let keeper = st["keeper_pid"].as_i64().unwrap_or_else(|| panic!("no keeper_pid: {st:#}")) as i32;
    (supervisor, keeper)
}

/// What a process learns about its world, written into its working directory: `ids` and
/// `owners` must read the same inside a service and run directly; `pid`, `ps` and `ns` are
/// compared with what the test sees. `ready` comes last.
const WORLD_REPORT: &str = r#"echo $$ > pid
ps -o args= -p $$ > ps
readlink /proc/self/ns/pid > ns
{ id -u; id -g; id -G; } > ids
stat -c %u:%g / /etc/passwd > owners
: > ready"#;

/// Item 2 (and 1): as root and as uid 4242, a service's pid file names the process the test
/// sees under that pid and `status` reports, `ps -p $$` finds the service itself, it is in the
/// test's own pid namespace (so `kill -HUP 1` could never reach the supervisor), and its uid,
/// gids, groups and the owners of root's files are what the same script sees run directly.
#[test]
fn a_service_sees_the_world_it_sees_when_run_directly() {
    for uid in users() {
        let marker = format!("world-of-{}", uid.unwrap_or(0));
        let srv = own_services(
            uid,
            &format!(
                r#"
[services.world]
command = "sh"
args = ["-c", '''{WORLD_REPORT}
exec sleep 300''', "{marker}"]
ready = {{ exec = ["test", "-e", "ready"] }}
"#
            ),
        );
        srv.start();
        let who = srv.who();
        let st = srv.running_status();
        let pid = Server::service(&st, "world")["pid"].as_i64().unwrap() as i32;
        let data = srv.home().join("data/world");
        let read = |name: &str| fs::read_to_string(data.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(read("pid").trim(), pid.to_string(), "{who}: the pid file names the service as status does");
        assert_eq!(proc_cmdline(pid), "sleep 300", "{who}: and as /proc outside numbers it");
        assert!(read("ps").contains(&marker), "{who}: `ps -p $$` in the service finds itself: {}", read("ps"));
        let ours = fs::read_link("/proc/self/ns/pid").unwrap();
        assert_eq!(read("ns").trim(), ours.to_str().unwrap(), "{who}: the service shares our pid namespace");
        let (supervisor, keeper) = supervisor_and_keeper(&st);
        assert_eq!(fs::read_link(format!("/proc/{supervisor}/ns/pid")).unwrap(), ours, "{who}");
        assert!(supervisor != 1 && keeper != 1, "{who}: {st:#}");
        assert_eq!(proc_stat(pid).unwrap().ppid, supervisor, "{who}: the service is the supervisor's child");
        if let Some(uid) = uid {
            assert_eq!(proc_uid(pid), Some(uid), "{who}");
            assert_eq!(proc_uid(supervisor), Some(uid), "{who}");
        }

        let direct = tempfile::tempdir().unwrap();
        fs::set_permissions(direct.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let mut cmd = srv.sh(WORLD_REPORT);
        cmd.current_dir(direct.path());
        assert_code(&run(cmd), 0);
        for file in ["ids", "owners"] {
            let outside = fs::read_to_string(direct.path().join(file)).unwrap();
            assert_eq!(read(file), outside, "{who}: {file} inside the service and run directly");
        }
        assert!(read("owners").starts_with("0:0\n"), "{who}: / is root's, as it is: {}", read("owners"));
        srv.stop();
        assert!(srv.home_procs().is_empty(), "{who}: {}", describe_procs(&srv.home_procs()));
    }
}

/// Item 1: an ordinary user (4242, home under root-owned directories) starts the reference
/// platform, runs jobs through it and stops it; `status` and `doctor` say which containment
/// it got.
#[test]
fn an_ordinary_user_starts_uses_and_stops_the_platform() {
    if !is_root() {
        eprintln!("skipped: running as uid {USER} needs root");
        return;
    }
    let srv = Server::new_as(Some(USER), "");
    let out = srv.start();
    assert!(stdout(&out).contains("Starting agent-runner... ✓"), "{}", describe(&out));
    let st = srv.running_status();
    for name in ["stigmer-server", "workflow-runner", "agent-runner"] {
        let pid = Server::service(&st, name)["pid"].as_i64().unwrap() as i32;
        assert_eq!(proc_uid(pid), Some(USER), "{name} runs as the user: {st:#}");
    }
    let input = "an ordinary user's agent job";
    let job = srv.wait_done(&srv.submit("agent", input));
    assert_eq!(job["input"], input, "{job:#}");
    let job = srv.wait_done(&srv.submit("workflow", "and a workflow that runs agent-runner"));
    assert_eq!(job["status"], "done", "{job:#}");

    let containment = &st["containment"];
    let doctor = run(srv.stigmer(&["doctor", "--json"]));
    let report: Value = serde_json::from_slice(&doctor.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&doctor)));
    let check = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "containment").unwrap().clone();
    assert!(check["detail"].as_str().unwrap().contains(containment["kind"].as_str().unwrap()), "{check:#}\n{st:#}");
    eprintln!("containment as uid {USER}: {containment}");
    if containment["kind"] == "process-groups" {
        let escapes = containment["escapes"].as_str().unwrap_or_else(|| panic!("says what escapes: {st:#}"));
        assert!(escapes.contains("setsid -f env -i"), "{st:#}");
        assert_eq!(check["status"], "warn", "{check:#}");
        assert!(check["fix"].as_str().unwrap().contains("systemd-run --user --scope"), "{check:#}");
    }
    srv.stop();
    wait_for(Duration::from_secs(3), "no process of this home", || srv.home_procs().is_empty().then_some(()));
}

/// A cgroup delegated to a user, as a systemd user session's (`Delegate=yes`): a child of the
/// test's own cgroup, owned by the user with its cgroup.procs, cgroup.threads and
/// cgroup.subtree_control. Dropping it ends what is in it and removes it.
struct DelegatedCgroup(PathBuf);

impl DelegatedCgroup {
    /// None (with the reason printed) where the test cannot make one: not root, no cgroup2.
    fn new(uid: u32) -> Option<DelegatedCgroup> {
        if !is_root() {
            eprintln!("skipped the delegated cgroup: making one needs root");
            return None;
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Some(mount) = mountinfo.lines().find_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            let f: Vec<&str> = head.split(' ').collect();
            (tail.starts_with("cgroup2 ") && f[3] == "/").then(|| PathBuf::from(f[4]))
        }) else {
            eprintln!("skipped the delegated cgroup: no cgroup2 mount here");
            return None;
        };
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = mount.join(path.trim_start_matches('/')).join(format!("stigmer-test-{}-{n}", std::process::id()));
        fs::create_dir(&dir).unwrap();
        for item in
            [dir.clone(), dir.join("cgroup.procs"), dir.join("cgroup.threads"), dir.join("cgroup.subtree_control")]
        {
            std::os::unix::fs::chown(&item, Some(uid), Some(uid)).unwrap();
        }
        Some(DelegatedCgroup(dir))
    }

    /// `stigmer server` as the server's user, moved into this cgroup before it runs.
    #[track_caller]
    fn start(&self, srv: &Server) -> std::process::Output {
        let world = srv.user.as_ref().expect("a delegated cgroup is for another user");
        let mut cmd = world.command("sh");
        cmd.args(["-c", r#"read _ && exec "$0" "$@""#])
            .arg(&world.bin)
            .arg("server")
            .env("STIGMER_HOME", &world.home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in SERVER_PORT_VARS {
            cmd.env_remove(var);
        }
        let mut child = cmd.spawn().unwrap();
        fs::write(self.0.join("cgroup.procs"), child.id().to_string()).unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_code(&out, 0);
        out
    }
}

impl Drop for DelegatedCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_to_string(self.0.join("cgroup.events")).is_ok_and(|e| e.contains("populated 1"))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        fn rmdir_tree(dir: &Path) {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&e.path());
                }
            }
            let _ = fs::remove_dir(dir);
        }
        rmdir_tree(&self.0);
    }
}

/// A service that leaves a detached child with a clean environment (what sudo, su, Go's
/// cmd.Env and Python's env= do), told apart from every other process by its command line.
fn detacher(uid: Option<u32>) -> (Server, String) {
    let port = free_port();
    let escapee = format!("sleep 10{port}");
    let srv = Server::bare_as(uid, port);
    srv.write_config(&format!(
        "{NO_REFERENCE}\n[services.detacher]\ncommand = \"sh\"\nargs = [\"-c\", \"setsid -f env -i {escapee}; exec sleep 300\"]\n"
    ));
    (srv, escapee)
}

/// Item 3: `restart NAME` and `stop NAME` end every process of the service, one that detached
/// with a clean environment included, where the server has a cgroup: as root, and as uid 4242
/// in a cgroup delegated to it. Without one (4242 here, in a root-owned cgroup), status says
/// that such a process escapes `stop NAME`, and the server's own stop still ends it.
#[test]
fn restart_and_stop_of_a_service_end_every_process_it_started() {
    let mut cases: Vec<(Option<u32>, bool)> = vec![(None, false)];
    if is_root() {
        cases.extend([(Some(USER), true), (Some(USER), false)]);
    }
    for (uid, delegated) in cases {
        // Made first, dropped last: the server is stopped before its cgroup goes.
        let cgroup = if delegated { DelegatedCgroup::new(USER) } else { None };
        let (srv, escapee) = detacher(uid);
        match &cgroup {
            Some(cgroup) => drop(cgroup.start(&srv)),
            None if delegated => continue,
            None => drop(srv.start()),
        }
        let who = format!("{}{}", srv.who(), if delegated { " in a delegated cgroup" } else { "" });
        let st = srv.running_status();
        let containment = st["containment"].clone();
        eprintln!("{who}: containment {containment}");
        let one = wait_for(Duration::from_secs(5), "the detached child", || {
            let p = procs_running(&escapee);
            (p.len() == 1).then_some(p)
        });
        if uid.is_none() || delegated {
            for _ in 0..3 {
                assert_code(&srv.server(&["restart", "detacher"]), 0);
            }
            assert_all_gone(&one, Duration::ZERO, &format!("{who}: the first run's detached child after restarts"));
            let left = wait_for(Duration::from_secs(5), "the last run's detached child", || {
                let p = procs_running(&escapee);
                (!p.is_empty()).then_some(p)
            });
            assert_eq!(left.len(), 1, "{who}: one detached child, the last run's:\n{}", describe_procs(&left));
            assert_code(&srv.server(&["stop", "detacher"]), 0);
            // `stop NAME` answers once its cgroup is empty (a zombie at most is left to reap).
            let alive: Vec<ProcStat> = left.iter().filter_map(still_exists).filter(|p| p.state != 'Z').collect();
            assert!(alive.is_empty(), "{who}: the detached child after stop NAME:\n{}", describe_procs(&alive));
            assert_eq!(containment["kind"], "cgroup", "{who}: {st:#}");
            assert_eq!(containment["escapes"], Value::Null, "{who}: {st:#}");
        } else {
            assert_eq!(containment["kind"], "process-groups", "{who}: {st:#}");
            let escapes = containment["escapes"].as_str().unwrap_or_default();
            assert!(escapes.contains("setsid -f env -i") && escapes.contains("until the server stops"), "{st:#}");
        }
        srv.stop();
        assert_all_gone(&procs_running(&escapee), Duration::from_secs(2), &format!("{who}: after the server's stop"));
        wait_for(Duration::from_secs(3), "no process of this home", || srv.home_procs().is_empty().then_some(()));
        if let Some(dir) = containment["detail"].as_str().filter(|_| containment["kind"] == "cgroup") {
            assert!(!Path::new(dir).exists(), "{who}: the server's cgroup {dir} is removed at stop");
        }
    }
}

/// The SIGKILL case, as root and as uid 4242: a service's descendant that made a session of
/// its own and cleared its environment dies within moments of a SIGKILL of the supervisor
/// (its keeper ends the cgroup and every orphan), and then nothing of the server is left.
#[test]
fn a_detached_descendant_dies_with_a_sigkilled_supervisor() {
    for uid in users() {
        let (srv, escapee) = detacher(uid);
        srv.start();
        let who = srv.who();
        let st = srv.running_status();
        if uid.is_none() && is_root() {
            assert_eq!(st["containment"]["kind"], "cgroup", "root gets a cgroup here: {st:#}");
        }
        let (supervisor, keeper) = supervisor_and_keeper(&st);
        assert_eq!(proc_comm(keeper), "stigmer-keeper", "{who}");
        assert_eq!(proc_stat(supervisor).unwrap().ppid, keeper, "{who}");
        let detached = wait_for(Duration::from_secs(5), "the detached child", || {
            let p = procs_running(&escapee);
            (p.len() == 1).then_some(p)
        });
        let service = Server::service(&st, "detacher")["pid"].as_i64().unwrap() as i32;
        assert_ne!(detached[0].session, proc_stat(service).unwrap().session, "{who}: it left the service's session");
        signal(supervisor, libc::SIGKILL);
        assert_all_gone(&detached, Duration::from_secs(2), &format!("{who}: the detached child after SIGKILL"));
        wait_for(Duration::from_secs(3), "no process of this home", || srv.home_procs().is_empty().then_some(()));
        let log = fs::read_to_string(srv.home().join("logs/supervisor.log")).unwrap();
        assert!(log.contains("was killed by SIGKILL"), "{who}: the keeper says what happened:\n{log}");
        if st["containment"]["kind"] == "cgroup" {
            let dir = st["containment"]["detail"].as_str().unwrap();
            assert!(!Path::new(dir).exists(), "{who}: the keeper removed {dir}");
        }
        assert_eq!(srv.status().0, 3, "{who}");
    }
}

/// Item 5, as root and as uid 4242: with `run/control.sock` deleted, and then all of `run/`,
/// the supervisor still answers (it binds its socket again), a second `stigmer server` is
/// refused (the lock is the home directory's, not a file in run/), and `stop` stops it.
#[test]
fn losing_run_leaves_one_reachable_supervisor() {
    for uid in users() {
        let srv = own_services(uid, "[services.idle]\ncommand = \"sleep\"\nargs = [\"300\"]\n");
        srv.start();
        let who = srv.who();
        let supervisor = srv.supervisor_pid();
        let supervisors = || {
            srv.home_procs()
                .into_iter()
                .filter(|p| p.state != 'Z' && proc_cmdline(p.pid).contains("--supervise"))
                .count()
        };
        fs::remove_file(srv.home().join("run/control.sock")).unwrap();
        assert_eq!(srv.supervisor_pid(), supervisor, "{who}: found again without its socket");
        fs::remove_dir_all(srv.home().join("run")).unwrap();
        assert_eq!(srv.supervisor_pid(), supervisor, "{who}: found again without run/");
        fs::remove_dir_all(srv.home().join("run")).unwrap();
        let again = srv.server(&[]);
        assert_code(&again, 1);
        assert!(stderr(&again).contains("already running"), "{who}: {}", describe(&again));
        assert_eq!(supervisors(), 1, "{who}: {}", describe_procs(&srv.home_procs()));
        assert_eq!(srv.supervisor_pid(), supervisor, "{who}");
        fs::remove_file(srv.home().join("run/control.sock")).unwrap();
        let out = srv.stop();
        assert!(stdout(&out).contains("stigmer server stopped"), "{who}: {}", describe(&out));
        wait_for(Duration::from_secs(3), "no process of this home", || srv.home_procs().is_empty().then_some(()));
    }
}

/// Item 6: on a stopped (SIGSTOP) supervisor, `status` and `stop` return within moments with
/// one line saying so and what to do; the stop given up on is not carried out later.
#[test]
fn status_and_stop_on_a_stopped_supervisor_say_so() {
    let srv = own_services(None, "[services.idle]\ncommand = \"sleep\"\nargs = [\"300\"]\n");
    srv.start();
    let supervisor = srv.supervisor_pid();
    signal(supervisor, libc::SIGSTOP);
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            kill(self.0, libc::SIGCONT);
        }
    }
    let resume = Resume(supervisor);
    for args in [&["server", "status"][..], &["server", "stop"]] {
        let mut cmd = assert_cmd::Command::from_std(srv.stigmer(args));
        cmd.timeout(Duration::from_secs(20));
        let t = Instant::now();
        let out = cmd.output().unwrap();
        assert!(t.elapsed() < Duration::from_secs(8), "{args:?} took {:?}: {}", t.elapsed(), describe(&out));
        assert_code(&out, 1);
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.contains("stopped (SIGSTOP)") && err.contains(&format!("kill -CONT {supervisor}")),
            "{args:?}: says what is wrong and what to do: {err}"
        );
    }
    drop(resume);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(srv.supervisor_pid(), supervisor, "still running: the stop given up on was dropped");
    srv.stop();
}

/// Item 7: `stop` as soon as a start has begun (its server process exists) stops that start:
/// never "not running" with the services coming up afterwards.
#[test]
fn stop_right_after_a_start_begins_stops_it() {
    let srv =
        own_services(None, "[services.idle]\ncommand = \"sleep\"\nargs = [\"300\"]\nready = { started_ms = 300 }\n");
    let home_env = format!("STIGMER_HOME={}", srv.home().display());
    for round in 0..10 {
        let mut cmd = srv.stigmer(&["server"]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let start = cmd.spawn().unwrap();
        // The moment the start's detached process exists.
        let began = Instant::now();
        loop {
            let exists = all_procs()
                .into_iter()
                .any(|p| proc_cmdline(p.pid).contains("stigmer server --") && proc_environ(p.pid).contains(&home_env));
            if exists {
                break;
            }
            assert!(began.elapsed() < Duration::from_secs(10), "round {round}: the start never began");
        }
        let out = srv.server(&["stop"]);
        assert_code(&out, 0);
        assert!(stdout(&out).contains("stigmer server stopped"), "round {round}: {}", describe(&out));
        let out = start.wait_with_output().unwrap();
        assert!(!out.status.success(), "round {round}: the start was stopped: {}", describe(&out));
        assert_eq!(srv.status().0, 3, "round {round}");
        wait_for(Duration::from_secs(3), "no process of this home", || srv.home_procs().is_empty().then_some(()));
    }
}

/// Item 9: a root service that forges SCM_CREDENTIALS (root may claim any pid) to say READY=1
/// for another service speaks for itself alone: its own notify socket names it.
#[test]
fn a_root_service_cannot_mark_another_ready_by_forging_credentials() {
    if !is_root() {
        eprintln!("skipped: forging SCM_CREDENTIALS needs CAP_SYS_ADMIN");
        return;
    }
    let gate = tempdir();
    let victim_pid = gate.path().join("victim.pid");
    let forger = format!(
        r#"import os, socket, struct, time
path = "{victim}"
while not os.path.exists(path) or not open(path).read().strip():
    time.sleep(0.02)
victim = int(open(path).read())
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
creds = struct.pack("iII", victim, 0, 0)
sock.sendmsg([b"READY=1"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)], 0, os.environ["NOTIFY_SOCKET"])
open("{victim}.forged", "w").write("sent")
time.sleep(3600)
"#,
        victim = victim_pid.display()
    );
    let srv = own_services(
        None,
        &format!(
            r#"
[services.forger]
command = "python3"
args = ["-c", '''{forger}''']
ready = {{ notify = true }}

[services.victim]
command = "sh"
args = ["-c", "echo $$ > {victim}; exec sleep 300"]
ready = {{ notify = true }}
ready_timeout_ms = 3000
"#,
            victim = victim_pid.display()
        ),
    );
    let out = srv.server(&[]);
    assert!(gate.path().join("victim.pid.forged").exists(), "the forger sent its datagram: {}", describe(&out));
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("victim was not ready within"),
        "the forged READY=1 did not count: {}",
        describe(&out)
    );
}

/// Item 9: every notify socket is 0600 whatever the umask it was started with.
#[test]
fn notify_sockets_are_private_whatever_the_umask() {
    let srv = own_services(
        None,
        r#"
[services.notifier]
command = "python3"
args = ["-c", "import os, socket, time; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', os.environ['NOTIFY_SOCKET']); time.sleep(3600)"]
ready = { notify = true }
"#,
    );
    let mut cmd = srv.stigmer(&["server"]);
    // SAFETY: umask only sets this child's file-creation mask.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::umask(0);
            Ok(())
        });
    }
    assert_code(&run(cmd), 0);
    let sockets: Vec<(String, u32)> = fs::read_dir(srv.home().join("run"))
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().permissions().mode() & 0o7777))
        .collect();
    assert!(sockets.iter().any(|(n, _)| n.contains("notify")), "{sockets:?}");
    assert!(sockets.iter().all(|(_, mode)| *mode == 0o600), "every socket in run/ is 0600: {sockets:?}");
    srv.stop();
}

/// The keeper is part of the server, not a process of its own: SIGTERM to it stops the server
/// as `stop` does, and if it is killed the supervisor (SIGTERM by its parent-death signal)
/// stops everything too.
#[test]
fn the_keeper_goes_with_the_server_and_takes_the_server_with_it() {
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        let srv = own_services(None, "[services.idle]\ncommand = \"sleep\"\nargs = [\"300\"]\n");
        srv.start();
        let st = srv.running_status();
        let (_, keeper) = supervisor_and_keeper(&st);
        let idle = proc_stat(Server::service(&st, "idle")["pid"].as_i64().unwrap() as i32).unwrap();
        signal(keeper, sig);
        assert_all_gone(&[idle], Duration::from_secs(5), &format!("the service after signal {sig} to the keeper"));
        wait_for(Duration::from_secs(5), "no process of this home", || srv.home_procs().is_empty().then_some(()));
        let log = fs::read_to_string(srv.home().join("logs/idle.log")).unwrap();
        assert!(log.lines().last().is_some_and(|l| l.ends_with("stopped")), "a clean stop (signal {sig}):\n{log}");
        assert_eq!(srv.status().0, 3);
    }
}
