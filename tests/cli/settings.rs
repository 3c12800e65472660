//! Settings given wrongly (issue 20, item 10): each is one line naming the setting, said at
//! once, and nothing starts. A value that is not UTF-8 is not taken for one that is unset; a
//! port 0 is not waited for; a time too long to wait is not waited for; a nesting count that
//! is not a count does not start again from 0.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use crate::util::*;

fn not_utf8() -> OsString {
    OsString::from_vec(b"72\xff4".to_vec())
}

#[test]
fn a_port_that_is_not_a_port_is_refused_at_once() {
    let srv = Server::new("");
    for value in [not_utf8(), "0".into()] {
        let mut cmd = srv.stigmer(&["server"]);
        cmd.env("STIGMER_SERVER_PORT", &value);
        let out = run(cmd);
        assert_code(&out, 1);
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{}", describe(&out));
        assert!(err.contains("STIGMER_SERVER_PORT"), "{value:?}: {}", describe(&out));
        assert!(srv.home_procs().is_empty(), "{}", describe_procs(&srv.home_procs()));
    }
    srv.write_config("[services.stigmer-server]\nport = 0\n");
    let out = srv.server(&[]);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("port = 0") && err.contains(srv.config_path().to_str().unwrap()), "{}", describe(&out));
    assert!(srv.home_procs().is_empty(), "{}", describe_procs(&srv.home_procs()));
}

#[test]
fn a_runner_that_is_not_utf8_is_refused() {
    let sb = Sandbox::new();
    for args in [&["exec", "probe"][..], &["exec", "probe-cached"]] {
        let mut cmd = sb.stigmer();
        cmd.env("STIGMER_RUNNER", not_utf8()).args(args);
        let err = assert_launcher_error(&run(cmd), 125);
        assert!(err.contains("STIGMER_RUNNER") && err.contains("UTF-8"), "{args:?}: {err}");
    }
    assert!(sb.cache_entries().is_empty(), "nothing started");
}

#[test]
fn a_recursion_count_that_is_not_a_count_is_refused_not_reset() {
    let sb = Sandbox::new();
    for value in ["4294967296", "99999999999999999999999", "-1", "x"] {
        let mut cmd = sb.stigmer();
        cmd.env("STIGMER_RECURSION_COUNT", value).args(["exec", "probe"]);
        let err = assert_launcher_error(&run(cmd), 125);
        assert!(err.contains("STIGMER_RECURSION_COUNT") && err.contains(value), "{value}: {err}");
    }
    let mut cmd = sb.stigmer();
    cmd.env("STIGMER_RECURSION_COUNT", not_utf8()).args(["exec", "probe"]);
    let err = assert_launcher_error(&run(cmd), 125);
    assert!(err.contains("STIGMER_RECURSION_COUNT"), "{err}");
    // Within range: counted, and the limit holds.
    let mut cmd = sb.stigmer();
    cmd.env("STIGMER_RECURSION_COUNT", "4000000000").args(["exec", "probe"]);
    let err = assert_launcher_error(&run(cmd), 126);
    assert!(err.contains("recursion limit"), "{err}");
}

#[test]
fn times_too_long_to_wait_are_refused() {
    let srv = Server::new("");
    let huge = u64::MAX;
    for (table, key, line) in [
        ("services.show", "stop_timeout_ms", format!("stop_timeout_ms = {huge}")),
        ("services.show", "ready_timeout_ms", format!("ready_timeout_ms = {huge}")),
        ("services.show", "ready.started_ms", format!("ready = {{ started_ms = {huge} }}")),
        ("services.show", "watchdog_ms", format!("ready = {{ notify = true }}\nwatchdog_ms = {huge}")),
        ("services.show", "health.interval_ms", format!("health = {{ exec = ['true'], interval_ms = {huge} }}")),
        ("services.show", "health.timeout_ms", format!("health = {{ exec = ['true'], timeout_ms = {huge} }}")),
        ("supervisor", "restart_window_ms", format!("restart_window_ms = {huge}")),
        ("supervisor", "backoff_max_ms", format!("backoff_max_ms = {huge}")),
    ] {
        let show = if table == "supervisor" { String::new() } else { line.clone() };
        let supervisor = if table == "supervisor" { line.clone() } else { String::new() };
        srv.write_config(&format!(
            "[services.stigmer-server]\nport = {}\n\n[services.show]\ncommand = \"sleep\"\nargs = [\"300\"]\n{show}\n\n[supervisor]\n{supervisor}\n",
            srv.port
        ));
        let out = srv.server(&[]);
        assert_code(&out, 1);
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{}", describe(&out));
        assert!(err.contains(key) && err.contains(&huge.to_string()), "{key}: {}", describe(&out));
        assert!(err.contains(srv.config_path().to_str().unwrap()), "{key}: {}", describe(&out));
        assert!(srv.home_procs().is_empty(), "{key}: {}", describe_procs(&srv.home_procs()));
    }
    // A day is still a time.
    srv.write_config(&format!(
        "[services.stigmer-server]\nport = {}\n\n[services.show]\ncommand = \"sleep\"\nargs = [\"300\"]\nstop_timeout_ms = 86400000\n",
        srv.port
    ));
    srv.start();
    srv.stop();
}
