//! Opening a SQLite file the way every store of cloudci needs it, shared by the event store and
//! the `cloudci` binary's build store.

use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};

/// Sets `busy` as the connection's busy timeout, then switches it to WAL.
///
/// The timeout comes first: the switch takes a lock another process (a running `cloudci build`,
/// `cloudci gc` beside the daemon) may hold. Turning a *new* file into WAL needs it alone, and
/// SQLite answers a second opener SQLITE_BUSY at once, without waiting for the timeout, so the
/// switch is retried within the same bound (CI saw two commands opening a new file at once fail).
pub fn use_wal(conn: &Connection, busy: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy)?;
    let deadline = Instant::now() + busy;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            done => return done,
        }
    }
}
