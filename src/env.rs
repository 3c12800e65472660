//! Environment variables, read one way everywhere: a variable set to the empty string is unset
//! (`STIGMER_HOME= stigmer ...` means "no STIGMER_HOME", as shells and most tools treat it).
//! The names stay with the code that owns their meaning (home.rs owns STIGMER_HOME, run/policy.rs
//! STIGMER_RUNNER, ...); this module only owns the rule. It is on the exec path: one lookup, no
//! work beyond the copy the standard library makes.

use std::ffi::OsString;

/// NAME's value, or None when it is unset or empty.
pub(crate) fn var_os(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// NAME's value as text, or None when it is unset, empty, or not UTF-8 (none of ours is
/// meaningful in another encoding).
pub(crate) fn var(name: &str) -> Option<String> {
    var_os(name).and_then(|v| v.into_string().ok())
}

/// NAME's value as text, or None when it is unset or empty; a value that is not UTF-8 is an
/// error naming the setting (for settings whose value matters: one set wrongly must not be
/// taken for one not set).
pub(crate) fn text(name: &str) -> Result<Option<String>, NotText> {
    var_os(name)
        .map(|v| {
            v.into_string()
                .map_err(|v| NotText(format!("{name}={v:?} is not valid UTF-8; unset it or give it a valid value")))
        })
        .transpose()
}

/// A setting whose value is not text, as one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NotText(pub(crate) String);

/// Whether NAME is set to something (the NO_COLOR convention: any non-empty value).
pub(crate) fn is_set(name: &str) -> bool {
    var_os(name).is_some()
}
