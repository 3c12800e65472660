//! `$STIGMER_HOME/bin` and `stigmer install-links`: one symlink per component, pointing at a
//! stigmer binary, so that PATH lookups of a component name (a Go service running
//! `agent-runner`) reach the embedded one. Idempotent; a link to another target is replaced
//! atomically; a real file is never clobbered. Lives beside Home rather than in the applet so
//! the supervisor can point the links at its pinned copy without importing the CLI.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::embed;

/// What `install` did to one link.
pub(crate) enum Outcome {
    Created,
    Replaced,
    Current,
}

impl Outcome {
    pub(crate) fn verb(&self) -> &'static str {
        match self {
            Outcome::Created => "linked",
            Outcome::Replaced => "relinked",
            Outcome::Current => "kept",
        }
    }
}

/// This stigmer binary, resolved (a link to it must not depend on how we were reached).
pub(crate) fn own_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().and_then(fs::canonicalize).context("cannot tell where this stigmer binary is")
}

/// Links every component in `dir` to `target`; fails on the first problem. The supervisor
/// points them at its pinned copy of its own binary (crate::run::pin_self), so they outlive
/// an upgrade or removal of the installed one.
pub(crate) fn ensure(dir: &Path, target: &Path) -> anyhow::Result<()> {
    for (link, result) in link_all(dir, target)? {
        result.with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

/// Links every component in `dir` to `target`, one result per link.
pub(crate) fn link_all(dir: &Path, target: &Path) -> anyhow::Result<Vec<(PathBuf, anyhow::Result<Outcome>)>> {
    // Private like every directory of the home (Home::trusted checks it).
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(embed::components()
        .iter()
        .map(|c| {
            let link = dir.join(c.name);
            let result = install(&link, target);
            (link, result)
        })
        .collect())
}

fn install(link: &Path, target: &Path) -> anyhow::Result<Outcome> {
    let outcome = match fs::symlink_metadata(link) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Outcome::Created,
        Err(e) => return Err(e.into()),
        Ok(m) if m.file_type().is_symlink() => {
            if fs::read_link(link)? == target {
                return Ok(Outcome::Current);
            }
            Outcome::Replaced
        }
        Ok(_) => anyhow::bail!("exists and is not a symlink; move it away and run install-links again"),
    };
    super::files::symlink_atomic(target, link)?;
    Ok(outcome)
}
