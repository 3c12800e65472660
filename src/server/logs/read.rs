//! Reading service logs back for `stigmer server logs`: every service's files (rotated ones
//! first, oldest first) parsed into records, fragments joined again, filtered, and merged
//! across services by time (a k-way merge, so each file's own order is kept). Following opens
//! each current file and checks the inode behind its fd (open, then fstat: no window between a
//! stat and an open); when the path names another file (a rotation, a deletion and
//! re-creation, a supervisor restart), the old fd is drained first and then the new file is
//! read from its start. New services' logs are picked up as they appear.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::{End, Kind, Record, decode, log_path, rotated_path, stamp};

/// Which records `logs` shows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    /// Only these services (None: every service with a log).
    pub(crate) services: Option<Vec<String>>,
    /// Only the program's stdout / stderr lines (both false: both, and events).
    pub(crate) stdout_only: bool,
    pub(crate) stderr_only: bool,
    /// Only records at or after this time (a stamp, compared as a string).
    pub(crate) since: Option<String>,
}

impl Query {
    fn wants_service(&self, name: &str) -> bool {
        self.services.as_ref().is_none_or(|s| s.iter().any(|n| n == name))
    }

    fn wants(&self, r: &Record) -> bool {
        let kind_ok = match (self.stdout_only, self.stderr_only) {
            (false, false) => true,
            (out, err) => (out && r.kind == Kind::Stdout) || (err && r.kind == Kind::Stderr),
        };
        kind_ok && self.since.as_ref().is_none_or(|s| r.time.as_str() >= s.as_str())
    }
}

/// `--since`: a duration back from now (`30s`, `10m`, `1h`, `2h30m`) or a UTC time
/// (`2026-11-25T21:54:48Z`, fractions and a missing `Z` accepted).
pub(crate) fn parse_since(arg: &str, now: SystemTime) -> Result<String, String> {
    let when = match humantime::parse_duration(arg) {
        Ok(back) => now.checked_sub(back).unwrap_or(SystemTime::UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(arg).map_err(|_| {
            format!("--since {arg:?} is neither a duration (30s, 10m, 1h) nor a UTC time (2026-11-25T21:54:48Z)")
        })?,
    };
    Ok(String::from_utf8_lossy(&stamp(when)).into_owned())
}

/// Services with a log in `dir` (`NAME.log` or a rotated `NAME.log.N`), sorted.
pub(crate) fn services(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let file = entry?.file_name();
        let Some(file) = file.to_str() else { continue };
        let name = match file.rsplit_once(".log") {
            Some((name, "")) => name,
            Some((name, n)) if n.strip_prefix('.').is_some_and(|n| n.parse::<u32>().is_ok()) => name,
            _ => continue,
        };
        if crate::names::check(name).is_ok() && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Turns lines into records: fills in times of unstamped lines, joins `+` fragments.
struct Parser {
    service: Arc<str>,
    last_time: String,
    /// A stdout and a stderr fragment waiting for their continuation.
    pending: [Option<Record>; 2],
}

impl Parser {
    fn new(service: &str) -> Parser {
        Parser { service: service.into(), last_time: "0000-00-00T00:00:00.000Z".into(), pending: [None, None] }
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<Record>) {
        let (time, kind, end, text) = match decode(line) {
            Some((time, kind, end, text)) => {
                if time != self.last_time.as_bytes() {
                    self.last_time = String::from_utf8_lossy(time).into_owned();
                }
                (self.last_time.clone(), kind, end, text)
            }
            None => (self.last_time.clone(), Kind::Stdout, End::Newline, line),
        };
        let slot = match kind {
            Kind::Stdout => 0,
            Kind::Stderr => 1,
            Kind::Event => {
                out.push(Record { time, service: self.service.clone(), kind, text: text.to_vec(), end });
                return;
            }
        };
        match &mut self.pending[slot] {
            Some(p) => {
                p.text.extend_from_slice(text);
                p.end = end;
                if end != End::Continued {
                    out.extend(self.pending[slot].take());
                }
            }
            None => {
                let r = Record { time, service: self.service.clone(), kind, text: text.to_vec(), end };
                if end == End::Continued {
                    self.pending[slot] = Some(r);
                } else {
                    out.push(r);
                }
            }
        }
    }

    /// Fragments still waiting, as they are (shown, marked partial, rather than held back).
    fn flush(&mut self, out: &mut Vec<Record>) {
        let mut left: Vec<Record> = self.pending.iter_mut().filter_map(Option::take).collect();
        left.sort_by(|a, b| a.time.cmp(&b.time));
        out.extend(left);
    }
}

/// One service: its current file, followed through rotations.
struct Source {
    name: String,
    parser: Parser,
    file: Option<File>,
    dev: u64,
    ino: u64,
    /// Bytes read from `file` so far.
    pos: u64,
    /// An incomplete last line (the writer is mid-write).
    buf: Vec<u8>,
}

impl Source {
    fn new(dir: &Path, name: &str) -> Source {
        let mut s = Source {
            name: name.to_owned(),
            parser: Parser::new(name),
            file: None,
            dev: 0,
            ino: 0,
            pos: 0,
            buf: Vec::new(),
        };
        s.open(dir);
        s
    }

    /// Opens the current file, then asks the fd (not the path) which file it is.
    fn open(&mut self, dir: &Path) -> bool {
        let Ok(file) = File::open(log_path(dir, &self.name)) else { return false };
        let Ok(meta) = file.metadata() else { return false };
        (self.dev, self.ino, self.pos) = (meta.dev(), meta.ino(), 0);
        self.file = Some(file);
        self.buf.clear();
        true
    }

    /// Parses what was appended to the open file since the last call.
    fn drain(&mut self, out: &mut Vec<Record>) -> io::Result<()> {
        let Some(file) = &mut self.file else { return Ok(()) };
        if file.metadata()?.len() < self.pos {
            // Truncated in place: start over.
            file.seek(SeekFrom::Start(0))?;
            (self.pos, self.buf) = (0, Vec::new());
        }
        let mut chunk = vec![0u8; 256 << 10];
        loop {
            let n = match file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.pos += n as u64;
            self.buf.extend_from_slice(&chunk[..n]);
            let mut start = 0;
            for nl in memchr::memchr_iter(b'\n', &self.buf) {
                self.parser.line(&self.buf[start..nl], out);
                start = nl + 1;
            }
            self.buf.drain(..start);
        }
        Ok(())
    }

    /// Follows the path: drains the open file, then moves to the file now at the path if that
    /// is another one.
    fn poll(&mut self, dir: &Path, out: &mut Vec<Record>) -> io::Result<()> {
        self.drain(out)?;
        let moved = match fs::metadata(log_path(dir, &self.name)) {
            Ok(m) => m.ino() != self.ino || m.dev() != self.dev || self.file.is_none(),
            Err(_) => false,
        };
        if moved && self.open(dir) {
            self.drain(out)?;
        }
        Ok(())
    }
}

/// Reads every service's records and then follows them.
pub(crate) struct Reader {
    dir: PathBuf,
    query: Query,
    sources: Vec<Source>,
}

impl Reader {
    /// Opens the current log of every service the query names.
    pub(crate) fn open(dir: &Path, query: Query) -> io::Result<Reader> {
        let sources = services(dir)?.iter().filter(|n| query.wants_service(n)).map(|n| Source::new(dir, n)).collect();
        Ok(Reader { dir: dir.to_owned(), query, sources })
    }

    /// Everything logged so far (the last `last` records, if given), merged by time.
    pub(crate) fn history(&mut self, last: Option<usize>) -> io::Result<Vec<Record>> {
        let mut per_source = Vec::new();
        for s in &mut self.sources {
            let mut records = Vec::new();
            for path in rotated_files(&self.dir, &s.name)? {
                let file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let mut reader = BufReader::with_capacity(256 << 10, file);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line)? == 0 {
                        break;
                    }
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    s.parser.line(&line, &mut records);
                }
                keep_wanted(&self.query, &mut records, last);
            }
            s.drain(&mut records)?;
            s.parser.flush(&mut records);
            keep_wanted(&self.query, &mut records, last);
            per_source.push(records);
        }
        let mut merged = merge(per_source);
        if let Some(n) = last {
            merged.drain(..merged.len().saturating_sub(n));
        }
        Ok(merged)
    }

    /// Records written since the last call (new services included), merged by time.
    pub(crate) fn poll(&mut self) -> io::Result<Vec<Record>> {
        for name in services(&self.dir)? {
            if self.query.wants_service(&name) && !self.sources.iter().any(|s| s.name == name) {
                let mut s = Source::new(&self.dir, &name);
                if s.file.is_none() {
                    continue;
                }
                // A log that appeared after we started: all of it is new.
                s.pos = 0;
                self.sources.push(s);
            }
        }
        let mut per_source = Vec::new();
        for s in &mut self.sources {
            let mut records = Vec::new();
            s.poll(&self.dir, &mut records)?;
            records.retain(|r| self.query.wants(r));
            per_source.push(records);
        }
        Ok(merge(per_source))
    }
}

/// `NAME.log.N` .. `NAME.log.1`, oldest first.
fn rotated_files(dir: &Path, name: &str) -> io::Result<Vec<PathBuf>> {
    let prefix = format!("{name}.log.");
    let mut numbers: Vec<usize> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let file = entry?.file_name();
        if let Some(n) = file.to_str().and_then(|f| f.strip_prefix(&prefix)).and_then(|n| n.parse().ok()) {
            numbers.push(n);
        }
    }
    numbers.sort_unstable_by(|a, b| b.cmp(a));
    Ok(numbers.into_iter().map(|n| rotated_path(dir, name, n)).collect())
}

/// Drops what the query does not want and, with `last`, all but the last records.
fn keep_wanted(query: &Query, records: &mut Vec<Record>, last: Option<usize>) {
    records.retain(|r| query.wants(r));
    if let Some(n) = last {
        records.drain(..records.len().saturating_sub(n));
    }
}

/// A k-way merge by time; ties and each source's own order kept.
fn merge(sources: Vec<Vec<Record>>) -> Vec<Record> {
    let total = sources.iter().map(Vec::len).sum();
    let mut queues: Vec<VecDeque<Record>> = sources.into_iter().map(VecDeque::from).collect();
    let mut heap = BinaryHeap::new();
    for (i, q) in queues.iter().enumerate() {
        if let Some(r) = q.front() {
            heap.push(Reverse((r.time.clone(), i)));
        }
    }
    let mut out = Vec::with_capacity(total);
    while let Some(Reverse((_, i))) = heap.pop() {
        out.extend(queues[i].pop_front());
        if let Some(r) = queues[i].front() {
            heap.push(Reverse((r.time.clone(), i)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(time: &str, service: &str) -> Record {
        Record { time: time.into(), service: service.into(), kind: Kind::Stdout, text: Vec::new(), end: End::Newline }
    }

    #[test]
    fn merge_orders_by_time_and_keeps_each_source_in_order() {
        let a = vec![rec("2026-01-01T00:00:01.000Z", "a"), rec("2026-01-01T00:00:03.000Z", "a")];
        let b = vec![rec("2026-01-01T00:00:02.000Z", "b"), rec("2026-01-01T00:00:03.000Z", "b")];
        let order: Vec<_> = merge(vec![a, b]).iter().map(|r| format!("{}{}", &r.time[17..19], r.service)).collect();
        assert_eq!(order, ["01a", "02b", "03a", "03b"]);
    }

    #[test]
    fn fragments_are_joined() {
        let mut p = Parser::new("s");
        let mut out = Vec::new();
        p.line(b"2026-01-01T00:00:01.000Z out+ hel", &mut out);
        p.line(b"2026-01-01T00:00:01.500Z err| an error", &mut out);
        p.line(b"2026-01-01T00:00:02.000Z out$ lo", &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[1].text.as_slice(), out[1].end, out[1].time.as_str()),
            (&b"hello"[..], End::Eof, "2026-01-01T00:00:01.000Z")
        );
    }

    #[test]
    fn since_takes_durations_and_times() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_107_688);
        assert_eq!(parse_since("10m", now).unwrap(), "2025-11-25T21:44:48.000Z");
        assert_eq!(parse_since("2026-11-25T21:54:48Z", now).unwrap(), "2026-11-25T21:54:48.000Z");
        assert!(parse_since("yesterday", now).is_err());
    }
}
