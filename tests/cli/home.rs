//! A home you can trust (issue 9): homes another user owns or can write into (or reach through a
//! directory they could change) are refused by `exec`, `doctor` and `server`; entries in use
//! survive `cache clear`/`prune`; directory components with read-only directories and setuid
//! files unpack safely for any user; a busy (ETXTBSY) entry is refilled; the tools go on past
//! junk in the cache; a non-UTF-8 home works. "Another user" is 4242 (neither root nor the overflow uid) and
//! nobody (65534), with root-owned parents: the tests run as root in CI.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::*;

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `stigmer exec probe-cached` (the cache runner) in SB: its output.
fn exec_cached(sb: &Sandbox) -> std::process::Output {
    let mut cmd = sb.stigmer();
    cmd.args(["exec", "probe-cached"]);
    run(cmd)
}

/// `stigmer doctor --json`: (exit code, the home check).
fn doctor_home(sb: &Sandbox) -> (i32, serde_json::Value) {
    let mut cmd = sb.stigmer();
    cmd.args(["doctor", "--json"]);
    let out = run(cmd);
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    let home = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "home").cloned().unwrap();
    (out.status.code().unwrap(), home)
}

/// Asserts exec, doctor and server refuse SB's home, each naming NAMED and saying what to do.
#[track_caller]
fn assert_refused_everywhere(sb: &Sandbox, named: &Path, fix: &str) {
    let shown = named.to_str().unwrap();
    let err = assert_launcher_error(&exec_cached(sb), 126);
    assert!(err.contains(shown) && err.contains(fix), "exec: names {shown} and `{fix}`: {err}");
    // The sha from a home of its own: `components` reads config.toml, and refuses it here too.
    assert!(!sb.cache().join(component_info(&Sandbox::new(), "probe-cached").sha256).exists(), "nothing filled");

    let (code, check) = doctor_home(sb);
    assert_eq!(code, 1, "doctor fails: {check}");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(check["detail"].as_str().unwrap().contains(shown), "{check}");
    assert!(check["fix"].as_str().unwrap().contains(fix), "{check}");

    let mut cmd = sb.stigmer();
    cmd.args(["server", "status"]);
    let out = run(cmd);
    assert_code(&out, 1);
    assert!(stderr(&out).contains(shown) && stderr(&out).contains(fix), "server: {}", describe(&out));
}

#[test]
fn home_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: chown to another user needs root");
        return;
    }
    for uid in OTHER_USERS {
        let sb = Sandbox::new();
        std::os::unix::fs::chown(sb.home(), Some(uid), Some(uid)).unwrap();
        assert_refused_everywhere(&sb, sb.home(), "chown");
    }
}

#[test]
fn group_or_world_writable_home_is_refused() {
    for mode in [0o770, 0o777, 0o1777] {
        let sb = Sandbox::new();
        chmod(sb.home(), mode);
        assert_refused_everywhere(&sb, sb.home(), "chmod go-w");
    }
}

#[test]
fn foreign_config_and_writable_children_are_refused() {
    let sb = Sandbox::new();
    let config = sb.home().join("config.toml");
    fs::write(&config, "").unwrap();
    chmod(&config, 0o666);
    assert_refused_everywhere(&sb, &config, "chmod go-w");
    // A memfd start reads nothing of the home but config.toml, and that only from a home the
    // cache path would trust; `components` (which says what a start would take) likewise.
    for args in [&["exec", "probe"][..], &["components"]] {
        let mut cmd = sb.stigmer();
        cmd.args(args);
        let out = run(cmd);
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {}", describe(&out));
        assert!(err.contains(config.to_str().unwrap()) && err.contains("chmod go-w"), "{args:?}: {err}");
    }
    let mut cmd = sb.stigmer();
    cmd.args(["exec", "probe"]);
    assert_launcher_error(&run(cmd), 126);

    let sb = Sandbox::new();
    let data = sb.home().join("data/some-service");
    fs::create_dir_all(&data).unwrap();
    chmod(&data, 0o777);
    assert_refused_everywhere(&sb, &data, "chmod go-w");
}

#[test]
fn home_below_a_directory_others_can_write_is_refused_unless_sticky() {
    let top = tempdir();
    let open = top.path().join("open");
    fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let mut cmd = Command::new(stigmer_bin());
    let home = open.join("home");
    cmd.env("STIGMER_HOME", &home).args(["exec", "probe-cached"]).stdin(Stdio::null());
    let err = assert_launcher_error(&run(cmd), 126);
    assert!(err.contains(open.to_str().unwrap()) && err.contains("others can write"), "{err}");
    assert!(!home.exists(), "nothing is created under an unsafe directory");

    // Sticky (as /tmp is): others cannot rename or delete what is ours.
    chmod(&open, 0o1777);
    let mut cmd = Command::new(stigmer_bin());
    cmd.env("STIGMER_HOME", &home).args(["exec", "probe-cached"]).stdin(Stdio::null());
    Probe::from_success(&run(cmd));
}

#[test]
fn home_that_is_a_file_is_refused_and_doctor_says_so() {
    let top = tempdir();
    let file = top.path().join("home");
    fs::write(&file, "").unwrap();
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.env("STIGMER_HOME", &file).args(["doctor"]);
    let out = run(cmd);
    assert_code(&out, 1);
    assert!(
        stdout(&out).contains("not a directory") && stdout(&out).contains(file.to_str().unwrap()),
        "{}",
        describe(&out)
    );
}

#[test]
fn symlinked_home_to_a_private_directory_is_fine() {
    let sb = Sandbox::new();
    let top = tempdir();
    let link = top.path().join("link");
    std::os::unix::fs::symlink(sb.home(), &link).unwrap();
    let mut cmd = sb.stigmer();
    cmd.env("STIGMER_HOME", &link).args(["exec", "probe-cached", "x"]);
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.argv, ["probe-cached", "x"]);
}

#[test]
fn non_utf8_home_is_used_byte_for_byte() {
    let top = tempdir();
    let mut name = top.path().as_os_str().to_owned().into_vec();
    name.extend_from_slice(b"/h\xffome \x01");
    let home = PathBuf::from(OsString::from_vec(name));
    fs::create_dir(&home).unwrap();
    chmod(&home, 0o700);
    for (component, want) in [("probe-cached", "cached"), ("shdir", "shdir: data from a read-only directory")] {
        let mut cmd = Command::new(stigmer_bin());
        cmd.env("STIGMER_HOME", &home).args(["exec", component]).stdin(Stdio::null());
        let out = run(cmd);
        assert_code(&out, 0);
        assert!(stdout(&out).contains(want), "{}", describe(&out));
    }
    let mut cmd = Command::new(stigmer_bin());
    cmd.env("STIGMER_HOME", &home).args(["cache", "path"]);
    let out = run(cmd);
    let mut want = home.join("cache").into_os_string().into_vec();
    want.push(b'\n');
    assert_eq!(out.stdout, want, "cache path prints the bytes as they are");
    assert_eq!(visible_entries(&home.join("cache")).len(), 2);
}

#[test]
fn read_only_directories_unpack_for_any_user_and_setuid_is_dropped() {
    if !is_root() {
        eprintln!("skipped: running as another user needs root");
        return;
    }
    for w in OTHER_USERS.map(UserWorld::of) {
        read_only_directories_unpack_for(&w);
    }
}

fn read_only_directories_unpack_for(w: &UserWorld) {
    for _ in 0..2 {
        let out = run(w.stigmer(&["exec", "shdir"]));
        assert_code(&out, 0);
        assert_eq!(stdout(&out), "shdir: data from a read-only directory\n", "{}", describe(&out));
    }
    let entries = visible_entries(&w.home.join("cache"));
    assert_eq!(entries.len(), 1, "{entries:?}");
    let tree = w.home.join("cache").join(&entries[0]).join("shdir");
    let ro = fs::metadata(tree.join("ro")).unwrap();
    assert_eq!(ro.mode() & 0o7777, 0o555, "the directory keeps its read-only mode");
    assert_eq!(ro.uid(), w.uid);
    let tool = fs::metadata(tree.join("ro/setuid-tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o555, "setuid dropped, read-only");
    assert_eq!(fs::metadata(tree.join("ro/data.txt")).unwrap().mode() & 0o7777, 0o444);
    // And nobody can remove it again, read-only directories included.
    let out = run(w.stigmer(&["cache", "clear"]));
    assert_code(&out, 0);
    assert!(visible_entries(&w.home.join("cache")).is_empty(), "{}", describe(&out));
    assert!(leftovers(&w.home.join("cache")).is_empty());
}

#[test]
fn cached_files_are_read_only() {
    let sb = Sandbox::new();
    Probe::from_success(&exec_cached(&sb));
    let info = component_info(&sb, "probe-cached");
    let mode = fs::metadata(cached_entry_point(&sb, &info)).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o555);
}

#[test]
fn entry_open_for_writing_is_refilled_not_run() {
    let sb = Sandbox::new();
    Probe::from_success(&exec_cached(&sb));
    let info = component_info(&sb, "probe-cached");
    let file = cached_entry_point(&sb, &info);
    let before = fs::metadata(&file).unwrap().ino();
    // Open for writing (root may, despite the mode), nothing written: exec would fail ETXTBSY.
    let held = fs::OpenOptions::new().write(true).open(&file).unwrap();
    let p = Probe::from_success(&exec_cached(&sb));
    assert_eq!(p.variant.as_deref(), Some("cached"));
    let after = fs::metadata(&file).unwrap();
    assert_ne!(after.ino(), before, "refilled into a new file");
    assert_eq!(sha256_file(&file), info.sha256);
    drop(held);
}

/// Starts shdir from the cache, waiting on its stdin; returns the child once it runs.
fn start_waiting_shdir(sb: &Sandbox) -> std::process::Child {
    let mut cmd = sb.stigmer();
    cmd.args(["exec", "shdir"]).env("SHDIR_WAIT", "1").stdin(Stdio::piped()).stdout(Stdio::piped());
    cmd.spawn().unwrap()
}

#[test]
fn clear_and_prune_keep_entries_in_use_and_say_so() {
    let sb = Sandbox::new();
    let mut child = start_waiting_shdir(&sb);
    let sha = component_info(&sb, "shdir").sha256;
    let entry = sb.cache().join(&sha);
    // The run holds the entry's lock once the script runs (the launcher execs into it).
    wait_for(std::time::Duration::from_secs(30), "shdir running", || {
        let pid = child.id() as i32;
        proc_cmdline(pid).contains("shdir/shdir").then_some(())
    });
    // A junk name and a planted symlink: reported, left alone, exit 1.
    let junk = sb.cache().join(OsString::from_vec(b"junk\xff".to_vec()));
    fs::write(&junk, "").unwrap();
    std::os::unix::fs::symlink("/etc", sb.cache().join("ab".repeat(32))).unwrap();
    for action in ["clear", "prune"] {
        let mut cmd = sb.stigmer();
        cmd.args(["cache", action]);
        let out = run(cmd);
        assert_code(&out, 1);
        assert!(
            stderr(&out).contains(&format!("{} is in use", entry.display())) || action == "prune",
            "{}",
            describe(&out)
        );
        assert!(stderr(&out).contains("not ours"), "{}", describe(&out));
        assert!(stdout(&out).contains("0 removed"), "{}", describe(&out));
        assert!(entry.exists());
    }
    let mut cmd = sb.stigmer();
    cmd.args(["cache", "list"]);
    let out = run(cmd);
    assert_code(&out, 1);
    assert!(stdout(&out).contains("not ours: a symlink") && stdout(&out).contains("shdir:ok"), "{}", describe(&out));
    let mut cmd = sb.stigmer();
    cmd.arg("verify");
    let out = run(cmd);
    assert_code(&out, 1);
    assert!(stdout(&out).contains("NOT OURS"), "{}", describe(&out));

    // The running program still finds its files.
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "shdir: data from a read-only directory\n");
    fs::remove_file(&junk).unwrap();
    fs::remove_file(sb.cache().join("ab".repeat(32))).unwrap();
    let mut cmd = sb.stigmer();
    cmd.args(["cache", "clear"]);
    let out = run(cmd);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("1 removed, 0 in use kept"), "{}", describe(&out));
    assert!(sb.cache_entries().is_empty());
}

#[test]
fn server_keeps_working_after_its_binary_is_deleted() {
    let srv = Server::new("");
    let dir = tempdir();
    let copy = dir.path().join("stigmer");
    fs::copy(stigmer_bin(), &copy).unwrap();
    let out = run(srv.stigmer_from(&copy, &["server"]));
    assert_code(&out, 0);
    assert!(stdout(&out).contains("All services running"), "{}", describe(&out));
    // `brew upgrade` + `brew cleanup`: the file the server was started from is gone.
    fs::remove_file(&copy).unwrap();
    let link = fs::read_link(srv.home().join("bin/agent-runner")).unwrap();
    assert!(link.starts_with(srv.home().join("cache")), "links point at the pinned copy: {}", link.display());
    // prune keeps what the running server uses.
    let out = run(srv.stigmer(&["cache", "prune"]));
    assert_code(&out, 0);
    assert!(link.exists(), "{}", describe(&out));
    let ids: Vec<String> = (0..4).map(|i| srv.submit("workflow", &format!("after the upgrade {i}"))).collect();
    for id in ids {
        srv.wait_done(&id);
    }
}

/// On tmpfs a write through a shared mapping moves neither mtime nor ctime, so the stamp alone
/// would miss it. Cached files are read-only: another user must chmod before opening one for
/// writing, and the chmod moves ctime. (Root, who may open it anyway, can change anything.)
#[test]
fn mmap_write_on_tmpfs_takes_a_chmod_which_the_stamp_sees() {
    let sb = Sandbox::new();
    let Some(_fs) = Tmpfs::mount(sb.home(), "size=64m") else { return };
    Probe::from_success(&exec_cached(&sb));
    let info = component_info(&sb, "probe-cached");
    let file = cached_entry_point(&sb, &info);
    assert_eq!(fs::metadata(&file).unwrap().mode() & 0o222, 0, "no write bit: a non-root writer must chmod");
    chmod(&file, 0o755);
    let f = fs::OpenOptions::new().read(true).write(true).open(&file).unwrap();
    let len = info.size as usize;
    // SAFETY: a shared mapping of a file we hold open, unmapped before the file is dropped.
    unsafe {
        use std::os::fd::AsRawFd;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        *(p as *mut u8).add(len / 2) ^= 0xff;
        libc::msync(p, len, libc::MS_SYNC);
        libc::munmap(p, len);
    }
    drop(f);
    chmod(&file, 0o555);
    assert_ne!(sha256_file(&file), info.sha256);
    Probe::from_success(&exec_cached(&sb));
    assert_eq!(sha256_file(&file), info.sha256, "the changed entry was refilled, not run");
}

/// The build id (what `server status` compares across builds) is the GNU build-id note of the
/// binary, found here by scanning the file for the note (namesz 4, type 3, "GNU").
#[test]
fn build_id_is_the_gnu_build_id_note() {
    let bytes = fs::read(stigmer_bin()).unwrap();
    let header: Vec<u8> = [4u32, 20, 3].iter().flat_map(|w| w.to_ne_bytes()).chain(*b"GNU\0").collect();
    let at = bytes.windows(header.len()).position(|w| w == header.as_slice()).expect("a GNU build-id note");
    let id: String = bytes[at + 16..at + 36].iter().map(|b| format!("{b:02x}")).collect();
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.arg("doctor");
    let out = run(cmd);
    assert!(stdout(&out).contains(&format!("(build {id})")), "{}", describe(&out));
}
