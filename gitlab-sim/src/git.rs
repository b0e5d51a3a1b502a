//! The project repositories, read and changed with the real `git` command. The sim never touches a
//! repository's working tree: merges are made with plumbing (`merge-tree`, `commit-tree`,
//! `update-ref`), which works on bare and non-bare repositories alike.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// A failed git command.
#[derive(Debug, thiserror::Error)]
#[error("git {args}: {message}")]
pub struct GitError {
    args: String,
    message: String,
}

/// One project's repository.
#[derive(Debug, Clone)]
pub struct Repo {
    path: PathBuf,
}

/// What webhooks and API objects say about a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// Full SHA.
    pub sha: String,
    /// First line.
    pub title: String,
    /// Whole message.
    pub message: String,
    /// Author name.
    pub author_name: String,
    /// Author email.
    pub author_email: String,
    /// Author date, ISO 8601 with offset.
    pub authored_at: String,
    /// Committer date, ISO 8601 with offset.
    pub committed_at: String,
    /// Parent SHAs.
    pub parents: Vec<String>,
}

/// How a branch or tag name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRef {
    /// The commit.
    pub sha: String,
    /// A tag rather than a branch.
    pub tag: bool,
}

/// The result of merging one branch into another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    /// The target moved to this commit.
    Merged(String),
    /// The branches conflict.
    Conflict,
}

impl Repo {
    /// A repository at `path` (checked by [`Repo::open`]).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Checks that `path` is a git repository.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, GitError> {
        let repo = Self::new(path);
        repo.run(&["rev-parse", "--git-dir"]).await?;
        Ok(repo)
    }

    /// The repository's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run(&self, args: &[&str]) -> Result<String, GitError> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.path)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            // Merge commits are made by "GitLab", whatever the machine's git identity.
            .env("GIT_AUTHOR_NAME", "Administrator")
            .env("GIT_AUTHOR_EMAIL", "admin@example.com")
            .env("GIT_COMMITTER_NAME", "Administrator")
            .env("GIT_COMMITTER_EMAIL", "admin@example.com")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| GitError { args: args.join(" "), message: e.to_string() })?;
        if !out.status.success() {
            return Err(GitError {
                args: args.join(" "),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The branch `HEAD` names (the default branch), if any.
    pub async fn default_branch(&self) -> Option<String> {
        let out = self.run(&["symbolic-ref", "--quiet", "--short", "HEAD"]).await.ok()?;
        Some(out.trim().to_owned()).filter(|b| !b.is_empty())
    }

    /// Resolves a branch (preferred, as GitLab does) or tag name.
    pub async fn resolve(&self, name: &str) -> Option<ResolvedRef> {
        if name.is_empty() || name.starts_with('-') {
            return None;
        }
        for (prefix, tag) in [("refs/heads/", false), ("refs/tags/", true)] {
            let spec = format!("{prefix}{name}^{{commit}}");
            if let Ok(out) = self.run(&["rev-parse", "--verify", "--quiet", &spec]).await {
                return Some(ResolvedRef { sha: out.trim().to_owned(), tag });
            }
        }
        None
    }

    /// Every branch with its head: `(name, sha)`, sorted by name.
    pub async fn branches(&self) -> Result<Vec<(String, String)>, GitError> {
        let out = self.run(&["for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads"]).await?;
        let mut list: Vec<(String, String)> =
            out.lines().filter_map(|l| l.rsplit_once(' ').map(|(n, s)| (n.to_owned(), s.to_owned()))).collect();
        list.sort();
        Ok(list)
    }

    /// Details of one commit.
    pub async fn commit(&self, sha: &str) -> Result<CommitInfo, GitError> {
        let out = self.run(&["show", "-s", "--format=%H%x00%an%x00%ae%x00%aI%x00%cI%x00%P%x00%B", sha, "--"]).await?;
        let mut parts = out.splitn(7, '\0');
        let mut next = || parts.next().unwrap_or_default().to_owned();
        let (sha, author_name, author_email, authored_at, committed_at, parents, message) =
            (next(), next(), next(), next(), next(), next(), next());
        let message = message.trim_end_matches('\n').to_owned() + "\n";
        Ok(CommitInfo {
            title: message.lines().next().unwrap_or_default().to_owned(),
            sha,
            message,
            author_name,
            author_email,
            authored_at,
            committed_at,
            parents: parents.split_whitespace().map(str::to_owned).collect(),
        })
    }

    /// Commits in `to` that are not in `from` (newest first), at most `limit`.
    pub async fn commits_between(&self, from: Option<&str>, to: &str, limit: usize) -> Result<Vec<String>, GitError> {
        let range = match from {
            Some(from) => format!("{from}..{to}"),
            None => to.to_owned(),
        };
        let max = format!("--max-count={limit}");
        let out = self.run(&["rev-list", &max, &range, "--"]).await?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// A file's content at a commit, or `None` when the file does not exist there.
    pub async fn file_at(&self, sha: &str, path: &str) -> Result<Option<Vec<u8>>, GitError> {
        let spec = format!("{sha}:{path}");
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.path)
            .args(["cat-file", "blob", &spec])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| GitError { args: "cat-file".into(), message: e.to_string() })?;
        Ok(out.status.success().then_some(out.stdout))
    }

    /// A fresh checkout of `sha` in `dir` (a clone sharing the object store, so it is fast).
    pub async fn checkout(&self, sha: &str, dir: &Path) -> Result<(), GitError> {
        let status = Command::new("git")
            .args(["clone", "--quiet", "--shared", "--no-checkout"])
            .arg(&self.path)
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| GitError { args: "clone".into(), message: e.to_string() })?;
        if !status.status.success() {
            return Err(GitError { args: "clone".into(), message: String::from_utf8_lossy(&status.stderr).into() });
        }
        Repo::new(dir).run(&["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", sha]).await.map(drop)
    }

    /// Starts `git archive` of `sha` in `format` (`tar.gz`, `tar`, `zip`), output on its stdout.
    pub fn archive(&self, sha: &str, format: &str, prefix: &str) -> std::io::Result<tokio::process::Child> {
        Command::new("git")
            .arg("-C")
            .arg(&self.path)
            .args(["archive", &format!("--format={format}"), &format!("--prefix={prefix}/"), sha])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
    }

    /// Merges `source` into `target`: a fast-forward when possible, else a merge commit. Moves
    /// only the `target` ref, and only if it still points where it did (compare-and-swap).
    pub async fn merge(&self, source: &str, target: &str, message: &str) -> Result<MergeOutcome, GitError> {
        let target_ref = format!("refs/heads/{target}");
        let target_sha = self.run(&["rev-parse", "--verify", &target_ref]).await?.trim().to_owned();
        let source_sha = self.run(&["rev-parse", "--verify", &format!("refs/heads/{source}")]).await?.trim().to_owned();
        let fast_forward = self.run(&["merge-base", "--is-ancestor", &target_sha, &source_sha]).await.is_ok();
        let new_sha = if fast_forward {
            source_sha
        } else {
            let tree = match self.run(&["merge-tree", "--write-tree", &target_sha, &source_sha]).await {
                Ok(out) => out.lines().next().unwrap_or_default().to_owned(),
                Err(_) => return Ok(MergeOutcome::Conflict),
            };
            let out = self.run(&["commit-tree", &tree, "-p", &target_sha, "-p", &source_sha, "-m", message]).await?;
            out.trim().to_owned()
        };
        self.run(&["update-ref", &target_ref, &new_sha, &target_sha]).await?;
        Ok(MergeOutcome::Merged(new_sha))
    }
}
