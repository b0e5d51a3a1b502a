//! `cloudci gitlab ...`: the GitLab client from the command line, like `glab ci`.

// Doc comments here are also the `--help` text, where a bare URL reads best.
#![allow(rustdoc::bare_urls)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use cloudci_gitlab::types::{CreateMergeRequest, CreatePipeline, PipelineVariable, Status};
use cloudci_gitlab::{Gitlab, JobFilter, JobId, MergeRequestFilter, PipelineFilter, PipelineId, ProjectRef};
use futures_util::{StreamExt, TryStreamExt};
use secrecy::SecretString;

use super::Failure;
use super::vars::parse_var;
use crate::config::{Config, ConfigError};
use crate::output::{Table, print_json, stderr_is_terminal};

/// The server when neither the environment nor a configuration names one.
const DEFAULT_SERVER: &str = "https://gitlab.com";

/// `cloudci gitlab`: the server and token are chosen by `connection`; the user-facing text is
/// on `Command::Gitlab` in `cli/mod.rs` (clap takes a subcommand's help from there).
#[derive(Debug, Args)]
pub struct GitlabCommand {
    /// GitLab server, e.g. https://gitlab.example.com (over the configuration's `[gitlab] url`).
    #[arg(long, global = true, env = "GITLAB_HOST", value_name = "URL")]
    gitlab_url: Option<String>,

    #[command(subcommand)]
    action: GitlabAction,
}

/// `--json`, on the subcommands that print GitLab's objects.
#[derive(Debug, Clone, Copy, Args)]
struct Output {
    /// Print GitLab's objects as JSON (a list as one JSON array).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum GitlabAction {
    /// Show a pipeline, or start one (`pipeline create`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Pipeline {
        #[command(subcommand)]
        create: Option<PipelineCreate>,
        /// Project id or path (group/name).
        #[arg(required = true)]
        project: Option<String>,
        /// Pipeline id.
        #[arg(required = true)]
        pipeline_id: Option<u64>,
        #[command(flatten)]
        out: Output,
    },
    /// List a project's pipelines, newest first.
    Pipelines {
        /// Project id or path.
        project: String,
        /// Only this branch or tag.
        #[arg(long = "ref", value_name = "REF")]
        git_ref: Option<String>,
        /// Only this status (created, pending, running, success, failed, canceled, ...).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        out: Output,
    },
    /// List a pipeline's jobs.
    Jobs {
        /// Project id or path.
        project: String,
        /// Pipeline id.
        pipeline_id: u64,
        /// Include jobs that were retried.
        #[arg(long)]
        include_retried: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Print a job's log; with --follow, keep printing until the job ends.
    Trace {
        /// Project id or path.
        project: String,
        /// Job id.
        job_id: u64,
        /// Keep reading new output until the job finishes.
        #[arg(long, short)]
        follow: bool,
        /// The shortest wait between reads when following, in seconds: reads come this often
        /// while the log grows and back off to 10 s while it is quiet (GitLab sends the whole
        /// log each time, gzipped).
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
    },
    /// Download a job's artifact archive (a zip).
    Artifacts {
        /// Project id or path.
        project: String,
        /// Job id.
        job_id: u64,
        /// Where to write the archive.
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
        /// Print `{"path": ..., "size": ...}` when done.
        #[arg(long)]
        json: bool,
    },
    /// Merge requests: list them, or open one.
    Mr {
        #[command(subcommand)]
        action: MrAction,
    },
}

#[derive(Debug, Subcommand)]
enum MrAction {
    /// List a project's merge requests, newest first.
    List {
        /// Project id or path.
        project: String,
        /// Only in this state.
        #[arg(long, default_value = "opened", value_parser = ["opened", "closed", "merged", "locked", "all"])]
        state: String,
        /// Only from this branch.
        #[arg(long, value_name = "BRANCH")]
        source_branch: Option<String>,
        /// Only into this branch.
        #[arg(long, value_name = "BRANCH")]
        target_branch: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        out: Output,
    },
    /// Open a merge request.
    Create {
        /// Project id or path.
        project: String,
        /// The branch to merge.
        #[arg(long, short, value_name = "BRANCH")]
        source_branch: String,
        /// The branch to merge into.
        #[arg(long, short, value_name = "BRANCH")]
        target_branch: String,
        /// Its title.
        #[arg(long)]
        title: String,
        /// Its description (Markdown).
        #[arg(long, short)]
        description: Option<String>,
        /// A label; repeatable.
        #[arg(long = "label", value_name = "LABEL")]
        labels: Vec<String>,
        /// Delete the source branch when it is merged.
        #[arg(long)]
        remove_source_branch: bool,
        /// Squash the commits when it is merged.
        #[arg(long)]
        squash: bool,
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Debug, Subcommand)]
enum PipelineCreate {
    /// Start a pipeline.
    Create {
        /// Project id or path.
        project: String,
        /// Branch, tag or commit to build.
        #[arg(long = "ref", value_name = "REF")]
        git_ref: String,
        /// A CI variable for every job, KEY=VALUE; repeatable.
        #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// A file-type CI variable (the job sees a path to a file holding VALUE); repeatable.
        #[arg(long = "file-var", value_name = "KEY=VALUE", value_parser = parse_var)]
        file_vars: Vec<(String, String)>,
        #[command(flatten)]
        out: Output,
    },
}

/// `GITLAB_HOST` may be a bare host name, as glab accepts.
fn server_url(raw: Option<&str>) -> String {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => DEFAULT_SERVER.to_owned(),
        Some(s) if s.contains("://") => s.to_owned(),
        Some(host) => format!("https://{host}"),
    }
}

/// Whether two server URLs name the same GitLab (scheme, host, port and relative root).
fn same_server(a: &str, b: &str) -> bool {
    let key = |raw: &str| match url::Url::parse(raw.trim()) {
        Ok(u) => format!(
            "{}://{}:{}{}",
            u.scheme(),
            u.host_str().unwrap_or_default().to_ascii_lowercase(),
            u.port_or_known_default().unwrap_or_default(),
            u.path().trim_end_matches('/').trim_end_matches("/api/v4")
        ),
        Err(_) => raw.trim().trim_end_matches('/').to_owned(),
    };
    key(a) == key(b)
}

/// Where `cloudci gitlab` talks to, with which token, and why.
#[derive(Debug)]
struct Connection {
    url: String,
    token: Option<SecretString>,
    /// Nothing named a server: gitlab.com by default.
    defaulted: bool,
}

/// Picks the server and token (see [`GitlabCommand`]'s help): an explicit server
/// (`--gitlab-url`/`GITLAB_HOST`) goes with `GITLAB_TOKEN` (`env_token`), the configuration's
/// server with the configuration's token.
fn connection(
    explicit: Option<&str>,
    config: Option<&Config>,
    env_token: Option<SecretString>,
) -> Result<Connection, Failure> {
    let explicit = explicit.map(str::trim).filter(|s| !s.is_empty());
    let config_token = |c: &Config| match c.gitlab_token() {
        Ok(t) => Ok(Some(t)),
        // A token file that is configured but unreadable is an error, not an anonymous call.
        Err(e) if c.gitlab.token_file.is_some() => Err(Failure::auth(e.to_string())),
        Err(_) => Ok(None),
    };
    Ok(match (explicit, config) {
        (Some(url), Some(c)) => {
            let url = server_url(Some(url));
            let token =
                if same_server(&url, &server_url(c.gitlab.url.as_deref())) { config_token(c)? } else { env_token };
            Connection { url, token, defaulted: false }
        }
        (Some(url), None) => Connection { url: server_url(Some(url)), token: env_token, defaulted: false },
        (None, Some(c)) => {
            Connection { url: server_url(c.gitlab.url.as_deref()), token: config_token(c)?, defaulted: false }
        }
        (None, None) => Connection { url: DEFAULT_SERVER.to_owned(), token: env_token, defaulted: true },
    })
}

/// The configuration at `--config` (which must exist), or the first one found by the default
/// lookup; `None` when there is none. A configuration that exists but is broken is an error:
/// falling back to gitlab.com would send its token to the wrong server.
fn optional_config(explicit: Option<&Path>) -> Result<Option<Config>, Failure> {
    match crate::config::load(explicit) {
        Ok(c) => Ok(Some(c)),
        Err(ConfigError::NotFound(_)) if explicit.is_none() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn env_token() -> Option<SecretString> {
    std::env::var("GITLAB_TOKEN").ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).map(SecretString::from)
}

impl GitlabCommand {
    /// Runs the subcommand; `config` is `--config`, if given.
    pub async fn run(self, config: Option<&Path>) -> Result<(), Failure> {
        let config = optional_config(config)?;
        let conn = connection(self.gitlab_url.as_deref(), config.as_ref(), env_token())?;
        if conn.defaulted && stderr_is_terminal() {
            eprintln!(
                "note: talking to {DEFAULT_SERVER}: no GITLAB_HOST and no configuration (see `cloudci gitlab --help`)"
            );
        }
        tracing::debug!(server = %conn.url, token = conn.token.is_some(), "GitLab server");
        let anonymous = conn.token.is_none();
        let mut builder = Gitlab::builder(&conn.url);
        if let Some(token) = conn.token {
            builder = builder.private_token(token);
        }
        let gitlab = builder.build().map_err(|e| Failure::usage(e.to_string()))?;
        self.action.run(&gitlab).await.map_err(|mut f| {
            if anonymous && f.code == 3 {
                f.message.push_str("; no token was sent: set GITLAB_TOKEN");
            }
            f
        })
    }
}

impl GitlabAction {
    async fn run(self, gitlab: &Gitlab) -> Result<(), Failure> {
        match self {
            GitlabAction::Pipeline {
                create: Some(PipelineCreate::Create { project, git_ref, vars, file_vars, out }),
                ..
            } => {
                let mut params = CreatePipeline::new(git_ref);
                params.variables.extend(vars.into_iter().map(|(k, v)| PipelineVariable::env(k, v)));
                params.variables.extend(file_vars.into_iter().map(|(k, v)| PipelineVariable::file(k, v)));
                let pipeline = gitlab.create_pipeline(ProjectRef::parse(&project), &params).await?;
                if out.json {
                    print_json(&pipeline)?;
                } else {
                    crate::say!("pipeline {} created: {} ({})", pipeline.id, pipeline.web_url, pipeline.status);
                }
            }
            GitlabAction::Pipeline { project: Some(project), pipeline_id: Some(id), out, .. } => {
                let p = gitlab.pipeline(ProjectRef::parse(&project), PipelineId(id)).await?;
                if out.json {
                    print_json(&p)?;
                } else {
                    let mut t = Table::new(&["FIELD", "VALUE"]);
                    t.row(vec!["id".into(), p.id.to_string()]);
                    t.row(vec!["status".into(), p.status.to_string()]);
                    t.row(vec!["ref".into(), p.git_ref.clone()]);
                    t.row(vec!["sha".into(), p.sha.clone()]);
                    t.row(vec!["source".into(), p.source.clone().unwrap_or_default()]);
                    t.row(vec!["created".into(), opt_time(p.created_at.as_ref())]);
                    t.row(vec!["finished".into(), opt_time(p.finished_at.as_ref())]);
                    t.row(vec!["duration".into(), p.duration.map(|d| format!("{d}s")).unwrap_or_default()]);
                    t.row(vec!["url".into(), p.web_url.clone()]);
                    t.print()?;
                }
            }
            GitlabAction::Pipeline { .. } => {
                return Err(Failure::usage(
                    "usage: cloudci gitlab pipeline <PROJECT> <PIPELINE_ID> | pipeline create ...",
                ));
            }
            GitlabAction::Pipelines { project, git_ref, status, limit, out } => {
                let filter = PipelineFilter {
                    git_ref,
                    status: status.as_deref().map(Status::parse),
                    per_page: Some(limit.clamp(1, 100)),
                    ..Default::default()
                };
                let list: Vec<_> =
                    gitlab.pipelines(ProjectRef::parse(&project), &filter).take(limit).try_collect().await?;
                if out.json {
                    print_json(&list)?;
                } else {
                    let mut t = Table::new(&["ID", "STATUS", "REF", "SHA", "SOURCE", "CREATED", "URL"]);
                    for p in &list {
                        t.row(vec![
                            p.id.to_string(),
                            p.status.to_string(),
                            p.git_ref.clone(),
                            p.sha.chars().take(8).collect(),
                            p.source.clone().unwrap_or_default(),
                            opt_time(p.created_at.as_ref()),
                            p.web_url.clone(),
                        ]);
                    }
                    t.print()?;
                }
            }
            GitlabAction::Jobs { project, pipeline_id, include_retried, out } => {
                let filter = JobFilter { include_retried, ..Default::default() };
                let mut jobs: Vec<_> = gitlab
                    .pipeline_jobs(ProjectRef::parse(&project), PipelineId(pipeline_id), &filter)
                    .try_collect()
                    .await?;
                // GitLab lists newest first; a table reads better in run order.
                jobs.sort_by_key(|j| j.id);
                if out.json {
                    print_json(&jobs)?;
                } else {
                    let mut t = Table::new(&["ID", "NAME", "STAGE", "STATUS", "DURATION", "URL"]);
                    for j in &jobs {
                        t.row(vec![
                            j.id.to_string(),
                            j.name.clone(),
                            j.stage.clone(),
                            j.status.to_string(),
                            j.duration.map(|d| format!("{d:.1}s")).unwrap_or_default(),
                            j.web_url.clone(),
                        ]);
                    }
                    t.print()?;
                }
            }
            GitlabAction::Trace { project, job_id, follow, interval } => {
                let interval = Duration::try_from_secs_f64(interval)
                    .ok()
                    .filter(|d| *d >= Duration::from_millis(100))
                    .ok_or_else(|| Failure::usage("--interval must be at least 0.1 seconds"))?;
                follow_trace(gitlab, ProjectRef::parse(&project), JobId(job_id), follow, interval).await?;
            }
            GitlabAction::Artifacts { project, job_id, output, json } => {
                let show = stderr_is_terminal() && !json;
                let size = gitlab
                    .download_artifacts_with_progress(
                        ProjectRef::parse(&project),
                        JobId(job_id),
                        &output,
                        |done, total| {
                            if show {
                                let total = total.map(|t| format!(" of {}", human_bytes(t))).unwrap_or_default();
                                eprint!("\r\x1b[Kdownloading {}{total}", human_bytes(done));
                            }
                        },
                    )
                    .await?;
                if show {
                    eprintln!();
                }
                if json {
                    print_json(&serde_json::json!({"path": output, "size": size}))?;
                } else {
                    crate::say!("{} ({})", output.display(), human_bytes(size));
                }
            }
            GitlabAction::Mr { action } => action.run(gitlab).await?,
        }
        Ok(())
    }
}

impl MrAction {
    async fn run(self, gitlab: &Gitlab) -> Result<(), Failure> {
        match self {
            MrAction::List { project, state, source_branch, target_branch, limit, out } => {
                let filter = MergeRequestFilter { source_branch, target_branch, state: Some(state) };
                let list: Vec<_> =
                    gitlab.merge_requests(ProjectRef::parse(&project), &filter).take(limit).try_collect().await?;
                if out.json {
                    print_json(&list)?;
                } else {
                    let mut t = Table::new(&["IID", "STATE", "BRANCHES", "TITLE", "AUTHOR", "URL"]);
                    for m in &list {
                        t.row(vec![
                            format!("!{}", m.iid),
                            m.state.clone(),
                            format!("{} → {}", m.source_branch, m.target_branch),
                            m.title.clone(),
                            m.author.as_ref().map(|a| a.username.clone()).unwrap_or_default(),
                            m.web_url.clone(),
                        ]);
                    }
                    t.print()?;
                }
            }
            MrAction::Create {
                project,
                source_branch,
                target_branch,
                title,
                description,
                labels,
                remove_source_branch,
                squash,
                out,
            } => {
                if title.trim().is_empty() {
                    return Err(Failure::usage("--title must not be empty"));
                }
                let params = CreateMergeRequest {
                    source_branch,
                    target_branch,
                    title,
                    description,
                    labels: (!labels.is_empty()).then(|| labels.join(",")),
                    remove_source_branch: remove_source_branch.then_some(true),
                    squash: squash.then_some(true),
                };
                let mr = gitlab.create_merge_request(ProjectRef::parse(&project), &params).await?;
                if out.json {
                    print_json(&mr)?;
                } else {
                    crate::say!("merge request !{} opened: {}", mr.iid, mr.web_url);
                }
            }
        }
        Ok(())
    }
}

async fn follow_trace(
    gitlab: &Gitlab,
    project: ProjectRef,
    job: JobId,
    follow: bool,
    interval: Duration,
) -> Result<(), Failure> {
    let mut offset = 0;
    let mut out = std::io::stdout().lock();
    let mut pace = crate::orchestrator::tail::Pace::new(interval, crate::orchestrator::tail::Pace::MAX);
    loop {
        // Read the status first: output written before the job ended is then surely in the read
        // that follows, so the last read after completion misses nothing.
        let finished = if follow { gitlab.job(project.clone(), job).await?.status.is_completed() } else { true };
        let chunk = gitlab.job_trace_from(project.clone(), job, offset).await?;
        if chunk.reset && offset > 0 {
            writeln!(out, "\n--- the log was restarted (job retried or erased) ---")?;
        }
        out.write_all(&chunk.data)?;
        out.flush()?;
        offset = chunk.next_offset;
        if finished {
            return Ok(());
        }
        tokio::time::sleep(pace.after(!chunk.data.is_empty())).await;
    }
}

fn opt_time(t: Option<&cloudci_gitlab::types::Timestamp>) -> String {
    t.map(|t| t.at().format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_and_hosts() {
        assert!(parse_var("BO ARD=x").is_err());
        assert_eq!(server_url(None), "https://gitlab.com");
        assert_eq!(server_url(Some("gitlab.example.com")), "https://gitlab.example.com");
        assert_eq!(server_url(Some("http://127.0.0.1:9")), "http://127.0.0.1:9");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert!(same_server("https://gitlab.example.com/", "https://GITLAB.example.com:443/api/v4"));
        assert!(!same_server("https://gitlab.example.com", "https://gitlab.com"));
        assert!(!same_server("http://127.0.0.1:1", "http://127.0.0.1:2"));
    }

    #[test]
    fn the_token_goes_only_with_its_server() {
        use secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "glpat-FROM-FILE\n").unwrap();
        let mut config = Config::default();
        config.gitlab.url = Some("https://gitlab.example.com".into());
        // A variable nobody sets, so the file is what the configuration yields.
        config.gitlab.token_env = Some("CLOUDCI_TEST_UNSET_TOKEN_VARIABLE".into());
        config.gitlab.token_file = Some(dir.path().join("token"));
        let env = || Some(SecretString::from("glpat-FROM-ENV"));
        let token = |c: &Connection| c.token.as_ref().map(|t| t.expose_secret().to_owned());

        let c = connection(None, None, env()).unwrap();
        assert_eq!((c.url.as_str(), c.defaulted, token(&c).as_deref()), (DEFAULT_SERVER, true, Some("glpat-FROM-ENV")));
        let c = connection(Some("  "), None, None).unwrap();
        assert!(c.defaulted && c.token.is_none());

        let c = connection(None, Some(&config), env()).unwrap();
        assert_eq!((c.url.as_str(), c.defaulted), ("https://gitlab.example.com", false));
        assert_eq!(token(&c).as_deref(), Some("glpat-FROM-FILE"));

        let c = connection(Some("gitlab.example.com"), Some(&config), env()).unwrap();
        assert_eq!(token(&c).as_deref(), Some("glpat-FROM-FILE"));

        let c = connection(Some("http://127.0.0.1:9"), Some(&config), env()).unwrap();
        assert_eq!((c.url.as_str(), token(&c).as_deref()), ("http://127.0.0.1:9", Some("glpat-FROM-ENV")));
        let c = connection(Some("http://127.0.0.1:9"), Some(&config), None).unwrap();
        assert!(c.token.is_none());

        config.gitlab.token_file = Some(dir.path().join("missing"));
        let e = connection(None, Some(&config), env()).unwrap_err();
        assert!(e.message.contains("missing") && !e.message.contains("glpat"), "{}", e.message);
    }
}
