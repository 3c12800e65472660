//! Readiness probes: an HTTP GET answering 2xx, a TCP port accepting, or a process still alive
//! after a grace period. Hand-written: one request line does not earn an HTTP client crate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::spec::{Ready, Service};

const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

pub(crate) fn check(s: &Service, started: Instant) -> bool {
    match &s.ready {
        Ready::Started(grace) => started.elapsed() >= *grace,
        Ready::Tcp => s.addr().is_some_and(|a| reachable(&a)),
        Ready::Http(path) => s.addr().is_some_and(|a| http_ok(&a, path)),
    }
}

/// Whether something accepts connections at `host:port`.
pub(crate) fn reachable(addr: &str) -> bool {
    connect(addr).is_some()
}

fn connect(addr: &str) -> Option<TcpStream> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().ok()?.collect();
    addrs.iter().find_map(|a| TcpStream::connect_timeout(a, PROBE_TIMEOUT).ok())
}

fn http_ok(addr: &str, path: &str) -> bool {
    let Some(mut stream) = connect(addr) else { return false };
    let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(PROBE_TIMEOUT));
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    if write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    // "HTTP/1.x 2xx"
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && head[9] == b'2'
}
