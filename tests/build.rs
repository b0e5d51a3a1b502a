//! `cloudci build` and `cloudci demo` as real processes against gitlab-sim.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloudci_gitlab::types::Status;
use cloudci_gitlab::{Gitlab, MergeRequestFilter, PipelineFilter, ProjectRef, RetryPolicy};
use common::*;
use futures_util::TryStreamExt;
use gitlab_sim::{Sim, SimConfig};
use secrecy::SecretString;
use serde_json::Value;

const TOKEN: &str = "sim-token-for-build";

/// hal fails for target t2 when `FAIL_T2` is in its CI file; fw sleeps a little in its build.
fn ci(fail_t2: bool, sleep: u32) -> String {
    let check = if fail_t2 { "    - test \"$TARGET\" != t2\n" } else { "" };
    format!(
        "stages: [build, test]\nbuild:\n  stage: build\n  script:\n    - mkdir -p out && echo \"$TARGET $BOARD\" > out/fw.bin\n    - sleep {sleep}\n{check}  artifacts:\n    paths: [out/]\ntest:\n  stage: test\n  script: echo ok\n"
    )
}

async fn two_projects(dir: &std::path::Path, fail_t2: bool, fw_sleep: u32, faults: &str) -> Sim {
    let hal = gitlab_sim::fixtures::repo_with(dir, "hal", &[(".gitlab-ci.yml", &ci(fail_t2, 0))]);
    let fw = gitlab_sim::fixtures::repo_with(dir, "fw", &[(".gitlab-ci.yml", &ci(false, fw_sleep))]);
    Sim::start(SimConfig {
        token: TOKEN.into(),
        projects: vec![("acme/hal".into(), hal), ("acme/fw".into(), fw)],
        faults: faults.parse().unwrap(),
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

const PROJECTS: &str = r#"
[targets.t1]
variables = { TARGET = "t1", BOARD = "b1" }
[targets.t2]
variables = { TARGET = "t2", BOARD = "b2" }
[projects.hal]
gitlab = "acme/hal"
targets = ["t1", "t2"]
[projects.fw]
gitlab = "acme/fw"
targets = ["t1", "t2"]
depends_on = ["hal"]
after_success = { merge_request = { target_branch = "main" } }
[groups]
all = ["fw", "hal"]
"#;

fn client(url: &str) -> Gitlab {
    Gitlab::builder(url).private_token(SecretString::from(TOKEN)).retry(RetryPolicy::never()).build().unwrap()
}

fn build(config: &std::path::Path, url: &str, args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["build", "--json"];
    all.extend_from_slice(args);
    let out = cloudci(config, url, TOKEN, &all).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), json, stderr)
}

fn statuses(v: &Value) -> Vec<(String, String, String)> {
    v["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["project"].as_str().unwrap().to_owned(),
                b["target"].as_str().unwrap().to_owned(),
                b["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projects_two_targets_in_dependency_order() {
    let dir = tempfile::tempdir().unwrap();
    let sim = two_projects(dir.path(), false, 0, "").await;
    let (config, _, _) = write_config(dir.path(), PROJECTS, 1);
    let (code, out, err) = build(&config, sim.url(), &["all", "--ref", "feature"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let mut s = statuses(&out);
    s.sort();
    assert_eq!(
        s,
        [
            ("fw".into(), "t1".into(), "success".into()),
            ("fw".into(), "t2".into(), "success".into()),
            ("hal".into(), "t1".into(), "success".into()),
            ("hal".into(), "t2".into(), "success".into()),
        ]
    );
    // fw started only after every hal pipeline had finished.
    let gitlab = client(sim.url());
    let hal: Vec<_> =
        gitlab.pipelines(ProjectRef::from("acme/hal"), &PipelineFilter::default()).try_collect().await.unwrap();
    let fw: Vec<_> =
        gitlab.pipelines(ProjectRef::from("acme/fw"), &PipelineFilter::default()).try_collect().await.unwrap();
    let mut hal_done = Vec::new();
    for p in &hal {
        hal_done.push(gitlab.pipeline("acme/hal", p.id).await.unwrap().finished_at.unwrap().at());
    }
    let fw_first = fw.iter().map(|p| p.created_at.clone().unwrap().at()).min().unwrap();
    assert!(hal_done.iter().all(|t| *t <= fw_first), "fw started before hal finished");
    // Each pipeline got its target's variables.
    for p in &fw {
        let vars = gitlab.pipeline_variables("acme/fw", p.id).await.unwrap();
        assert!(vars.iter().any(|v| v.key == "TARGET"), "{vars:?}");
    }
    // fw's merge request, once; artifacts by commit and target; logs per run.
    let mrs: Vec<_> =
        gitlab.merge_requests(ProjectRef::from("acme/fw"), &MergeRequestFilter::default()).try_collect().await.unwrap();
    assert_eq!(mrs.len(), 1);
    let fw_t1 = out["builds"].as_array().unwrap().iter().find(|b| b["project"] == "fw" && b["target"] == "t1").unwrap();
    assert_eq!(fw_t1["merge_request"].as_str(), Some(mrs[0].web_url.as_str()));
    let artifacts = std::path::PathBuf::from(fw_t1["artifacts"].as_str().unwrap());
    assert!(artifacts.ends_with(format!("artifacts/fw/{}/t1", fw_t1["sha"].as_str().unwrap())));
    assert_eq!(std::fs::read_to_string(artifacts.join("out/fw.bin")).unwrap(), "t1 b1\n");
    let logs = std::path::PathBuf::from(out["logs"].as_str().unwrap());
    assert!(std::fs::read_to_string(logs.join("fw/t2/build.log")).unwrap().contains("Job succeeded"));
    assert!(logs.parent().unwrap().join("latest").exists());
    assert!(!logs.join("error.log").exists());

    // The build store: status, logs, artifacts by build id.
    let out = cloudci(&config, sim.url(), TOKEN, &["status", "--json"]).output().unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 4);
    let rec = list.iter().find(|b| b["project"] == "fw" && b["target"] == "t1").unwrap();
    assert_eq!(rec["status"], "success");
    assert_eq!(rec["merge_request"].as_str(), Some(mrs[0].web_url.as_str()));
    assert_eq!(rec["jobs"]["build"]["status"], "success");
    let id = rec["id"].to_string();
    let out = cloudci(&config, sim.url(), TOKEN, &["logs", &id, "--job", "build"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("$ mkdir -p out"), "{out:?}");
    let copy = dir.path().join("copy");
    let out =
        cloudci(&config, sim.url(), TOKEN, &["artifacts", &id, "--output", copy.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(copy.join("out/fw.bin")).unwrap(), "t1 b1\n");
    let out = cloudci(&config, sim.url(), TOKEN, &["status", "999"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_skips_its_dependent() {
    let dir = tempfile::tempdir().unwrap();
    let sim = two_projects(dir.path(), true, 0, "").await;
    let (config, _, _) = write_config(dir.path(), PROJECTS, 1);
    let (code, out, err) = build(&config, sim.url(), &["fw", "hal", "--ref", "feature"]);
    assert_eq!(code, 1, "{err}");
    let mut s = statuses(&out);
    s.sort();
    assert_eq!(
        s,
        [
            ("fw".into(), "t1".into(), "skipped".into()),
            ("fw".into(), "t2".into(), "skipped".into()),
            ("hal".into(), "t1".into(), "success".into()),
            ("hal".into(), "t2".into(), "failed".into()),
        ]
    );
    let fw = out["builds"].as_array().unwrap().iter().find(|b| b["project"] == "fw").unwrap();
    assert_eq!(fw["reason"], "skipped because hal did not succeed");
    let gitlab = client(sim.url());
    let fw_pipelines: Vec<_> =
        gitlab.pipelines(ProjectRef::from("acme/fw"), &PipelineFilter::default()).try_collect().await.unwrap();
    assert!(fw_pipelines.is_empty(), "a skipped project started pipelines");
    // error.log points at the failed job's log.
    let logs = std::path::PathBuf::from(out["logs"].as_str().unwrap());
    let error = std::fs::read_to_string(logs.join("error.log")).unwrap();
    assert!(error.contains("$ test \"$TARGET\" != t2") && error.contains("ERROR: Job failed"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_makes_no_request_at_all() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let (config, _, _) = write_config(dir.path(), PROJECTS, 1);
    let out = cloudci(&config, &url, TOKEN, &["build", "all", "--dry-run"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let hal = text.find("POST /projects/acme%2Fhal/pipeline").unwrap();
    let fw = text.find("POST /projects/acme%2Ffw/pipeline").unwrap();
    assert!(hal < fw, "{text}");
    assert!(text.contains("once hal succeeded") && text.contains("POST /projects/acme%2Ffw/merge_requests"), "{text}");
    assert!(text.contains("\"TARGET\"") && text.contains("<default branch>"), "{text}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "dry run reached the server");

    let out = cloudci(&config, &url, TOKEN, &["build", "bootloader"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("known: fw, hal, all"));
}

/// Every delivery twice, and the same build run twice: still one merge request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_merge_request_is_opened_once() {
    let dir = tempfile::tempdir().unwrap();
    let sim = two_projects(dir.path(), false, 0, "duplicate=1").await;
    let (config, _, _) = write_config(dir.path(), PROJECTS, 5);
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    for _ in 0..2 {
        let (code, out, err) = build(&config, sim.url(), &["fw", "--ref", "feature"]);
        assert_eq!(code, 0, "{out}\n{err}");
    }
    let mrs: Vec<_> = client(sim.url())
        .merge_requests(ProjectRef::from("acme/fw"), &MergeRequestFilter::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(mrs.len(), 1, "{mrs:#?}");
}

/// `cloudci serve` crashes and comes back while a build runs: the build still ends right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_serve_mid_build_still_ends_right() {
    let dir = tempfile::tempdir().unwrap();
    let sim = two_projects(dir.path(), false, 3, "").await;
    let (config, _, _) = write_config(dir.path(), PROJECTS, 2);
    let daemon = serve(&config, sim.url(), TOKEN, &[]);
    let build = cloudci(&config, sim.url(), TOKEN, &["build", "--json", "fw", "--ref", "feature"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let gitlab = client(sim.url());
    // Wait until fw's pipelines run, then crash the daemon and start it again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ps: Vec<_> =
            gitlab.pipelines(ProjectRef::from("acme/fw"), &PipelineFilter::default()).try_collect().await.unwrap();
        if ps.iter().any(|p| p.status == Status::Running) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "fw never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.crash();
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let out = tokio::task::spawn_blocking(move || build.wait_with_output()).await.unwrap().unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{json}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(statuses(&json).iter().all(|(_, _, s)| s == "success"), "{json}");
}

#[test]
fn the_demo_builds_fetches_and_opens_the_merge_request() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudci"))
        .args(["demo", "--json", "--dir"])
        .arg(&work)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let builds = json["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 3);
    let installed = |tool: &str| std::process::Command::new(tool).arg("--version").output().is_ok();
    let (has_compiler, has_qemu) = (installed("arm-none-eabi-gcc"), installed("qemu-system-arm"));
    for b in builds {
        assert_eq!(b["project"], "firmware");
        let built = b["target"] == "host" || (has_compiler && has_qemu);
        assert_eq!(b["status"], if built { "success" } else { "skipped" });
        assert!(b["pipeline_url"].as_str().unwrap().contains("/demo/firmware/-/pipelines/"));
        assert!(b["merge_request"].as_str().unwrap().ends_with("/demo/firmware/-/merge_requests/1"));
    }
    let host = builds.iter().find(|b| b["target"] == "host").unwrap();
    let firmware = std::path::PathBuf::from(host["artifacts"].as_str().unwrap()).join("out/firmware-host");
    let ran = std::process::Command::new(&firmware).output().unwrap();
    assert!(String::from_utf8_lossy(&ran.stdout).contains("toggles in 10 s at 1 kHz: 20"), "{ran:?}");
    // Each board's cross build links an image named by the board, or says why it was skipped.
    for board in ["mps2-an386", "microbit"] {
        let cross = builds.iter().find(|b| b["target"] == board).unwrap();
        if has_compiler {
            let elf = std::path::PathBuf::from(cross["artifacts"].as_str().unwrap())
                .join(format!("out/firmware-{board}.elf"));
            assert!(elf.exists(), "{}", elf.display());
        } else {
            assert!(cross["reason"].as_str().unwrap().starts_with("arm-none-eabi-gcc is not installed"), "{cross}");
        }
    }
}

/// A pipeline blocked on a required manual job does not finish by itself: the build says so
/// instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_waiting_for_a_person_is_reported_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let gated = "stages: [build, deploy]\nbuild:\n  stage: build\n  script: 'true'\ngate:\n  stage: deploy\n  script: 'true'\n  when: manual\n  allow_failure: false\n";
    let hal = gitlab_sim::fixtures::repo_with(dir.path(), "hal", &[(".gitlab-ci.yml", gated)]);
    let fw = gitlab_sim::fixtures::repo_with(dir.path(), "fw", &[(".gitlab-ci.yml", &ci(false, 0))]);
    let sim = Sim::start(SimConfig {
        token: TOKEN.into(),
        projects: vec![("acme/hal".into(), hal), ("acme/fw".into(), fw)],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let (config, _, _) = write_config(dir.path(), PROJECTS, 1);
    let (code, out, err) = build(&config, sim.url(), &["hal", "--target", "t1"]);
    assert_eq!(code, 1, "{err}");
    let b = &out["builds"][0];
    assert_eq!(b["status"], "manual", "{out}");
    assert_eq!(b["reason"], "waiting for a manual job to be started on GitLab");
    assert_eq!(b["jobs"]["gate"], "manual");
}

/// `--watch` shows job changes and the jobs' output as it comes, also without a daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_shows_jobs_and_their_output() {
    let dir = tempfile::tempdir().unwrap();
    let sim = two_projects(dir.path(), false, 2, "").await;
    let (config, _, _) = write_config(dir.path(), PROJECTS, 1);
    let (code, out, err) = build(&config, sim.url(), &["fw", "--target", "t1", "--watch"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("[fw/t1] build: running"), "{err}");
    assert!(err.contains("[fw/t1 build] $ mkdir -p out"), "{err}");
    assert!(err.contains("[fw/t1] pipeline ") && err.contains(": success"), "{err}");
}

/// auto_merge and promote: the merge request is set to merge (and merges, its pipeline having
/// passed), and the promotion pipeline gets the sha and the artifact job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_merge_and_promotion_happen_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let sim = two_projects(dir.path(), false, 0, "").await;
    let projects = PROJECTS.replace(
        "after_success = { merge_request = { target_branch = \"main\" } }",
        "after_success = { merge_request = { target_branch = \"main\" }, auto_merge = true, promote = { ref = \"main\", variables = { SUITE = \"hil\" } } }",
    );
    let (config, _, _) = write_config(dir.path(), &projects, 1);
    let (code, out, err) = build(&config, sim.url(), &["fw", "--ref", "feature", "--target", "t1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let gitlab = client(sim.url());
    let mrs: Vec<_> =
        gitlab.merge_requests(ProjectRef::from("acme/fw"), &MergeRequestFilter::default()).try_collect().await.unwrap();
    assert_eq!(mrs.len(), 1);
    assert_eq!(mrs[0].state, "merged", "the pipeline had passed, so auto-merge merged it");
    let sha = out["builds"][0]["sha"].as_str().unwrap().to_owned();
    let on_main: Vec<_> = gitlab
        .pipelines(ProjectRef::from("acme/fw"), &PipelineFilter { git_ref: Some("main".into()), ..Default::default() })
        .try_collect()
        .await
        .unwrap();
    assert_eq!(on_main.len(), 1, "one promotion pipeline");
    let vars = gitlab.pipeline_variables("acme/fw", on_main[0].id).await.unwrap();
    let var = |k: &str| vars.iter().find(|v| v.key == k).map(|v| v.value.clone()).unwrap_or_default();
    assert_eq!(var("CLOUDCI_SHA"), sha);
    assert_eq!(var("SUITE"), "hil");
    let job: u64 = var("CLOUDCI_ARTIFACT_JOB").parse().unwrap();
    assert!(gitlab.job("acme/fw", cloudci_gitlab::JobId(job)).await.unwrap().artifacts_file.is_some());
    // Recorded and visible.
    let status = cloudci(&config, sim.url(), TOKEN, &["status", "--json"]).output().unwrap();
    let list: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(list[0]["promoted"].as_str().unwrap().contains(&format!("/pipelines/{}", on_main[0].id)), "{list}");
}

/// Writes that fail before or after GitLab carried them out (a proxy's 502): every build still
/// gets exactly one pipeline, and the project exactly one merge request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_failures_never_duplicate_a_pipeline_or_merge_request() {
    let dir = tempfile::tempdir().unwrap();
    let sim = two_projects(dir.path(), false, 0, "api_5xx_after=0.7,api_5xx=0.1").await;
    let (config, _, _) = write_config(dir.path(), PROJECTS, 1);
    let (code, out, err) = build(&config, sim.url(), &["all", "--ref", "feature", "--watch"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("checking whether GitLab started it"), "the fault never hit a create:\n{err}");
    // The sim fails reads too: this checking client retries them, as cloudci's does.
    let gitlab = Gitlab::builder(sim.url())
        .private_token(SecretString::from(TOKEN))
        .retry(RetryPolicy { base: Duration::from_millis(20), ..RetryPolicy::default() })
        .build()
        .unwrap();
    for project in ["acme/hal", "acme/fw"] {
        let ps: Vec<_> =
            gitlab.pipelines(ProjectRef::from(project), &PipelineFilter::default()).try_collect().await.unwrap();
        assert_eq!(ps.len(), 2, "{project}: {ps:#?}");
    }
    let mrs: Vec<_> =
        gitlab.merge_requests(ProjectRef::from("acme/fw"), &MergeRequestFilter::default()).try_collect().await.unwrap();
    assert_eq!(mrs.len(), 1);
}
