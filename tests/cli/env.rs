//! Every variable stigmer reads treats an empty value as unset (src/env.rs): `VAR= stigmer ...`
//! behaves as if VAR were not there at all.

use crate::util::*;

#[test]
fn empty_variables_are_unset() {
    // STIGMER_HOME= falls back to $HOME/.stigmer.
    let sb = Sandbox::new();
    let mut cmd = sb.stigmer();
    cmd.env("STIGMER_HOME", "").env("HOME", sb.home()).args(["cache", "path"]);
    let out = run(cmd);
    assert_code(&out, 0);
    assert_eq!(stdout(&out).trim_end(), sb.home().join(".stigmer/cache").to_str().unwrap(), "{}", describe(&out));

    // STIGMER_RUNNER= is auto (an ELF runs from a memfd), not a bad runner name.
    let mut cmd = sb.component("probe-static");
    cmd.env("STIGMER_RUNNER", "");
    let p = Probe::from_success(&run(cmd));
    assert_eq!(p.exe, memfd_exe("probe-static"));

    // STIGMER_FORCE_ARG0= names no component: the binary stays the CLI.
    let mut cmd = sb.stigmer();
    cmd.env("STIGMER_FORCE_ARG0", "").arg("--version");
    let out = run(cmd);
    assert_code(&out, 0);
    assert!(stdout(&out).starts_with("stigmer "), "{}", describe(&out));

    // STIGMER_LOG= on the exec path sets up no logging: the component's stderr is its own.
    let mut cmd = sb.component("hello-script");
    cmd.env("STIGMER_LOG", "");
    let out = run(cmd);
    assert_code(&out, 0);
    assert_eq!(stderr(&out), "", "{}", describe(&out));
}
