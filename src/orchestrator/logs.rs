//! Per-run folders on disk, after kde-builder: `logs/YYYY-MM-DD_NN/<project>/<target>/<job>.log`,
//! a `latest` link to the newest run, and `error.log` in a run pointing at a failed job's log.

use std::path::{Path, PathBuf};

/// Creates the next run folder under `logs` for today: `YYYY-MM-DD_01`, `_02`, ...
pub fn new_run_dir(logs: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(logs)?;
    let today = chrono::Local::now().format("%Y-%m-%d").to_string();
    for n in 1..10_000 {
        let dir = logs.join(format!("{today}_{n:02}"));
        // create_dir fails if it exists, so two runs never share a folder.
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                let latest = logs.join("latest");
                let _ = std::fs::remove_file(&latest);
                link(Path::new(dir.file_name().expect("a name")), &latest)?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("too many runs today"))
}

/// Points `run/error.log` at `log` (the first failure wins).
pub fn mark_error(run: &Path, log: &Path) -> std::io::Result<()> {
    let link_path = run.join("error.log");
    if link_path.symlink_metadata().is_ok() {
        return Ok(());
    }
    let target = log.strip_prefix(run).unwrap_or(log);
    link(target, &link_path)
}

#[cfg(unix)]
fn link(target: &Path, at: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, at)
}

#[cfg(not(unix))]
fn link(target: &Path, at: &Path) -> std::io::Result<()> {
    std::fs::write(at, target.to_string_lossy().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_runs_latest_and_error_log() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let a = new_run_dir(&logs).unwrap();
        let b = new_run_dir(&logs).unwrap();
        assert!(a.to_string_lossy().ends_with("_01") && b.to_string_lossy().ends_with("_02"));
        assert_eq!(std::fs::canonicalize(logs.join("latest")).unwrap(), std::fs::canonicalize(&b).unwrap());
        let log = b.join("fw/host/build.log");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, "boom").unwrap();
        mark_error(&b, &log).unwrap();
        mark_error(&b, &b.join("other.log")).unwrap();
        assert_eq!(std::fs::read_to_string(b.join("error.log")).unwrap(), "boom");
    }
}
