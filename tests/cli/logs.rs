//! `stigmer server logs` and the files behind it: small shell services under the real
//! supervisor (the reference services disabled unless a test needs them), their output read
//! back stamped, merged, filtered, rotated, recreated and followed.

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

/// The reference services switched off: each test declares its own.
const NO_REFERENCE: &str = r#"
[services.stigmer-server]
enabled = false
[services.workflow-runner]
enabled = false
[services.agent-runner]
enabled = false
"#;

/// A server whose config is NO_REFERENCE followed by `services`.
fn server(services: &str) -> Server {
    let srv = Server::bare(free_port());
    srv.write_config(&format!("{NO_REFERENCE}\n{services}"));
    srv
}

/// A shell service: `[services.NAME]` running `sh -c SCRIPT`, ready once started, plus `extra`.
fn sh(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[services.{name}]\ncommand = \"/bin/sh\"\nargs = [\"-c\", {}]\nready = {{ started_ms = 0 }}\n{extra}\n",
        toml_string(script)
    )
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// `stigmer server logs ARGS` as text, asserting success.
#[track_caller]
fn logs(srv: &Server, args: &[&str]) -> String {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let out = srv.server(&all);
    assert_code(&out, 0);
    stdout(&out)
}

/// `logs --json ARGS`, parsed.
#[track_caller]
fn json(srv: &Server, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    logs(srv, &all).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

/// Polls `logs --json ARGS` until `done` holds.
#[track_caller]
fn wait_logs(srv: &Server, args: &[&str], what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    wait_for(Duration::from_secs(20), what, || Some(json(srv, args)).filter(|v| done(v)))
}

fn texts(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| r["text"].as_str().unwrap().to_owned()).collect()
}

fn has(records: &[Value], stream: &str, text: &str) -> bool {
    records.iter().any(|r| r["stream"] == stream && r["text"].as_str().is_some_and(|t| t.contains(text)))
}

/// `2026-11-25T21:54:48.123Z`: the supervisor's stamp.
#[track_caller]
fn assert_stamp(time: &str) {
    let b = time.as_bytes();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    assert!(
        b.len() == 24 && digits.iter().all(|&i| b[i].is_ascii_digit()) && time.ends_with('Z') && b[10] == b'T',
        "not a UTC RFC 3339 ms stamp: {time:?}"
    );
}

#[test]
fn both_streams_are_stamped_and_shown_by_default() {
    let srv = server(&sh("talker", "echo to-stdout; echo to-stderr >&2; exec sleep 300", ""));
    srv.start();
    let text = wait_for(Duration::from_secs(20), "both lines", || {
        Some(logs(&srv, &[])).filter(|t| t.contains("to-stdout") && t.contains("to-stderr"))
    });
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines {
        assert_stamp(&l[..24]);
    }
    assert!(lines.iter().any(|l| l[25..] == *"talker | to-stdout"), "{text}");
    assert!(lines.iter().any(|l| l[25..] == *"talker ! to-stderr"), "stderr marked with !\n{text}");
    assert!(lines.iter().any(|l| l[25..].starts_with("talker * started (pid ")), "the start event\n{text}");
    assert!(!text.contains('\x1b'), "no colors when stdout is not a terminal\n{text}");
    // The file itself: one per service, both streams in it, stamped.
    let file = fs::read_to_string(srv.home().join("logs/talker.log")).unwrap();
    assert!(file.lines().any(|l| l.ends_with(" out| to-stdout")), "{file}");
    assert!(file.lines().any(|l| l.ends_with(" err| to-stderr")), "{file}");
    assert!(!srv.home().join("logs/talker.err.log").exists());
}

#[test]
fn the_reference_platform_logs_its_stderr() {
    let srv = Server::new("");
    srv.start();
    for kind in ["workflow", "agent"] {
        let id = srv.submit(kind, "log me");
        srv.wait_done(&id);
    }
    let services = ["stigmer-server", "workflow-runner", "agent-runner"];
    let records = wait_logs(&srv, &[], "stderr lines of every service", |r| {
        services.iter().all(|&n| r.iter().any(|r| r["service"] == n && r["stream"] == "stderr"))
    });
    for name in services {
        assert!(
            records.iter().any(|r| r["service"] == name && r["stream"] == "stderr"),
            "no stderr lines of {name} in {records:#?}"
        );
        assert!(records.iter().any(|r| r["service"] == name && r["stream"] == "event"), "{name} has events");
    }
}

#[test]
fn services_are_merged_by_time() {
    let srv = server(&format!(
        "{}{}",
        sh("a", "for i in 1 2 3 4 5; do echo a$i; sleep 0.2; done; exec sleep 300", ""),
        sh("b", "sleep 0.1; for i in 1 2 3 4 5; do echo b$i; sleep 0.2; done; exec sleep 300", "")
    ));
    srv.start();
    let records = wait_logs(&srv, &["--stdout"], "ten lines", |r| r.len() == 10);
    let times: Vec<&str> = records.iter().map(|r| r["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "ordered by time: {times:?}");
    let order = texts(&records);
    for s in ["a", "b"] {
        let own: Vec<&String> = order.iter().filter(|t| t.starts_with(s)).collect();
        assert_eq!(own, (1..=5).map(|i| format!("{s}{i}")).collect::<Vec<_>>().iter().collect::<Vec<_>>());
    }
    let first_b = order.iter().position(|t| t == "b1").unwrap();
    let last_a = order.iter().position(|t| t == "a5").unwrap();
    assert!(first_b < last_a, "interleaved, not one service after the other: {order:?}");
    // -c picks services (repeatable).
    let only_b = json(&srv, &["-c", "b", "--stdout"]);
    assert_eq!(texts(&only_b), (1..=5).map(|i| format!("b{i}")).collect::<Vec<_>>());
    assert_eq!(json(&srv, &["-c", "a", "-c", "b", "--stdout"]).len(), 10);
    let bad = srv.server(&["logs", "-c", "nope"]);
    assert_code(&bad, 1);
    assert!(stderr(&bad).contains("no service named 'nope'"), "{}", describe(&bad));
}

#[test]
fn stream_filters_tail_and_since() {
    let srv = server(&sh("s", "echo o1; echo e1 >&2; sleep 1.5; echo o2; echo e2 >&2; exec sleep 300", ""));
    srv.start();
    let all = wait_logs(&srv, &[], "o2 and e2", |r| has(r, "stdout", "o2") && has(r, "stderr", "e2"));
    assert_eq!(texts(&json(&srv, &["--stdout"])), ["o1", "o2"]);
    assert_eq!(texts(&json(&srv, &["--stderr"])), ["e1", "e2"]);
    let streams: Vec<Value> = json(&srv, &[]).iter().map(|r| r["stream"].clone()).collect();
    assert!(streams.contains(&"event".into()), "events shown by default: {streams:?}");
    // -n: the last N overall.
    let last3 = json(&srv, &["-n", "3"]);
    assert_eq!(last3, all[all.len() - 3..].to_vec());
    assert!(json(&srv, &["-n", "0"]).is_empty());
    // --since: a time (the stamp of o2 excludes o1, 1.5 s older) and a duration.
    let o2 = all.iter().find(|r| r["text"] == "o2").unwrap();
    let since = o2["time"].as_str().unwrap();
    assert_eq!(texts(&json(&srv, &["--stdout", "--since", since])), ["o2"]);
    assert_eq!(texts(&json(&srv, &["--stdout", "--since", "1h"])), ["o1", "o2"]);
    let bad = srv.server(&["logs", "--since", "yesterday"]);
    assert_code(&bad, 1);
    assert!(stderr(&bad).contains("--since"), "{}", describe(&bad));
}

#[test]
fn partial_long_and_non_utf8_lines_are_kept() {
    // Octal escapes: dash's printf has no \x.
    let script = r"printf 'caf\303\251\n\377\376 raw\n'; head -c 200000 /dev/zero | tr '\0' x; echo; printf 'prompt: '; sleep 1; echo answer; printf 'no newline at exit'";
    let srv = server(&sh("bytes", script, "restart = \"never\""));
    srv.start();
    let records = wait_logs(&srv, &["--stdout"], "the last line", |r| has(r, "stdout", "no newline at exit"));
    let text = texts(&records);
    assert_eq!(text[0], "café");
    assert!(records[0].get("text_base64").is_none(), "{:#}", records[0]);
    assert_eq!(records[1]["text_base64"], "//4gcmF3", "the exact bytes \\377\\376 raw: {:#}", records[1]);
    assert_eq!(text[2], "x".repeat(200_000), "a 200 KB line comes back whole");
    assert_eq!(text[3], "prompt: answer", "a line flushed while idle is joined again");
    assert_eq!((text[4].as_str(), &records[4]["partial"]), ("no newline at exit", &Value::Bool(true)));
    assert_eq!(records.len(), 5, "{text:?}");
    // The file shows the idle flush as a fragment, and keeps the raw bytes.
    let file = fs::read(srv.home().join("logs/bytes.log")).unwrap();
    assert!(file.windows(14).any(|w| w == b"out+ prompt: \n"), "{}", String::from_utf8_lossy(&file));
    assert!(file.windows(7).any(|w| w == b"\xff\xfe raw\n"));
    let human = srv.server(&["logs", "--stdout"]);
    assert!(human.stdout.windows(15).any(|w| w == b"bytes | \xff\xfe raw\n"), "raw bytes printed as they are");
}

#[test]
fn rotation_keeps_every_line() {
    let srv =
        server(&format!("[logs]\nmax_size = 20000\nkeep = 1000\n{}", sh("counter", "seq 1 20000; exec sleep 300", "")));
    srv.start();
    let records = wait_logs(&srv, &["--stdout", "-c", "counter"], "20000 lines", |r| r.len() >= 20000);
    let numbers: Vec<String> = texts(&records);
    assert_eq!(numbers, (1..=20000).map(|i| i.to_string()).collect::<Vec<_>>(), "every line, in order");
    let rotated = fs::read_dir(srv.home().join("logs"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("counter.log."))
        .count();
    assert!(rotated >= 5, "rotated {rotated} times");
    let file = srv.home().join("logs/counter.log.1");
    assert!(fs::metadata(&file).unwrap().len() <= 20000, "rotated at a line boundary before max_size");
}

#[test]
fn a_deleted_or_moved_log_is_recreated() {
    let srv = server(&sh("ticker", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.05; done", ""));
    srv.start();
    let path = srv.home().join("logs/ticker.log");
    let ticks = |what: &str| {
        wait_for(Duration::from_secs(20), what, || {
            fs::read_to_string(&path).ok().filter(|t| t.contains(" out| tick ")).map(|_| ())
        });
    };
    ticks("ticks in the log");
    fs::remove_file(&path).unwrap();
    ticks("ticks in a recreated log");
    fs::rename(&path, srv.home().join("ticker.moved")).unwrap();
    ticks("ticks in a log recreated after a move");
    let moved = fs::read_to_string(srv.home().join("ticker.moved")).unwrap();
    let now = fs::read_to_string(&path).unwrap();
    let last = |t: &str| t.lines().filter_map(|l| l.split("tick ").nth(1)?.parse::<u64>().ok()).max().unwrap();
    let first = now.lines().find_map(|l| l.split("tick ").nth(1)?.parse::<u64>().ok()).unwrap();
    assert!(first > last(&moved), "later lines land in the new file");
}

#[test]
fn events_name_exits_signals_restarts_and_give_ups() {
    let srv = server(&format!(
        "[supervisor]\nrestart_limit = 3\nbackoff_max_ms = 200\n{}{}",
        sh("crashy", "echo crashing; exit 3", ""),
        sh("victim", "exec sleep 300", "")
    ));
    srv.start();
    let crashy = wait_logs(&srv, &["-c", "crashy"], "crashy gives up", |r| has(r, "event", "gave up"));
    let events: Vec<String> = crashy.iter().filter(|r| r["stream"] == "event").map(|r| r["text"].to_string()).collect();
    let count = |what: &str| events.iter().filter(|e| e.contains(what)).count();
    assert_eq!(count("started (pid "), 3, "{events:#?}");
    assert_eq!(count("exited with code 3"), 3, "{events:#?}");
    assert_eq!(count("restarting in "), 2, "{events:#?}");
    assert_eq!(count("gave up after 3 failures"), 1, "{events:#?}");
    assert_eq!(crashy.iter().filter(|r| r["text"] == "crashing").count(), 3);

    let pid = srv.service_pid("victim");
    signal(pid, libc::SIGKILL);
    let victim = wait_logs(&srv, &["-c", "victim"], "victim restarted", |r| {
        r.iter().filter(|r| r["text"].as_str().is_some_and(|t| t.starts_with("started (pid"))).count() == 2
    });
    assert!(has(&victim, "event", "restarting in"), "{victim:#?}");
    assert!(has(&victim, "event", "killed by SIGKILL"), "{victim:#?}");
    srv.stop();
    assert!(has(&json(&srv, &["-c", "victim"]), "event", "stopped"));
    let human = logs(&srv, &["-c", "victim"]);
    assert!(human.lines().any(|l| l[25..] == *"victim * killed by SIGKILL"), "{human}");
}

#[test]
fn follow_crosses_rotations_and_restarts() {
    let srv = server(&format!(
        "[logs]\nmax_size = 3000\nkeep = 100\n{}",
        sh("ticker", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.02; done", "")
    ));
    srv.start();
    let mut cmd = srv.stigmer(&["server", "logs", "-f", "-n", "0", "--json"]);
    cmd.stdout(Stdio::piped());
    let mut follow = ChildGuard(cmd.spawn().unwrap());
    let seen = Arc::new(Mutex::new(Vec::<Value>::new()));
    {
        let seen = seen.clone();
        let pipe = follow.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                seen.lock().unwrap().push(serde_json::from_str(&line).unwrap());
            }
        });
    }
    let rotated = |n: usize| {
        let logs = srv.home().join("logs");
        wait_for(Duration::from_secs(30), &format!("{n} rotations"), || {
            fs::metadata(logs.join(format!("ticker.log.{n}"))).ok().map(|_| ())
        });
    };
    rotated(3);
    // A service restart (killed, restarted by the supervisor), then a supervisor restart.
    let pid = srv.service_pid("ticker");
    signal(pid, libc::SIGKILL);
    let starts = |seen: &[Value]| {
        seen.iter().filter(|r| r["text"].as_str().is_some_and(|t| t.starts_with("started (pid"))).count()
    };
    wait_for(Duration::from_secs(20), "the restart followed", || (starts(&seen.lock().unwrap()) == 1).then_some(()));
    let out = srv.server(&["restart"]);
    assert_code(&out, 0);
    wait_for(Duration::from_secs(30), "ticks after the supervisor restart", || {
        let seen = seen.lock().unwrap();
        let after =
            seen.iter().rev().take_while(|r| r["text"].as_str().is_none_or(|t| !t.starts_with("started"))).count();
        (starts(&seen) == 2 && after > 150).then_some(())
    });
    let seen = seen.lock().unwrap().clone();
    // Every tick in order: each process counts up from 1 without a gap, whatever rotated.
    let mut prev = None;
    let mut resets = 0;
    for r in seen.iter().filter(|r| r["service"] == "ticker" && r["stream"] == "stdout") {
        let n: u64 = r["text"].as_str().unwrap().strip_prefix("tick ").unwrap().parse().unwrap();
        match prev {
            Some(p) if n == p + 1 => {}
            Some(_) if n == 1 => resets += 1,
            None => {}
            Some(p) => panic!("tick {n} after tick {p}: a line was lost or repeated"),
        }
        prev = Some(n);
    }
    assert!(resets >= 2, "the kill and the supervisor restart each start counting again: {resets}");
    assert!(fs::metadata(srv.home().join("logs/ticker.log.4")).is_ok(), "more rotations while following");
}

#[test]
fn foreground_prints_the_merged_format() {
    let srv = server(&sh("talker", "echo hello; echo oops >&2; exec sleep 300", ""));
    let mut cmd = srv.stigmer(&["server", "--foreground"]);
    cmd.stdout(Stdio::piped()).env("STIGMER_LOG", "info");
    let mut fg = ChildGuard(cmd.spawn().unwrap());
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let lines = lines.clone();
        let pipe = fg.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
    }
    // Ready too: a SIGTERM before every service is ready is a start that failed (exit 1).
    let want = ["talker | hello", "talker ! oops", "talker * started (pid ", "talker * ready after "];
    let seen = wait_for(Duration::from_secs(20), "the service's lines on stdout", || {
        let lines = lines.lock().unwrap();
        want.iter().all(|w| lines.iter().any(|l| l.get(25..).is_some_and(|l| l.starts_with(w)))).then(|| lines.clone())
    });
    for l in &seen {
        assert_stamp(&l[..24]);
    }
    // The supervisor's own diagnostics (STIGMER_LOG=info) are lines of `supervisor`.
    assert!(seen.iter().any(|l| l.get(25..).is_some_and(|l| l.starts_with("supervisor ! "))), "{seen:#?}");
    signal(fg.0.id() as i32, libc::SIGTERM);
    let status = fg.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let file = fs::read_to_string(srv.home().join("logs/supervisor.log")).unwrap();
    assert!(file.lines().all(|l| l.get(24..30) == Some(" err| ")), "supervisor.log is stamped:\n{file}");
}
