//! `stigmer components` names the runner a start takes and why, from the same decision the exec
//! path makes: the policy per format, components.toml's `runner`, and STIGMER_RUNNER. (The build's
//! sniffing of Go programs that link os.Executable is checked in corpus.rs, on real Go builds.)

use crate::util::*;

/// (name, runner, why) rows of `components --json`, with ENV applied.
fn choices(sb: &Sandbox, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = sb.stigmer();
    cmd.args(["components", "--json"]).envs(env.iter().copied());
    run(cmd)
}

fn rows(out: &std::process::Output) -> Vec<(String, String, String)> {
    assert_code(out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_else(|| panic!("{k} missing in {r}")).to_owned();
            (s("name"), s("runner"), s("why"))
        })
        .collect()
}

#[test]
fn components_says_which_runner_and_why() {
    let sb = Sandbox::new();
    let rows = rows(&choices(&sb, &[]));
    let get = |n: &str| rows.iter().find(|r| r.0 == n).unwrap_or_else(|| panic!("{n} in {rows:?}")).clone();
    for (name, runner, why) in [
        ("probe", "memfd", "single-file ELF"),
        // The reference Go services are marked memfd in their components.toml: no disk write.
        ("stigmer-server", "memfd", "runner = \"memfd\" in components.toml"),
        ("workflow-runner", "memfd", "runner = \"memfd\" in components.toml"),
        ("hello-script", "memfd", "script"),
        ("big-probe", "cache", "single-file ELF over 2 MiB"),
        ("probe-cached", "cache", "runner = \"cache\" in components.toml"),
        ("pyapp", "cache", "directory component"),
        ("pyapp-onefile", "cache", "PyInstaller"),
    ] {
        let (_, got_runner, got_why) = get(name);
        assert_eq!(got_runner, runner, "{name}: {got_why}");
        assert!(got_why.contains(why), "{name}: why is {got_why:?}, expected it to say {why:?}");
    }
    // The table says the same, in a WHY column.
    let mut cmd = sb.stigmer();
    cmd.arg("components");
    let out = run(cmd);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.lines().next().unwrap().ends_with("WHY"), "{text}");
    let line = text.lines().find(|l| l.starts_with("pyapp-onefile ")).unwrap();
    assert!(line.contains("cache") && line.contains("PyInstaller"), "{line}");
}

#[test]
fn components_follows_stigmer_runner() {
    let sb = Sandbox::new();
    for runner in ["memfd", "cache"] {
        for (name, got, why) in rows(&choices(&sb, &[("STIGMER_RUNNER", runner)])) {
            assert_eq!(got, runner, "{name}");
            assert_eq!(why, format!("STIGMER_RUNNER={runner}"), "{name}");
        }
    }
    let err = assert_launcher_error(&choices(&sb, &[("STIGMER_RUNNER", "bogus")]), 1);
    assert!(err.contains("STIGMER_RUNNER") && err.contains("bogus"), "{err}");
}
