//! When GitLab sends nothing at all (every delivery lost), the reconciler still brings every
//! watched pipeline and its jobs to their final states, through the same state machine.

use std::sync::Arc;
use std::time::Duration;

use cloudci_gitlab::types::CreatePipeline;
use cloudci_gitlab::{Gitlab, RetryPolicy};
use cloudci_webhook::{EventFilter, Hub, Reconciler, Store};
use futures_util::StreamExt;
use gitlab_sim::{Sim, SimConfig};
use secrecy::SecretString;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_is_filled_in_by_polling() {
    let dir = tempfile::tempdir().unwrap();
    let ci =
        "stages: [build, test]\nbuild:\n  stage: build\n  script: 'true'\ntest:\n  stage: test\n  script: 'true'\n";
    let repo = gitlab_sim::fixtures::repo_with(dir.path(), "repo", &[(".gitlab-ci.yml", ci)]);
    let sim = Sim::start(SimConfig {
        token: "t".into(),
        projects: vec![("acme/firmware".into(), repo)],
        faults: "drop=1".parse().unwrap(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let gitlab =
        Gitlab::builder(sim.url()).private_token(SecretString::from("t")).retry(RetryPolicy::never()).build().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("e.db"), cloudci_webhook::Durability::Normal).unwrap());
    let hub = Hub::new(store.clone());
    let reconciler = Reconciler::new(gitlab.clone(), hub.clone(), Duration::ZERO);

    let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    store.track_pipeline(1, "acme/firmware", p.id.0).unwrap();
    let mut events = Box::pin(hub.subscribe(EventFilter::default(), Some(0)));
    // Poll as the daemon would, until GitLab's API says the pipeline is done.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        reconciler.round(false).await.unwrap();
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(50), events.next()).await {
            let e = e.unwrap();
            seen.push((e.kind.as_str().to_owned(), e.job_name.clone(), e.status.clone().unwrap_or_default()));
        }
        if seen.iter().any(|(k, _, s)| k == "pipeline" && s == "success") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never finished: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last_of = |name: &str| seen.iter().rev().find(|(_, n, _)| n.as_deref() == Some(name)).unwrap().2.clone();
    assert_eq!(last_of("build"), "success");
    assert_eq!(last_of("test"), "success");
    assert!(seen.iter().all(|(_, _, s)| !s.is_empty()));
    // Nothing more to ask once everything is final.
    assert!(store.active_pipelines().unwrap().is_empty());
    assert_eq!(reconciler.round(true).await.unwrap(), 0);
}

/// A canceled pipeline is retried. The webhooks told of the first attempt's build and of the
/// retry's jobs, but not of the first attempt's `deploy` (canceled before it ran), which GitLab's
/// hooks never list again. After the retry finishes, the reconciler reads the pipeline once with
/// its retried attempts, so that attempt gets its final status too; then it asks no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_attempt_nobody_heard_of_is_read_once_the_retry_finished() {
    use cloudci_gitlab::types::{Job, Status};
    use cloudci_gitlab::{JobFilter, PipelineId};
    use cloudci_webhook::{EventKind, EventSource, Observation};
    use futures_util::TryStreamExt;

    let dir = tempfile::tempdir().unwrap();
    let ci = "stages: [build, deploy]\nbuild:\n  stage: build\n  script: sleep 1\ndeploy:\n  stage: deploy\n  script: 'true'\n";
    let repo = gitlab_sim::fixtures::repo_with(dir.path(), "repo", &[(".gitlab-ci.yml", ci)]);
    let sim = Sim::start(SimConfig {
        token: "t".into(),
        projects: vec![("acme/firmware".into(), repo)],
        faults: "drop=1".parse().unwrap(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let gitlab =
        Gitlab::builder(sim.url()).private_token(SecretString::from("t")).retry(RetryPolicy::never()).build().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("e.db"), cloudci_webhook::Durability::Normal).unwrap());
    let hub = Hub::new(store.clone());
    let reconciler = Reconciler::new(gitlab.clone(), hub.clone(), Duration::ZERO);
    let all = JobFilter { include_retried: true, ..JobFilter::default() };
    let jobs = |id: PipelineId| {
        let (gitlab, all) = (gitlab.clone(), all.clone());
        async move {
            let mut j: Vec<Job> = gitlab.pipeline_jobs("acme/firmware", id, &all).try_collect().await.unwrap();
            j.sort_by_key(|j| j.id);
            j
        }
    };
    let pipeline_id = |j: &Job| j.pipeline.as_ref().map(|p| p.id.0);
    let observed = |j: &Job, status: Status| {
        let mut e = cloudci_webhook::BuildEvent::new(EventKind::Job, 1, "Job Hook", EventSource::Webhook);
        e.project = Some("acme/firmware".into());
        e.pipeline_id = pipeline_id(j);
        e.job_id = Some(j.id.0);
        e.job_name = Some(j.name.clone());
        e.status = Some(status.to_string());
        Observation { event: e, max_job_id: j.id.0 }
    };

    let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while jobs(p.id).await[0].status != Status::Running {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Heard: the first build running.
    let first = jobs(p.id).await;
    store.apply_observations(vec![observed(&first[0], Status::Running)]).unwrap();
    gitlab.cancel_pipeline("acme/firmware", p.id).await.unwrap();
    while jobs(p.id).await.iter().any(|j| !j.status.is_completed()) {
        assert!(tokio::time::Instant::now() < deadline, "the cancel never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Heard: that build canceled (so nothing known is left unsettled).
    store.apply_observations(vec![observed(&first[0], Status::Canceled)]).unwrap();
    gitlab.retry_pipeline("acme/firmware", p.id).await.unwrap();
    while !gitlab.pipeline("acme/firmware", p.id).await.unwrap().status.is_completed() {
        assert!(tokio::time::Instant::now() < deadline, "the retry never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let truth = jobs(p.id).await;
    assert_eq!(truth.len(), 4, "{truth:?}");
    let old_deploy = truth.iter().find(|j| j.name == "deploy" && j.id.0 < truth[2].id.0).unwrap().clone();
    assert_eq!(old_deploy.status, Status::Canceled);
    // Heard: the retry's jobs finishing and the pipeline's success, as its last hook lists them.
    let mut last = vec![];
    for j in truth.iter().filter(|j| j.id.0 > old_deploy.id.0) {
        last.push(observed(j, j.status.clone()));
    }
    let mut pe = cloudci_webhook::BuildEvent::new(EventKind::Pipeline, 1, "Pipeline Hook", EventSource::Webhook);
    pe.project = Some("acme/firmware".into());
    pe.pipeline_id = Some(p.id.0);
    pe.status = Some("success".into());
    last.push(Observation { event: pe, max_job_id: 0 });
    store.apply_observations(last).unwrap();

    let mut events = Box::pin(hub.subscribe(EventFilter::default(), None));
    assert!(reconciler.round(false).await.unwrap() > 0, "the finished retry was not read again");
    let mut old_deploy_status = None;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), events.next()).await {
        let e = e.unwrap();
        if e.job_id == Some(old_deploy.id.0) {
            old_deploy_status = e.status.clone();
        }
    }
    assert_eq!(old_deploy_status.as_deref(), Some("canceled"));
    // Read once: nothing is owed any more.
    assert!(store.active_pipelines().unwrap().is_empty());
    assert_eq!(reconciler.round(false).await.unwrap(), 0);
}
