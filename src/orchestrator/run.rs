//! Carrying out a plan: start pipelines in dependency order, follow them (webhook events first,
//! GitLab's API when the events go quiet), write logs to disk, and after success fetch the
//! firmware, open the merge request, optionally auto-merge and promote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cloudci_gitlab::types::{CreateMergeRequest, CreatePipeline, MergeOptions, Status};
use cloudci_gitlab::{Gitlab, JobFilter, JobId, MergeRequestFilter, PipelineId, ProjectRef};
use cloudci_webhook::{BuildEvent, EventFilter, Hub};
use futures_util::{Stream, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::watch;

use super::logs;
use super::plan::{Plan, PlannedBuild};
use crate::builds::{BuildStore, JobRecord};
use crate::config::Config;

/// Where live events come from.
#[derive(Clone)]
pub enum EventFeed {
    /// No daemon: poll GitLab.
    None,
    /// The daemon in this process.
    Hub(Hub),
    /// A daemon's `/v1/events`, reached with a token.
    Remote {
        /// `http://127.0.0.1:8788`
        api_url: String,
        /// A local API token.
        token: String,
    },
}

/// How progress reaches the user.
pub trait Reporter: Send + Sync {
    /// One line about one build.
    fn line(&self, build: &str, text: &str);
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

/// How one build ended.
#[derive(Debug, Clone, Serialize)]
pub struct BuildOutcome {
    /// Project name.
    pub project: String,
    /// Target name.
    pub target: String,
    /// `success`, `failed`, `canceled`, `skipped` (a dependency failed), or `error` (GitLab refused).
    pub status: String,
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
    /// The job whose artifacts were fetched (passed on when promoting).
    #[serde(skip)]
    pub artifact_job: Option<u64>,
    /// The merge request opened or found.
    pub merge_request: Option<String>,
    /// The promotion pipeline started.
    pub promoted: Option<String>,
    /// Why it did not run or what went wrong.
    pub reason: Option<String>,
    /// Jobs and their final statuses.
    pub jobs: BTreeMap<String, String>,
    /// Job ids and log files by name (for the build record).
    #[serde(skip)]
    pub job_details: BTreeMap<String, (u64, Option<PathBuf>)>,
}

impl BuildOutcome {
    fn new(b: &PlannedBuild) -> Self {
        Self {
            project: b.project.clone(),
            target: b.target.clone(),
            status: "skipped".into(),
            pipeline_url: None,
            pipeline_id: None,
            git_ref: b.git_ref.clone(),
            sha: None,
            artifacts: None,
            artifact_job: None,
            merge_request: None,
            promoted: None,
            reason: None,
            jobs: BTreeMap::new(),
            job_details: BTreeMap::new(),
        }
    }

    /// True for a successful build.
    pub fn succeeded(&self) -> bool {
        self.status == "success"
    }
}

/// The orchestrator.
pub struct Runner {
    /// GitLab.
    pub gitlab: Gitlab,
    /// Configuration.
    pub config: Arc<Config>,
    /// The state directory root (logs/, artifacts/).
    pub state_dir: PathBuf,
    /// Live events.
    pub feed: EventFeed,
    /// Run the after-success actions.
    pub actions: bool,
    /// Progress.
    pub reporter: Arc<dyn Reporter>,
    /// Poll GitLab after this long without events about a pipeline.
    pub silence: Duration,
    /// Where build records go, with the id of each `(project, target)` of this run.
    pub records: Option<Records>,
    /// Follow running jobs' logs as they grow: into the run's log files and, line by line, to the
    /// reporter. (GitLab's API sends the whole log on every read, so this costs a full download
    /// per poll; it is for watching, not the default.)
    pub follow_logs: bool,
}

/// A build store and the record id of each `(project, target)` of the run.
pub type Records = (Arc<dyn BuildStore>, BTreeMap<(String, String), i64>);

/// Starts a run in `store`: one queued record per build of `plan`. Returns the run id and the
/// handle the [`Runner`] saves progress through. Blocking (SQLite).
pub fn start_run(store: Arc<dyn BuildStore>, plan: &Plan) -> Result<(i64, Records), crate::builds::BuildStoreError> {
    let wanted: Vec<(String, String, String)> =
        plan.builds.values().flatten().map(|b| (b.project.clone(), b.gitlab.clone(), b.target.clone())).collect();
    let (run, ids) = store.create_run(&wanted)?;
    let map = wanted.into_iter().zip(ids).map(|((p, _, t), id)| ((p, t), id)).collect();
    Ok((run, (store, map)))
}

type Done = watch::Receiver<Option<bool>>;

impl Runner {
    /// Runs every build of `plan`; each project starts once its dependencies succeeded.
    pub async fn run(&self, plan: &Plan) -> std::io::Result<(PathBuf, Vec<BuildOutcome>)> {
        let run_dir = logs::new_run_dir(&self.state_dir.join("logs"))?;
        let mut senders = BTreeMap::new();
        let mut receivers: BTreeMap<String, Done> = BTreeMap::new();
        for name in plan.builds.keys() {
            let (tx, rx) = watch::channel(None);
            senders.insert(name.clone(), tx);
            receivers.insert(name.clone(), rx);
        }
        let mut tasks = Vec::new();
        for wave in &plan.waves {
            for name in wave {
                let deps: Vec<(String, Done)> =
                    plan.needs[name].iter().map(|d| (d.clone(), receivers[d].clone())).collect();
                let builds = plan.builds[name].clone();
                let done = senders.remove(name).expect("one sender per project");
                tasks.push(self.project(name.clone(), builds, deps, done, run_dir.clone()));
            }
        }
        let outcomes = futures_util::future::join_all(tasks).await.into_iter().flatten().collect();
        Ok((run_dir, outcomes))
    }

    async fn project(
        &self,
        name: String,
        builds: Vec<PlannedBuild>,
        deps: Vec<(String, Done)>,
        done: watch::Sender<Option<bool>>,
        run_dir: PathBuf,
    ) -> Vec<BuildOutcome> {
        for (dep, mut rx) in deps {
            let ok = loop {
                if let Some(ok) = *rx.borrow() {
                    break ok;
                }
                if rx.changed().await.is_err() {
                    break false;
                }
            };
            if !ok {
                self.reporter.line(&name, &format!("skipped: {dep} did not succeed"));
                let _ = done.send(Some(false));
                let skipped: Vec<BuildOutcome> = builds
                    .iter()
                    .map(|b| BuildOutcome {
                        reason: Some(format!("skipped because {dep} did not succeed")),
                        ..BuildOutcome::new(b)
                    })
                    .collect();
                for (b, o) in builds.iter().zip(&skipped) {
                    self.record(b, o, "skipped", &run_dir).await;
                }
                return skipped;
            }
        }
        let outcomes: Vec<BuildOutcome> =
            futures_util::future::join_all(builds.iter().map(|b| self.build(b, &run_dir))).await;
        let all_ok = !outcomes.is_empty() && outcomes.iter().all(BuildOutcome::succeeded);
        let mut outcomes = outcomes;
        if all_ok && self.actions {
            self.project_actions(&name, &mut outcomes).await;
            for (b, o) in builds.iter().zip(&outcomes) {
                self.record(b, o, &o.status, &run_dir).await;
            }
        }
        let _ = done.send(Some(all_ok));
        outcomes
    }

    /// Starts the pipeline. When GitLab may or may not have done it ([`Error::MaybeApplied`]),
    /// looks for a pipeline carrying this request's id and adopts it, or tries again when there
    /// is none — never two pipelines for one build.
    async fn start_pipeline(
        &self,
        project: &ProjectRef,
        params: &CreatePipeline,
        label: &str,
    ) -> Result<cloudci_gitlab::types::Pipeline, cloudci_gitlab::Error> {
        let since = chrono::Utc::now() - chrono::Duration::seconds(10);
        let request = params.variables.iter().find(|v| v.key == REQUEST_VARIABLE).map(|v| v.value.clone());
        let mut attempts = 0;
        loop {
            match self.gitlab.create_pipeline(project.clone(), params).await {
                Ok(p) => return Ok(p),
                Err(e @ cloudci_gitlab::Error::MaybeApplied { .. }) if attempts < 3 => {
                    attempts += 1;
                    self.reporter.line(label, &format!("{e}; checking whether GitLab started it"));
                    if let Some(id) = &request
                        && let Some(p) = self.find_pipeline(project, &params.git_ref, id, since).await?
                    {
                        self.reporter.line(label, &format!("it did: pipeline {}", p.id));
                        return Ok(p);
                    }
                    self.reporter.line(label, "it did not; starting it again");
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn find_pipeline(
        &self,
        project: &ProjectRef,
        git_ref: &str,
        request: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<cloudci_gitlab::types::Pipeline>, cloudci_gitlab::Error> {
        let filter = cloudci_gitlab::PipelineFilter {
            git_ref: Some(git_ref.to_owned()),
            source: Some("api".into()),
            updated_after: Some(since),
            ..Default::default()
        };
        let candidates: Vec<_> = self.gitlab.pipelines(project.clone(), &filter).take(50).try_collect().await?;
        for c in candidates {
            let vars = self.gitlab.pipeline_variables(project.clone(), c.id).await?;
            if vars.iter().any(|v| v.key == REQUEST_VARIABLE && v.value == request) {
                return self.gitlab.pipeline(project.clone(), c.id).await.map(Some);
            }
        }
        Ok(None)
    }

    /// Saves where a build stands into the build store, if there is one.
    async fn record(&self, b: &PlannedBuild, o: &BuildOutcome, status: &str, run_dir: &Path) {
        let Some((store, ids)) = &self.records else { return };
        let Some(id) = ids.get(&(b.project.clone(), b.target.clone())).copied() else { return };
        let store = store.clone();
        let (o, status, run_dir) = (o.clone(), status.to_owned(), run_dir.display().to_string());
        let saved = tokio::task::spawn_blocking(move || {
            let Some(mut r) = store.get(id)? else { return Ok(()) };
            r.status = status;
            r.git_ref = o.git_ref;
            r.sha = o.sha;
            r.pipeline_id = o.pipeline_id;
            r.pipeline_url = o.pipeline_url;
            r.artifacts = o.artifacts.map(|p| p.display().to_string());
            r.merge_request = o.merge_request;
            r.promoted = o.promoted;
            r.reason = o.reason;
            r.log_dir = Some(run_dir);
            for (name, status) in &o.jobs {
                let (job_id, log) = o.job_details.get(name).cloned().unwrap_or((0, None));
                let entry =
                    r.jobs.entry(name.clone()).or_insert(JobRecord { id: job_id, status: String::new(), log: None });
                entry.status.clone_from(status);
                if job_id != 0 {
                    entry.id = job_id;
                }
                if let Some(log) = log {
                    entry.log = Some(log.display().to_string());
                }
            }
            store.save(&r)
        })
        .await;
        if let Ok(Err(e)) = saved {
            tracing::warn!("saving build {id}: {e}");
        }
    }

    async fn build(&self, b: &PlannedBuild, run_dir: &Path) -> BuildOutcome {
        let label = format!("{}/{}", b.project, b.target);
        let mut outcome = BuildOutcome::new(b);
        match self.build_inner(b, &label, run_dir, &mut outcome).await {
            Ok(()) => {}
            Err(e) => {
                self.reporter.line(&label, &format!("error: {e}"));
                outcome.status = "error".into();
                outcome.reason = Some(e.to_string());
            }
        }
        self.record(b, &outcome, &outcome.status, run_dir).await;
        outcome
    }

    async fn build_inner(
        &self,
        b: &PlannedBuild,
        label: &str,
        run_dir: &Path,
        outcome: &mut BuildOutcome,
    ) -> Result<(), cloudci_gitlab::Error> {
        let project = ProjectRef::parse(&b.gitlab);
        let git_ref = match &b.git_ref {
            Some(r) => r.clone(),
            None => self
                .gitlab
                .project(project.clone())
                .await?
                .default_branch
                .ok_or_else(|| cloudci_gitlab::Error::Config(format!("{} has no default branch", b.gitlab)))?,
        };
        outcome.git_ref = Some(git_ref.clone());
        // Listen before creating, so no event about the new pipeline can be missed.
        let mut events = self.subscribe(&b.gitlab).await;
        let mut params = CreatePipeline::new(git_ref);
        for (k, v) in &b.variables {
            params = params.variable(k.clone(), v.clone());
        }
        // Names this request, so that after an ambiguous failure the pipeline it may have
        // created can be recognised (and not started a second time).
        params = params.variable(REQUEST_VARIABLE, cloudci_webhook::secrets::random_token(12));
        let pipeline = self.start_pipeline(&project, &params, label).await?;
        outcome.pipeline_id = Some(pipeline.id.0);
        outcome.pipeline_url = Some(pipeline.web_url.clone());
        outcome.sha = Some(pipeline.sha.clone());
        self.reporter.line(label, &format!("pipeline {} started: {}", pipeline.id, pipeline.web_url));
        self.record(b, outcome, "running", run_dir).await;
        // Tell the daemon, so its reconciler covers this pipeline if the webhooks stay silent.
        let (pid, path, id) = (pipeline.project_id.map(|p| p.0).unwrap_or(0), b.gitlab.clone(), pipeline.id.0);
        match &self.feed {
            EventFeed::Hub(hub) => {
                let store = hub.store().clone();
                let _ = tokio::task::spawn_blocking(move || store.track_pipeline(pid, &path, id)).await;
            }
            EventFeed::Remote { api_url, token } => {
                let sent = reqwest::Client::new()
                    .post(format!("{api_url}/v1/watch"))
                    .bearer_auth(token)
                    .json(&serde_json::json!({"project_id": pid, "project": path, "pipeline_id": id}))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if !sent.is_ok_and(|r| r.status().is_success()) {
                    tracing::warn!(pipeline.id = id, "the daemon did not take the pipeline to watch");
                }
            }
            EventFeed::None => {}
        }
        let log_dir = run_dir.join(&b.project).join(&b.target);
        let status = self.wait(&project, pipeline.id, label, &mut events, outcome, &log_dir).await?;
        outcome.status = status.to_string();
        if status.is_blocked() {
            outcome.reason = Some("waiting for a manual job to be started on GitLab".into());
        }
        self.reporter.line(label, &format!("pipeline {}: {status}", pipeline.id));

        // Logs of every job, and error.log at the first failed one.
        let jobs: Vec<_> =
            self.gitlab.pipeline_jobs(project.clone(), pipeline.id, &JobFilter::default()).try_collect().await?;
        let dir = run_dir.join(&b.project).join(&b.target);
        std::fs::create_dir_all(&dir).map_err(|source| cloudci_gitlab::Error::Io { path: dir.clone(), source })?;
        for job in &jobs {
            outcome.jobs.insert(job.name.clone(), job.status.to_string());
            outcome.job_details.insert(job.name.clone(), (job.id.0, None));
            if job.started_at.is_none() {
                continue;
            }
            let text = self.gitlab.job_trace(project.clone(), job.id).await?;
            let path = dir.join(format!("{}.log", sanitize(&job.name)));
            std::fs::write(&path, &text).map_err(|source| cloudci_gitlab::Error::Io { path: path.clone(), source })?;
            outcome.job_details.insert(job.name.clone(), (job.id.0, Some(path.clone())));
            if job.status == Status::Failed && !job.allow_failure {
                let _ = logs::mark_error(run_dir, &path);
            }
        }
        if status == Status::Success
            && self.actions
            && self.config.projects[&b.project].after_success.download_artifacts
        {
            let dest = self
                .state_dir
                .join("artifacts")
                .join(sanitize(&b.project))
                .join(&pipeline.sha)
                .join(sanitize(&b.target));
            let mut any = false;
            for job in jobs.iter().filter(|j| j.artifacts_file.is_some()) {
                let zip = dest.join(format!("{}.zip", sanitize(&job.name)));
                let size = self.gitlab.download_artifacts(project.clone(), job.id, &zip).await?;
                unzip(&zip, &dest).map_err(|source| cloudci_gitlab::Error::Io { path: zip.clone(), source })?;
                self.reporter.line(label, &format!("artifacts of {} ({size} bytes) in {}", job.name, dest.display()));
                outcome.artifact_job.get_or_insert(job.id.0);
                any = true;
            }
            if any {
                outcome.artifacts = Some(dest);
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        gitlab_project: &str,
    ) -> Option<std::pin::Pin<Box<dyn Stream<Item = BuildEvent> + Send>>> {
        match &self.feed {
            EventFeed::None => None,
            EventFeed::Hub(hub) => {
                let filter = EventFilter { projects: vec![gitlab_project.to_owned()], ..EventFilter::default() };
                let after = {
                    let store = hub.store().clone();
                    tokio::task::spawn_blocking(move || store.last_seq()).await.ok().and_then(Result::ok)
                };
                Some(Box::pin(hub.subscribe(filter, after).filter_map(|r| async move { r.ok() })))
            }
            EventFeed::Remote { api_url, token } => {
                match crate::sse_client::subscribe(api_url, token, &format!("project={gitlab_project}")).await {
                    Ok(s) => Some(Box::pin(s)),
                    Err(e) => {
                        tracing::warn!("the daemon's event stream is not available ({e}); polling GitLab");
                        None
                    }
                }
            }
        }
    }

    /// Follows a pipeline until it finishes: from events while they come, from GitLab's API when
    /// they have been silent for `silence`.
    async fn wait(
        &self,
        project: &ProjectRef,
        id: PipelineId,
        label: &str,
        events: &mut Option<std::pin::Pin<Box<dyn Stream<Item = BuildEvent> + Send>>>,
        outcome: &mut BuildOutcome,
        log_dir: &Path,
    ) -> Result<Status, cloudci_gitlab::Error> {
        let mut poll_wait = self.silence;
        let mut followed = std::collections::BTreeSet::new();
        loop {
            let next = match events.as_mut() {
                Some(stream) => match tokio::time::timeout(poll_wait, stream.next()).await {
                    Ok(Some(e)) => Some(e),
                    // Silence.
                    Err(_) => None,
                    // The stream ended (the daemon went away): poll from now on.
                    Ok(None) => {
                        self.reporter.line(label, "event stream closed; following through GitLab's API");
                        *events = None;
                        None
                    }
                },
                None => {
                    tokio::time::sleep(poll_wait).await;
                    None
                }
            };
            match next {
                Some(e) if e.pipeline_id == Some(id.0) => {
                    poll_wait = self.silence;
                    let status = e.status().unwrap_or(Status::Created);
                    match e.kind {
                        cloudci_webhook::EventKind::Job => {
                            let name = e.job_name.clone().unwrap_or_default();
                            let job = e.job_id.unwrap_or(0);
                            self.job_seen(project, label, log_dir, outcome, &mut followed, &name, job, &status);
                        }
                        cloudci_webhook::EventKind::Pipeline if settled(&status) => return Ok(status),
                        _ => {}
                    }
                }
                Some(_) => {}
                None => {
                    // Silence (or no event feed): ask GitLab, less often the longer it lasts.
                    let p = self.gitlab.pipeline(project.clone(), id).await?;
                    if settled(&p.status) {
                        return Ok(p.status);
                    }
                    // Without events, job changes are seen here (one more request per poll).
                    let jobs: Vec<_> =
                        self.gitlab.pipeline_jobs(project.clone(), id, &JobFilter::default()).try_collect().await?;
                    for j in jobs {
                        if outcome.jobs.get(&j.name) != Some(&j.status.to_string()) {
                            self.job_seen(project, label, log_dir, outcome, &mut followed, &j.name, j.id.0, &j.status);
                        }
                    }
                    poll_wait = (poll_wait * 2).min(Duration::from_secs(30)).max(Duration::from_millis(500));
                }
            }
        }
    }

    /// A job's new status: recorded, reported, and its log followed once it runs (when asked).
    #[allow(clippy::too_many_arguments)]
    fn job_seen(
        &self,
        project: &ProjectRef,
        label: &str,
        log_dir: &Path,
        outcome: &mut BuildOutcome,
        followed: &mut std::collections::BTreeSet<u64>,
        name: &str,
        job: u64,
        status: &Status,
    ) {
        outcome.jobs.insert(name.to_owned(), status.to_string());
        self.reporter.line(label, &format!("{name}: {status}"));
        let started = *status == Status::Running || status.is_completed();
        if self.follow_logs && started && job != 0 && followed.insert(job) {
            tokio::spawn(follow_log(
                self.gitlab.clone(),
                project.clone(),
                JobId(job),
                log_dir.join(format!("{}.log", sanitize(name))),
                format!("{label} {name}"),
                self.reporter.clone(),
            ));
        }
    }

    /// After every target of a project succeeded: the merge request (found or opened once),
    /// auto-merge, promotion.
    async fn project_actions(&self, name: &str, outcomes: &mut [BuildOutcome]) {
        let p = &self.config.projects[name];
        let project = ProjectRef::parse(&p.gitlab);
        let Some(first) = outcomes.first() else { return };
        let (Some(git_ref), Some(sha)) = (first.git_ref.clone(), first.sha.clone()) else { return };
        let mut mr_url = None;
        if let Some(mr) = &p.after_success.merge_request
            && mr.target_branch != git_ref
        {
            match self
                .merge_request(&project, &git_ref, &mr.target_branch, mr.title.as_deref(), p.after_success.auto_merge)
                .await
            {
                Ok(url) => {
                    self.reporter.line(name, &format!("merge request: {url}"));
                    mr_url = Some(url);
                }
                Err(e) => self.reporter.line(name, &format!("merge request failed: {e}")),
            }
        }
        let mut promoted = None;
        if let Some(promote) = &p.after_success.promote {
            let target = ProjectRef::parse(promote.project.as_deref().unwrap_or(&p.gitlab));
            let artifact_job = outcomes.iter().find_map(|o| o.artifact_job).map(|j| j.to_string()).unwrap_or_default();
            let mut params = CreatePipeline::new(promote.git_ref.clone())
                .variable("CLOUDCI_SHA", sha.clone())
                .variable("CLOUDCI_ARTIFACT_JOB", artifact_job);
            for (k, v) in &promote.variables {
                params = params.variable(k.clone(), v.clone());
            }
            match self.gitlab.create_pipeline(target, &params).await {
                Ok(pl) => {
                    self.reporter.line(name, &format!("promoted: pipeline {} {}", pl.id, pl.web_url));
                    promoted = Some(pl.web_url);
                }
                Err(e) => self.reporter.line(name, &format!("promotion failed: {e}")),
            }
        }
        for o in outcomes.iter_mut() {
            o.merge_request.clone_from(&mr_url);
            o.promoted.clone_from(&promoted);
        }
    }

    /// The open merge request from `source` into `target`, created if there is none.
    async fn merge_request(
        &self,
        project: &ProjectRef,
        source: &str,
        target: &str,
        title: Option<&str>,
        auto_merge: bool,
    ) -> Result<String, cloudci_gitlab::Error> {
        let filter = MergeRequestFilter {
            source_branch: Some(source.to_owned()),
            target_branch: Some(target.to_owned()),
            state: Some("opened".into()),
        };
        let params = CreateMergeRequest {
            source_branch: source.to_owned(),
            target_branch: target.to_owned(),
            title: title.map(str::to_owned).unwrap_or_else(|| format!("{source}: built by cloudci")),
            description: Some("Opened by cloudci after every target built successfully.".into()),
            ..Default::default()
        };
        // Find, else open; after an ambiguous failure, find again before opening again.
        let mut attempts = 0;
        let mr = loop {
            let existing: Vec<_> = self.gitlab.merge_requests(project.clone(), &filter).try_collect().await?;
            if let Some(mr) = existing.into_iter().next() {
                break mr;
            }
            match self.gitlab.create_merge_request(project.clone(), &params).await {
                Ok(mr) => break mr,
                Err(cloudci_gitlab::Error::MaybeApplied { .. }) if attempts < 3 => attempts += 1,
                Err(e) => return Err(e),
            }
        };
        if auto_merge && !mr.merge_when_pipeline_succeeds {
            self.gitlab
                .merge(project.clone(), mr.iid, &MergeOptions { auto_merge: true, ..Default::default() })
                .await?;
        }
        Ok(mr.web_url)
    }
}

/// Appends a running job's new output to `path` and reports it line by line, until the job ends.
async fn follow_log(
    gitlab: Gitlab,
    project: ProjectRef,
    job: JobId,
    path: PathBuf,
    label: String,
    reporter: Arc<dyn Reporter>,
) {
    use tokio::io::AsyncWriteExt;
    if let Some(dir) = path.parent() {
        let _ = tokio::fs::create_dir_all(dir).await;
    }
    let Ok(mut file) = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await else { return };
    let mut offset = 0;
    let mut partial = String::new();
    loop {
        // Status first: output written before the job ended is in the read that follows.
        let finished = match gitlab.job(project.clone(), job).await {
            Ok(j) => j.status.is_completed(),
            Err(e) => {
                tracing::debug!("following a log: {e}");
                true
            }
        };
        if let Ok(chunk) = gitlab.job_trace_from(project.clone(), job, offset).await {
            offset = chunk.next_offset;
            let _ = file.write_all(&chunk.data).await;
            partial.push_str(&String::from_utf8_lossy(&chunk.data));
            while let Some(end) = partial.find('\n') {
                let line: String = partial.drain(..=end).collect();
                reporter.line(&label, line.trim_end());
            }
        }
        if finished {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The CI variable holding the id of the request that started a pipeline.
pub const REQUEST_VARIABLE: &str = "CLOUDCI_REQUEST";

/// Finished, or blocked on a person (a required manual job): either way, nothing more happens
/// without someone acting, so the build reports where it stands instead of waiting forever.
fn settled(status: &Status) -> bool {
    status.is_completed() || status.is_blocked()
}

/// A name safe as one path component.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

/// Extracts `zip` into `dest`, refusing entries that would land outside it.
fn unzip(zip: &Path, dest: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(zip)?;
    let mut archive = zip::ZipArchive::new(file).map_err(std::io::Error::other)?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(std::io::Error::other)?;
        let Some(rel) = entry.enclosed_name() else { continue };
        let out = dest.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&out)?;
        } else {
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = std::fs::File::create(&out)?;
            std::io::copy(&mut entry, &mut f)?;
            #[cfg(unix)]
            if let Some(mode) = entry.unix_mode() {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode & 0o777))?;
            }
        }
    }
    Ok(())
}
