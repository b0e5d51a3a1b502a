//! The team relay's event log on PostgreSQL: a second backend of cloudci-webhook's
//! [`EventLog`](cloudci_webhook::EventLog), beside the daemon's SQLite store, so that several
//! `cloudci relay` instances share one log.
//!
//! # Layout
//! - `pg`: [`PgLog`], the log (connections, group commit, commit-ordered seqs: why in its docs).
//! - `tables`: the state machine's statements in PostgreSQL's dialect.
//! - `batch`: the same for a sequencing transaction, over its rows in memory.
//! - `retention`: [`PgLog::gc`], the daemon's retention policy over the shared log, and the
//!   subscriber holds every instance publishes.
//! - `schema`: the tables and their migrations, run at every start.
//! - `sequencer`: [`Sequencer`], raw deliveries stored without the head's lock and turned into
//!   events by one sequencing transaction at a time (why that keeps seqs in commit order).
//! - `catchup`: the reconciler's queries on the log, and [`Leader`] (which instance runs it).
//! - `tail`: [`Tail`], each instance's `LISTEN`/poll tail of the log into its [`Hub`](cloudci_webhook::Hub).
//! - `scratch`: [`ScratchCluster`], a throwaway PostgreSQL for tests and benchmarks.
//!
//! The relay's server (listeners, `cloudci relay`) lives in the `cloudci` binary, which shares
//! the daemon's layers and event stream with it.

mod batch;
mod catchup;
mod pg;
mod retention;
mod schema;
mod scratch;
mod sequencer;
mod tables;
mod tail;

pub use catchup::Leader;
pub use pg::{CHANNEL, PgError, PgLog};
pub use retention::{HOLD_FRESH, MIN_AGE};
pub use scratch::{ScratchCluster, ScratchError};
pub use sequencer::{BACKSTOP, Sequencer};
pub use tail::{POLL, Tail};
