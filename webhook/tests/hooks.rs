//! The hook manager against gitlab-sim: install once (even when called again), recognise only its
//! own hooks, re-enable a hook GitLab auto-disabled, remove.

use std::time::Duration;

use cloudci_gitlab::types::{CreatePipeline, HookEvents, HookParams};
use cloudci_gitlab::{Gitlab, ProjectRef, RetryPolicy};
use cloudci_webhook::HookManager;
use futures_util::TryStreamExt;
use gitlab_sim::{Sim, SimConfig};
use secrecy::SecretString;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_find_reenable_remove() {
    let dir = tempfile::tempdir().unwrap();
    let repo = gitlab_sim::fixtures::repo_with(dir.path(), "repo", &[(".gitlab-ci.yml", "b:\n  script: 'true'\n")]);
    let sim = Sim::start(SimConfig {
        token: "t".into(),
        projects: vec![("acme/firmware".into(), repo)],
        faults: "disable_backoff_ms=600000".parse().unwrap(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let gitlab =
        Gitlab::builder(sim.url()).private_token(SecretString::from("t")).retry(RetryPolicy::never()).build().unwrap();
    let project = ProjectRef::from("acme/firmware");
    // Someone else's hook on the same project, which must be left alone.
    gitlab.create_hook(project.clone(), &HookParams::new("http://127.0.0.1:9/theirs", HookEvents::ALL)).await.unwrap();

    // Our receiver: answers 500 at first (so GitLab disables the hook), later 200.
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = healthy.clone();
    let app = axum::Router::new().fallback(move || {
        let ok = flag.load(std::sync::atomic::Ordering::SeqCst);
        async move { if ok { axum::http::StatusCode::OK } else { axum::http::StatusCode::INTERNAL_SERVER_ERROR } }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let secret = SecretString::from("pathsecret123");
    let manager = HookManager::new(
        gitlab.clone(),
        "inst-0123456789",
        format!("{base}/hooks/pathsecret123"),
        vec![secret],
        SecretString::from("tok"),
        None,
    );
    let first = manager.install(&project).await.unwrap();
    let again = manager.install(&project).await.unwrap();
    assert_eq!(first.id, again.id, "installing twice keeps one hook");
    assert_eq!(manager.find(&project).await.unwrap().len(), 1);
    assert_eq!(first.name.as_deref(), Some("cloudci-inst-012"));

    // Failures disable it; once the receiver is healthy, a test delivery re-enables it.
    gitlab.create_pipeline(project.clone(), &CreatePipeline::new("main")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !manager.find(&project).await.unwrap()[0].is_disabled() {
        assert!(tokio::time::Instant::now() < deadline, "the hook was never disabled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(manager.ensure_enabled(&project).await.unwrap());
    assert!(!manager.find(&project).await.unwrap()[0].is_disabled());
    assert!(!manager.ensure_enabled(&project).await.unwrap());

    assert_eq!(manager.remove(&project).await.unwrap(), 1);
    let left: Vec<_> = gitlab.hooks(project.clone()).try_collect().await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].url.ends_with("/theirs"));
}
