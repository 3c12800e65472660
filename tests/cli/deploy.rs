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

/// Renders with ARGS in a home holding CONFIG, and compares with (or, blessed, writes) GOLDEN.
fn check(config: Option<&str>, args: &[&str], name: &str) {
    let sandbox = Sandbox::new();
    if let Some(config) = config {
        fs::write(sandbox.home().join("config.toml"), config).unwrap();
    }
    let mut cmd = sandbox.stigmer();
    cmd.arg("deploy").args(args);
    let out = run(cmd);
    assert_code(&out, 0);
    let text = stdout(&out);
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
    check(None, &["kubernetes", "--image", "localhost/stigmer:test"], "kubernetes.yaml");
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
    check(
        Some(CONFIG_ALL_KINDS),
        &["kubernetes", "--replicas", "agent-runner=3", "--replicas", "web=2"],
        "kubernetes-all.yaml",
    );
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
        let docs: Vec<String> = text
            .split("\n---\n")
            .map(|d| d.lines().filter(|l| !l.starts_with('#') && *l != "---").collect::<Vec<_>>().join("\n"))
            .filter(|d| !d.trim().is_empty())
            .collect();
        assert!(!docs.is_empty(), "{engine}: no document");
        for doc in &docs {
            serde_json::from_str::<serde_json::Value>(doc).unwrap_or_else(|e| panic!("{engine}: {e}\n{doc}"));
        }
    }
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
