//! cloudci: start firmware builds on GitLab CI from the IDE or a terminal and follow them live.
//!
//! # Layout
//! - [`cli`]: the `cloudci` command line; each command group in its own module.
//! - [`output`]: how results reach the terminal: tables for people, JSON for programs.
//!
//! The GitLab client lives in the `cloudci-gitlab` crate (`gitlab/`).

pub mod api;
pub mod builds;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod orchestrator;
pub mod output;
pub mod sse_client;
pub mod state;
pub mod watchers;
