//! `stigmer components [--json]`, `--list` and `--version`: what this binary carries, and which
//! runner a start of each component would take here and now (STIGMER_RUNNER and config.toml's
//! `[runner] default` included), and why.

use crate::exit::ExitCode;
use std::io::Write;

use serde::Serialize;

use crate::embed::{self, Component};
use crate::run::{Overrides, choose, overrides};

#[derive(Serialize)]
struct Row {
    name: &'static str,
    kind: &'static str,
    size: u64,
    stored_size: u64,
    sha256: &'static str,
    runner: &'static str,
    /// Why that runner: the policy's reason in words.
    why: &'static str,
    compression: &'static str,
    version: Option<&'static str>,
}

impl Row {
    fn new(c: &Component, over: Overrides) -> Self {
        let choice = choose(c, over);
        Row {
            name: c.name,
            kind: c.kind_name(),
            size: c.size,
            stored_size: c.stored_size,
            sha256: c.sha256,
            runner: choice.runner.name(),
            why: choice.why,
            compression: c.compression_name(),
            version: c.version,
        }
    }
}

pub(super) fn table(json: bool) -> anyhow::Result<ExitCode> {
    let over = overrides()?;
    let rows: Vec<Row> = embed::components().iter().map(|c| Row::new(c, over)).collect();
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        writeln!(out, "no components: this stigmer was built without STIGMER_COMPONENTS_DIR")?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let vwidth = rows.iter().map(|r| r.version.map_or(1, str::len)).max().unwrap_or(1).max(7);
    writeln!(
        out,
        "{:width$}  KIND  {:>10}  {:>10}  RUNNER  {:12}  {:vwidth$}  WHY",
        "NAME", "SIZE", "STORED", "SHA256", "VERSION"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:width$}  {:4}  {:>10}  {:>10}  {:6}  {:12}  {:vwidth$}  {}",
            r.name,
            r.kind,
            human(r.size),
            human(r.stored_size),
            r.runner,
            &r.sha256[..12],
            r.version.unwrap_or("-"),
            r.why
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn list() -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    for c in embed::components() {
        writeln!(out, "{}", c.name)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn version() -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "stigmer {}", env!("CARGO_PKG_VERSION"))?;
    for c in embed::components() {
        writeln!(out, "  {} {} sha256:{}", c.name, c.version.unwrap_or("-"), &c.sha256[..12])?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}
