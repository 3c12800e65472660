//! The cache runner: layout, self-repair of damaged entries, safety checks on
//! the cache root, concurrent first runs, and the `cache` applet.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use crate::util::*;

/// Runs probe-cached once and returns (its info, its cached entry point).
fn fill_probe_cached(sb: &Sandbox) -> (ComponentInfo, std::path::PathBuf) {
    let p = Probe::from_success(&run(sb.component("probe-cached")));
    assert_eq!(p.variant.as_deref(), Some("cached"));
    let info = component_info(sb, "probe-cached");
    let file = cached_entry_point(sb, &info);
    assert_eq!(p.exe, canon(&file).to_str().unwrap());
    (info, file)
}

fn assert_probe_cached_ok(sb: &Sandbox) {
    let mut cmd = sb.component("probe-cached");
    cmd.arg("again");
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.variant.as_deref(), Some("cached"));
    assert_eq!(p.argv, [&sb.arg0("probe-cached"), "again"]);
}

#[test]
fn cache_root_is_private() {
    let sb = Sandbox::new();
    fill_probe_cached(&sb);
    let meta = fs::symlink_metadata(sb.cache()).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(sb.cache_entries().len(), 1);
}

#[test]
fn truncated_entry_is_refilled() {
    let sb = Sandbox::new();
    let (info, file) = fill_probe_cached(&sb);
    fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .or_else(|_| {
            let mut perms = fs::metadata(&file)?.permissions();
            perms.set_mode(perms.mode() | 0o200);
            fs::set_permissions(&file, perms)?;
            fs::OpenOptions::new().write(true).open(&file)
        })
        .unwrap()
        .set_len(100)
        .unwrap();
    assert_probe_cached_ok(&sb);
    assert_eq!(fs::metadata(&file).unwrap().len(), info.size);
    assert_eq!(sha256_file(&file), info.sha256);
    assert_no_temp_items(&sb.cache());
}

#[test]
fn modified_in_place_entry_is_refilled() {
    let sb = Sandbox::new();
    let (info, file) = fill_probe_cached(&sb);
    // A byte in the middle of .text-ish territory; same size, same inode.
    flip_byte(&file, info.size / 2);
    assert_ne!(sha256_file(&file), info.sha256);
    assert_probe_cached_ok(&sb);
    assert_eq!(sha256_file(&file), info.sha256);
    assert_no_temp_items(&sb.cache());
}

#[test]
fn missing_entry_file_is_refilled() {
    let sb = Sandbox::new();
    let (info, file) = fill_probe_cached(&sb);
    fs::remove_file(&file).unwrap();
    assert_probe_cached_ok(&sb);
    assert_eq!(sha256_file(&file), info.sha256);
}

#[test]
fn world_writable_cache_root_is_refused() {
    let sb = Sandbox::new();
    fs::create_dir(sb.cache()).unwrap();
    fs::set_permissions(sb.cache(), fs::Permissions::from_mode(0o777)).unwrap();
    let err = assert_launcher_error(&run(sb.component("probe-cached")), 126);
    assert!(err.contains(sb.cache().to_str().unwrap()), "{err}");
    assert!(err.contains("chmod"), "message should say how to fix it: {err}");
    assert!(sb.cache_entries().is_empty(), "nothing may be filled into an unsafe cache");
}

#[test]
fn group_writable_cache_root_is_refused() {
    let sb = Sandbox::new();
    fs::create_dir(sb.cache()).unwrap();
    fs::set_permissions(sb.cache(), fs::Permissions::from_mode(0o770)).unwrap();
    let err = assert_launcher_error(&run(sb.component("probe-cached")), 126);
    assert!(err.contains(sb.cache().to_str().unwrap()), "{err}");
}

#[test]
fn symlinked_cache_root_is_refused() {
    let sb = Sandbox::new();
    let elsewhere = tempdir();
    fs::set_permissions(elsewhere.path(), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), sb.cache()).unwrap();
    let err = assert_launcher_error(&run(sb.component("probe-cached")), 126);
    assert!(err.contains(sb.cache().to_str().unwrap()), "{err}");
    assert!(visible_entries(elsewhere.path()).is_empty());
}

#[test]
fn foreign_owned_cache_root_is_refused() {
    if !is_root() {
        eprintln!("skipped: chown to another user needs root");
        return;
    }
    let sb = Sandbox::new();
    fs::create_dir(sb.cache()).unwrap();
    fs::set_permissions(sb.cache(), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(sb.cache(), Some(65534), Some(65534)).unwrap();
    let err = assert_launcher_error(&run(sb.component("probe-cached")), 126);
    assert!(err.contains(sb.cache().to_str().unwrap()), "{err}");
}

#[test]
fn concurrent_first_runs_fill_once() {
    let sb = Sandbox::new();
    let children: Vec<_> = (0..32)
        .map(|i| {
            let mut cmd = sb.component("probe-cached");
            cmd.arg(i.to_string()).stdout(Stdio::piped()).stderr(Stdio::piped());
            (i, cmd.spawn().unwrap())
        })
        .collect();
    let info = component_info(&sb, "probe-cached");
    let expected_exe = cached_entry_point(&sb, &info);
    for (i, child) in children {
        let out = child.wait_with_output().unwrap();
        let p = Probe::from_success(&out);
        assert_eq!(p.argv, [sb.arg0("probe-cached"), i.to_string()]);
        assert_eq!(p.variant.as_deref(), Some("cached"));
        assert!(out.stderr.is_empty(), "run {i}: {}", describe(&out));
        assert_eq!(p.exe, canon(&expected_exe).to_str().unwrap());
    }
    assert_eq!(sb.cache_entries(), std::slice::from_ref(&info.sha256));
    assert_no_temp_items(&sb.cache());
    assert_eq!(sha256_file(&expected_exe), info.sha256);
}

#[test]
fn cache_path_list_clear() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.args(["cache", "path"]);
    let out = run(cmd);
    assert_code(&out, 0);
    assert_eq!(stdout(&out).trim_end(), sb.cache().to_str().unwrap());

    let (info, _) = fill_probe_cached(&sb);
    let mut cmd = sb.stigmer();
    cmd.args(["cache", "list"]);
    let out = run(cmd);
    assert_code(&out, 0);
    let text = stdout(&out);
    let lines: Vec<_> = text.lines().filter(|l| l.contains(&info.sha256)).collect();
    assert_eq!(lines.len(), 1, "one line per entry:\n{text}");
    assert!(lines[0].contains("probe-cached"), "{text}");

    let mut cmd = sb.stigmer();
    cmd.args(["cache", "clear"]);
    assert_code(&run(cmd), 0);
    assert!(sb.cache_entries().is_empty(), "{:?}", sb.cache_entries());
    // And it fills again afterwards.
    fill_probe_cached(&sb);
}

#[test]
fn cache_prune_removes_unreferenced_entries_only() {
    let sb = Sandbox::new();
    let (info, file) = fill_probe_cached(&sb);
    let fake = sb.cache().join("ab".repeat(32));
    fs::create_dir_all(fake.join("gone")).unwrap();
    fs::write(fake.join("gone/gone"), b"stale").unwrap();
    let mut cmd = sb.stigmer();
    cmd.args(["cache", "prune"]);
    let out = run(cmd);
    assert_code(&out, 0);
    assert!(!fake.exists(), "unreferenced entry survived prune");
    assert_eq!(sb.cache_entries(), std::slice::from_ref(&info.sha256));
    assert_eq!(sha256_file(&file), info.sha256);
}

#[test]
fn verify_reports_corrupted_entry() {
    let sb = Sandbox::new();
    let (info, file) = fill_probe_cached(&sb);
    let mut cmd = sb.stigmer();
    cmd.arg("verify");
    let out = run(cmd);
    assert_code(&out, 0);
    assert!(format!("{}{}", stdout(&out), stderr(&out)).contains("OK"), "{}", describe(&out));

    flip_byte(&file, info.size / 3);
    let mut cmd = sb.stigmer();
    cmd.arg("verify");
    let out = run(cmd);
    assert_code(&out, 1);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        all.contains("probe-cached") || all.contains(file.to_str().unwrap()),
        "verify must name the bad entry:\n{}",
        describe(&out)
    );
}

#[test]
fn verify_with_empty_cache_is_ok() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.arg("verify");
    let out = run(cmd);
    assert_code(&out, 0);
}

#[test]
fn stigmer_home_defaults_to_dot_stigmer() {
    let sb = Sandbox::new();
    let home = tempdir();
    let mut cmd = sb.stigmer();
    cmd.env_remove("STIGMER_HOME").env("HOME", home.path());
    cmd.args(["cache", "path"]);
    let out = run(cmd);
    assert_code(&out, 0);
    assert_eq!(stdout(&out).trim_end(), home.path().join(".stigmer/cache").to_str().unwrap());
}

/// `cache list`'s line for the entry NAME.
fn listed_line(srv: &Server, name: &str) -> Option<String> {
    let out = run(srv.stigmer(&["cache", "list"]));
    assert_code(&out, 0);
    stdout(&out).lines().find(|l| l.starts_with(name)).map(str::to_owned)
}

/// Each server start pins its own build in the cache (issue 20, item 11): after an upgrade the
/// old build's pin is removed by the next start, once no server runs from it, and `cache list`
/// says of a pin whether a running server holds it.
#[test]
fn pins_of_builds_no_server_runs_from_are_removed_at_the_next_start() {
    let srv = Server::bare(free_port());
    srv.write_config(
        "[services.stigmer-server]\nenabled = false\n[services.workflow-runner]\nenabled = false\n\
         [services.agent-runner]\nenabled = false\n[services.idle]\ncommand = \"sleep\"\nargs = [\"300\"]\n",
    );
    let dir = tempdir();
    let old = other_build(dir.path());
    let (old_sha, new_sha) = (sha256_file(&old), sha256_file(&stigmer_bin()));
    assert_code(&run(srv.stigmer_from(&old, &["server"])), 0);
    let line = listed_line(&srv, &old_sha).expect("the old build is pinned");
    assert!(line.contains("pinned by the running server"), "{line}");
    srv.stop();
    let line = listed_line(&srv, &old_sha).expect("the stopped build's pin is kept until the next start");
    assert!(line.contains("no server runs from"), "{line}");

    srv.start();
    assert_eq!(listed_line(&srv, &old_sha), None, "the old build's pin outlived the upgrade");
    let line = listed_line(&srv, &new_sha).expect("the new build is pinned");
    assert!(line.contains("pinned by the running server"), "{line}");
    // A pin in use is never removed (the same removal as prune's, which skips what is held).
    assert_code(&run(srv.stigmer(&["cache", "prune"])), 0);
    assert!(listed_line(&srv, &new_sha).is_some(), "prune removed the running server's pin");
    srv.stop();
}
