//! cloudci: start firmware builds on GitLab CI from the IDE or a terminal and follow them live.
//!
//! # Layout
//! - [`cli`]: the `cloudci` command line; each command group in its own module.
//! - [`config`]: `cloudci.toml`, typed and checked once, every error with file, line and key;
//!   one file per section.
//! - [`orchestrator`]: carrying builds from a plan to their end (plan, create once, follow,
//!   artifacts and merge requests, records), one per process.
//! - [`builds`]: the record of builds (SQLite), behind `BuildStore`.
//! - [`daemon`]: `cloudci serve`: both listeners, hooks, the reconciler, graceful shutdown.
//! - [`server`]: both listeners' server loop: hyper's HTTP/1 with a header-read timeout that
//!   also ends idle keep-alive connections.
//! - [`layers`]: what both listeners share: request ids, spans, panic guard, timeouts, and the
//!   local API's `Host` check, body limit and headers.
//! - [`resources`], [`logging`]: a full disk, no file descriptors, a busy database, a log that
//!   cannot be written — reported and recovered from, never a crash or a dropped connection.
//! - [`relay`]: `cloudci relay`, the team's shared receiver over PostgreSQL (`cloudci-relay`).
//! - [`relay_feed`]: `cloudci serve --relay`: a developer's daemon fed by the team relay
//!   instead of a tunnel and hooks of its own.
//! - [`api`]: the local API's routes (`/v1/...`) and the dashboard.
//! - [`watchers`]: daemon tasks on the event stream: rebuild on push, notifications.
//! - [`sse_client`]: talking to a running daemon (its event stream, the builds it carries).
//! - [`state`]: the state directory: databases, generated secrets, what the daemon publishes.
//! - [`retention`]: removing old deliveries, events, logs and artifacts, never what is still
//!   needed (`cloudci gc`, and the daemon every interval).
//! - [`output`]: how results reach the terminal: tables for people, JSON for programs.
//!
//! The GitLab client lives in the `cloudci-gitlab` crate (`gitlab/`), the receiver, event log and
//! fan-out in `cloudci-webhook` (`webhook/`), whose re-exported list is all `src/` may use (the
//! event log through `Hub`'s async methods). ARCHITECTURE.md has the map.

pub mod api;
pub mod builds;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod layers;
pub mod logging;
pub mod orchestrator;
pub mod output;
pub mod relay;
pub mod relay_feed;
pub mod resources;
pub mod retention;
pub mod server;
pub mod sse_client;
pub mod state;
pub mod watchers;
