//! Resource exhaustion as a state, not a crash: a full disk, no file descriptors left, a database
//! that stays busy. Whoever meets one records it here ([`Health::set`]); whoever sees the
//! resource work again clears it ([`Health::clear`]). The local API shows the set
//! (`/v1/health`), the dashboard a banner, and a notification goes out once per episode.
//!
//! The receiver answers deliveries 503 with `Retry-After` meanwhile — never a 4xx, which GitLab
//! counts towards disabling the hook — and nothing it acknowledged is lost: a 2xx is still sent
//! only after the commit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

/// A resource the daemon ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// The state directory's filesystem is full (SQLite `SQLITE_FULL`, `ENOSPC`).
    DiskFull,
    /// The process or system has no file descriptors left (`EMFILE`, `ENFILE`).
    OutOfFiles,
    /// The event store stayed locked by another connection past the busy timeout.
    DatabaseBusy,
    /// The daemon's own log (stderr) cannot be written.
    LogUnwritable,
    /// The team relay the daemon takes its events from (`serve --relay`) cannot be reached, or
    /// will not open a session for it.
    RelayUnreachable,
}

impl Problem {
    /// Its name in JSON (`disk_full`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::DiskFull => "disk_full",
            Problem::OutOfFiles => "out_of_files",
            Problem::DatabaseBusy => "database_busy",
            Problem::LogUnwritable => "log_unwritable",
            Problem::RelayUnreachable => "relay_unreachable",
        }
    }

    /// What it means for a user, in one sentence.
    pub fn explain(self) -> &'static str {
        match self {
            Problem::DiskFull => {
                "disk full: the state directory's filesystem has no space left; webhook deliveries are answered 503 (GitLab retries them, and the catch-up fills the gap) until space returns"
            }
            Problem::OutOfFiles => {
                "out of file descriptors: connections wait or are answered 503 until some close (raise `ulimit -n`)"
            }
            Problem::DatabaseBusy => {
                "the event database is locked by another program: deliveries are answered 503 until it is free"
            }
            Problem::LogUnwritable => "the daemon's log cannot be written (its lines are dropped and counted)",
            Problem::RelayUnreachable => {
                "the team relay cannot be reached: no build events arrive meanwhile; retrying with backoff, and what happened is caught up from the relay's log once it answers"
            }
        }
    }

    /// Classifies an SQLite failure: `SQLITE_FULL` (SQLite turns a write's `ENOSPC` into it),
    /// `SQLITE_BUSY`/`SQLITE_LOCKED` (locked past the busy timeout), else `None`.
    pub fn of_sqlite(e: &rusqlite::Error) -> Option<Problem> {
        use rusqlite::ErrorCode;
        let rusqlite::Error::SqliteFailure(e, _) = e else { return None };
        match e.code {
            ErrorCode::DiskFull => Some(Problem::DiskFull),
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Some(Problem::DatabaseBusy),
            _ => None,
        }
    }

    /// Classifies an I/O error: `ENOSPC`/`EDQUOT` and `EMFILE`/`ENFILE`, else `None`.
    pub fn of_io(e: &std::io::Error) -> Option<Problem> {
        match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => return Some(Problem::DiskFull),
            _ => {}
        }
        // No stable `ErrorKind` for these; the numbers are Linux's and the BSDs' alike.
        match e.raw_os_error() {
            Some(23 | 24) => Some(Problem::OutOfFiles),
            _ => None,
        }
    }
}

/// One problem as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Which.
    pub kind: Problem,
    /// Since when (RFC 3339, UTC).
    pub since: String,
    /// What it means.
    pub message: &'static str,
    /// The error that showed it, as the system said it.
    pub detail: String,
    /// How many requests it has cost so far (answered 503 or kept waiting).
    pub refused: u64,
}

#[derive(Debug)]
struct Entry {
    since: chrono::DateTime<chrono::Utc>,
    detail: String,
    refused: u64,
}

/// The daemon's resource problems, shared by everything that meets them.
#[derive(Debug, Clone)]
pub struct Health {
    now: Arc<Mutex<BTreeMap<Problem, Entry>>>,
    /// Bumped on every change, for those who report changes (notifications).
    changes: Arc<watch::Sender<u64>>,
    /// Deliveries answered 503 because a resource ran out, since start.
    refused_deliveries: Arc<AtomicU64>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Healthy.
    pub fn new() -> Self {
        Self { now: Arc::default(), changes: Arc::new(watch::channel(0).0), refused_deliveries: Arc::default() }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<Problem, Entry>> {
        self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `problem` (seen through `detail`); counts one refused request when it is already
    /// set. Returns whether it is new (the caller logs it once, then).
    pub fn set(&self, problem: Problem, detail: impl std::fmt::Display) -> bool {
        let new = {
            let mut now = self.entries();
            match now.get_mut(&problem) {
                Some(e) => {
                    e.refused += 1;
                    false
                }
                None => {
                    now.insert(problem, Entry { since: chrono::Utc::now(), detail: detail.to_string(), refused: 1 });
                    true
                }
            }
        };
        if new {
            self.changes.send_modify(|v| *v += 1);
        }
        new
    }

    /// The resource works again. Returns whether `problem` was set.
    pub fn clear(&self, problem: Problem) -> bool {
        let was = self.entries().remove(&problem).is_some();
        if was {
            self.changes.send_modify(|v| *v += 1);
        }
        was
    }

    /// Whether `problem` is set now.
    pub fn has(&self, problem: Problem) -> bool {
        self.entries().contains_key(&problem)
    }

    /// Counts a delivery answered 503 for lack of a resource.
    pub fn refused_delivery(&self) {
        self.refused_deliveries.fetch_add(1, Ordering::Relaxed);
    }

    /// Deliveries answered 503 for lack of a resource since start.
    pub fn refused_deliveries(&self) -> u64 {
        self.refused_deliveries.load(Ordering::Relaxed)
    }

    /// The problems now, in a fixed order.
    pub fn reports(&self) -> Vec<Report> {
        self.entries()
            .iter()
            .map(|(kind, e)| Report {
                kind: *kind,
                since: e.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                message: kind.explain(),
                detail: e.detail.clone(),
                refused: e.refused,
            })
            .collect()
    }

    /// Changes as they happen: the value moves whenever a problem is set or cleared.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_new_once_counted_after_and_cleared() {
        let h = Health::new();
        let mut changes = h.changes();
        assert!(h.set(Problem::DiskFull, "database or disk is full"));
        assert!(!h.set(Problem::DiskFull, "again"));
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        let r = h.reports();
        assert_eq!((r.len(), r[0].kind, r[0].refused), (1, Problem::DiskFull, 2));
        assert_eq!(r[0].detail, "database or disk is full");
        assert!(!changes.has_changed().unwrap(), "a repeat is no change");
        assert!(h.clear(Problem::DiskFull));
        assert!(!h.clear(Problem::DiskFull));
        assert!(changes.has_changed().unwrap());
        assert!(h.reports().is_empty());
    }

    #[test]
    fn io_errors_are_classified() {
        let full = std::io::Error::from_raw_os_error(28);
        assert_eq!(Problem::of_io(&full), Some(Problem::DiskFull));
        assert_eq!(Problem::of_io(&std::io::Error::from_raw_os_error(24)), Some(Problem::OutOfFiles));
        assert_eq!(Problem::of_io(&std::io::Error::other("x")), None);
    }
}
