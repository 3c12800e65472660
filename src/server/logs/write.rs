//! Capturing a service's output into its log: a thread per stream reads its pipe in large
//! chunks, stamps every line of a chunk with the one time that chunk was read, and appends the
//! whole chunk with one write under the log's lock, so the file holds both streams in arrival
//! order at a few syscalls per 64 KiB, not per line. Before each chunk the path is checked
//! against the open file, so a log deleted or moved away is recreated at the next line; the file
//! rotates by size (`NAME.log.1` .. `NAME.log.KEEP`) only between chunks, so no line is split.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::{End, Kind, MAX_LINE, Settings, Stream, encode, human, log_path, rotated_path, stamp, use_color};

/// How long an unterminated line waits for its newline before it is written as a fragment
/// (a prompt, a progress dot): long enough to keep a line whole across a pipe's short writes.
const IDLE_FLUSH: Duration = Duration::from_millis(200);
/// Pipe reads: large, so a chatty service costs a few syscalls per 64 KiB.
const READ_SIZE: usize = 256 << 10;

/// Echo target for `stigmer server --foreground`: every line is also printed on stdout in the
/// format `stigmer server logs` prints.
#[derive(Clone)]
pub(crate) struct Echo {
    out: Arc<Mutex<io::Stdout>>,
    color: bool,
}

impl Echo {
    pub(crate) fn stdout() -> Echo {
        Echo { out: Arc::new(Mutex::new(io::stdout())), color: use_color() }
    }
}

/// Where a service's (or the supervisor's) log lines go: `$STIGMER_HOME/logs/NAME.log`, both
/// streams and the supervisor's events in arrival order. Shared by the capture threads and the
/// supervisor; one per path in a process, so a restarted service's new capture threads and the
/// old ones still draining write through the same lock.
pub(crate) struct ServiceLog {
    name: String,
    dir: PathBuf,
    path: PathBuf,
    settings: Settings,
    sink: Mutex<Sink>,
    echo: Option<Echo>,
}

struct Sink {
    file: Option<File>,
    dev: u64,
    ino: u64,
    size: u64,
}

/// A log file opened for appending (0600), never through a symlink: one planted where a log
/// goes is refused, not written through.
pub(crate) fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}

fn open_file(path: &Path) -> io::Result<(File, u64, u64, u64)> {
    let file = open_append(path)?;
    let meta = file.metadata()?;
    Ok((file, meta.dev(), meta.ino(), meta.len()))
}

impl Sink {
    fn reopen(&mut self, log: &ServiceLog) {
        (self.file, self.size) = (None, 0);
        if let Ok((file, dev, ino, size)) = open_file(&log.path) {
            *self = Sink { file: Some(file), dev, ino, size };
        }
    }

    /// Is the open file still the one at the path (not deleted, moved away or replaced)?
    fn current(&self, log: &ServiceLog) -> bool {
        self.file.is_some() && fs::symlink_metadata(&log.path).is_ok_and(|m| m.ino() == self.ino && m.dev() == self.dev)
    }

    fn rotate(&mut self, log: &ServiceLog) {
        let keep = log.settings.keep;
        for n in (1..keep).rev() {
            let _ = fs::rename(rotated_path(&log.dir, &log.name, n), rotated_path(&log.dir, &log.name, n + 1));
        }
        let _ = if keep == 0 {
            fs::remove_file(&log.path)
        } else {
            fs::rename(&log.path, rotated_path(&log.dir, &log.name, 1))
        };
        self.reopen(log);
    }

    /// Writes whole records, rotating between two records when the file would outgrow
    /// `max_size` (a file holds at least one record, however long).
    fn write(&mut self, log: &ServiceLog, mut data: &[u8]) {
        if !self.current(log) {
            self.reopen(log);
        }
        while !data.is_empty() && self.size + data.len() as u64 > log.settings.max_size {
            let room = log.settings.max_size.saturating_sub(self.size).min(data.len() as u64) as usize;
            let end = match memchr::memrchr(b'\n', &data[..room]) {
                Some(end) => end,
                // One record longer than max_size: alone in a file of its own.
                None if self.size == 0 => memchr::memchr(b'\n', data).unwrap_or(data.len() - 1),
                None => {
                    self.rotate(log);
                    continue;
                }
            };
            self.write_all(log, &data[..=end]);
            data = &data[end + 1..];
            if !data.is_empty() {
                self.rotate(log);
            }
        }
        if !data.is_empty() {
            self.write_all(log, data);
        }
    }

    fn write_all(&mut self, log: &ServiceLog, data: &[u8]) {
        for _ in 0..2 {
            if let Some(file) = &mut self.file
                && file.write_all(data).is_ok()
            {
                self.size += data.len() as u64;
                return;
            }
            // A failed write (disk full, a file gone bad): one more try on a fresh file.
            self.reopen(log);
        }
    }
}

impl ServiceLog {
    /// Opens (creates) the log before the child is spawned; an error here means the service is
    /// not started. `echo`: in `--foreground`, every line is also printed on stdout.
    pub(crate) fn open(dir: &Path, name: &str, settings: Settings, echo: Option<Echo>) -> io::Result<Arc<ServiceLog>> {
        static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<ServiceLog>>>> = OnceLock::new();
        let path = log_path(dir, name);
        let mut open = OPEN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = open.get(&path).and_then(Weak::upgrade) {
            return Ok(log);
        }
        let (file, dev, ino, size) = open_file(&path)?;
        let log = Arc::new(ServiceLog {
            name: name.to_owned(),
            dir: dir.to_owned(),
            path: path.clone(),
            settings,
            sink: Mutex::new(Sink { file: Some(file), dev, ino, size }),
            echo,
        });
        open.retain(|_, log| log.strong_count() > 0);
        open.insert(path, Arc::downgrade(&log));
        Ok(log)
    }

    /// Appends records (and their echo) as one write, so the file keeps arrival order.
    fn append(&self, data: &[u8], echo: &[u8]) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        sink.write(self, data);
        if let Some(e) = &self.echo {
            let mut out = e.out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = out.write_all(echo).and_then(|()| out.flush());
        }
    }

    /// A supervisor event line for this service ("started (pid 123)", "exited with code 1", ...).
    pub(crate) fn event(&self, text: &str) {
        let time = stamp(SystemTime::now());
        let text = text.replace('\n', " ");
        let mut data = Vec::new();
        encode(&mut data, &time, Kind::Event, End::Newline, text.as_bytes());
        let mut echo = Vec::new();
        if let Some(e) = &self.echo {
            human(&mut echo, &time, &self.name, Kind::Event, text.as_bytes(), e.color);
        }
        self.append(&data, &echo);
    }

    /// Starts a thread that reads `pipe` until EOF, stamping each line with the time it was read.
    pub(crate) fn capture(self: &Arc<Self>, stream: Stream, pipe: OwnedFd) -> JoinHandle<()> {
        let log = self.clone();
        let tag = if stream == Stream::Stdout { "out" } else { "err" };
        std::thread::Builder::new()
            .name(format!("log {} {tag}", self.name))
            .spawn(move || log.pump(stream.into(), pipe))
            .expect("cannot start a log capture thread")
    }

    fn pump(&self, kind: Kind, pipe: OwnedFd) {
        let mut buf = vec![0u8; READ_SIZE];
        let mut carry: Vec<u8> = Vec::new();
        let mut data = Vec::with_capacity(READ_SIZE + READ_SIZE / 2);
        let mut echo = Vec::new();
        let colored = self.echo.as_ref().map(|e| e.color);
        // The last record written for this stream was a `+` fragment still to be closed.
        let mut open_fragment = false;
        let emit = |data: &mut Vec<u8>, echo: &mut Vec<u8>, time: &[u8; 24], end: End, text: &[u8]| {
            encode(data, time, kind, end, text);
            if let Some(colored) = colored {
                human(echo, time, &self.name, kind, text, colored);
            }
        };
        let mut file = File::from(pipe);
        loop {
            data.clear();
            echo.clear();
            if !carry.is_empty() {
                let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
                let idle = PollTimeout::try_from(IDLE_FLUSH).unwrap_or(PollTimeout::MAX);
                if matches!(poll(&mut fds, idle), Ok(0)) {
                    let time = stamp(SystemTime::now());
                    emit(&mut data, &mut echo, &time, End::Continued, &carry);
                    carry.clear();
                    open_fragment = true;
                    self.append(&data, &echo);
                    continue;
                }
            }
            let n = match file.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            let time = stamp(SystemTime::now());
            if n == 0 {
                if !carry.is_empty() || open_fragment {
                    emit(&mut data, &mut echo, &time, End::Eof, &carry);
                    self.append(&data, &echo);
                }
                return;
            }
            let chunk = &buf[..n];
            let mut start = 0;
            for nl in memchr::memchr_iter(b'\n', chunk) {
                if carry.is_empty() {
                    emit(&mut data, &mut echo, &time, End::Newline, &chunk[start..nl]);
                } else {
                    carry.extend_from_slice(&chunk[start..nl]);
                    emit(&mut data, &mut echo, &time, End::Newline, &carry);
                    carry.clear();
                }
                start = nl + 1;
                open_fragment = false;
            }
            carry.extend_from_slice(&chunk[start..]);
            while carry.len() > MAX_LINE {
                emit(&mut data, &mut echo, &time, End::Continued, &carry[..MAX_LINE]);
                carry.drain(..MAX_LINE);
                open_fragment = true;
            }
            if !data.is_empty() {
                self.append(&data, &echo);
            }
        }
    }

    /// Points this process's stderr (fd 2, where tracing writes) into a pipe captured by this
    /// log, so the supervisor's own diagnostics are stamped and rotated like any service's.
    /// At exit, fd 2 is closed and what is still in the pipe is written before the process ends.
    pub(crate) fn capture_own_stderr(self: &Arc<Self>) -> io::Result<()> {
        static DONE: Mutex<Option<mpsc::Receiver<()>>> = Mutex::new(None);
        extern "C" fn drain_at_exit() {
            let Ok(null) = File::open("/dev/null") else { return };
            // SAFETY: dup2 onto fd 2 closes our pipe's last write end; no memory is involved.
            unsafe { libc::dup2(null.as_raw_fd(), 2) };
            if let Some(done) = DONE.lock().ok().and_then(|mut d| d.take()) {
                // A child that inherited fd 2 may hold the pipe open: do not wait for it forever.
                let _ = done.recv_timeout(Duration::from_secs(2));
            }
        }
        let (read, write) = nix::unistd::pipe()?;
        // SAFETY: dup2 has no memory-safety preconditions; fd 2 now refers to the pipe.
        if unsafe { libc::dup2(write.as_raw_fd(), 2) } < 0 {
            return Err(io::Error::last_os_error());
        }
        drop(write);
        let (tx, rx) = mpsc::channel();
        *DONE.lock().unwrap_or_else(|e| e.into_inner()) = Some(rx);
        let log = self.clone();
        std::thread::Builder::new().name("log supervisor err".into()).spawn(move || {
            log.pump(Kind::Stderr, read);
            let _ = tx.send(());
        })?;
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(drain_at_exit) };
        Ok(())
    }
}
