//! `stigmer cache path|list|prune|clear`: the content-addressed component cache.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Subcommand;

use crate::embed;
use crate::home::Home;
use crate::run::{CacheRoot, EntryState};

#[derive(Subcommand)]
pub(super) enum Action {
    /// Print the cache directory.
    Path,
    /// One line per entry: sha256, the components using it, state.
    List,
    /// Remove entries no component of this binary uses.
    Prune,
    /// Remove every entry (they are refilled on demand).
    Clear,
}

pub(super) fn run(action: Action) -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    let mut out = io::stdout().lock();
    if let Action::Path = action {
        writeln!(out, "{}", home.cache().display())?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(root) = CacheRoot::existing(&home)? else { return Ok(ExitCode::SUCCESS) };
    for name in root.entry_names()? {
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
                let described = if states.is_empty() { "unreferenced".to_owned() } else { states.join(" ") };
                writeln!(out, "{name}  {described}")?;
            }
            Action::Prune if users.is_empty() => remove(&root, &name, &mut out)?,
            Action::Clear => remove(&root, &name, &mut out)?,
            Action::Prune | Action::Path => {}
        }
    }
    if !matches!(action, Action::List) {
        root.remove_trash()?;
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(root: &CacheRoot, name: &str, out: &mut impl Write) -> anyhow::Result<()> {
    if root.remove_entry(name)? {
        writeln!(out, "removed {}", root.path().join(name).display())?;
    } else {
        eprintln!("stigmer: {} is being filled right now; left alone", root.path().join(name).display());
    }
    Ok(())
}
