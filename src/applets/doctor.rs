//! `stigmer doctor [--json]`: can this machine run the components, and if not, what to do.
//! One screen: memfd execution, the home (the same trust checks `exec` and `server` make), the
//! cache (safe, exec-capable, room for what it will hold), the service ports, the embedded
//! payloads. Exit 1 when any check fails.

use crate::exit::ExitCode;
use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

use crate::embed;
use crate::exit::Status;
use crate::home::Home;
use crate::platform;
use crate::run::{
    CacheRoot, EntryState, MEMFD_MAX_BYTES, RUNNER_VAR, Runner, RunnerSettingError, SERVICE_RUNNER_VAR, Source, choose,
    overrides_in,
};

#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Ok,
    Warn,
    Fail,
}

#[derive(Serialize)]
struct Check {
    name: &'static str,
    status: Verdict,
    detail: String,
    fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: String) -> Self {
        Check { name, status: Verdict::Ok, detail, fix: None }
    }
    fn bad(name: &'static str, status: Verdict, detail: String, fix: String) -> Self {
        Check { name, status, detail, fix: Some(fix) }
    }
}

pub(super) fn run(json: bool) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    let checks = vec![
        memfd(),
        runner(&home),
        home_trust(&home),
        cache_root(&home),
        cache_exec(&home),
        cache_space(&home),
        ports(&home),
        containment(&home),
        payloads(),
    ];
    let mut out = io::stdout().lock();
    if json {
        #[derive(Serialize)]
        struct Report<'a> {
            checks: &'a [Check],
        }
        serde_json::to_writer_pretty(&mut out, &Report { checks: &checks })?;
        writeln!(out)?;
    } else {
        for c in &checks {
            let mark = match c.status {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            };
            writeln!(out, "{mark}  {:12} {}", c.name, c.detail)?;
            if let Some(fix) = &c.fix {
                writeln!(out, "      {:12} fix: {fix}", "")?;
            }
        }
    }
    Ok(if checks.iter().any(|c| c.status == Verdict::Fail) { Status::Failure.into() } else { ExitCode::SUCCESS })
}

fn memfd() -> Check {
    let (verdict, sysctl) = platform::memfd_support();
    let setting = sysctl.map(|v| format!(" (vm.memfd_noexec={v})")).unwrap_or_default();
    match verdict {
        Ok(()) => Check::ok("memfd", format!("single-file components run from sealed memfds{setting}")),
        Err(why) => Check::bad(
            "memfd",
            Verdict::Warn,
            format!("memfd execution is not available: {why}{setting}; components run from the cache instead"),
            "nothing needed; to allow it, set vm.memfd_noexec=0 (sysctl) if your policy permits".into(),
        ),
    }
}

/// The runner policy in effect and where it comes from, and what a memfd-run process looks like
/// to the tools that find processes by name: its comm is the memfd's name, `memfd:NAME`, which
/// the kernel cuts to 15 bytes, and its /proc/PID/exe is `/memfd:NAME (deleted)`.
fn runner(home: &Home) -> Check {
    let over = match overrides_in(Some(home)) {
        Ok(over) => over,
        Err(e) => {
            let fix = match e {
                RunnerSettingError::Home(_) => "see the home check".to_owned(),
                _ => "use auto, memfd or cache there".to_owned(),
            };
            return Check::bad("runner", Verdict::Fail, e.to_string(), fix);
        }
    };
    let policy = match over.deciding() {
        Some((r, Source::Env)) => format!("{} ({RUNNER_VAR} in the environment)", r.name()),
        Some((r, Source::Service)) => format!("{} ({SERVICE_RUNNER_VAR}: a service's runner)", r.name()),
        Some((r, Source::Default)) => format!("{} ([runner] default in {})", r.name(), home.config().display()),
        None => format!(
            "auto (built in: memfd for scripts and single-file programs up to {} MiB, the cache for the rest)",
            MEMFD_MAX_BYTES >> 20
        ),
    };
    let memfd_run: Vec<&str> =
        embed::components().iter().filter(|c| choose(c, over).runner == Runner::Memfd).map(|c| c.name).collect();
    // The longest name as the example, so the cut shows.
    let naming = match memfd_run.iter().max_by_key(|n| n.len()) {
        None => "no component runs from a memfd".to_owned(),
        Some(example) => format!(
            "{} run from a memfd and show as memfd:NAME cut to 15 bytes (e.g. {}): ps -C, pgrep -x and killall \
             by name do not find them (pgrep -f does), /proc/PID/exe reads /memfd:NAME (deleted), and EDR tools \
             (Falco, Tetragon, Velociraptor) may flag it",
            memfd_run.join(", "),
            memfd_comm(example)
        ),
    };
    Check::ok("runner", format!("policy {policy}; {naming}"))
}

/// The comm of a process run from the memfd named NAME: the kernel keeps 15 bytes.
fn memfd_comm(name: &str) -> String {
    let mut comm = format!("memfd:{name}");
    let mut end = comm.len().min(15);
    while !comm.is_char_boundary(end) {
        end -= 1;
    }
    comm.truncate(end);
    comm
}

fn home_trust(home: &Home) -> Check {
    // The same check as every start's, and the path it resolves to (what starts then use).
    match home.checked() {
        Ok(h) => Check::ok("home", format!("{} and the path to it are yours alone", h.root().display())),
        Err(e) => Check::bad("home", Verdict::Fail, format!("{}: {}", e.path, e.why), e.fix),
    }
}

/// The cache directory, or its nearest existing ancestor (what a fill would create it in).
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"))
}

fn cache_root(home: &Home) -> Check {
    match CacheRoot::existing(home) {
        Ok(Some(root)) => Check::ok("cache_root", format!("{} is private and yours", root.path().display())),
        Ok(None) => Check::ok("cache_root", format!("{} will be created (mode 0700)", home.cache().display())),
        Err(e) => Check::bad(
            "cache_root",
            Verdict::Fail,
            e.to_string(),
            "see the message: make it a private directory of yours".into(),
        ),
    }
}

fn cache_exec(home: &Home) -> Check {
    let cache = home.cache();
    match platform::noexec_mount(existing_ancestor(&cache)) {
        None => Check::ok("cache_exec", format!("{} is on a filesystem that allows execution", cache.display())),
        Some(mount) => Check::bad(
            "cache_exec",
            Verdict::Fail,
            format!("{} is on {}, mounted noexec: nothing in the cache can run", cache.display(), mount.display()),
            format!("set STIGMER_HOME to a directory on another filesystem, or remount {} with exec", mount.display()),
        ),
    }
}

fn cache_space(home: &Home) -> Check {
    let root = CacheRoot::existing(home).ok().flatten();
    let over = crate::run::overrides().unwrap_or_default();
    let needed: u64 = embed::components()
        .iter()
        .filter(|c| choose(c, over).runner == Runner::Cache)
        .filter(|c| root.as_ref().is_none_or(|r| !matches!(r.entry(c).state(), Ok(EntryState::Intact))))
        .map(|c| c.size)
        .sum();
    let cache = home.cache();
    let human = super::components::human;
    match platform::free_space(existing_ancestor(&cache)) {
        Err(e) => Check::bad(
            "cache_space",
            Verdict::Warn,
            format!("cannot tell the free space: {e}"),
            "check the disk".into(),
        ),
        Ok(free) if free < needed => Check::bad(
            "cache_space",
            Verdict::Fail,
            format!("{} free where the cache needs {} for its first fills", human(free), human(needed)),
            "free some space, or set STIGMER_HOME to a directory on a larger filesystem".into(),
        ),
        Ok(free) if free < needed.saturating_mul(2) => Check::bad(
            "cache_space",
            Verdict::Warn,
            format!("{} free; the cache needs {}, leaving little room", human(free), human(needed)),
            "free some space".into(),
        ),
        Ok(free) => Check::ok("cache_space", format!("{} free; the cache needs {} more", human(free), human(needed))),
    }
}

fn ports(home: &Home) -> Check {
    match crate::server::port_report(home) {
        Ok(report) if report.busy.is_empty() => Check::ok("ports", report.summary),
        Ok(report) => Check::bad(
            "ports",
            Verdict::Fail,
            format!("in use: {}", report.busy.join(", ")),
            "stop what holds them (`ss -ltnp`), or set other ports in config.toml or STIGMER_<NAME>_PORT".into(),
        ),
        Err(e) => Check::bad("ports", Verdict::Warn, format!("{e:#}"), "fix the service configuration".into()),
    }
}

fn containment(home: &Home) -> Check {
    match crate::server::containment_report(home) {
        Ok((true, detail)) => Check::ok("containment", detail),
        Ok((false, detail)) => Check::bad(
            "containment",
            Verdict::Warn,
            detail,
            "start the server in a cgroup you own (`systemd-run --user --scope stigmer server`) or as root".into(),
        ),
        Err(e) => Check::bad("containment", Verdict::Warn, format!("{e:#}"), "see `stigmer server status`".into()),
    }
}

fn payloads() -> Check {
    let bad: Vec<String> = embed::components()
        .iter()
        .filter_map(|c| c.verify_payload().err().map(|why| format!("{}: {why}", c.name)))
        .collect();
    if bad.is_empty() {
        Check::ok(
            "payloads",
            format!("{} embedded components intact (build {})", embed::components().len(), embed::build_id()),
        )
    } else {
        Check::bad("payloads", Verdict::Fail, bad.join("; "), "this binary is damaged: reinstall stigmer".into())
    }
}
