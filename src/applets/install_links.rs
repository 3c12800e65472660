//! `stigmer install-links [DIR]`: one symlink per component, pointing at this binary (the
//! linking itself is crate::home::links, shared with the supervisor).

use crate::exit::ExitCode;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::exit::Status;
use crate::home::Home;
use crate::home::links::{self, Outcome};

pub(super) fn run(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(dir) => dir,
        None => Home::trusted()?.bin(),
    };
    let mut out = io::stdout().lock();
    let mut failed = false;
    for (link, result) in links::link_all(&dir, &links::own_exe()?)? {
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

/// Checks that the links `stigmer server` puts first on its services' PATH can be made
/// (before anything starts); the supervisor then points them at its pinned binary.
pub(crate) fn ensure_links(dir: &Path) -> anyhow::Result<()> {
    links::ensure(dir, &links::own_exe()?)
}
