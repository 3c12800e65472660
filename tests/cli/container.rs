//! The image on a real engine (podman, docs/DEPLOY.md): `stigmer image` over the test binary,
//! loaded with `podman load` (no registry: the test builds every image it runs), each reference
//! component's `--version`, and a workflow job done end to end, every container with a read-only
//! root, an arbitrary uid without a passwd entry, no capabilities, no-new-privileges and no
//! volume. Skipped, saying so, only where no podman is installed (`make test` installs it where
//! apt-get exists: packaging/scripts/container-deps.sh).
//!
//! This machine's quirks (docs/DEPLOY.md): crun refuses its cgroup hybrid, so `--runtime runc`;
//! raising rlimits is refused, so `--ulimit nofile=1024:1024 --ulimit nproc=1024:1024`.

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
    Some(Podman { tag: format!("localhost/{id}:test"), id, containers: Vec::new(), networks: Vec::new() })
}

/// One test's podman objects, removed on drop (even when the test fails).
struct Podman {
    id: String,
    tag: String,
    containers: Vec<String>,
    networks: Vec<String>,
}

impl Podman {
    fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.args(["--runtime", "runc"]);
        cmd
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
        self.containers
            .iter()
            .map(|c| {
                let mut cmd = self.cmd();
                cmd.args(["logs", c]);
                format!("--- {c} ---\n{}", describe(&run(cmd)))
            })
            .collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.cmd().args(["rm", "-f", "-t", "0", c]).output();
        }
        for n in &self.networks {
            let _ = self.cmd().args(["network", "rm", "-f", n]).output();
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
