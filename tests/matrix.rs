//! Targets built by jobs of one pipeline (a board matrix), GitLab's refusals explained, and the
//! dry run's job list: the `cloudci` binary against gitlab-sim, which reads the CI files as
//! GitLab does.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudci_gitlab::types::Job;
use cloudci_gitlab::{Gitlab, JobFilter, PipelineFilter, PipelineId, ProjectRef, RetryPolicy};
use common::*;
use futures_util::TryStreamExt;
use gitlab_sim::{Sim, SimConfig};
use secrecy::SecretString;
use serde_json::Value;

const TOKEN: &str = "sim-token-for-matrix";

/// A board matrix as firmware repositories write it: a template with `parallel: matrix`, a
/// build per board, each board's test needing only its own build, and a size check that may
/// fail. A board fails its build while `$MARKERS/fail-<board>` exists (outside the checkout, so
/// a test can mend it before a retry).
const BOARDS_CI: &str = r#"
stages: [build, test]

.boards:
  parallel:
    matrix:
      - BOARD: [a, b, c]

build:
  stage: build
  extends: .boards
  script:
    - mkdir -p out
    - echo "firmware for $BOARD" > out/fw-$BOARD.bin
    - echo "built $BOARD"
    - test ! -e "$MARKERS/fail-$BOARD"
  artifacts:
    paths: [out/]

test:
  stage: test
  extends: .boards
  needs:
    - job: build
      parallel:
        matrix:
          - BOARD: $[[ matrix.BOARD ]]
  script:
    - cat out/fw-$BOARD.bin
    - if [ "$BOARD" = "$SLOW_BOARD" ]; then sleep 8; fi
    - echo "tested $BOARD"

size:
  stage: test
  extends: .boards
  needs: []
  script:
    - echo "size of $BOARD"
    - test "$BOARD" != a
  allow_failure: true

flash:
  stage: test
  script: echo "flashing c"
  when: manual
  allow_failure: false
  rules:
    - if: $WITH_FLASH
      when: manual
"#;

/// Targets `a` and `b` by matrix value, `c` by job names (its manual flash job included).
fn projects(markers: &Path) -> String {
    format!(
        r#"
[targets.a]
matrix = {{ BOARD = "a" }}
[targets.b]
matrix = {{ BOARD = "b" }}
variables = {{ MARKERS = "{}" }}
[targets.c]
jobs = ["build: [c]", "test: [c]", "flash"]
[projects.fw]
gitlab = "acme/fw"
targets = ["a", "b", "c"]
after_success = {{ merge_request = {{ target_branch = "main" }} }}
"#,
        markers.display()
    )
}

fn client(url: &str) -> Gitlab {
    Gitlab::builder(url).private_token(SecretString::from(TOKEN)).retry(RetryPolicy::never()).build().unwrap()
}

async fn sim_with(dir: &Path, files: &[(&str, &str)]) -> Sim {
    let fw = gitlab_sim::fixtures::repo_with(dir, "fw", files);
    Sim::start(SimConfig { token: TOKEN.into(), projects: vec![("acme/fw".into(), fw)], ..SimConfig::default() })
        .await
        .unwrap()
}

fn run(config: &Path, url: &str, args: &[&str]) -> (i32, String, String) {
    let out = cloudci(config, url, TOKEN, args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(stdout: &str, stderr: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|_| panic!("not JSON: {stdout}\n{stderr}"))
}

fn by_target<'a>(v: &'a Value, target: &str) -> &'a Value {
    v["builds"].as_array().unwrap().iter().find(|b| b["target"] == target).unwrap_or_else(|| panic!("{v}"))
}

fn job_names(b: &Value) -> Vec<String> {
    b["jobs"].as_object().unwrap().keys().cloned().collect()
}

async fn pipelines(url: &str) -> Vec<u64> {
    let list: Vec<_> =
        client(url).pipelines(ProjectRef::from("acme/fw"), &PipelineFilter::default()).try_collect().await.unwrap();
    list.iter().map(|p| p.id.0).collect()
}

async fn jobs_of(url: &str, pipeline: u64) -> BTreeMap<String, Job> {
    let jobs: Vec<Job> = client(url)
        .pipeline_jobs(ProjectRef::from("acme/fw"), PipelineId(pipeline), &JobFilter::default())
        .try_collect()
        .await
        .unwrap();
    jobs.into_iter().map(|j| (j.name.clone(), j)).collect()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Two matrix targets and one by job names: one pipeline; each target with its own jobs,
/// status, logs and artifacts; an allowed failure is a warning; the merge request once all
/// succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_by_jobs_share_one_pipeline_each_with_its_own_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let sim = sim_with(dir.path(), &[(".gitlab-ci.yml", BOARDS_CI)]).await;
    let (config, _, _) = write_config(dir.path(), &projects(&markers), 1);
    let (code, out, err) = run(
        &config,
        sim.url(),
        &["build", "fw", "--ref", "feature", "--target", "a", "--target", "b", "--watch", "--json"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let v = json(&out, &err);
    let (a, b) = (by_target(&v, "a"), by_target(&v, "b"));
    assert_eq!(pipelines(sim.url()).await.len(), 1, "one pipeline for both targets");
    assert_eq!(a["pipeline_url"], b["pipeline_url"]);
    assert_eq!(job_names(a), ["build: [a]", "size: [a]", "test: [a]"], "{a}");
    assert_eq!(job_names(b), ["build: [b]", "size: [b]", "test: [b]"], "{b}");
    assert_eq!((&a["status"], &b["status"]), (&Value::from("success"), &Value::from("success")));
    assert_eq!(a["warnings"], serde_json::json!(["size: [a]: failed (allowed to fail)"]), "{a}");
    assert_eq!(b["warnings"], serde_json::json!([]), "{b}");
    // Each target's firmware, and only its own.
    let files_a = files_under(Path::new(a["artifacts"].as_str().unwrap()));
    let files_b = files_under(Path::new(b["artifacts"].as_str().unwrap()));
    assert!(files_a.contains(&"fw-a.bin".to_owned()) && !files_a.contains(&"fw-b.bin".to_owned()), "{files_a:?}");
    assert!(files_b.contains(&"fw-b.bin".to_owned()) && !files_b.contains(&"fw-a.bin".to_owned()), "{files_b:?}");
    // Each target's logs, in its own folder.
    let logs = PathBuf::from(v["logs"].as_str().unwrap());
    let log_a = std::fs::read_to_string(logs.join("fw/a/build___a_.log")).unwrap();
    assert!(log_a.contains("built a") && !log_a.contains("built b"), "{log_a}");
    assert!(!logs.join("fw/a/build___b_.log").exists() && logs.join("fw/b/test___b_.log").exists());
    // The merge request, once, after both.
    assert!(a["merge_request"].is_string() && a["merge_request"] == b["merge_request"], "{v}");
    // --watch: each target's jobs under its own label.
    assert!(err.contains("[fw/a] build: [a]: success") && err.contains("[fw/b] test: [b]: success"), "{err}");
    assert!(!err.contains("[fw/a] build: [b]"), "{err}");
}

/// One board fails while the other passes, each right; a retry of the failed target retries
/// only its jobs, in the same pipeline, and then the merge request is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_target_fails_the_other_passes_and_a_retry_retries_only_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    std::fs::write(markers.join("fail-b"), "").unwrap();
    let sim = sim_with(dir.path(), &[(".gitlab-ci.yml", BOARDS_CI)]).await;
    let (config, _, _) = write_config(dir.path(), &projects(&markers), 1);
    let args = ["build", "fw", "--ref", "feature", "--target", "a", "--target", "b", "--var", "SLOW_BOARD=a"];
    let (code, out, err) = run(&config, sim.url(), &[&args[..], &["--watch", "--json"]].concat());
    assert_eq!(code, 1, "{out}\n{err}");
    // b is settled by its own jobs, while a's slow test still runs.
    let b_done = err.find("[fw/b] its jobs: failed").unwrap_or_else(|| panic!("{err}"));
    let a_done = err.find("[fw/a] test: [a]: success").unwrap_or_else(|| panic!("{err}"));
    assert!(b_done < a_done, "{err}");
    let v = json(&out, &err);
    let (a, b) = (by_target(&v, "a"), by_target(&v, "b"));
    assert_eq!(a["status"], "success", "{a}");
    assert_eq!(b["status"], "failed", "{b}");
    assert_eq!(b["jobs"]["build: [b]"], "failed", "{b}");
    assert_eq!(b["jobs"]["test: [b]"], "skipped", "{b}");
    assert_eq!(b["failed_job"], "build: [b]", "{b}");
    assert!(a["artifacts"].is_string() && b["artifacts"].is_null(), "{v}");
    assert!(a["merge_request"].is_null(), "no merge request while a target failed: {v}");
    let ps = pipelines(sim.url()).await;
    assert_eq!(ps.len(), 1);
    let before = jobs_of(sim.url(), ps[0]).await;

    // Mend board b and retry its build only.
    std::fs::remove_file(markers.join("fail-b")).unwrap();
    let status = run(&config, sim.url(), &["status", "--json"]);
    let list = json(&status.1, &status.2);
    let id_b = list
        .as_array()
        .or_else(|| list["builds"].as_array())
        .unwrap()
        .iter()
        .find(|r| r["target"] == "b")
        .unwrap_or_else(|| panic!("{list}"))["id"]
        .as_i64()
        .unwrap();
    let (code, out, err) = run(&config, sim.url(), &["retry", &id_b.to_string(), "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let retried = json(&out, &err);
    let b = &retried["builds"][0];
    assert_eq!(b["status"], "success", "{b}");
    assert!(b["merge_request"].is_string(), "every target succeeded now: {b}");
    assert_eq!(pipelines(sim.url()).await, ps, "the same pipeline");
    let after = jobs_of(sim.url(), ps[0]).await;
    for name in ["build: [a]", "test: [a]", "size: [a]", "build: [c]", "test: [c]"] {
        assert_eq!(before[name].id, after[name].id, "{name} was not retried");
    }
    assert_ne!(before["build: [b]"].id, after["build: [b]"].id, "build: [b] was retried");
    // Nothing of b's left to retry.
    let (code, _, err) = run(&config, sim.url(), &["retry", &id_b.to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no failed or canceled job to retry"), "{err}");
}

/// Through the daemon's local API: one pipeline, each build its own record, jobs, log and
/// firmware; a manual job shows as `manual` and `POST /play` starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_api_shows_each_target_and_plays_its_manual_job() {
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let sim = sim_with(dir.path(), &[(".gitlab-ci.yml", BOARDS_CI)]).await;
    let (config, _, api_port) = write_config(dir.path(), &projects(&markers), 2);
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let token = token(&config);
    let http = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{api_port}");
    let started: Value = http
        .post(format!("{api}/v1/builds"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"projects": ["fw"], "ref": "feature", "variables": {"WITH_FLASH": "1"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: BTreeMap<String, i64> = started["builds"]
        .as_array()
        .unwrap_or_else(|| panic!("{started}"))
        .iter()
        .map(|b| (b["target"].as_str().unwrap().to_owned(), b["id"].as_i64().unwrap()))
        .collect();
    let get = |id: i64| {
        let (http, api, token) = (http.clone(), api.clone(), token.clone());
        async move {
            http.get(format!("{api}/v1/builds/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let wait_final = |id: i64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let b = get(id).await;
            let s = b["status"].as_str().unwrap_or("").to_owned();
            if !["queued", "running"].contains(&s.as_str()) {
                return b;
            }
            assert!(tokio::time::Instant::now() < deadline, "build {id} never settled: {b}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let a = wait_final(ids["a"]).await;
    let b = wait_final(ids["b"]).await;
    let c = wait_final(ids["c"]).await;
    assert_eq!((&a["status"], &b["status"]), (&Value::from("success"), &Value::from("success")), "{a}\n{b}");
    assert_eq!(a["pipeline_id"], b["pipeline_id"]);
    assert_eq!(a["pipeline_id"], c["pipeline_id"]);
    assert_eq!(pipelines(sim.url()).await.len(), 1);
    assert_eq!(a["selector"]["matrix"]["BOARD"], "a", "{a}");
    assert!(a["jobs"].as_object().unwrap().keys().all(|k| k.ends_with("[a]")), "{a}");
    // c waits for its manual flash job.
    assert_eq!(c["status"], "manual", "{c}");
    assert_eq!(c["jobs"]["flash"]["status"], "manual", "{c}");
    // Each build's log is its own job's.
    let log = http
        .get(format!("{api}/v1/builds/{}/log", ids["b"]))
        .query(&[("job", "build: [b]")])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(log.status(), 200);
    let text = log.text().await.unwrap();
    assert!(text.contains("built b") && !text.contains("built a"), "{text}");
    let wrong = http
        .get(format!("{api}/v1/builds/{}/log", ids["b"]))
        .query(&[("job", "build: [a]")])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 404, "a's job is not b's");
    // Each build's firmware.
    let zip = http.get(format!("{api}/v1/builds/{}/download", ids["a"])).bearer_auth(&token).send().await.unwrap();
    assert_eq!(zip.status(), 200);
    let bytes = zip.bytes().await.unwrap();
    let archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let names: Vec<String> = archive.file_names().filter_map(Result::ok).map(|n| n.into_owned()).collect();
    assert!(
        names.iter().any(|n| n.ends_with("fw-a.bin")) && !names.iter().any(|n| n.ends_with("fw-b.bin")),
        "{names:?}"
    );
    // Play c's manual job: it runs and c succeeds.
    let played = http.post(format!("{api}/v1/builds/{}/play", ids["c"])).bearer_auth(&token).send().await.unwrap();
    assert_eq!(played.status(), 202, "{}", played.text().await.unwrap());
    let c = wait_final(ids["c"]).await;
    assert_eq!(c["status"], "success", "{c}");
    assert_eq!(c["jobs"]["flash"]["status"], "success", "{c}");
    // Nothing more to play.
    let again = http.post(format!("{api}/v1/builds/{}/play", ids["c"])).bearer_auth(&token).send().await.unwrap();
    assert_eq!(again.status(), 409);
}

/// A project whose rules leave API pipelines out: GitLab's refusal, the project, the ref and a
/// hint, in `--json`; the same for workflow rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pipeline_says_why_and_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let push_only = "build:\n  script: [make]\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"push\"\n    - if: $CI_PIPELINE_SOURCE == \"merge_request_event\"\nrelease:\n  script: [make release]\n  only: [tags]\n";
    let workflow = "workflow:\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"push\"\nbuild:\n  script: [make]\n";
    let fw = gitlab_sim::fixtures::repo_with(dir.path(), "fw", &[(".gitlab-ci.yml", push_only)]);
    let boot = gitlab_sim::fixtures::repo_with(dir.path(), "boot", &[(".gitlab-ci.yml", workflow)]);
    let sim = Sim::start(SimConfig {
        token: TOKEN.into(),
        projects: vec![("acme/fw".into(), fw), ("acme/boot".into(), boot)],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let projects = "[projects.fw]\ngitlab = \"acme/fw\"\ntargets = [\"host\"]\n[projects.boot]\ngitlab = \"acme/boot\"\ntargets = [\"host\"]\n";
    let (config, _, _) = write_config(dir.path(), projects, 1);
    let (code, out, err) = run(&config, sim.url(), &["build", "fw", "boot", "--ref", "feature", "--json"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let v = json(&out, &err);
    let fw = v["builds"].as_array().unwrap().iter().find(|b| b["project"] == "fw").unwrap();
    assert_eq!(fw["status"], "error", "{fw}");
    let reason = fw["reason"].as_str().unwrap();
    assert!(reason.contains("GitLab refused to create a pipeline for acme/fw at feature"), "{reason}");
    assert!(reason.contains("The resulting pipeline would have been empty"), "{reason}");
    assert!(
        reason.contains("CI_PIPELINE_SOURCE == \"api\"") && reason.contains("- if: $CI_PIPELINE_SOURCE == \"api\""),
        "{reason}"
    );
    assert!(reason.contains("trigger"), "{reason}");
    let boot = v["builds"].as_array().unwrap().iter().find(|b| b["project"] == "boot").unwrap();
    let reason = boot["reason"].as_str().unwrap();
    assert!(reason.contains("acme/boot at feature") && reason.contains("workflow:rules"), "{reason}");
    // The table says it too.
    let (_, out, _) = run(&config, sim.url(), &["build", "fw", "--ref", "feature"]);
    assert!(out.contains("The resulting pipeline would have been empty"), "{out}");
    assert!(pipelines(sim.url()).await.is_empty());
}

/// `--dry-run` lists each target's jobs from GitLab's lint, and writes nothing; with no
/// GitLab it says it could not ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_lists_each_targets_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    let sim = sim_with(dir.path(), &[(".gitlab-ci.yml", BOARDS_CI)]).await;
    let (config, _, _) = write_config(dir.path(), &projects(&markers), 1);
    let (code, out, err) = run(&config, sim.url(), &["build", "fw", "--ref", "feature", "--dry-run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out.matches("POST /projects/acme%2Ffw/pipeline ").count(), 1, "one pipeline: {out}");
    let line = |target: &str| {
        out.lines().find(|l| l.starts_with(&format!("#   fw/{target}: "))).unwrap_or_else(|| panic!("{out}")).to_owned()
    };
    let a = line("a");
    assert!(
        a.contains("build: [a] (build)") && a.contains("test: [a] (test)") && a.contains("size: [a] (test)"),
        "{a}"
    );
    assert!(!a.contains("[b]") && !a.contains("[c]"), "{a}");
    let c = line("c");
    assert!(c.contains("build: [c] (build)") && c.contains("test: [c] (test)") && !c.contains("size"), "{c}");
    assert!(out.contains("simulates a push pipeline"), "{out}");
    assert!(pipelines(sim.url()).await.is_empty(), "a dry run creates nothing");
    // No GitLab: what it printed before, and a note.
    let (code, out, err) = run(&config, "http://127.0.0.1:9", &["build", "fw", "--ref", "feature", "--dry-run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("POST /projects/acme%2Ffw/pipeline") && out.contains("could not ask GitLab"), "{out}");
}

/// The real firmware project (examples/firmware) with its board matrix: the host and the
/// Cortex-M4F board in one pipeline, through `cloudci build --watch`, each with its own status,
/// jobs, log and firmware.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firmware_projects_board_matrix_builds_two_boards_in_one_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/firmware");
    let mut files: Vec<(String, String)> = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            if rel == "out" {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let sim = sim_with(dir.path(), &refs).await;
    let projects = r#"
[targets.host-matrix]
matrix = { BOARD = "host" }
[targets.mps2]
matrix = { BOARD = "mps2-an386" }
[projects.fw]
gitlab = "acme/fw"
targets = ["host-matrix", "mps2"]
"#;
    let (config, _, _) = write_config(dir.path(), projects, 1);
    let (code, out, err) = run(&config, sim.url(), &["build", "fw", "--ref", "feature", "--watch", "--json"]);
    let v = json(&out, &err);
    let (host, mps2) = (by_target(&v, "host-matrix"), by_target(&v, "mps2"));
    assert_eq!(pipelines(sim.url()).await.len(), 1, "{v}");
    assert_eq!(job_names(host), ["firmware: [host]", "selftest: [host]"], "{host}");
    assert_eq!(job_names(mps2), ["firmware: [mps2-an386]", "selftest: [mps2-an386]"], "{mps2}");
    assert_eq!(host["status"], "success", "{host}\n{err}");
    let artifacts = files_under(Path::new(host["artifacts"].as_str().unwrap()));
    assert!(artifacts.contains(&"firmware-host".to_owned()), "{artifacts:?}");
    // The board needs the cross toolchain and QEMU; without them it is skipped, saying why.
    if mps2["status"] == "success" {
        assert_eq!(code, 0, "{out}\n{err}");
        let artifacts = files_under(Path::new(mps2["artifacts"].as_str().unwrap()));
        assert!(artifacts.contains(&"firmware-mps2-an386.elf".to_owned()), "{artifacts:?}");
        assert!(!artifacts.contains(&"firmware-host".to_owned()), "{artifacts:?}");
        let logs = PathBuf::from(v["logs"].as_str().unwrap());
        let selftest = std::fs::read_to_string(logs.join("fw/mps2/selftest___mps2-an386_.log")).unwrap();
        assert!(selftest.contains("BOARD=mps2-an386") || selftest.contains("mps2-an386"), "{selftest}");
        assert!(!logs.join("fw/mps2/selftest___host_.log").exists());
    } else {
        assert_eq!(mps2["status"], "skipped", "{mps2}\n{err}");
    }
    assert!(err.contains("[fw/mps2] firmware: [mps2-an386]: "), "{err}");
    assert!(!err.contains("[fw/mps2] firmware: [host]") && !err.contains("[fw/mps2] firmware: [microbit]"), "{err}");
}

/// Canceling one target cancels its jobs only: the other target of the pipeline goes on and
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_a_target_cancels_its_jobs_only() {
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let sim = sim_with(dir.path(), &[(".gitlab-ci.yml", BOARDS_CI)]).await;
    let (config, _, _) = write_config(dir.path(), &projects(&markers), 1);
    let args = ["build", "fw", "--ref", "feature", "--target", "a", "--target", "b", "--var", "SLOW_BOARD=a", "--json"];
    let build = cloudci(&config, sim.url(), TOKEN, &args).stdout(std::process::Stdio::piped()).spawn().unwrap();
    // Wait until a's slow test runs (as GitLab says: the build polls it only now and then).
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let id_a = loop {
        let (_, out, _) = run(&config, sim.url(), &["status", "--json"]);
        let list: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let a = list.as_array().and_then(|l| l.iter().find(|r| r["target"] == "a").cloned());
        if let Some(a) = a
            && let Some(pipeline) = a["pipeline_id"].as_u64()
            && jobs_of(sim.url(), pipeline).await.get("test: [a]").is_some_and(|j| j.status.as_str() == "running")
        {
            break a["id"].as_i64().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "a's test never ran: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (code, out, err) = run(&config, sim.url(), &["cancel", &id_a.to_string()]);
    if code != 0 {
        let (_, record, _) = run(&config, sim.url(), &["status", &id_a.to_string(), "--json"]);
        panic!("cancel: {out}\n{err}\nthe build: {record}");
    }
    assert!(out.contains("canceled"), "{out}");
    let out = build.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(by_target(&v, "a")["status"], "canceled", "{v}");
    assert_eq!(by_target(&v, "a")["jobs"]["test: [a]"], "canceled", "{v}");
    assert_eq!(by_target(&v, "b")["status"], "success", "{v}");
    let jobs = jobs_of(sim.url(), pipelines(sim.url()).await[0]).await;
    assert_eq!(jobs["test: [b]"].status.as_str(), "success");
    assert_eq!(jobs["build: [c]"].status.as_str(), "success", "other targets' jobs are left alone");
}

/// `cloudci build --watch` as a client of `cloudci serve`: one pipeline, each target's job
/// lines under its own label, each its own status; a project whose rules leave API pipelines
/// out has GitLab's message and the hint in its API record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_daemon_each_target_has_its_lines_and_a_refusal_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    std::fs::write(markers.join("fail-b"), "").unwrap();
    let fw = gitlab_sim::fixtures::repo_with(dir.path(), "fw", &[(".gitlab-ci.yml", BOARDS_CI)]);
    let push_only = "build:\n  script: [make]\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"push\"\n";
    let boot = gitlab_sim::fixtures::repo_with(dir.path(), "boot", &[(".gitlab-ci.yml", push_only)]);
    let sim = Sim::start(SimConfig {
        token: TOKEN.into(),
        projects: vec![("acme/fw".into(), fw), ("acme/boot".into(), boot)],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let projects = format!("{}\n[projects.boot]\ngitlab = \"acme/boot\"\ntargets = [\"host\"]\n", projects(&markers));
    let (config, _, api_port) = write_config(dir.path(), &projects, 2);
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let args = ["build", "fw", "--ref", "feature", "--target", "a", "--target", "b", "--watch", "--json"];
    let (code, out, err) = run(&config, sim.url(), &args);
    assert_eq!(code, 1, "{out}\n{err}");
    let v = json(&out, &err);
    assert_eq!(pipelines(sim.url()).await.len(), 1);
    assert_eq!(by_target(&v, "a")["status"], "success", "{v}");
    assert_eq!(by_target(&v, "b")["status"], "failed", "{v}");
    // Each target's logs under its own label, and job lines (as the event stream tells them)
    // never under the other's.
    assert!(err.contains("[fw/a build: [a]] built a") && err.contains("[fw/b build: [b]] built b"), "{err}");
    assert!(!err.contains("[fw/a build: [b]]") && !err.contains("[fw/b build: [a]]"), "{err}");
    for (label, other) in [("[fw/a] ", "[b]: "), ("[fw/b] ", "[a]: ")] {
        assert!(!err.lines().any(|l| l.starts_with(label) && l.contains(other)), "{err}");
    }

    // The refusal, in the API's record.
    let token = token(&config);
    let http = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{api_port}");
    let started: Value = http
        .post(format!("{api}/v1/builds"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"projects": ["boot"], "ref": "feature"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["builds"][0]["id"].as_i64().unwrap_or_else(|| panic!("{started}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let b = loop {
        let b: Value =
            http.get(format!("{api}/v1/builds/{id}")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        if b["status"] == "error" {
            break b;
        }
        assert!(tokio::time::Instant::now() < deadline, "{b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reason = b["reason"].as_str().unwrap();
    assert!(reason.contains("acme/boot at feature") && reason.contains("would have been empty"), "{reason}");
    assert!(reason.contains("$CI_PIPELINE_SOURCE == \"api\""), "{reason}");
    assert_eq!(b["gitlab_status"], 400, "{b}");
}

/// `cloudci play ID --job NAME`: the target waits for its manual job (exit 1, `manual`), then
/// starting it from the command line carries it to success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudci_play_starts_a_targets_manual_job() {
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    let sim = sim_with(dir.path(), &[(".gitlab-ci.yml", BOARDS_CI)]).await;
    let (config, _, _) = write_config(dir.path(), &projects(&markers), 1);
    let args = ["build", "fw", "--ref", "feature", "--target", "c", "--var", "WITH_FLASH=1", "--json"];
    let (code, out, err) = run(&config, sim.url(), &args);
    assert_eq!(code, 1, "{out}\n{err}");
    let v = json(&out, &err);
    let c = by_target(&v, "c");
    assert_eq!(c["status"], "manual", "{c}");
    assert_eq!(c["jobs"]["flash"], "manual", "{c}");
    let (_, out, _) = run(&config, sim.url(), &["status", "--json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    let id = list.as_array().unwrap().iter().find(|r| r["target"] == "c").unwrap()["id"].as_i64().unwrap();
    let (code, _, err) = run(&config, sim.url(), &["play", &id.to_string(), "--job", "deploy"]);
    assert_eq!(code, 1);
    assert!(err.contains("no manual job \"deploy\"; its manual jobs: flash"), "{err}");
    let (code, out, err) = run(&config, sim.url(), &["play", &id.to_string(), "--job", "flash", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v = json(&out, &err);
    assert_eq!(v["builds"][0]["status"], "success", "{v}");
    assert_eq!(v["builds"][0]["jobs"]["flash"], "success", "{v}");
    assert!(v["builds"][0]["merge_request"].is_string(), "{v}");
}

/// The skip convention in a shared pipeline: the board whose job said `cloudci: skipped: <why>`
/// (exit 77, allowed) is skipped with that reason; the other board of the pipeline succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_skipped_by_its_job_is_skipped_and_the_other_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let ci = "build:\n  parallel:\n    matrix:\n      - BOARD: [a, b]\n  script:\n    - 'if [ \"$BOARD\" = b ]; then echo \"cloudci: skipped: no rig for b\"; exit 77; fi'\n    - echo \"built $BOARD\"\n  allow_failure:\n    exit_codes: [77]\n";
    let sim = sim_with(dir.path(), &[(".gitlab-ci.yml", ci)]).await;
    let projects = "[targets.a]\nmatrix = { BOARD = \"a\" }\n[targets.b]\nmatrix = { BOARD = \"b\" }\n[projects.fw]\ngitlab = \"acme/fw\"\ntargets = [\"a\", \"b\"]\n";
    let (config, _, _) = write_config(dir.path(), projects, 1);
    let (code, out, err) = run(&config, sim.url(), &["build", "fw", "--ref", "feature", "--json"]);
    let v = json(&out, &err);
    assert_eq!(by_target(&v, "a")["status"], "success", "{v}");
    let b = by_target(&v, "b");
    assert_eq!(b["status"], "skipped", "{b}");
    assert!(b["reason"].as_str().unwrap().contains("no rig for b"), "{b}");
    assert_eq!(b["warnings"], serde_json::json!([]), "{b}");
    assert_eq!(code, 1, "a skipped target is not a success");
}
