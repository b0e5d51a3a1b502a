//! Test fixtures: git repositories made on the spot, and a sim serving them.

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use gitlab_sim::{FaultSpec, Sim, SimConfig};

pub mod team;

pub const TOKEN: &str = "sim-secret-token-1234";

/// The firmware-like project most tests use: build (with artifacts) → test (needs build), a
/// manual deploy, and a job that prints its variables.
pub const CI_YML: &str = r#"
stages: [build, test, deploy]
variables:
  GREETING: "hello from yaml"
build:
  stage: build
  script:
    - mkdir -p out
    - echo "firmware for $BOARD at $CI_COMMIT_SHORT_SHA" > out/firmware.bin
    - echo "built $CI_PROJECT_PATH $CI_COMMIT_REF_NAME pipeline=$CI_PIPELINE_ID job=$CI_JOB_NAME"
  artifacts:
    paths: [out/]
test:
  stage: test
  needs: [build]
  script:
    - test -n "$CI_JOB_ID"
    - echo "greeting=$GREETING board=$BOARD"
deploy:
  stage: deploy
  when: manual
  script: echo deploying
"#;

pub use gitlab_sim::fixtures::git;

/// A repository with `main` holding `files`, and a `feature` branch one commit ahead.
pub fn repo_with(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    gitlab_sim::fixtures::repo_with(dir, "repo", files)
}

pub fn firmware_repo(dir: &Path) -> PathBuf {
    repo_with(dir, &[(".gitlab-ci.yml", CI_YML), ("src/main.c", "int main(void) { return 0; }\n")])
}

pub async fn start_sim(repo: &Path, faults: &str) -> Sim {
    start_sim_with(repo, faults, 4).await
}

pub async fn start_sim_with(repo: &Path, faults: &str, runners: usize) -> Sim {
    Sim::start(SimConfig {
        token: TOKEN.into(),
        projects: vec![("acme/firmware".into(), repo.to_owned())],
        faults: faults.parse::<FaultSpec>().unwrap(),
        seed: 42,
        runners,
        ref_poll: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keys of `want` (recursively into objects) missing from `have`.
pub fn missing_keys(want: &serde_json::Value, have: &serde_json::Value) -> Vec<String> {
    fn walk(want: &serde_json::Value, have: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        let (Some(w), Some(h)) = (want.as_object(), have.as_object()) else { return };
        for (k, wv) in w {
            match h.get(k) {
                None => out.push(format!("{path}{k}")),
                Some(hv) if wv.is_object() && hv.is_object() => walk(wv, hv, &format!("{path}{k}."), out),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(want, have, "", &mut out);
    out
}

/// A sample: `gitlab/tests/fixtures/NAME` (shared) or `gitlab-sim/tests/fixtures/samples/NAME`.
pub fn sample(name: &str) -> serde_json::Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../gitlab/tests/fixtures").join(name);
    let path = if shared.exists() { shared } else { root.join("tests/fixtures/samples").join(name) };
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}
