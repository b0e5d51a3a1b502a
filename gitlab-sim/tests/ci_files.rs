//! CI files shaped like real firmware projects' (fixtures under `tests/fixtures/ci/`, written for
//! these tests): the jobs GitLab's documented semantics give for each, read by the library, and
//! whole pipelines through the sim's API.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudci_gitlab::types::{CiLint, CreatePipeline, Status};
use cloudci_gitlab::{Gitlab, JobFilter, PipelineId, RetryPolicy};
use common::*;
use futures_util::TryStreamExt;
use gitlab_sim::ci::{CiConfig, Context, Files, When, compose, populate};
use secrecy::SecretString;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ci").join(name)
}

/// A fixture directory as the files of a commit.
struct Dir(PathBuf);

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

impl Files for Dir {
    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.0.join(path)).ok()
    }
    fn list(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.0, &self.0, &mut out);
        out
    }
    fn project(&self, project: &str, _: Option<&str>) -> Result<Box<dyn Files>, String> {
        Err(format!("Project `{project}` not found or access denied!"))
    }
    fn changed(&self, _: Option<&str>) -> Option<Vec<String>> {
        None
    }
    fn origin(&self) -> (String, String) {
        ("acme/firmware".into(), "0".repeat(40))
    }
}

fn read(name: &str, ctx: &Context) -> Result<CiConfig, Vec<String>> {
    let dir = Dir(fixture(name));
    let text = dir.read(".gitlab-ci.yml").unwrap();
    let composed = compose(&text, &dir, ctx)?;
    populate(&composed, ctx, &dir)
}

/// name, stage, when, needs (None: stage order).
type Row = (String, String, &'static str, Option<Vec<String>>);

fn rows(cfg: &CiConfig) -> Vec<Row> {
    cfg.jobs.iter().map(|j| (j.name.clone(), j.stage.clone(), j.when.as_str(), j.needs.clone())).collect()
}

fn row(name: &str, stage: &str, when: &'static str, needs: Option<&[&str]>) -> Row {
    (name.into(), stage.into(), when, needs.map(|n| n.iter().map(|s| s.to_string()).collect()))
}

#[test]
fn templates_extended_several_levels_and_anchors() {
    let cfg = read("templates-deep", &Context::new("api", "main", false)).unwrap();
    assert_eq!(cfg.stages, ["prepare", "build", "test", "release"]);
    assert_eq!(
        rows(&cfg),
        [
            row("fetch-deps", "prepare", "on_success", None),
            row("build-arm", "build", "on_success", None),
            row("build-host", "build", "on_success", None),
            row("unit-tests", "test", "on_success", Some(&["build-host"])),
            row("size-report", "test", "on_success", Some(&["build-arm", "build-host"])),
            row("publish", "release", "manual", None),
        ]
    );
    let arm = &cfg.jobs[1];
    // .cross_build → .cmake_build → .base: script from the middle, variables merged at every level
    // (the job's VERBOSE over .base's), retry from the merged anchor, toolchain flags over the
    // global ones.
    assert_eq!(arm.script, ["cmake -B build $CMAKE_FLAGS", "cmake --build build"]);
    let vars: Vec<(&str, &str)> = arm.variables.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        vars,
        [
            ("ARCH", "armv7m"),
            ("CMAKE_FLAGS", "-DCMAKE_TOOLCHAIN_FILE=cmake/arm.cmake"),
            ("CROSS", "arm-none-eabi-"),
            ("VERBOSE", "1")
        ]
    );
    assert_eq!(arm.retry.max, 2);
    assert_eq!(arm.before_script, ["echo \"toolchains in $TOOLCHAIN_DIR\""]);
    assert_eq!(arm.after_script, ["echo \"cleanup for $CI_JOB_NAME\""]);
    assert!(arm.interruptible);
    assert_eq!(arm.tags, ["docker"]);
    assert_eq!(
        arm.notes,
        ["the sim's shell executor runs without containers: image registry.example.com/fw/builder:12 not used"]
    );
    // Hashes merge, arrays replace: build-host keeps .base's expire_in with its own paths.
    let host = &cfg.jobs[2];
    assert_eq!(host.artifact_paths, ["build/host/"]);
    assert_eq!(host.artifacts.expire_in.as_deref(), Some("1 week"));
    let size = &cfg.jobs[4];
    assert!(size.allow_failure);
    assert_eq!(size.need_details.iter().map(|n| n.artifacts).collect::<Vec<_>>(), [true, false]);
    assert_eq!(cfg.jobs[3].coverage.as_deref(), Some(r"/lines\.*: \d+\.\d+%/"));
    assert!(cfg.jobs[5].allow_failure, "a manual job may fail by default");
    assert_eq!(cfg.jobs[5].environment.as_deref(), Some("production"));
    assert!(cfg.jobs[0].notes[0].contains("cache deps not restored"));
}

#[test]
fn board_matrix_with_per_board_needs_for_each_source() {
    let api = read("board-matrix", &Context::new("api", "main", false)).unwrap();
    assert_eq!(api.name.as_deref(), Some("firmware main (api)"));
    assert_eq!(
        rows(&api),
        [
            row("build: [stm32f4]", "build", "on_success", None),
            row("build: [nrf52840]", "build", "on_success", None),
            row("lint", "build", "on_success", Some(&[])),
            row("test: [stm32f4]", "test", "on_success", Some(&["build: [stm32f4]"])),
            row("test: [nrf52840]", "test", "on_success", Some(&["build: [nrf52840]"])),
        ]
    );
    assert!(api.jobs[2].allow_failure, "lint may fail on the default branch (rules:allow_failure)");
    assert_eq!(api.jobs[0].variables["BOARD"], "stm32f4");
    assert_eq!(api.jobs[0].node, Some((1, 2)));
    assert_eq!(api.jobs[4].allow_failure_exit_codes, [77]);

    // A tag: the release file is included, lint is not there (no CI_COMMIT_BRANCH), and release
    // needs every build and test instance.
    let tag = read("board-matrix", &Context::new("push", "v1.0.0", true)).unwrap();
    let names: Vec<&str> = tag.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["build: [stm32f4]", "build: [nrf52840]", "test: [stm32f4]", "test: [nrf52840]", "release"]);
    assert_eq!(
        tag.jobs[4].needs.as_deref().unwrap(),
        ["build: [stm32f4]", "build: [nrf52840]", "test: [stm32f4]", "test: [nrf52840]"]
    );

    // From the web UI the rig job is there, manual, and (with rules) not allowed to fail.
    let web = read("board-matrix", &Context::new("web", "dev", false)).unwrap();
    let hil = web.jobs.iter().find(|j| j.name == "hil").unwrap();
    assert_eq!((hil.when, hil.allow_failure), (When::Manual, false));
    assert_eq!(hil.needs.as_deref().unwrap(), ["build: [stm32f4]"]);
    assert_eq!(hil.resource_group.as_deref(), Some("hil-rig"));
    assert!(web.jobs.iter().all(|j| j.name != "lint"), "lint only on the default branch or MRs");
    let scheduled = read("board-matrix", &Context::new("schedule", "main", false)).unwrap();
    assert_eq!(scheduled.jobs.iter().find(|j| j.name == "hil").unwrap().when, When::OnSuccess);
    // A source no workflow rule names: GitLab's refusal.
    let chat = read("board-matrix", &Context::new("chat", "main", false)).unwrap_err();
    assert_eq!(chat, ["The pipeline did not run. Review the workflow:rules configuration for the pipeline."]);
}

#[test]
fn spec_inputs_with_defaults_pipeline_inputs_and_included_inputs() {
    let cfg = read("inputs", &Context::new("api", "main", false)).unwrap();
    assert_eq!(
        rows(&cfg),
        [row("build-stm32f4", "build", "on_success", None), row("stm32f4-unit", "test", "on_success", None)]
    );
    let mut ctx = Context::new("api", "main", false);
    ctx.inputs.insert("board".into(), serde_json::json!("esp32c3"));
    ctx.inputs.insert("run_hil".into(), serde_json::json!(true));
    let cfg = read("inputs", &ctx).unwrap();
    let names: Vec<&str> = cfg.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["build-esp32c3", "esp32c3-unit", "hil"]);
    assert_eq!(cfg.jobs[0].script, ["echo \"make BOARD=esp32c3\""]);
    ctx.inputs.insert("run_hil".into(), serde_json::json!("yes"));
    assert_eq!(read("inputs", &ctx).unwrap_err(), ["`run_hil` input: provided value is not a boolean"]);
}

#[test]
fn the_child_pipeline_fixture_defines_a_bridge() {
    let cfg = read("child-pipeline", &Context::new("api", "main", false)).unwrap();
    assert_eq!(
        rows(&cfg),
        [row("build", "build", "on_success", None), row("on-target", "downstream", "on_success", None)]
    );
    assert!(cfg.jobs[1].is_bridge());
}

#[test]
fn push_only_rules_leave_an_api_pipeline_empty() {
    let e = read("push-only", &Context::new("api", "main", false)).unwrap_err();
    assert_eq!(
        e,
        ["The resulting pipeline would have been empty. Review the rules configuration for the relevant jobs."]
    );
    let push = read("push-only", &Context::new("push", "main", false)).unwrap();
    assert_eq!(rows(&push), [row("build", "test", "on_success", None)]);
}

/// The example project cloudci's demo runs keeps working with the sim.
#[test]
fn the_firmware_example_reads() {
    let dir = Dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/firmware"));
    let text = dir.read(".gitlab-ci.yml").unwrap();
    let ctx = Context::new("api", "main", false);
    let composed = compose(&text, &dir, &ctx).unwrap();
    let cfg = populate(&composed, &ctx, &dir).unwrap();
    assert!(!cfg.jobs.is_empty());
}

// ---- through the sim's API ----

fn client(url: &str) -> Gitlab {
    Gitlab::builder(url).private_token(SecretString::from(TOKEN)).retry(RetryPolicy::never()).build().unwrap()
}

fn fixture_files(name: &str) -> Vec<(String, String)> {
    let dir = Dir(fixture(name));
    dir.list().into_iter().map(|p| (p.clone(), dir.read(&p).unwrap())).collect()
}

async fn sim_for(dir: &Path, name: &str) -> (gitlab_sim::Sim, Gitlab) {
    let files = fixture_files(name);
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let repo = repo_with(dir, &refs);
    let sim = start_sim(&repo, "").await;
    let gitlab = client(sim.url());
    (sim, gitlab)
}

async fn wait_done(gitlab: &Gitlab, id: PipelineId) -> Status {
    eventually(Duration::from_secs(90), || async {
        let p = gitlab.pipeline("acme/firmware", id).await.unwrap();
        p.status.is_completed().then_some(p.status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_pipeline_runs_each_board_with_its_variables_in_needs_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, gitlab) = sim_for(dir.path(), "board-matrix").await;
    let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    assert_eq!(p.source.as_deref(), Some("api"));
    assert_eq!(p.name.as_deref(), Some("firmware main (api)"));
    // test: [nrf52840] exits 77, an allowed failure: the pipeline passes (with warnings).
    assert_eq!(wait_done(&gitlab, p.id).await, Status::Success);
    let jobs: Vec<cloudci_gitlab::types::Job> =
        gitlab.pipeline_jobs("acme/firmware", p.id, &JobFilter::default()).try_collect().await.unwrap();
    let by_name: BTreeMap<&str, &cloudci_gitlab::types::Job> = jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        ["build: [nrf52840]", "build: [stm32f4]", "lint", "test: [nrf52840]", "test: [stm32f4]"]
    );
    let status = |n: &str| by_name[n].status.clone();
    assert_eq!(status("test: [stm32f4]"), Status::Success);
    assert_eq!(status("test: [nrf52840]"), Status::Failed);
    assert!(by_name["test: [nrf52840]"].allow_failure, "exit code 77 is allowed");
    // Each test started after its own board's build finished.
    for board in ["stm32f4", "nrf52840"] {
        let build = by_name[format!("build: [{board}]").as_str()];
        let test = by_name[format!("test: [{board}]").as_str()];
        assert!(build.finished_at.as_ref().unwrap().at() <= test.started_at.as_ref().unwrap().at());
        let log = String::from_utf8_lossy(&gitlab.job_trace("acme/firmware", test.id).await.unwrap()).into_owned();
        // The build's artifact reached the test, and its dotenv report became a variable.
        let node = if board == "stm32f4" { 1 } else { 2 };
        assert!(
            log.contains(&format!("testing {board} from built for {board} node {node}/2 version 1.0.{node}")),
            "{log}"
        );
        let build_log =
            String::from_utf8_lossy(&gitlab.job_trace("acme/firmware", build.id).await.unwrap()).into_owned();
        assert!(build_log.contains("west init -l . (manifest west.yml)"), "{build_log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_pipeline_that_rules_exclude_gets_gitlabs_400() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, gitlab) = sim_for(dir.path(), "push-only").await;
    let e = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap_err();
    assert!(
        e.to_string().contains(
            "The resulting pipeline would have been empty. Review the rules configuration for the relevant jobs."
        ),
        "{e}"
    );
    // Lint's dry run simulates a push, where the rules do match.
    let yaml = std::fs::read_to_string(fixture("push-only/.gitlab-ci.yml")).unwrap();
    let lint = gitlab.ci_lint("acme/firmware", &CiLint::dry_run(yaml.clone(), "main")).await.unwrap();
    assert!(lint.valid, "{lint:?}");
    let names: Vec<String> = lint.jobs.unwrap().into_iter().map(|j| j.name).collect();
    assert_eq!(names, ["build"]);
    let bad = gitlab.ci_lint("acme/firmware", &CiLint::new("build:\n  script: x\n  foo: 1\n")).await.unwrap();
    assert!(!bad.valid);
    assert_eq!(bad.errors, ["jobs:build config contains unknown keys: foo"]);
    let mut static_check = CiLint::new(yaml);
    static_check.include_jobs = true;
    let ok = gitlab.ci_lint("acme/firmware", &static_check).await.unwrap();
    assert_eq!(ok.jobs.unwrap().len(), 2, "a static check lists every defined job");
    assert!(ok.merged_yaml.unwrap().contains("release"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_pipeline_runs_behind_its_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, gitlab) = sim_for(dir.path(), "child-pipeline").await;
    let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    assert_eq!(wait_done(&gitlab, p.id).await, Status::Success);
    let jobs: Vec<cloudci_gitlab::types::Job> =
        gitlab.pipeline_jobs("acme/firmware", p.id, &JobFilter::default()).try_collect().await.unwrap();
    assert_eq!(jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), ["build"], "bridges are not jobs");
    let http = reqwest::Client::new();
    let bridges: serde_json::Value = http
        .get(format!("{}/api/v4/projects/1/pipelines/{}/bridges", sim.url(), p.id.0))
        .header("PRIVATE-TOKEN", TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bridges[0]["name"], "on-target");
    assert_eq!(bridges[0]["status"], "success");
    let child = &bridges[0]["downstream_pipeline"];
    assert_eq!(child["source"], "parent_pipeline");
    assert_eq!(child["status"], "success");
    let child_id = PipelineId(child["id"].as_u64().unwrap());
    let child_jobs: Vec<cloudci_gitlab::types::Job> =
        gitlab.pipeline_jobs("acme/firmware", child_id, &JobFilter::default()).try_collect().await.unwrap();
    assert_eq!(child_jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), ["smoke"]);
    let log = String::from_utf8_lossy(&gitlab.job_trace("acme/firmware", child_jobs[0].id).await.unwrap()).into_owned();
    assert!(log.contains("suite smoke in a parent_pipeline pipeline"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_inputs_and_after_script() {
    let dir = tempfile::tempdir().unwrap();
    let yml = "spec:\n  inputs:\n    board: {default: host}\n---\nbuild:\n  script:\n    - echo \"board $[[ inputs.board ]]\"\n    - exit 3\n  after_script:\n    - echo \"after with status $CI_JOB_STATUS\"\n    - exit 1\n  allow_failure: {exit_codes: 3}\n";
    let repo = repo_with(dir.path(), &[(".gitlab-ci.yml", yml)]);
    let sim = start_sim(&repo, "").await;
    let gitlab = client(sim.url());
    let mut params = CreatePipeline::new("main");
    params.inputs = Some(serde_json::Map::from_iter([("board".to_owned(), serde_json::json!("nrf52840"))]));
    let p = gitlab.create_pipeline("acme/firmware", &params).await.unwrap();
    assert_eq!(wait_done(&gitlab, p.id).await, Status::Success);
    let jobs: Vec<cloudci_gitlab::types::Job> =
        gitlab.pipeline_jobs("acme/firmware", p.id, &JobFilter::default()).try_collect().await.unwrap();
    let log = String::from_utf8_lossy(&gitlab.job_trace("acme/firmware", jobs[0].id).await.unwrap()).into_owned();
    assert!(log.contains("board nrf52840"), "{log}");
    assert!(log.contains("after with status failed"), "{log}");
    assert!(log.contains("WARNING: after_script failed, but job will continue unaffected"), "{log}");
    assert_eq!(jobs[0].status, Status::Failed);
    params.inputs = Some(serde_json::Map::from_iter([("nope".to_owned(), serde_json::json!("x"))]));
    let e = gitlab.create_pipeline("acme/firmware", &params).await.unwrap_err();
    assert!(e.to_string().contains("unknown input arguments: nope"), "{e}");
}
