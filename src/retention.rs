//! Retention: what `cloudci serve` removes from the state directory as it ages, and what
//! `cloudci gc` reports. The event store's part (raw deliveries, events, pipeline state) is
//! [`cloudci_webhook::Store::gc`]; this adds the files: run logs and artifacts.
//!
//! # What an unfinished build needs
//! A build whose work is not done or whose status is not final holds everything of it: its
//! pipeline's events and state, its run's log folder, and the artifacts of its commit. A
//! subscriber connected to the daemon holds every event above its position (the hub knows it);
//! `cloudci gc` run by hand cannot know the daemon's subscribers, so it refuses to remove
//! anything while a daemon holds the state directory (`--dry-run` still reports).
//!
//! # Files
//! - **Logs** (`logs/YYYY-MM-DD_NN/<project>/`): the last [`Policy::logs_runs`] runs of each
//!   project are kept; a project's folder in an older run is removed, and a run folder left with
//!   no project at all goes with it. The newest run (`latest`) is never touched.
//! - **Artifacts** (`artifacts/<project>/<sha>/<target>/`): a target's folder older than
//!   [`Policy::artifacts_age`] (by its modification time) is removed, then the oldest ones until
//!   the total is at most [`Policy::artifacts_bytes`].

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cloudci_webhook::{Keep, Removed, Store, StorePolicy, StoreReport};
use serde::Serialize;

use crate::builds::{BuildStore, BuildStoreError, Owner};

/// How long what is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The event store's part.
    pub store: StorePolicy,
    /// Runs whose logs are kept per project.
    pub logs_runs: usize,
    /// Artifacts older than this are removed.
    pub artifacts_age: Duration,
    /// Artifacts are removed, oldest first, until they take at most this.
    pub artifacts_bytes: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            store: StorePolicy::default(),
            logs_runs: 20,
            artifacts_age: Duration::from_secs(30 * 86_400),
            artifacts_bytes: 2 << 30,
        }
    }
}

/// What a pass removed, or would remove with `dry_run`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Nothing was removed; this is what would be.
    pub dry_run: bool,
    /// Raw deliveries, events, pipeline and job state.
    #[serde(flatten)]
    pub store: StoreReport,
    /// Project folders of old runs' logs.
    pub logs: Removed,
    /// Artifact folders (one per target of a commit).
    pub artifacts: Removed,
}

impl GcReport {
    /// Whether anything was (or would be) removed.
    pub fn is_empty(&self) -> bool {
        let s = &self.store;
        [s.deliveries, s.events, s.pipelines, s.jobs, self.logs, self.artifacts].iter().all(|r| r.count == 0)
    }
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The event store.
    #[error(transparent)]
    Store(#[from] cloudci_webhook::StoreError),
    /// The build store.
    #[error(transparent)]
    Builds(#[from] BuildStoreError),
    /// A file or folder of the state directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GcError + '_ {
    move |source| GcError::Io { path: path.to_owned(), source }
}

/// What unfinished builds hold.
#[derive(Debug, Default)]
struct Held {
    pipelines: Vec<u64>,
    /// Run folder names (`2026-01-01_03`).
    runs: HashSet<String>,
    /// Commits whose artifacts are (or are about to be) written.
    shas: HashSet<String>,
}

fn held(builds: &dyn BuildStore) -> Result<Held, BuildStoreError> {
    let mut h = Held::default();
    for owner in [Owner::Daemon, Owner::Process] {
        for run in builds.unfinished_runs(owner)? {
            for (record, work) in builds.run_builds(run)? {
                if work.done && record.status.is_final() {
                    continue;
                }
                h.pipelines.extend(record.pipeline_id);
                if let Some(name) = record.log_dir.as_deref().and_then(|d| Path::new(d).file_name()) {
                    h.runs.insert(name.to_string_lossy().into_owned());
                }
                h.shas.extend(record.sha);
            }
        }
    }
    Ok(h)
}

/// One pass over the state directory at `root` at `now`: the event store, then logs and
/// artifacts. `subscribers_at` is the hub's oldest connected subscriber (the daemon passes it).
pub fn run(
    root: &Path,
    store: &Store,
    builds: &dyn BuildStore,
    policy: &Policy,
    subscribers_at: Option<u64>,
    now: SystemTime,
    dry_run: bool,
) -> Result<GcReport, GcError> {
    let held = held(builds)?;
    let now_ms = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let keep = Keep { pipelines: held.pipelines.clone(), subscribers_at };
    let store = store.gc(&policy.store, &keep, now_ms, dry_run)?;
    let logs = logs(&root.join("logs"), policy.logs_runs, &held, dry_run)?;
    let artifacts = artifacts(&root.join("artifacts"), policy, &held, now, dry_run)?;
    Ok(GcReport { dry_run, store, logs, artifacts })
}

/// Bytes under `path` (symbolic links counted as themselves, never followed).
fn size(path: &Path) -> u64 {
    let Ok(meta) = path.symlink_metadata() else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).map_or(0, |entries| entries.flatten().map(|e| size(&e.path())).sum())
}

fn subdirs(path: &Path) -> Result<Vec<PathBuf>, GcError> {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            Ok(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(path)(e)),
    }
}

/// `YYYY-MM-DD_NN` → its order (by date, then number: `_100` after `_99`).
fn run_order(name: &str) -> Option<(String, u32)> {
    let (date, n) = name.rsplit_once('_')?;
    (date.len() == 10 && date.as_bytes()[4] == b'-').then_some(())?;
    Some((date.to_owned(), n.parse().ok()?))
}

fn remove(path: &Path) -> Result<(), GcError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

fn logs(root: &Path, keep_runs: usize, held: &Held, dry_run: bool) -> Result<Removed, GcError> {
    let mut runs: Vec<((String, u32), PathBuf)> =
        subdirs(root)?.into_iter().filter_map(|p| Some((run_order(&p.file_name()?.to_string_lossy())?, p))).collect();
    runs.sort();
    // The newest run is what `latest` points at: never touched.
    let newest = runs.pop().map(|(_, p)| p);
    let mut by_project: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut left: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for (_, run) in &runs {
        let projects = subdirs(run)?;
        left.insert(run.clone(), projects.len());
        for p in projects {
            by_project
                .entry(p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
                .or_default()
                .push(p);
        }
    }
    let mut removed = Removed::default();
    for (project, dirs) in &by_project {
        // Oldest first (runs were sorted); the newest run, not listed, counts as one kept.
        let in_newest = newest.as_ref().is_some_and(|n| n.join(project).is_dir());
        let excess = (dirs.len() + usize::from(in_newest)).saturating_sub(keep_runs);
        for dir in dirs.iter().take(excess) {
            let run = dir.parent().unwrap_or(root);
            if run.file_name().is_some_and(|n| held.runs.contains(&*n.to_string_lossy())) {
                continue;
            }
            removed.count += 1;
            removed.bytes += size(dir);
            if let Some(n) = left.get_mut(run) {
                *n -= 1;
            }
            if !dry_run {
                remove(dir)?;
            }
        }
    }
    // A run with no project left: its `error.log` points nowhere; the folder goes.
    for (run, n) in left {
        if n == 0 && run.file_name().is_some_and(|n| !held.runs.contains(&*n.to_string_lossy())) {
            // What is left besides the project folders counted above (`error.log`).
            let rest = std::fs::read_dir(&run).map_or(0, |entries| {
                entries.flatten().filter(|e| e.file_type().is_ok_and(|t| !t.is_dir())).map(|e| size(&e.path())).sum()
            });
            removed.bytes += rest;
            if !dry_run {
                remove(&run)?;
            }
        }
    }
    Ok(removed)
}

fn artifacts(root: &Path, policy: &Policy, held: &Held, now: SystemTime, dry_run: bool) -> Result<Removed, GcError> {
    // (modified, path, bytes) of each target folder, oldest first.
    let mut units = Vec::new();
    for project in subdirs(root)? {
        for sha in subdirs(&project)? {
            let is_held = sha.file_name().is_some_and(|n| held.shas.contains(&*n.to_string_lossy()));
            for target in subdirs(&sha)? {
                let modified = target.metadata().and_then(|m| m.modified()).map_err(io(&target))?;
                let bytes = size(&target);
                units.push((modified, target, bytes, is_held));
            }
        }
    }
    units.sort();
    let mut total: u64 = units.iter().map(|u| u.2).sum();
    let mut removed = Removed::default();
    for (modified, path, bytes, is_held) in &units {
        let old = now.duration_since(*modified).is_ok_and(|age| age > policy.artifacts_age);
        if *is_held || !(old || total > policy.artifacts_bytes) {
            continue;
        }
        removed.count += 1;
        removed.bytes += bytes;
        total -= bytes;
        if !dry_run {
            remove(path)?;
            // The commit's and project's folders go when empty (remove_dir refuses otherwise).
            for parent in path.ancestors().skip(1).take(2) {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
    Ok(removed)
}

/// The daemon's task: a pass every `every` (the first a minute after start at most), on the
/// blocking pool, each logged when it removed something. The pass removes files and rows in one
/// blocking job, so it holds the store itself; `hub` says what subscribers have not read yet.
pub async fn every(
    root: PathBuf,
    store: std::sync::Arc<Store>,
    hub: cloudci_webhook::Hub,
    builds: std::sync::Arc<dyn BuildStore>,
    policy: Policy,
    every: Duration,
) {
    let mut wait = every.min(Duration::from_secs(60));
    loop {
        tokio::time::sleep(wait).await;
        wait = every;
        let (root, store, builds, policy) = (root.clone(), store.clone(), builds.clone(), policy.clone());
        let at = hub.oldest_subscriber();
        let pass = tokio::task::spawn_blocking(move || {
            run(&root, &store, builds.as_ref(), &policy, at, SystemTime::now(), false)
        })
        .await;
        match pass {
            Ok(Ok(r)) if !r.is_empty() => tracing::info!(
                deliveries = r.store.deliveries.count,
                events = r.store.events.count,
                pipelines = r.store.pipelines.count,
                logs = r.logs.count,
                artifacts = r.artifacts.count,
                bytes = r.store.deliveries.bytes + r.store.events.bytes + r.logs.bytes + r.artifacts.bytes,
                "retention pass"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("retention pass: {e}"),
            Err(e) => tracing::warn!("retention pass: {e}"),
        }
    }
}
