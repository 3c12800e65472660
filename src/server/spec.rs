//! What `stigmer server` runs: the `[services]` of the embedded components.toml, overlaid by
//! `$STIGMER_HOME/config.toml` and `STIGMER_<NAME>_PORT`, validated and put in start order.
//!
//! A service's `args` and `env` may refer to `${port}`, `${addr}`, `${data_dir}`, `${home}` and to
//! a dependency's `${NAME.addr}` / `${NAME.port}`, so a dependency declared `external` in
//! config.toml (a service running elsewhere) is handed to its dependents by address.
//!
//! Order matters and is kept: services are listed, started and reported in the order the
//! embedded components.toml declares them, then config.toml's additions (toml's
//! `preserve_order` feature keeps document order), never alphabetically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::config::Config;
use crate::home::Home;
use crate::run::Runner;

const LOCALHOST: &str = "127.0.0.1";

/// The supervisor's own log is `supervisor.log`: no service may take that name.
pub(crate) const RESERVED: &str = "supervisor";

/// Names `logs -c` accepts: the configured services, the supervisor (RESERVED), and any service
/// with a log.
pub(crate) fn known_services(home: &Home) -> Vec<String> {
    let mut names: Vec<String> = load(home)
        .map(|plan| plan.services.into_iter().filter(|s| s.external.is_none()).map(|s| s.name).collect())
        .unwrap_or_default();
    names.push(RESERVED.into());
    for name in super::logs::logged_services(&home.logs()).unwrap_or_default() {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// One `[services.NAME]` table; config.toml's tables use the same keys and override field by field.
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct ServiceTable {
    command: Option<String>,
    args: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    port: Option<u16>,
    ready: Option<ReadyTable>,
    health: Option<HealthTable>,
    /// For `ready = { notify = true }` services: a `WATCHDOG=1` at least this often, or a restart.
    watchdog_ms: Option<u64>,
    depends_on: Option<Vec<String>>,
    restart: Option<Restart>,
    stop_timeout_ms: Option<u64>,
    ready_timeout_ms: Option<u64>,
    /// `host:port` of an instance running elsewhere: nothing is started for it.
    external: Option<String>,
    enabled: Option<bool>,
    /// `auto`, `memfd` or `cache` for this service's own start (an embedded component only).
    runner: Option<toml::Spanned<String>>,
}

#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum ReadyTable {
    /// GET this path on the service's port answers 2xx.
    Http(String),
    /// The service's port accepts a connection.
    Tcp(bool),
    /// The service says so itself: `READY=1` on $NOTIFY_SOCKET (sd_notify).
    Notify(bool),
    /// This command (argv) exits 0; retried until it does.
    Exec(Vec<String>),
    /// The process is still alive this many milliseconds after it started (explicit opt-in only).
    StartedMs(u64),
}

/// `health = { http = "/p" | tcp = true | exec = [...], interval_ms, timeout_ms, failures }`.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
struct HealthTable {
    http: Option<String>,
    tcp: Option<bool>,
    exec: Option<Vec<String>>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    failures: Option<u32>,
}

/// `[logs]`: size-based rotation of the service logs.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
struct LogsTable {
    max_size: Option<u64>,
    keep: Option<usize>,
}

/// `[services.*]` tables in document order (a map would sort them).
#[derive(Default)]
struct Tables(Vec<(String, ServiceTable)>);

impl<'de> Deserialize<'de> for Tables {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Tables;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table of services")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Tables, A::Error> {
                let mut out = Vec::new();
                while let Some((name, table)) = map.next_entry::<String, ServiceTable>()? {
                    out.push((name, table));
                }
                Ok(Tables(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Restart {
    #[default]
    OnFailure,
    Always,
    Never,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    services: Tables,
    #[serde(default)]
    supervisor: SupervisorTable,
    #[serde(default)]
    logs: LogsTable,
    /// `[runner] default`: read by every start (src/run/policy.rs), checked here too.
    #[serde(default)]
    runner: crate::config::RunnerTable,
    /// components.toml's own section, not ours.
    #[serde(default)]
    #[allow(dead_code)]
    components: Option<toml::Table>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct SupervisorTable {
    restart_limit: Option<u32>,
    restart_window_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ready {
    Http(String),
    Tcp,
    Notify,
    Exec(Vec<String>),
    /// Alive this long after the start (zero: as soon as it is spawned).
    Started(Duration),
}

/// What a health check asks, while the service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    Http(String),
    Tcp,
    Exec(Vec<String>),
}

#[derive(Debug, Clone)]
pub(crate) struct Health {
    pub(crate) probe: Probe,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    /// This many consecutive failures restart the service.
    pub(crate) failures: u32,
}

/// A service, resolved and ready to start (or to check, if external).
#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) command: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) port: Option<u16>,
    pub(crate) ready: Ready,
    pub(crate) health: Option<Health>,
    pub(crate) watchdog: Option<Duration>,
    pub(crate) depends_on: Vec<String>,
    pub(crate) restart: Restart,
    pub(crate) stop_timeout: Duration,
    pub(crate) ready_timeout: Duration,
    pub(crate) external: Option<String>,
    pub(crate) data_dir: PathBuf,
    /// The runner this service's own start takes (None: the default and the policy decide).
    pub(crate) runner: Option<Runner>,
}

impl Service {
    /// `host:port` where dependents reach it.
    pub(crate) fn addr(&self) -> Option<String> {
        self.external.clone().or_else(|| self.port.map(|p| format!("{LOCALHOST}:{p}")))
    }
}

/// Restart policy shared by all services.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// This many failures within `window` mark a service failed.
    pub(crate) restart_limit: u32,
    pub(crate) window: Duration,
    pub(crate) backoff_max: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// In configuration order (embedded, then config.toml); every dependency is listed too.
    pub(crate) services: Vec<Service>,
    pub(crate) limits: Limits,
    pub(crate) logs: super::logs::Settings,
}

pub(crate) fn config_path(home: &Home) -> PathBuf {
    home.config()
}

/// Reads the embedded service definitions and the user's overrides into a start plan.
pub(crate) fn load(home: &Home) -> anyhow::Result<Plan> {
    // ${home} and ${data_dir} are substituted into the services' arguments and environment,
    // which are text: a home that is not UTF-8 is refused here rather than mangled there.
    if home.root().to_str().is_none() {
        bail!(
            "STIGMER_HOME {:?} is not valid UTF-8, which stigmer server needs (service arguments and environment \
             are text); set STIGMER_HOME to a UTF-8 path",
            home.root()
        );
    }
    let embedded: File = toml::from_str(crate::embed::COMPONENTS_TOML).context("embedded components.toml")?;
    let config_path = config_path(home);
    let config: File = match crate::config::read::<File>(home)? {
        Some(config) => {
            check_names(&config)?;
            check_runners(&config)?;
            config.value
        }
        None => File::default(),
    };
    if config.components.is_some() {
        bail!("{}: [components] belongs in components.toml at build time, not in config.toml", config_path.display());
    }
    plan(embedded, config, home, &config_path)
}

/// Service names in config.toml follow crate::names; a bad one is refused with its line.
fn check_names(config: &Config<File>) -> anyhow::Result<()> {
    for name in config.value.services.0.iter().map(|(name, _)| name) {
        if let Err(bad) = crate::names::check(name) {
            let message = format!("[services.{name:?}]: {bad}");
            match config.line_where(|l| l.contains("services") && l.contains(name.as_str())) {
                Some(line) => bail!(config.error_at_line(line, message)),
                None => bail!(config.error(message)),
            }
        }
    }
    Ok(())
}

/// `[runner] default` and every service's `runner` are auto, memfd or cache; a bad one is
/// refused with its line, and the plan then trusts them.
fn check_runners(config: &Config<File>) -> anyhow::Result<()> {
    crate::run::config_default(config, &config.value.runner)?;
    for (name, t) in &config.value.services.0 {
        if let Some(value) = &t.runner
            && let Err(e) = crate::run::parse_setting(&format!("services.{name}: runner"), value.get_ref())
        {
            bail!(config.error_at(value.span().start, e));
        }
    }
    Ok(())
}

/// A service's `runner`, checked against what it runs: only an embedded component has a runner,
/// and memfd only for one that can run from a memfd. Err is the reason, without the service.
fn service_runner(command: &str, value: Option<&toml::Spanned<String>>) -> Result<Option<Runner>, String> {
    let Some(value) = value else { return Ok(None) };
    let runner = crate::run::parse_setting("runner", value.get_ref())?;
    let Some(c) = crate::embed::find(command) else {
        return Err(format!("runner applies to embedded components only, and {command:?} is none; remove it"));
    };
    if runner == Some(Runner::Memfd) && !crate::run::memfd_capable(c) {
        return Err(format!(
            "runner = \"memfd\", but {command} cannot run from a memfd (a directory, a PyInstaller build, or no \
             memfd on this platform); use \"cache\" or \"auto\""
        ));
    }
    Ok(runner)
}

fn plan(embedded: File, config: File, home: &Home, config_path: &Path) -> anyhow::Result<Plan> {
    let mut tables = embedded.services.0;
    for (name, over) in config.services.0 {
        if let Err(bad) = crate::names::check(&name) {
            bail!("{}: [services.{name:?}]: {bad}", config_path.display());
        }
        if name == RESERVED {
            bail!(
                "{}: [services.{RESERVED}]: the name is reserved for the supervisor's own log",
                config_path.display()
            );
        }
        let at = match tables.iter().position(|(n, _)| *n == name) {
            Some(at) => at,
            None => {
                tables.push((name, ServiceTable::default()));
                tables.len() - 1
            }
        };
        let base = &mut tables[at].1;
        base.command = over.command.or(base.command.take());
        base.args = over.args.or(base.args.take());
        base.env.extend(over.env);
        base.port = over.port.or(base.port);
        base.ready = over.ready.or(base.ready.take());
        base.health = over.health.or(base.health.take());
        base.watchdog_ms = over.watchdog_ms.or(base.watchdog_ms);
        base.depends_on = over.depends_on.or(base.depends_on.take());
        base.restart = over.restart.or(base.restart);
        base.stop_timeout_ms = over.stop_timeout_ms.or(base.stop_timeout_ms);
        base.ready_timeout_ms = over.ready_timeout_ms.or(base.ready_timeout_ms);
        base.external = over.external.or(base.external.take());
        base.enabled = over.enabled.or(base.enabled);
        base.runner = over.runner.or(base.runner.take());
    }
    if tables.is_empty() {
        bail!(
            "this stigmer declares no services: build it with STIGMER_COMPONENTS_DIR holding a components.toml \
             with [services] (make build), or declare some in {}",
            config_path.display()
        );
    }
    let mut services = BTreeMap::new();
    let mut order = Vec::new();
    for (name, mut t) in tables.into_iter().filter(|(_, t)| t.enabled != Some(false)) {
        if crate::names::check(&name).is_err() || name == RESERVED {
            bail!("the embedded components.toml: [services.{name:?}]: not a valid service name");
        }
        if let Some(port) = port_from_env(&name)? {
            t.port = Some(port);
        }
        let in_config = |what: &str| {
            format!("services.{name}: {what} (in the embedded components.toml or {})", config_path.display())
        };
        if t.port == Some(0) {
            bail!(in_config("port = 0 is not a port number (1-65535)"));
        }
        let ms = |key: &str, value: Option<u64>, default: u64| {
            millis(key, value, default).map_err(|why| anyhow::anyhow!(in_config(&why)))
        };
        let ready = match t.ready.clone() {
            Some(ReadyTable::Http(path)) if !path.starts_with('/') => {
                bail!(in_config("ready.http must be a path starting with /"))
            }
            Some(ReadyTable::Http(path)) => Ready::Http(path),
            Some(ReadyTable::Tcp(true)) => Ready::Tcp,
            Some(ReadyTable::Tcp(false)) | None if t.port.is_some() => Ready::Tcp,
            Some(ReadyTable::StartedMs(v)) => Ready::Started(ms("ready.started_ms", Some(v), 0)?),
            Some(ReadyTable::Notify(true)) => Ready::Notify,
            Some(ReadyTable::Exec(argv)) if argv.is_empty() => bail!(in_config("ready.exec needs a command")),
            Some(ReadyTable::Exec(argv)) => Ready::Exec(argv),
            // Nothing to wait for: ready once spawned.
            Some(ReadyTable::Tcp(false) | ReadyTable::Notify(false)) | None => Ready::Started(Duration::ZERO),
        };
        if matches!(ready, Ready::Http(_) | Ready::Tcp) && t.port.is_none() && t.external.is_none() {
            bail!(in_config("readiness by http or tcp needs a port"));
        }
        let health = match t.health.clone() {
            None => None,
            Some(h) => {
                let probe = match (h.http, h.tcp, h.exec) {
                    (Some(path), None, None) if path.starts_with('/') => Probe::Http(path),
                    (None, Some(true), None) => Probe::Tcp,
                    (None, None, Some(argv)) if !argv.is_empty() => Probe::Exec(argv),
                    _ => bail!(in_config(
                        "health needs exactly one of http = \"/path\", tcp = true, exec = [\"cmd\", ...]"
                    )),
                };
                if matches!(probe, Probe::Http(_) | Probe::Tcp) && t.port.is_none() {
                    bail!(in_config("a health check by http or tcp needs a port"));
                }
                Some(Health {
                    probe,
                    interval: ms("health.interval_ms", h.interval_ms, 10_000)?.max(Duration::from_millis(10)),
                    timeout: ms("health.timeout_ms", h.timeout_ms, 2_000)?.max(Duration::from_millis(1)),
                    failures: h.failures.unwrap_or(3).max(1),
                })
            }
        };
        if t.watchdog_ms.is_some() && ready != Ready::Notify {
            bail!(in_config("watchdog_ms needs ready = { notify = true }"));
        }
        if let Some(addr) = &t.external
            && addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none()
        {
            bail!(in_config(&format!("external = {addr:?} is not host:port")));
        }
        let watchdog = match t.watchdog_ms {
            Some(v) => Some(ms("watchdog_ms", Some(v), 0)?.max(Duration::from_millis(1))),
            None => None,
        };
        let stop_timeout = ms("stop_timeout_ms", t.stop_timeout_ms, 10_000)?;
        let ready_timeout = ms("ready_timeout_ms", t.ready_timeout_ms, 30_000)?;
        let command = t.command.unwrap_or_else(|| name.clone());
        let runner = service_runner(&command, t.runner.as_ref()).map_err(|why| anyhow::anyhow!(in_config(&why)))?;
        services.insert(
            name.clone(),
            Service {
                command,
                runner,
                args: t.args.unwrap_or_default(),
                env: t.env.into_iter().collect(),
                port: t.port,
                ready,
                health,
                watchdog,
                depends_on: t.depends_on.unwrap_or_default(),
                restart: t.restart.unwrap_or_default(),
                stop_timeout,
                ready_timeout,
                external: t.external,
                data_dir: home.data(&name),
                name: name.clone(),
            },
        );
        order.push(name);
    }
    check_dependencies(&services, config_path)?;
    let snapshot = services.clone();
    let mut ordered: Vec<Service> =
        order.into_iter().map(|n| services.remove(&n).expect("ordered from the same map")).collect();
    for s in &mut ordered {
        let this = &snapshot[&s.name];
        for arg in &mut s.args {
            *arg = substitute(arg, this, &snapshot, home).with_context(|| format!("services.{}.args", s.name))?;
        }
        for (key, value) in &mut s.env {
            *value =
                substitute(value, this, &snapshot, home).with_context(|| format!("services.{}.env.{key}", s.name))?;
        }
    }
    let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
    for s in ordered.iter().filter(|s| s.external.is_none()) {
        if let Some(port) = s.port
            && let Some(other) = ports.insert(port, &s.name)
        {
            bail!(
                "services {other} and {} both use port {port}; give one another port in {}",
                s.name,
                config_path.display()
            );
        }
    }
    let supervisor_ms = |key: &str, value: Option<u64>, default: u64| {
        millis(key, value, default).map_err(|why| anyhow::anyhow!("supervisor.{why} (in {})", config_path.display()))
    };
    let limits = Limits {
        restart_limit: config.supervisor.restart_limit.or(embedded.supervisor.restart_limit).unwrap_or(5),
        window: supervisor_ms(
            "restart_window_ms",
            config.supervisor.restart_window_ms.or(embedded.supervisor.restart_window_ms),
            60_000,
        )?,
        backoff_max: supervisor_ms(
            "backoff_max_ms",
            config.supervisor.backoff_max_ms.or(embedded.supervisor.backoff_max_ms),
            30_000,
        )?,
    };
    let default = super::logs::Settings::default();
    let logs = super::logs::Settings {
        max_size: config.logs.max_size.or(embedded.logs.max_size).unwrap_or(default.max_size).max(1),
        keep: config.logs.keep.or(embedded.logs.keep).unwrap_or(default.keep),
    };
    Ok(Plan { services: ordered, limits, logs })
}

/// The longest time a `*_ms` setting may give: a day. Longer ones are refused rather than
/// waited for (a deadline of now + u64::MAX ms overflows, and no start or stop should wait that
/// long anyway).
const MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// The `*_ms` setting KEY (DEFAULT when unset) as a duration, or why it is refused.
fn millis(key: &str, value: Option<u64>, default: u64) -> Result<Duration, String> {
    match value.unwrap_or(default) {
        ms if ms <= MAX_MS => Ok(Duration::from_millis(ms)),
        ms => Err(format!("{key} = {ms} is longer than a day ({MAX_MS} ms); give a shorter time")),
    }
}

/// `STIGMER_SERVER_PORT` for stigmer-server, `STIGMER_AGENT_RUNNER_PORT` for agent-runner.
fn port_from_env(name: &str) -> anyhow::Result<Option<u16>> {
    let var = port_var(name);
    match crate::env::text(&var)? {
        None => Ok(None),
        Some(v) => match v.parse::<u16>() {
            Ok(port) if port != 0 => Ok(Some(port)),
            _ => bail!("{var}={v:?} is not a port number (1-65535)"),
        },
    }
}

pub(crate) fn port_var(name: &str) -> String {
    let short = name.strip_prefix("stigmer-").unwrap_or(name);
    format!("STIGMER_{}_PORT", short.to_ascii_uppercase().replace(['-', '.'], "_"))
}

/// Every dependency exists and none is circular (the start itself runs by readiness, not order).
fn check_dependencies(services: &BTreeMap<String, Service>, config_path: &Path) -> anyhow::Result<()> {
    for s in services.values() {
        for d in &s.depends_on {
            if !services.contains_key(d) {
                bail!("services.{}: depends on {d:?}, which is not a service (see {})", s.name, config_path.display());
            }
        }
    }
    let mut order: Vec<String> = Vec::new();
    while order.len() < services.len() {
        let next = services
            .values()
            .find(|s| !order.contains(&s.name) && s.depends_on.iter().all(|d| order.contains(d)))
            .map(|s| s.name.clone());
        match next {
            Some(name) => order.push(name),
            None => {
                let stuck: Vec<_> = services.keys().filter(|n| !order.contains(n)).cloned().collect();
                bail!("services {} depend on each other in a cycle", stuck.join(", "));
            }
        }
    }
    Ok(())
}

/// Expands `${port}`, `${addr}`, `${data_dir}`, `${home}`, `${NAME.addr}`, `${NAME.port}`.
fn substitute(text: &str, s: &Service, all: &BTreeMap<String, Service>, home: &Home) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map(|e| start + e).with_context(|| format!("unclosed ${{ in {text:?}"))?;
        let key = &rest[start + 2..end];
        let value = match key {
            "port" => s.port.map(|p| p.to_string()),
            "addr" => s.addr(),
            "data_dir" => Some(s.data_dir.display().to_string()),
            "home" => Some(home.root().display().to_string()),
            _ => {
                let (dep, field) = key.rsplit_once('.').with_context(|| format!("unknown variable ${{{key}}}"))?;
                if !s.depends_on.iter().any(|d| d == dep) {
                    bail!("${{{key}}} refers to {dep:?}, which is not among depends_on");
                }
                let dep = &all[dep];
                match field {
                    "addr" => dep.addr(),
                    "port" => dep.addr().and_then(|a| a.rsplit_once(':').map(|(_, p)| p.to_owned())),
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

#[cfg(test)]
mod tests {
    //! Property tests: whatever config.toml (or components.toml's `[services]`) says, parsing and
    //! planning return a plan or an error, never panic; and a plan they return is coherent
    //! (every dependency is planned, no two local services share a port, no `${` left over).

    use proptest::prelude::*;

    use super::*;

    fn home() -> Home {
        // Planning only builds paths under the home; nothing is read or written there.
        Home::from_env().unwrap_or_else(|_| panic!("the unit tests need HOME or STIGMER_HOME set"))
    }

    /// Parses EMBEDDED and CONFIG as the two files and plans; Err on a panic or an incoherent plan.
    fn parse_and_plan(embedded: &str, config: &str) -> Result<(), String> {
        let outcome = std::panic::catch_unwind(|| {
            let embedded: File = toml::from_str(embedded).map_err(|e| e.to_string())?;
            let config: File = toml::from_str(config).map_err(|e| e.to_string())?;
            plan(embedded, config, &home(), Path::new("/test/config.toml")).map_err(|e| format!("{e:#}"))
        });
        let Ok(result) = outcome else { return Err("the parser or the planner panicked".into()) };
        let Ok(plan) = result else { return Ok(()) };
        let mut started: Vec<&str> = Vec::new();
        let mut ports = std::collections::BTreeSet::new();
        for s in &plan.services {
            for d in &s.depends_on {
                if !plan.services.iter().any(|o| o.name == *d) {
                    return Err(format!("{} depends on {d}, which is not planned", s.name));
                }
            }
            if s.external.is_none()
                && let Some(p) = s.port
                && !ports.insert(p)
            {
                return Err(format!("port {p} planned twice"));
            }
            if s.args.iter().chain(s.env.iter().map(|(_, v)| v)).any(|a| a.contains("${")) {
                return Err(format!("{}: a substitution was left unexpanded: {s:?}", s.name));
            }
            started.push(&s.name);
        }
        Ok(())
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => prop::sample::select(vec!["stigmer-server", "workflow-runner", "agent-runner", "a", "b", "c"])
                .prop_map(String::from),
            1 => "[a-z.\\-]{0,6}",
            1 => "\\PC{0,6}",
        ]
    }

    /// A TOML basic string holding arbitrary text (escaped as TOML requires).
    fn quoted(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn template() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-z=:/ ]{0,8}",
            1 => prop::sample::select(vec![
                "${port}", "${addr}", "${data_dir}", "${home}", "${", "${}", "${a.addr}", "${b.port}",
                "${stigmer-server.addr}", "${a.b.c}", "${nope}", "x${port}y${addr}", "}${port", "$${port}}",
            ])
            .prop_map(String::from),
            1 => "\\PC{0,10}",
        ]
    }

    /// One `[services.NAME]` table with a random subset of keys and random values, some wrong.
    fn service_table() -> impl Strategy<Value = String> {
        // Mostly valid values, so that most files get past the TOML layer into the planner;
        // each key is also sometimes of the wrong type or out of range.
        let port = prop_oneof![40 => (1u32..65536).prop_map(|p| p.to_string()), 1 => Just("0".into()),
            1 => Just("70000".into()), 1 => Just("-1".into()), 1 => Just("\"80\"".into())];
        let ready = prop_oneof![
            20 => prop::sample::select(vec![
                "{ http = \"/healthz\" }", "{ http = \"healthz\" }", "{ tcp = true }", "{ tcp = false }",
                "{ started_ms = 0 }", "{ started_ms = 18446744073709551615 }", "{ notify = true }",
                "{ exec = [\"true\"] }", "{ exec = [] }",
            ]),
            1 => prop::sample::select(vec![
                "{ started_ms = -5 }", "{}", "{ http = \"/\", tcp = true }", "\"tcp\"", "{ bogus = 1 }",
            ]),
        ];
        let restart = prop_oneof![
            20 => prop::sample::select(vec!["\"on-failure\"", "\"always\"", "\"never\""]),
            1 => prop::sample::select(vec!["\"sometimes\"", "1"]),
        ];
        let ms = prop_oneof![
            20 => prop::sample::select(vec!["0", "1", "100", "18446744073709551615"]),
            1 => prop::sample::select(vec!["-1", "1.5"]),
        ];
        let external = prop_oneof![
            Just("\"127.0.0.1:1\"".to_string()),
            Just("\"host\"".to_string()),
            Just("\"h:99999\"".to_string()),
            "\\PC{0,8}".prop_map(|s| quoted(&s)),
        ];
        (
            name(),
            prop::option::of(name()),
            prop::option::of(prop::collection::vec(template(), 0..4)),
            prop::collection::vec(("[A-Z_]{1,5}", template()), 0..3),
            prop::option::of(port),
            prop::option::of(ready),
            prop::option::of(prop::collection::vec(name(), 0..3)),
            prop::option::of(restart),
            prop::option::of(ms),
            prop::option::weighted(0.2, external),
            prop::option::of(any::<bool>()),
        )
            .prop_map(|(name, command, args, env, port, ready, deps, restart, ms, external, enabled)| {
                let mut t = format!("[services.{}]\n", quoted(&name));
                if let Some(c) = command {
                    t += &format!("command = {}\n", quoted(&c));
                }
                if let Some(a) = args {
                    t += &format!("args = [{}]\n", a.iter().map(|s| quoted(s)).collect::<Vec<_>>().join(", "));
                }
                if !env.is_empty() {
                    let kv: Vec<_> = env.iter().map(|(k, v)| format!("{k} = {}", quoted(v))).collect();
                    t += &format!("env = {{ {} }}\n", kv.join(", "));
                }
                if let Some(p) = port {
                    t += &format!("port = {p}\n");
                }
                if let Some(r) = ready {
                    t += &format!("ready = {r}\n");
                }
                if let Some(d) = deps {
                    t += &format!("depends_on = [{}]\n", d.iter().map(|s| quoted(s)).collect::<Vec<_>>().join(", "));
                }
                if let Some(r) = restart {
                    t += &format!("restart = {r}\n");
                }
                if let Some(ms) = ms {
                    t += &format!("stop_timeout_ms = {ms}\nready_timeout_ms = {ms}\n");
                }
                if let Some(e) = external {
                    t += &format!("external = {e}\n");
                }
                if let Some(e) = enabled {
                    t += &format!("enabled = {e}\n");
                }
                t
            })
    }

    fn file_text() -> impl Strategy<Value = String> {
        let supervisor = prop::option::weighted(
            0.3,
            prop::sample::select(vec![
                "[supervisor]\nrestart_limit = 0\n",
                "[supervisor]\nrestart_limit = 5\nrestart_window_ms = 1\nbackoff_max_ms = 0\n",
                "[supervisor]\nrestart_limit = -1\n",
                "[supervisor]\nbogus = 1\n",
            ]),
        );
        (prop::collection::vec(service_table(), 0..5), supervisor).prop_map(|(tables, sup)| {
            // A table named twice is a TOML error: keep the first of each name, mostly.
            let mut seen = std::collections::BTreeSet::new();
            let tables: Vec<_> =
                tables.into_iter().filter(|t| seen.insert(t.lines().next().unwrap().to_owned())).collect();
            let mut text = tables.join("\n");
            text += sup.unwrap_or("");
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        /// Random service tables on both sides: the embedded file and config.toml.
        #[test]
        fn random_service_tables_never_panic(embedded in file_text(), config in file_text()) {
            if let Err(why) = parse_and_plan(&embedded, &config) {
                prop_assert!(false, "{}\n--- embedded ---\n{}\n--- config ---\n{}", why, embedded, config);
            }
        }

        /// Random config.toml tables over the real embedded components.toml.
        #[test]
        fn random_config_over_the_embedded_file_never_panics(config in file_text()) {
            if let Err(why) = parse_and_plan(crate::embed::COMPONENTS_TOML, &config) {
                prop_assert!(false, "{}\n--- config ---\n{}", why, config);
            }
        }

        /// Arbitrary text, and valid text with bytes cut out or spliced in.
        #[test]
        fn arbitrary_text_never_panics(
            noise in "\\PC{0,200}",
            base in file_text(),
            at in any::<prop::sample::Index>(),
            splice in "[\\[\\]{}=\"'#\n.,a-z0-9\\\\]{0,6}",
        ) {
            let mut spliced = base.clone();
            if !spliced.is_empty() {
                let mut at = at.index(spliced.len());
                while !spliced.is_char_boundary(at) {
                    at -= 1;
                }
                spliced.insert_str(at, &splice);
            }
            for text in [&noise, &spliced] {
                if let Err(why) = parse_and_plan(crate::embed::COMPONENTS_TOML, text) {
                    prop_assert!(false, "{}\n--- config ---\n{}", why, text);
                }
            }
        }
    }
}
