//! Git repositories made on the spot, for tests and the demo: a project the sim can serve.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs git in `dir` with a fixed identity (so it works on machines without one); panics with
/// git's message on failure, as a fixture should.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.com")
        .env("GIT_COMMITTER_NAME", "Dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.com")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A repository at `dir/name` whose `main` holds `files`, with a `feature` branch one commit
/// ahead (adding `feature.txt`).
pub fn repo_with(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let repo = dir.join(name);
    std::fs::create_dir_all(&repo).expect("create the repository folder");
    git(&repo, &["init", "-q", "-b", "main"]);
    for (file, content) in files {
        let path = repo.join(file);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create folders");
        std::fs::write(path, content).expect("write a file");
    }
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "Initial firmware\n\nWith a body."]);
    git(&repo, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(repo.join("feature.txt"), "new\n").expect("write a file");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "Add feature"]);
    git(&repo, &["checkout", "-q", "main"]);
    repo
}
