//! The orchestrator: plans builds across projects and targets, runs them in dependency order,
//! follows them, and carries out what happens after success.

pub mod logs;
pub mod plan;
pub mod run;

pub use plan::{Plan, PlannedBuild, Request, plan};
pub use run::{BuildOutcome, EventFeed, Quiet, Records, Reporter, Runner, StderrReporter, start_run};
