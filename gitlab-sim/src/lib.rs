#![recursion_limit = "512"]
//! `gitlab-sim`: a local stand-in for GitLab, for cloudci's tests, demo and benchmarks.
//!
//! It serves the subset of GitLab's REST API v4 that cloudci uses (`api.rs`), runs pipelines from a
//! project's real `.gitlab-ci.yml` with a shell executor (`ci.rs`, `runner.rs`), and sends
//! webhooks with GitLab's headers and behaviour (`webhooks.rs`), with seeded fault injection
//! (`faults.rs`). Where GitLab's behaviour is not known, the code says so.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let sim = gitlab_sim::Sim::start(gitlab_sim::SimConfig {
//!     token: "sim-token".into(),
//!     projects: vec![("acme/firmware".into(), "/path/to/repo".into())],
//!     ..Default::default()
//! })
//! .await?;
//! println!("GitLab at {}", sim.url());
//! # Ok(()) }
//! ```

pub mod access;
mod access_api;
mod api;
pub mod ci;
pub mod faults;
mod files;
pub mod fixtures;
pub mod git;
mod hooks_api;
mod render;
mod runner;
pub mod state;
mod webhooks;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use cloudci_gitlab::types::Status;

pub use access::{AccessError, SimMember, SimUser, Visibility};
pub use faults::{FaultSpec, Faults};
pub use render::VERSION;
pub use webhooks::sign;
pub use wire::{MAX_TIMES, RequestCounts, RouteCount};

use crate::git::{MergeOutcome, Repo};
use crate::render::Render;
use crate::state::{Effects, EventKind, Outgoing, Project, State};

/// How to start a sim.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on (port 0 for any free port).
    pub listen: SocketAddr,
    /// The administrator's token (user 1, `root`), accepted as `PRIVATE-TOKEN`,
    /// `Authorization: Bearer` or `?private_token=`. The administrator may do everything and
    /// owns every top-level group.
    pub token: String,
    /// More users, each with their own token (ids 2, 3, ... in order).
    pub users: Vec<SimUser>,
    /// Memberships of those users in projects and groups.
    pub members: Vec<SimMember>,
    /// Visibility of projects or groups, by path (default: private).
    pub visibility: Vec<(String, access::Visibility)>,
    /// GitLab.com's webhook rate limit: calls per top-level namespace per window (none: no limit).
    pub hook_rate_limit: Option<u32>,
    /// The rate limit's window (GitLab: one minute; shorter in tests).
    pub hook_rate_window: Duration,
    /// Premium features: group webhooks (`/groups/:id/hooks`). Without it those routes do not
    /// exist, as on GitLab Free.
    pub premium: bool,
    /// Projects: `group/name` and the git repository that backs it. Ids are 1, 2, ... in order.
    pub projects: Vec<(String, PathBuf)>,
    /// Faults to inject.
    pub faults: FaultSpec,
    /// Seed for the faults' random choices.
    pub seed: u64,
    /// Where builds and artifacts go; a temporary directory (removed on drop) when `None`. The sim's
    /// records (pipelines, jobs, hooks) live in memory only.
    pub state_dir: Option<PathBuf>,
    /// Jobs that may run at once (the runner's `concurrent`).
    pub runners: usize,
    /// How often branch heads are checked for pushes made outside the sim.
    pub ref_poll: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: String::new(),
            users: Vec::new(),
            members: Vec::new(),
            visibility: Vec::new(),
            hook_rate_limit: None,
            hook_rate_window: Duration::from_secs(60),
            premium: false,
            projects: Vec::new(),
            faults: FaultSpec::default(),
            seed: 0,
            state_dir: None,
            runners: 4,
            ref_poll: Duration::from_millis(300),
        }
    }
}

/// Why the sim could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A project's repository is missing or not a git repository.
    #[error("project {project}: {source}")]
    Repo {
        /// The project path.
        project: String,
        /// The cause.
        #[source]
        source: git::GitError,
    },
    /// The project spec is wrong.
    #[error("{0}")]
    Config(String),
    /// The declared users, members or visibilities are wrong.
    #[error("{0}")]
    Access(#[from] access::AccessError),
    /// Listening or the work directory failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// State shared by the API handlers, the runners and the webhook sender.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) render: Render,
    /// Premium features on (group hooks).
    pub(crate) premium: bool,
    /// Webhook calls allowed per top-level namespace and window.
    pub(crate) hook_rate_limit: Option<u32>,
    pub(crate) hook_rate_window: Duration,
    pub(crate) faults: Faults,
    pub(crate) runner_slots: Arc<tokio::sync::Semaphore>,
    pub(crate) http: reqwest::Client,
    pub(crate) work_dir: PathBuf,
    /// Requests and bytes answered per route (`/-/sim/requests`).
    pub(crate) counter: wire::Counter,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take the whole sim down with a poisoned lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Carries out what a state change asked for: start jobs, send webhooks, check auto-merges.
    pub(crate) fn apply(self: &Arc<Self>, fx: Effects) {
        for job_id in fx.start {
            tokio::spawn(runner::run_job(self.clone(), job_id));
        }
        for (job_id, after) in fx.delayed {
            let shared = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let mut state = shared.lock();
                if state.jobs.get(&job_id).is_none_or(|j| j.status != Status::Scheduled) {
                    return; // played, canceled or unscheduled meanwhile
                }
                let pipeline_id = state.jobs[&job_id].pipeline_id;
                let mut fx = state.set_job_status(&shared.render, job_id, Status::Pending);
                fx.start.push(job_id);
                fx.merge(state.refresh_pipeline_status(&shared.render, pipeline_id));
                drop(state);
                shared.apply(fx);
            });
        }
        for job_id in fx.bridges {
            tokio::spawn(run_bridge(self.clone(), job_id));
        }
        for event in fx.events {
            webhooks::dispatch(self, event);
        }
        for pipeline_id in fx.succeeded {
            let shared = self.clone();
            tokio::spawn(async move { auto_merge(shared, pipeline_id).await });
        }
    }
}

/// Starts the downstream pipeline of a bridge job: a child pipeline (`trigger:include`, source
/// `parent_pipeline`) or a pipeline of another hosted project (`trigger:project`, source
/// `pipeline`). Without `strategy: depend` the bridge succeeds once the pipeline exists; with it,
/// the bridge follows the downstream pipeline's status.
async fn run_bridge(shared: Arc<Shared>, job_id: u64) {
    let prepared = {
        let state = shared.lock();
        let Some(job) = state.jobs.get(&job_id) else { return };
        let Some(trigger) = job.spec.trigger.clone() else { return };
        let Some(p) = state.pipelines.get(&job.pipeline_id) else { return };
        let mut forwarded: Vec<cloudci_gitlab::types::PipelineVariable> = Vec::new();
        if trigger.forward_yaml_variables {
            for (k, v) in p.config.variables.iter().filter(|(k, _)| job.spec.inherit_variables.allows(k)) {
                forwarded.push(cloudci_gitlab::types::PipelineVariable::env(k.clone(), v.clone()));
            }
            for (k, v) in &job.spec.variables {
                forwarded.retain(|f| f.key != *k);
                forwarded.push(cloudci_gitlab::types::PipelineVariable::env(k.clone(), v.clone()));
            }
        }
        if trigger.forward_pipeline_variables {
            for v in &p.variables {
                forwarded.retain(|f| f.key != v.key);
                forwarded.push(v.clone());
            }
        }
        let target = match &trigger.project {
            None => Some((p.project_id, p.git_ref.clone(), p.tag, p.sha.clone())),
            Some(path) => state.project(path).map(|t| {
                (t.id, trigger.branch.clone().unwrap_or_else(|| t.default_branch.clone()), false, String::new())
            }),
        };
        (trigger, forwarded, target, job.pipeline_id, p.commit.clone(), p.user_id)
    };
    let (trigger, forwarded, target, parent_id, parent_commit, user_id) = prepared;
    let fail = |shared: &Arc<Shared>, reason: &str| {
        let mut state = shared.lock();
        if let Some(j) = state.jobs.get_mut(&job_id) {
            j.failure_reason = Some(reason.to_owned());
        }
        let mut fx = state.set_job_status(&shared.render, job_id, Status::Failed);
        fx.merge(state.advance(&shared.render, parent_id));
        drop(state);
        shared.apply(fx);
    };
    let Some((target_id, git_ref, tag, _)) = target else {
        return fail(&shared, "downstream_bridge_project_not_found");
    };
    let (source, text, commit) = if trigger.project.is_none() {
        let mut root = serde_yaml_ng::Mapping::new();
        root.insert("include".into(), serde_yaml_ng::Value::Sequence(trigger.include.clone()));
        let text = serde_yaml_ng::to_string(&serde_yaml_ng::Value::Mapping(root)).unwrap_or_default();
        ("parent_pipeline", text, parent_commit)
    } else {
        let repo = shared.lock().projects[usize::try_from(target_id - 1).unwrap_or(0)].repo.clone();
        let Some(resolved) = repo.resolve(&git_ref).await else {
            return fail(&shared, "downstream_pipeline_creation_failed");
        };
        let Ok(Some(yaml)) = repo.file_at(&resolved.sha, ".gitlab-ci.yml").await else {
            return fail(&shared, "downstream_pipeline_creation_failed");
        };
        let Ok(commit) = repo.commit(&resolved.sha).await else {
            return fail(&shared, "downstream_pipeline_creation_failed");
        };
        ("pipeline", String::from_utf8_lossy(&yaml).into_owned(), commit)
    };
    let (ctx, files) =
        files::prepare(&shared, target_id, &git_ref, tag, &commit, source, &forwarded, serde_json::Map::new());
    let Ok((_, Some(config))) = files::compile(text, ctx, files, true).await else {
        return fail(&shared, "downstream_pipeline_creation_failed");
    };
    let mut state = shared.lock();
    if state.jobs.get(&job_id).is_none_or(|j| j.status != Status::Pending) {
        return; // canceled meanwhile
    }
    let (child, mut fx) = state.create_pipeline_with(
        &shared.render,
        target_id,
        &git_ref,
        tag,
        commit,
        source,
        forwarded,
        Arc::new(config),
        crate::state::PipelineOrigin { parent: Some((parent_id, job_id)), user_id },
    );
    if let Some(j) = state.jobs.get_mut(&job_id) {
        j.downstream = Some(child);
    }
    if trigger.depend {
        let child_status = state.pipelines[&child].status.clone();
        let bridge = if child_status.is_completed() { child_status } else { Status::Running };
        fx.merge(state.set_job_status(&shared.render, job_id, bridge));
    } else {
        fx.merge(state.set_job_status(&shared.render, job_id, Status::Success));
    }
    fx.merge(state.advance(&shared.render, parent_id));
    drop(state);
    shared.apply(fx);
}

/// Ends a job's process group (`kill -KILL -PGID`).
pub(crate) fn kill_group(pgid: Option<u32>) {
    if let Some(pgid) = pgid {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Merges the open merge requests set to auto-merge whose head pipeline just succeeded.
async fn auto_merge(shared: Arc<Shared>, pipeline_id: u64) {
    let candidates: Vec<(u64, Repo, String, String, u64)> = {
        let state = shared.lock();
        let Some(p) = state.pipelines.get(&pipeline_id) else { return };
        if p.status != Status::Success {
            return;
        }
        let repo = state.projects[usize::try_from(p.project_id - 1).unwrap_or(0)].repo.clone();
        state
            .merge_requests
            .values()
            .filter(|m| m.project_id == p.project_id && m.auto_merge && m.state == "opened")
            .filter(|m| m.source_branch == p.git_ref && m.sha == p.sha)
            .map(|m| (m.id, repo.clone(), m.source_branch.clone(), m.target_branch.clone(), m.iid))
            .collect()
    };
    for (mr_id, repo, source, target, iid) in candidates {
        let message = format!("Merge branch '{source}' into '{target}'\n\nSee merge request !{iid}");
        let outcome = repo.merge(&source, &target, &message).await;
        let mut state = shared.lock();
        let Some(mr) = state.merge_requests.get_mut(&mr_id) else { continue };
        match outcome {
            Ok(MergeOutcome::Merged(sha)) => {
                mr.state = "merged".into();
                mr.merge_commit_sha = Some(sha);
                mr.merged_at = Some(Utc::now());
                mr.updated_at = Utc::now();
                let body = shared.render.merge_request_hook(&state, &state.merge_requests[&mr_id], "merge");
                let project_id = state.merge_requests[&mr_id].project_id;
                drop(state);
                shared.apply(Effects {
                    events: vec![Outgoing { project_id, kind: EventKind::MergeRequest, body }],
                    ..Effects::default()
                });
            }
            Ok(MergeOutcome::Conflict) => tracing::warn!(mr.iid = iid, "auto-merge: the branches conflict"),
            Err(e) => tracing::warn!(mr.iid = iid, "auto-merge failed: {e}"),
        }
    }
}

/// Sends Push Hooks when a branch head moves, whoever moved it (a merge here, or a `git push` or
/// commit into the repository from outside).
async fn watch_refs(shared: Arc<Shared>, project_id: u64, repo: Repo, every: Duration) {
    let mut known = repo.branches().await.unwrap_or_default();
    loop {
        tokio::time::sleep(every).await;
        let Ok(now) = repo.branches().await else { continue };
        if now == known {
            continue;
        }
        let zeros = "0".repeat(40);
        let mut events = Vec::new();
        let mut names: Vec<&String> = known.iter().chain(now.iter()).map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        for name in names {
            let before = known.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone());
            let after = now.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone());
            if before == after {
                continue;
            }
            let (before, after) = (before.unwrap_or_else(|| zeros.clone()), after.unwrap_or_else(|| zeros.clone()));
            let mut commits = Vec::new();
            let mut total = 0;
            if after != zeros {
                let from = (before != zeros).then_some(before.as_str());
                // GitLab lists at most the newest 20 commits; total_commits_count has the real count.
                let shas = repo.commits_between(from, &after, 10_000).await.unwrap_or_default();
                total = shas.len();
                for sha in shas.iter().take(20).rev() {
                    if let Ok(c) = repo.commit(sha).await {
                        commits.push(c);
                    }
                }
            }
            let state = shared.lock();
            let project = &state.projects[usize::try_from(project_id - 1).unwrap_or(0)];
            let body = shared.render.push_hook(project, name, &before, &after, &commits, total);
            drop(state);
            events.push(Outgoing { project_id, kind: EventKind::Push, body });
        }
        known = now;
        shared.apply(Effects { events, ..Effects::default() });
    }
}

/// A running sim. Dropping it stops the server and its tasks.
#[derive(Debug)]
pub struct Sim {
    url: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _temp: Option<tempfile::TempDir>,
}

impl Sim {
    /// Starts a sim on `config.listen`.
    pub async fn start(config: SimConfig) -> Result<Self, StartError> {
        let temp = match &config.state_dir {
            Some(_) => None,
            None => Some(tempfile::Builder::new().prefix("gitlab-sim-").tempdir()?),
        };
        let work_dir =
            config.state_dir.clone().unwrap_or_else(|| temp.as_ref().map(|t| t.path().to_owned()).unwrap_or_default());
        std::fs::create_dir_all(&work_dir)?;
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let mut projects = Vec::new();
        let now = Utc::now();
        let mut directory = access::Directory::default();
        for (i, (path, repo_path)) in config.projects.iter().enumerate() {
            let path = path.trim_matches('/').to_owned();
            if !path.contains('/') || path.split('/').any(str::is_empty) {
                return Err(StartError::Config(format!("project {path:?}: expected GROUP/NAME")));
            }
            if projects.iter().any(|p: &Project| p.path == path) {
                return Err(StartError::Config(format!("project {path:?} given twice")));
            }
            let repo =
                Repo::open(repo_path).await.map_err(|source| StartError::Repo { project: path.clone(), source })?;
            let default_branch = repo.default_branch().await.unwrap_or_else(|| "main".into());
            let group_id = directory.ensure_groups(path.rsplit_once('/').map(|(ns, _)| ns).unwrap_or(""), now);
            projects.push(Project {
                id: i as u64 + 1,
                path,
                repo,
                default_branch,
                next_pipeline_iid: 1,
                next_mr_iid: 1,
                created_at: now,
                group_id,
                visibility: access::Visibility::Private,
                public_jobs: true,
            });
        }
        access::populate(&mut directory, &mut projects, &config, now)?;
        let watched: Vec<(u64, Repo)> = projects.iter().map(|p| (p.id, p.repo.clone())).collect();
        cloudci_gitlab::install_tls_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(format!("GitLab/{VERSION}"))
            .build()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State { projects, access: directory, ..State::default() }),
            render: Render { base: url.clone() },
            premium: config.premium,
            hook_rate_limit: config.hook_rate_limit,
            hook_rate_window: config.hook_rate_window,
            faults: Faults::new(config.faults.clone(), config.seed),
            runner_slots: Arc::new(tokio::sync::Semaphore::new(config.runners.max(1))),
            http,
            work_dir,
            counter: wire::Counter::default(),
        });
        let mut tasks = Vec::new();
        for (id, repo) in watched {
            tasks.push(tokio::spawn(watch_refs(shared.clone(), id, repo, config.ref_poll)));
        }
        let app = api::router(shared.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("gitlab-sim server stopped: {e}");
            }
        }));
        Ok(Self { url, addr, shared, tasks, _temp: temp })
    }

    /// `http://HOST:PORT`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered and bytes sent per API route since the start or the last
    /// [`Sim::reset_requests`] (also `GET /-/sim/requests`, which GitLab does not have).
    pub fn requests(&self) -> RequestCounts {
        self.shared.counter.snapshot()
    }

    /// Starts the request counts again from zero (also `DELETE /-/sim/requests`).
    pub fn reset_requests(&self) {
        self.shared.counter.reset();
    }

    /// Webhook deliveries dropped so far by the per-namespace rate limit
    /// ([`SimConfig::hook_rate_limit`]), per top-level group path. GitLab only writes them to its
    /// auth log; this is the sim's record of what GitLab never sent.
    pub fn hook_rate_limited(&self) -> std::collections::BTreeMap<String, u64> {
        self.shared.lock().hook_rate_limited.clone()
    }

    /// Every delivery attempt in every hook's log (project and group hooks), oldest first per
    /// hook: when it was sent (its log entry's time, written after the answer, less its
    /// `execution_duration`) and the answer's `response_status` as GitLab's API shows it
    /// (`200`, `503`, or `internal error` when no answer came), and its `response_body` (the
    /// first 8 KB: the receiver's reason for a 503). For harnesses that judge a receiver by its
    /// answers (`cloudci-chaos`'s relay run).
    pub fn delivery_outcomes(&self) -> Vec<(chrono::DateTime<chrono::Utc>, String, String)> {
        let state = self.shared.lock();
        let sent =
            |d: &state::DeliveryLog| d.created_at - chrono::Duration::milliseconds((d.execution_duration * 1e3) as i64);
        let outcome = |d: &state::DeliveryLog| (sent(d), d.response_status.clone(), d.response_body.clone());
        state.hooks.values().flat_map(|h| h.deliveries.iter().map(outcome)).collect()
    }

    /// Moves every logged delivery of hook `hook_id` `by` into the past, as if the sim had been
    /// running that long: for tests of the delivery log's 7-day window (FACTS §1.5). Entries moved
    /// past GitLab's 14-day retention are pruned at the next delivery.
    pub fn age_hook_deliveries(&self, hook_id: u64, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        if let Some(hook) = self.shared.lock().hooks.get_mut(&hook_id) {
            for d in &mut hook.deliveries {
                d.created_at -= by;
            }
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let pgids: Vec<Option<u32>> = self.shared.lock().jobs.values().map(|j| j.pgid).collect();
        for pgid in pgids {
            kill_group(pgid);
        }
    }
}
