//! `stigmer deploy kubernetes|compose [--image REF] [--replicas NAME=N]...`: the platform's
//! services as units of an existing engine (crate::deploy renders; this prints), and the hidden

//! which holds nothing but stigmer.

use crate::exit::ExitCode;
use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use crate::exit::Status;
use crate::home::Home;

#[derive(Args)]
pub(super) struct DeployArgs {
    /// The engine to render for.
    engine: Engine,
    /// The image every unit runs (`make image` builds it).
    #[arg(long, default_value = concat!("localhost/stigmer:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Replicas of one service, NAME=N (repeatable; default 1 each).
    #[arg(long, value_name = "NAME=N", value_parser = replicas)]
    replicas: Vec<(String, u32)>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Engine {
    /// Deployments, Services and PersistentVolumeClaims (`kubectl apply -f`, `podman kube play`).
    Kubernetes,
    /// A Compose file (`docker compose`, `podman-compose`).
    Compose,
}

fn replicas(arg: &str) -> Result<(String, u32), String> {
    let (name, n) = arg.split_once('=').ok_or("expected NAME=N, e.g. agent-runner=3")?;
    crate::names::check(name).map_err(|bad| bad.to_string())?;
    let n: u32 = n.parse().map_err(|_| format!("{n:?} is not a number of replicas (0 or more)"))?;
    Ok((name.to_owned(), n))
}

pub(super) fn run(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let home = Home::trusted()?;
    let platform = crate::deploy::platform(&home, &args.image, &args.replicas)?;
    let text = match args.engine {
        Engine::Kubernetes => crate::deploy::kubernetes::render(&platform),
        Engine::Compose => crate::deploy::compose::render(&platform),
    };
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub(super) enum ProbeArgs {
    /// GET PATH from ADDR (host:port) answers 2xx.
    Http { addr: String, path: String },
    /// ADDR (host:port) accepts a connection.
    Tcp { addr: String },
}

/// Exit 0 when the check passes; else one line saying why, and exit 1.
pub(super) fn probe(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let check = match args {
        ProbeArgs::Http { addr, path } => crate::server::probe::Check::Http { addr, path },
        ProbeArgs::Tcp { addr } => crate::server::probe::Check::Tcp { addr },
    };
    let timeout = Duration::from_secs(5);
    let verdict = crate::server::probe::start(check, timeout)
        .recv_timeout(timeout + Duration::from_secs(1))
        .context("the probe did not answer")?;
    match verdict {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(why) => {
            eprintln!("stigmer healthcheck: {why}");
            Ok(Status::Failure.into())
        }
    }
}

#[derive(Args)]
pub(super) struct ImageArgs {
    /// Where to write: DIR/oci (an OCI image layout) and DIR/stigmer.tar (`podman load -i`).
    out: std::path::PathBuf,
    /// The name the archive loads as.
    #[arg(long, default_value = concat!("localhost/stigmer:", env!("CARGO_PKG_VERSION")))]
    tag: String,
    /// org.opencontainers.image.source.
    #[arg(long, default_value = "")]
    source: String,
    /// org.opencontainers.image.revision (the commit).
    #[arg(long, default_value = "")]
    revision: String,
}

/// Writes this binary's image; `created` and every mtime are SOURCE_DATE_EPOCH (required).
pub(super) fn image(args: ImageArgs) -> anyhow::Result<ExitCode> {
    let epoch = crate::env::var("SOURCE_DATE_EPOCH")
        .context("SOURCE_DATE_EPOCH is not set: set it to the release's commit time (git log -1 --format=%ct), so that two builds give the same image")?;
    let epoch: u64 =
        epoch.parse().map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH={epoch:?} is not a number of seconds"))?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let meta = crate::deploy::image::Meta { tag: args.tag, source: args.source, revision: args.revision, epoch };
    let built = crate::deploy::image::build(&args.out, &meta)?;
    let mut out = io::stdout().lock();
    writeln!(out, "digest    {}", built.digest)?;
    writeln!(out, "layer     {} bytes", built.layer_size)?;
    writeln!(out, "layout    {}", built.layout.display())?;
    writeln!(out, "archive   {} (podman load -i, docker load -i)", built.archive.display())?;
    writeln!(out, "unpacked  {}", if built.unpacked.is_empty() { "-".to_owned() } else { built.unpacked.join(", ") })?;
    writeln!(
        out,
        "libraries {}",
        if built.libraries.is_empty() { "-".to_owned() } else { built.libraries.join(", ") }
    )?;
    Ok(ExitCode::SUCCESS)
}
