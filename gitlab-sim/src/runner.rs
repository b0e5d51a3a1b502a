//! The shell executor: runs a job's script in a clean checkout of its commit, streams the output
//! into the job's log, zips `artifacts:paths`, and can kill the job's whole process group.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

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
    /// Artifact archives to extract before the script: job name and zip.
    downloads: Vec<(String, u64, PathBuf)>,
}

/// Predefined variables of a pipeline, as GitLab sets them before any job exists (what `rules`
/// and `include` see): server, project, commit and ref, source.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pipeline_predefined(
    base: &str,
    project: &crate::state::Project,
    git_ref: &str,
    tag: bool,
    commit: &crate::git::CommitInfo,
    source: &str,
    before_sha: Option<&str>,
) -> BTreeMap<String, String> {
    let project_url = format!("{base}/{}", project.path);
    let mut env = crate::ci::Context::new(source, git_ref, tag).predefined;
    let mut set = |k: &str, v: String| {
        env.insert(k.to_owned(), v);
    };
    set("CI_SERVER_URL", base.to_owned());
    set(
        "CI_SERVER_HOST",
        base.trim_start_matches("http://").trim_start_matches("https://").split(':').next().unwrap_or("").to_owned(),
    );
    set("CI_SERVER_VERSION", VERSION.into());
    set("CI_SERVER_NAME", "GitLab".into());
    set("CI_API_V4_URL", format!("{base}/api/v4"));
    set("CI_PROJECT_ID", project.id.to_string());
    set("CI_PROJECT_NAME", project.name().to_owned());
    set("CI_PROJECT_TITLE", project.name().to_owned());
    set("CI_PROJECT_PATH_SLUG", crate::ci::ref_slug(&project.path));
    set("CI_PROJECT_NAMESPACE", project.namespace().to_owned());
    set("CI_PROJECT_ROOT_NAMESPACE", project.namespace().split('/').next().unwrap_or("").to_owned());
    set("CI_PROJECT_PATH", project.path.clone());
    set("CI_PROJECT_URL", project_url);
    set("CI_PROJECT_VISIBILITY", "private".into());
    set("CI_CONFIG_PATH", ".gitlab-ci.yml".into());
    set("CI_DEFAULT_BRANCH", project.default_branch.clone());
    set("CI_COMMIT_SHA", commit.sha.clone());
    set("CI_COMMIT_SHORT_SHA", commit.sha.chars().take(8).collect());
    set("CI_COMMIT_BEFORE_SHA", before_sha.unwrap_or(&"0".repeat(40)).to_owned());
    set("CI_COMMIT_TITLE", commit.title.clone());
    set("CI_COMMIT_MESSAGE", commit.message.clone());
    set(
        "CI_COMMIT_DESCRIPTION",
        commit.message.split_once('\n').map(|(_, d)| d.trim_start().to_owned()).unwrap_or_default(),
    );
    set("CI_COMMIT_AUTHOR", format!("{} <{}>", commit.author_name, commit.author_email));
    set("CI_COMMIT_TIMESTAMP", commit.committed_at.clone());
    // The sim protects the default branch, as GitLab does by default.
    set("CI_COMMIT_REF_PROTECTED", (git_ref == project.default_branch).to_string());
    set("GITLAB_USER_LOGIN", "root".into());
    set("GITLAB_USER_NAME", "Administrator".into());
    set("GITLAB_USER_EMAIL", "admin@example.com".into());
    set("GITLAB_USER_ID", "1".into());
    env
}

/// `CI_JOB_NAME_SLUG`: the name lowercased, anything but `0-9a-z` as `-`, 63 bytes.
fn job_slug(name: &str) -> String {
    crate::ci::ref_slug(name)
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
    job.artifact = outcome.artifact;
    job.dotenv = outcome.dotenv;
    job.reports = outcome.reports;
    job.exit_code = outcome.exit_code;
    let status = if job.cancel_requested {
        Status::Canceled
    } else {
        match outcome.failure {
            None => Status::Success,
            Some(reason) => {
                job.failure_reason = Some(reason.to_owned());
                Status::Failed
            }
        }
    };
    if let Some(re) = job.spec.coverage.as_deref().and_then(|c| crate::ci::expr::compile_pattern(c).ok()) {
        // GitLab takes the last match in the log, then the first number in it.
        let text = String::from_utf8_lossy(&job.trace).into_owned();
        let number = regex::Regex::new(r"\d+(?:\.\d+)?").expect("a valid regex");
        job.coverage =
            re.find_iter(&text).last().and_then(|m| number.find(m.as_str())).and_then(|n| n.as_str().parse().ok());
    }
    let exit_allowed =
        status == Status::Failed && job.exit_code.is_some_and(|c| job.spec.allow_failure_exit_codes.contains(&c));
    let footer = match &status {
        Status::Success => "Job succeeded\n".to_owned(),
        Status::Canceled => "ERROR: Job failed: canceled\n".to_owned(),
        _ => {
            let reason = job.failure_reason.as_deref().unwrap_or("script_failure");
            let what = match (reason, job.exit_code) {
                ("script_failure", Some(code)) => format!("exit code {code}"),
                ("job_execution_timeout", _) => "execution took longer than the job's timeout".to_owned(),
                (other, _) => other.to_owned(),
            };
            if exit_allowed {
                format!("WARNING: Job failed: {what} (allowed to fail by allow_failure:exit_codes)\n")
            } else {
                format!("ERROR: Job failed: {what}\n")
            }
        }
    };
    job.trace.extend_from_slice(footer.as_bytes());
    let retry = status == Status::Failed
        && (job.retries_count as u32) < job.spec.retry.max
        && job.spec.retry.applies(job.failure_reason.as_deref().unwrap_or("script_failure"), job.exit_code);
    let (pipeline_id, project_id) = (job.pipeline_id, job.project_id);
    let mut fx = state.set_job_status(&shared.render, job_id, status);
    if retry {
        // `retry:` makes a new attempt with a new id, as a manual retry does.
        let new_id = state.clone_job(&shared.render, job_id, &mut fx);
        fx.merge(state.set_job_status(&shared.render, new_id, Status::Pending));
        fx.start.push(new_id);
    }
    fx.merge(state.advance(&shared.render, pipeline_id));
    fx.merge(state.wake_waiting(&shared.render, project_id));
    drop(state);
    shared.apply(fx);
}

fn plan_for(shared: &Shared, state: &crate::state::State, job_id: u64) -> Option<Plan> {
    let job = state.jobs.get(&job_id)?;
    let pipeline = state.pipelines.get(&job.pipeline_id)?;
    let project = state.projects.iter().find(|p| p.id == job.project_id)?;
    let base = &shared.render.base;
    let project_url = format!("{base}/{}", project.path);
    let mut env =
        pipeline_predefined(base, project, &pipeline.git_ref, pipeline.tag, &pipeline.commit, &pipeline.source, None);
    let mut set = |k: &str, v: String| {
        env.insert(k.to_owned(), v);
    };
    set("CI_PIPELINE_ID", pipeline.id.to_string());
    set("CI_PIPELINE_IID", pipeline.iid.to_string());
    set("CI_PIPELINE_URL", format!("{project_url}/-/pipelines/{}", pipeline.id));
    set("CI_PIPELINE_CREATED_AT", crate::render::iso_text(pipeline.created_at));
    if let Some(name) = &pipeline.name {
        set("CI_PIPELINE_NAME", name.clone());
    }
    set("CI_JOB_ID", job.id.to_string());
    set("CI_JOB_NAME", job.spec.name.clone());
    set("CI_JOB_NAME_SLUG", job_slug(&job.spec.name));
    set("CI_JOB_STAGE", job.spec.stage.clone());
    set("CI_JOB_URL", format!("{project_url}/-/jobs/{}", job.id));
    set("CI_JOB_STARTED_AT", crate::render::iso_text(chrono::Utc::now()));
    set("CI_JOB_TIMEOUT", job.spec.timeout.map(|t| t.as_secs()).unwrap_or(3600).to_string());
    set("CI_RUNNER_EXECUTABLE_ARCH", format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH));
    set("CI_RUNNER_TAGS", serde_json::to_string(&job.spec.tags).unwrap_or_default());
    if job.spec.when == crate::ci::When::Manual {
        set("CI_JOB_MANUAL", "true".into());
    }
    if let Some((index, total)) = job.spec.node {
        set("CI_NODE_INDEX", index.to_string());
        set("CI_NODE_TOTAL", total.to_string());
    } else {
        set("CI_NODE_TOTAL", "1".into());
    }
    if let Some(env_name) = &job.spec.environment {
        set("CI_ENVIRONMENT_NAME", env_name.clone());
        set("CI_ENVIRONMENT_SLUG", crate::ci::ref_slug(env_name));
    }
    if pipeline.parent.is_some() {
        set("CI_PIPELINE_TRIGGERED", "true".into());
    }
    // The jobs whose artifacts (and dotenv variables) this job gets: `dependencies`, else its
    // `needs` with `artifacts` (default true), else every job of an earlier stage.
    let latest = state.latest_jobs(pipeline.id);
    let stages = &pipeline.config.stages;
    let my_stage = stages.iter().position(|s| *s == job.spec.stage);
    let sources: Vec<&crate::state::Job> = latest
        .iter()
        .copied()
        .filter(|d| d.id != job.id && !d.spec.is_bridge())
        .filter(|d| match (&job.spec.dependencies, &job.spec.needs) {
            (Some(deps), _) => deps.contains(&d.spec.name),
            (None, Some(_)) => job.spec.need_details.iter().any(|n| n.job == d.spec.name && n.artifacts),
            (None, None) => stages.iter().position(|s| *s == d.spec.stage) < my_stage,
        })
        .collect();
    // Precedence, lowest first: predefined, top-level YAML (as inherited), job YAML (with
    // matrix values and rules:variables), dotenv reports of the jobs it depends on, pipeline
    // (API, trigger) variables, play variables. Values are expanded against each other.
    let mut list: Vec<(String, String, bool)> = env.into_iter().map(|(k, v)| (k, v, false)).collect();
    for (k, v) in &pipeline.config.variables {
        if job.spec.inherit_variables.allows(k) {
            list.push((k.clone(), v.clone(), false));
        }
    }
    for (k, v) in &job.spec.variables {
        list.push((k.clone(), v.clone(), false));
    }
    for d in &sources {
        for (k, v) in &d.dotenv {
            list.push((k.clone(), v.clone(), true));
        }
    }
    let mut file_vars = Vec::new();
    for var in pipeline.variables.iter().chain(job.play_variables.iter()) {
        if var.variable_type == Some(VariableType::File) {
            list.retain(|(k, _, _)| *k != var.key);
            file_vars.push((var.key.clone(), var.value.clone()));
        } else {
            list.push((var.key.clone(), var.value.clone(), false));
        }
    }
    let mut dedup: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for (k, v, raw) in list {
        dedup.insert(k, (v, raw));
    }
    let env = crate::ci::expr::expand_all(&dedup.into_iter().map(|(k, (v, r))| (k, v, r)).collect::<Vec<_>>());
    let downloads = sources
        .iter()
        .filter_map(|d| d.artifact.as_ref().map(|(path, _)| (d.spec.name.clone(), d.id, path.clone())))
        .collect();
    Some(Plan {
        repo: project.repo.clone(),
        sha: pipeline.sha.clone(),
        spec: job.spec.clone(),
        env,
        file_vars,
        downloads,
    })
}

/// What a run produced.
#[derive(Default)]
struct Outcome {
    /// `None`: success; else GitLab's failure reason.
    failure: Option<&'static str>,
    exit_code: Option<i32>,
    artifact: Option<(PathBuf, u64)>,
    dotenv: Vec<(String, String)>,
    reports: Vec<(String, PathBuf, u64)>,
}

impl Outcome {
    fn failed(reason: &'static str) -> Self {
        Self { failure: Some(reason), ..Self::default() }
    }
}

fn log(shared: &Shared, job_id: u64, bytes: &[u8]) {
    if let Some(job) = shared.lock().jobs.get_mut(&job_id) {
        job.trace.extend_from_slice(bytes);
    }
}

/// Runs one script file in its own process group, streaming into the log; the exit status, or
/// `None` after `timeout`.
async fn run_script(
    shared: &Arc<Shared>,
    job_id: u64,
    script_path: &Path,
    dir: &Path,
    env: &BTreeMap<String, String>,
    timeout: Duration,
    track: bool,
) -> Result<Option<std::process::ExitStatus>, String> {
    let mut command = Command::new(bash());
    command
        .arg("--noprofile")
        .arg("--norc")
        .arg(script_path)
        .current_dir(dir)
        .env_clear()
        .envs(inherited_env())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group, so cancel can end the script and everything it started.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| format!("cannot start bash: {e}"))?;
    let pgid = child.id();
    if track {
        let mut state = shared.lock();
        if let Some(job) = state.jobs.get_mut(&job_id) {
            job.pgid = pgid;
            if job.cancel_requested {
                drop(state);
                crate::kill_group(pgid);
            }
        }
    }
    let stdout = child.stdout.take();
    let pump = async {
        if let Some(mut stdout) = stdout {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdout.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => log(shared, job_id, &buf[..n]),
                }
            }
        }
        child.wait().await
    };
    match tokio::time::timeout(timeout, pump).await {
        Ok(Ok(status)) => Ok(Some(status)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            crate::kill_group(pgid);
            Ok(None)
        }
    }
}

async fn execute(shared: &Arc<Shared>, job_id: u64, plan: &Plan, work: &Path) -> Outcome {
    let source = work.join("src");
    let mut header = format!("Running with gitlab-sim {VERSION}\nPreparing the \"shell\" executor\n",);
    for note in &plan.spec.notes {
        header.push_str(&format!("Note: {note}\n"));
    }
    header.push_str(&format!(
        "Getting source from Git repository\nChecking out {} as detached HEAD\n",
        &plan.sha[..8.min(plan.sha.len())]
    ));
    log(shared, job_id, header.as_bytes());
    if let Err(e) = tokio::fs::create_dir_all(work).await {
        log(shared, job_id, format!("ERROR: cannot create the build directory: {e}\n").as_bytes());
        return Outcome::failed("runner_system_failure");
    }
    if let Err(e) = plan.repo.checkout(&plan.sha, &source).await {
        log(shared, job_id, format!("ERROR: {e}\n").as_bytes());
        return Outcome::failed("runner_system_failure");
    }
    for (name, id, zip) in &plan.downloads {
        log(shared, job_id, format!("Downloading artifacts for {name} ({id})...\n").as_bytes());
        let (zip, dest) = (zip.clone(), source.clone());
        let done = tokio::task::spawn_blocking(move || unzip(&zip, &dest)).await;
        if !matches!(done, Ok(Ok(()))) {
            log(shared, job_id, format!("ERROR: Downloading artifacts from {name} failed\n").as_bytes());
            return Outcome::failed("unmet_prerequisites");
        }
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
    let script_path = work.join("script.sh");
    if let Err(e) = std::fs::write(&script_path, script_text(&plan.spec.before_script, &plan.spec.script)) {
        log(shared, job_id, format!("ERROR: cannot write the job script: {e}\n").as_bytes());
        return Outcome::failed("runner_system_failure");
    }
    log(shared, job_id, b"Executing \"step_script\" stage of the job script\n");
    // GitLab's default job timeout is one hour.
    let timeout = plan.spec.timeout.unwrap_or(Duration::from_secs(3600));
    let mut outcome = Outcome::default();
    match run_script(shared, job_id, &script_path, &source, &env, timeout, true).await {
        Ok(Some(s)) if s.success() => {}
        Ok(Some(s)) => {
            outcome.exit_code = s.code();
            outcome.failure = Some("script_failure");
        }
        Ok(None) => {
            log(
                shared,
                job_id,
                format!("ERROR: Job failed: execution took longer than {}s\n", timeout.as_secs()).as_bytes(),
            );
            outcome.failure = Some("job_execution_timeout");
        }
        Err(e) => {
            log(shared, job_id, format!("ERROR: {e}\n").as_bytes());
            return Outcome::failed("runner_system_failure");
        }
    }
    let canceled = shared.lock().jobs.get(&job_id).is_some_and(|j| j.cancel_requested);
    if !plan.spec.after_script.is_empty() && !canceled {
        // after_script: its own shell, whatever the script's result; its failure is only a warning.
        log(shared, job_id, b"Running after_script\n");
        let after_path = work.join("after_script.sh");
        let mut after_env = env.clone();
        after_env.insert("CI_JOB_STATUS".into(), if outcome.failure.is_none() { "success" } else { "failed" }.into());
        if std::fs::write(&after_path, script_text(&[], &plan.spec.after_script)).is_ok() {
            match run_script(shared, job_id, &after_path, &source, &after_env, Duration::from_secs(300), false).await {
                Ok(Some(s)) if s.success() => {}
                Ok(Some(s)) => log(
                    shared,
                    job_id,
                    format!(
                        "WARNING: after_script failed, but job will continue unaffected: exit code {}\n",
                        s.code().unwrap_or(-1)
                    )
                    .as_bytes(),
                ),
                _ => log(shared, job_id, b"WARNING: after_script failed, but job will continue unaffected\n"),
            }
        }
    }
    if canceled {
        return outcome;
    }
    let succeeded = outcome.failure.is_none();
    let spec = &plan.spec;
    let wanted = match spec.artifacts.when.as_str() {
        "always" => true,
        "on_failure" => !succeeded,
        _ => succeeded,
    };
    // Reports are uploaded whatever the result, as the runner does for `artifacts:reports`.
    for (kind, paths) in &spec.artifacts.reports {
        for pattern in paths {
            let full = source.join(pattern);
            let found: Vec<PathBuf> =
                glob::glob(&full.to_string_lossy()).map(|g| g.filter_map(Result::ok).collect()).unwrap_or_default();
            for f in found.into_iter().filter(|f| f.is_file()) {
                let Ok(bytes) = std::fs::read(&f) else { continue };
                if kind == "dotenv" {
                    outcome.dotenv.extend(parse_dotenv(&String::from_utf8_lossy(&bytes)));
                }
                let dir = shared.work_dir.join("artifacts").join(format!("{job_id}-reports")).join(kind);
                let name = f.file_name().map(|n| n.to_owned()).unwrap_or_default();
                if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(dir.join(&name), &bytes).is_ok() {
                    outcome.reports.push((kind.clone(), dir.join(name), bytes.len() as u64));
                }
            }
        }
    }
    if !outcome.dotenv.is_empty() {
        log(shared, job_id, format!("dotenv report: {} variables\n", outcome.dotenv.len()).as_bytes());
    }
    if !wanted || (!spec.artifacts.untracked && spec.artifact_paths.is_empty()) {
        return outcome;
    }
    log(shared, job_id, b"Uploading artifacts...\n");
    let dest = shared.work_dir.join("artifacts").join(format!("{job_id}.zip"));
    let paths = spec.artifact_paths.clone();
    let exclude = spec.artifacts.exclude.clone();
    let untracked = spec.artifacts.untracked;
    let src = source.clone();
    let zipped = tokio::task::spawn_blocking(move || {
        zip_paths(&src, &paths, &exclude, untracked, &dest).map(|(n, size)| (dest, n, size))
    })
    .await;
    match zipped {
        Ok(Ok((dest, files, size))) => {
            log(shared, job_id, format!("{files} files, {size} bytes: uploaded\n").as_bytes());
            outcome.artifact = Some((dest, size));
        }
        Ok(Err(e)) => {
            log(shared, job_id, format!("ERROR: Uploading artifacts failed: {e}\n").as_bytes());
            if succeeded {
                outcome.failure = Some("archived_failure");
            }
        }
        Err(_) => outcome.failure = Some("runner_system_failure"),
    }
    outcome
}

/// A dotenv report: `KEY=VALUE` lines (GitLab: no `export`, no multi-line values; quotes kept
/// as written).
fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect()
}

fn unzip(zip: &Path, dest: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(zip)?;
    let mut archive = zip::ZipArchive::new(file).map_err(std::io::Error::other)?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(std::io::Error::other)?;
        let Some(name) = entry.enclosed_name() else { continue };
        let out = dest.join(name);
        if entry.is_dir() {
            std::fs::create_dir_all(&out)?;
            continue;
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = std::fs::File::create(&out)?;
        std::io::copy(&mut entry, &mut f)?;
        #[cfg(unix)]
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode & 0o777))?;
        }
    }
    Ok(())
}

/// `bash` by its full path, found once on the simulator's `PATH`. Given a bare name and a `PATH`
/// of the command's own (the script's environment), std cannot start it with `posix_spawn` and
/// forks the whole process instead, on a runtime worker: the simulator's host may be a test
/// harness with hundreds of tasks and a large heap, and every task on that worker waited while
/// its page tables were copied.
fn bash() -> &'static Path {
    static BASH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BASH.get_or_init(|| {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("bash"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("bash"))
    })
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

/// Zips `paths` (files, directories or globs, relative to `root`), minus `exclude` globs, plus
/// untracked files when asked, into `dest`. Returns the number of files and the archive's size. A
/// path that matches nothing fails, as GitLab warns and uploads nothing for it; here it is an
/// error so a broken build is noticed.
fn zip_paths(
    root: &Path,
    paths: &[String],
    exclude: &[String],
    untracked: bool,
    dest: &Path,
) -> std::io::Result<(usize, u64)> {
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
    if untracked {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["ls-files", "--others", "--exclude-standard"])
            .output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            files.push(root.join(line));
        }
    }
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let excluded: Vec<glob::Pattern> = exclude.iter().filter_map(|e| glob::Pattern::new(e).ok()).collect();
    files.retain(|f| {
        let rel = f.strip_prefix(root).map(|r| r.to_string_lossy().into_owned()).unwrap_or_default();
        !excluded.iter().any(|p| p.matches_with(&rel, opts))
    });
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

#[cfg(test)]
mod tests {
    /// Scripts start by a full path, so std can `posix_spawn` them instead of forking the host.
    #[test]
    fn bash_is_started_by_its_full_path() {
        let bash = super::bash();
        assert!(bash.is_absolute() && bash.is_file(), "{}", bash.display());
    }
}
