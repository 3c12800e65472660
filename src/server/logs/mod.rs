//! Service logs: one file per service, `$STIGMER_HOME/logs/NAME.log`, holding its stdout, its
//! stderr and the supervisor's events about it in arrival order, each line stamped by the
//! supervisor with the time it was read. `supervisor.log` is the supervisor's own stderr, kept
//! the same way. `write` captures and rotates; `read` merges the files back for
//! `stigmer server logs`.
//!
//! # The file format
//! A file is a sequence of records, one per line:
//!
//! ```text
//! 2026-11-25T21:54:48.123Z err| listening on 127.0.0.1:7234
//! ^ 24 bytes: UTC RFC 3339, ms ^ stream (3 bytes) and mark (1 byte), one space, then the text
//! ```
//!
//! - time: exactly 24 bytes, `YYYY-MM-DDTHH:MM:SS.mmmZ`, so times compare as strings;
//! - stream: `out` (stdout), `err` (stderr) or `evt` (an event of the supervisor);
//! - mark: `|` the program ended this line with a newline; `+` a fragment, continued by the next
//!   record of the same stream (a line flushed after a short idle, or longer than [`MAX_LINE`]);
//!   `$` the stream ended (the program exited) with this text and no newline;
//! - text: the program's bytes exactly as written, without the newline: any byte but LF, UTF-8
//!   or not (a line cannot contain LF, since LF ends it). Nothing is escaped, so nothing is lost.
//!
//! A line that does not parse (a log written by an older stigmer) reads as a stdout line with
//! the time of the record before it.

mod read;
mod write;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub(crate) use read::{Query, Reader, parse_since, services as logged_services};
pub(crate) use write::{Echo, ServiceLog, open_append};

/// Longest fragment the writer holds back waiting for a newline; longer lines are written as
/// `+` fragments that the reader joins again.
pub(crate) const MAX_LINE: usize = 64 << 10;
const TIME_LEN: usize = 24;
const HEADER_LEN: usize = TIME_LEN + 6;

/// `[logs]` in config.toml: `max_size` (bytes, default 10 MiB), `keep` (rotated files kept,
/// default 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) max_size: u64,
    pub(crate) keep: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { max_size: 10 << 20, keep: 3 }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// What a record is: a line of one of the program's streams, or a supervisor event.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Stdout,
    Stderr,
    Event,
}

impl Kind {
    fn tag(self) -> &'static [u8; 3] {
        match self {
            Kind::Stdout => b"out",
            Kind::Stderr => b"err",
            Kind::Event => b"evt",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Stdout => "stdout",
            Kind::Stderr => "stderr",
            Kind::Event => "event",
        }
    }
}

impl From<Stream> for Kind {
    fn from(s: Stream) -> Kind {
        match s {
            Stream::Stdout => Kind::Stdout,
            Stream::Stderr => Kind::Stderr,
        }
    }
}

/// How a record's text ended in the program's output.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum End {
    /// With a newline.
    Newline,
    /// Not yet: the next record of the stream continues it.
    Continued,
    /// The stream ended here without a newline.
    Eof,
}

impl End {
    fn mark(self) -> u8 {
        match self {
            End::Newline => b'|',
            End::Continued => b'+',
            End::Eof => b'$',
        }
    }
}

/// One line of a service's log, as the reader hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// UTC RFC 3339 with milliseconds (24 bytes, comparable as a string).
    pub(crate) time: String,
    pub(crate) service: std::sync::Arc<str>,
    pub(crate) kind: Kind,
    pub(crate) text: Vec<u8>,
    pub(crate) end: End,
}

/// The time `when` as the log writes it.
pub(crate) fn stamp(when: SystemTime) -> [u8; TIME_LEN] {
    let mut out = [b'0'; TIME_LEN];
    let text = humantime::format_rfc3339_millis(when).to_string();
    // Before 1970 or after 9999 cannot happen on a clock that runs services; keep the width.
    let n = text.len().min(TIME_LEN);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

/// Appends one record to `out`. `text` must not contain LF.
fn encode(out: &mut Vec<u8>, time: &[u8; TIME_LEN], kind: Kind, end: End, text: &[u8]) {
    debug_assert!(!text.contains(&b'\n'));
    out.extend_from_slice(time);
    out.push(b' ');
    out.extend_from_slice(kind.tag());
    out.push(end.mark());
    out.push(b' ');
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// Parses one line (without its LF); None when it is not a record.
fn decode(line: &[u8]) -> Option<(&[u8], Kind, End, &[u8])> {
    if line.len() < HEADER_LEN || line[TIME_LEN] != b' ' || line[HEADER_LEN - 1] != b' ' {
        return None;
    }
    let time = &line[..TIME_LEN];
    if time[4] != b'-' || time[10] != b'T' || time[TIME_LEN - 1] != b'Z' {
        return None;
    }
    let kind = match &line[TIME_LEN + 1..TIME_LEN + 4] {
        b"out" => Kind::Stdout,
        b"err" => Kind::Stderr,
        b"evt" => Kind::Event,
        _ => return None,
    };
    let end = match line[TIME_LEN + 4] {
        b'|' => End::Newline,
        b'+' => End::Continued,
        b'$' => End::Eof,
        _ => return None,
    };
    Some((time, kind, end, &line[HEADER_LEN..]))
}

/// `$STIGMER_HOME/logs/NAME.log`.
pub(crate) fn log_path(dir: &Path, service: &str) -> PathBuf {
    dir.join(format!("{service}.log"))
}

/// `NAME.log.N`: the Nth newest rotated file (1 = the one rotated last).
fn rotated_path(dir: &Path, service: &str, n: usize) -> PathBuf {
    dir.join(format!("{service}.log.{n}"))
}

/// The ANSI color of a service's name: fixed per name, so `logs` and `--foreground` agree.
fn color(service: &str) -> u8 {
    const COLORS: [u8; 6] = [36, 33, 35, 32, 34, 31];
    let hash = service.bytes().fold(5381u32, |h, b| h.wrapping_mul(33) ^ u32::from(b));
    COLORS[hash as usize % COLORS.len()]
}

/// Appends a record in the human format, `docker compose logs -t` style:
/// `2026-11-25T21:54:48.123Z stigmer-server | text`, with `!` for stderr and `*` for events.
pub(crate) fn human(out: &mut Vec<u8>, time: &[u8], service: &str, kind: Kind, text: &[u8], colored: bool) {
    let mark = match kind {
        Kind::Stdout => '|',
        Kind::Stderr => '!',
        Kind::Event => '*',
    };
    out.extend_from_slice(time);
    out.push(b' ');
    if colored {
        out.extend_from_slice(format!("\x1b[{}m{service} {mark}\x1b[0m ", color(service)).as_bytes());
    } else {
        out.extend_from_slice(format!("{service} {mark} ").as_bytes());
    }
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// Colors on a terminal unless NO_COLOR is set (<https://no-color.org>).
pub(crate) fn use_color() -> bool {
    !crate::env::is_set("NO_COLOR") && crate::platform::stdout_is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_any_bytes() {
        let time = stamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_107_688_123));
        assert_eq!(&time, b"2025-11-25T21:54:48.123Z");
        for text in [&b""[..], b"plain", b"\xff\xfe not utf-8 \r", b"out| looks like a header"] {
            let mut line = Vec::new();
            encode(&mut line, &time, Kind::Stderr, End::Continued, text);
            assert_eq!(line.last(), Some(&b'\n'));
            let (t, kind, end, back) = decode(&line[..line.len() - 1]).unwrap();
            assert_eq!((t, kind, end, back), (&time[..], Kind::Stderr, End::Continued, text));
        }
        assert!(decode(b"an old unstamped line").is_none());
    }
}
