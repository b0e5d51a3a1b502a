//! WAL checkpoints off the commit path, and a WAL file grown ahead of the commits.
//!
//! SQLite's automatic checkpoint runs inside the commit that takes the WAL past 1,000 pages:
//! that commit — and with group commit every delivery waiting on it — also pays for copying the
//! pages into the database file and for its fsync. Here the writing connection only notes how
//! big the WAL is after each commit (`wal_hook`), and a thread with its own connection
//! checkpoints in `PASSIVE` mode, which never blocks a writer or a reader. Durability is
//! unchanged: a commit is durable once it is in the WAL (fsync'ed with `Durability::Full`).
//!
//! # Growing the WAL ahead (`Durability::Full`)
//! A commit that extends the WAL file pays, in its fsync, for allocating blocks and journaling
//! the new size (ext4 here: ~5 ms at p90, against ~0.2 ms for an fsync over blocks already
//! written). A fresh daemon's WAL grew with every commit of its first burst (to ~38 MB in 10 s at
//! 32 connections, as checkpoints lag behind a busy writer), so that burst ran at about half the
//! rate of the next one, when SQLite writes over the file from its start again. So the thread
//! extends the file with zeros: to [`WAL_START`] when the store opens, then by [`WAL_STEP`]
//! whenever the commits come within [`WAL_AHEAD`] of its end, up to [`WAL_SIZE_LIMIT`] (the size
//! SQLite keeps after a reset anyway). Zeros past the last frame are harmless: a frame counts
//! only with the header's salts and a running checksum, so recovery stops at the first zero
//! frame (SQLite itself leaves stale frames there after a reset). Each chunk is written only past
//! the file's end, holding the writing connection (so no commit of the daemon runs meanwhile)
//! in a write transaction of its own (`BEGIN IMMEDIATE`: nor one of another process). Not from a
//! connection of its own: a transaction that reads before it writes (the ingest's) gets
//! `SQLITE_BUSY` at once, not after the busy timeout, when it meets another writer. Nothing is grown when the file system has less than [`KEEP_FREE`] left: the
//! space is then better left to the commits themselves.

use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::hooks::Wal;

/// WAL pages after which a checkpoint is asked for (SQLite's own default threshold).
const PAGES: c_int = 1000;
/// A WAL that was reset is truncated to this size, so one burst does not keep a large file.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
/// The WAL file's size once the store is open (`Durability::Full`): ~2,000 frames, twice the
/// checkpoint threshold.
pub(crate) const WAL_START: u64 = 8 * 1024 * 1024;
/// How much is added when the commits come close to the end.
const WAL_STEP: u64 = 8 * 1024 * 1024;
/// How close "close to the end" is.
const WAL_AHEAD: u64 = 4 * 1024 * 1024;
/// Zeros written per write transaction: a commit waits for one chunk at most.
const CHUNK: u64 = 1024 * 1024;
/// Free space below which the WAL is not grown ahead.
const KEEP_FREE: u64 = 512 * 1024 * 1024;

enum Msg {
    Checkpoint,
    Grow,
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
    /// With `grow_ahead`, the thread also grows the WAL file ahead of the commits.
    pub(crate) fn start(
        path: &Path,
        writer: &Arc<Mutex<Connection>>,
        grow_ahead: bool,
    ) -> Result<Option<Self>, rusqlite::Error> {
        let shared = writer.clone();
        let mut writer = writer.lock().unwrap_or_else(|e| e.into_inner());
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        writer.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        let frame: u64 = writer.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))?.unsigned_abs() + 24;
        // The WAL file's size as the thread last saw it; never nudged while unknown (`MAX`).
        let known = Arc::new(AtomicU64::new(u64::MAX));
        // One request of each kind pending is enough: the checkpoint or growth it starts covers
        // every commit before it.
        let (tx, rx) = sync_channel(2);
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let ahead = grow_ahead.then(|| Ahead { wal: PathBuf::from(wal), known: known.clone(), writer: shared });
        let thread = match std::thread::Builder::new().name("cloudci-checkpoint".into()).spawn(move || {
            run(&conn, &rx, ahead.as_ref());
            // The writer first: the last connection to close folds the WAL into the database.
            drop(ahead);
            drop(conn);
        }) {
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
            if u64::from(pages.unsigned_abs()) * frame + WAL_AHEAD > known.load(Ordering::Relaxed) {
                let _ = nudge.try_send(Msg::Grow);
            }
            Ok(())
        }))?;
        Ok(Some(Self { tx, thread: Some(thread) }))
    }
}

/// What the thread needs to grow the WAL ahead.
struct Ahead {
    wal: PathBuf,
    /// The file's size as last seen, for the hook.
    known: Arc<AtomicU64>,
    /// The store's writing connection.
    writer: Arc<Mutex<Connection>>,
}

/// Why the WAL could not be grown ahead (only logged: commits then grow it as before).
#[derive(Debug, thiserror::Error)]
enum GrowError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Ahead {
    /// Extends the WAL file with zeros up to `size` (or the limit), a chunk per write
    /// transaction. Returns early, with `false`, when the store closes.
    fn grow(&self, size: u64, rx: &Receiver<Msg>) -> Result<bool, GrowError> {
        use std::os::unix::fs::FileExt;
        let size = size.min(WAL_SIZE_LIMIT.unsigned_abs());
        // No `create`: SQLite made the file when the store opened; one that is gone is not ours.
        let file = std::fs::OpenOptions::new().write(true).open(&self.wal)?;
        let zeros = vec![0u8; CHUNK as usize];
        loop {
            // A checkpoint asked for meanwhile is asked again by the next commit.
            if let Ok(Msg::Stop) = rx.try_recv() {
                return Ok(false);
            }
            let free = rustix::fs::fstatvfs(&file).map_err(std::io::Error::from)?;
            if free.f_bavail.saturating_mul(free.f_frsize) < KEEP_FREE + CHUNK {
                self.known.store(u64::MAX, Ordering::Relaxed);
                return Ok(true);
            }
            // Holding the writer and the write lock: no frame is appended while the end is read
            // and written past.
            let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let written = (|| {
                let end = file.metadata()?.len();
                if end >= size {
                    return Ok(None);
                }
                let n = CHUNK.min(size - end);
                file.write_all_at(&zeros[..n as usize], end)?;
                file.sync_data()?;
                Ok::<_, std::io::Error>(Some(end + n))
            })();
            conn.execute_batch("COMMIT")?;
            drop(conn);
            match written? {
                Some(end) => self.known.store(end, Ordering::Relaxed),
                None => {
                    // At the limit there is nothing more to grow: stop the hook's nudges.
                    let end = file.metadata()?.len();
                    let at_limit = end >= WAL_SIZE_LIMIT.unsigned_abs();
                    self.known.store(if at_limit { u64::MAX } else { end }, Ordering::Relaxed);
                    return Ok(true);
                }
            }
        }
    }

    /// Grows by a step from the file's current size.
    fn step(&self, rx: &Receiver<Msg>) -> Result<bool, GrowError> {
        let end = std::fs::metadata(&self.wal)?.len();
        self.grow(end.max(WAL_START) + WAL_STEP, rx)
    }
}

fn run(conn: &Connection, rx: &Receiver<Msg>, ahead: Option<&Ahead>) {
    let grown = |result: Result<bool, GrowError>| match result {
        Ok(going_on) => going_on,
        Err(e) => {
            tracing::debug!("cannot grow the WAL file ahead ({e}); commits grow it themselves");
            true
        }
    };
    if let Some(ahead) = ahead
        && !grown(ahead.grow(WAL_START, rx))
    {
        return;
    }
    let mut failing = false;
    loop {
        match rx.recv() {
            Ok(Msg::Checkpoint) => {}
            Ok(Msg::Grow) => {
                if let Some(ahead) = ahead
                    && !grown(ahead.step(rx))
                {
                    return;
                }
                continue;
            }
            Ok(Msg::Stop) | Err(_) => return,
        }
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

    /// 7,000 bytes compression cannot shrink (bodies are kept compressed: a run of one byte would
    /// take a few dozen bytes).
    fn noise(seed: usize) -> Vec<u8> {
        crate::store::noise(7000, seed as u64)
    }

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
                body: noise(i),
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

    #[test]
    fn a_full_store_grows_its_wal_ahead_and_a_crash_keeps_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("events.db");
        let wal = dir.path().join("events.db-wal");
        let delivery = |i: usize| NewDelivery {
            dedup_key: format!("k{i}"),
            event: "Pipeline Hook".into(),
            headers: "{}".into(),
            body: noise(i),
        };
        let store = Store::open(&db, Durability::Full).unwrap();
        // Commits while the thread grows the file, and after: none may be lost to the zeros.
        for i in 0..50 {
            store.insert_delivery(&delivery(i)).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&wal).unwrap().len() < super::WAL_START {
            assert!(Instant::now() < deadline, "the WAL was not grown within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        for i in 50..100 {
            store.insert_delivery(&delivery(i)).unwrap();
        }
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), super::WAL_START, "commits wrote over the zeros");
        // A crash: the files as they are on disk, without the shared-memory index, so SQLite
        // recovers from the WAL's frames alone.
        let crashed = tempfile::tempdir().unwrap();
        std::fs::copy(&db, crashed.path().join("events.db")).unwrap();
        std::fs::copy(&wal, crashed.path().join("events.db-wal")).unwrap();
        std::mem::forget(store);
        let store = Store::open(&crashed.path().join("events.db"), Durability::Full).unwrap();
        for i in 0..100 {
            assert!(store.delivery(&format!("k{i}")).unwrap().is_some(), "delivery {i} lost");
        }
    }
}
