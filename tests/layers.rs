//! The layers of `cloudci serve`'s two listeners, on the real process: the local API answers its
//! own names only, with `Referrer-Policy` and without CORS; every answer has a request id; a stop
//! is graceful (a delivery in flight is answered and kept, an event stream ends cleanly, within
//! the bound); and the debug log holds no secret while requests are served.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cloudci_gitlab::types::CreatePipeline;
use cloudci_gitlab::{Gitlab, RetryPolicy};
use common::*;
use futures_util::StreamExt;
use gitlab_sim::{Sim, SimConfig};
use secrecy::SecretString;
use serde_json::Value;

const PIPELINE_SAMPLE: &str = include_str!("../gitlab/tests/fixtures/webhook-pipeline-event.json");
const NO_GITLAB: &str = "http://127.0.0.1:9";
const TOKEN: &str = "sim-token-for-layers";

fn http() -> reqwest::Client {
    cloudci_gitlab::install_tls_provider();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// The hook URL and token `cloudci hooks show` gives (what GitLab is told).
fn hook(config: &std::path::Path) -> (String, String) {
    let out = cloudci(config, NO_GITLAB, "x", &["hooks", "show", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["url"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_api_answers_its_own_names_only_with_no_referrer_and_no_cors() {
    let dir = tempfile::tempdir().unwrap();
    let (config, hook_port, api_port) = write_config(dir.path(), "", 30);
    let daemon = serve(&config, NO_GITLAB, "x", &["--no-hooks"]);
    let token = token(&config);
    let c = http();
    let builds = format!("http://127.0.0.1:{api_port}/v1/builds");

    for host in [format!("127.0.0.1:{api_port}"), format!("localhost:{api_port}")] {
        let r = c.get(&builds).header("Host", &host).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200, "{host}");
        assert_eq!(r.headers()["referrer-policy"], "no-referrer");
        assert!(r.headers().contains_key("x-request-id"));
    }
    // A page whose name was rebound to 127.0.0.1 sends its own name: refused, whatever the token.
    for host in [format!("evil.example:{api_port}"), "127.0.0.1".to_owned(), format!("localhost:{}", api_port + 1)] {
        let r = c.get(&builds).header("Host", &host).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 421, "{host}");
        assert_eq!(r.headers()["referrer-policy"], "no-referrer");
        assert!(r.headers().contains_key("x-request-id"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["field"], "Host", "{body}");
    }
    // The dashboard loads with no referrer; a preflight from another origin is allowed nothing.
    let r = c.get(format!("http://127.0.0.1:{api_port}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let r = c
        .request(reqwest::Method::OPTIONS, &builds)
        .header("Origin", "http://evil.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert!(!r.status().is_success(), "{}", r.status());
    assert!(!r.headers().keys().any(|k| k.as_str().starts_with("access-control-")), "{:?}", r.headers());
    assert!(r.headers().contains_key("x-request-id"));
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    // A client's own request id is replaced by ours; ids differ per request.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = c.get(&builds).bearer_auth(&token).header("x-request-id", "mine").send().await.unwrap();
        ids.push(r.headers()["x-request-id"].to_str().unwrap().to_owned());
    }
    assert!(ids[0] != "mine" && ids[0] != ids[1] && ids[0].len() >= 12, "{ids:?}");

    // The public listener: its answers (here a 404 for a wrong path) carry a request id too.
    let r = c.post(format!("http://127.0.0.1:{hook_port}/hooks/not-the-secret")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("x-request-id"));
    assert!(daemon.terminate().success());
}

/// SIGTERM while a delivery's body is still arriving and a subscriber is connected: the delivery
/// is answered 2xx and is in the log after a restart; the event stream ends cleanly (not a reset);
/// the process exits within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_answers_the_delivery_in_flight_and_ends_event_streams_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _, api_port) = write_config(dir.path(), "", 30);
    let mut daemon = serve(&config, NO_GITLAB, "x", &["--no-hooks"]);
    let token = token(&config);
    let (url, hook_token) = hook(&config);
    let c = http();

    let stream = c.get(format!("http://127.0.0.1:{api_port}/v1/events")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let reader = tokio::spawn(async move {
        let mut body = stream.bytes_stream();
        loop {
            match body.next().await {
                None => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("{e:?}")),
            }
        }
    });

    // The body in two parts, the second one after the SIGTERM.
    let (first, rest) = PIPELINE_SAMPLE.split_at(PIPELINE_SAMPLE.len() / 2);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(2);
    tx.send(Ok(first.to_owned())).await.unwrap();
    let body = reqwest::Body::wrap_stream(stream_of(rx));
    let delivery = tokio::spawn(
        c.post(&url)
            .header("Content-Type", "application/json")
            .header("X-Gitlab-Event", "Pipeline Hook")
            .header("X-Gitlab-Token", &hook_token)
            .header("Idempotency-Key", "in-flight-at-sigterm")
            .body(body)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = daemon.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let stopped_at = Instant::now();

    // The stream ends first (the stop does not wait for it), and ends as a stream ends.
    let ended = tokio::time::timeout(Duration::from_secs(10), reader).await.expect("the event stream never ended");
    assert_eq!(ended.unwrap(), Ok(()), "the event stream was cut instead of ended");
    tokio::time::sleep(Duration::from_millis(800)).await;
    tx.send(Ok(rest.to_owned())).await.unwrap();
    drop(tx);
    let answer = delivery.await.unwrap().expect("the delivery in flight got no answer");
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["status"], "accepted", "{answer}");

    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(14),
            "still running {:?} after SIGTERM",
            stopped_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");

    // The next daemon has it in its log.
    let again = serve(&config, NO_GITLAB, "x", &["--no-hooks"]);
    let mut events = Events::open(api_port, &token, "?since=0").await;
    let mut seen = Vec::new();
    while let Some(e) = events.next(Duration::from_secs(5)).await {
        if e["kind"] == "pipeline" && e["pipeline_id"] == 31 {
            drop(again);
            return;
        }
        seen.push(e);
    }
    panic!("the delivery answered at shutdown is not in the log: {seen:?}");
}

fn stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// At `CLOUDCI_LOG=debug`, with hooks installed on gitlab-sim, signed deliveries arriving, API
/// calls with a bearer token, the dashboard's login (`/login?code=`) and its stream carried
/// by the cookie, and a forged delivery: the daemon's log names routes by their template and
/// holds none of the secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_log_holds_no_secret_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ci = "build:\n  script: echo build\n";
    let repo = gitlab_sim::fixtures::repo_with(dir.path(), "repo", &[(".gitlab-ci.yml", ci)]);
    let sim = Sim::start(SimConfig {
        token: TOKEN.into(),
        projects: vec![("acme/firmware".into(), repo)],
        seed: 3,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let project = "[projects.firmware]\ngitlab = \"acme/firmware\"\ntargets = [\"host\"]\n";
    let (config, _, api_port) = write_config(dir.path(), project, 30);
    let log_path = dir.path().join("serve.log");
    let mut child = cloudci(&config, sim.url(), TOKEN, &["serve"])
        .env("CLOUDCI_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("local API at") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "cloudci serve exited before it was ready");
    }
    std::thread::spawn(move || for _ in out.lines() {});
    let daemon = Daemon(child);
    let token = token(&config);
    let (url, hook_token) = hook(&config);
    let path_secret = url.rsplit('/').next().unwrap().to_owned();
    let c = http();

    // Signed deliveries from GitLab, followed on the dashboard's kind of stream: its login has
    // a one-time code in the address, traded for the cookie its stream then carries.
    let mut events = Events::open(api_port, &token, "").await;
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let login = dashboard_url(&config);
    let code = login.split_once("code=").unwrap().1.to_owned();
    let trade = no_redirect.get(&login).send().await.unwrap();
    assert_eq!(trade.status(), 303);
    let cookie = trade.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let session = cookie.split_once('=').unwrap().1.to_owned();
    let sse = c
        .get(format!("http://127.0.0.1:{api_port}/v1/events?project=acme/firmware"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let gitlab = Gitlab::builder(sim.url())
        .private_token(SecretString::from(TOKEN))
        .retry(RetryPolicy::never())
        .build()
        .unwrap();
    let p = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = events.next(deadline.saturating_duration_since(Instant::now())).await.expect("no pipeline success");
        if e["kind"] == "pipeline" && e["pipeline_id"] == p.id.0 && e["status"] == "success" {
            break;
        }
    }
    // API calls with the bearer token; a forged delivery (right path, no signature); a query.
    let r = c.get(format!("http://127.0.0.1:{api_port}/v1/builds?x={token}")).bearer_auth(&token).send().await;
    assert_eq!(r.unwrap().status(), 200);
    let r = c
        .post(format!("{url}?token={hook_token}"))
        .header("Content-Type", "application/json")
        .header("X-Gitlab-Token", &hook_token)
        .body(PIPELINE_SAMPLE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    drop(sse);
    assert!(daemon.terminate().success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains(r#"route="/hooks/{secret}""#), "no span for deliveries:\n{log}");
    assert!(log.contains(r#"route="/v1/events""#), "no span for the event stream:\n{log}");
    assert!(log.contains("x-request-id") || log.contains("request{id="), "no request ids:\n{log}");
    for (what, secret) in [
        ("path secret", path_secret.as_str()),
        ("hook token", &hook_token),
        ("bearer token", &token),
        ("login code", &code),
        ("session token", &session),
        ("GitLab token", TOKEN),
    ] {
        assert!(!log.contains(secret), "the {what} is in the log:\n{log}");
    }
}
