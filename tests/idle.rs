//! Idle connections cannot hold file descriptors forever: a connection to either listener that
//! sends nothing, sends half a request head, or stays open after its answer (keep-alive) is
//! closed by `cloudci serve` once it has waited `server::IDLE` (10 s) for a head, and the
//! daemon gives their descriptors back (its end of each, found through /proc). Real daemon,
//! raw TCP on loopback.

mod common;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const IDLE: Duration = cloudci::server::IDLE;

/// The socket inodes the daemon `pid` has open.
fn daemon_sockets(pid: u32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return HashSet::new() };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

/// The inode of the daemon's end of each of `conns` (from /proc/net/tcp: local port the
/// listener's, remote port the client's), once the kernel has it.
fn server_ends(conns: &[(&str, TcpStream)]) -> HashSet<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap_or(""), 16).ok();
    let mut ends = HashSet::new();
    for (_, c) in conns {
        let (client, server) = (c.local_addr().unwrap().port(), c.peer_addr().unwrap().port());
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && port(f[1]) == Some(server) && port(f[2]) == Some(client) {
                ends.extend(f[9].parse::<u64>().ok().filter(|i| *i != 0));
            }
        }
    }
    ends
}

/// Waits (polling /proc, at most `within`) until `done` holds of how many of `ends` the daemon
/// holds; returns that number.
fn wait_held(pid: u32, ends: &HashSet<u64>, within: Duration, done: impl Fn(usize) -> bool) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n = daemon_sockets(pid).intersection(ends).count();
        if done(n) || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads until the peer closes; whatever it sent first (a 408, say) is fine. `Err` when the
/// connection is still open after `within`.
fn read_to_close(c: &mut TcpStream, within: Duration) -> Result<Vec<u8>, String> {
    c.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(got),
            Err(e) => return Err(format!("still open: {e}")),
        }
    }
}

/// One request on a kept-alive connection, its answer read whole (by its Content-Length).
fn get(c: &mut TcpStream, port: u16, path: &str) -> String {
    write!(c, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .expect("a Content-Length");
            if got.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

#[test]
fn silent_half_sent_and_kept_alive_connections_are_closed_after_the_idle_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (config, hook_port, api_port) = write_config(dir.path(), "", 30);
    let daemon = serve(&config, "http://127.0.0.1:9", "x", &["--no-hooks"]);
    let pid = daemon.0.id();

    let mut conns = Vec::new();
    for port in [hook_port, api_port] {
        for _ in 0..4 {
            conns.push(("silent", TcpStream::connect(("127.0.0.1", port)).unwrap()));
        }
        let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(half, "POST /hooks/x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Le").unwrap();
        conns.push(("half a head", half));
    }
    let mut kept = TcpStream::connect(("127.0.0.1", api_port)).unwrap();
    let page = get(&mut kept, api_port, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    // Kept alive: a second request on it is answered too.
    assert!(get(&mut kept, api_port, "/").starts_with("HTTP/1.1 200"));
    let opened = Instant::now();
    conns.push(("kept alive after its answers", kept));
    let n = conns.len();
    // The daemon took them all: it holds the server end of each.
    let ends = server_ends(&conns);
    assert_eq!(ends.len(), n, "server ends found in /proc/net/tcp");
    let held = wait_held(pid, &ends, Duration::from_secs(5), |h| h == n);
    assert_eq!(held, n, "connections the daemon holds");

    for (what, c) in &mut conns {
        let closed = read_to_close(c, IDLE + Duration::from_secs(15));
        assert!(closed.is_ok(), "{what}: {closed:?} after {:?}", opened.elapsed());
    }
    let took = opened.elapsed();
    // Closed by the idle limit, not at once (a few hundred ms of slack for the silent ones,
    // which connected just before the kept-alive one).
    assert!(took + Duration::from_millis(500) >= IDLE, "closed after {took:?}");
    // Every one of their descriptors is given back.
    let left = wait_held(pid, &ends, Duration::from_secs(5), |h| h == 0);
    assert_eq!(left, 0, "descriptors still held for closed connections");
    println!(
        "{n} idle connections held by the daemon, all closed {took:?} after the last one connected, 0 descriptors left"
    );
    // And the listeners still answer.
    let mut fresh = TcpStream::connect(("127.0.0.1", api_port)).unwrap();
    assert!(get(&mut fresh, api_port, "/").starts_with("HTTP/1.1 200"));
    drop(conns);
}
