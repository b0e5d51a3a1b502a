//! The sim driven by python-gitlab (a client nobody here wrote): if it accepts the sim, the sim's
//! API is faithful where that client looks. The client is installed into a virtualenv: the one
//! `CLOUDCI_PYTHON` names (set by `.ci/run`), else one made under the build's temporary directory.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::HeaderMap;
use common::*;

fn python_with_gitlab() -> PathBuf {
    if let Some(python) = std::env::var_os("CLOUDCI_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-gitlab-venv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python).args(["-c", "import gitlab"]).status().is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().expect("python3 runs");
        assert!(made.success(), "python3 -m venv failed");
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "python-gitlab>=4"])
            .output()
            .expect("pip runs");
        assert!(pip.status.success(), "installing python-gitlab failed: {}", String::from_utf8_lossy(&pip.stderr));
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_gitlab_runs_a_whole_build() {
    let python = tokio::task::spawn_blocking(python_with_gitlab).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = firmware_repo(dir.path());
    let sim = start_sim(&repo, "").await;

    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = events.clone();
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let log = log.clone();
        async move {
            if headers.get("x-gitlab-token").and_then(|v| v.to_str().ok()) == Some("py-token") {
                log.lock().unwrap().push(headers["x-gitlab-event"].to_str().unwrap().to_owned());
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hooks/py", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/flow.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .env("SIM_URL", sim.url())
        .env("SIM_TOKEN", TOKEN)
        .env("HOOK_URL", &hook_url)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python-gitlab flow failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["status"], "success");
    assert!(seen["firmware"].as_str().unwrap().starts_with("firmware for python-board"));
    assert!(seen["merge_request"].as_str().unwrap().ends_with("/acme/firmware/-/merge_requests/1"));
    let events = events.lock().unwrap().clone();
    assert!(events.iter().any(|e| e == "Pipeline Hook") && events.iter().any(|e| e == "Job Hook"), "{events:?}");
}
