//! `stigmer verify`: hashes every embedded payload and every cache entry of this binary's
//! components. A damaged cache entry is marked for refill; a damaged payload means a damaged binary.
//! Anything in the cache stigmer did not put there (a planted symlink, a junk name) is reported
//! as "not ours" and never followed.

use crate::exit::ExitCode;
use std::io::{self, Write};

use crate::embed;
use crate::exit::Status;
use crate::home::Home;
use crate::run::{CacheRoot, Listed};

pub(super) fn run() -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    let mut bad = 0;
    for c in embed::components() {
        match c.verify_payload() {
            Ok(()) => writeln!(out, "ok       {} (embedded)", c.name)?,
            Err(why) => {
                bad += 1;
                writeln!(out, "CORRUPT  {} (embedded): {why}; reinstall stigmer", c.name)?;
            }
        }
    }
    if let Some(root) = CacheRoot::existing(&Home::trusted()?)? {
        for listed in root.list()? {
            if let Listed::NotOurs { name, what } = listed {
                bad += 1;
                writeln!(out, "NOT OURS {} ({what}): remove it by hand", root.path().join(name).display())?;
            }
        }
        for c in embed::components() {
            let entry = root.entry(c);
            if !entry.exists() {
                continue;
            }
            let problems = entry.verify();
            if problems.is_empty() {
                writeln!(out, "ok       {} ({})", c.name, entry.exe().display())?;
                continue;
            }
            bad += 1;
            for p in &problems {
                writeln!(out, "DAMAGED  {} (cache): {p}", c.name)?;
            }
            match entry.invalidate() {
                Ok(()) => writeln!(out, "         {}: the next run refills it", c.name)?,
                Err(e) => {
                    writeln!(
                        out,
                        "         {}: could not mark it for refill ({e}); run `stigmer cache clear`",
                        c.name
                    )?;
                }
            }
        }
    }
    if bad > 0 {
        writeln!(out, "{bad} problem(s) found")?;
        return Ok(Status::Failure.into());
    }
    writeln!(out, "all OK")?;
    Ok(ExitCode::SUCCESS)
}
