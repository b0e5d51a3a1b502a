//! A throwaway PostgreSQL cluster in a temporary directory, for tests and benchmarks: `initdb`,
//! `pg_ctl start` on a loopback port, and the ways a test breaks it (an immediate shutdown, a
//! restart). Never a server that happens to be running.
//!
//! PostgreSQL refuses to run as root; as root the cluster runs as the `postgres` user (Debian's
//! package creates it), through `runuser`. The binaries are found under
//! `/usr/lib/postgresql/<version>/bin` (Debian's layout), else on `PATH`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a scratch cluster could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// `initdb`/`pg_ctl` are not installed.
    #[error("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH)")]
    NotInstalled,
    /// A step failed.
    #[error("scratch PostgreSQL: {step}: {detail}")]
    Failed {
        /// What was being done.
        step: &'static str,
        /// What it said.
        detail: String,
    },
}

/// A running throwaway cluster; stopped (immediately) and removed when dropped.
#[derive(Debug)]
pub struct ScratchCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The user the server runs as when this process is root.
    run_as: Option<&'static str>,
}

/// The database superuser the cluster is created with.
const SUPERUSER: &str = "cloudci";

fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    // The newest version installed.
    versions.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    if let Some(bin) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(PathBuf::from).find(|d| d.join("initdb").is_file())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn failed(step: &'static str, detail: impl std::fmt::Display) -> ScratchError {
    ScratchError::Failed { step, detail: detail.to_string() }
}

impl ScratchCluster {
    /// Creates and starts a cluster. [`ScratchError::NotInstalled`] when PostgreSQL is not
    /// installed (see [`ScratchCluster::for_test`] for what a test does then).
    pub fn start() -> Result<Self, ScratchError> {
        let bin = find_bin().ok_or(ScratchError::NotInstalled)?;
        let run_as = is_root().then_some("postgres");
        let dir = tempfile::Builder::new().prefix("cloudci-pg-").tempdir().map_err(|e| failed("temp dir", e))?;
        if let Some(user) = run_as {
            // The server's user must own its directory (and reach the socket in it).
            let status = Command::new("chown").args(["-R", user, &dir.path().display().to_string()]).status();
            if !status.is_ok_and(|s| s.success()) {
                return Err(failed("chown", format!("cannot give {} to {user}", dir.path().display())));
            }
        }
        let mut cluster = Self { dir, bin, port: 0, run_as };
        cluster.run(
            "initdb",
            &["-D", &cluster.data().display().to_string(), "-A", "trust", "-U", SUPERUSER, "-N", "--no-instructions"],
        )?;
        // A free port now; another process may take it before the server does, so try again then.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port().map_err(|e| failed("port", e))?;
            match cluster.start_again() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    /// [`ScratchCluster::start`] for a test: `None` with a loud message when PostgreSQL is not
    /// installed and `CI` is unset (the test then has nothing to run against); with `CI` set, a
    /// missing PostgreSQL is a failure (`.ci/run` installs it). Any other failure panics.
    pub fn for_test() -> Option<Self> {
        match Self::start() {
            Ok(c) => Some(c),
            Err(ScratchError::NotInstalled) if std::env::var_os("CI").is_none() => {
                eprintln!(
                    "\n!!! SKIPPED: PostgreSQL is not installed (apt-get install postgresql); \
                     this test did not run. With CI=true this is a failure.\n"
                );
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The folder holding the data directory, the socket and the server log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for its `postgres` database (no password: trust on loopback).
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), ScratchError> {
        let exe = self.bin.join(tool);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed("spawn", format!("{}: {e}", exe.display())))?;
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        Err(failed(
            "pg_ctl/initdb",
            format!(
                "{tool} {}: {} {} (server log: {tail})",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }

    /// Starts the server (again, after [`ScratchCluster::stop_immediate`]); returns once it
    /// accepts connections.
    pub fn start_again(&self) -> Result<(), ScratchError> {
        let options = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 -c synchronous_commit=on",
            self.dir.path().display(),
            self.port
        );
        let data = self.data().display().to_string();
        let log = self.dir.path().join("server.log").display().to_string();
        self.run("pg_ctl", &["-D", &data, "-l", &log, "-o", &options, "-w", "-t", "30", "start"])
    }

    /// `pg_ctl stop -m immediate`: the server goes away at once, as in a crash; what was
    /// committed is recovered from the WAL at the next start.
    pub fn stop_immediate(&self) -> Result<(), ScratchError> {
        let data = self.data().display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        // Already stopped is fine; the directory goes with `dir`.
        let _ = self.stop_immediate();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
