//! The orchestrator: plans builds across projects and targets, carries them in dependency order
//! to their end, and does what follows success. One [`Orchestrator`] per process, used by the
//! CLI (no daemon), the local API, the watchers and the demo.
//!
//! Rooms, each with one door:
//! - [`plan`](mod@plan): names → builds and waves ([`Orchestrator::plan`]).
//! - [`create`]: starting a pipeline exactly once (adopting one an ambiguous failure created).
//! - [`follow`]: the one pipeline follower ([`Follower::follow`]), hub-first or polling.
//! - [`actions`]: after success — artifacts per build; merge request, auto-merge, promotion per
//!   project — each step recorded so none runs twice.
//! - [`jobs`]: a settled pipeline's jobs, from the webhooks when they told everything, else
//!   GitLab's list.
//! - [`records`]: the build store, step by step ([`Records`]).
//! - [`pipeline`]: a build's pipeline: its turn in the queue, created once, or a sibling's adopted.
//! - [`control`]: retry, cancel and play on GitLab, then the build carried on as a new attempt.
//! - [`run`]: carrying runs and builds: fresh, resumed after a restart, retried or canceled.
//! - [`logs`]: per-run log folders.
//! - [`tail`]: following running jobs' logs into their files ([`tail::Tails`]), read again at a
//!   pace that follows the log's growth; the file followed is the file saved.
//! - [`queue`]: at most `max_concurrent_pipelines` pipelines at once per GitLab; 429s hold it.

pub mod actions;
pub mod control;
pub mod create;
pub mod error;
pub mod follow;
pub mod jobs;
pub mod logs;
pub mod pipeline;
pub mod plan;
pub mod queue;
pub mod records;
pub mod run;
pub mod skip;
pub mod status;
pub mod tail;
pub mod targets;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cloudci_gitlab::Gitlab;
use cloudci_gitlab::types::Status;
use serde::Serialize;

pub use create::REQUEST_VARIABLE;
pub use error::OrchestratorError;
pub use follow::{EventFeed, Follower};
pub use plan::{Plan, PlanError, PlannedBuild, Request, plan};
pub use queue::{Queue, Waiting};
pub use records::Records;
pub use status::BuildStatus;
pub use targets::JobSelector;

use crate::builds::{BuildRecord, BuildStore, Owner};
use crate::config::Config;

/// How progress reaches the user.
pub trait Reporter: Send + Sync {
    /// One line about one build.
    fn line(&self, build: &str, text: &str);

    /// Where a build stands now, and the job running in it (for a live status line; lines
    /// about the same changes come through [`Reporter::line`] too).
    fn state(&self, _build: &str, _status: BuildStatus, _job: Option<&str>) {}

    /// A download of `what` for `build` has `done` of `total` bytes.
    fn download(&self, _build: &str, _what: &str, _done: u64, _total: Option<u64>) {}
}

/// Progress lines on stderr.
#[derive(Debug)]
pub struct StderrReporter;

impl Reporter for StderrReporter {
    fn line(&self, build: &str, text: &str) {
        eprintln!("[{build}] {text}");
    }
}

/// No progress output.
#[derive(Debug)]
pub struct Quiet;

impl Reporter for Quiet {
    fn line(&self, _: &str, _: &str) {}
}

/// How one build ended, for the summary (`cloudci build`, `cloudci demo`).
#[derive(Debug, Clone, Serialize)]
pub struct BuildOutcome {
    /// cloudci's build id.
    pub id: i64,
    /// Project name.
    pub project: String,
    /// Target name.
    pub target: String,
    /// How it ended.
    pub status: BuildStatus,
    /// The pipeline's page.
    pub pipeline_url: Option<String>,
    /// Pipeline id.
    pub pipeline_id: Option<u64>,
    /// Ref built.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// Commit built.
    pub sha: Option<String>,
    /// Where the artifacts were put.
    pub artifacts: Option<PathBuf>,
    /// The merge request opened or found.
    pub merge_request: Option<String>,
    /// The promotion pipeline started.
    pub promoted: Option<String>,
    /// Why it did not run or what went wrong.
    pub reason: Option<String>,
    /// The HTTP status GitLab refused it with, if it did.
    #[serde(skip)]
    pub gitlab_status: Option<u16>,
    /// Jobs and their final statuses.
    pub jobs: BTreeMap<String, Status>,
    /// Allowed failures of a successful build.
    pub warnings: Vec<String>,
    /// The first job that failed (and did not count as allowed to), with its log file.
    pub failed_job: Option<(String, Option<PathBuf>)>,
}

impl BuildOutcome {
    /// True for a successful build.
    pub fn succeeded(&self) -> bool {
        self.status == BuildStatus::Success
    }
}

impl From<&BuildRecord> for BuildOutcome {
    fn from(r: &BuildRecord) -> Self {
        Self {
            id: r.id,
            project: r.project.clone(),
            target: r.target.clone(),
            status: r.status,
            pipeline_url: r.pipeline_url.clone(),
            pipeline_id: r.pipeline_id,
            git_ref: r.git_ref.clone(),
            sha: r.sha.clone(),
            artifacts: r.artifacts.as_ref().map(PathBuf::from),
            merge_request: r.merge_request.clone(),
            promoted: r.promoted.clone(),
            reason: r.reason.clone(),
            gitlab_status: r.gitlab_status,
            jobs: r.jobs.iter().map(|(n, j)| (n.clone(), j.status.clone())).collect(),
            warnings: r.warnings.clone(),
            failed_job: r
                .jobs
                .iter()
                .filter(|(_, j)| j.status == Status::Failed && !j.allow_failure)
                .min_by_key(|(_, j)| j.id)
                .map(|(n, j)| (n.clone(), j.log.as_ref().map(PathBuf::from))),
        }
    }
}

/// A run that was started: its id and its builds `(id, project, target)`.
#[derive(Debug, Clone)]
pub struct Started {
    /// Run id.
    pub run: i64,
    /// Its builds.
    pub builds: Vec<(i64, String, String)>,
}

/// A run carried to its end.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The run's log folder.
    pub log_dir: PathBuf,
    /// How each build ended, in build id order.
    pub outcomes: Vec<BuildOutcome>,
}

/// The orchestrator. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

pub(crate) type ProjectLock = Arc<tokio::sync::Mutex<()>>;

struct Inner {
    config: Arc<Config>,
    gitlab: Gitlab,
    records: Records,
    follower: Follower,
    state_dir: PathBuf,
    owner: Owner,
    reporter: Arc<dyn Reporter>,
    follow_logs: bool,
    /// The pipeline queue of this orchestrator's GitLab.
    queue: Queue,
    /// Builds being carried in this process, and whether they must go round once more (a retry
    /// arrived while they were being carried).
    active: Mutex<HashMap<i64, bool>>,
    /// One lock per run and project: its after-success actions are done by one task at a time.
    projects: tokio::sync::Mutex<HashMap<(i64, String), ProjectLock>>,
    /// The job logs followed in this process.
    tails: tail::Tails,
}

impl Orchestrator {
    /// An orchestrator building through `gitlab`, recording in `store`, following pipelines
    /// through `feed`, writing logs and artifacts under `state_dir`. With the daemon's hub it
    /// owns its builds (they are resumed after a restart); with no feed, the builds belong to
    /// this process.
    pub fn new(
        config: Arc<Config>,
        gitlab: Gitlab,
        store: Arc<dyn BuildStore>,
        feed: EventFeed,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        let owner = if matches!(feed, EventFeed::Hub(_)) { Owner::Daemon } else { Owner::Process };
        Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                follower: Follower::new(gitlab.clone(), feed),
                gitlab,
                records: Records::new(store),
                state_dir: state_dir.into(),
                owner,
                reporter: Arc::new(Quiet),
                follow_logs: false,
                queue: Queue::new(config.gitlab.max_concurrent_pipelines()),
                active: Mutex::new(HashMap::new()),
                projects: tokio::sync::Mutex::new(HashMap::new()),
                tails: tail::Tails::default(),
            }),
        }
    }

    /// Reports progress to `reporter`; and, with `follow_logs`, follows running jobs' logs as
    /// they grow (into the run's log files and, line by line, to the reporter). Call before
    /// cloning.
    pub fn with_reporter(mut self, reporter: Arc<dyn Reporter>, follow_logs: bool) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.reporter = reporter;
            inner.follow_logs = follow_logs;
        }
        self
    }

    /// The plan for `request`.
    pub fn plan(&self, request: &Request) -> Result<Plan, PlanError> {
        plan::plan(&self.inner.config, request)
    }

    /// The pipeline queue.
    pub fn queue(&self) -> &Queue {
        &self.inner.queue
    }

    /// The build records.
    pub fn records(&self) -> &Records {
        &self.inner.records
    }

    fn config(&self) -> &Config {
        &self.inner.config
    }

    fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }
}
