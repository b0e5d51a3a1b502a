//! The sim driven by cloudci's own GitLab client through a whole build: auth, project, hook,
//! pipeline with variables, success, jobs, log, artifacts, merge request, auto-merge.

mod common;

use std::io::Read;
use std::time::Duration;

use cloudci_gitlab::types::{CreateMergeRequest, CreatePipeline, HookEvents, HookParams, MergeOptions, Status};
use cloudci_gitlab::{
    Error, Gitlab, JobFilter, MergeRequestFilter, PipelineFilter, PipelineId, ProjectRef, RetryPolicy,
};
use common::*;
use futures_util::TryStreamExt;
use secrecy::SecretString;

fn client(url: &str) -> Gitlab {
    Gitlab::builder(url).private_token(SecretString::from(TOKEN)).retry(RetryPolicy::never()).build().unwrap()
}

async fn wait_done(gitlab: &Gitlab, project: &str, id: PipelineId) -> Status {
    eventually(Duration::from_secs(60), || async {
        let p = gitlab.pipeline(project, id).await.unwrap();
        (p.status.is_completed() || p.status == Status::Manual).then_some(p.status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_build_through_the_rust_client() {
    let dir = tempfile::tempdir().unwrap();
    let repo = firmware_repo(dir.path());
    let sim = start_sim(&repo, "").await;
    let gitlab = client(sim.url());

    let me = gitlab.current_user().await.unwrap();
    assert_eq!(me.username, "root");
    let project = gitlab.project("acme/firmware").await.unwrap();
    assert_eq!(project.id.0, 1);
    assert_eq!(project.default_branch.as_deref(), Some("main"));
    assert_eq!(gitlab.project(1u64).await.unwrap().path_with_namespace, "acme/firmware");

    let mut hook = HookParams::new("http://127.0.0.1:9/hooks/x", HookEvents::ALL);
    hook.name = Some("cloudci".into());
    hook.token = Some(SecretString::from("hook-token"));
    let created = gitlab.create_hook("acme/firmware", &hook).await.unwrap();
    assert_eq!(created.token_present, Some(true));
    assert!(created.pipeline_events && created.job_events && created.push_events);

    let params = CreatePipeline::new("main").variable("BOARD", "nucleo-f401re");
    let pipeline = gitlab.create_pipeline("acme/firmware", &params).await.unwrap();
    assert_eq!(pipeline.source.as_deref(), Some("api"));
    assert_eq!(pipeline.git_ref, "main");
    let status = wait_done(&gitlab, "acme/firmware", pipeline.id).await;
    // Everything but the manual deploy ran; a manual job that may fail does not block.
    assert_eq!(status, Status::Success);

    let vars = gitlab.pipeline_variables("acme/firmware", pipeline.id).await.unwrap();
    assert_eq!(vars[0].key, "BOARD");

    let jobs: Vec<_> =
        gitlab.pipeline_jobs("acme/firmware", pipeline.id, &JobFilter::default()).try_collect().await.unwrap();
    let by_name = |n: &str| jobs.iter().find(|j| j.name == n).unwrap();
    assert_eq!(jobs.len(), 3);
    assert_eq!(by_name("build").status, Status::Success);
    assert_eq!(by_name("test").status, Status::Success);
    assert_eq!(by_name("deploy").status, Status::Manual);
    assert!(jobs[0].id > jobs[1].id, "newest first, as GitLab lists them");

    let build = by_name("build");
    let log = String::from_utf8(gitlab.job_trace("acme/firmware", build.id).await.unwrap().to_vec()).unwrap();
    assert!(log.contains("$ mkdir -p out"), "{log}");
    assert!(log.contains(&format!("built acme/firmware main pipeline={} job=build", pipeline.id)), "{log}");
    assert!(log.contains("Job succeeded"), "{log}");
    let test_log = gitlab.job_trace("acme/firmware", by_name("test").id).await.unwrap();
    assert!(String::from_utf8_lossy(&test_log).contains("greeting=hello from yaml board=nucleo-f401re"));

    let zip_path = dir.path().join("artifacts.zip");
    let size = gitlab.download_artifacts("acme/firmware", build.id, &zip_path).await.unwrap();
    assert!(size > 0);
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
    let mut firmware = String::new();
    archive.by_name("out/firmware.bin").unwrap().read_to_string(&mut firmware).unwrap();
    assert!(firmware.starts_with("firmware for nucleo-f401re at "), "{firmware}");
    let no_artifacts = gitlab.download_artifacts("acme/firmware", by_name("test").id, &zip_path).await.unwrap_err();
    assert!(no_artifacts.is_not_found());

    // Play the manual job.
    let played = gitlab.play_job("acme/firmware", by_name("deploy").id, &[]).await.unwrap();
    assert_eq!(played.name, "deploy");
    eventually(Duration::from_secs(30), || async {
        let j = gitlab.job("acme/firmware", played.id).await.unwrap();
        (j.status == Status::Success).then_some(())
    })
    .await;

    // A merge request from feature, auto-merged when its pipeline succeeds.
    let mr = gitlab
        .create_merge_request(
            "acme/firmware",
            &CreateMergeRequest {
                source_branch: "feature".into(),
                target_branch: "main".into(),
                title: "Add feature".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(mr.state, "opened");
    let again = gitlab
        .create_merge_request(
            "acme/firmware",
            &CreateMergeRequest {
                source_branch: "feature".into(),
                target_branch: "main".into(),
                title: "dup".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(again.status(), Some(409), "{again}");
    let listed: Vec<_> = gitlab
        .merge_requests(
            "acme/firmware",
            &MergeRequestFilter { source_branch: Some("feature".into()), ..Default::default() },
        )
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);

    let feature_pipeline = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("feature")).await.unwrap();
    let set =
        gitlab.merge("acme/firmware", mr.iid, &MergeOptions { auto_merge: true, ..Default::default() }).await.unwrap();
    assert!(set.merge_when_pipeline_succeeds);
    assert_eq!(set.state, "opened");
    wait_done(&gitlab, "acme/firmware", feature_pipeline.id).await;
    let merged = eventually(Duration::from_secs(30), || async {
        let m = gitlab.merge_request("acme/firmware", mr.iid).await.unwrap();
        (m.state == "merged").then_some(m)
    })
    .await;
    let feature_head = git(&repo, &["rev-parse", "feature"]);
    assert_eq!(git(&repo, &["rev-parse", "main"]), feature_head, "a fast-forward merge");
    assert_eq!(merged.merge_commit_sha.as_deref(), Some(feature_head.as_str()));

    // The source archive at a commit.
    let tarball = dir.path().join("src.tar.gz");
    let n = gitlab
        .download_archive("acme/firmware", &feature_head, cloudci_gitlab::ArchiveFormat::TarGz, &tarball)
        .await
        .unwrap();
    assert!(n > 0);
    let listing = std::process::Command::new("tar").arg("tzf").arg(&tarball).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("feature.txt"));

    let branch = gitlab.branch("acme/firmware", "main").await.unwrap();
    assert_eq!(branch.commit.id, feature_head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_look_like_gitlabs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = firmware_repo(dir.path());
    let sim = start_sim(&repo, "").await;
    let gitlab = client(sim.url());

    let bad = Gitlab::builder(sim.url()).private_token(SecretString::from("wrong")).build().unwrap();
    assert!(matches!(bad.project(1u64).await.unwrap_err(), Error::Unauthorized { .. }));
    let anonymous = Gitlab::builder(sim.url()).build().unwrap();
    assert!(matches!(anonymous.current_user().await.unwrap_err(), Error::Unauthorized { .. }));
    // OAuth-style bearer tokens work too.
    let bearer = Gitlab::builder(sim.url()).oauth_token(SecretString::from(TOKEN)).build().unwrap();
    bearer.current_user().await.unwrap();

    let e = gitlab.project("acme/nope").await.unwrap_err();
    assert!(e.is_not_found() && e.to_string().contains("404 Project Not Found"), "{e}");
    let e = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("no-such-branch")).await.unwrap_err();
    assert!(matches!(e, Error::Api { status: 400, .. }) && e.to_string().contains("Reference not found"), "{e}");
    let e = gitlab.pipeline("acme/firmware", PipelineId(999)).await.unwrap_err();
    assert!(e.is_not_found());
    let e = gitlab.play_job("acme/firmware", cloudci_gitlab::JobId(999), &[]).await.unwrap_err();
    assert!(e.is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_errors_are_rejected_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", "build:\n  script: make\n  foo: {paths: [x]}\n")]);
    let sim = start_sim(&repo, "").await;
    let e = client(sim.url()).create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap_err();
    assert!(e.to_string().contains("jobs:build config contains unknown keys: foo"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_skips_what_follows_and_retry_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let yml = "stages: [build, test]\nbuild:\n  stage: build\n  script:\n    - echo start\n    - test -f ok.flag\n    - echo never\ntest:\n  stage: test\n  script: echo testing\n";
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", yml)]);
    let sim = start_sim(&repo, "").await;
    let gitlab = client(sim.url());
    let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    assert_eq!(wait_done(&gitlab, "acme/firmware", p.id).await, Status::Failed);
    let jobs: Vec<_> = gitlab.pipeline_jobs("acme/firmware", p.id, &JobFilter::default()).try_collect().await.unwrap();
    let build = jobs.iter().find(|j| j.name == "build").unwrap();
    assert_eq!(build.status, Status::Failed);
    assert_eq!(build.failure_reason.as_deref(), Some("script_failure"));
    assert_eq!(jobs.iter().find(|j| j.name == "test").unwrap().status, Status::Skipped);
    let log = String::from_utf8(gitlab.job_trace("acme/firmware", build.id).await.unwrap().to_vec()).unwrap();
    assert!(log.contains("$ test -f ok.flag") && !log.contains("\nnever"), "{log}");
    assert!(log.contains("ERROR: Job failed"), "{log}");

    // Retrying gives a new job, and the retried one is listed only on request.
    let retried = gitlab.retry_job("acme/firmware", build.id).await.unwrap();
    assert_ne!(retried.id, build.id);
    assert_eq!(wait_done(&gitlab, "acme/firmware", p.id).await, Status::Failed);
    let all: Vec<_> = gitlab
        .pipeline_jobs("acme/firmware", p.id, &JobFilter { include_retried: true, ..Default::default() })
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let latest: Vec<_> =
        gitlab.pipeline_jobs("acme/firmware", p.id, &JobFilter::default()).try_collect().await.unwrap();
    assert_eq!(latest.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("cloudci-sim-cancel-{}", std::process::id());
    let yml = format!("build:\n  script:\n    - bash -c 'exec -a {marker} sleep 60' &\n    - sleep 60\n");
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", &yml)]);
    let sim = start_sim(&repo, "").await;
    let gitlab = client(sim.url());
    let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    let job = eventually(Duration::from_secs(20), || async {
        let jobs: Vec<_> =
            gitlab.pipeline_jobs("acme/firmware", p.id, &JobFilter::default()).try_collect().await.unwrap();
        jobs.into_iter().find(|j| j.status == Status::Running)
    })
    .await;
    let running = || {
        std::process::Command::new("pgrep").args(["-f", &marker]).output().map(|o| o.status.success()).unwrap_or(false)
    };
    eventually(Duration::from_secs(10), || async { running().then_some(()) }).await;
    let canceled = gitlab.cancel_pipeline("acme/firmware", p.id).await.unwrap();
    assert!(matches!(canceled.status, Status::Canceled | Status::Running), "{}", canceled.status);
    assert_eq!(wait_done(&gitlab, "acme/firmware", p.id).await, Status::Canceled);
    assert_eq!(gitlab.job("acme/firmware", job.id).await.unwrap().status, Status::Canceled);
    eventually(Duration::from_secs(5), || async { (!running()).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_headers_match_gitlab() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", "build:\n  script: 'true'\n")]);
    let sim = start_sim(&repo, "").await;
    let gitlab = client(sim.url());
    for _ in 0..5 {
        gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    }
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}/api/v4/projects/acme%2Ffirmware/pipelines?per_page=2&page=2", sim.url()))
        .header("PRIVATE-TOKEN", TOKEN)
        .send()
        .await
        .unwrap();
    let h = resp.headers().clone();
    assert_eq!(h["x-page"], "2");
    assert_eq!(h["x-per-page"], "2");
    assert_eq!(h["x-next-page"], "3");
    assert_eq!(h["x-prev-page"], "1");
    assert_eq!(h["x-total"], "5");
    assert_eq!(h["x-total-pages"], "3");
    let link = h["link"].to_str().unwrap();
    assert!(link.contains("rel=\"next\"") && link.contains("rel=\"last\"") && link.contains("page=3"), "{link}");
    let page: Vec<serde_json::Value> = resp.json().await.unwrap();
    assert_eq!(page.len(), 2);
    // The client walks every page.
    let all: Vec<_> = gitlab
        .pipelines(ProjectRef::from("acme/firmware"), &PipelineFilter { per_page: Some(2), ..Default::default() })
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
}
