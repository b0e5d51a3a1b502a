//! The wire as GitLab's nginx shapes it: job logs (and JSON) gzipped for clients that ask,
//! `Range` ignored on the trace endpoint; and the sim-only request counter.

mod common;

use std::io::Read;
use std::time::Duration;

use cloudci_gitlab::types::{CreatePipeline, Status};
use common::*;

const LOG_CI: &str =
    "log:\n  script:\n    - for i in $(seq 1 2000); do echo \"CC src/module_$i.c -> build/module_$i.o\"; done\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_gzipped_for_clients_that_ask_and_range_is_ignored() {
    cloudci_gitlab::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", LOG_CI)]);
    let sim = start_sim(&repo, "").await;
    let gitlab =
        cloudci_gitlab::Gitlab::builder(sim.url()).private_token(secrecy::SecretString::from(TOKEN)).build().unwrap();
    let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    let job = eventually(Duration::from_secs(30), || async {
        let jobs: Vec<_> =
            futures_util::TryStreamExt::try_collect(gitlab.pipeline_jobs("acme/firmware", p.id, &Default::default()))
                .await
                .unwrap();
        jobs.into_iter().find(|j| j.status == Status::Success)
    })
    .await;
    let url = format!("{}/api/v4/projects/1/jobs/{}/trace", sim.url(), job.id);
    // No automatic decompression: the test looks at the bytes as sent.
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let plain = raw.get(&url).header("PRIVATE-TOKEN", TOKEN).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.unwrap();
    assert!(plain.len() > 60_000, "{}", plain.len());

    sim.reset_requests();
    let zipped = raw
        .get(&url)
        .header("PRIVATE-TOKEN", TOKEN)
        .header("accept-encoding", "gzip")
        .header("range", "bytes=100-")
        .send()
        .await
        .unwrap();
    // The whole log (GitLab ignores `Range`), gzipped.
    assert_eq!(zipped.status(), 200);
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    assert_eq!(zipped.headers()["vary"], "Accept-Encoding");
    let zipped = zipped.bytes().await.unwrap();
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&zipped[..]).read_to_end(&mut unzipped).unwrap();
    assert_eq!(unzipped, plain);
    assert!(zipped.len() * 4 < plain.len(), "{} of {}", zipped.len(), plain.len());

    // The counter saw that one request, its body as sent (compressed) plus its head.
    let counts = sim.requests();
    let trace = counts.route("GET /api/v4/projects/{id}/jobs/{jid}/trace");
    assert_eq!(trace.requests, 1, "{counts:?}");
    assert!(trace.bytes >= zipped.len() as u64 && trace.bytes < zipped.len() as u64 + 400, "{trace:?}");
    assert_eq!(counts.total().requests, 1);
    // And over HTTP, outside the API (GitLab has no such endpoint).
    let listed: serde_json::Value =
        raw.get(format!("{}/-/sim/requests", sim.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["routes"]["GET /api/v4/projects/{id}/jobs/{jid}/trace"]["requests"], 1);
    let reset = raw.delete(format!("{}/-/sim/requests", sim.url())).send().await.unwrap();
    assert_eq!(reset.status(), 204);
    assert_eq!(sim.requests().total().requests, 0);

    // The client asks for gzip and reads the log as it was.
    let log = gitlab.job_trace("acme/firmware", job.id).await.unwrap();
    assert_eq!(&log[..], &plain[..]);
    assert!(sim.requests().total().bytes < plain.len() as u64 / 4);
}
