//! WAL checkpoints off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the commit that takes the WAL past 1,000 pages:
//! that commit — and with group commit every delivery waiting on it — also pays for copying the
//! pages into the database file and for its fsync. Here the writing connection only notes how
//! big the WAL is after each commit (`wal_hook`), and a thread with its own connection
//! checkpoints in `PASSIVE` mode, which never blocks a writer or a reader. Durability is
//! unchanged: a commit is durable once it is in the WAL (fsync'ed with `Durability::Full`).

use std::os::raw::c_int;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::hooks::Wal;

/// WAL pages after which a checkpoint is asked for (SQLite's own default threshold).
const PAGES: c_int = 1000;
/// A WAL that was reset is truncated to this size, so one burst does not keep a large file.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

enum Msg {
    Checkpoint,
    Stop,
}

/// The checkpoint thread of one database; stopped (after a last checkpoint) when dropped.
pub(crate) struct Checkpointer {
    tx: SyncSender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checkpointer")
    }
}

impl Checkpointer {
    /// Takes checkpoints of `path` away from `writer`, which must be a connection to it. `None`
    /// when no thread can be started: SQLite then keeps checkpointing in the commit, as usual.
    pub(crate) fn start(path: &Path, writer: &mut Connection) -> Result<Option<Self>, rusqlite::Error> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        writer.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        // One pending request is enough: the checkpoint it starts covers every commit before it.
        let (tx, rx) = sync_channel(1);
        let thread = match std::thread::Builder::new().name("cloudci-checkpoint".into()).spawn(move || run(conn, rx)) {
            Ok(thread) => thread,
            Err(e) => {
                tracing::warn!("cannot start the checkpoint thread ({e}); commits checkpoint themselves");
                return Ok(None);
            }
        };
        let nudge = tx.clone();
        // Replaces SQLite's automatic checkpoint (which is itself a WAL hook).
        writer.wal_hook(Some(move |_: &mut Wal, pages: c_int| {
            if pages >= PAGES {
                let _ = nudge.try_send(Msg::Checkpoint);
            }
            Ok(())
        }))?;
        Ok(Some(Self { tx, thread: Some(thread) }))
    }
}

fn run(conn: Connection, rx: Receiver<Msg>) {
    let mut failing = false;
    while let Ok(Msg::Checkpoint) = rx.recv() {
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match result {
            Ok((_, wal, copied)) => {
                if failing {
                    tracing::info!("WAL checkpoints work again");
                }
                failing = false;
                tracing::trace!(wal, copied, "checkpoint");
            }
            // A full disk, say: the WAL keeps everything meanwhile; the next request tries again.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("cannot checkpoint the event log's WAL: {e}");
            }
            Err(_) => {}
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::store::{Durability, NewDelivery, Store};

    #[test]
    fn the_wal_is_folded_into_the_database_by_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("events.db");
        let store = Store::open(&db, Durability::Normal).unwrap();
        let before = std::fs::metadata(&db).unwrap().len();
        // ~2 pages each: past the 1,000-page threshold a few times.
        for i in 0..1500 {
            let d = NewDelivery {
                dedup_key: format!("k{i}"),
                event: "Pipeline Hook".into(),
                headers: "{}".into(),
                body: vec![b'x'; 7000],
            };
            store.insert_delivery(&d).unwrap();
        }
        // Only a checkpoint copies pages into the database file; the commits no longer do.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&db).unwrap().len() < before + 5_000_000 {
            assert!(Instant::now() < deadline, "no checkpoint within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(store);
        // Closed cleanly: everything is there for the next start.
        let store = Store::open(&db, Durability::Normal).unwrap();
        let again = NewDelivery {
            dedup_key: "k1499".into(),
            event: "Pipeline Hook".into(),
            headers: "{}".into(),
            body: vec![],
        };
        assert!(matches!(store.insert_delivery(&again).unwrap(), crate::store::Stored::Duplicate(_)));
    }
}
