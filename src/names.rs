//! The one rule for names of components and services: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
//! Names become file names under the home (logs, data, cache entries, links), so a name is
//! never a path: no separator, no `..`, no leading dot or dash, nothing a shell or a terminal
//! would read differently. Shared with the build script (build/main.rs) through `#[path]`.

/// The longest name accepted.
pub(crate) const MAX_LEN: usize = 64;

/// Why a name is refused, phrased to follow "NAME: ".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadName;

impl std::fmt::Display for BadName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not a valid name: use 1 to {MAX_LEN} ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    }
}

impl std::error::Error for BadName {}

pub(crate) fn check(name: &str) -> Result<(), BadName> {
    let bytes = name.as_bytes();
    let first_ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric);
    let rest_ok = bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if first_ok && rest_ok && bytes.len() <= MAX_LEN { Ok(()) } else { Err(BadName) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_alphabet_and_refuses_paths() {
        for ok in ["a", "agent-runner", "probe.v2", "x_1", "A9", &"a".repeat(MAX_LEN)] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in
            ["", ".", "..", "../../escaped", "a/b", "-x", ".hidden", "_x", "a b", "é", "a\0", &"a".repeat(MAX_LEN + 1)]
        {
            assert_eq!(check(bad), Err(BadName), "{bad:?}");
        }
    }
}
