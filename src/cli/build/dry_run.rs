//! `cloudci build --dry-run`: the calls a run would make, and the jobs GitLab's lint says each
//! target built by jobs would run.

use std::time::Duration;

use cloudci_gitlab::encode_segment;

use crate::config::Config;
use crate::orchestrator::{self, Plan};

/// The calls a run would make, in order.
pub(super) fn dry_run(config: &Config, plan: &Plan, actions: bool) -> Vec<String> {
    let mut lines = Vec::new();
    for (i, wave) in plan.waves.iter().enumerate() {
        let after: Vec<&String> = wave.iter().flat_map(|p| plan.needs[p].iter()).collect();
        lines.push(if i == 0 {
            "# first, at once:".to_owned()
        } else {
            format!("# then, once {} succeeded:", after.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
        });
        for project in wave {
            let p = &config.projects[project];
            let path = format!("/projects/{}", encode_segment(&p.gitlab));
            let shared: Vec<&orchestrator::PlannedBuild> =
                plan.builds[project].iter().filter(|b| b.shares_pipeline()).collect();
            for b in &plan.builds[project] {
                // The targets built by jobs share one pipeline: it is created once, by the first.
                let first_shared = shared.first().is_some_and(|f| std::ptr::eq(*f, b));
                if b.shares_pipeline() && !first_shared {
                    continue;
                }
                let git_ref = match &b.git_ref {
                    Some(r) => r.clone(),
                    None => {
                        lines.push(format!("GET  {path}  (its default branch)"));
                        "<default branch>".into()
                    }
                };
                let mut variables: Vec<serde_json::Value> = b
                    .variables
                    .iter()
                    .map(|(k, v)| serde_json::json!({"key": k, "value": v, "variable_type": "env_var"}))
                    .collect();
                variables.push(serde_json::json!({"key": orchestrator::REQUEST_VARIABLE, "value": "<random id>", "variable_type": "env_var"}));
                let body = serde_json::json!({"ref": git_ref, "variables": variables});
                if first_shared {
                    let each: Vec<String> = shared
                        .iter()
                        .map(|s| {
                            let jobs = s.selector.as_ref().map(|x| x.describe()).unwrap_or_default();
                            format!("{} ({jobs})", s.target)
                        })
                        .collect();
                    lines.push(format!(
                        "POST {path}/pipeline  {body}  # {}: one pipeline for {}",
                        b.project,
                        each.join(", ")
                    ));
                } else {
                    lines.push(format!("POST {path}/pipeline  {body}  # {}/{}", b.project, b.target));
                }
                lines.push(format!(
                    "GET  {path}/pipelines/<id>  (when webhooks are silent) and /pipelines/<id>/jobs, /jobs/<id>/trace"
                ));
                if actions && p.after_success.download_artifacts {
                    lines.push(format!("GET  {path}/jobs/<id>/artifacts  (each job with artifacts, on success)"));
                }
            }
            if actions {
                if let Some(mr) = &p.after_success.merge_request {
                    lines.push(format!(
                        "GET  {path}/merge_requests?source_branch=<ref>&target_branch={}&state=opened  (on success)",
                        mr.target_branch
                    ));
                    lines.push(format!("POST {path}/merge_requests  (only if none is open)"));
                    if p.after_success.auto_merge {
                        lines.push(format!("PUT  {path}/merge_requests/<iid>/merge  {{\"auto_merge\":true}}"));
                    }
                }
                if let Some(promote) = &p.after_success.promote {
                    let target = promote.project.as_deref().unwrap_or(&p.gitlab);
                    lines.push(format!(
                        "POST /projects/{}/pipeline  {{\"ref\":\"{}\", CLOUDCI_SHA, CLOUDCI_ARTIFACT_JOB}}  (promotion)",
                        encode_segment(target),
                        promote.git_ref
                    ));
                }
            }
        }
    }
    lines
}

/// How long a dry run waits for GitLab's lint before it says it could not ask.
const LINT_PATIENCE: Duration = Duration::from_secs(20);

/// For each project with targets built by jobs: the jobs each such target would run, from
/// GitLab's lint of the project's CI configuration at the ref (`POST /projects/:id/ci/lint`,
/// `dry_run`, `include_jobs`), which writes nothing. Without a token or GitLab, a note instead.
pub(super) async fn lint_jobs(config: &Config, plan: &Plan) -> Vec<String> {
    let projects: Vec<&String> =
        plan.builds.iter().filter(|(_, b)| b.iter().any(|b| b.shares_pipeline())).map(|(p, _)| p).collect();
    if projects.is_empty() {
        return Vec::new();
    }
    let mut lines =
        vec![String::new(), "# the jobs each target would run (GitLab's CI lint, which writes nothing):".to_owned()];
    // One attempt more at most: a dry run does not wait long for a GitLab it cannot reach.
    let client = config.gitlab_token().map_err(|e| e.to_string()).and_then(|token| {
        cloudci_gitlab::Gitlab::builder(config.gitlab_url())
            .private_token(token)
            .retry(cloudci_gitlab::RetryPolicy { max_retries: 1, ..cloudci_gitlab::RetryPolicy::default() })
            .build()
            .map_err(|e| e.to_string())
    });
    let gitlab = match client {
        Ok(g) => g,
        Err(e) => {
            lines.push(format!("#   could not ask GitLab: {e}"));
            return lines;
        }
    };
    for project in projects {
        let asked = tokio::time::timeout(LINT_PATIENCE, lint_project(&gitlab, config, project, &plan.builds[project]));
        match asked.await {
            Ok(Ok(more)) => lines.extend(more),
            Ok(Err(e)) => lines.push(format!("#   {project}: could not ask GitLab: {e}")),
            Err(_) => lines
                .push(format!("#   {project}: could not ask GitLab: no answer within {} s", LINT_PATIENCE.as_secs())),
        }
    }
    lines
}

async fn lint_project(
    gitlab: &cloudci_gitlab::Gitlab,
    config: &Config,
    project: &str,
    builds: &[orchestrator::PlannedBuild],
) -> Result<Vec<String>, cloudci_gitlab::Error> {
    use cloudci_gitlab::ProjectRef;
    use cloudci_gitlab::types::CiLint;
    let path = ProjectRef::parse(&config.projects[project].gitlab);
    let git_ref = match builds.iter().find_map(|b| b.git_ref.clone()) {
        Some(r) => r,
        None => gitlab.project(path.clone()).await?.default_branch.unwrap_or_else(|| "main".into()),
    };
    // The project's own file, as GitLab resolves it at the ref (includes and all).
    let content = "include:\n  - local: .gitlab-ci.yml\n";
    let result = gitlab.ci_lint(path, &CiLint::dry_run(content, git_ref.clone())).await?;
    let gitlab_path = &config.projects[project].gitlab;
    let mut lines = vec![format!(
        "#   {gitlab_path} at {git_ref} (GitLab's lint simulates a push pipeline: an API pipeline, \
         CI_PIPELINE_SOURCE=api, may not get every job listed, or may be refused)"
    )];
    if !result.valid {
        for e in &result.errors {
            let hint = orchestrator::error::refusal_hint(e).map(|h| format!(" (hint: {h})")).unwrap_or_default();
            lines.push(format!("#   {project}: GitLab would refuse it: {e}{hint}"));
        }
        return Ok(lines);
    }
    let jobs = result.jobs.unwrap_or_default();
    for b in builds {
        let Some(selector) = &b.selector else {
            lines.push(format!(
                "#   {project}/{}: a pipeline of its own, its jobs chosen by its variables (the lint cannot set them)",
                b.target
            ));
            continue;
        };
        let mine: Vec<String> =
            jobs.iter().filter(|j| selector.matches(&j.name)).map(|j| format!("{} ({})", j.name, j.stage)).collect();
        if mine.is_empty() {
            lines.push(format!(
                "#   {project}/{}: no job ({}); the pipeline's jobs: {}",
                b.target,
                selector.describe(),
                jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        } else {
            lines.push(format!("#   {project}/{}: {}", b.target, mine.join(", ")));
        }
    }
    Ok(lines)
}
