//! What the subscriber saw against the sim's truth.
//!
//! For every pipeline and job id on the sim:
//! - **lost**: no final (completed) status was the object's last status at the subscriber;
//! - **wrong**: the last status was final but not the sim's;
//! - **backwards**: an event whose status ranks below the object's previous one
//!   (`Status::rank`) without `retry: true`;
//! - **repeated**: an event with the same status as the object's previous one; and, counted apart,
//!   any seq received twice or not above the previous one.
//!
//! Latency: from the sim's `finished_at` to the arrival of the event that put the object into
//! its final status for good.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use cloudci_gitlab::types::Status;
use serde::{Deserialize, Serialize};

use crate::subscriber::Received;

/// Whether a status is one of GitLab's completed ones.
pub(crate) fn completed(status: &str) -> bool {
    Status::parse(status).is_completed()
}

fn rank(status: &str) -> u8 {
    Status::parse(status).rank()
}

/// The sim's final word.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Truth {
    pub(crate) pipelines: Vec<TruthPipeline>,
}

/// One pipeline on the sim.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TruthPipeline {
    pub(crate) id: u64,
    pub(crate) status: String,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) jobs: Vec<TruthJob>,
}

/// One job on the sim (retried attempts included, each with its own id).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TruthJob {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) status: String,
    pub(crate) finished_at: Option<DateTime<Utc>>,
}

/// The counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Pipelines whose final status never arrived as their last status.
    pub pipelines_lost: usize,
    /// Jobs whose final status never arrived as their last status.
    pub jobs_lost: usize,
    /// Pipelines that ended on a different final status than the sim's.
    pub pipelines_wrong: usize,
    /// Jobs that ended on a different final status than the sim's.
    pub jobs_wrong: usize,
    /// Pipeline events that went backwards without `retry: true`.
    pub pipelines_backwards: usize,
    /// Job events that went backwards without `retry: true`.
    pub jobs_backwards: usize,
    /// Pipeline events that repeated the previous status.
    pub pipelines_repeated: usize,
    /// Job events that repeated the previous status.
    pub jobs_repeated: usize,
    /// Events whose seq was received before, or is not above the previous event's.
    pub seq_repeated: usize,
}

impl Counts {
    /// Lost + wrong + backwards + repeated, pipelines and jobs, and repeated seqs.
    pub fn total(&self) -> usize {
        self.pipelines_lost
            + self.jobs_lost
            + self.pipelines_wrong
            + self.jobs_wrong
            + self.pipelines_backwards
            + self.jobs_backwards
            + self.pipelines_repeated
            + self.jobs_repeated
            + self.seq_repeated
    }

    /// Lost pipelines and jobs.
    pub fn lost(&self) -> usize {
        self.pipelines_lost + self.jobs_lost
    }
}

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Objects measured (those whose final status arrived).
    pub samples: usize,
    /// Median.
    pub median_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Maximum.
    pub max_ms: Option<f64>,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| (!ms.is_empty()).then(|| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1]);
        Self { samples: ms.len(), median_ms: at(0.5), p99_ms: at(0.99), max_ms: ms.last().copied() }
    }
}

/// One thing that went wrong, for a developer to look up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// `lost`, `wrong`, `backwards`, `repeated` or `seq_repeated`.
    pub what: String,
    /// `pipeline` or `job`.
    pub kind: String,
    /// The pipeline.
    pub pipeline_id: Option<u64>,
    /// The job, for job failures.
    pub job_id: Option<u64>,
    /// The job's name.
    pub job_name: Option<String>,
    /// The sim's final status (lost, wrong), or the previous status (backwards, repeated).
    pub expected: Option<String>,
    /// The last status that arrived (lost, wrong), or the offending event's status.
    pub arrived: Option<String>,
    /// The offending event's seq (backwards, repeated).
    pub seq: Option<u64>,
    /// Every status the subscriber got for the object, in order (`+retry` marks retries).
    pub seen: Vec<String>,
    /// When the sim finished the object (lost, wrong).
    pub finished_at: Option<DateTime<Utc>>,
    /// Where that falls among the disruptions: `during outage`, `3.1 s after sigkill`, ...
    pub context: Option<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match (&self.job_id, &self.job_name) {
            (Some(j), Some(n)) => format!("job {j} ({n}) of pipeline {}", self.pipeline_id.unwrap_or(0)),
            (Some(j), None) => format!("job {j} of pipeline {}", self.pipeline_id.unwrap_or(0)),
            _ => format!("pipeline {}", self.pipeline_id.unwrap_or(0)),
        };
        let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "nothing".into());
        match self.what.as_str() {
            "lost" | "wrong" => write!(
                f,
                "{} {what}: sim says {}, subscriber ended on {}; seen [{}]{}",
                self.what,
                opt(&self.expected),
                opt(&self.arrived),
                self.seen.join(" "),
                self.context.as_ref().map(|c| format!("; finished {c}")).unwrap_or_default()
            ),
            _ => write!(
                f,
                "{} {what}: {} -> {} (seq {}); seen [{}]",
                self.what,
                opt(&self.expected),
                opt(&self.arrived),
                self.seq.unwrap_or(0),
                self.seen.join(" ")
            ),
        }
    }
}

/// Says, for each lost or wrong object, where its finish fell among the disruptions.
pub(crate) fn place(failures: &mut [Failure], disruptions: &[crate::Disruption]) {
    for f in failures.iter_mut() {
        let Some(done) = f.finished_at else { continue };
        let mut context = "before any disruption".to_owned();
        for d in disruptions {
            let end = d.at + chrono::Duration::milliseconds((d.down_secs * 1e3) as i64);
            if done < d.at {
                break;
            }
            context = if done <= end {
                format!("during {}", d.what)
            } else {
                format!("{:.1} s after {}", (done - end).num_milliseconds() as f64 / 1e3, d.what)
            };
        }
        f.context = Some(context);
    }
}

/// The outcome of [`analyse`].
pub(crate) struct Analysis {
    pub(crate) counts: Counts,
    pub(crate) pipeline_latency: Latency,
    pub(crate) job_latency: Latency,
    pub(crate) failures: Vec<Failure>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Pipeline(u64),
    Job(u64),
}

fn key(e: &Received) -> Option<Key> {
    match e.kind.as_str() {
        "pipeline" => e.pipeline_id.map(Key::Pipeline),
        "job" => e.job_id.map(Key::Job),
        _ => None,
    }
}

/// Per object: its events in arrival order, repeated seqs removed.
fn per_object(events: &[Received]) -> (BTreeMap<Key, Vec<&Received>>, Vec<&Received>) {
    let mut seen = HashSet::new();
    let mut last_seq = 0;
    let mut by = BTreeMap::<Key, Vec<&Received>>::new();
    let mut dup = Vec::new();
    for e in events {
        if !seen.insert(e.seq) || e.seq <= last_seq {
            dup.push(e);
            continue;
        }
        last_seq = e.seq;
        if let Some(k) = key(e)
            && e.status.is_some()
        {
            by.entry(k).or_default().push(e);
        }
    }
    (by, dup)
}

/// True when every pipeline's and job's final status is its last one at the subscriber.
pub(crate) fn all_final_arrived(truth: &Truth, events: &[Received]) -> bool {
    let mut last = BTreeMap::new();
    for e in events {
        if let (Some(k), Some(s)) = (key(e), &e.status) {
            last.insert(k, s.as_str());
        }
    }
    truth.pipelines.iter().all(|p| {
        last.get(&Key::Pipeline(p.id)) == Some(&p.status.as_str())
            && p.jobs.iter().all(|j| last.get(&Key::Job(j.id)) == Some(&j.status.as_str()))
    })
}

/// Compares the subscriber's events with the truth.
pub(crate) fn analyse(truth: &Truth, events: &[Received]) -> Analysis {
    let (by, dup) = per_object(events);
    let mut counts = Counts { seq_repeated: dup.len(), ..Counts::default() };
    let mut failures = Vec::new();
    for e in &dup {
        failures.push(Failure {
            what: "seq_repeated".into(),
            kind: e.kind.clone(),
            pipeline_id: e.pipeline_id,
            job_id: e.job_id,
            job_name: e.job_name.clone(),
            expected: None,
            arrived: e.status.clone(),
            seq: Some(e.seq),
            seen: Vec::new(),
            finished_at: None,
            context: None,
        });
    }
    let seen_of = |evs: &[&Received]| -> Vec<String> {
        evs.iter()
            .map(|e| {
                let s = e.status.clone().unwrap_or_default();
                if e.retry { format!("{s}+retry") } else { s }
            })
            .collect()
    };
    let pipeline_of_job: BTreeMap<u64, (u64, &str)> =
        truth.pipelines.iter().flat_map(|p| p.jobs.iter().map(move |j| (j.id, (p.id, j.name.as_str())))).collect();

    // Order: backwards and repeated, per event.
    for (k, evs) in &by {
        let mut prev: Option<&str> = None;
        for e in evs {
            let status = e.status.as_deref().unwrap_or("");
            let what = match prev {
                Some(p) if p == status => Some("repeated"),
                Some(p) if rank(status) < rank(p) && !e.retry => Some("backwards"),
                _ => None,
            };
            if let Some(what) = what {
                match (what, k) {
                    ("repeated", Key::Pipeline(_)) => counts.pipelines_repeated += 1,
                    ("repeated", Key::Job(_)) => counts.jobs_repeated += 1,
                    (_, Key::Pipeline(_)) => counts.pipelines_backwards += 1,
                    (_, Key::Job(_)) => counts.jobs_backwards += 1,
                }
                let (pipeline_id, job_id, job_name) = match k {
                    Key::Pipeline(p) => (Some(*p), None, None),
                    Key::Job(j) => (
                        e.pipeline_id.or(pipeline_of_job.get(j).map(|x| x.0)),
                        Some(*j),
                        e.job_name.clone().or(pipeline_of_job.get(j).map(|x| x.1.to_owned())),
                    ),
                };
                failures.push(Failure {
                    what: what.into(),
                    kind: if matches!(k, Key::Pipeline(_)) { "pipeline" } else { "job" }.into(),
                    pipeline_id,
                    job_id,
                    job_name,
                    expected: prev.map(str::to_owned),
                    arrived: Some(status.to_owned()),
                    seq: Some(e.seq),
                    seen: seen_of(evs),
                    finished_at: None,
                    context: None,
                });
            }
            prev = Some(status);
        }
    }

    // End state and latency, per object on the sim.
    let mut p_lat = Vec::new();
    let mut j_lat = Vec::new();
    let empty = Vec::new();
    let mut judge = |k: Key,
                     pipeline_id: u64,
                     job: Option<&TruthJob>,
                     expected: &str,
                     finished_at: Option<DateTime<Utc>>,
                     failures: &mut Vec<Failure>,
                     counts: &mut Counts| {
        let evs = by.get(&k).unwrap_or(&empty);
        let last = evs.last().and_then(|e| e.status.clone());
        let what = match last.as_deref() {
            Some(l) if l == expected => None,
            Some(l) if completed(l) => Some("wrong"),
            _ => Some("lost"),
        };
        match (what, k) {
            (None, _) => {
                // The event that began the final run of equal statuses.
                let start = evs.iter().rposition(|e| e.status.as_deref() != Some(expected)).map_or(0, |i| i + 1);
                if let (Some(e), Some(done)) = (evs.get(start), finished_at) {
                    let ms = (e.received - done).num_milliseconds() as f64;
                    match k {
                        Key::Pipeline(_) => p_lat.push(ms),
                        Key::Job(_) => j_lat.push(ms),
                    }
                }
                return;
            }
            (Some("wrong"), Key::Pipeline(_)) => counts.pipelines_wrong += 1,
            (Some("wrong"), Key::Job(_)) => counts.jobs_wrong += 1,
            (_, Key::Pipeline(_)) => counts.pipelines_lost += 1,
            (_, Key::Job(_)) => counts.jobs_lost += 1,
        }
        failures.push(Failure {
            what: what.unwrap_or("lost").into(),
            kind: if job.is_some() { "job" } else { "pipeline" }.into(),
            pipeline_id: Some(pipeline_id),
            job_id: job.map(|j| j.id),
            job_name: job.map(|j| j.name.clone()),
            expected: Some(expected.to_owned()),
            arrived: last,
            seq: None,
            seen: seen_of(evs),
            finished_at,
            context: None,
        });
    };
    for p in &truth.pipelines {
        judge(Key::Pipeline(p.id), p.id, None, &p.status, p.finished_at, &mut failures, &mut counts);
        for j in &p.jobs {
            judge(Key::Job(j.id), p.id, Some(j), &j.status, j.finished_at, &mut failures, &mut counts);
        }
    }
    // Lost and wrong first: they matter most.
    failures.sort_by_key(|f| match f.what.as_str() {
        "wrong" => 0,
        "lost" => 1,
        "backwards" => 2,
        "repeated" => 3,
        _ => 4,
    });
    Analysis { counts, pipeline_latency: Latency::of(p_lat), job_latency: Latency::of(j_lat), failures }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, kind: &str, id: u64, status: &str, retry: bool) -> Received {
        Received {
            seq,
            kind: kind.into(),
            project_id: Some(1),
            pipeline_id: Some(if kind == "pipeline" { id } else { 1 }),
            job_id: (kind == "job").then_some(id),
            job_name: None,
            status: Some(status.into()),
            retry,
            source: None,
            received: Utc::now(),
            accepted: None,
        }
    }

    fn truth(p: &str, jobs: &[(u64, &str)]) -> Truth {
        Truth {
            pipelines: vec![TruthPipeline {
                id: 1,
                status: p.into(),
                finished_at: Some(Utc::now() - chrono::Duration::seconds(1)),
                jobs: jobs
                    .iter()
                    .map(|(id, s)| TruthJob { id: *id, name: "j".into(), status: (*s).into(), finished_at: None })
                    .collect(),
            }],
        }
    }

    #[test]
    fn counts_each_kind() {
        let t = truth("success", &[(10, "success"), (11, "failed"), (12, "success")]);
        let events = vec![
            ev(1, "pipeline", 1, "pending", false),
            ev(2, "pipeline", 1, "running", false),
            ev(3, "pipeline", 1, "pending", false), // backwards
            ev(4, "pipeline", 1, "pending", false), // repeated
            ev(5, "pipeline", 1, "created", true),  // a retry: fine
            ev(6, "pipeline", 1, "success", false),
            ev(6, "pipeline", 1, "success", false), // seq twice
            ev(7, "job", 10, "success", false),
            ev(8, "job", 11, "canceled", false), // wrong
        ];
        let a = analyse(&t, &events);
        let c = &a.counts;
        assert_eq!((c.pipelines_backwards, c.pipelines_repeated, c.seq_repeated), (1, 1, 1));
        assert_eq!((c.pipelines_lost, c.pipelines_wrong), (0, 0));
        assert_eq!((c.jobs_wrong, c.jobs_lost), (1, 1));
        assert_eq!(a.pipeline_latency.samples, 1);
        assert!(a.pipeline_latency.median_ms.unwrap() >= 1000.0);
        assert_eq!(a.failures[0].what, "wrong");
        assert!(!all_final_arrived(&t, &events));
    }

    #[test]
    fn percentiles() {
        let l = Latency::of((1..=100).map(f64::from).collect());
        assert_eq!((l.median_ms, l.p99_ms, l.max_ms), (Some(50.0), Some(99.0), Some(100.0)));
        assert_eq!(Latency::of(Vec::new()).median_ms, None);
    }
}
