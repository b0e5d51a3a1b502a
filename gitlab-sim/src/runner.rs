//! The shell executor: runs a job's script in a clean checkout of its commit, streams the output
//! into the job's log, zips `artifacts:paths`, and can kill the job's whole process group.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use cloudci_gitlab::types::{Status, VariableType};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::Shared;
use crate::render::VERSION;

/// Everything a job run needs, copied out of the state so the lock is not held while it runs.
struct Plan {
    repo: crate::git::Repo,
    sha: String,
    spec: Arc<crate::ci::JobSpec>,
    env: BTreeMap<String, String>,
    file_vars: Vec<(String, String)>,
}

/// Runs job `job_id` when a runner slot is free.
pub(crate) async fn run_job(shared: Arc<Shared>, job_id: u64) {
    let Ok(_slot) = shared.runner_slots.clone().acquire_owned().await else { return };
    let plan = {
        let mut state = shared.lock();
        let Some(job) = state.jobs.get(&job_id) else { return };
        if job.status != Status::Pending {
            return; // canceled while waiting for a slot
        }
        let plan = plan_for(&shared, &state, job_id);
        let mut fx = state.set_job_status(&shared.render, job_id, Status::Running);
        let pipeline_id = state.jobs[&job_id].pipeline_id;
        fx.merge(state.refresh_pipeline_status(&shared.render, pipeline_id));
        drop(state);
        shared.apply(fx);
        plan
    };
    let Some(plan) = plan else { return };
    let work = shared.work_dir.join("builds").join(job_id.to_string());
    let outcome = execute(&shared, job_id, &plan, &work).await;
    let _ = tokio::fs::remove_dir_all(&work).await;

    let mut state = shared.lock();
    let Some(job) = state.jobs.get_mut(&job_id) else { return };
    job.pgid = None;
    let status = if job.cancel_requested {
        Status::Canceled
    } else {
        match outcome {
            Outcome::Success { artifact } => {
                job.artifact = artifact;
                Status::Success
            }
            Outcome::Failed { reason } => {
                job.failure_reason = Some(reason.to_owned());
                Status::Failed
            }
        }
    };
    let footer = match &status {
        Status::Success => "Job succeeded\n".to_owned(),
        Status::Canceled => "ERROR: Job failed: canceled\n".to_owned(),
        _ => format!("ERROR: Job failed: {}\n", job.failure_reason.as_deref().unwrap_or("script_failure")),
    };
    job.trace.extend_from_slice(footer.as_bytes());
    let pipeline_id = job.pipeline_id;
    let mut fx = state.set_job_status(&shared.render, job_id, status);
    fx.merge(state.advance(&shared.render, pipeline_id));
    drop(state);
    shared.apply(fx);
}

fn plan_for(shared: &Shared, state: &crate::state::State, job_id: u64) -> Option<Plan> {
    let job = state.jobs.get(&job_id)?;
    let pipeline = state.pipelines.get(&job.pipeline_id)?;
    let project = state.projects.iter().find(|p| p.id == job.project_id)?;
    let base = &shared.render.base;
    let project_url = format!("{base}/{}", project.path);
    let slug: String = pipeline
        .git_ref
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect::<String>()
        .trim_matches('-')
        .to_owned();
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_owned(), v);
    };
    set("CI", "true".into());
    set("GITLAB_CI", "true".into());
    set("CI_SERVER", "yes".into());
    set("CI_SERVER_URL", base.clone());
    set("CI_SERVER_VERSION", VERSION.into());
    set("CI_API_V4_URL", format!("{base}/api/v4"));
    set("CI_PROJECT_ID", project.id.to_string());
    set("CI_PROJECT_NAME", project.name().to_owned());
    set("CI_PROJECT_NAMESPACE", project.namespace().to_owned());
    set("CI_PROJECT_PATH", project.path.clone());
    set("CI_PROJECT_URL", project_url.clone());
    set("CI_DEFAULT_BRANCH", project.default_branch.clone());
    set("CI_PIPELINE_ID", pipeline.id.to_string());
    set("CI_PIPELINE_IID", pipeline.iid.to_string());
    set("CI_PIPELINE_SOURCE", pipeline.source.clone());
    set("CI_PIPELINE_URL", format!("{project_url}/-/pipelines/{}", pipeline.id));
    set("CI_COMMIT_SHA", pipeline.sha.clone());
    set("CI_COMMIT_SHORT_SHA", pipeline.sha.chars().take(8).collect());
    set("CI_COMMIT_REF_NAME", pipeline.git_ref.clone());
    set("CI_COMMIT_REF_SLUG", slug);
    set("CI_COMMIT_TITLE", pipeline.commit.title.clone());
    set("CI_COMMIT_MESSAGE", pipeline.commit.message.clone());
    set(if pipeline.tag { "CI_COMMIT_TAG" } else { "CI_COMMIT_BRANCH" }, pipeline.git_ref.clone());
    set("CI_JOB_ID", job.id.to_string());
    set("CI_JOB_NAME", job.spec.name.clone());
    set("CI_JOB_STAGE", job.spec.stage.clone());
    set("CI_JOB_URL", format!("{project_url}/-/jobs/{}", job.id));
    set("GITLAB_USER_LOGIN", "root".into());
    set("GITLAB_USER_NAME", "Administrator".into());
    // Precedence, lowest first: predefined, top-level YAML, job YAML, pipeline (API), play variables.
    for (k, v) in pipeline.config.variables.iter().chain(job.spec.variables.iter()) {
        env.insert(k.clone(), v.clone());
    }
    let mut file_vars = Vec::new();
    for var in pipeline.variables.iter().chain(job.play_variables.iter()) {
        if var.variable_type == Some(VariableType::File) {
            env.remove(&var.key);
            file_vars.push((var.key.clone(), var.value.clone()));
        } else {
            env.insert(var.key.clone(), var.value.clone());
        }
    }
    Some(Plan { repo: project.repo.clone(), sha: pipeline.sha.clone(), spec: job.spec.clone(), env, file_vars })
}

enum Outcome {
    Success { artifact: Option<(PathBuf, u64)> },
    Failed { reason: &'static str },
}

fn log(shared: &Shared, job_id: u64, bytes: &[u8]) {
    if let Some(job) = shared.lock().jobs.get_mut(&job_id) {
        job.trace.extend_from_slice(bytes);
    }
}

async fn execute(shared: &Arc<Shared>, job_id: u64, plan: &Plan, work: &Path) -> Outcome {
    let source = work.join("src");
    log(
        shared,
        job_id,
        format!(
            "Running with gitlab-sim {VERSION}\nPreparing the \"shell\" executor\nGetting source from Git repository\nChecking out {} as detached HEAD\n",
            &plan.sha[..8.min(plan.sha.len())]
        )
        .as_bytes(),
    );
    if let Err(e) = tokio::fs::create_dir_all(work).await {
        log(shared, job_id, format!("ERROR: cannot create the build directory: {e}\n").as_bytes());
        return Outcome::Failed { reason: "runner_system_failure" };
    }
    if let Err(e) = plan.repo.checkout(&plan.sha, &source).await {
        log(shared, job_id, format!("ERROR: {e}\n").as_bytes());
        return Outcome::Failed { reason: "runner_system_failure" };
    }
    let mut env = plan.env.clone();
    env.insert("CI_PROJECT_DIR".into(), source.display().to_string());
    env.insert("CI_BUILDS_DIR".into(), work.display().to_string());
    for (i, (key, value)) in plan.file_vars.iter().enumerate() {
        let path = work.join(format!("var-{i}-{key}"));
        if std::fs::write(&path, value).is_ok() {
            env.insert(key.clone(), path.display().to_string());
        }
    }
    let script = script_text(&plan.spec.before_script, &plan.spec.script);
    let script_path = work.join("script.sh");
    if let Err(e) = std::fs::write(&script_path, script) {
        log(shared, job_id, format!("ERROR: cannot write the job script: {e}\n").as_bytes());
        return Outcome::Failed { reason: "runner_system_failure" };
    }
    log(shared, job_id, b"Executing \"step_script\" stage of the job script\n");
    let mut command = Command::new("bash");
    command
        .arg("--noprofile")
        .arg("--norc")
        .arg(&script_path)
        .current_dir(&source)
        .env_clear()
        .envs(inherited_env())
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group, so cancel can end the script and everything it started.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            log(shared, job_id, format!("ERROR: cannot start bash: {e}\n").as_bytes());
            return Outcome::Failed { reason: "runner_system_failure" };
        }
    };
    {
        let mut state = shared.lock();
        if let Some(job) = state.jobs.get_mut(&job_id) {
            job.pgid = child.id();
            if job.cancel_requested {
                drop(state);
                crate::kill_group(child.id());
            }
        }
    }
    if let Some(mut stdout) = child.stdout.take() {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => log(shared, job_id, &buf[..n]),
            }
        }
    }
    let status = child.wait().await;
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            let code = s.code().map(|c| c.to_string()).unwrap_or_else(|| "killed".into());
            log(shared, job_id, format!("exit code {code}\n").as_bytes());
            return Outcome::Failed { reason: "script_failure" };
        }
        Err(_) => return Outcome::Failed { reason: "runner_system_failure" },
    }
    if plan.spec.artifact_paths.is_empty() {
        return Outcome::Success { artifact: None };
    }
    log(shared, job_id, b"Uploading artifacts...\n");
    let dest = shared.work_dir.join("artifacts").join(format!("{job_id}.zip"));
    let paths = plan.spec.artifact_paths.clone();
    let src = source.clone();
    let zipped =
        tokio::task::spawn_blocking(move || zip_paths(&src, &paths, &dest).map(|(n, size)| (dest, n, size))).await;
    match zipped {
        Ok(Ok((dest, files, size))) => {
            log(shared, job_id, format!("{files} files, {size} bytes: uploaded\n").as_bytes());
            Outcome::Success { artifact: Some((dest, size)) }
        }
        Ok(Err(e)) => {
            log(shared, job_id, format!("ERROR: Uploading artifacts failed: {e}\n").as_bytes());
            Outcome::Failed { reason: "archived_failure" }
        }
        Err(_) => Outcome::Failed { reason: "runner_system_failure" },
    }
}

/// What a job sees of the sim's own environment: enough to find tools.
fn inherited_env() -> Vec<(String, String)> {
    ["PATH", "HOME", "LANG", "TMPDIR", "USER"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect()
}

/// The script as the runner's shell executor writes it: stop at the first failing command, and
/// print each command before running it.
fn script_text(before: &[String], script: &[String]) -> String {
    let mut text = String::from("set -eo pipefail\nexec 2>&1\n");
    for line in before.iter().chain(script) {
        // Like the runner: a multi-line entry is shown by its first line only.
        let trimmed = line.trim_end();
        let shown = match trimmed.split_once('\n') {
            Some((first, _)) => format!("{first} # collapsed multi-line command"),
            None => trimmed.to_owned(),
        };
        let shown = shown.replace('\'', r"'\''");
        text.push_str(&format!("printf '%s\\n' '$ {shown}'\n{line}\n"));
    }
    text
}

/// Zips `paths` (files, directories or globs, relative to `root`) into `dest`. Returns the number
/// of files and the archive's size. A path that matches nothing fails, as GitLab warns and uploads
/// nothing for it; here it is an error so a broken build is noticed.
fn zip_paths(root: &Path, paths: &[String], dest: &Path) -> std::io::Result<(usize, u64)> {
    use std::io::{Error, ErrorKind};
    let mut files = Vec::new();
    for pattern in paths {
        let full = root.join(pattern.trim_end_matches('/'));
        let matches: Vec<PathBuf> = glob::glob(&full.to_string_lossy())
            .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?
            .filter_map(Result::ok)
            .collect();
        if matches.is_empty() {
            return Err(Error::new(ErrorKind::NotFound, format!("{pattern}: no matching files")));
        }
        for m in matches {
            collect_files(&m, &mut files)?;
        }
    }
    files.sort();
    files.dedup();
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(dest)?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for path in &files {
        let name = path.strip_prefix(root).map_err(|e| Error::other(e.to_string()))?.to_string_lossy().into_owned();
        // Keep the mode, as the runner's archiver does: a built binary stays executable.
        #[cfg(unix)]
        let options = {
            use std::os::unix::fs::PermissionsExt;
            options.unix_permissions(std::fs::metadata(path)?.permissions().mode() & 0o777)
        };
        zip.start_file(name, options).map_err(Error::other)?;
        zip.write_all(&std::fs::read(path)?)?;
    }
    zip.finish().map_err(Error::other)?;
    Ok((files.len(), std::fs::metadata(dest)?.len()))
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            collect_files(&entry?.path(), out)?;
        }
    } else if path.is_file() {
        out.push(path.to_owned());
    }
    Ok(())
}
