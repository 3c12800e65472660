//! The torture suite: the real binary under concurrency, SIGKILL, a full disk, a noexec mount,
//! vm.memfd_noexec, planted cache entries, a killed supervisor and crash storms, and
//! `stigmer doctor` reporting each of these conditions. Every test prints its figures (runs,
//! failures, leftovers) on stderr (`cargo nextest run torture --no-capture` shows them); the
//! random ones print their seed (replay with STIGMER_TORTURE_SEED).

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// Non-hidden entries of the cache whose stamp is missing: what a fill cut short might look like.
fn unstamped_entries(sb: &Sandbox) -> Vec<String> {
    sb.cache_entries()
        .into_iter()
        .filter(|sha| {
            let dir = sb.cache().join(sha);
            let stamps = fs::read_dir(&dir)
                .map(|rd| rd.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".stamp")).count())
                .unwrap_or(0);
            stamps == 0
        })
        .collect()
}

#[track_caller]
fn assert_no_leftovers(dir: &Path) {
    let left = leftovers(dir);
    assert!(left.is_empty(), "interrupted-fill leftovers under {}: {left:?}", dir.display());
}

// ---------------------------------------------------------------------------
// 1. Concurrent first runs.

#[test]
fn torture_64_concurrent_first_runs_fill_once() {
    const RUNS: usize = 64;
    let sb = Sandbox::new();
    let info = component_info(&sb, "probe-cached");
    let expected_exe = canon(sb.home()).join("cache").join(&info.sha256).join("probe-cached");
    let children: Vec<_> = (0..RUNS)
        .map(|i| {
            let mut cmd = sb.component("probe-cached");
            cmd.arg(format!("run-{i}")).stdout(Stdio::piped()).stderr(Stdio::piped());
            (i, cmd.spawn().unwrap())
        })
        .collect();
    let mut failures = Vec::new();
    for (i, child) in children {
        let out = child.wait_with_output().unwrap();
        let ok = out.status.success() && out.stderr.is_empty() && {
            let p = Probe::parse(&stdout(&out));
            p.argv == [sb.arg0("probe-cached"), format!("run-{i}")]
                && p.variant.as_deref() == Some("cached")
                && p.exe == expected_exe.to_str().unwrap()
        };
        if !ok {
            failures.push(format!("run {i}: {}", describe(&out)));
        }
    }
    let entries = sb.cache_entries();
    let left = leftovers(&sb.cache());
    eprintln!(
        "figures: {RUNS} concurrent first runs, {} failed, {} cache entries, {} leftovers",
        failures.len(),
        entries.len(),
        left.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(entries, std::slice::from_ref(&info.sha256), "exactly one cache entry");
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(sha256_file(&expected_exe), info.sha256);
}

// ---------------------------------------------------------------------------
// 2. SIGKILL during fills.

#[derive(Default, Debug)]
struct KillFigures {
    kills: u32,
    /// Killed before the fill had left any trace in the cache.
    before_fill: u32,
    /// Killed with a temp item, or an unstamped item, in the entry.
    mid_fill: u32,
    /// Killed after the entry was complete (while the component started or ran).
    after_fill: u32,
    /// The run was over before the kill was sent.
    finished_first: u32,
    /// Runs that printed something wrong (each is a failure).
    wrong_outputs: Vec<String>,
    /// Temp or trash items still there after the run that followed a kill.
    leftovers_after_next_run: u32,
}

/// Checks a complete run of NAME from the cache: exit 0 and the right report.
fn check_cached_run(sb: &Sandbox, info: &ComponentInfo, out: &Output) -> Result<(), String> {
    if !out.status.success() {
        return Err(describe(out));
    }
    let entry = canon(sb.home()).join("cache").join(&info.sha256).join(&info.name);
    let text = stdout(out);
    match info.name.as_str() {
        "pyapp" => {
            let first = text.lines().next().unwrap_or_default();
            let r: Value = serde_json::from_str(first).map_err(|e| format!("{e}: {}", describe(out)))?;
            let exe = entry.join("pyapp");
            if r["argv"] != serde_json::json!([sb.arg0("pyapp")])
                || r["sum"] != 55
                || r["frozen"] != true
                || r["executable"].as_str() != exe.to_str()
            {
                return Err(format!("wrong pyapp report: {r}"));
            }
        }
        _ => {
            let p = Probe::parse(&text);
            if p.argv != [sb.arg0(&info.name)] || p.exe != entry.to_str().unwrap() {
                return Err(format!("wrong probe report (want exe {}): {p:?}", entry.display()));
            }
        }
    }
    Ok(())
}

/// What a killed run printed must be a correct report as far as it got: either nothing, a
/// partial report, or (if it got as far as printing the line that says where it runs from) the
/// right executable.
fn check_killed_output(sb: &Sandbox, info: &ComponentInfo, out: &Output) -> Result<(), String> {
    let text = stdout(out);
    let entry = canon(sb.home()).join("cache").join(&info.sha256).join(&info.name);
    match info.name.as_str() {
        "pyapp" => match text.split_once('\n') {
            None => Ok(()),
            Some((first, _)) => {
                let r: Value = serde_json::from_str(first).map_err(|e| format!("{e}: {text}"))?;
                let exe = entry.join("pyapp");
                if r["executable"].as_str() == exe.to_str() && r["sum"] == 55 {
                    Ok(())
                } else {
                    Err(format!("killed pyapp had printed a wrong report: {r}"))
                }
            }
        },
        _ => match text.lines().find_map(|l| l.strip_prefix("exe=")) {
            Some(exe) if text.contains("\npid=") && exe != entry.to_str().unwrap() => {
                Err(format!("killed {} ran from {exe}", info.name))
            }
            _ => Ok(()),
        },
    }
}

/// Kills land at a random moment up to MAX_DELAY_MS after the start: a little longer than a
/// first run here (pyapp ~300 ms, big-probe ~150 ms), so some land before, most during and some
/// after the fill.
fn sigkill_during_fills(
    sb: &Sandbox,
    info: &ComponentInfo,
    iterations: u32,
    max_delay_ms: u64,
    rng: &mut Rng,
) -> KillFigures {
    let dir = sb.cache().join(&info.sha256);
    let item = dir.join(&info.name);
    let stamp = dir.join(format!(".{}.stamp", info.name));
    let mut f = KillFigures::default();
    for i in 0..iterations {
        // Force the next run to fill again (the lock file and anything else stay).
        remove_tree(&stamp);
        remove_tree(&item);
        let mut cmd = sb.component(&info.name);
        cmd.env("STIGMER_RUNNER", "cache").stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.upto(max_delay_ms)));
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            kill(child.id() as i32, libc::SIGKILL);
        }
        let killed = child.wait_with_output().unwrap();
        if finished {
            f.finished_first += 1;
            if let Err(e) = check_cached_run(sb, info, &killed) {
                f.wrong_outputs.push(format!("iteration {i}: a run that was not killed went wrong: {e}"));
            }
        } else {
            f.kills += 1;
            let partial = !leftovers(&dir).is_empty() || (item.exists() && !stamp.exists());
            if partial {
                f.mid_fill += 1;
            } else if stamp.exists() {
                f.after_fill += 1;
            } else {
                f.before_fill += 1;
            }
            if let Err(e) = check_killed_output(sb, info, &killed) {
                f.wrong_outputs.push(format!("iteration {i}: {e}"));
            }
        }
        // The next run is complete and correct, whatever the kill left behind, and cleans up.
        let mut cmd = sb.component(&info.name);
        cmd.env("STIGMER_RUNNER", "cache");
        let out = run(cmd);
        if let Err(e) = check_cached_run(sb, info, &out) {
            f.wrong_outputs.push(format!("iteration {i}: the run after the kill went wrong: {e}"));
        }
        if !stamp.exists() {
            f.wrong_outputs.push(format!("iteration {i}: no stamp after a good run"));
        }
        let left = leftovers(&dir);
        if !left.is_empty() {
            eprintln!("iteration {i}: left after the next run: {left:?}");
        }
        f.leftovers_after_next_run += left.len() as u32;
    }
    f
}

#[test]
fn torture_sigkill_during_fills_never_runs_a_partial_entry() {
    const ITERATIONS: u32 = 20;
    let sb = Sandbox::new();
    let mut rng = Rng::new("sigkill during fills");
    let mut total_kills = 0;
    let mut failures = Vec::new();
    for (name, max_delay_ms) in [("pyapp", 300), ("big-probe", 170)] {
        let info = component_info(&sb, name);
        let f = sigkill_during_fills(&sb, &info, ITERATIONS, max_delay_ms, &mut rng);
        eprintln!(
            "figures: {name}: {ITERATIONS} runs, {} SIGKILLed ({} before the fill, {} mid-fill, {} after the fill), \
             {} finished before the kill, {} wrong outputs, {} leftovers after the next runs",
            f.kills,
            f.before_fill,
            f.mid_fill,
            f.after_fill,
            f.finished_first,
            f.wrong_outputs.len(),
            f.leftovers_after_next_run
        );
        total_kills += f.kills;
        failures.extend(f.wrong_outputs.iter().map(|e| format!("{name} {e}")));
        if f.leftovers_after_next_run > 0 {
            failures
                .push(format!("{name}: {} leftovers after the runs that followed kills", f.leftovers_after_next_run));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(total_kills > 0, "no run was ever killed: the timing no longer tests anything");
    let mut cmd = sb.stigmer();
    cmd.arg("verify");
    let out = run(cmd);
    assert_code(&out, 0);
    let left = leftovers(&sb.cache());
    eprintln!(
        "figures: after the loop: stigmer verify exit {:?}, {} cache entries, {} leftovers",
        out.status.code(),
        sb.cache_entries().len(),
        left.len()
    );
    assert!(left.is_empty(), "{left:?}");
    assert!(unstamped_entries(&sb).is_empty(), "{:?}", unstamped_entries(&sb));
}

// ---------------------------------------------------------------------------
// 3. ENOSPC during a fill; 4. a noexec mount.

#[test]
fn torture_enospc_during_a_directory_fill_is_a_clear_error_and_leaves_nothing() {
    let sb = Sandbox::new();
    let Some(_fs) = Tmpfs::mount(sb.home(), "size=8m") else { return };
    let err = assert_launcher_error(&run(sb.component("pyapp")), 126);
    assert!(err.to_lowercase().contains("space"), "the error should say the disk is full: {err}");
    // A forced cache run of an ELF too big for the disk: an error too, not a silent switch.
    let mut cmd = sb.component("big-probe");
    cmd.env("STIGMER_RUNNER", "cache");
    let err2 = assert_launcher_error(&run(cmd), 126);
    assert!(err2.to_lowercase().contains("space"), "{err2}");
    let left = leftovers(sb.home());
    eprintln!(
        "figures: 8 MiB tmpfs: pyapp exit 126, forced-cache big-probe exit 126; {} entries, {} unstamped, {} leftovers",
        sb.cache_entries().len(),
        unstamped_entries(&sb).len(),
        left.len()
    );
    assert!(unstamped_entries(&sb).is_empty(), "partial entries left: {:?}", unstamped_entries(&sb));
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn torture_enospc_for_an_elf_falls_back_to_memfd() {
    let sb = Sandbox::new();
    // One page: room for the directories, not for the 16 KiB program.
    let Some(_fs) = Tmpfs::mount(sb.home(), "size=4k") else { return };
    let mut cmd = sb.component("probe-cached");
    cmd.arg("full");
    let out = run(cmd);
    eprintln!(
        "figures: 4 KiB tmpfs, probe-cached (runner = cache): {:?}, stdout {:?}",
        out.status,
        stdout(&out).lines().find(|l| l.starts_with("exe="))
    );
    let p = Probe::from_success(&out);
    assert_eq!(p.argv, [&sb.arg0("probe-cached"), "full"]);
    assert_eq!(p.variant.as_deref(), Some("cached"));
    assert_eq!(p.exe, memfd_exe("probe-cached"), "a cache that cannot be filled falls back to a memfd");
    assert!(unstamped_entries(&sb).is_empty(), "partial entries left: {:?}", unstamped_entries(&sb));
    assert_no_leftovers(sb.home());
}

#[test]
fn torture_noexec_cache_is_refused_naming_the_mount_and_the_fix() {
    let sb = Sandbox::new();
    let Some(_fs) = Tmpfs::mount(sb.home(), "size=64m,noexec") else { return };
    let err = assert_launcher_error(&run(sb.component("probe-cached")), 126);
    let mount = canon(sb.home());
    assert!(err.contains(mount.to_str().unwrap()), "the message names the mount point {}: {err}", mount.display());
    assert!(err.contains("noexec"), "the message names the cause: {err}");
    assert!(err.contains("STIGMER_HOME") || err.contains("remount"), "the message says how to fix it: {err}");
    eprintln!(
        "figures: noexec tmpfs: exit 126, {} entries, {} unstamped: {err}",
        sb.cache_entries().len(),
        unstamped_entries(&sb).len()
    );
    assert!(unstamped_entries(&sb).is_empty(), "an empty entry was left behind: {:?}", unstamped_entries(&sb));
    assert_no_leftovers(sb.home());
}

// ---------------------------------------------------------------------------
// 5. vm.memfd_noexec in a private pid namespace.

#[test]
fn torture_memfd_noexec_1_still_runs_from_a_memfd() {
    let sb = Sandbox::new();
    let link = sb.link("probe");
    for runner in [None, Some("memfd")] {
        let Some(mut cmd) = with_memfd_noexec(&sb, 1, &link, &["one"]) else { return };
        if let Some(r) = runner {
            cmd.env("STIGMER_RUNNER", r);
        }
        let out = run(cmd);
        let p = Probe::from_success(&out);
        assert_eq!(p.argv, [link.to_str().unwrap(), "one"]);
        assert_eq!(p.exe, memfd_exe("probe"), "MFD_EXEC keeps memfds executable under =1 (STIGMER_RUNNER={runner:?})");
        assert!(out.stderr.is_empty(), "{}", describe(&out));
    }
    assert!(sb.cache_entries().is_empty(), "nothing was cached: {:?}", sb.cache_entries());
}

#[test]
fn torture_memfd_noexec_2_runs_scripts_and_elves_from_the_cache() {
    let sb = Sandbox::new();
    for name in ["hello-script", "probe-static"] {
        let link = sb.link(name);
        let Some(cmd) = with_memfd_noexec(&sb, 2, &link, &["two"]) else { return };
        let out = run(cmd);
        assert_code(&out, 0);
        assert!(out.stderr.is_empty(), "{}", describe(&out));
        let info = component_info(&sb, name);
        assert!(sb.cache_entries().contains(&info.sha256), "{name} ran from the cache: {:?}", sb.cache_entries());
        if name == "hello-script" {
            assert!(stdout(&out).starts_with("script args: two\n"), "{}", describe(&out));
        } else {
            let p = Probe::parse(&stdout(&out));
            assert_eq!(p.exe, canon(&cached_entry_point(&sb, &info)).to_str().unwrap());
        }
    }
    let link = sb.link("probe");
    let Some(mut cmd) = with_memfd_noexec(&sb, 2, &link, &[]) else { return };
    cmd.env("STIGMER_RUNNER", "memfd");
    let err = assert_launcher_error(&run(cmd), 126);
    assert!(err.contains("memfd"), "{err}");
}

// ---------------------------------------------------------------------------
// 6. Unsafe cache roots and planted entries.

const MARKER: &str = "PLANTED-ENTRY-EXECUTED";

/// A fake probe-cached at DIR/probe-cached with the stamp the launcher itself would have
/// written for it: a perfect forgery, executed if the directory holding it is trusted.
fn plant_forged_entry(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let fake = dir.join("probe-cached");
    fs::write(&fake, format!("#!/bin/sh\necho {MARKER}\n")).unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let m = fs::symlink_metadata(&fake).unwrap();
    let line = format!("f {} {} {} {}\n", m.ino(), m.len(), m.ctime(), m.ctime_nsec());
    // The header, the item, the entry point (the same file here): src/run/cache.rs, write_stamp.
    let stamp = format!("stigmer-stamp 2\n{line}{line}");
    fs::write(dir.join(".probe-cached.stamp"), stamp).unwrap();
}

/// Runs probe-cached; returns its output, asserting the marker never appears.
#[track_caller]
fn run_probe_cached_without_marker(sb: &Sandbox, what: &str) -> Output {
    let out = run(sb.component("probe-cached"));
    assert!(
        !stdout(&out).contains(MARKER) && !stderr(&out).contains(MARKER),
        "{what}: the planted program was executed!\n{}",
        describe(&out)
    );
    out
}

#[test]
fn torture_planted_entries_and_unsafe_roots_are_refused_never_executed() {
    let sb0 = Sandbox::new();
    let sha = component_info(&sb0, "probe-cached").sha256;
    let mut refused = 0;

    // Control: in a private cache the forgery is indistinguishable from a real entry (the hot
    // path only stats), so the cases below fail if a check is missing.
    {
        let sb = Sandbox::new();
        fs::create_dir(sb.cache()).unwrap();
        fs::set_permissions(sb.cache(), fs::Permissions::from_mode(0o700)).unwrap();
        plant_forged_entry(&sb.cache().join(&sha));
        fs::set_permissions(sb.cache().join(&sha), fs::Permissions::from_mode(0o700)).unwrap();
        let out = run(sb.component("probe-cached"));
        assert!(stdout(&out).contains(MARKER), "control: the forgery is not accurate:\n{}", describe(&out));
    }

    type Setup = fn(&Sandbox, &str, &Path) -> PathBuf;
    let cases: &[(&str, Setup)] = &[
        ("group-writable cache root", |sb, sha, _| {
            plant_forged_entry(&sb.cache().join(sha));
            fs::set_permissions(sb.cache().join(sha), fs::Permissions::from_mode(0o700)).unwrap();
            fs::set_permissions(sb.cache(), fs::Permissions::from_mode(0o770)).unwrap();
            sb.cache()
        }),
        ("world-writable cache root", |sb, sha, _| {
            plant_forged_entry(&sb.cache().join(sha));
            fs::set_permissions(sb.cache().join(sha), fs::Permissions::from_mode(0o700)).unwrap();
            fs::set_permissions(sb.cache(), fs::Permissions::from_mode(0o1777)).unwrap();
            sb.cache()
        }),
        ("foreign-owned cache root", |sb, sha, _| {
            plant_forged_entry(&sb.cache().join(sha));
            fs::set_permissions(sb.cache().join(sha), fs::Permissions::from_mode(0o700)).unwrap();
            fs::set_permissions(sb.cache(), fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(sb.cache(), Some(65534), Some(65534)).unwrap();
            sb.cache()
        }),
        ("symlinked cache root", |sb, sha, attacker| {
            fs::set_permissions(attacker, fs::Permissions::from_mode(0o700)).unwrap();
            plant_forged_entry(&attacker.join(sha));
            fs::set_permissions(attacker.join(sha), fs::Permissions::from_mode(0o700)).unwrap();
            fs::remove_dir(sb.cache()).unwrap();
            std::os::unix::fs::symlink(attacker, sb.cache()).unwrap();
            sb.cache()
        }),
        ("entry directory symlinked to an attacker's directory", |sb, sha, attacker| {
            fs::set_permissions(sb.cache(), fs::Permissions::from_mode(0o700)).unwrap();
            fs::set_permissions(attacker, fs::Permissions::from_mode(0o700)).unwrap();
            plant_forged_entry(attacker);
            std::os::unix::fs::symlink(attacker, sb.cache().join(sha)).unwrap();
            sb.cache().join(sha)
        }),
        ("foreign-owned entry directory", |sb, sha, _| {
            fs::set_permissions(sb.cache(), fs::Permissions::from_mode(0o700)).unwrap();
            plant_forged_entry(&sb.cache().join(sha));
            fs::set_permissions(sb.cache().join(sha), fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(sb.cache().join(sha), Some(65534), Some(65534)).unwrap();
            sb.cache().join(sha)
        }),
        ("world-writable entry directory", |sb, sha, _| {
            fs::set_permissions(sb.cache(), fs::Permissions::from_mode(0o700)).unwrap();
            plant_forged_entry(&sb.cache().join(sha));
            fs::set_permissions(sb.cache().join(sha), fs::Permissions::from_mode(0o777)).unwrap();
            sb.cache().join(sha)
        }),
    ];
    for (what, setup) in cases {
        if what.contains("foreign") && !is_root() {
            eprintln!("skipped: {what}: chown to another user needs root");
            continue;
        }
        let sb = Sandbox::new();
        let attacker = tempdir();
        fs::create_dir(sb.cache()).unwrap();
        let named = setup(&sb, &sha, attacker.path());
        let out = run_probe_cached_without_marker(&sb, what);
        let err = assert_launcher_error(&out, 126);
        assert!(err.contains(named.to_str().unwrap()), "{what}: the message names {}: {err}", named.display());
        refused += 1;
    }

    // A symlink planted in place of the item itself (in a private cache, without a matching
    // stamp): the entry is refilled, the link replaced, its target never run.
    let sb = Sandbox::new();
    let attacker = tempdir();
    plant_forged_entry(attacker.path());
    fs::create_dir(sb.cache()).unwrap();
    fs::set_permissions(sb.cache(), fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir(sb.cache().join(&sha)).unwrap();
    fs::set_permissions(sb.cache().join(&sha), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(attacker.path().join("probe-cached"), sb.cache().join(&sha).join("probe-cached"))
        .unwrap();
    let out = run_probe_cached_without_marker(&sb, "item symlink");
    let p = Probe::from_success(&out);
    assert_eq!(p.variant.as_deref(), Some("cached"));
    assert!(!fs::symlink_metadata(sb.cache().join(&sha).join("probe-cached")).unwrap().file_type().is_symlink());
    assert_eq!(
        fs::read_to_string(attacker.path().join("probe-cached")).unwrap(),
        format!("#!/bin/sh\necho {MARKER}\n")
    );
    eprintln!("figures: {refused} unsafe layouts refused with exit 126, 0 planted programs executed");
}

// ---------------------------------------------------------------------------
// 7. The supervisor under SIGKILL; crash storms.

/// Waits up to 2 s for every process of HOME to be gone (reaped, not even a zombie).
#[track_caller]
fn assert_home_empty_within_2s(home: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = home_procs(home);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what}: processes of this home still there 2 s after:\n{}", describe_procs(&left));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `stigmer server`, SIGKILLs the supervisor at the chosen moment, and checks that the
/// start fails and nothing of the home survives. Returns how many services were ready by then.
fn kill_supervisor_during_start(srv: &Server, when: Option<Duration>) -> usize {
    let mut cmd = srv.stigmer(&["server"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut client = ChildGuard(cmd.spawn().unwrap());
    let mut lines = BufReader::new(client.0.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    match when {
        None => {
            // Right after the first ✓.
            for line in lines.by_ref() {
                let line = line.unwrap();
                printed += &line;
                printed.push('\n');
                if line.contains('✓') {
                    break;
                }
            }
        }
        Some(delay) => std::thread::sleep(delay),
    }
    // The kill lands at the first moment after that when a supervisor exists.
    let supervisor = wait_for(Duration::from_secs(10), "the supervisor", || supervisor_of(srv.home()));
    kill(supervisor.pid, libc::SIGKILL);
    for line in lines {
        printed += &line.unwrap();
        printed.push('\n');
    }
    let status = client.0.wait().unwrap();
    let err = std::io::read_to_string(client.0.stderr.take().unwrap()).unwrap();
    assert_home_empty_within_2s(srv.home(), &format!("SIGKILL to the supervisor {when:?} into the start"));
    // Unless everything was ready before the kill, the start reports a failure.
    let all_ready = printed.contains("All services running");
    assert_eq!(status.success(), all_ready, "client: {status:?}\n{printed}\n{err}");
    printed.matches('✓').count()
}

#[test]
fn torture_supervisor_sigkilled_during_start_leaves_no_process() {
    let mut rng = Rng::new("supervisor kills");
    let srv = Server::new("");
    let mut runs = 0;
    let mut ready_at_kill = Vec::new();
    // Right after the first ✓, then at random moments.
    let ready = kill_supervisor_during_start(&srv, None);
    assert!(ready >= 1, "stigmer-server was reported ready");
    ready_at_kill.push(ready);
    runs += 1;
    for _ in 0..5 {
        ready_at_kill.push(kill_supervisor_during_start(&srv, Some(Duration::from_millis(rng.upto(500)))));
        runs += 1;
    }
    // And it starts cleanly afterwards.
    srv.start();
    let id = srv.submit("workflow", "after six killed starts");
    assert_eq!(srv.wait_done(&id)["status"], "done");
    eprintln!(
        "figures: {runs} supervisors SIGKILLed during start (services reported ready at each kill: {ready_at_kill:?}), \
         0 processes left within 2 s each, then a clean start"
    );
}

#[test]
fn torture_supervisor_sigkilled_mid_run_keeps_logs_and_jobs() {
    let srv = Server::new("");
    srv.start();
    let ids: Vec<String> = (0..3).map(|i| srv.submit("workflow", &format!("job {i} before the kill"))).collect();
    let before: Vec<Value> = ids.iter().map(|id| srv.wait_done(id)).collect();
    let logs = srv.home().join("logs");
    let log_before: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    assert!(log_before.iter().any(|(_, b)| !b.is_empty()), "the services logged something: {log_before:?}");

    let supervisor = srv.supervisor_pid();
    kill(supervisor, libc::SIGKILL);
    assert_home_empty_within_2s(srv.home(), "SIGKILL to the running supervisor");

    srv.start();
    for (id, old) in ids.iter().zip(&before) {
        let now = get_job(srv.port, id);
        assert_eq!(&now, old, "job {id} survived the kill unchanged");
    }
    let mut intact = 0;
    for (path, old) in &log_before {
        let now = fs::read(path).unwrap_or_default();
        assert!(now.starts_with(old), "{} lost lines across the kill", path.display());
        intact += 1;
    }
    let id = srv.submit("workflow", "after the kill");
    srv.wait_done(&id);
    eprintln!(
        "figures: supervisor SIGKILLed mid-run: {} jobs and {intact} log files intact, 0 processes left",
        ids.len()
    );
}

#[test]
fn torture_restart_storms_are_bounded() {
    const LIMIT: usize = 5;
    let crashers = [("crash-exit", "PROBE_EXIT = \"3\""), ("crash-signal", "PROBE_SIGNAL = \"9\"")];
    let mut extra = String::new();
    for (name, env) in crashers {
        extra += &format!(
            "[services.{name}]\ncommand = \"probe\"\nenv = {{ {env} }}\nready = {{ started_ms = 0 }}\nrestart = \"always\"\n\n"
        );
    }
    extra += &format!("[supervisor]\nrestart_limit = {LIMIT}\nbackoff_max_ms = 20\n");
    let srv = Server::new(&extra);
    let out = srv.server(&[]);
    assert_code(&out, 0);
    for (name, _) in crashers {
        wait_for(Duration::from_secs(20), &format!("{name} failed"), || {
            let (_, st) = srv.status();
            (Server::service(&st, name)["state"] == "failed").then_some(())
        });
    }
    // Well past the backoff: nothing starts them again.
    std::thread::sleep(Duration::from_millis(1500));
    let mut figures = Vec::new();
    for (name, _) in crashers {
        let log = fs::read_to_string(srv.home().join(format!("logs/{name}.log"))).unwrap();
        let starts = log.lines().filter(|l| l.contains("argv[0]=") && l.ends_with("/bin/probe")).count();
        figures.push(format!("{name}: {starts} starts"));
        assert_eq!(starts, LIMIT, "{name} is started restart_limit times, then left failed:\n{log}");
    }
    srv.running_status();
    eprintln!("figures: restart_limit = {LIMIT}: {}", figures.join(", "));
}

// ---------------------------------------------------------------------------
// 8. `stigmer doctor`.

const CHECKS: &[&str] =
    &["memfd", "runner", "home", "cache_root", "cache_exec", "cache_space", "ports", "containment", "payloads"];

/// Runs `stigmer doctor --json` (CMD prepared), checks the report's shape and the exit code
/// against its statuses, and returns the checks by name.
#[track_caller]
fn doctor_json(mut cmd: Command) -> Vec<(String, Value)> {
    cmd.args(["doctor", "--json"]);
    let out = run(cmd);
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("doctor --json: {e}\n{}", describe(&out)));
    let checks = report["checks"].as_array().unwrap_or_else(|| panic!("no checks array: {report:#}"));
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap_or("?")).collect();
    assert_eq!(names, CHECKS, "{report:#}");
    for c in checks {
        let status = c["status"].as_str().unwrap_or_default();
        assert!(["ok", "warn", "fail"].contains(&status), "{c:#}");
        assert!(c["detail"].as_str().is_some_and(|d| !d.is_empty()), "every check says what it found: {c:#}");
        if status != "ok" {
            assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "a check that is not ok says the fix: {c:#}");
        }
    }
    let any_fail = checks.iter().any(|c| c["status"] == "fail");
    assert_eq!(out.status.code(), Some(if any_fail { 1 } else { 0 }), "{}", describe(&out));
    checks.iter().map(|c| (c["name"].as_str().unwrap().to_owned(), c.clone())).collect()
}

#[track_caller]
fn check<'a>(checks: &'a [(String, Value)], name: &str) -> &'a Value {
    &checks.iter().find(|(n, _)| n == name).unwrap().1
}

/// A sandbox whose config.toml puts stigmer-server on a free port, so that `ports` is about
/// what the test does, not about a server running on the machine.
fn doctor_sandbox() -> (Sandbox, u16) {
    let sb = Sandbox::new();
    let port = free_port();
    fs::write(sb.home().join("config.toml"), format!("[services.stigmer-server]\nport = {port}\n")).unwrap();
    (sb, port)
}

#[test]
fn torture_doctor_all_ok_on_a_healthy_machine_in_one_screen() {
    let (sb, _) = doctor_sandbox();
    let checks = doctor_json(sb.stigmer());
    for (name, c) in &checks {
        assert_eq!(c["status"], "ok", "{name}: {c:#}");
    }
    let mut cmd = sb.stigmer();
    cmd.arg("doctor");
    let out = run(cmd);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.lines().count() <= 24, "one screen:\n{text}");
    for name in CHECKS {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

#[test]
fn torture_doctor_world_writable_cache_root_fails() {
    let (sb, _) = doctor_sandbox();
    fs::create_dir(sb.cache()).unwrap();
    fs::set_permissions(sb.cache(), fs::Permissions::from_mode(0o777)).unwrap();
    let checks = doctor_json(sb.stigmer());
    let c = check(&checks, "cache_root");
    assert_eq!(c["status"], "fail", "{c:#}");
    assert!(c["detail"].as_str().unwrap().contains(sb.cache().to_str().unwrap()), "{c:#}");
    // The text screen carries the same verdict and fix.
    let mut cmd = sb.stigmer();
    cmd.arg("doctor");
    let out = run(cmd);
    assert_code(&out, 1);
    assert!(stdout(&out).contains(c["fix"].as_str().unwrap()), "{}", describe(&out));
}

#[test]
fn torture_doctor_noexec_home_fails_cache_exec() {
    let (sb, port) = doctor_sandbox();
    let Some(_fs) = Tmpfs::mount(sb.home(), "size=64m,noexec") else { return };
    fs::write(sb.home().join("config.toml"), format!("[services.stigmer-server]\nport = {port}\n")).unwrap();
    let checks = doctor_json(sb.stigmer());
    let c = check(&checks, "cache_exec");
    assert_eq!(c["status"], "fail", "{c:#}");
    let text = format!("{} {}", c["detail"], c["fix"]);
    assert!(text.contains(canon(sb.home()).to_str().unwrap()), "names the mount: {c:#}");
    assert!(text.contains("noexec") || text.contains("exec"), "{c:#}");
}

#[test]
fn torture_doctor_tiny_disk_reports_cache_space() {
    let (sb, port) = doctor_sandbox();
    let Some(_fs) = Tmpfs::mount(sb.home(), "size=64k") else { return };
    fs::write(sb.home().join("config.toml"), format!("[services.stigmer-server]\nport = {port}\n")).unwrap();
    let checks = doctor_json(sb.stigmer());
    let c = check(&checks, "cache_space");
    assert!(c["status"] == "fail" || c["status"] == "warn", "{c:#}");
}

#[test]
fn torture_doctor_held_port_fails_ports() {
    let (sb, port) = doctor_sandbox();
    let _held = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let checks = doctor_json(sb.stigmer());
    let c = check(&checks, "ports");
    assert_eq!(c["status"], "fail", "{c:#}");
    assert!(c["detail"].as_str().unwrap().contains(&port.to_string()), "names the port: {c:#}");
}

#[test]
fn torture_doctor_memfd_noexec_is_reported_with_its_value() {
    let (sb, _) = doctor_sandbox();
    let bin = stigmer_bin();
    for (value, verdicts) in [(1u8, &["ok"][..]), (2, &["warn", "fail"][..])] {
        let Some(cmd) = with_memfd_noexec(&sb, value, &bin, &[]) else { return };
        let checks = doctor_json(cmd);
        let c = check(&checks, "memfd");
        assert!(verdicts.contains(&c["status"].as_str().unwrap()), "vm.memfd_noexec={value}: {c:#}");
        let detail = c["detail"].as_str().unwrap();
        let after = detail.split_once("memfd_noexec").map(|(_, rest)| rest.chars().take(4).collect::<String>());
        assert!(after.is_some_and(|a| a.contains(&value.to_string())), "the detail gives the setting: {c:#}");
    }
}

#[test]
fn torture_doctor_damaged_payload_fails_payloads() {
    let (sb, _) = doctor_sandbox();
    // A copy of the binary with one byte flipped inside the (uncompressed) probe payload.
    let copy_dir = tempdir();
    let copy = copy_dir.path().join("stigmer");
    let mut bytes = fs::read(stigmer_bin()).unwrap();
    let probe = fs::read(fixtures_dir().join("probe")).unwrap();
    let at = bytes.windows(probe.len()).position(|w| w == probe).expect("probe's bytes are in the binary");
    bytes[at + probe.len() / 2] ^= 0xff;
    fs::write(&copy, &bytes).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(&copy);
    sb.configure(&mut cmd);
    let checks = doctor_json(cmd);
    let c = check(&checks, "payloads");
    assert_eq!(c["status"], "fail", "{c:#}");
    assert!(c["detail"].as_str().unwrap().contains("probe"), "names the component: {c:#}");
}

// ---------------------------------------------------------------------------
// 9. `cache clear` / `cache prune` while programs start from the cache and run from it.

#[test]
fn torture_cache_clear_and_prune_never_remove_what_runs() {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    let sb = Sandbox::new();
    // A long run, started first: it must find its files at the end. (Only shdir: the entries of
    // pyapp and probe-cached must stay removable, so that starts race real removals.)
    let mut waiting: Vec<std::process::Child> = ["shdir"]
        .iter()
        .map(|name| {
            let mut cmd = sb.component(name);
            cmd.env("PYAPP_STDIN", "1").env("SHDIR_WAIT", "1").stdin(Stdio::piped()).stdout(Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let done = AtomicBool::new(false);
    let (mut clears, mut removed, mut kept) = (0u32, 0u32, 0u32);
    let mut failures = Vec::new();
    let runs = std::thread::scope(|s| {
        let starters: Vec<_> = (0..3)
            .map(|t| {
                let sb = &sb;
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for i in 0..10 {
                        let name = ["pyapp", "probe-cached", "pyapp", "shdir", "probe-cached"][(t + i) % 5];
                        let out = run(sb.component(name));
                        let ok = out.status.success()
                            && match name {
                                "pyapp" => stdout(&out).contains("\"sum\": 55"),
                                "shdir" => stdout(&out) == "shdir: data from a read-only directory\n",
                                _ => stdout(&out).contains("variant=cached"),
                            };
                        if !ok {
                            bad.push(format!("{name}: {}", describe(&out)));
                        }
                    }
                    bad
                })
            })
            .collect();
        let clearer = s.spawn(|| {
            let mut figures = (0, 0, 0, Vec::new());
            while !done.load(Ordering::Relaxed) {
                for action in ["clear", "prune"] {
                    let mut cmd = sb.stigmer();
                    cmd.args(["cache", action]);
                    let out = run(cmd);
                    figures.0 += 1;
                    if !out.status.success() {
                        figures.3.push(format!("cache {action}: {}", describe(&out)));
                    }
                    figures.1 += stdout(&out).lines().filter(|l| l.starts_with("removed ")).count() as u32;
                    figures.2 += stderr(&out).lines().filter(|l| l.contains(" kept")).count() as u32;
                }
            }
            figures
        });
        // A starter that panicked is a failure, not a hang: the clearer stops either way.
        for t in starters {
            match t.join() {
                Ok(bad) => failures.extend(bad),
                Err(_) => failures.push("a starter thread panicked (its message is above)".into()),
            }
        }
        done.store(true, Ordering::Relaxed);
        let (c, r, k, bad) = clearer.join().unwrap();
        (clears, removed, kept) = (c, r, k);
        failures.extend(bad);
        30
    });
    for (child, want) in waiting.iter_mut().zip(["shdir: data from a read-only directory"]) {
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
        let status = child.wait().unwrap();
        if !status.success() || !text.contains(want) {
            failures.push(format!("a program running during the clears: {status}: {text}"));
        }
    }
    eprintln!(
        "figures: {runs} cache-run starts and 1 long run during {clears} clear/prune runs: \
         {removed} entries removed, {kept} skipped as in use or being filled, {} failures",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(kept > 0, "the long run's entry was in use the whole time");
    assert!(removed > 0, "entries not in use were removed");
}
