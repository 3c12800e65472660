//! `stigmer deploy`: the platform as units of an existing container engine (Kubernetes,
//! Compose), rendered from the same service table `stigmer server` runs: the embedded
//! components.toml plus `$STIGMER_HOME/config.toml`, planned and checked by src/server/spec.rs.
//! This module turns that plan into engine-neutral units (what runs, where it is reached, how it
//! is probed, where its state lives); compose.rs and kubernetes.rs write them out as JSON
//! documents (YAML accepts JSON) preceded by `#` comments that say how each translation was made.
//!
//! The plan's args and env have `${...}` already resolved for one machine (127.0.0.1, the home's
//! data directory), so the templates are read again here, merged the way spec.rs merges them
//! (config.toml's `args` replace, its `env` entries add or override), and resolved for an
//! engine: `${NAME.addr}` is NAME's service DNS name and port, `${addr}` the service's own listen
//! address (0.0.0.0:PORT, so other containers reach it), `${data_dir}` its volume.

pub(crate) mod compose;
pub(crate) mod image;
pub(crate) mod kubernetes;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::home::Home;
use crate::server::spec::{self, Probe, Ready, Restart, Service};

/// Where a service's `${data_dir}` volume is mounted, in every container (one volume each).
pub(crate) const DATA_MOUNT: &str = "/var/lib/stigmer";

/// The image's user (distroless's "nonroot"); engines may run it as any other uid with gid 0.
pub(crate) const IMAGE_UID: u32 = 65532;

/// A probe the engine runs against one container of the service, never against another service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    Http { port: u16, path: String },
    Tcp { port: u16 },
    Exec(Vec<String>),
}

/// A check with its timing (the service table's health; readiness uses the engine's cadence).
#[derive(Debug, Clone)]
pub(crate) struct Timed {
    pub(crate) check: Check,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) failures: u32,
}

/// One service as an engine workload.
#[derive(Debug, Clone)]
pub(crate) struct Unit {
    pub(crate) name: String,
    /// The component (or command) the container runs: the image has a link per component on PATH.
    pub(crate) command: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) port: Option<u16>,
    /// None: the engine cannot see readiness and the unit is ready once started.
    pub(crate) ready: Option<Check>,
    /// `ready = { started_ms = N }`: ready once alive this long.
    pub(crate) ready_after: Option<Duration>,
    /// How `ready` was translated, for the output's comments.
    pub(crate) ready_note: String,
    pub(crate) health: Option<Timed>,
    pub(crate) depends_on: Vec<String>,
    pub(crate) replicas: u32,
    /// Uses `${data_dir}`: one replica, a volume at DATA_MOUNT, and that as working directory.
    pub(crate) stateful: bool,
    pub(crate) restart: Restart,
    pub(crate) stop_timeout: Duration,
}

/// The platform for an engine: the units in configuration order, and the image they all run.
#[derive(Debug, Clone)]
pub(crate) struct Platform {
    pub(crate) image: String,
    pub(crate) units: Vec<Unit>,
    /// `external` services: nothing is run for them; dependents get their address as is.
    pub(crate) external: Vec<(String, String)>,
}

/// Plans the home's service table and resolves it for an engine. `replicas` are NAME=N pairs
/// from the command line.
pub(crate) fn platform(home: &Home, image: &str, replicas: &[(String, u32)]) -> anyhow::Result<Platform> {
    let plan = spec::load(home)?;
    let config_path = home.config();
    let config_text = match std::fs::read_to_string(&config_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", config_path.display())),
    };
    let templates = Templates::read(crate::embed::COMPONENTS_TOML, &config_text)
        .with_context(|| format!("{} (already checked by the planner)", config_path.display()))?;
    for (name, n) in replicas {
        if !plan.services.iter().any(|s| s.name == *name && s.external.is_none()) {
            let names: Vec<&str> =
                plan.services.iter().filter(|s| s.external.is_none()).map(|s| s.name.as_str()).collect();
            bail!("--replicas {name}={n}: no service {name:?} runs here (services: {})", names.join(", "));
        }
    }
    let mut units = Vec::new();
    let mut external = Vec::new();
    for s in &plan.services {
        if let Some(addr) = &s.external {
            external.push((s.name.clone(), addr.clone()));
            continue;
        }
        let (args, env) = templates.of(&s.name);
        let stateful = args.iter().chain(env.values()).any(|t| t.contains("${data_dir}"));
        let args = args
            .iter()
            .map(|a| resolve(a, s, &plan.services).with_context(|| format!("services.{}.args", s.name)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let env = env
            .iter()
            .map(|(k, v)| {
                resolve(v, s, &plan.services)
                    .map(|v| (k.clone(), v))
                    .with_context(|| format!("services.{}.env.{k}", s.name))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let replicas = replicas.iter().rev().find(|(n, _)| *n == s.name).map_or(1, |(_, n)| *n);
        if stateful && replicas != 1 {
            bail!(
                "--replicas {}={replicas}: {} keeps its state in ${{data_dir}}, one volume, so it runs as one replica",
                s.name,
                s.name
            );
        }
        let (ready, ready_after, ready_note) = readiness(s);
        units.push(Unit {
            name: s.name.clone(),
            command: s.command.clone(),
            args,
            env,
            port: s.port,
            ready,
            ready_after,
            ready_note,
            health: s.health.as_ref().map(|h| Timed {
                check: check_of(&h.probe, s.port),
                interval: h.interval,
                timeout: h.timeout,
                failures: h.failures,
            }),
            // An external dependency is reached by its address; the engine runs nothing for it.
            depends_on: s
                .depends_on
                .iter()
                .filter(|d| plan.services.iter().any(|o| o.name == **d && o.external.is_none()))
                .cloned()
                .collect(),
            replicas,
            stateful,
            restart: s.restart,
            stop_timeout: s.stop_timeout,
        });
    }
    Ok(Platform { image: image.to_owned(), units, external })
}

fn check_of(probe: &Probe, port: Option<u16>) -> Check {
    // spec.rs refuses http and tcp health checks without a port.
    let port = port.unwrap_or_default();
    match probe {
        Probe::Http(path) => Check::Http { port, path: path.clone() },
        Probe::Tcp => Check::Tcp { port },
        Probe::Exec(argv) => Check::Exec(argv.clone()),
    }
}

/// The route for each readiness kind. `notify` (READY=1 on $NOTIFY_SOCKET) has no engine
/// counterpart: no engine hands a container a notify socket it then reads. A notify service
/// with a port is probed by tcp on that port (the reference stigmer-server sends READY=1 right
/// after its socket is served, which a connect observes); one without a port (the runners,
/// which listen on nothing) has no readiness probe: it is ready once started, and nothing a
/// dependent could wait for is lost, since the runners only poll the server.
fn readiness(s: &Service) -> (Option<Check>, Option<Duration>, String) {
    match (&s.ready, s.port) {
        (Ready::Http(path), Some(port)) => {
            (Some(Check::Http { port, path: path.clone() }), None, format!("ready: http GET {path} on {port}"))
        }
        (Ready::Tcp, Some(port)) => (Some(Check::Tcp { port }), None, format!("ready: tcp connect to {port}")),
        (Ready::Exec(argv), _) => (Some(Check::Exec(argv.clone())), None, format!("ready: exec {argv:?}")),
        (Ready::Notify, Some(port)) => (
            Some(Check::Tcp { port }),
            None,
            format!("ready: notify (READY=1) translated to a tcp connect to its port {port}"),
        ),
        (Ready::Notify, None) => {
            (None, None, "ready: notify (READY=1) and no port: no readiness probe, ready once started".to_owned())
        }
        (Ready::Started(d), _) if d.is_zero() => (None, None, "ready: once started".to_owned()),
        (Ready::Started(d), _) => (None, Some(*d), format!("ready: alive for {} ms", d.as_millis())),
        // spec.rs refuses http/tcp readiness without a port or an external address.
        (Ready::Http(_) | Ready::Tcp, None) => (None, None, "ready: once started".to_owned()),
    }
}

/// Expands a template for a container: `${port}`, `${addr}` (0.0.0.0:PORT, where the service
/// listens), `${data_dir}` (DATA_MOUNT), `${NAME.addr}` / `${NAME.port}` (NAME:PORT, the
/// engine's service name; an external service's own address). `${home}` has no container
/// meaning and is refused.
fn resolve(text: &str, s: &Service, all: &[Service]) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map(|e| start + e).with_context(|| format!("unclosed ${{ in {text:?}"))?;
        let key = &rest[start + 2..end];
        let value = match key {
            "port" => s.port.map(|p| p.to_string()),
            "addr" => s.port.map(|p| format!("0.0.0.0:{p}")),
            "data_dir" => Some(DATA_MOUNT.to_owned()),
            "home" => bail!("${{home}} has no meaning in a container: use ${{data_dir}} (a volume) instead"),
            _ => {
                let (dep, field) = key.rsplit_once('.').with_context(|| format!("unknown variable ${{{key}}}"))?;
                let dep =
                    all.iter().find(|o| o.name == dep).with_context(|| format!("unknown service in ${{{key}}}"))?;
                let addr = dep.external.clone().or_else(|| dep.port.map(|p| format!("{}:{p}", dep.name)));
                match field {
                    "addr" => addr,
                    "port" => addr.and_then(|a| a.rsplit_once(':').map(|(_, p)| p.to_owned())),
                    _ => bail!("unknown variable ${{{key}}} (use .addr or .port)"),
                }
            }
        };
        out.push_str(&value.with_context(|| format!("${{{key}}} has no value (no port set)"))?);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Each service's `args` and `env` templates, merged as spec.rs merges them.
struct Templates(BTreeMap<String, (Vec<String>, BTreeMap<String, String>)>);

impl Templates {
    fn read(embedded: &str, config: &str) -> anyhow::Result<Self> {
        let mut out: BTreeMap<String, (Vec<String>, BTreeMap<String, String>)> = BTreeMap::new();
        for text in [embedded, config] {
            let file: toml::Table = toml::from_str(text)?;
            let Some(services) = file.get("services").and_then(toml::Value::as_table) else { continue };
            for (name, table) in services {
                let entry = out.entry(name.clone()).or_default();
                if let Some(args) = table.get("args") {
                    entry.0 = args.clone().try_into()?;
                }
                if let Some(env) = table.get("env") {
                    let env: BTreeMap<String, String> = env.clone().try_into()?;
                    entry.1.extend(env);
                }
            }
        }
        Ok(Self(out))
    }

    fn of(&self, name: &str) -> (Vec<String>, BTreeMap<String, String>) {
        self.0.get(name).cloned().unwrap_or_default()
    }
}

/// Whole seconds for an engine that counts in seconds, rounded up, at least 1.
pub(crate) fn seconds(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// `# ` before every line of NOTE, for the YAML comments above a JSON document.
pub(crate) fn comment(out: &mut String, note: &str) {
    for line in note.lines() {
        out.push_str(if line.is_empty() { "#" } else { "# " });
        out.push_str(line);
        out.push('\n');
    }
}
