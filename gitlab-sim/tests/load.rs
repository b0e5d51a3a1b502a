//! 200 pipelines at once: every one finishes, and the API keeps answering meanwhile.

mod common;

use std::time::{Duration, Instant};

use cloudci_gitlab::types::{CreatePipeline, Status};
use cloudci_gitlab::{Gitlab, PipelineFilter, RetryPolicy};
use common::*;
use futures_util::TryStreamExt;
use secrecy::SecretString;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_pipelines_do_not_starve_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", "build:\n  script: echo built $CI_PIPELINE_ID\n")]);
    let sim = start_sim(&repo, "").await;
    let gitlab = Gitlab::builder(sim.url())
        .private_token(SecretString::from(TOKEN))
        .retry(RetryPolicy::never())
        .build()
        .unwrap();

    let creations: Vec<_> = (0..200)
        .map(|_| {
            let gitlab = gitlab.clone();
            tokio::spawn(async move { gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await })
        })
        .collect();
    for c in creations {
        c.await.unwrap().unwrap();
    }

    // While the runners work through the queue, time API calls.
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    loop {
        let t = Instant::now();
        let list: Vec<_> = gitlab.pipelines("acme/firmware", &PipelineFilter::default()).try_collect().await.unwrap();
        worst = worst.max(t.elapsed());
        let t = Instant::now();
        gitlab.version().await.unwrap();
        worst = worst.max(t.elapsed());
        assert_eq!(list.len(), 200);
        if list.iter().all(|p| p.status == Status::Success) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(240), "pipelines still running after 4 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("200 pipelines done in {:?}; slowest API call meanwhile {worst:?}", started.elapsed());
    // Generous: on 2 shared cores a starved API would take many seconds, not a few hundred ms.
    assert!(worst < Duration::from_secs(3), "an API call took {worst:?} under load");
}
