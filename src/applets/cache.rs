//! `stigmer cache path|list|prune|clear`: the content-addressed component cache.
//!
//! Every command goes on past what stigmer did not put there (junk names, planted symlinks):
//! it names them, never follows or removes them, and exits 1. `clear` and `prune` skip entries
//! a running program (or a fill) holds, saying so.

use crate::exit::ExitCode;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;

use clap::Subcommand;

use crate::embed;
use crate::exit::Status;
use crate::home::Home;
use crate::run::{CacheRoot, EntryState, Listed, Removal};

#[derive(Subcommand)]
pub(super) enum Action {
    /// Print the cache directory.
    Path,
    /// One line per entry: sha256, the components using it, state.
    List,
    /// Remove entries no component of this binary uses (entries in use are kept).
    Prune,
    /// Remove every entry not in use (they are refilled on demand).
    Clear,
}

pub(super) fn run(action: Action) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    if let Action::Path = action {
        // The bytes as they are: a script may use them, and a home need not be UTF-8.
        out.write_all(Home::from_env()?.cache().as_os_str().as_bytes())?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let home = Home::trusted()?;
    let Some(root) = CacheRoot::existing(&home)? else { return Ok(ExitCode::SUCCESS) };
    let mut wrong = false;
    let (mut removed, mut kept) = (0, 0);
    for listed in root.list()? {
        let name = match listed {
            Listed::Entry(name) => name,
            Listed::NotOurs { name, what } => {
                wrong = true;
                let path = root.path().join(&name);
                match action {
                    Action::List => writeln!(out, "{}  not ours: {what}", Listed::shown(&name))?,
                    _ => eprintln!("stigmer: {}: not ours ({what}); left alone, remove it by hand", path.display()),
                }
                continue;
            }
        };
        let users: Vec<_> = embed::components().iter().filter(|c| c.sha256 == name).collect();
        match action {
            Action::List => {
                let mut states = Vec::new();
                for c in &users {
                    let state = match root.entry(c).state()? {
                        EntryState::Intact => "ok",
                        EntryState::Stale => "stale",
                    };
                    states.push(format!("{}:{state}", c.name));
                }
                let described = if !states.is_empty() {
                    states.join(" ")
                } else if root.is_pin(&name) && root.in_use(&name)? {
                    "a stigmer binary, pinned by the running server".to_owned()
                } else if root.is_pin(&name) {
                    "a stigmer binary no server runs from (the next server start of another build, or cache prune, removes it)".to_owned()
                } else {
                    "unreferenced".to_owned()
                };
                writeln!(out, "{name}  {described}")?;
            }
            Action::Prune if !users.is_empty() => {}
            Action::Prune | Action::Clear => {
                let path = root.path().join(&name);
                match root.remove_entry(&name) {
                    Ok(Removal::Removed) => {
                        removed += 1;
                        writeln!(out, "removed {}", path.display())?;
                    }
                    Ok(Removal::InUse) => {
                        kept += 1;
                        eprintln!("stigmer: {} is in use by a running program; kept", path.display());
                    }
                    Ok(Removal::Filling) => {
                        kept += 1;
                        eprintln!("stigmer: {} is being filled right now; kept", path.display());
                    }
                    Ok(Removal::Gone) => {}
                    Err(e) => {
                        wrong = true;
                        eprintln!("stigmer: {e}");
                    }
                }
            }
            Action::Path => {}
        }
    }
    if !matches!(action, Action::List) {
        root.remove_trash()?;
        writeln!(out, "{removed} removed, {kept} in use kept")?;
    }
    Ok(if wrong { Status::Failure.into() } else { ExitCode::SUCCESS })
}
