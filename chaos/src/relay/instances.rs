//! `cloudci relay` instances as child processes, each on its own fixed loopback ports across
//! restarts (the proxy knows them), all reading one secrets directory. Each start's output goes
//! to `relay-<i>-<n>.{out,err}` in the run directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How every instance is started.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) exe: PathBuf,
    pub(crate) database_url: String,
    pub(crate) secrets: PathBuf,
    pub(crate) gitlab_url: String,
    pub(crate) public_url: String,
    pub(crate) projects: Vec<String>,
    /// Extra flags (`--access-ttl 2s`, ...).
    pub(crate) flags: Vec<String>,
    pub(crate) log: String,
    pub(crate) dir: PathBuf,
}

/// One instance and what happened to it.
#[derive(Debug)]
pub(crate) struct Instance {
    index: usize,
    pub(crate) public_port: u16,
    pub(crate) api_port: u16,
    child: Option<tokio::process::Child>,
    pub(crate) starts: u32,
    pub(crate) failed_starts: u32,
}

impl Instance {
    pub(crate) fn new(index: usize, public_port: u16, api_port: u16) -> Self {
        Self { index, public_port, api_port, child: None, starts: 0, failed_starts: 0 }
    }

    /// Starts it and waits until it says where it listens; a start that fails (PostgreSQL is
    /// away, a port not yet free) is tried again every second for up to `patience`.
    pub(crate) async fn start(&mut self, launch: &Launch, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        loop {
            self.starts += 1;
            match self.start_once(launch).await {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) => {
                    self.failed_starts += 1;
                    if Instant::now() >= deadline {
                        return Err(format!("relay {} did not start: {e}", self.index));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn start_once(&self, l: &Launch) -> Result<tokio::process::Child, String> {
        let name = format!("relay-{}-{}", self.index, self.starts);
        let err = std::fs::File::create(l.dir.join(format!("{name}.err"))).map_err(|e| e.to_string())?;
        let out = std::fs::File::create(l.dir.join(format!("{name}.out"))).map_err(|e| e.to_string())?;
        let mut cmd = tokio::process::Command::new(&l.exe);
        cmd.arg("relay")
            .args(["--listen", &format!("127.0.0.1:{}", self.public_port)])
            .args(["--api-listen", &format!("127.0.0.1:{}", self.api_port)])
            .arg("--secrets")
            .arg(&l.secrets)
            .args(["--gitlab-url", &l.gitlab_url, "--public-url", &l.public_url]);
        for p in &l.projects {
            cmd.args(["--project", p]);
        }
        let child = cmd
            .args(&l.flags)
            .env("CLOUDCI_RELAY_DATABASE_URL", &l.database_url)
            .env("CLOUDCI_LOG", &l.log)
            .env("CLOUDCI_CONFIG", "/nonexistent/cloudci.toml")
            .env("XDG_CONFIG_HOME", &l.dir)
            .env("XDG_STATE_HOME", &l.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", l.exe.display()))?;
        crate::daemon::ready_by_line(
            child,
            out,
            "relay: subscriber API on",
            Duration::from_secs(20),
            &format!("{name} (see {name}.err)"),
        )
        .await
    }

    /// Whether a started process is there.
    pub(crate) fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9`, and wait for it to be gone.
    pub(crate) async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }

    /// SIGTERM (a clean stop), SIGKILL after 15 s.
    pub(crate) async fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            }
            if tokio::time::timeout(Duration::from_secs(15), child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            }
        }
    }
}

/// Writes the secrets every instance shares (so none of them generates its own at once).
pub(crate) fn write_secrets(dir: &Path, gitlab_token: &str) -> std::io::Result<PathBuf> {
    let secrets = dir.join("relay-secrets");
    std::fs::create_dir_all(&secrets)?;
    let files = [
        ("path-secret", "Y2hhb3MtcmVsYXktcGF0aA"),
        ("hook-token", "chaos-relay-hook-token"),
        ("token-key", "chaos-relay-token-key-0123456789abcdef"),
        // GitLab 19's format; the sim signs with it, the relay requires it.
        ("signing-token", "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
        ("gitlab-token", gitlab_token),
        ("relay-id", "chaosrelay01"),
    ];
    for (name, value) in files {
        std::fs::write(secrets.join(name), value)?;
    }
    Ok(secrets)
}
