//! Dispatch: argv[0] (symlink, hard link, STIGMER_FORCE_ARG0), `exec`, the
//! CLI name, unknown names and the recursion guard. The basename of argv[0]
//! selects the component, which gets argv[0] exactly as the caller passed it.

use std::fs;
use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn symlink_passes_argv0_through_as_given() {
    let sb = Sandbox::new();
    let mut cmd = sb.component("probe");
    cmd.args(["--", "-h", "", "a b", "--version", "ünïcode"]);
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.argv, [&sb.arg0("probe"), "--", "-h", "", "a b", "--version", "ünïcode"]);
}

#[test]
fn symlink_with_no_args() {
    let sb = Sandbox::new();
    let p = Probe::from_success(&run(sb.component("probe")));
    assert_eq!(p.argv, [sb.arg0("probe")]);
}

#[test]
fn argv0_relative_or_bare_is_kept_as_is() {
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    sb.link("probe");
    // Relative to the cwd, and a bare name (a shell found it in PATH): both reach the program
    // unchanged, so it can run itself again the way it was run.
    for arg0 in ["./probe", "probe", "./../links/../links/probe"] {
        let mut cmd = sb.component("probe");
        cmd.current_dir(sb.links.path()).arg0(arg0);
        let p = Probe::from_success(&run(cmd));
        assert_eq!(p.argv, [arg0], "argv[0] {arg0}");
    }
    let mut cmd = sb.component("probe");
    cmd.arg0("/no/such/dir/probe").arg("x");
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.argv, ["/no/such/dir/probe", "x"], "only the basename selects the component");
}

#[test]
fn hardlink_dispatches_like_symlink() {
    let sb = Sandbox::new();
    let link = sb.links.path().join("probe");
    fs::hard_link(stigmer_bin(), &link).expect("hard link the binary (same filesystem)");
    let mut cmd = std::process::Command::new(&link);
    sb.configure(&mut cmd);
    cmd.arg("x");
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.argv, [link.to_str().unwrap(), "x"]);
    assert_eq!(p.exe, memfd_exe("probe"));
}

#[test]
fn exec_applet_runs_component() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.args(["exec", "probe", "hello", "world"]);
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.argv, ["probe", "hello", "world"]);
}

#[test]
fn exec_applet_double_dash_passes_flags_through() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.args(["exec", "probe", "--", "--version", "-x", "--", ""]);
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.argv, ["probe", "--version", "-x", "--", ""]);
}

#[test]
fn exec_unknown_component_is_127() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.args(["exec", "nosuch"]);
    let err = assert_launcher_error(&run(cmd), 127);
    assert!(err.contains("nosuch"), "{err}");
}

/// A forced name stands for the component: argv[0] is that name, not the path used.
#[test]
fn force_arg0_selects_component() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.env("STIGMER_FORCE_ARG0", "probe").args(["--list", "x"]);
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.argv, ["probe", "--list", "x"]);
}

#[test]
fn force_arg0_stigmer_selects_cli_even_through_component_link() {
    let sb = Sandbox::new();
    let mut cmd = sb.component("probe");
    cmd.env("STIGMER_FORCE_ARG0", "stigmer").arg("--list");
    let out = run(cmd);
    assert_code(&out, 0);
    assert_eq!(stdout(&out).lines().collect::<Vec<_>>(), ALL_COMPONENTS);
}

#[test]
fn stigmer_named_link_is_the_cli() {
    let sb = Sandbox::new();
    let mut cmd = sb.component("stigmer");
    cmd.arg("--list");
    let out = run(cmd);
    assert_code(&out, 0);
    assert_eq!(stdout(&out).lines().collect::<Vec<_>>(), ALL_COMPONENTS);
}

#[test]
fn unknown_name_is_127_and_lists_known_names() {
    let sb = Sandbox::new();
    let out = run(sb.component("nosuch"));
    let err = assert_launcher_error(&out, 127);
    assert!(err.contains("unknown component 'nosuch'"), "{err}");
    for name in ["probe", "pyapp", "hello-script"] {
        assert!(err.contains(name), "known name {name} not listed: {err}");
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn unknown_force_arg0_is_127() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.env("STIGMER_FORCE_ARG0", "definitely-not");
    let err = assert_launcher_error(&run(cmd), 127);
    assert!(err.contains("unknown component 'definitely-not'"), "{err}");
}

#[test]
fn recursion_guard_stops_a_component_that_runs_itself_via_path() {
    let sb = Sandbox::new();
    let link = sb.link("loop-script");
    let path = format!("{}:{}", sb.links.path().display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = std::process::Command::new(&link);
    sb.configure(&mut cmd);
    cmd.env("PATH", path);
    let started = Instant::now();
    let mut cmd = assert_cmd::Command::from_std(cmd);
    cmd.timeout(Duration::from_secs(20));
    let out = cmd.output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(15), "recursion guard took {:?}", started.elapsed());
    let err = assert_launcher_error(&out, 126);
    assert!(err.to_lowercase().contains("recursion"), "{err}");
}

/// `stigmer NAME ARGS...` is `stigmer exec NAME ARGS...`: argv[0] = NAME, flags go to the component.
#[test]
fn component_name_as_subcommand_runs_it_like_exec() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.args(["probe", "--version", "-x", "--", "", "--help"]);
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.argv, ["probe", "--version", "-x", "--", "", "--help"]);
    assert_eq!(p.exe, memfd_exe("probe"));
    let mut cmd = sb.stigmer();
    cmd.args(["exec", "probe", "--version", "-x", "--", "", "--help"]);
    assert_eq!(Probe::from_success(&run(cmd)).argv, p.argv, "same as exec");
}

/// An applet name is never taken for a component, and its own flags still reach it.
#[test]
fn applet_name_wins_over_component_subcommand() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.args(["components", "--json"]);
    let out = run(cmd);
    assert_code(&out, 0);
    assert!(stdout(&out).trim_start().starts_with('['), "{}", describe(&out));
}

/// A name that is neither: clap's usage error (exit 2), naming it, the applets and the components.
#[test]
fn unknown_subcommand_lists_applets_and_components() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.args(["nosuch", "x"]);
    let out = run(cmd);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("unrecognized subcommand 'nosuch'"), "{}", describe(&out));
    for name in ["exec", "server", "probe", "agent-runner"] {
        assert!(err.contains(name), "{name} not listed: {}", describe(&out));
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn help_lists_components_after_applets() {
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.arg("--help");
    let out = run(cmd);
    assert_code(&out, 0);
    let text = stdout(&out);
    let section = text.find("Components").unwrap_or_else(|| panic!("no Components section:\n{text}"));
    assert!(text.find("  exec").is_some_and(|i| i < section), "applets come first:\n{text}");
    let listed: Vec<&str> = text[section..].lines().skip(1).map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(listed, ALL_COMPONENTS, "{text}");
}
