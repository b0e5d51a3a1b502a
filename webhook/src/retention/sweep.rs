//! Retention inside the group commit: each commit that stores `n` deliveries and logs `m` events
//! also removes up to `n + EXTRA` expired deliveries and `m + EXTRA` expired events, in the same
//! transaction. Retention so keeps pace with ingest by construction and costs no transaction,
//! lock or fsync of its own; the periodic pass ([`crate::Store::gc`]) still sweeps a quiet store,
//! what a commit skipped, and pipeline state.
//!
//! Off by default ([`StorePolicy::in_commit`]): measured against the periodic pass alone in the
//! year bench (`year.rs`, RELIABILITY.md), it made every commit slower by about as much as the
//! rows it removed cost, for no better ingest p99. It stays as an option and in the bench.
//!
//! A commit sweeps only once a (real) pass gave it the limits and the pipelines unfinished builds
//! follow ([`Sweep::plan`]). It keeps what the pass keeps: a delivery still pending; an event of a
//! pipeline that is not finished (checked in the same transaction, so a retry that reopens an old
//! pipeline holds it at once) or that an unfinished build follows (as of the last pass: a build
//! started since follows a pipeline whose events are newer than any horizon, or one that is
//! active again); every event above the oldest connected subscriber (the hub's, read before the
//! commit). Both tables are walked from a cursor in key order, which is time order, and the walk
//! stops at the first row not old enough, so a commit with nothing expired reads one row each.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rusqlite::{Connection, params};

use super::{StorePolicy, ids_json};
use crate::store::{FINISHED, UNSETTLED, query_row};

/// Rows a commit may remove beyond what it adds: a backlog (retention just turned on, a burst
/// that outran it) is worked off by busy commits too, a few rows at a time.
pub(crate) const EXTRA: usize = 16;

/// The in-commit sweep's state, kept by the store (under its own lock, taken with the
/// connection's: never the other way round).
#[derive(Debug, Default)]
pub(crate) struct Sweep {
    plan: Option<Plan>,
    /// Deliveries with an id up to this were examined (removed, or left to the pass).
    deliveries_after: i64,
    /// Events with a seq up to this were examined.
    events_after: i64,
    /// The periodic pass's walk over the retained events, kept for the next pass.
    pub(crate) walked: Walked,
}

/// Which pipelines have an event above a seq: what the pass needs before it drops a pipeline's
/// state. Kept from one pass to the next, so that a pass walks only the events logged since the
/// last one, not the whole retained log (tens of thousands of rows, twice a second in the
/// compressed year bench).
#[derive(Debug, Default)]
pub(crate) struct Walked {
    /// Every event above `above` up to `through` was walked; `None`: nothing was yet.
    range: Option<(i64, i64)>,
    /// Each pipeline with an event above `above`: its newest seq walked.
    newest: HashMap<i64, i64>,
}

impl Walked {
    /// Where the walk goes on from, for the pipelines with an event above `bound`: `None` to
    /// start over (`bound` is below what was walked: a subscriber resumed from further back).
    pub(crate) fn resume(&mut self, bound: i64) -> i64 {
        match self.range {
            Some((above, through)) if bound >= above => through,
            _ => {
                *self = Self { range: Some((bound, bound)), newest: HashMap::new() };
                bound
            }
        }
    }

    /// Events walked: `(seq, pipeline)`, in seq order.
    pub(crate) fn walk(&mut self, rows: &[(i64, Option<i64>)]) {
        for &(seq, pipeline) in rows {
            if let Some(p) = pipeline {
                let newest = self.newest.entry(p).or_insert(seq);
                *newest = (*newest).max(seq);
            }
            if let Some((_, through)) = &mut self.range {
                *through = (*through).max(seq);
            }
        }
    }

    /// The pipelines with an event above `bound`; what is at or below it is forgotten (an event
    /// of a pipeline newer than `bound` is never removed, so the set is exact).
    pub(crate) fn above(&mut self, bound: i64) -> HashSet<i64> {
        self.newest.retain(|_, seq| *seq > bound);
        if let Some((above, _)) = &mut self.range {
            *above = (*above).max(bound);
        }
        self.newest.keys().copied().collect()
    }
}

#[derive(Debug)]
struct Plan {
    deliveries: i64,
    events: i64,
    held: HashSet<u64>,
}

/// What a commit's sweep removed, and where its cursors go once the commit is through.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Deliveries removed.
    pub(crate) deliveries: u64,
    /// Events removed.
    pub(crate) events: u64,
    deliveries_after: i64,
    events_after: i64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Sweep {
    /// Turns the sweep on with `policy`'s limits (or off, when it says so), holding `held`.
    pub(crate) fn plan(&mut self, policy: &StorePolicy, held: HashSet<u64>) {
        self.plan =
            policy.in_commit.then(|| Plan { deliveries: ms(policy.deliveries), events: ms(policy.events), held });
    }

    /// Whether commits sweep.
    pub(crate) fn is_on(&self) -> bool {
        self.plan.is_some()
    }

    /// Moves the cursors once the commit that swept went through (a commit that failed removed
    /// nothing, and its rows are examined again).
    pub(crate) fn advance(&mut self, swept: Swept) {
        self.deliveries_after = self.deliveries_after.max(swept.deliveries_after);
        self.events_after = self.events_after.max(swept.events_after);
    }

    /// Removes, in `conn`'s open transaction, up to `stored + EXTRA` expired deliveries and
    /// `logged + EXTRA` expired events at `now_ms`. `subscribers_at`: the oldest connected
    /// subscriber's position. Nothing when the sweep is off.
    pub(crate) fn run(
        &self,
        conn: &Connection,
        stored: usize,
        logged: usize,
        subscribers_at: Option<u64>,
        now_ms: i64,
    ) -> Result<Swept, rusqlite::Error> {
        let mut swept =
            Swept { deliveries_after: self.deliveries_after, events_after: self.events_after, ..Swept::default() };
        let Some(plan) = &self.plan else { return Ok(swept) };

        // Deliveries: received before the cutoff, processed.
        let cutoff = now_ms.saturating_sub(plan.deliveries);
        let mut last_expired = None;
        {
            let mut stmt = conn.prepare_cached(
                "SELECT id, CAST((julianday(received_at) - 2440587.5) * 86400000.0 AS INTEGER), processed <> 0
                 FROM deliveries WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![self.deliveries_after, (stored + EXTRA) as i64])?;
            while let Some(r) = rows.next()? {
                let (id, at, processed): (i64, Option<i64>, bool) = (r.get(0)?, r.get(1)?, r.get(2)?);
                if at.is_none_or(|at| at >= cutoff) {
                    break;
                }
                last_expired = Some(id);
                swept.deliveries_after = id;
                // A pending one is passed over: the periodic pass removes it once processed.
                swept.deliveries += u64::from(processed);
            }
        }
        if let Some(last) = last_expired {
            conn.prepare_cached("DELETE FROM deliveries WHERE id > ?1 AND id <= ?2 AND processed <> 0")?
                .execute(params![self.deliveries_after, last])?;
        }

        // Events: logged before the cutoff, at or below the oldest subscriber, not held.
        let cutoff = now_ms.saturating_sub(plan.events);
        let bound = subscribers_at.map_or(i64::MAX, |s| i64::try_from(s).unwrap_or(i64::MAX));
        let mut candidates = Vec::new();
        {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, logged_at, pipeline_id FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![self.events_after, (logged + EXTRA) as i64])?;
            while let Some(r) = rows.next()? {
                let (seq, at, pipeline): (i64, Option<i64>, Option<i64>) = (r.get(0)?, r.get(1)?, r.get(2)?);
                if seq > bound || at.is_none_or(|at| at >= cutoff) {
                    break;
                }
                candidates.push((seq, pipeline));
            }
        }
        let Some(&(end, _)) = candidates.last() else { return Ok(swept) };
        swept.events_after = end;
        let mut active: HashMap<i64, bool> = HashMap::new();
        let mut gone = Vec::with_capacity(candidates.len());
        for (seq, pipeline) in candidates {
            let held = match pipeline {
                None => false,
                Some(p) if plan.held.contains(&(p as u64)) => true,
                Some(p) => match active.get(&p) {
                    Some(&a) => a,
                    None => {
                        let a = is_active(conn, p)?;
                        active.insert(p, a);
                        a
                    }
                },
            };
            if !held {
                gone.push(seq);
            }
        }
        if let Some(&last) = gone.last() {
            swept.events = gone.len() as u64;
            conn.prepare_cached("DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?1))")?
                .execute([ids_json(gone)])?;
            conn.prepare_cached(
                "INSERT INTO retention (key, value) VALUES ('removed_through', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = MAX(value, ?1)",
            )?
            .execute([last])?;
        }
        Ok(swept)
    }
}

/// The reconciler's notion of a pipeline not finished ([`crate::Store::active_pipelines`]), for
/// one pipeline, inside the transaction.
fn is_active(conn: &Connection, pipeline: i64) -> Result<bool, rusqlite::Error> {
    query_row(
        conn,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM pipelines p WHERE p.id = ?1 AND (p.status NOT IN {FINISHED} OR p.reread = 1
                 OR EXISTS (SELECT 1 FROM jobs j WHERE j.pipeline_id = p.id AND j.status IN ({UNSETTLED}))))"
        ),
        [pipeline],
        |r| r.get(0),
    )
}
