//! `stigmer install-links [DIR]`: one symlink per component, pointing at this binary, so that
//! PATH lookups of a component name (a Go service running `agent-runner`) reach the embedded one.
//! Idempotent; a link to an older stigmer is replaced atomically; a real file is never clobbered.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::embed;
use crate::exit::Status;
use crate::home::Home;

pub(super) fn run(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(dir) => dir,
        None => Home::trusted()?.bin(),
    };
    let mut out = io::stdout().lock();
    let mut failed = false;
    for (link, result) in link_all(&dir, &own_exe()?)? {
        match result {
            Ok(Outcome::Current) => {}
            Ok(outcome) => writeln!(out, "{} {}", outcome.verb(), link.display())?,
            Err(e) => {
                eprintln!("stigmer: {}: {e:#}", link.display());
                failed = true;
            }
        }
    }
    Ok(if failed { Status::Failure.into() } else { ExitCode::SUCCESS })
}

/// The links `stigmer server` puts first on its services' PATH; fails on the first problem.
pub(crate) fn ensure_links(dir: &Path) -> anyhow::Result<()> {
    ensure_links_to(dir, &own_exe()?)
}

/// The same, pointing at `target`: the supervisor's pinned copy of its own binary
/// (crate::run::pin_self), so the links outlive an upgrade or removal of the installed one.
pub(crate) fn ensure_links_to(dir: &Path, target: &Path) -> anyhow::Result<()> {
    for (link, result) in link_all(dir, target)? {
        result.with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

fn own_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().and_then(fs::canonicalize).context("cannot tell where this stigmer binary is")
}

fn link_all(dir: &Path, target: &Path) -> anyhow::Result<Vec<(PathBuf, anyhow::Result<Outcome>)>> {
    // Private like every directory of the home (Home::trusted checks it).
    std::fs::DirBuilder::new()
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

enum Outcome {
    Created,
    Replaced,
    Current,
}

impl Outcome {
    fn verb(&self) -> &'static str {
        match self {
            Outcome::Created => "linked",
            Outcome::Replaced => "relinked",
            Outcome::Current => "kept",
        }
    }
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
    crate::home::files::symlink_atomic(target, link)?;
    Ok(outcome)
}
