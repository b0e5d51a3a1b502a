//! Carrying builds to their end. A run is first recorded (one queued build per project ×
//! target, with everything needed to carry it on), then carried: projects start when their
//! dependencies succeeded, each build creates its pipeline once, follows it, writes its logs,
//! fetches its artifacts; the last build of a project to settle does the project's actions.
//! The same code carries a fresh run, a run resumed after a restart, and a retried build.
//! (About 450 lines: one attempt of a build, `build_pass`, is one function of ~200 lines.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use cloudci_gitlab::types::Status;
use cloudci_gitlab::{PipelineId, ProjectRef};
use tokio::sync::watch;

use super::follow::{JobSeen, settled};
use super::{BuildStatus, Finished, Orchestrator, OrchestratorError, Plan, Started, actions, logs, targets};
use crate::builds::{BuildRecord, BuildWork, JobRecord, NewBuild};

type Done = watch::Receiver<Option<bool>>;

impl Orchestrator {
    /// Records a run of `plan` and carries it on in the background.
    pub async fn start(&self, plan: &Plan, actions: bool) -> Result<Started, OrchestratorError> {
        let started = self.create(plan, actions).await?;
        let this = self.clone();
        let run = started.run;
        tokio::spawn(async move {
            if let Err(e) = this.drive_run(run).await {
                tracing::error!(run, "carrying the run: {e}");
            }
        });
        Ok(started)
    }

    /// Records a run of `plan` and carries it to its end.
    pub async fn run(&self, plan: &Plan, actions: bool) -> Result<Finished, OrchestratorError> {
        let started = self.create(plan, actions).await?;
        let records = self.drive_run(started.run).await?;
        let log_dir = records.first().and_then(|r| r.log_dir.clone()).map(PathBuf::from).unwrap_or_default();
        Ok(Finished { log_dir, outcomes: records.iter().map(Into::into).collect() })
    }

    /// Carries on every run this orchestrator owns that a stop or crash left unfinished. Each
    /// step a build did is recorded, so none is done twice.
    pub async fn resume(&self) {
        let runs = match self.records().unfinished_runs(self.inner.owner).await {
            Ok(runs) => runs,
            Err(e) => return tracing::error!("looking for unfinished builds: {e}"),
        };
        for run in runs {
            tracing::info!(run, "resuming an unfinished run");
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.drive_run(run).await {
                    tracing::error!(run, "resuming the run: {e}");
                }
            });
        }
    }

    /// Waits until build `id` is done (carrying it on in this process when it is this
    /// process's to carry and nobody does); returns its final record.
    pub async fn settle(&self, id: i64) -> Result<BuildRecord, OrchestratorError> {
        loop {
            let (record, work) = self.records().get(id).await?;
            if work.done {
                return Ok(record);
            }
            if work.owner == self.inner.owner {
                self.drive_build(id).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn create(&self, plan: &Plan, actions: bool) -> Result<Started, OrchestratorError> {
        let logs_root = self.state_dir().join("logs");
        let log_dir = logs::new_run_dir(&logs_root).map_err(OrchestratorError::io(&logs_root))?;
        // The targets of a project that share its pipeline share its request id too.
        let shared: BTreeMap<&String, String> =
            plan.builds.keys().map(|p| (p, cloudci_webhook::random_token(12))).collect();
        let builds: Vec<NewBuild> = plan
            .waves
            .iter()
            .flatten()
            .flat_map(|p| &plan.builds[p])
            .map(|b| NewBuild {
                project: b.project.clone(),
                gitlab: b.gitlab.clone(),
                target: b.target.clone(),
                work: BuildWork {
                    owner: self.inner.owner,
                    git_ref: b.git_ref.clone(),
                    variables: b.variables.clone(),
                    request_id: if b.shares_pipeline() {
                        shared[&b.project].clone()
                    } else {
                        cloudci_webhook::random_token(12)
                    },
                    needs: plan.needs[&b.project].clone(),
                    actions,
                    selector: b.selector.clone(),
                    ..BuildWork::default()
                },
            })
            .collect();
        let names: Vec<(String, String)> = builds.iter().map(|b| (b.project.clone(), b.target.clone())).collect();
        let (run, ids) = self.records().create_run(builds, log_dir.display().to_string()).await?;
        let builds = ids.into_iter().zip(names).map(|(id, (p, t))| (id, p, t)).collect();
        Ok(Started { run, builds })
    }

    /// Carries every build of `run`, projects in dependency order; returns the final records.
    async fn drive_run(&self, run: i64) -> Result<Vec<BuildRecord>, OrchestratorError> {
        let builds = self.records().run(run).await?;
        let mut projects: BTreeMap<String, (Vec<i64>, Vec<String>)> = BTreeMap::new();
        for (r, w) in &builds {
            let entry = projects.entry(r.project.clone()).or_insert_with(|| (Vec::new(), w.needs.clone()));
            entry.0.push(r.id);
        }
        let mut senders = BTreeMap::new();
        let mut receivers: BTreeMap<String, Done> = BTreeMap::new();
        for name in projects.keys() {
            let (tx, rx) = watch::channel(None);
            senders.insert(name.clone(), tx);
            receivers.insert(name.clone(), rx);
        }
        let tasks = projects.into_iter().map(|(name, (ids, needs))| {
            // A dependency outside the run was assumed built when it was planned.
            let deps: Vec<(String, Done)> =
                needs.iter().filter_map(|d| Some((d.clone(), receivers.get(d)?.clone()))).collect();
            let done = senders.remove(&name).expect("one sender per project");
            self.project(run, name, ids, deps, done)
        });
        futures_util::future::join_all(tasks).await;
        Ok(self.records().run(run).await?.into_iter().map(|(r, _)| r).collect())
    }

    async fn project(
        &self,
        run: i64,
        name: String,
        ids: Vec<i64>,
        deps: Vec<(String, Done)>,
        done: watch::Sender<Option<bool>>,
    ) {
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
                self.inner.reporter.line(&name, &format!("skipped: {dep} did not succeed"));
                for &id in &ids {
                    let reason = format!("skipped because {dep} did not succeed");
                    let skipped = self.records().update(id, move |r, w| {
                        if !w.done {
                            r.status = BuildStatus::Skipped;
                            r.reason = Some(reason.clone());
                            w.settled = Some(BuildStatus::Skipped);
                            w.done = true;
                        }
                    });
                    if let Err(e) = skipped.await {
                        tracing::warn!(build = id, "recording a skipped build: {e}");
                    }
                }
                let _ = done.send(Some(false));
                return;
            }
        }
        futures_util::future::join_all(ids.iter().map(|&id| self.drive_build(id))).await;
        let all_ok = match self.records().run(run).await {
            Ok(builds) => {
                builds.iter().filter(|(r, _)| ids.contains(&r.id)).all(|(r, _)| r.status == BuildStatus::Success)
            }
            Err(_) => false,
        };
        let _ = done.send(Some(all_ok && !ids.is_empty()));
    }

    pub(super) fn spawn_build(&self, id: i64) {
        let this = self.clone();
        tokio::spawn(async move { this.drive_build(id).await });
    }

    /// Carries build `id` to done, unless another task of this process already does (then that
    /// one goes round once more).
    async fn drive_build(&self, id: i64) {
        {
            let mut active = self.inner.active.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(again) = active.get_mut(&id) {
                *again = true;
                return;
            }
            active.insert(id, false);
        }
        loop {
            if let Err(e) = self.build_once(id).await {
                tracing::error!(build = id, "carrying the build: {e}");
            }
            let mut active = self.inner.active.lock().unwrap_or_else(|e| e.into_inner());
            if active.get(&id) == Some(&true) {
                active.insert(id, false);
            } else {
                active.remove(&id);
                return;
            }
        }
    }

    async fn build_once(&self, id: i64) -> Result<(), OrchestratorError> {
        let (record, work) = self.records().get(id).await?;
        if work.done {
            return Ok(());
        }
        if work.settled.is_none() {
            let label = format!("{}/{}", record.project, record.target);
            let settled = match self.build_pass(&record, &work, &label).await {
                Ok(status) => (status, None, None),
                Err(e) => {
                    self.inner.reporter.line(&label, &format!("error: {e}"));
                    let refused = match &e {
                        OrchestratorError::Gitlab(g) => g.status(),
                        OrchestratorError::Refused { .. } => Some(400),
                        _ => None,
                    };
                    (BuildStatus::Error, Some(e.to_string()), refused)
                }
            };
            self.records()
                .update(id, move |r, w| {
                    w.settled = Some(settled.0);
                    if let Some(reason) = &settled.1 {
                        r.reason = Some(reason.clone());
                    }
                    r.gitlab_status = settled.2;
                })
                .await?;
        }
        actions::finish_project(self, record.run, &record.project).await
    }

    /// One attempt of one build: its pipeline created (or adopted) once when the queue gives it
    /// a slot, followed until it settles, its jobs and logs recorded, its artifacts fetched on
    /// success.
    async fn build_pass(
        &self,
        record: &BuildRecord,
        work: &BuildWork,
        label: &str,
    ) -> Result<BuildStatus, OrchestratorError> {
        let id = record.id;
        let project = ProjectRef::parse(&record.gitlab);
        let follower = &self.inner.follower;
        // Listen before creating, so no event about the new pipeline can be missed.
        let events = follower.subscribe(&record.gitlab).await;
        let (pipeline, check_first, slot) = match record.pipeline_id {
            Some(p) => (PipelineId(p), true, Some(self.inner.queue.take_now())),
            None if work.selector.is_some() => {
                // Targets built by jobs share the project's pipeline: the first to get there
                // creates it, the others adopt it (one at a time, so it is created once).
                let lock = self.lock_for(record.run, &format!("create {}", record.project)).await;
                let _creating = lock.lock().await;
                if self.records().get(id).await?.0.status == BuildStatus::Canceled {
                    return Ok(BuildStatus::Canceled);
                }
                match self.sibling_pipeline(record, work).await? {
                    Some(p) => (p, true, None),
                    None => match self.create_when_its_turn(record, work, &project, label).await? {
                        Some((p, slot)) => (p, false, Some(slot)),
                        None => return Ok(BuildStatus::Canceled),
                    },
                }
            }
            None => match self.create_when_its_turn(record, work, &project, label).await? {
                Some((p, slot)) => (p, false, Some(slot)),
                None => return Ok(BuildStatus::Canceled),
            },
        };
        let selector = work.selector.clone();
        let mine = |name: &str| selector.as_ref().is_none_or(|s| s.matches(name));
        self.inner.reporter.state(label, BuildStatus::Running, None);
        if events.is_none() {
            // With a feed, the pipeline's first delivery lists its jobs.
            self.seed_jobs(id, &project, pipeline).await;
        }
        let record = self.records().get(id).await?.0;
        let log_dir = record.log_dir.as_ref().map(PathBuf::from).unwrap_or_else(|| self.state_dir().join("logs"));
        let dir = log_dir.join(&record.project).join(&record.target);

        // Job changes are saved in order by one writer, finished before the final jobs are.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<JobSeen>();
        let records = self.records().clone();
        let writer = tokio::spawn(async move {
            while let Some(j) = rx.recv().await {
                let saved = records.update(id, move |r, _| {
                    let entry = r.jobs.entry(j.name.clone()).or_insert(JobRecord {
                        id: j.id,
                        status: j.status.clone(),
                        log: None,
                        stage: j.stage.clone(),
                        allow_failure: false,
                    });
                    // An event about an older attempt of the job (GitLab gives a retry a new
                    // id) does not overwrite the newer one.
                    if j.id != 0 && j.id < entry.id {
                        return;
                    }
                    entry.status = j.status.clone();
                    if j.id != 0 {
                        entry.id = j.id;
                    }
                    if j.stage.is_some() {
                        entry.stage.clone_from(&j.stage);
                    }
                });
                if let Err(e) = saved.await {
                    tracing::warn!(build = id, "saving a job's status: {e}");
                }
            }
        });
        let mut followed = std::collections::BTreeSet::new();
        let mut log_tasks = Vec::new();
        let mut running: BTreeMap<String, Status> = BTreeMap::new();
        let (reporter, follow_logs, gitlab, this) =
            (&self.inner.reporter, self.inner.follow_logs, &self.inner.gitlab, self);
        let mut on_job = |j: JobSeen| {
            // In a shared pipeline, only the target's own jobs.
            if !mine(&j.name) {
                return;
            }
            reporter.line(label, &format!("{}: {}", j.name, j.status));
            running.insert(j.name.clone(), j.status.clone());
            let now: Vec<&str> =
                running.iter().filter(|(_, s)| **s == Status::Running).map(|(n, _)| n.as_str()).collect();
            reporter.state(label, BuildStatus::Running, (!now.is_empty()).then(|| now.join(", ")).as_deref());
            let started = j.status == Status::Running || j.status.is_completed();
            if follow_logs && started && j.id != 0 && followed.insert(j.id) {
                let lines: Arc<dyn super::Reporter> = reporter.clone();
                let tail = this.tail(&record, &j.name, j.id, Some((lines, format!("{label} {}", j.name))));
                log_tasks.push(tail.done);
            }
            let _ = tx.send(j);
        };
        // A target of a shared pipeline is settled when its own jobs are.
        let own_done = |jobs: &BTreeMap<String, Status>| {
            let Some(sel) = &work.selector else { return false };
            // Allowed-to-fail is not known here; it does not change whether they are done.
            targets::composite(jobs.iter().filter(|(n, _)| sel.matches(n)).map(|(n, s)| (n.as_str(), s, false)))
                .is_some_and(|c| c.status.is_final())
        };
        let done: Option<&super::follow::JobsDone<'_>> = if work.selector.is_some() { Some(&own_done) } else { None };
        let followed_to = follower.follow_until(&project, pipeline, events, check_first, &mut on_job, done).await;
        drop(tx);
        let _ = writer.await;
        // The pipeline settled: its slot goes to the next build in the queue.
        drop(slot);
        // Each followed log reads to its job's end, so the last lines (`ERROR: Job failed`) are
        // shown before the summary.
        let ends = log_tasks.into_iter().map(|mut done| async move {
            let _ = done.wait_for(Option::is_some).await;
        });
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), futures_util::future::join_all(ends)).await;
        let status = followed_to?;
        if work.selector.is_none() || settled(&status) {
            reporter.line(label, &format!("pipeline {pipeline}: {status}"));
        }

        // Every job of this attempt (GitLab lists the latest of each), with its log; in a
        // shared pipeline, the target's own.
        let all = self.settled_jobs(&project, pipeline).await?;
        let names: Vec<String> = all.iter().map(|j| j.name.clone()).collect();
        let jobs: Vec<_> = all.into_iter().filter(|j| mine(&j.name)).collect();
        let composite = match &work.selector {
            None => None,
            Some(sel) => match targets::composite(jobs.iter().map(|j| (j.name.as_str(), &j.status, j.allow_failure))) {
                Some(c) => Some(c),
                None => {
                    return Err(OrchestratorError::NothingToDo {
                        build: id,
                        what: format!(
                            "no job in pipeline {pipeline} (the target's {}; the pipeline's jobs: {})",
                            sel.describe(),
                            if names.is_empty() { "none".into() } else { names.join(", ") }
                        ),
                    });
                }
            },
        };
        std::fs::create_dir_all(&dir).map_err(OrchestratorError::io(&dir))?;
        let mut recorded = BTreeMap::new();
        for job in &jobs {
            let mut log = None;
            if job.started {
                let path = dir.join(format!("{}.log", actions::sanitize(&job.name)));
                // The log followed to its end is the log saved: not read again.
                if !self.log_followed(job.id.0, &path) {
                    let text = gitlab.job_trace(project.clone(), job.id).await?;
                    std::fs::write(&path, &text).map_err(OrchestratorError::io(&path))?;
                }
                if job.status == Status::Failed && !job.allow_failure {
                    let _ = logs::mark_error(&log_dir, &path);
                }
                log = Some(path.display().to_string());
            }
            recorded.insert(
                job.name.clone(),
                JobRecord {
                    id: job.id.0,
                    status: job.status.clone(),
                    log,
                    stage: Some(job.stage.clone()),
                    allow_failure: job.allow_failure,
                },
            );
        }
        let status = match &composite {
            Some(c) => c.status,
            None => BuildStatus::from_pipeline(&status),
        };
        let manual = matches!(status, BuildStatus::Manual | BuildStatus::Scheduled);
        let warnings = composite.map(|c| c.warnings).unwrap_or_default();
        self.records()
            .update(id, move |r, _| {
                r.jobs.clone_from(&recorded);
                r.warnings.clone_from(&warnings);
                if manual {
                    r.reason = Some("waiting for a manual job to be started on GitLab".into());
                }
            })
            .await?;
        if work.selector.is_some() {
            reporter.line(label, &format!("its jobs: {status}"));
        }
        self.inner.reporter.state(label, status, None);
        if status == BuildStatus::Success && work.actions {
            actions::fetch_artifacts(self, &record, &jobs, label).await?;
        }
        Ok(status)
    }
}
