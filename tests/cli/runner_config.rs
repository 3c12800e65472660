//! The user's persistent runner choice in config.toml: `[runner] default` honoured by a start
//! through a link and by the server's services, a service's own `runner` (for its start only),
//! STIGMER_RUNNER winning over both, a bad value refused with its file and line, and what `stigmer
//! doctor` says about the policy and about the names memfd-run processes get.

use std::time::Duration;

use crate::util::*;

fn write_config(sb: &Sandbox, text: &str) -> std::path::PathBuf {
    let path = sb.home().join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// What /proc/self/exe was for the probe started through its link with ENV.
fn probe_exe(sb: &Sandbox, name: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = sb.component(name);
    cmd.envs(env.iter().copied());
    Probe::from_success(&run(cmd)).exe
}

/// (runner, why) of NAME in `components --json`.
fn listed(sb: &Sandbox, name: &str) -> (String, String) {
    let info = run({
        let mut cmd = sb.stigmer();
        cmd.args(["components", "--json"]);
        cmd
    });
    assert_code(&info, 0);
    let rows: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap().clone();
    (row["runner"].as_str().unwrap().to_owned(), row["why"].as_str().unwrap().to_owned())
}

#[test]
fn config_default_is_honoured_by_a_link_start() {
    let sb = Sandbox::new();
    let cached = cached_entry_point(&sb, &component_info(&sb, "probe")).display().to_string();
    assert_eq!(probe_exe(&sb, "probe", &[]), memfd_exe("probe"), "auto: a single-file ELF runs from a memfd");

    write_config(&sb, "# mine\n[runner]\ndefault = \"cache\"\n");
    assert_eq!(probe_exe(&sb, "probe", &[]), cached, "[runner] default = cache");
    assert_eq!(listed(&sb, "probe"), ("cache".into(), "[runner] default = \"cache\" in config.toml".into()));
    // STIGMER_RUNNER still wins.
    assert_eq!(probe_exe(&sb, "probe", &[("STIGMER_RUNNER", "memfd")]), memfd_exe("probe"));
    // The service variable is the supervisor's: it beats the default, and the component never sees it.
    let mut cmd = sb.component("probe");
    cmd.env("STIGMER_SERVICE_RUNNER", "memfd");
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.exe, memfd_exe("probe"));
    assert!(!p.env.contains_key("STIGMER_SERVICE_RUNNER"), "the service's runner is not inherited: {:?}", p.env);

    write_config(&sb, "[runner]\ndefault = \"memfd\"\n");
    assert_eq!(probe_exe(&sb, "probe", &[]), memfd_exe("probe"));
    assert_eq!(listed(&sb, "probe").1, "[runner] default = \"memfd\" in config.toml");
    assert_eq!(probe_exe(&sb, "probe", &[("STIGMER_RUNNER", "cache")]), cached, "STIGMER_RUNNER wins");
    // memfd only where it can work: what the policy sends to the cache stays there, with its reason.
    let (runner, why) = listed(&sb, "pyapp-onefile");
    assert_eq!(runner, "cache");
    assert!(why.contains("PyInstaller"), "{why}");
    assert_eq!(listed(&sb, "probe-cached").0, "cache", "components.toml's runner = \"cache\" is kept");

    write_config(&sb, "[runner]\ndefault = \"auto\"\n");
    assert_eq!(listed(&sb, "probe"), ("memfd".into(), "single-file ELF".into()));
}

#[test]
fn a_bad_runner_value_is_one_line_with_file_and_line() {
    let sb = Sandbox::new();
    let path = write_config(&sb, "[logs]\nkeep = 2\n\n[runner]\ndefault = \"disk\"\n");
    let want = format!("{}:5: [runner] default = \"disk\" is not one of auto, memfd, cache", path.display());
    // A start refuses rather than guess what the user wanted.
    let err = assert_launcher_error(&run(sb.component("probe")), 125);
    assert!(err.contains(&want), "{err}");
    let out = run({
        let mut cmd = sb.stigmer();
        cmd.arg("components");
        cmd
    });
    assert!(stderr(&out).contains(&want) && !out.status.success(), "{}", describe(&out));
    // STIGMER_RUNNER decides alone: config.toml is not read.
    assert_eq!(probe_exe(&sb, "probe", &[("STIGMER_RUNNER", "memfd")]), memfd_exe("probe"));

    write_config(&sb, "[runner]\ndefault = 1\n");
    let err = assert_launcher_error(&run(sb.component("probe")), 125);
    assert!(err.contains(&format!("{}:2:", path.display())), "{err}");

    // A service's runner is checked by the server, with its line too.
    let srv = Server::new("[services.workflow-runner]\nrunner = \"ram\"\n");
    let out = srv.server(&[]);
    let err = assert_launcher_error(&out, 1);
    assert!(
        err.contains(&format!("{}:5: services.workflow-runner: runner = \"ram\"", srv.config_path().display())),
        "{err}"
    );
    // memfd for a service that cannot run from one is refused before anything starts.
    srv.write_config(&format!(
        "[services.stigmer-server]\nport = {}\n[services.agent-runner]\nrunner = \"memfd\"\n",
        srv.port
    ));
    let err = assert_launcher_error(&srv.server(&[]), 1);
    assert!(err.contains("services.agent-runner") && err.contains("cannot run from a memfd"), "{err}");
    assert!(srv.home_procs().is_empty(), "nothing was started: {}", describe_procs(&srv.home_procs()));
}

fn exe_of(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap().display().to_string()
}

#[test]
fn server_services_follow_the_default_and_their_own_runner() {
    let srv = Server::new(
        "[runner]\ndefault = \"cache\"\n\n[services.workflow-runner]\nrunner = \"memfd\"\n\n\
         [services.agent-runner]\nenabled = false\n",
    );
    srv.start();
    srv.wait_running(&["stigmer-server", "workflow-runner"]);
    let server = component_info(&srv.sb, "stigmer-server");
    let server_pid = srv.service_pid("stigmer-server");
    assert_eq!(exe_of(server_pid), cached_entry_point(&srv.sb, &server).display().to_string(), "the default");
    let runner_pid = srv.service_pid("workflow-runner");
    assert_eq!(exe_of(runner_pid), memfd_exe("workflow-runner"), "the service's own runner beats the default");
    // For its own start only: what workflow-runner starts (agent-runner from PATH) follows the policy.
    let env = proc_environ(runner_pid);
    assert!(!env.iter().any(|kv| kv.starts_with("STIGMER_SERVICE_RUNNER=")), "{env:?}");
    srv.stop();
}

#[test]
fn doctor_shows_the_policy_and_the_memfd_process_name() {
    let sb = Sandbox::new();
    let doctor = |env: &[(&str, &str)]| {
        let mut cmd = sb.stigmer();
        cmd.args(["doctor", "--json"]).envs(env.iter().copied());
        let out = run(cmd);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", describe(&out)));
        let check = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "runner").unwrap().clone();
        (check["status"].as_str().unwrap().to_owned(), check["detail"].as_str().unwrap().to_owned())
    };
    let (status, detail) = doctor(&[]);
    assert_eq!(status, "ok");
    assert!(detail.contains("policy auto (built in"), "{detail}");
    // The example is the longest memfd-run name, so the cut shows.
    assert!(detail.contains("(e.g. memfd:workflow-)"), "{detail}");
    assert!(detail.contains("pgrep -x") && detail.contains("/memfd:NAME (deleted)"), "{detail}");

    let path = write_config(&sb, "[runner]\ndefault = \"cache\"\n");
    let (_, detail) = doctor(&[]);
    assert!(detail.contains(&format!("policy cache ([runner] default in {})", path.display())), "{detail}");
    assert!(detail.contains("no component runs from a memfd"), "{detail}");
    let (_, detail) = doctor(&[("STIGMER_RUNNER", "memfd")]);
    assert!(detail.contains("policy memfd (STIGMER_RUNNER in the environment)"), "{detail}");

    write_config(&sb, "[runner]\ndefault = \"fast\"\n");
    let (status, detail) = doctor(&[]);
    assert_eq!(status, "fail");
    assert!(detail.contains(&format!("{}:2:", path.display())), "{detail}");

    // What doctor says is what the kernel shows: a memfd-run component's comm is memfd:NAME cut
    // to 15 bytes, and ps -C / pgrep -x by the component's name find nothing.
    std::fs::remove_file(&path).unwrap();
    let port = free_port();
    let mut cmd = sb.component("stigmer-server");
    cmd.env("PORT", port.to_string()).env("STIGMER_DATA_DIR", sb.home().join("data"));
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let child = ChildGuard(cmd.spawn().unwrap());
    let pid = child.0.id() as i32;
    let comm = wait_for(Duration::from_secs(20), "stigmer-server running from its memfd", || {
        (exe_of(pid) == memfd_exe("stigmer-server"))
            .then(|| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap())
    });
    assert_eq!(comm.trim_end(), "memfd:stigmer-s");
    // pgrep -x and ps -C match the comm: a scan by name does not find it (other tests may run
    // a cache-run stigmer-server meanwhile, so only our pid is looked for).
    let named: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == "stigmer-server"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!named.contains(&pid.to_string()), "found by name: {named:?}");
    drop(child);
}
