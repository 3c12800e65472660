//! Service logs: `$STIGMER_HOME/logs/NAME.log` (stdout) and `NAME.err.log` (stderr), appended
//! across restarts and rotated by size (NAME.log.1 .. .3), plus reading them back for
//! `stigmer server logs`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROTATE_AT: u64 = 10 << 20;
const KEEP: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

pub(crate) fn log_path(dir: &Path, service: &str, stream: Stream) -> PathBuf {
    dir.join(match stream {
        Stream::Stdout => format!("{service}.log"),
        Stream::Stderr => format!("{service}.err.log"),
    })
}

/// An append-only log file that rotates itself when it grows past ROTATE_AT.
pub(crate) struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
}

impl LogFile {
    pub(crate) fn open(path: PathBuf) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self { path, file, size })
    }

    pub(crate) fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size + line.len() as u64 > ROTATE_AT && self.size > 0 {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..KEEP).rev() {
            let _ = fs::rename(numbered(n), numbered(n + 1));
        }
        fs::rename(&self.path, numbered(1))?;
        *self = Self::open(self.path.clone())?;
        Ok(())
    }
}

/// Where a service's output goes besides its file: the terminal of `server --foreground`.
#[derive(Clone)]
pub(crate) struct Echo {
    pub(crate) prefix: String,
    pub(crate) out: Arc<Mutex<io::Stdout>>,
}

/// Copies a child's pipe into its log, line by line, until the child closes it.
pub(crate) fn pump(pipe: impl Read + Send + 'static, mut log: LogFile, echo: Option<Echo>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            let _ = log.write_line(&line);
            if let Some(echo) = &echo
                && let Ok(mut out) = echo.out.lock()
            {
                let _ = out.write_all(echo.prefix.as_bytes());
                let _ = out.write_all(&line);
                let _ = out.flush();
            }
        }
    });
}

/// The last `n` lines of a file (reads only its tail).
pub(crate) fn tail(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut start = len;
    let mut buf = Vec::new();
    while start > 0 && buf.iter().filter(|&&b| b == b'\n').count() <= n {
        let step = start.min(64 << 10);
        start -= step;
        file.seek(SeekFrom::Start(start))?;
        let mut chunk = vec![0; step as usize];
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    Ok(lines[lines.len().saturating_sub(n)..].to_vec())
}

/// Prints what is appended to each file from now on, following rotation, until killed.
pub(crate) fn follow(files: Vec<(String, PathBuf)>, out: &mut impl Write) -> io::Result<()> {
    struct Followed {
        prefix: String,
        path: PathBuf,
        ino: u64,
        pos: u64,
        partial: Vec<u8>,
    }
    let mut followed: Vec<Followed> = files
        .into_iter()
        .map(|(prefix, path)| {
            let meta = fs::metadata(&path).ok();
            Followed {
                prefix,
                ino: meta.as_ref().map_or(0, |m| m.ino()),
                pos: meta.map_or(0, |m| m.len()),
                path,
                partial: Vec::new(),
            }
        })
        .collect();
    loop {
        for f in &mut followed {
            let Ok(meta) = fs::metadata(&f.path) else { continue };
            if meta.ino() != f.ino || meta.len() < f.pos {
                (f.ino, f.pos) = (meta.ino(), 0);
            }
            if meta.len() == f.pos {
                continue;
            }
            let mut file = File::open(&f.path)?;
            file.seek(SeekFrom::Start(f.pos))?;
            let mut chunk = Vec::new();
            file.read_to_end(&mut chunk)?;
            f.pos += chunk.len() as u64;
            f.partial.extend_from_slice(&chunk);
            while let Some(end) = f.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = f.partial.drain(..=end).collect();
                out.write_all(f.prefix.as_bytes())?;
                out.write_all(&line)?;
            }
        }
        out.flush()?;
        std::thread::sleep(Duration::from_millis(200));
    }
}
