//! PyInstaller components (onedir directory bundle and onefile) run through
//! the cache, find their bundled OpenSSL/SQLite, and pass I/O through.

use std::fs;
use std::process::Stdio;

use serde_json::Value;

use crate::util::*;

fn parse_report(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", describe(out));
    let text = stdout(out);
    let first = text.lines().next().unwrap_or_default();
    serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}\n{}", describe(out)))
}

fn check_report(report: &Value, arg0: &str, args: &[&str]) {
    let mut argv = vec![arg0];
    argv.extend_from_slice(args);
    // PyInstaller's bootloader hands the C argv[0] to sys.argv[0] unchanged,
    // so it is exactly what the caller gave the link.
    assert_eq!(report["argv"], serde_json::json!(argv), "{report}");
    assert_eq!(report["frozen"], Value::Bool(true), "{report}");
    assert!(report["ssl"].as_str().unwrap().contains("SSL"), "{report}");
    assert!(!report["sqlite"].as_str().unwrap().is_empty(), "{report}");
    assert_eq!(report["sum"], 55, "{report}");
}

fn runs(name: &str) {
    let sb = Sandbox::new();
    let mut cmd = sb.component(name);
    cmd.args(["a", "b c"]);
    let out = run(cmd);
    let report = parse_report(&out);
    check_report(&report, &sb.arg0(name), &["a", "b c"]);
    let info = component_info(&sb, name);
    assert_eq!(info.runner, "cache");
    let entry = cached_entry_point(&sb, &info);
    assert_eq!(
        report["executable"].as_str().unwrap(),
        canon(&entry).to_str().unwrap(),
        "PyInstaller must run from the cache entry"
    );
    assert!(out.stderr.is_empty(), "{}", describe(&out));
    assert_no_temp_items(&sb.cache());
    // Warm run.
    let out = run(sb.component(name));
    check_report(&parse_report(&out), &sb.arg0(name), &[]);
}

#[test]
fn onedir_runs_from_cache() {
    runs("pyapp");
}

#[test]
fn onefile_runs_from_cache() {
    runs("pyapp-onefile");
}

fn io_pass_through(name: &str) {
    let sb = Sandbox::new();
    let cwd = tempdir();
    let mut cmd = sb.component(name);
    cmd.env("PYAPP_STDIN", "1")
        .env("PYAPP_EXIT", "9")
        .env("PYAPP_ENV", "FOO,NOT_SET")
        .env("FOO", "bar baz")
        .env_remove("NOT_SET")
        .current_dir(cwd.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = run_with_input(cmd, b"hello from stdin\nsecond line\n");
    assert_code(&out, 9);
    let text = stdout(&out);
    let mut lines = text.splitn(2, '\n');
    let report: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    check_report(&report, &sb.arg0(name), &[]);
    assert_eq!(report["cwd"], canon(cwd.path()).to_str().unwrap(), "{report}");
    assert_eq!(report["env"]["FOO"], "bar baz", "{report}");
    assert_eq!(report["env"]["NOT_SET"], Value::Null, "{report}");
    assert_eq!(lines.next().unwrap(), "hello from stdin\nsecond line\n");
}

#[test]
fn onedir_io_and_exit_code() {
    io_pass_through("pyapp");
}

#[test]
fn onefile_io_and_exit_code() {
    io_pass_through("pyapp-onefile");
}

#[test]
fn onedir_keeps_pid() {
    let sb = Sandbox::new();
    let mut cmd = sb.component("pyapp");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let report = parse_report(&child.wait_with_output().unwrap());
    assert_eq!(report["pid"], pid, "onedir app must run in the launcher's process");
}

/// A file deleted deep in the onedir tree is reported by `stigmer verify`, and the next start
/// puts it back.
#[test]
fn onedir_entry_with_deleted_file_is_found_by_verify_and_repaired() {
    if !is_root() {
        eprintln!("skipped: deleting a file of the read-only tree without a chmod needs root");
        return;
    }
    let sb = Sandbox::new();
    let out = run(sb.component("pyapp"));
    parse_report(&out);
    let info = component_info(&sb, "pyapp");
    let root = sb.cache().join(&info.sha256).join("pyapp");
    let internal = root.join("_internal");
    let victim = if internal.join("base_library.zip").exists() {
        internal.join("base_library.zip")
    } else {
        walk(&internal).into_iter().find(|p| p.is_file()).expect("a file under _internal")
    };
    let original = sha256_file(&victim);
    // Possible without a chmod only where the modes do not bind (root, as in CI): a start does
    // not look that deep (docs/DESIGN.md, "What a start checks"); `stigmer verify` finds it and
    // the next start refills.
    fs::remove_file(&victim).unwrap();
    let mut verify = sb.stigmer();
    verify.arg("verify");
    let out = run(verify);
    assert_ne!(out.status.code(), Some(0), "verify missed the deleted file: {}", describe(&out));
    assert!(stdout(&out).contains(victim.file_name().unwrap().to_str().unwrap()), "{}", describe(&out));
    let out = run(sb.component("pyapp"));
    check_report(&parse_report(&out), &sb.arg0("pyapp"), &[]);
    assert!(victim.exists(), "deleted file was not restored");
    assert_eq!(sha256_file(&victim), original);
    assert_no_temp_items(&sb.cache());
}

#[test]
fn onedir_concurrent_first_runs_fill_once() {
    let sb = Sandbox::new();
    let children: Vec<_> = (0..6)
        .map(|i| {
            let mut cmd = sb.component("pyapp");
            cmd.arg(i.to_string()).stdout(Stdio::piped()).stderr(Stdio::piped());
            (i, cmd.spawn().unwrap())
        })
        .collect();
    for (i, child) in children {
        let out = child.wait_with_output().unwrap();
        check_report(&parse_report(&out), &sb.arg0("pyapp"), &[&i.to_string()]);
        assert!(out.stderr.is_empty(), "run {i}: {}", describe(&out));
    }
    let info = component_info(&sb, "pyapp");
    assert_eq!(sb.cache_entries(), std::slice::from_ref(&info.sha256));
    assert_no_temp_items(&sb.cache());
}
