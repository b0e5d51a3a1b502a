//! The sim's projects as [`crate::ci::Files`]: files at a commit read with `git` (blocking: the
//! CI reader runs on a blocking thread), other hosted projects for `include:project`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::ci::Files;

/// A hosted project, as `include:project` finds it.
#[derive(Debug, Clone)]
pub(crate) struct HostedProject {
    pub(crate) path: String,
    pub(crate) repo: PathBuf,
    pub(crate) default_branch: String,
}

/// One project's files at one commit.
#[derive(Debug, Clone)]
pub(crate) struct RepoFiles {
    pub(crate) project: String,
    pub(crate) repo: PathBuf,
    pub(crate) sha: String,
    /// The commit a push pipeline compares with (`before`); `None` for API, web, trigger and
    /// child pipelines, whose `changes` GitLab takes as true.
    pub(crate) before: Option<String>,
    pub(crate) hosted: Arc<Vec<HostedProject>>,
}

fn git(repo: &PathBuf, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Files for RepoFiles {
    fn read(&self, path: &str) -> Option<String> {
        git(&self.repo, &["show", &format!("{}:{}", self.sha, path.trim_start_matches('/'))])
    }

    fn list(&self) -> Vec<String> {
        git(&self.repo, &["ls-tree", "-r", "--name-only", &self.sha])
            .map(|o| o.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn project(&self, project: &str, git_ref: Option<&str>) -> Result<Box<dyn Files>, String> {
        let p = self.hosted.iter().find(|p| p.path == project.trim_matches('/')).ok_or_else(|| {
            format!(
                "Project `{project}` not found or access denied! Make sure any includes in the pipeline configuration are correctly defined."
            )
        })?;
        let wanted = git_ref.unwrap_or(&p.default_branch);
        let sha = git(&p.repo, &["rev-parse", "--verify", "--quiet", &format!("{wanted}^{{commit}}")])
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("Project `{project}` reference `{wanted}` does not exist!"))?;
        Ok(Box::new(RepoFiles {
            project: p.path.clone(),
            repo: p.repo.clone(),
            sha,
            before: None,
            hosted: self.hosted.clone(),
        }))
    }

    fn changed(&self, compare_to: Option<&str>) -> Option<Vec<String>> {
        let base = match compare_to {
            Some(c) => c.to_owned(),
            None => self.before.clone()?,
        };
        git(&self.repo, &["diff", "--name-only", &base, &self.sha]).map(|o| o.lines().map(str::to_owned).collect())
    }

    fn origin(&self) -> (String, String) {
        (self.project.clone(), self.sha.clone())
    }
}

/// The context and files a pipeline (or a lint) of project `project_id` is read with.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare(
    shared: &crate::Shared,
    project_id: u64,
    git_ref: &str,
    tag: bool,
    commit: &crate::git::CommitInfo,
    source: &str,
    variables: &[cloudci_gitlab::types::PipelineVariable],
    inputs: serde_json::Map<String, serde_json::Value>,
) -> (crate::ci::Context, RepoFiles) {
    let state = shared.lock();
    let hosted: Vec<HostedProject> = state
        .projects
        .iter()
        .map(|p| HostedProject {
            path: p.path.clone(),
            repo: p.repo.path().to_owned(),
            default_branch: p.default_branch.clone(),
        })
        .collect();
    let project = &state.projects[usize::try_from(project_id.saturating_sub(1)).unwrap_or(0)];
    let mut ctx = crate::ci::Context::new(source, git_ref, tag);
    ctx.predefined =
        crate::runner::pipeline_predefined(&shared.render.base, project, git_ref, tag, commit, source, None);
    ctx.pipeline_variables = variables.iter().map(|v| (v.key.clone(), v.value.clone())).collect();
    ctx.inputs = inputs;
    let files = RepoFiles {
        project: project.path.clone(),
        repo: project.repo.path().to_owned(),
        sha: commit.sha.clone(),
        before: None,
        hosted: Arc::new(hosted),
    };
    (ctx, files)
}

/// Reads `text` for the pipeline `ctx` describes, on a blocking thread (git reads); with
/// `populate`, also the pipeline's jobs.
pub(crate) async fn compile(
    text: String,
    ctx: crate::ci::Context,
    files: RepoFiles,
    populate: bool,
) -> Result<(crate::ci::Composed, Option<crate::ci::CiConfig>), Vec<String>> {
    tokio::task::spawn_blocking(move || {
        let composed = crate::ci::compose(&text, &files, &ctx)?;
        let config = if populate { Some(crate::ci::populate(&composed, &ctx, &files)?) } else { None };
        Ok((composed, config))
    })
    .await
    .unwrap_or_else(|e| Err(vec![format!("500 Internal Server Error: {e}")]))
}
