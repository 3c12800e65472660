//! A component runs as if executed directly: argv, environment, cwd, stdio,
//! exit code, terminating signal and PID all pass through the launcher.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use crate::util::*;

/// The ELF probes, one per runner/build flavour.
const PROBES: &[&str] = &["probe", "probe-static", "probe-cached", "probe-zstd"];

fn env_cwd_stdin(name: &str) {
    let sb = Sandbox::new();
    let cwd = tempdir();
    let mut cmd = sb.component(name);
    cmd.current_dir(cwd.path())
        .env("PROBE_ENV", "FOO,EMPTY,NOT_SET,STIGMER_HOME")
        .env("PROBE_STDIN", "1")
        .env("FOO", "bar baz=qux")
        .env("EMPTY", "")
        .env_remove("NOT_SET")
        .args(["one", "two words"]);
    let input: Vec<u8> = b"line one\n\x00\x01binary\xff\nlast line without newline".to_vec();
    let out = run_with_input(cmd, &input);
    let p = Probe::from_success(&out);
    assert_eq!(p.argv, [&sb.arg0(name), "one", "two words"]);
    assert_eq!(p.cwd, canon(cwd.path()).to_str().unwrap());
    assert_eq!(p.env["FOO"], "bar baz=qux");
    assert_eq!(p.env["EMPTY"], "");
    assert_eq!(p.env["NOT_SET"], "(unset)");
    assert_eq!(p.env["STIGMER_HOME"], sb.home().to_str().unwrap());
    let tail = &out.stdout[out.stdout.len() - input.len()..];
    assert_eq!(tail, &input[..], "stdin must be copied verbatim");
    assert!(out.stderr.is_empty(), "{}", describe(&out));
}

#[test]
fn env_cwd_stdin_memfd_dynamic() {
    env_cwd_stdin("probe");
}

#[test]
fn env_cwd_stdin_memfd_static() {
    env_cwd_stdin("probe-static");
}

#[test]
fn env_cwd_stdin_cache() {
    env_cwd_stdin("probe-cached");
}

#[test]
fn env_cwd_stdin_zstd() {
    env_cwd_stdin("probe-zstd");
}

/// The caller's signal state reaches the component as a direct exec passes it: stigmer ignores
/// SIGPIPE for its own writes and puts back what it found, and blocks nothing. Compared with
/// the probe run directly by the same parent, whose state is the default one, or SIGPIPE
/// ignored and SIGUSR1 blocked.
#[test]
fn signal_state_passes_through() {
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    let sig_lines = |mut cmd: Command, changed: bool| {
        cmd.env("PROBE_SIGSTATE", "1");
        if changed {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::signal(libc::SIGPIPE, libc::SIG_IGN);
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGUSR1);
                    libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                    Ok(())
                });
            }
        }
        let p = Probe::from_success(&run(cmd));
        let lines: Vec<String> = p.rest.lines().filter(|l| l.starts_with("Sig")).map(str::to_owned).collect();
        assert_eq!(lines.len(), 2, "{}", p.rest);
        lines
    };
    for changed in [false, true] {
        let direct = sig_lines(Command::new(fixtures_dir().join("probe")), changed);
        let ignored = direct.iter().find_map(|l| l.strip_prefix("SigIgn:")).expect("SigIgn line");
        let pipe_ignored =
            u64::from_str_radix(ignored.trim(), 16).expect("SigIgn mask") & (1 << (libc::SIGPIPE - 1)) != 0;
        assert_eq!(pipe_ignored, changed, "the parent's own set-up: {direct:?}");
        for name in PROBES {
            assert_eq!(sig_lines(sb.component(name), changed), direct, "{name}, parent state changed: {changed}");
        }
    }
}

#[test]
fn exit_codes_pass_through() {
    let sb = Sandbox::new();
    for name in PROBES {
        for code in [0, 3, 42, 255] {
            let mut cmd = sb.component(name);
            cmd.env("PROBE_EXIT", code.to_string());
            let out = run(cmd);
            assert_code(&out, code);
            assert!(out.stderr.is_empty(), "{}", describe(&out));
        }
    }
}

#[test]
fn signals_pass_through() {
    let sb = Sandbox::new();
    for name in PROBES {
        for sig in [9, 15] {
            let mut cmd = sb.component(name);
            cmd.env("PROBE_SIGNAL", sig.to_string());
            let out = run(cmd);
            assert_eq!(out.status.signal(), Some(sig), "{name}: expected death by signal {sig}\n{}", describe(&out));
            assert!(!out.status.core_dumped());
            // The report was flushed before the signal.
            Probe::parse(&stdout(&out));
        }
    }
}

fn keeps_pid(name: &str) {
    let sb = Sandbox::new();
    let mut cmd = sb.component(name);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let p = Probe::from_success(&out);
    assert_eq!(p.pid, pid, "{name} must run in the launcher's process (exec in place)");
}

#[test]
fn launcher_keeps_pid_memfd() {
    keeps_pid("probe");
}

#[test]
fn launcher_keeps_pid_cache() {
    keeps_pid("probe-cached");
}

#[test]
fn exec_applet_keeps_pid() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.args(["exec", "probe-static"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let p = Probe::from_success(&child.wait_with_output().unwrap());
    assert_eq!(p.pid, pid);
}

#[test]
fn script_component_runs_via_memfd() {
    let sb = Sandbox::new();
    let mut cmd = sb.component("hello-script");
    cmd.args(["a", "b c"]).env("SCRIPT_EXIT", "7");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 7);
    let text = stdout(&out);
    assert!(text.contains("script args: a b c\n"), "{}", describe(&out));
    assert!(text.contains(&format!("pid={pid}\n")), "{}", describe(&out));
    assert!(out.stderr.is_empty(), "{}", describe(&out));
    crate::runners::assert_home_untouched(&sb);
}

#[test]
fn script_component_exit_zero() {
    let sb = Sandbox::new();
    let out = run(sb.component("hello-script"));
    assert_code(&out, 0);
    assert!(stdout(&out).starts_with("script args: \n"), "{}", describe(&out));
}

/// A big single-file ELF (50 MiB) runs from the cache under the auto policy, and from a memfd
/// wherever the user asks for one: STIGMER_RUNNER, a service's runner, `[runner] default`.
#[test]
fn big_component_runs_from_the_cache_unless_memfd_is_asked_for() {
    let sb = Sandbox::new();
    let big = |env: &[(&str, &str)]| {
        let mut cmd = sb.component("big-probe");
        cmd.arg("big").envs(env.iter().copied());
        let p = Probe::from_success(&run(cmd));
        assert_eq!(p.argv, [&sb.arg0("big-probe"), "big"]);
        p.exe
    };
    let auto = big(&[]);
    let cached = canon(&cached_entry_point(&sb, &component_info(&sb, "big-probe")));
    assert_eq!(auto, cached.to_str().unwrap(), "auto");
    assert_eq!(big(&[("STIGMER_RUNNER", "memfd")]), memfd_exe("big-probe"));
    assert_eq!(big(&[("STIGMER_SERVICE_RUNNER", "memfd")]), memfd_exe("big-probe"));
    fs::write(sb.home().join("config.toml"), "[runner]\ndefault = \"memfd\"\n").unwrap();
    assert_eq!(big(&[]), memfd_exe("big-probe"), "[runner] default = \"memfd\"");
}

#[test]
fn exec_path_is_silent_by_default() {
    let sb = Sandbox::new();
    for name in ["probe", "probe-cached"] {
        // Twice: first (cache fill) and warm runs must both be silent.
        for _ in 0..2 {
            let out = run(sb.component(name));
            assert_code(&out, 0);
            assert!(out.stderr.is_empty(), "{name}: {}", describe(&out));
        }
    }
}

#[test]
fn debug_log_names_the_runner() {
    let sb = Sandbox::new();
    for (name, runner) in [("probe", "memfd"), ("probe-cached", "cache")] {
        let mut cmd = sb.component(name);
        cmd.env("STIGMER_LOG", "debug");
        let out = run(cmd);
        assert_code(&out, 0);
        let err = stderr(&out);
        assert!(err.contains(runner), "{name}: debug log should name {runner}\n{err}");
        Probe::parse(&stdout(&out));
    }
}

#[test]
fn stdout_redirected_to_a_file() {
    // The component inherits our stdout as is: a regular file works too.
    let sb = Sandbox::new();
    let dir = tempdir();
    let file = dir.path().join("out");
    let mut cmd: Command = sb.component("probe");
    cmd.stdout(std::fs::File::create(&file).unwrap());
    let status = cmd.status().unwrap();
    assert!(status.success());
    let p = Probe::parse(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(p.argv, [sb.arg0("probe")]);
}
