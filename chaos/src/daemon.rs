//! `cloudci serve` as a child process of the harness, on the same ports and state directory
//! across restarts. Each start's stdout and stderr go to `serve-N.out` / `serve-N.err` in the run
//! directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

/// Writes `cloudci.toml` into `dir` (tunnel none, loopback ports, state under `dir/state`).
pub(crate) fn write_config(
    dir: &Path,
    hook_port: u16,
    api_port: u16,
    reconcile_after: u64,
    project: &str,
) -> std::io::Result<PathBuf> {
    let text = format!(
        r#"# Written by cloudci-chaos.
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

[projects.fw]
gitlab = "{project}"
targets = ["host"]
"#
    );
    let path = dir.join("cloudci.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `cloudci token issue --json`: a token for the local API.
pub(crate) async fn issue_token(exe: &Path, config: &Path) -> Result<String, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(exe)
            .arg("--config")
            .arg(config)
            .args(["token", "issue", "--json"])
            .env_remove("CLOUDCI_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "token issue: no answer in 30 s".to_owned())?
    .map_err(|e| format!("token issue: {e}"))?;
    if !out.status.success() {
        return Err(format!("token issue: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("token issue: not JSON ({e})"))?;
    v["token"].as_str().map(str::to_owned).ok_or_else(|| "token issue: no token in its answer".to_owned())
}

/// The `serve` process and what happened to it.
#[derive(Debug)]
pub(crate) struct Serve {
    exe: PathBuf,
    config: PathBuf,
    gitlab_url: String,
    gitlab_token: String,
    log: String,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
    /// Starts tried (the first included).
    pub(crate) starts: u32,
    /// Starts that exited or hung before they said `local API at`.
    pub(crate) failed_starts: u32,
}

impl Serve {
    pub(crate) fn new(
        exe: PathBuf,
        config: PathBuf,
        gitlab_url: String,
        gitlab_token: String,
        log: String,
        dir: PathBuf,
    ) -> Self {
        Self { exe, config, gitlab_url, gitlab_token, log, dir, child: None, starts: 0, failed_starts: 0 }
    }

    /// Whether a started process is there (running or stopped).
    pub(crate) fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts `serve` and waits until it says `local API at`; a start that fails (it exits, or is
    /// not ready in 30 s) is tried again after a second, for up to a minute.
    pub(crate) async fn start(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.starts += 1;
            let n = self.starts;
            match self.start_once(n).await {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) => {
                    self.failed_starts += 1;
                    if Instant::now() >= deadline {
                        return Err(format!("serve did not start in 60 s; last: {e}"));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn start_once(&self, n: u32) -> Result<tokio::process::Child, String> {
        let err = std::fs::File::create(self.dir.join(format!("serve-{n}.err"))).map_err(|e| e.to_string())?;
        let out = std::fs::File::create(self.dir.join(format!("serve-{n}.out"))).map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new(&self.exe)
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("GITLAB_HOST", &self.gitlab_url)
            .env("GITLAB_TOKEN", &self.gitlab_token)
            .env("CLOUDCI_LOG", &self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.exe.display()))?;
        ready_by_line(child, out, "local API at", Duration::from_secs(30), &format!("serve (see serve-{n}.err)")).await
    }

    /// The running process's id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// `kill -SIG pid` (`STOP`, `CONT`, `TERM`, ...).
    pub(crate) fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.as_ref().and_then(tokio::process::Child::id) {
            let _ = std::process::Command::new("kill")
                .args([format!("-{sig}"), pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// SIGKILL, and wait for it to be gone: a crash.
    pub(crate) async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }

    /// SIGCONT (in case it is stopped) and SIGTERM: a clean shutdown; SIGKILL after 15 s.
    pub(crate) async fn terminate(&mut self) {
        self.signal("CONT");
        self.signal("TERM");
        if let Some(mut child) = self.child.take()
            && tokio::time::timeout(Duration::from_secs(15), child.wait()).await.is_err()
        {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

/// Waits for `child` to print a line starting with `ready` on stdout, copying its stdout into
/// `out` for the whole life of the process. An error names `what` and why: it exited first, or
/// `wait` passed (it is then killed).
pub(crate) async fn ready_by_line(
    mut child: tokio::process::Child,
    mut out: std::fs::File,
    ready: &'static str,
    wait: Duration,
    what: &str,
) -> Result<tokio::process::Child, String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // Keep draining stdout into the file for the process's whole life.
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut tx = Some(tx);
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = writeln!(out, "{line}");
            if line.starts_with(ready)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(())) => Ok(child),
        Ok(Err(_)) => {
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            Err(format!("{what} exited before it was ready ({status:?})"))
        }
        Err(_) => {
            let _ = child.kill().await;
            Err(format!("{what} was not ready in {} s", wait.as_secs()))
        }
    }
}
