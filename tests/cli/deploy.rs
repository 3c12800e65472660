//! `stigmer deploy kubernetes|compose`: the platform rendered from the service table, compared
//! with golden files (tests/cli/golden/), so a change to components.toml or to the renderer shows
//! in review. `STIGMER_BLESS=1 cargo nextest run -E 'test(deploy::)'` rewrites them.

use std::fs;
use std::path::PathBuf;

use crate::util::*;

/// A config.toml that reaches every translation: http, tcp, exec and started_ms readiness,
/// exec and tcp health, an external dependency, an added stateful service and replicas.
const CONFIG_ALL_KINDS: &str = r#"
[services.stigmer-server]
env = { STIGMER_JOB_LEASE = "3s" }

[services.cache]
command = "cache-server"
port = 6379
ready = { tcp = true }
health = { tcp = true, interval_ms = 1500, timeout_ms = 500, failures = 2 }
args = ["--dir", "${data_dir}", "--listen", "${addr}"]

[services.web]
command = "web"
port = 8080
ready = { http = "/ready" }
health = { exec = ["web", "check"], interval_ms = 10000 }
depends_on = ["cache", "search"]
env = { CACHE = "${cache.addr}", SEARCH = "http://${search.addr}/", SEARCH_PORT = "${search.port}" }
restart = "always"

[services.batch]
command = "batch"
ready = { started_ms = 2500 }
depends_on = ["web"]
restart = "never"

[services.search]
external = "search.example.com:9200"
"#;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cli/golden").join(name)
}

/// The arguments of the two Kubernetes renderings: the golden files and the schema check.
const KUBERNETES_REFERENCE: &[&str] = &["kubernetes", "--image", "localhost/stigmer:test"];
const KUBERNETES_ALL_KINDS: &[&str] = &["kubernetes", "--replicas", "agent-runner=3", "--replicas", "web=2"];

/// `stigmer deploy ARGS` in a home holding CONFIG: its output.
fn render(config: Option<&str>, args: &[&str]) -> String {
    let sandbox = Sandbox::new();
    if let Some(config) = config {
        fs::write(sandbox.home().join("config.toml"), config).unwrap();
    }
    let mut cmd = sandbox.stigmer();
    cmd.arg("deploy").args(args);
    let out = run(cmd);
    assert_code(&out, 0);
    stdout(&out)
}

/// The JSON documents of a rendering, without the `#` comments and `---` separators.
fn documents(text: &str) -> Vec<String> {
    text.split("\n---\n")
        .map(|d| d.lines().filter(|l| !l.starts_with('#') && *l != "---").collect::<Vec<_>>().join("\n"))
        .filter(|d| !d.trim().is_empty())
        .collect()
}

/// Renders with ARGS in a home holding CONFIG, and compares with (or, blessed, writes) GOLDEN.
fn check(config: Option<&str>, args: &[&str], name: &str) {
    let text = render(config, args);
    let path = golden(name);
    if std::env::var_os("STIGMER_BLESS").is_some() {
        fs::write(&path, &text).unwrap();
        return;
    }
    let want =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (STIGMER_BLESS=1 writes it)", path.display()));
    assert!(
        text == want,
        "`stigmer deploy {}` differs from {}; if the change is meant, regenerate with \
         STIGMER_BLESS=1 cargo nextest run -E 'test(deploy::)' and review the diff\n--- got ---\n{text}",
        args.join(" "),
        path.display()
    );
}

#[test]
fn compose_of_the_reference_services() {
    check(None, &["compose"], "compose.yaml");
}

#[test]
fn kubernetes_of_the_reference_services() {
    check(None, KUBERNETES_REFERENCE, "kubernetes.yaml");
}

#[test]
fn compose_of_every_kind() {
    check(
        Some(CONFIG_ALL_KINDS),
        &["compose", "--replicas", "agent-runner=3", "--replicas", "web=2"],
        "compose-all.yaml",
    );
}

#[test]
fn kubernetes_of_every_kind() {
    check(Some(CONFIG_ALL_KINDS), KUBERNETES_ALL_KINDS, "kubernetes-all.yaml");
}

/// The output is JSON under `#` comments: every document parses, and `${...}` is gone.
#[test]
fn every_document_is_json_with_nothing_left_to_substitute() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.home().join("config.toml"), CONFIG_ALL_KINDS).unwrap();
    for engine in ["compose", "kubernetes"] {
        let mut cmd = sandbox.stigmer();
        cmd.args(["deploy", engine]);
        let out = run(cmd);
        assert_code(&out, 0);
        let text = stdout(&out);
        assert!(!text.contains("${"), "{engine}: a substitution was left:\n{text}");
        let docs = documents(&text);
        assert!(!docs.is_empty(), "{engine}: no document");
        for doc in &docs {
            serde_json::from_str::<serde_json::Value>(doc).unwrap_or_else(|e| panic!("{engine}: {e}\n{doc}"));
        }
    }
}

/// The Kubernetes versions whose API schemas the manifests are checked against: the oldest and
/// the newest that kubernetes-validate (pinned in tests/fixtures/build.sh) ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];

/// `kubernetes-validate --strict` for VERSION over TEXT (from target/venv, which
/// tests/fixtures/build.sh makes): Ok when it exits 0 and reports every document passed (a kind
/// without a schema is only a warning there), else its report.
fn kubernetes_validate(text: &str, version: &str) -> Result<(), String> {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/kubernetes-validate");
    assert!(
        bin.exists(),
        "{} is missing: tests/fixtures/build.sh installs it (make fixtures, make test)",
        bin.display()
    );
    let dir = tempdir();
    let file = dir.path().join("stigmer.yaml");
    fs::write(&file, text).unwrap();
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["--strict", "--kubernetes-version", version]).arg(&file);
    let out = run(cmd);
    let report = format!("{}{}", stdout(&out), stderr(&out));
    let passed = report.lines().filter(|l| l.contains(" passed for resource ")).count();
    let docs = documents(text).len();
    if out.status.success() && passed == docs && !report.contains("WARN") {
        Ok(())
    } else {
        Err(format!("{version}: {passed} of {docs} documents passed, {:?}\n{report}", out.status))
    }
}

/// The Kubernetes manifests (the reference services, and every kind) decode strictly against
/// the API's OpenAPI schemas: no unknown field, every type and required field right. And the
/// check can fail: one misspelt field, or a kind the API has not, is refused.
#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let manifests = [render(None, KUBERNETES_REFERENCE), render(Some(CONFIG_ALL_KINDS), KUBERNETES_ALL_KINDS)];
    for version in KUBERNETES_VERSIONS {
        for text in &manifests {
            kubernetes_validate(text, version).unwrap_or_else(|e| panic!("{e}\n--- manifests ---\n{text}"));
        }
    }
    let text = &manifests[0];
    let version = KUBERNETES_VERSIONS[1];
    // The first `replicas` is stigmer-server's Deployment spec's.
    let misspelt = text.replacen("\"replicas\": 1,", "\"replica\": 1,", 1);
    assert_ne!(&misspelt, text);
    let err = kubernetes_validate(&misspelt, version).expect_err("a misspelt field passed");
    assert!(err.contains("'replica' was unexpected") && err.contains("deployment/stigmer-server"), "{err}");
    let unknown_kind = text.replacen("\"kind\": \"Deployment\"", "\"kind\": \"Deploymnt\"", 1);
    assert_ne!(&unknown_kind, text);
    let err = kubernetes_validate(&unknown_kind, version).expect_err("an unknown kind passed");
    assert!(err.contains("Deploymnt"), "{err}");
}

/// A stateful service cannot be scaled (one volume), a name that is no service is named, and
/// `${home}` has no container meaning: each one line, exit 1, nothing on stdout.
#[test]
fn refusals_say_what_to_do() {
    let sandbox = Sandbox::new();
    let cases: [(Option<&str>, &[&str], &str); 3] = [
        (None, &["compose", "--replicas", "stigmer-server=2"], "keeps its state in ${data_dir}"),
        (None, &["kubernetes", "--replicas", "nosuch=2"], "no service \"nosuch\" runs here"),
        (
            Some("[services.x]\ncommand = \"x\"\nargs = [\"${home}\"]\n"),
            &["compose"],
            "${home} has no meaning in a container",
        ),
    ];
    for (config, args, want) in cases {
        match config {
            Some(c) => fs::write(sandbox.home().join("config.toml"), c).unwrap(),
            None => drop(fs::remove_file(sandbox.home().join("config.toml"))),
        }
        let mut cmd = sandbox.stigmer();
        cmd.arg("deploy").args(args);
        let out = run(cmd);
        assert_code(&out, 1);
        let err = stderr(&out);
        assert!(err.contains(want) && err.lines().count() == 1, "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: wrote {}", stdout(&out));
    }
}

/// `stigmer image` twice over the same binary: the same bytes. The layer has the binary, a link
/// per component, the image's user, and the read-only system cache; every entry is sorted, owned
/// by root (but the data directory), no name, its mtime SOURCE_DATE_EPOCH.
#[test]
fn image_is_reproducible_and_laid_out() {
    let sandbox = Sandbox::new();
    let dirs = [tempdir(), tempdir()];
    let mut digests = Vec::new();
    for dir in &dirs {
        let mut cmd = sandbox.stigmer();
        cmd.args(["image", dir.path().to_str().unwrap()]).env("SOURCE_DATE_EPOCH", "1700000000");
        let out = run(cmd);
        assert_code(&out, 0);
        digests.push(stdout(&out).lines().next().unwrap().to_owned());
    }
    assert_eq!(digests[0], digests[1]);
    let archives: Vec<Vec<u8>> = dirs.iter().map(|d| fs::read(d.path().join("stigmer.tar")).unwrap()).collect();
    assert!(archives[0] == archives[1], "two builds of the same binary wrote different archives");

    let oci = dirs[0].path().join("oci");
    let blob = |digest: &str| oci.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let index: serde_json::Value = serde_json::from_slice(&fs::read(oci.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    assert_eq!(format!("digest    {manifest_digest}"), digests[0]);
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(blob(manifest_digest)).unwrap()).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap()).unwrap();
    assert_eq!(config["config"]["User"], "65532");
    assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/stigmer");
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    assert_eq!(manifest["annotations"]["org.opencontainers.image.created"], "2023-11-14T22:13:20Z");
    let layer = fs::read(blob(manifest["layers"][0]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(sha256_hex(&layer), manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:"));

    let mut names = Vec::new();
    let mut archive = tar::Archive::new(layer.as_slice());
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        let name = entry.path().unwrap().to_str().unwrap().trim_end_matches('/').to_owned();
        assert_eq!(h.mtime().unwrap(), 1_700_000_000, "{name}");
        assert_eq!((h.username().unwrap(), h.groupname().unwrap()), (Some(""), Some("")), "{name}");
        let uid = if name == "var/lib/stigmer" { 65532 } else { 0 };
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (uid, 0), "{name}");
        if name.starts_with("usr/lib/stigmer/cache/") && h.entry_type() != tar::EntryType::Symlink {
            assert_eq!(h.mode().unwrap() & 0o222, 0, "{name} is writable in the system cache");
        }
        names.push(name);
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "layer entries are not sorted");
    for c in ALL_COMPONENTS {
        assert!(names.contains(&format!("usr/local/bin/{c}")), "no link for {c}");
    }
    let agent = component_info(&sandbox, "agent-runner");
    let entry = format!("usr/lib/stigmer/cache/{}/agent-runner/agent-runner", agent.sha256);
    assert!(names.contains(&entry), "agent-runner is not unpacked into the system cache: {entry}");
    // The shared libraries the PyInstaller entry point links before it runs (the C library and
    // its loader, zlib) are in the image at the paths the loader looks for.
    let ldd = std::process::Command::new("ldd").arg(fixtures_dir().join("agent-runner/agent-runner")).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line.split("=>").last().unwrap().split_whitespace().next().unwrap_or_default();
        if let Some(rel) = path.strip_prefix('/') {
            assert!(names.iter().any(|n| n == rel), "{path}, which agent-runner links, is not in the image");
        }
    }
    for needed in ["usr/local/bin/stigmer", "etc/passwd", "etc/group"] {
        assert!(names.iter().any(|n| n == needed), "no {needed}");
    }
}

/// A component that runs from the cache, for a user who cannot write where the cache goes (uid
/// 4242, no passwd entry, a home under a root-owned directory): one line naming the directory
/// and the fix, not "free some space".
#[test]
fn an_unwritable_cache_names_the_directory_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !is_root() {
        eprintln!("skipped: needs root to run as uid 4242");
        return;
    }
    let top = tempfile::Builder::new().prefix("stigmer-unwritable-").tempdir().unwrap();
    fs::set_permissions(top.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = top.path().join("stigmer");
    fs::copy(stigmer_bin(), &bin).unwrap();
    let home = top.path().join("home");
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["exec", "agent-runner", "--version"]).env("STIGMER_HOME", &home).env_remove("STIGMER_RUNNER");
    cmd.uid(4242).gid(4242);
    let out = run(cmd);
    assert_code(&out, 126);
    let err = stderr(&out);
    let want = format!("{} is not writable (Permission denied)", home.join("cache").display());
    assert!(err.contains(&want) && err.contains("set STIGMER_HOME") && err.lines().count() == 1, "{err}");
    assert!(!err.contains("free some space"), "{err}");
}

/// `stigmer healthcheck`, the check Compose healthchecks run in the image: 0 when the port answers
/// (2xx for http), else 1 and one line saying why.
#[test]
fn healthcheck_answers_by_exit_code() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let mut stream = stream.unwrap();
            // The whole request head first (the probe may write it in pieces).
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let status = if i % 2 == 0 { "200 OK" } else { "503 Service Unavailable" };
            let _ = write!(stream, "HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let sandbox = Sandbox::new();
    let probe = |args: &[&str]| {
        let mut cmd = sandbox.stigmer();
        cmd.arg("healthcheck").args(args);
        run(cmd)
    };
    assert_code(&probe(&["http", &addr, "/healthz"]), 0);
    let out = probe(&["http", &addr, "/healthz"]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("503"), "{}", describe(&out));
    let closed = format!("127.0.0.1:{}", free_port());
    let out = probe(&["tcp", &closed]);
    assert_code(&out, 1);
    assert_eq!(stderr(&out).lines().count(), 1, "{}", describe(&out));
}
