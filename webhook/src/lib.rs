//! cloudci's webhook side: GitLab pushes, cloudci listens, and every subscriber learns of every
//! change once, in order — even when deliveries are late, repeated, dropped, or cloudci restarts.
//!
//! # Layout
//! The modules are private: what callers (the `cloudci` binary, tests, benches, fuzzing) may use
//! is the list re-exported at the top of the crate; everything else is `pub(crate)`.
//!
//! - `receiver`: the public listener (`POST /hooks/{path-secret}` only) and the [`Processor`]
//!   that turns stored deliveries into events.
//! - `verify`: path secret, `X-Gitlab-Token` (with rotation), GitLab 19 `webhook-signature`.
//! - `log`: the event log's interface ([`EventLog`]), which the receiver, processor and hub
//!   run over: SQLite here ([`Store`]), PostgreSQL in `cloudci-relay`.
//! - `machine`: the state machine over a log's tables ([`LogTables`]), once for every backend.
//! - `store`: SQLite (WAL): raw deliveries, the event log, pipeline and job state.
//! - `checkpoint`: WAL checkpoints on a thread of their own, off the commit path.
//! - `retention`: removing old deliveries and events in small batches, never what an
//!   unfinished pipeline or a connected subscriber still needs.
//! - `tracker`: the state machine that never moves a status backwards.
//! - `events`: the event type subscribers receive, and delivery → events.
//! - `ingest`: group commit — deliveries arriving together share one transaction and fsync.
//! - `front`: the event log's async front on [`Hub`] (`track`, `last_seq`, `events_after`, ...):
//!   the only way callers read or write the log; its SQLite work runs on the blocking pool.
//! - `hub`: fan-out with bounded buffers, each event encoded once (as SSE frames); laggards
//!   catch up from the log. The local API (`cloudci`'s `api` module) serves those frames.
//! - `reconcile`: polls GitLab for pipelines the webhooks went silent about.
//! - `health`: resource exhaustion (a full disk, file descriptors, a busy database) as a state.
//! - `hooks`: registering, finding, re-enabling and removing cloudci's project hooks.
//! - `tunnel`: how GitLab reaches the public listener (none, or ngrok with the `ngrok` feature).
//! - `secrets`: secrets generated into the state directory.

mod checkpoint;
mod events;
mod front;
mod health;
mod hook_facts;
mod hooks;
mod hub;
mod ingest;
mod log;
mod machine;
mod receiver;
mod reconcile;
mod retention;
mod secrets;
pub mod sqlite;
mod store;
mod tracker;
mod tunnel;
mod verify;

// Events, as subscribers see them and as a delivery becomes them.
pub use events::{BuildEvent, EventKind, EventSource, Observation, observe};
// Resource exhaustion as a state: what the daemon ran out of, since when.
pub use health::{Health, Problem, Report};
// Fan-out and its SSE frames.
pub use hub::{Batch, Encoded, Hub, Resync, frame};
// The public listener and the worker behind it.
pub use ingest::{IngestStats, STORE_HISTOGRAM_BOUNDS_US};
pub use receiver::{MAX_BODY, Processor, RETRY_AFTER_SECS, Receiver, unavailable};
// The event log's interface and the state machine every backend runs.
pub use log::{EventLog, Ingested, StoredDelivery};
pub use machine::{JobFacts, JobRow, LogTables, PipelineRow, apply, process_all};
// The event log (SQLite), and keeping it small.
pub use retention::{Keep, Removed, StorePolicy, StoreReport, now_ms};
pub use store::{
    ActivePipeline, Durability, EventFilter, Incoming, KnownJob, NewDelivery, Parsed, Store, StoreError, Stored,
    Unreadable,
};
// The state machine, for property tests.
pub use tracker::{Verdict, judge_job};
// Checking a delivery.
pub use verify::{BadSigningToken, DeliveryHeaders, HookSecrets, SIGNATURE_TOLERANCE_SECS, VerifyError, sign};
// GitLab's side: project hooks and polling.
pub use hooks::HookManager;
pub use reconcile::{ReconcileError, ReconcileLog, Reconciler};
// Reaching the public listener.
#[cfg(feature = "ngrok")]
pub use tunnel::NgrokTunnel;
pub use tunnel::{NoTunnel, OpenFuture, OpenTunnel, Tunnel, TunnelError, probe};
// Secrets generated into the state directory.
pub use secrets::{SecretFileError, SecretFiles, create_private_dir, random_token};
