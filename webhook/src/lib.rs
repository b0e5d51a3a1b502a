//! cloudci's webhook side: GitLab pushes, cloudci listens, and every subscriber learns of every
//! change once, in order — even when deliveries are late, repeated, dropped, or cloudci restarts.
//!
//! # Layout
//! - [`receiver`]: the public listener (`POST /hooks/{path-secret}` only) and the [`Processor`]
//!   that turns stored deliveries into events.
//! - [`verify`]: path secret, `X-Gitlab-Token` (with rotation), GitLab 19 `webhook-signature`.
//! - [`store`]: SQLite (WAL): raw deliveries, the event log, pipeline and job state.
//! - [`retention`]: removing old deliveries and events in small batches, never what an
//!   unfinished pipeline or a connected subscriber still needs.
//! - [`tracker`]: the state machine that never moves a status backwards.
//! - [`events`]: the event type subscribers receive, and delivery → events.
//! - [`ingest`]: group commit — deliveries arriving together share one transaction and fsync.
//! - [`hub`]: fan-out with bounded buffers, each event encoded once (as SSE frames); laggards
//!   catch up from the log. The local API (`cloudci`'s `api` module) serves those frames.
//! - [`reconcile`]: polls GitLab for pipelines the webhooks went silent about.
//! - [`hooks`]: registering, finding, re-enabling and removing cloudci's project hooks.
//! - [`tunnel`]: how GitLab reaches the public listener (none, or ngrok with the `ngrok` feature).
//! - [`secrets`]: secrets generated into the state directory.

pub mod events;
pub mod hooks;
pub mod hub;
pub mod ingest;
pub mod receiver;
pub mod reconcile;
pub mod retention;
pub mod secrets;
pub mod store;
pub mod tracker;
pub mod tunnel;
pub mod verify;

pub use events::{BuildEvent, EventKind, EventSource};
pub use hub::Hub;
pub use receiver::{Processor, Receiver};
pub use store::{Durability, EventFilter, Store};
