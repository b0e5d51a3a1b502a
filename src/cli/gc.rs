//! `cloudci gc`: one retention pass over the state directory, or with `--dry-run` what it would
//! remove. `cloudci serve` runs the same pass every `[retention] interval_minutes`.

use std::time::SystemTime;

use clap::Args;

use super::Failure;
use crate::config::Config;
use crate::output::{Table, print_json};
use crate::retention::GcReport;
use crate::state::{LockError, StateDir};

/// Remove what the retention limits no longer keep (`[retention]` in the configuration).
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Remove nothing; say what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Print the counts and bytes as JSON.
    #[arg(long)]
    json: bool,
}

impl GcArgs {
    /// Runs it.
    pub fn run(self, config: &Config) -> Result<(), Failure> {
        let state = StateDir::new(config.state_dir());
        // Only the daemon knows which subscribers are connected and behind: with one running,
        // removing is its job (it does so every interval); a dry run only reads.
        let _lock = if self.dry_run {
            None
        } else {
            Some(state.lock_daemon().map_err(|e| match e {
                LockError::Held { pid, .. } => Failure::general(format!(
                    "cloudci serve{} uses this state directory and applies retention itself; \
                     `cloudci gc --dry-run` shows what its next pass removes",
                    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
                )),
                other => Failure::general(other.to_string()),
            })?)
        };
        let durability = crate::daemon::durability(config);
        let store =
            cloudci_webhook::Store::open(&state.database(), durability).map_err(|e| Failure::general(e.to_string()))?;
        let builds = crate::builds::SqliteBuilds::open(&state.root().join("builds.db"))
            .map_err(|e| Failure::general(e.to_string()))?;
        let policy = config.retention.policy();
        let report =
            crate::retention::run(state.root(), &store, &builds, &policy, None, SystemTime::now(), self.dry_run)
                .map_err(|e| Failure::general(e.to_string()))?;
        if self.json {
            print_json(&report)?;
        } else {
            table(&report).print()?;
        }
        Ok(())
    }
}

fn table(r: &GcReport) -> Table {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let mut t = Table::new(&["what", verb, "bytes"]);
    let s = &r.store;
    for (what, removed) in [
        ("raw deliveries", s.deliveries),
        ("events", s.events),
        ("pipelines (state)", s.pipelines),
        ("jobs (state)", s.jobs),
        ("run logs (project folders)", r.logs),
        ("artifacts (target folders)", r.artifacts),
    ] {
        t.row(vec![what.into(), removed.count.to_string(), removed.bytes.to_string()]);
    }
    t
}
