//! The image on a real engine (podman, docs/DEPLOY.md): `stigmer image` over the test binary,
//! loaded with `podman load` (no registry: the test builds every image it runs), each reference
//! component's `--version`, and a workflow job done end to end, every container with a read-only
//! root, an arbitrary uid without a passwd entry, no capabilities, no-new-privileges and no
//! volume. Skipped, saying so, only where no podman is installed (`make test` installs it where
//! apt-get exists: packaging/scripts/container-deps.sh).
//!
//! Then the platform from `stigmer deploy compose` under podman-compose: a workflow job done,
//! agent-runner scaled to 3 with every replica claiming jobs, and one replica killed while it
//! runs a job, whose job comes back to the queue when its lease (3 s here) lapses.
//!
//! This machine's quirks (docs/DEPLOY.md): crun refuses its cgroup hybrid, so `--runtime runc`;
//! raising rlimits is refused, so `--ulimit nofile=1024:1024 --ulimit nproc=1024:1024`
//! (podman-compose passes neither: a containers.conf named by CONTAINERS_CONF sets both).

use std::fs;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::util::*;

/// Every `podman run` of these tests: what an OpenShift-like platform imposes.
const LOCKED_DOWN: &[&str] = &[
    "--read-only",
    "--user",
    "123456:0",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// podman with this machine's runtime, or None (and a line saying why) when none is installed.
fn podman() -> Option<Podman> {
    let found = Command::new("podman").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: no podman on PATH (make container-deps installs podman and runc where apt-get exists)");
        return None;
    }
    let id = format!("stigmer-test-{}-{}", std::process::id(), Instant::now().elapsed().as_nanos());
    let conf = tempdir();
    fs::write(
        conf.path().join("containers.conf"),
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n[engine]\nruntime = \"runc\"\n",
    )
    .unwrap();
    Some(Podman {
        tag: format!("localhost/{id}:test"),
        id,
        conf,
        containers: Vec::new(),
        pods: Vec::new(),
        networks: Vec::new(),
        volumes: Vec::new(),
    })
}

/// One test's podman objects, removed on drop (even when the test fails).
struct Podman {
    id: String,
    tag: String,
    /// containers.conf for what takes no --runtime or --ulimit (podman-compose).
    conf: tempfile::TempDir,
    containers: Vec<String>,
    pods: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
}

impl Podman {
    fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.args(["--runtime", "runc"]).env("CONTAINERS_CONF", self.conf.path().join("containers.conf"));
        cmd
    }

    /// podman-compose on FILES as project `self.id`, with this machine's containers.conf.
    fn compose(&self, files: &[&std::path::Path], args: &[&str]) -> Output {
        let mut cmd = Command::new("podman-compose");
        cmd.args(["-p", &self.id]);
        for file in files {
            cmd.arg("-f").arg(file);
        }
        cmd.args(args);
        cmd.env("CONTAINERS_CONF", self.conf.path().join("containers.conf"));
        let out = run(cmd);
        assert!(out.status.success(), "podman-compose {}: {}", args.join(" "), describe(&out));
        out
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> Output {
        let mut cmd = self.cmd();
        cmd.args(args);
        let out = run(cmd);
        assert!(out.status.success(), "podman {}: {}", args.join(" "), describe(&out));
        out
    }

    /// `stigmer image` over the test binary, loaded under this test's own tag; the build's figures.
    fn build_image(&self) -> String {
        let dir = tempdir();
        let sandbox = Sandbox::new();
        let mut cmd = sandbox.stigmer();
        cmd.args(["image", dir.path().to_str().unwrap(), "--tag", &self.tag]).env("SOURCE_DATE_EPOCH", "1764806400");
        let started = Instant::now();
        let out = run(cmd);
        assert_code(&out, 0);
        let built = started.elapsed();
        let started = Instant::now();
        self.ok(&["load", "-q", "-i", dir.path().join("stigmer.tar").to_str().unwrap()]);
        eprintln!("image: written in {built:.1?}, loaded in {:.1?}", started.elapsed());
        stdout(&out)
    }

    /// Starts a detached container NAME running COMPONENT locked down, with EXTRA podman flags.
    fn start(&mut self, name: &str, component: &str, extra: &[&str]) {
        let name = format!("{}-{name}", self.id);
        let mut args = vec!["run", "-d", "--name", &name];
        args.extend(LOCKED_DOWN);
        args.extend(extra);
        args.extend(["--entrypoint", component, &self.tag]);
        self.ok(&args);
        self.containers.push(name);
    }

    fn network(&mut self) -> String {
        let name = format!("{}-net", self.id);
        self.ok(&["network", "create", &name]);
        self.networks.push(name.clone());
        name
    }

    fn logs(&self) -> String {
        let logs = |args: &[&str], name: &str| {
            let mut cmd = self.cmd();
            cmd.args(args).arg(name);
            format!("--- {name} ---\n{}", describe(&run(cmd)))
        };
        let containers = self.containers.iter().map(|c| logs(&["logs"], c));
        containers.chain(self.pods.iter().map(|p| logs(&["pod", "logs"], p))).collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.cmd().args(["rm", "-f", "-t", "0", c]).output();
        }
        for p in &self.pods {
            let _ = self.cmd().args(["pod", "rm", "-f", "-t", "0", p]).output();
        }
        for n in &self.networks {
            let _ = self.cmd().args(["network", "rm", "-f", n]).output();
        }
        for v in &self.volumes {
            let _ = self.cmd().args(["volume", "rm", "-f", v]).output();
        }
        let _ = self.cmd().args(["rmi", "-f", &self.tag]).output();
    }
}

/// The image starts each reference component locked down (no home, no volume, an unknown uid),
/// and runs a workflow job: stigmer-server, and workflow-runner, which runs the PyInstaller
/// agent-runner from the image's read-only system cache for the job.
#[test]
fn image_runs_every_component_locked_down_and_a_workflow_job() {
    let Some(mut podman) = podman() else { return };
    let built = podman.build_image();
    assert!(built.contains("unpacked  agent-runner"), "agent-runner is not unpacked into the image:\n{built}");
    for component in ["stigmer-server", "workflow-runner", "agent-runner"] {
        let mut args = vec!["run", "--rm"];
        args.extend(LOCKED_DOWN);
        args.extend(["--entrypoint", component, &podman.tag, "--version"]);
        let started = Instant::now();
        let out = podman.ok(&args);
        eprintln!("podman run {component} --version: {:.0?}", started.elapsed());
        assert_eq!(stdout(&out), format!("{component} 0.1.0\n"), "{}", describe(&out));
    }
    // No writable directory at all (no tmpfs on /tmp either, as under Kubernetes): a large job,
    // whose sort would spill to a temporary file, still runs.
    let mut cmd = podman.cmd();
    cmd.args(["run", "--rm", "-i", "--read-only-tmpfs=false"]).args(LOCKED_DOWN);
    cmd.args(["--entrypoint", "agent-runner", &podman.tag, "run"]);
    let out = run_with_input(cmd, "spill ".repeat(200_000).as_bytes());
    assert_code(&out, 0);
    assert!(stdout(&out).contains("\"words\": 200000"), "{}", describe(&out));
    // podman gives a uid without a passwd entry HOME=/; a platform may leave HOME unset.
    let mut args = vec!["run", "--rm", "--unsetenv", "HOME"];
    args.extend(LOCKED_DOWN);
    args.extend(["--entrypoint", "agent-runner", &podman.tag, "--version"]);
    assert_eq!(stdout(&podman.ok(&args)), "agent-runner 0.1.0\n");

    // A job from a fresh container to done: the server's jobs on the tmpfs podman puts on /tmp
    // of a read-only container (not a volume), the runner reaching it by container name.
    let net = podman.network();
    let port = free_port();
    let server = format!("{}-server", podman.id);
    let publish = format!("127.0.0.1:{port}:7234");
    let started = Instant::now();
    podman.start(
        "server",
        "stigmer-server",
        &["--network", &net, "-p", &publish, "-e", "STIGMER_LISTEN=0.0.0.0:7234", "-e", "STIGMER_DATA_DIR=/tmp/jobs"],
    );
    let url = format!("STIGMER_SERVER_URL=http://{server}:7234");
    podman.start("runner", "workflow-runner", &["--network", &net, "-e", &url]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(port, "GET", "/healthz", None).is_err() {
        assert!(Instant::now() < deadline, "stigmer-server never answered on {port}\n{}", podman.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let id = submit_job(port, "workflow", "an image runs a job: the image");
    let job = wait_job_done(port, &id);
    eprintln!("containers started to workflow job done: {:.1?}", started.elapsed());
    let output: serde_json::Value = serde_json::from_str(job["output"].as_str().unwrap()).unwrap();
    assert_eq!(output["engine"], "agent-runner", "{job}\n{}", podman.logs());
    assert_eq!(output["top_word"], "image", "{job}");
}

/// The platform as separate containers from the generated Compose file: a workflow job done,
/// three agent-runner replicas each claiming jobs, and a replica killed mid-job without losing it.
#[test]
fn compose_platform_scales_and_survives_a_killed_runner() {
    let Some(mut podman) = podman() else { return };
    if Command::new("podman-compose").arg("--help").output().is_err() {
        eprintln!("skipped: no podman-compose on PATH (make container-deps installs it where apt-get exists)");
        return;
    }
    podman.build_image();
    let sandbox = Sandbox::new();
    // A short lease, so that the killed replica's job is back in the queue within the test.
    fs::write(sandbox.home().join("config.toml"), "[services.stigmer-server]\nenv = { STIGMER_JOB_LEASE = \"3s\" }\n")
        .unwrap();
    let mut cmd = sandbox.stigmer();
    cmd.args(["deploy", "compose", "--image", &podman.tag, "--replicas", "agent-runner=3"]);
    let out = run(cmd);
    assert_code(&out, 0);
    let dir = tempdir();
    let file = dir.path().join("compose.yaml");
    fs::write(&file, stdout(&out)).unwrap();
    // The test reaches stigmer-server on loopback only: an override file publishes its port (the
    // generated file publishes nothing; the services reach each other on the project network).
    let port = free_port();
    let over = dir.path().join("publish.yaml");
    fs::write(&over, format!("services:\n  stigmer-server:\n    ports: [\"127.0.0.1:{port}:7234\"]\n")).unwrap();
    let id = podman.id.clone();
    for (service, n) in [("stigmer-server", 1), ("agent-runner", 3), ("workflow-runner", 1)] {
        podman.containers.extend((1..=n).map(|i| format!("{id}_{service}_{i}")));
    }
    podman.networks.push(format!("{id}_default"));
    podman.volumes.push(format!("{id}_stigmer-server-data"));

    let started = Instant::now();
    podman.compose(&[&file, &over], &["up", "-d"]);
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_to(server, "GET", "/healthz", None).is_err() {
        assert!(Instant::now() < deadline, "stigmer-server never answered at {server}\n{}", podman.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let job = submit(server, "workflow", "compose runs compose");
    wait_done(server, &job, &podman);
    eprintln!("compose up to a workflow job done: {:.1?}", started.elapsed());

    // Every replica claims: enough jobs that one runner alone would not take them all first.
    let jobs: Vec<String> = (0..30).map(|i| submit(server, "agent", &format!("job {i}"))).collect();
    for job in &jobs {
        wait_done(server, job, &podman);
    }
    let claims: Vec<usize> = (1..=3)
        .map(|i| {
            let mut cmd = podman.cmd();
            cmd.args(["logs", &format!("{id}_agent-runner_{i}")]);
            describe(&run(cmd)).matches(": done in ").count()
        })
        .collect();
    eprintln!("agent jobs done per replica (30 jobs): {claims:?}");
    assert!(claims.iter().all(|&n| n > 0), "a replica claimed nothing: {claims:?}\n{}", podman.logs());

    // Kill a replica while every replica runs a job (inputs big enough to take a while), and
    // every job still ends done: the lost one after its lease lapses.
    // The replica's process as the host sees it, looked up before the jobs go in, so that the
    // kill lands at once (a `podman kill` takes a second or more on a loaded machine, long enough
    // for the replica to finish its job).
    let victim = format!("{id}_agent-runner_1");
    let pid = stdout(&podman.ok(&["inspect", &victim, "--format", "{{.State.Pid}}"])).trim().parse::<i32>().unwrap();
    let big = "lease ".repeat(200_000);
    let jobs: Vec<String> = (0..6).map(|_| submit(server, "agent", &big)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = http_to(server, "GET", "/v1/jobs?kind=agent&status=running", None).unwrap();
        if serde_json::from_str::<serde_json::Value>(&list).unwrap().as_array().unwrap().len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "three jobs never ran at once\n{}", podman.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    for job in &jobs {
        wait_done(server, job, &podman);
    }
    let mut cmd = podman.cmd();
    cmd.args(["logs", &format!("{id}_stigmer-server_1")]);
    let lapsed = describe(&run(cmd)).matches("lease lapsed").count();
    eprintln!(
        "replica killed with 3 jobs running: all 6 done {:.1?} after the kill, {lapsed} lease(s) lapsed",
        killed.elapsed()
    );
    assert!(lapsed >= 1, "no job went back to the queue after the kill\n{}", podman.logs());
}

#[track_caller]
fn submit(server: SocketAddr, kind: &str, input: &str) -> String {
    let body = serde_json::json!({ "kind": kind, "input": input }).to_string();
    let (code, text) =
        http_to(server, "POST", "/v1/jobs", Some(&body)).unwrap_or_else(|e| panic!("POST /v1/jobs: {e}"));
    assert_eq!(code, 201, "{text}");
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["id"].as_str().unwrap().to_owned()
}

/// Polls job ID until done (60 s: a lease has to lapse for some).
#[track_caller]
fn wait_done(server: SocketAddr, id: &str, podman: &Podman) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, text) = http_to(server, "GET", &format!("/v1/jobs/{id}"), None).unwrap();
        let job: serde_json::Value = serde_json::from_str(&text).unwrap();
        match job["status"].as_str() {
            Some("done") => return,
            Some("failed") => panic!("job {id} failed: {job}"),
            _ if Instant::now() > deadline => panic!("job {id} not done in 60 s: {job}\n{}", podman.logs()),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The Kubernetes manifests run by `podman kube play`: every Deployment's pods start locked down
/// (the manifests' own securityContext), the claim becomes a volume, and a workflow job and an
/// agent job (two agent-runner replicas) are done. What the test changes, for podman and for
/// running beside other runs, and nothing of what is translated: names get the test's prefix,
/// stigmer-server's port is published on loopback (hostPort), and stigmer-server's pod gets the
/// network alias `stigmer-server`, which a Kubernetes Service would give (kube play's pods are
/// named NAME-pod-N and the Service name resolves to nothing).
#[test]
fn kubernetes_manifests_run_under_podman_kube_play() {
    let Some(mut podman) = podman() else { return };
    podman.build_image();
    let sandbox = Sandbox::new();
    let mut cmd = sandbox.stigmer();
    cmd.args(["deploy", "kubernetes", "--image", &podman.tag, "--replicas", "agent-runner=2"]);
    let out = run(cmd);
    assert_code(&out, 0);
    let port = free_port();
    let id = podman.id.clone();
    let mut docs = Vec::new();
    for text in stdout(&out).split("\n---\n") {
        let json: String = text.lines().filter(|l| !l.starts_with('#') && *l != "---").collect::<Vec<_>>().join("\n");
        if json.trim().is_empty() {
            continue;
        }
        let mut doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
        doc["metadata"]["name"] = format!("{id}-{name}").into();
        match doc["kind"].as_str().unwrap() {
            "Deployment" => {
                let replicas = doc["spec"]["replicas"].as_u64().unwrap();
                podman.pods.extend((0..replicas).map(|i| format!("{id}-{name}-pod-{i}")));
                let pod = &mut doc["spec"]["template"]["spec"];
                for v in pod["volumes"].as_array_mut().into_iter().flatten() {
                    let claim = v["persistentVolumeClaim"]["claimName"].as_str().unwrap().to_owned();
                    v["persistentVolumeClaim"]["claimName"] = format!("{id}-{claim}").into();
                }
                if name == "stigmer-server" {
                    pod["containers"][0]["ports"][0]["hostPort"] = port.into();
                    pod["containers"][0]["ports"][0]["hostIP"] = "127.0.0.1".into();
                }
            }
            "PersistentVolumeClaim" => podman.volumes.push(format!("{id}-{name}")),
            _ => {}
        }
        docs.push(serde_json::to_string_pretty(&doc).unwrap());
    }
    let dir = tempdir();
    let file = dir.path().join("kube.yaml");
    fs::write(&file, docs.join("\n---\n")).unwrap();
    let net = podman.network();
    let started = Instant::now();
    podman.ok(&["kube", "play", "--network", &net, file.to_str().unwrap()]);
    let server_pod = format!("{id}-stigmer-server-pod-0");
    let infra = stdout(&podman.ok(&["pod", "inspect", &server_pod, "--format", "{{.InfraContainerID}}"]));
    podman.ok(&["network", "disconnect", &net, infra.trim()]);
    podman.ok(&["network", "connect", "--alias", "stigmer-server", &net, infra.trim()]);
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_to(server, "GET", "/healthz", None).is_err() {
        assert!(Instant::now() < deadline, "stigmer-server never answered on {port}\n{}", podman.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let workflow = submit(server, "workflow", "kube play plays");
    let agent = submit(server, "agent", "kube play plays");
    wait_done(server, &workflow, &podman);
    wait_done(server, &agent, &podman);
    eprintln!("kube play to a workflow and an agent job done: {:.1?}", started.elapsed());
    let user = podman.ok(&[
        "inspect",
        &format!("{server_pod}-stigmer-server"),
        "--format",
        "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}",
    ]);
    assert_eq!(stdout(&user).trim(), "65532 true");
}
