//! Runner choice: memfd for single-file ELF, cache for runner = "cache",
//! STIGMER_RUNNER forcing, and the fallback when vm.memfd_noexec forbids
//! executable memfds.

use std::fs;

use crate::util::*;

/// A memfd start made nothing in the home and left no process behind.
#[track_caller]
pub fn assert_home_untouched(sb: &Sandbox) {
    let made: Vec<_> = fs::read_dir(sb.home()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(made.is_empty(), "a memfd start made {made:?} in STIGMER_HOME");
    let left = home_procs(sb.home());
    assert!(left.is_empty(), "a memfd start left processes behind: {}", describe_procs(&left));
}

fn assert_runs_from_cache(sb: &Sandbox, name: &str, p: &Probe) {
    let info = component_info(sb, name);
    let expected = cached_entry_point(sb, &info);
    assert_eq!(p.exe, canon(&expected).to_str().unwrap(), "{name} should run from its cache entry");
}

#[test]
fn memfd_is_used_for_elf_and_writes_nothing() {
    for name in ["probe", "probe-static", "probe-zstd"] {
        let sb = Sandbox::new();
        let p = Probe::from_success(&run(sb.component(name)));
        assert_eq!(p.exe, memfd_exe(name));
        assert_home_untouched(&sb);
    }
}

/// A memfd start of a home that does not exist yet does not create it.
#[test]
fn memfd_start_does_not_create_the_home() {
    let sb = Sandbox::new();
    let home = sb.home().join("not-yet");
    let mut cmd = sb.component("probe");
    cmd.env("STIGMER_HOME", &home);
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.exe, memfd_exe("probe"));
    assert!(fs::symlink_metadata(&home).is_err(), "the memfd start created {}", home.display());
    assert_home_untouched(&sb);
}

#[test]
fn runner_cache_in_components_toml() {
    let sb = Sandbox::new();
    let p = Probe::from_success(&run(sb.component("probe-cached")));
    assert_eq!(p.variant.as_deref(), Some("cached"));
    assert_runs_from_cache(&sb, "probe-cached", &p);
    assert_no_temp_items(&sb.cache());
}

#[test]
fn zstd_component_decompresses() {
    let sb = Sandbox::new();
    let p = Probe::from_success(&run(sb.component("probe-zstd")));
    assert_eq!(p.variant.as_deref(), Some("zstd"));
    let mut cmd = sb.component("probe-zstd");
    cmd.env("STIGMER_RUNNER", "cache");
    let p = Probe::from_success(&run(cmd));
    assert_runs_from_cache(&sb, "probe-zstd", &p);
    let info = component_info(&sb, "probe-zstd");
    assert_eq!(sha256_file(&cached_entry_point(&sb, &info)), info.sha256);
}

#[test]
fn forced_cache_runner_for_elf() {
    let sb = Sandbox::new();
    let mut cmd = sb.component("probe");
    cmd.env("STIGMER_RUNNER", "cache").arg("x");
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.argv, [&sb.arg0("probe"), "x"]);
    assert_runs_from_cache(&sb, "probe", &p);
    // Warm run from the same entry.
    let mut cmd = sb.component("probe");
    cmd.env("STIGMER_RUNNER", "cache");
    let p = Probe::from_success(&run(cmd));
    assert_runs_from_cache(&sb, "probe", &p);
}

#[test]
fn forced_memfd_and_auto_for_elf() {
    for runner in ["memfd", "auto"] {
        let sb = Sandbox::new();
        let mut cmd = sb.component("probe-static");
        cmd.env("STIGMER_RUNNER", runner);
        let p = Probe::from_success(&run(cmd));
        assert_eq!(p.exe, memfd_exe("probe-static"), "STIGMER_RUNNER={runner}");
        assert_home_untouched(&sb);
    }
}

#[test]
fn bad_runner_value_is_125() {
    let sb = Sandbox::new();
    let mut cmd = sb.component("probe");
    cmd.env("STIGMER_RUNNER", "bogus");
    let err = assert_launcher_error(&run(cmd), 125);
    assert!(err.contains("STIGMER_RUNNER"), "{err}");
}

#[test]
fn forced_memfd_for_directory_component_is_126() {
    let sb = Sandbox::new();
    let mut cmd = sb.component("pyapp");
    cmd.env("STIGMER_RUNNER", "memfd");
    assert_launcher_error(&run(cmd), 126);
}

#[test]
fn memfd_noexec_falls_back_to_cache() {
    let sb = Sandbox::new();
    let link = sb.link("probe");
    let Some(mut cmd) = with_memfd_noexec(&sb, 2, &link, &[]) else { return };
    cmd.arg("arg");
    let out = run(cmd);
    let p = Probe::from_success(&out);
    assert_eq!(p.argv, [link.to_str().unwrap(), "arg"]);
    assert_runs_from_cache(&sb, "probe", &p);
    assert!(out.stderr.is_empty(), "{}", describe(&out));
}

#[test]
fn memfd_noexec_with_forced_memfd_is_126() {
    let sb = Sandbox::new();
    let link = sb.link("probe");
    let Some(mut cmd) = with_memfd_noexec(&sb, 2, &link, &[]) else { return };
    cmd.env("STIGMER_RUNNER", "memfd");
    assert_launcher_error(&run(cmd), 126);
}

/// As an ordinary user (uid 4242, no passwd entry, its home under root-owned directories), a
/// small ELF runs from a memfd and leaves the home empty and nothing running; a big one (over the
/// auto policy's memfd size) runs from the cache that start fills in that home.
#[test]
fn ordinary_user_memfd_start_touches_nothing_and_big_elf_uses_the_cache() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const USER: u32 = 4242;
    if !is_root() {
        eprintln!("skipped: running as uid {USER} needs root");
        return;
    }
    // /tmp, not target/: the checkout may sit in a directory only root can enter.
    let top = tempfile::Builder::new().prefix("stigmer-4242-").tempdir().unwrap();
    fs::set_permissions(top.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = top.path().join("stigmer");
    fs::copy(stigmer_bin(), &bin).unwrap();
    let home = top.path().join("home");
    fs::create_dir(&home).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&home, Some(USER), Some(USER)).unwrap();
    let start = |name: &str| {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(["exec", name]).env_remove("STIGMER_RUNNER").env("STIGMER_HOME", &home);
        cmd.stdin(std::process::Stdio::null()).uid(USER).gid(USER);
        Probe::from_success(&run(cmd))
    };
    assert_eq!(start("probe").exe, memfd_exe("probe"));
    let made: Vec<_> = fs::read_dir(&home).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(made.is_empty(), "a memfd start made {made:?} in the home");
    let left = home_procs(&home);
    assert!(left.is_empty(), "a memfd start left processes behind: {}", describe_procs(&left));
    let exe = start("big-probe").exe;
    assert!(exe.starts_with(canon(&home.join("cache")).to_str().unwrap()), "big-probe ran from {exe}");
}
