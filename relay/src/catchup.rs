//! The reconciler's side of [`PgLog`] ([`ReconcileLog`]): the same reconciler as the daemon's
//! (`cloudci-webhook`'s `Reconciler`) runs over the relay's log, reading what GitLab's API says
//! of silent pipelines and of what no delivery announced, and logging it through the same state
//! machine. Observations from the API are logged like a delivery's: under the log's head, so
//! their seqs stay in commit order too.
//!
//! [`Leader`] decides which instance runs it: the one that holds a PostgreSQL session-level
//! advisory lock (why a leader, and not every instance, in ARCHITECTURE.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cloudci_gitlab::types::Status;
use cloudci_webhook::{ActivePipeline, BuildEvent, Observation, ReconcileLog, StoreError, apply};
use tokio::sync::watch;

use crate::pg::{Conn, PgLog, finish, lock_head};
use crate::tables::Tables;

/// What a pipeline still unsettled looks like (as SQLite's store has it).
const UNSETTLED: &str =
    "'created','waiting_for_resource','preparing','waiting_for_callback','pending','running','canceling'";

impl ReconcileLog for PgLog {
    fn apply_observations(&self, observations: Vec<Observation>) -> Result<Vec<BuildEvent>, StoreError> {
        self.write(|Conn { client, stmts }| {
            let mut tx = client.transaction()?;
            let first = lock_head(stmts, &mut tx)?;
            let mut t = Tables::new(&mut tx, stmts, first);
            let events = apply(&mut t, None, observations)?;
            finish(&mut t, first)?;
            tx.commit()?;
            Ok(events)
        })
    }

    fn active_pipelines(&self) -> Result<Vec<ActivePipeline>, StoreError> {
        let sql = format!(
            "SELECT project_id, project, id, status, last_heard FROM pipelines p
             WHERE status NOT IN ('success','failed','canceled','skipped')
                OR EXISTS (SELECT 1 FROM jobs j WHERE j.pipeline_id = p.id AND j.status IN ({UNSETTLED}))
                OR reread
             ORDER BY id"
        );
        self.read(|c| {
            let rows = c.client.query(&sql, &[])?;
            Ok(rows
                .iter()
                .map(|r| ActivePipeline {
                    project_id: r.get::<_, i64>(0) as u64,
                    project: r.get(1),
                    pipeline_id: r.get::<_, i64>(2) as u64,
                    status: Status::parse(r.get(3)),
                    last_heard: r.get(4),
                })
                .collect())
        })
    }

    fn mark_reread(&self, pipeline_id: u64) -> Result<(), StoreError> {
        self.write(|c| {
            c.client.execute(
                "UPDATE pipelines SET reread = false WHERE id = $1 AND status IN ('success','failed','canceled','skipped')",
                &[&(pipeline_id as i64)],
            )?;
            Ok(())
        })
    }

    fn pipeline_statuses(&self, ids: &[u64]) -> Result<HashMap<u64, Status>, StoreError> {
        let ids: Vec<i64> = ids.iter().map(|i| *i as i64).collect();
        self.read(|c| {
            let rows = c.client.query("SELECT id, status FROM pipelines WHERE id = ANY($1)", &[&ids])?;
            Ok(rows.iter().map(|r| (r.get::<_, i64>(0) as u64, Status::parse(r.get(1)))).collect())
        })
    }

    fn catch_up_cursor(&self, project_id: u64) -> Result<Option<i64>, StoreError> {
        self.read(|c| {
            let row =
                c.client.query_opt("SELECT unix_secs FROM cursors WHERE project_id = $1", &[&(project_id as i64)])?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn set_catch_up_cursor(&self, project_id: u64, unix_secs: i64) -> Result<(), StoreError> {
        self.write(|c| {
            c.client.execute(
                "INSERT INTO cursors (project_id, unix_secs) VALUES ($1, $2)
                 ON CONFLICT (project_id) DO UPDATE SET unix_secs = $2",
                &[&(project_id as i64), &unix_secs],
            )?;
            Ok(())
        })
    }

    fn last_delivery_at(&self) -> Result<Option<i64>, StoreError> {
        // By id, which follows arrival: the primary key answers it without a scan.
        self.read(|c| {
            let row = c.client.query_opt(
                "SELECT EXTRACT(EPOCH FROM received_at)::BIGINT FROM deliveries ORDER BY id DESC LIMIT 1",
                &[],
            )?;
            Ok(row.map(|r| r.get(0)))
        })
    }
}

/// The advisory lock's key for the catch-up leader ("cloudcil" in ASCII; the migrations take
/// another).
const LEADER_LOCK: i64 = 0x636c_6f75_6463_696c;
/// How often the leader checks that its session (and so its lock) is still there, and a
/// follower tries to take the lock.
const CHECK: Duration = Duration::from_secs(1);

/// Whether this instance leads the catch-up (holds the advisory lock on a session of its own).
/// The lock goes with the session: an instance killed (`kill -9`) or cut off from PostgreSQL
/// loses it at once as far as PostgreSQL is concerned, and another instance takes it within
/// a second. Stops when dropped.
#[derive(Debug)]
pub struct Leader {
    leading: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Leader {
    /// Starts trying to take the lock on `log`'s database.
    pub fn start(log: Arc<PgLog>) -> Self {
        let (tx, leading) = watch::channel(false);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::Builder::new()
            .name("cloudci-relay-leader".into())
            .spawn(move || lead(&log, &tx, &s))
            .expect("cannot start the relay's leader thread");
        Self { leading, stop }
    }

    /// Changes of whether this instance leads (true: it does now).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }
}

fn lead(log: &PgLog, tx: &watch::Sender<bool>, stop: &AtomicBool) {
    let mut session: Option<postgres::Client> = None;
    while !stop.load(Ordering::Acquire) {
        let leading = *tx.borrow();
        let held = match session.as_mut() {
            // Still leading while the session answers.
            Some(c) if leading => c.simple_query("SELECT 1").is_ok(),
            Some(c) => c
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false),
            None => false,
        };
        if session.as_ref().is_none_or(|c| c.is_closed()) {
            session = log.config().connect(postgres::NoTls).ok();
            if let Some(c) = session.as_mut() {
                let _ = c.batch_execute("SET statement_timeout = '5s'");
            }
        }
        if held != leading {
            if held {
                tracing::info!("relay: this instance leads hook management and catch-up");
            } else {
                tracing::info!("relay: this instance no longer leads hook management and catch-up");
                // The session may still hold the lock unseen: a new one starts clean.
                session = None;
            }
            tx.send_replace(held);
        }
        if !held || leading {
            std::thread::sleep(CHECK);
        }
    }
}
