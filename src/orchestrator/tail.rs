//! Following a running job's log into its file, cheaply. GitLab's trace API always answers with
//! the whole log (gzipped by its nginx), so the cost of following is the number of reads: they
//! come every second while the log grows and back off to [`Pace::MAX`] while it is quiet, and
//! stop at the job's final status. The file followed is the file saved: a job whose log was
//! followed to its end is not downloaded again ([`Tails::complete`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudci_gitlab::{Gitlab, JobId, ProjectRef};
use tokio::sync::watch;

use super::{Records, Reporter};

/// How long to wait before reading a log again: shorter while it grows, longer while it is quiet.
#[derive(Debug, Clone)]
pub struct Pace {
    min: Duration,
    max: Duration,
    wait: Duration,
}

impl Pace {
    /// The shortest wait by default: a growing log is read about once a second.
    pub const MIN: Duration = Duration::from_secs(1);
    /// The longest wait: a quiet job's log is still read this often.
    pub const MAX: Duration = Duration::from_secs(10);

    /// Starting at `min`, never above `max` (nor below `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), wait: min }
    }

    /// The wait after a read that found the log `grew` (halved) or not (doubled), ± 20%.
    pub fn after(&mut self, grew: bool) -> Duration {
        self.wait = if grew { (self.wait / 2).max(self.min) } else { (self.wait * 2).min(self.max) };
        super::follow::jittered(self.wait)
    }
}

impl Default for Pace {
    fn default() -> Self {
        Self::new(Self::MIN, Self::MAX)
    }
}

/// Where the follower learns that the job ended.
#[derive(Clone)]
pub enum JobState {
    /// Ask GitLab (`GET /jobs/:id`) before each read: no daemon, nothing else knows.
    Api,
    /// The build's record, which the daemon keeps current from webhooks: no request.
    Record {
        /// The build records.
        records: Records,
        /// The build.
        build: i64,
        /// The job's name in it.
        name: String,
    },
}

impl JobState {
    /// Whether attempt `job` is over (a newer attempt of the name also ends it). `None` when
    /// it cannot be told (the follower gives up).
    async fn ended(&self, gitlab: &Gitlab, project: &ProjectRef, job: JobId) -> Option<bool> {
        match self {
            Self::Api => match gitlab.job(project.clone(), job).await {
                Ok(j) => Some(j.status.is_completed()),
                Err(e) => {
                    tracing::debug!("following a log: {e}");
                    None
                }
            },
            Self::Record { records, build, name } => {
                let (r, _) = records.get(*build).await.ok()?;
                Some(r.jobs.get(name).is_none_or(|j| j.id != job.0 || j.status.is_completed()))
            }
        }
    }
}

/// Reads job `job`'s log into `path` (from its start) as it grows, passing each line to
/// `lines` (reporter, label) when given, until the job ends. Returns whether the file holds the
/// whole log (the job's final status was seen before the last read).
pub async fn follow_log(
    gitlab: Gitlab,
    project: ProjectRef,
    job: JobId,
    path: PathBuf,
    lines: Option<(Arc<dyn Reporter>, String)>,
    state: JobState,
) -> bool {
    use tokio::io::AsyncWriteExt;
    if let Some(dir) = path.parent() {
        let _ = tokio::fs::create_dir_all(dir).await;
    }
    let Ok(mut file) = tokio::fs::File::create(&path).await else { return false };
    let mut offset = 0;
    let mut partial = String::new();
    let mut pace = Pace::default();
    let mut failures = 0;
    loop {
        // Status first: output written before the job ended is in the read that follows.
        let Some(finished) = state.ended(&gitlab, &project, job).await else { return false };
        let grew = match gitlab.job_trace_from(project.clone(), job, offset).await {
            Ok(chunk) => {
                failures = 0;
                if chunk.reset {
                    // A retried or erased job: its new log replaces the old one.
                    let _ = file.set_len(0).await;
                    let _ = tokio::io::AsyncSeekExt::rewind(&mut file).await;
                    partial.clear();
                }
                offset = chunk.next_offset;
                if file.write_all(&chunk.data).await.is_err() {
                    return false;
                }
                if let Some((reporter, label)) = &lines {
                    partial.push_str(&String::from_utf8_lossy(&chunk.data));
                    while let Some(end) = partial.find('\n') {
                        let line: String = partial.drain(..=end).collect();
                        reporter.line(label, line.trim_end());
                    }
                }
                !chunk.data.is_empty()
            }
            Err(e) => {
                tracing::debug!("reading a log: {e}");
                failures += 1;
                if failures >= 5 {
                    return false;
                }
                false
            }
        };
        if finished && failures == 0 {
            // The last line may have no newline (GitLab's footer usually has one).
            if let Some((reporter, label)) = &lines
                && !partial.trim().is_empty()
            {
                reporter.line(label, partial.trim_end());
            }
            return file.flush().await.is_ok();
        }
        tokio::time::sleep(pace.after(grew)).await;
    }
}

/// A log being followed: its file, and `Some(complete)` once the follower stopped.
#[derive(Debug, Clone)]
pub struct Tail {
    /// The file it is written to.
    pub path: PathBuf,
    /// `None` while followed; then whether the file holds the whole log.
    pub done: watch::Receiver<Option<bool>>,
}

/// The logs followed in this process, one follower per job attempt however many readers.
#[derive(Debug, Default)]
pub struct Tails(Mutex<HashMap<u64, Tail>>);

impl Tails {
    /// The follower of attempt `job` into `path`, started by `start` when there is none.
    pub fn get_or_start<F>(&self, job: u64, path: &Path, start: impl FnOnce() -> F) -> Tail
    where
        F: std::future::Future<Output = bool> + Send + 'static,
    {
        let mut tails = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tails.get(&job) {
            // A follower that gave up is started again.
            if *t.done.borrow() != Some(false) {
                return t.clone();
            }
        }
        let (tx, rx) = watch::channel(None);
        let tail = Tail { path: path.to_owned(), done: rx };
        tails.insert(job, tail.clone());
        let run = start();
        tokio::spawn(async move {
            let complete = run.await;
            let _ = tx.send(Some(complete));
        });
        tail
    }

    /// Whether attempt `job`'s whole log was followed into `path`.
    pub fn complete(&self, job: u64, path: &Path) -> bool {
        let tails = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tails.get(&job).is_some_and(|t| t.path == path && *t.done.borrow() == Some(true))
    }

    /// The follower of `job`, if one was started.
    pub fn get(&self, job: u64) -> Option<Tail> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&job).cloned()
    }
}

impl super::Orchestrator {
    /// Where build `record`'s log of job `name` is written.
    pub fn log_path(&self, record: &crate::builds::BuildRecord, name: &str) -> PathBuf {
        let dir = record.log_dir.as_ref().map(PathBuf::from).unwrap_or_else(|| self.state_dir().join("logs"));
        dir.join(&record.project).join(&record.target).join(format!("{}.log", super::actions::sanitize(name)))
    }

    /// The follower of attempt `job` of `record`'s job `name`, started when there is none, with
    /// `lines` told each line. In the daemon the job's end is read from the record (kept
    /// current by webhooks); else GitLab is asked.
    pub fn tail(
        &self,
        record: &crate::builds::BuildRecord,
        name: &str,
        job: u64,
        lines: Option<(Arc<dyn Reporter>, String)>,
    ) -> Tail {
        let path = self.log_path(record, name);
        let state = if self.inner.owner == crate::builds::Owner::Daemon {
            JobState::Record { records: self.records().clone(), build: record.id, name: name.to_owned() }
        } else {
            JobState::Api
        };
        let (gitlab, project) = (self.inner.gitlab.clone(), ProjectRef::parse(&record.gitlab));
        let to = path.clone();
        self.inner.tails.get_or_start(job, &path, move || follow_log(gitlab, project, JobId(job), to, lines, state))
    }

    /// Whether attempt `job`'s whole log was followed into `path` (no need to read it again).
    pub(super) fn log_followed(&self, job: u64, path: &Path) -> bool {
        self.inner.tails.complete(job, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_speeds_up_while_growing_and_backs_off_while_quiet() {
        let mut pace = Pace::default();
        let within = |d: Duration, base: f64| d.as_secs_f64() >= base * 0.8 && d.as_secs_f64() <= base * 1.2;
        assert!(within(pace.after(true), 1.0));
        assert!(within(pace.after(false), 2.0));
        assert!(within(pace.after(false), 4.0));
        assert!(within(pace.after(false), 8.0));
        assert!(within(pace.after(false), 10.0));
        assert!(within(pace.after(false), 10.0));
        assert!(within(pace.after(true), 5.0));
        assert!(within(pace.after(true), 2.5));
    }
}
