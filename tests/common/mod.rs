//! Helpers for tests that run the `cloudci` binary.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

pub mod hooks;

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `cloudci.toml` for tests: tunnel none on a loopback port, a state dir under `dir`.
pub fn write_config(dir: &Path, projects: &str, reconcile_after: u64) -> (PathBuf, u16, u16) {
    // Every test here starts with a config; its HTTP clients need the TLS provider.
    cloudci_gitlab::install_tls_provider();
    let (hook_port, api_port) = (free_port(), free_port());
    let text = format!(
        r#"
[webhook]
listen = "127.0.0.1:{hook_port}"
tunnel = "none"
public_url = "http://127.0.0.1:{hook_port}"
reconcile_after = {reconcile_after}

[api]
listen = "127.0.0.1:{api_port}"

[store]
path = "state"

[targets.host]
variables = {{ BOARD = "host" }}

{projects}
"#
    );
    let path = dir.join("cloudci.toml");
    std::fs::write(&path, text).unwrap();
    (path, hook_port, api_port)
}

/// `cloudci` with the given args, GitLab pointed at `gitlab_url`.
pub fn cloudci(config: &Path, gitlab_url: &str, token: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cloudci"));
    c.arg("--config").arg(config).args(args).env("GITLAB_HOST", gitlab_url).env("GITLAB_TOKEN", token);
    c.env_remove("CLOUDCI_LOG");
    c
}

/// A `cloudci serve` process, killed when dropped (so a failing test leaves nothing behind).
pub struct Daemon(pub Child);

impl Daemon {
    /// SIGTERM, then wait: a clean shutdown.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        self.0.wait().unwrap()
    }

    /// SIGKILL, then wait: a crash.
    pub fn crash(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cloudci serve` and waits until it says where its API is.
pub fn serve(config: &Path, gitlab_url: &str, token: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["serve"];
    args.extend_from_slice(extra);
    let mut child = cloudci(config, gitlab_url, token, &args).stdout(Stdio::piped()).spawn().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "cloudci serve exited before it was ready");
        if line.starts_with("local API at") {
            break;
        }
    }
    // Keep draining stdout so the daemon never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    Daemon(child)
}

/// `cloudci token issue --json`
pub fn token(config: &Path) -> String {
    let out = cloudci(config, "http://127.0.0.1:9", "x", &["token", "issue", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// `cloudci dashboard --json`: the running daemon's dashboard address with a one-time login code.
pub fn dashboard_url(config: &Path) -> String {
    let out = cloudci(config, "http://127.0.0.1:9", "x", &["dashboard", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["url"].as_str().unwrap().to_owned()
}

/// A minimal SSE reader over reqwest.
pub struct Events {
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Events {
    pub async fn open(api_port: u16, token: &str, query: &str) -> Self {
        cloudci_gitlab::install_tls_provider();
        let resp = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{api_port}/v1/events{query}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        Self { stream: Box::pin(resp.bytes_stream()), buf: String::new() }
    }

    /// The next event's data, or `None` after `wait` without one.
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) {
                    return Some(serde_json::from_str(data.trim_start()).unwrap());
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next()).await.ok()??.ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// gitlab-sim serving one repository, `acme/firmware`, whose `.gitlab-ci.yml` is `ci`.
pub async fn sim_with(dir: &Path, token: &str, ci: &str, faults: &str, seed: u64) -> gitlab_sim::Sim {
    let repo = gitlab_sim::fixtures::repo_with(dir, "repo", &[(".gitlab-ci.yml", ci)]);
    gitlab_sim::Sim::start(gitlab_sim::SimConfig {
        token: token.into(),
        projects: vec![("acme/firmware".into(), repo)],
        faults: faults.parse().unwrap(),
        seed,
        ..gitlab_sim::SimConfig::default()
    })
    .await
    .unwrap()
}

/// A client of `url` that never retries (the tests look at what happened, not at recovery).
pub fn client_of(url: &str, token: &str) -> cloudci_gitlab::Gitlab {
    cloudci_gitlab::Gitlab::builder(url)
        .private_token(secrecy::SecretString::from(token))
        .retry(cloudci_gitlab::RetryPolicy::never())
        .build()
        .unwrap()
}
