//! `stigmer server logs`: the clap arguments and the printing; reading and merging the files is
//! crate::server::logs' work. Human lines look like `docker compose logs -t`
//! (`TIME NAME | text`, `!` for stderr, `*` for the supervisor's events); `--json` prints one
//! object per line for machines.

use crate::exit::ExitCode;
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use base64::Engine;
use clap::Args;

use crate::exit::Status;
use crate::home::Home;
use crate::server::logs::{self, End, Query, Reader, Record};

/// How often `-f` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// `-f` without `-n` starts with this many lines, as `journalctl -f` does.
const FOLLOW_TAIL: usize = 10;

#[derive(Args)]
pub(super) struct LogsArgs {
    /// Keep printing new lines as they are logged (across rotations and restarts).
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines overall (default: all; 10 with --follow).
    #[arg(short = 'n', long = "lines", value_name = "N")]
    lines: Option<usize>,
    /// Only this service (repeatable); `supervisor` is the supervisor's own log.
    #[arg(short = 'c', long = "component", value_name = "NAME")]
    services: Vec<String>,
    /// Only the services' stdout lines.
    #[arg(long)]
    stdout: bool,
    /// Only the services' stderr lines.
    #[arg(long)]
    stderr: bool,
    /// Only lines since a duration ago (30s, 10m, 1h) or a UTC time (2026-11-25T21:54:48Z).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// One JSON object per line: time, service, stream (stdout|stderr|event), text.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(home: &Home, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let dir = home.logs();
    if !args.services.is_empty() {
        let known = crate::server::known_services(home);
        if let Some(bad) = args.services.iter().find(|n| !known.contains(n)) {
            eprintln!("stigmer: no service named '{bad}' (services: {})", known.join(", "));
            return Ok(Status::Failure.into());
        }
    }
    let since = match args.since.as_deref().map(|s| logs::parse_since(s, SystemTime::now())).transpose() {
        Ok(since) => since,
        Err(e) => {
            eprintln!("stigmer: {e}");
            return Ok(Status::Failure.into());
        }
    };
    let query = Query {
        services: (!args.services.is_empty()).then(|| args.services.clone()),
        stdout_only: args.stdout,
        stderr_only: args.stderr,
        since,
    };
    let read = || format!("reading the logs in {}", dir.display());
    let mut reader = Reader::open(&dir, query).with_context(read)?;
    let last = args.lines.or(args.follow.then_some(FOLLOW_TAIL));
    let printer = Printer { json: args.json, color: logs::use_color() };
    let mut out = io::stdout().lock();
    printer.print(&mut out, &reader.history(last).with_context(read)?)?;
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        std::thread::sleep(FOLLOW_POLL);
        printer.print(&mut out, &reader.poll().with_context(read)?)?;
    }
}

struct Printer {
    json: bool,
    color: bool,
}

impl Printer {
    fn print(&self, out: &mut impl Write, records: &[Record]) -> io::Result<()> {
        let mut buf = Vec::new();
        for r in records {
            if self.json {
                serde_json::to_writer(&mut buf, &json(r))?;
                buf.push(b'\n');
            } else {
                logs::human(&mut buf, r.time.as_bytes(), &r.service, r.kind, &r.text, self.color);
            }
        }
        out.write_all(&buf)?;
        out.flush()
    }
}

/// `{time, service, stream, text}`; `text_base64` holds the exact bytes when they are not
/// UTF-8 (`text` then has U+FFFD in their place); `partial` when the line had no newline.
fn json(r: &Record) -> serde_json::Value {
    let mut v = serde_json::json!({
        "time": r.time,
        "service": &*r.service,
        "stream": r.kind.name(),
        "text": String::from_utf8_lossy(&r.text),
    });
    if std::str::from_utf8(&r.text).is_err() {
        v["text_base64"] = base64::engine::general_purpose::STANDARD.encode(&r.text).into();
    }
    if r.end != End::Newline {
        v["partial"] = true.into();
    }
    v
}
