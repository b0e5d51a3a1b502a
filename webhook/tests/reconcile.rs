//! When GitLab sends nothing at all (every delivery lost), the reconciler still brings every
//! watched pipeline and its jobs to their final states, through the same state machine.

use std::sync::Arc;
use std::time::Duration;

use cloudci_gitlab::types::CreatePipeline;
use cloudci_gitlab::{Gitlab, RetryPolicy};
use cloudci_webhook::reconcile::Reconciler;
use cloudci_webhook::{EventFilter, Hub, Store};
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
    let hub = Hub::new(Arc::new(Store::open(&dir.path().join("e.db"), cloudci_webhook::Durability::Normal).unwrap()));
    let reconciler = Reconciler::new(gitlab.clone(), hub.clone(), Duration::ZERO);

    let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    hub.store().track_pipeline(1, "acme/firmware", p.id.0).unwrap();
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
    assert!(hub.store().active_pipelines().unwrap().is_empty());
    assert_eq!(reconciler.round(true).await.unwrap(), 0);
}
