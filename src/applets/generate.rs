//! `stigmer generate completions SHELL | man` (hidden): shell completions and the man page,
//! generated from the same clap definitions that parse the command line, so the shipped files
//! cannot drift from the CLI. packaging/scripts/dist.sh calls it to fill the release tarball.

use crate::exit::ExitCode;
use std::io::{self, Write};

use clap::{CommandFactory, Subcommand, ValueEnum};
use clap_complete::Shell as CompleteShell;

use super::Cli;

#[derive(Subcommand)]
pub(super) enum Target {
    /// A completion script for SHELL on stdout.
    Completions { shell: Shell },
    /// The stigmer(1) man page (roff) on stdout.
    Man,
}

/// The shells the release ships completions for (the Homebrew formula installs all three).
#[derive(Clone, Copy, ValueEnum)]
pub(super) enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl From<Shell> for CompleteShell {
    fn from(shell: Shell) -> Self {
        match shell {
            Shell::Bash => CompleteShell::Bash,
            Shell::Zsh => CompleteShell::Zsh,
            Shell::Fish => CompleteShell::Fish,
        }
    }
}

pub(super) fn run(target: Target) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command();
    let mut out = io::stdout().lock();
    match target {
        Target::Completions { shell } => {
            clap_complete::generate(CompleteShell::from(shell), &mut command, "stigmer", &mut out);
        }
        // The CLI owns -V (it prints component versions too), so clap's version is set here only.
        Target::Man => clap_mangen::Man::new(command.version(env!("CARGO_PKG_VERSION"))).render(&mut out)?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
