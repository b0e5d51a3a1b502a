//! A daemon fed by a team relay (`cloudci serve --relay URL`) keeps a local log of the relay's
//! events: each one the relay streams is written here as it was judged there, with the relay's
//! seq as the durable checkpoint, in the same transaction.
//!
//! The relay streams *processed* events (its state machine already accepted them, in its commit
//! order), while the daemon's own pipeline starts from raw deliveries. Joining after the state
//! machine, not before it, is what keeps the two from judging twice: the relay is the judge, and
//! this log mirrors its verdicts — the pipeline and job rows everything downstream reads
//! ([`Store::pipeline_jobs`], the hub's subscribers, retention) are updated from each event, and
//! the event is logged under a local seq, so local subscribers' `Last-Event-ID`s keep meaning
//! what they meant. Feeding the events through the local state machine again would judge them
//! without their delivery's evidence (a retry is told from a late delivery by the job mentions
//! of the same delivery) and could drop what the relay accepted.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Store, StoreError, query_row, tables::Sql};
use crate::events::{BuildEvent, EventKind};
use crate::machine::{JobFacts, JobRow, LogTables, PipelineRow};

impl Store {
    /// The last seq of the relay at `relay` this log holds (its `Last-Event-ID`); `None` before
    /// the first event from it.
    pub fn relay_cursor(&self, relay: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT seq FROM relay_cursors WHERE relay = ?1", [relay], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|s| s as u64))
    }

    /// Logs events the relay at `relay` streamed (their `seq` is the relay's), in one
    /// transaction with the relay's new position: each event at or below the position already
    /// recorded is skipped, so a resume that repeats one changes nothing. Returns the events
    /// logged, with their local seqs.
    pub fn mirror(&self, relay: &str, events: Vec<BuildEvent>) -> Result<Vec<BuildEvent>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known: Option<i64> =
            query_row(&tx, "SELECT seq FROM relay_cursors WHERE relay = ?1", [relay], |r| r.get(0)).optional()?;
        let mut at = known.map(|s| s as u64);
        let mut logged = Vec::with_capacity(events.len());
        {
            let mut t = Sql(&tx);
            for mut event in events {
                let relay_seq = event.seq;
                if at.is_some_and(|a| relay_seq <= a) {
                    continue;
                }
                record(&mut t, &event)?;
                event.seq = 0;
                let data = serde_json::to_string(&event).unwrap_or_default();
                event.seq = t.log_event(None, &event, &data)?;
                logged.push(event);
                at = Some(relay_seq);
            }
        }
        if let Some(seq) = at.filter(|s| Some(*s as i64) != known) {
            tx.execute(
                "INSERT INTO relay_cursors (relay, seq) VALUES (?1, ?2) ON CONFLICT (relay) DO UPDATE SET seq = ?2",
                params![relay, seq as i64],
            )?;
        }
        tx.commit()?;
        Ok(logged)
    }
}

/// The state rows the event's verdict stands for, as the relay's state machine recorded them.
fn record(t: &mut Sql<'_>, e: &BuildEvent) -> Result<(), rusqlite::Error> {
    let Some(status) = e.status.as_deref() else { return Ok(()) };
    match (e.kind, e.pipeline_id, e.job_id) {
        (EventKind::Pipeline, Some(id), _) => t.put_pipeline(&PipelineRow {
            id,
            project_id: e.project_id,
            project: e.project.as_deref(),
            status,
            max_job_id: 0,
            basis: "{}",
            keep_basis: true,
        }),
        (EventKind::Job, pipeline_id, Some(id)) => {
            // "No artifacts" is kept only from a final status: the relay's state machine learns a
            // job's archive from a later Pipeline Hook that repeats the job's status, and the
            // stream carries no event for a repeat. Unknown, the orchestrator asks GitLab.
            let done = cloudci_gitlab::types::Status::parse(status).is_completed();
            let artifacts = e.artifacts.filter(|has| *has || done);
            let facts = JobFacts { allow_failure: e.allow_failure, started: e.started, artifacts };
            t.note_job(id, e.job_name.as_deref(), e.stage.as_deref(), facts)?;
            t.put_job(&JobRow {
                id,
                pipeline_id,
                status,
                name: e.job_name.as_deref(),
                stage: e.stage.as_deref(),
                facts,
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use cloudci_gitlab::types::Status;

    use super::*;
    use crate::events::EventSource;
    use crate::store::EventFilter;

    fn job(seq: u64, id: u64, status: &str, artifacts: Option<bool>) -> BuildEvent {
        let mut e = BuildEvent::new(EventKind::Job, 7, "Job Hook", EventSource::Webhook);
        (e.seq, e.pipeline_id, e.job_id, e.job_name, e.status) =
            (seq, Some(40), Some(id), Some("build".into()), Some(status.into()));
        e.project = Some("acme/firmware".into());
        e.artifacts = artifacts;
        e
    }

    fn pipeline(seq: u64, status: &str) -> BuildEvent {
        let mut e = BuildEvent::new(EventKind::Pipeline, 7, "Pipeline Hook", EventSource::Webhook);
        (e.seq, e.pipeline_id, e.status) = (seq, Some(40), Some(status.into()));
        e
    }

    #[test]
    fn relay_events_are_logged_once_under_local_seqs_with_the_relay_position() {
        let store = Store::in_memory().unwrap();
        const RELAY: &str = "http://relay.example:8791";
        assert_eq!(store.relay_cursor(RELAY).unwrap(), None);
        let first = store.mirror(RELAY, vec![pipeline(100, "running"), job(105, 9, "running", Some(false))]).unwrap();
        // A running job's "no artifacts" may change without an event: unknown, not false.
        assert_eq!(store.pipeline_jobs(40).unwrap()[0].artifacts, None);
        assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2], "local seqs");
        assert_eq!(store.relay_cursor(RELAY).unwrap(), Some(105));
        // A resume that repeats what was had adds nothing; what is new follows on.
        let again = store
            .mirror(
                RELAY,
                vec![job(105, 9, "running", None), job(110, 9, "success", Some(true)), pipeline(111, "success")],
            )
            .unwrap();
        assert_eq!(
            again.iter().map(|e| (e.seq, e.status.clone().unwrap())).collect::<Vec<_>>(),
            [(3, "success".to_owned()), (4, "success".to_owned())]
        );
        assert_eq!(store.relay_cursor(RELAY).unwrap(), Some(111));
        assert_eq!(store.relay_cursor("http://another-relay").unwrap(), None, "positions are per relay");
        // Downstream reads the state the events stand for, and the log as local subscribers do.
        let jobs = store.pipeline_jobs(40).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].status.clone(), jobs[0].artifacts), (Status::Success, Some(true)));
        let (events, last) = store.events_after(0, None, &EventFilter::default(), 100).unwrap();
        assert_eq!((events.len(), last), (4, 4));
        assert_eq!(events[3].kind, EventKind::Pipeline);
        assert_eq!(store.pipeline_statuses(&[40]).unwrap()[&40], Status::Success);
        // A job that ended without an archive: that is final.
        store.mirror(RELAY, vec![job(120, 10, "failed", Some(false))]).unwrap();
        let failed = store.pipeline_jobs(40).unwrap().into_iter().find(|j| j.id == 10).unwrap();
        assert_eq!((failed.status, failed.artifacts), (Status::Failed, Some(false)));
        // Nothing new: no write of the position either.
        assert!(store.mirror(RELAY, vec![pipeline(111, "success")]).unwrap().is_empty());
        assert_eq!(store.relay_cursor(RELAY).unwrap(), Some(120));
    }
}
