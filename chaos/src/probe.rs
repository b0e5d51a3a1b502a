//! What the soak reads about a process and its state directory: resident memory
//! (`/proc/PID/status` `VmRSS`), open file descriptors (the entries of `/proc/PID/fd`), and bytes
//! on disk. Linux only, like the daemon's other measurements here.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Resident set size in KiB, if the process is there.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Open file descriptors, if the process is there.
pub(crate) fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Open file descriptors by what they are: `tcp:<name>` for a connection to or from a loopback
/// port named in `ports` (listening sockets are `listen:<name>`), `tcp:other`, `socket` (not
/// TCP), `file`, `pipe`, `anon` (epoll, eventfd, timerfd).
pub(crate) fn fd_kinds(pid: u32, ports: &[(u16, &str)]) -> BTreeMap<String, u64> {
    let name = |p: u16| ports.iter().find(|(q, _)| *q == p).map(|(_, n)| *n);
    let mut tcp: HashMap<String, String> = HashMap::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state), Some(inode)) =
                (cols.get(1), cols.get(2), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let port = |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            // State 0A is LISTEN.
            let kind = if *state == "0A" {
                port(local).and_then(name).map_or("listen:other".to_owned(), |n| format!("listen:{n}"))
            } else {
                [port(local), port(remote)]
                    .into_iter()
                    .flatten()
                    .find_map(name)
                    .map_or("tcp:other".to_owned(), |n| format!("tcp:{n}"))
                    // Half-closed ones say so: the peer left and this process did not close yet.
                    + match *state {
                        "08" => " (close-wait)",
                        "01" => "",
                        _ => " (closing)",
                    }
            };
            tcp.insert((*inode).to_owned(), kind);
        }
    }
    let mut kinds = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return kinds };
    for e in entries.flatten() {
        let target = std::fs::read_link(e.path()).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
        let kind = if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
            tcp.get(inode).cloned().unwrap_or_else(|| "socket".to_owned())
        } else if target.starts_with("pipe:") {
            "pipe".to_owned()
        } else if target.starts_with("anon_inode:") {
            "anon".to_owned()
        } else {
            "file".to_owned()
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// Bytes of the files directly in `dir` whose names start with `prefix` (a database and its
/// `-wal` / `-shm`).
pub(crate) fn files_bytes(dir: &Path, prefix: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Bytes of every file under `dir`, recursively.
pub(crate) fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_measured() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|kb| kb > 0));
        let before = open_fds(me).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("events.db")).unwrap();
        assert!(open_fds(me).unwrap() > before);
        drop(f);
        std::fs::write(dir.path().join("events.db-wal"), b"12345").unwrap();
        std::fs::create_dir(dir.path().join("runs")).unwrap();
        std::fs::write(dir.path().join("runs/log"), b"123").unwrap();
        assert_eq!(files_bytes(dir.path(), "events.db"), 5);
        assert_eq!(tree_bytes(dir.path()), 8);
        assert_eq!(rss_kib(u32::MAX), None);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let kinds = fd_kinds(me, &[(port, "api")]);
        assert_eq!(kinds.get("listen:api"), Some(&1), "{kinds:?}");
        assert_eq!(kinds.get("tcp:api"), Some(&2), "{kinds:?}");
    }
}
