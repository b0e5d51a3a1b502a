//! `cloudci.toml`: where GitLab is, how webhooks reach us, and what to build for which boards.
//!
//! Found at `--config`, else `$CLOUDCI_CONFIG`, else `./cloudci.toml`, else
//! `$XDG_CONFIG_HOME/cloudci/config.toml`. Every error names the file, the line and the key.
//! Secrets never live in the file: the GitLab token comes from an environment variable or a file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// A configuration problem, located.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No file found.
    #[error("no configuration found; looked for {}. Write one (see config/cloudci.toml) or pass --config FILE", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound(Vec<PathBuf>),
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid, with the place.
    #[error("{}:{line}: {message}\n  {line} | {text}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// That line's text.
        text: String,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[gitlab]`
    #[serde(default)]
    pub gitlab: GitlabSection,
    /// `[webhook]`
    #[serde(default)]
    pub webhook: WebhookSection,
    /// `[api]`
    #[serde(default)]
    pub api: ApiSection,
    /// `[store]`
    #[serde(default)]
    pub store: StoreSection,
    /// `[targets.<name>]`: CI variables per embedded target.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
    /// `[projects.<name>]`
    #[serde(default)]
    pub projects: BTreeMap<String, ProjectConfig>,
    /// `[groups]`: `name = ["project", ...]`.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<Spanned<String>>>,
    /// `[notify]`
    #[serde(default)]
    pub notify: NotifySection,
    /// The file it came from (set by [`load`]); relative paths inside are relative to its folder.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[gitlab]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitlabSection {
    /// Server URL (default `https://gitlab.com`; `GITLAB_HOST` overrides).
    pub url: Option<String>,
    /// The environment variable holding the token (default `GITLAB_TOKEN`).
    pub token_env: Option<String>,
    /// A file holding the token, used when the variable is unset.
    pub token_file: Option<PathBuf>,
    /// How many of cloudci's pipelines may run at once on this GitLab (default
    /// [`DEFAULT_MAX_CONCURRENT_PIPELINES`]); further builds wait as `queued`.
    pub max_concurrent_pipelines: Option<Spanned<u32>>,
}

/// `max_concurrent_pipelines` when none is configured: enough to keep a small runner fleet busy,
/// few enough to stay clear of GitLab's pipeline creation rate limit.
pub const DEFAULT_MAX_CONCURRENT_PIPELINES: u32 = 4;

impl GitlabSection {
    /// How many pipelines may run at once.
    pub fn max_concurrent_pipelines(&self) -> u32 {
        self.max_concurrent_pipelines.as_ref().map(|m| *m.get_ref()).unwrap_or(DEFAULT_MAX_CONCURRENT_PIPELINES)
    }
}

/// How GitLab reaches the public listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKind {
    /// `public_url` already forwards to `listen` (your own reverse proxy, or loopback in tests).
    None,
    /// An ngrok endpoint (`NGROK_AUTHTOKEN`), opened at start.
    Ngrok,
}

/// `[webhook]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// The public listener (default `127.0.0.1:8787`).
    #[serde(default = "default_webhook_listen")]
    pub listen: SocketAddr,
    /// `none` or `ngrok` (default: `none` when `public_url` is set, else `ngrok`).
    pub tunnel: Option<TunnelKind>,
    /// The URL GitLab can reach `listen` at (with `tunnel = "none"`).
    pub public_url: Option<String>,
    /// `full` (fsync every commit, survives power loss; default) or `normal` (survives crashes).
    #[serde(default)]
    pub durability: DurabilitySetting,
    /// Give hooks a GitLab 19 signing token and require signatures when GitLab confirms it.
    #[serde(default = "yes")]
    pub signing: bool,
    /// Seconds without news about an unfinished pipeline before GitLab's API is asked (default 30).
    #[serde(default = "default_reconcile")]
    pub reconcile_after: u64,
}

impl Default for WebhookSection {
    fn default() -> Self {
        Self {
            listen: default_webhook_listen(),
            tunnel: None,
            public_url: None,
            durability: DurabilitySetting::default(),
            signing: true,
            reconcile_after: default_reconcile(),
        }
    }
}

/// `durability = "full" | "normal"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    /// fsync on every commit.
    #[default]
    Full,
    /// WAL without per-commit fsync.
    Normal,
}

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// The local listener for the IDE, CLI and dashboard (default `127.0.0.1:8788`).
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Other names the local API answers to, besides its own address (`127.0.0.1:PORT`,
    /// `localhost:PORT`, `[::1]:PORT`): `name` (on the listener's port) or `name:port`, e.g.
    /// behind a proxy. Requests for any other `Host` are refused, so a web page that rebinds its
    /// DNS name to this machine cannot use the API (default: none).
    #[serde(default, deserialize_with = "host_names")]
    pub hosts: Vec<String>,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self { listen: default_api_listen(), hosts: Vec::new() }
    }
}

/// `[api] hosts`: host names, optionally with a port; no scheme, path or spaces.
fn host_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    for n in &names {
        let valid = !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
        if !valid {
            return Err(serde::de::Error::custom(format!(
                "api.hosts: {n:?} is not a host name (write `name` or `name:port`, without a scheme or path)"
            )));
        }
    }
    Ok(names)
}

/// `[store]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// State directory (default `$XDG_STATE_HOME/cloudci`).
    pub path: Option<PathBuf>,
}

/// `[targets.<name>]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// CI variables that select the target (`TARGET`, `BOARD`, ...). For a target built by jobs
    /// ([`TargetConfig::jobs`], [`TargetConfig::matrix`]) they are added to the shared pipeline.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// The jobs that build the target, by GitLab's names (`"build: [stm32f4]"`). A build of
    /// several targets with jobs (or a matrix) of one project is one pipeline.
    #[serde(default)]
    pub jobs: Vec<Spanned<String>>,
    /// The `parallel: matrix` values of the target's jobs (`{ BOARD = "stm32f4" }`): the jobs
    /// whose matrix variables include these.
    #[serde(default)]
    pub matrix: BTreeMap<String, Spanned<String>>,
    /// Free text.
    pub description: Option<String>,
}

impl TargetConfig {
    /// Which jobs of a shared pipeline are the target's; `None`: the target has a pipeline of
    /// its own (told apart by variables).
    pub fn selector(&self) -> Option<crate::orchestrator::JobSelector> {
        crate::orchestrator::JobSelector::new(
            self.jobs.iter().map(|j| j.get_ref().clone()).collect(),
            self.matrix.iter().map(|(k, v)| (k.clone(), v.get_ref().clone())).collect(),
        )
    }
}

/// `[projects.<name>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// GitLab path (`group/name`) or numeric id.
    pub gitlab: String,
    /// Targets to build.
    #[serde(default)]
    pub targets: Vec<Spanned<String>>,
    /// Projects that must succeed first.
    #[serde(default)]
    pub depends_on: Vec<Spanned<String>>,
    /// Ref to build when none is given (default: the project's default branch).
    #[serde(rename = "ref")]
    pub default_ref: Option<String>,
    /// Extra CI variables for every build of the project.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// What happens when a build succeeds.
    #[serde(default)]
    pub after_success: AfterSuccess,
    /// Build again when the ref gets new commits.
    #[serde(default)]
    pub rebuild_on_push: bool,
}

/// `after_success = { ... }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfterSuccess {
    /// Download the artifacts (default true).
    #[serde(default = "yes")]
    pub download_artifacts: bool,
    /// Open a merge request.
    pub merge_request: Option<MergeRequestConfig>,
    /// Set it to merge when its pipeline succeeds.
    #[serde(default)]
    pub auto_merge: bool,
    /// Start another pipeline (e.g. release testing) with the build's sha and artifact job.
    pub promote: Option<PromoteConfig>,
}

impl Default for AfterSuccess {
    fn default() -> Self {
        Self { download_artifacts: true, merge_request: None, auto_merge: false, promote: None }
    }
}

/// `merge_request = { target_branch = "main" }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeRequestConfig {
    /// Branch to merge into.
    pub target_branch: String,
    /// Title (default: the ref's last commit title).
    pub title: Option<String>,
}

/// `promote = { ref = "release-testing", variables = {...} }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteConfig {
    /// The project to start it in (default: the same).
    pub project: Option<String>,
    /// The ref to run.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Extra variables (besides `CLOUDCI_SHA` and `CLOUDCI_ARTIFACT_JOB`).
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// `[notify]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    /// Desktop notifications on final states (needs the `desktop` feature).
    #[serde(default)]
    pub desktop: bool,
    /// A command run on final states, with the event as JSON on stdin.
    pub command: Option<String>,
}

fn default_webhook_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8787))
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8788))
}

fn default_reconcile() -> u64 {
    30
}

fn yes() -> bool {
    true
}

/// Where the configuration is looked for, in order.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_owned()];
    }
    let mut list = Vec::new();
    if let Some(p) = std::env::var_os("CLOUDCI_CONFIG").filter(|p| !p.is_empty()) {
        list.push(PathBuf::from(p));
    }
    list.push(PathBuf::from("cloudci.toml"));
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(dir) = config_home {
        list.push(dir.join("cloudci/config.toml"));
    }
    list
}

/// Finds, reads and checks the configuration.
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    let places = candidates(explicit);
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => places.iter().find(|p| p.is_file()).cloned().ok_or_else(|| ConfigError::NotFound(places.clone()))?,
    };
    let text = std::fs::read_to_string(&path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ConfigError::NotFound(vec![path.clone()]),
        _ => ConfigError::Read { path: path.clone(), source },
    })?;
    parse(&text, &path)
}

/// Parses and checks configuration text that came from `path`.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let at = |offset: usize, message: String| {
        let line = text[..offset.min(text.len())].matches('\n').count() + 1;
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            text: text.lines().nth(line - 1).unwrap_or("").trim().to_owned(),
            message,
        }
    };
    let mut config: Config = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        at(offset, e.message().trim().to_owned())
    })?;
    // Where a `[section.name]` starts, for errors about a whole project.
    let header_at = |section: &str, name: &str| {
        let wanted = [format!("[{section}.{name}]"), format!("[{section}.\"{name}\"]")];
        text.lines()
            .scan(0usize, |off, l| {
                let start = *off;
                *off += l.len() + 1;
                Some((start, l.trim()))
            })
            .find(|(_, l)| wanted.iter().any(|w| l == w))
            .map(|(o, _)| o)
            .unwrap_or(0)
    };
    if let Some(max) = &config.gitlab.max_concurrent_pipelines
        && *max.get_ref() == 0
    {
        return Err(at(
            max.span().start,
            "gitlab.max_concurrent_pipelines must be at least 1 (no pipeline could ever start)".into(),
        ));
    }
    let known_targets: Vec<&String> = config.targets.keys().collect();
    let known_projects: Vec<&String> = config.projects.keys().collect();
    for (name, project) in &config.projects {
        if project.gitlab.trim().is_empty() {
            return Err(at(header_at("projects", name), format!("projects.{name}.gitlab is empty")));
        }
        for t in &project.targets {
            if !config.targets.contains_key(t.get_ref()) {
                return Err(at(
                    t.span().start,
                    format!(
                        "projects.{name}.targets: unknown target {:?}; known targets: {}",
                        t.get_ref(),
                        list(&known_targets)
                    ),
                ));
            }
        }
        for d in &project.depends_on {
            if !config.projects.contains_key(d.get_ref()) {
                return Err(at(
                    d.span().start,
                    format!(
                        "projects.{name}.depends_on: unknown project {:?}; known projects: {}",
                        d.get_ref(),
                        list(&known_projects)
                    ),
                ));
            }
        }
    }
    for (name, target) in &config.targets {
        for j in &target.jobs {
            if j.get_ref().trim().is_empty() {
                return Err(at(j.span().start, format!("targets.{name}.jobs: a job name is empty")));
            }
        }
        for (key, value) in &target.matrix {
            if key.trim().is_empty() || value.get_ref().trim().is_empty() {
                return Err(at(
                    value.span().start,
                    format!("targets.{name}.matrix: {key:?} needs a variable name and a value"),
                ));
            }
        }
    }
    for (group, members) in &config.groups {
        if config.projects.contains_key(group) {
            return Err(at(header_at("groups", group), format!("groups.{group}: a project has the same name")));
        }
        for m in members {
            if !config.projects.contains_key(m.get_ref()) {
                return Err(at(
                    m.span().start,
                    format!(
                        "groups.{group}: unknown project {:?}; known projects: {}",
                        m.get_ref(),
                        list(&known_projects)
                    ),
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&config) {
        let first = &cycle[0];
        let offset = config.projects[first]
            .depends_on
            .iter()
            .find(|d| d.get_ref() == &cycle[1])
            .map(|d| d.span().start)
            .unwrap_or(0);
        return Err(at(offset, format!("projects.{first}.depends_on: dependency cycle {}", cycle.join(" → "))));
    }
    if config.webhook.tunnel == Some(TunnelKind::None) && config.webhook.public_url.is_none() {
        return Err(at(
            header_at_section(text, "webhook"),
            "webhook.public_url is required with tunnel = \"none\"".into(),
        ));
    }
    config.source = Some(path.to_owned());
    Ok(config)
}

fn header_at_section(text: &str, section: &str) -> usize {
    let wanted = format!("[{section}]");
    let mut off = 0;
    for l in text.lines() {
        if l.trim() == wanted {
            return off;
        }
        off += l.len() + 1;
    }
    0
}

fn list(names: &[&String]) -> String {
    if names.is_empty() { "(none)".into() } else { names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ") }
}

/// A dependency cycle as `[a, b, ..., a]`, if there is one.
fn find_cycle(config: &Config) -> Option<Vec<String>> {
    fn visit(config: &Config, name: &str, stack: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|s| s == name) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(name.to_owned());
            return Some(cycle);
        }
        if done.contains(name) {
            return None;
        }
        stack.push(name.to_owned());
        for d in config.projects.get(name).map(|p| p.depends_on.as_slice()).unwrap_or(&[]) {
            if let Some(c) = visit(config, d.get_ref(), stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(name.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    config.projects.keys().find_map(|name| visit(config, name, &mut Vec::new(), &mut done))
}

impl Config {
    /// Resolves a path written in the file: relative paths are relative to the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        let joined = match (&self.source, p.is_relative()) {
            (Some(src), true) => src.parent().map(|d| d.join(p)).unwrap_or_else(|| p.to_owned()),
            _ => p.to_owned(),
        };
        // Absolute, so paths the daemon records (logs, artifacts) mean the same to every reader,
        // whatever directory it or they were started in.
        std::path::absolute(&joined).unwrap_or(joined)
    }

    /// The state directory: `[store] path`, else `$XDG_STATE_HOME/cloudci`, else
    /// `~/.local/state/cloudci`.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(p) = &self.store.path {
            return self.resolve(p);
        }
        std::env::var_os("XDG_STATE_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."))
            .join("cloudci")
    }

    /// The GitLab server: `GITLAB_HOST`, else `[gitlab] url`, else gitlab.com.
    pub fn gitlab_url(&self) -> String {
        std::env::var("GITLAB_HOST")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| self.gitlab.url.clone())
            .map(|u| if u.contains("://") { u } else { format!("https://{u}") })
            .unwrap_or_else(|| "https://gitlab.com".into())
    }

    /// The GitLab token: from the variable `token_env` names (default `GITLAB_TOKEN`), else from
    /// `token_file`. The error says where it looked, never a value.
    pub fn gitlab_token(&self) -> Result<secrecy::SecretString, TokenError> {
        let var = self.gitlab.token_env.clone().unwrap_or_else(|| "GITLAB_TOKEN".into());
        if let Ok(v) = std::env::var(&var)
            && !v.trim().is_empty()
        {
            return Ok(secrecy::SecretString::from(v.trim().to_owned()));
        }
        if let Some(file) = &self.gitlab.token_file {
            let path = self.resolve(file);
            return std::fs::read_to_string(&path)
                .map(|t| secrecy::SecretString::from(t.trim().to_owned()))
                .map_err(|source| TokenError::File { path, source });
        }
        Err(TokenError::Missing { var })
    }
}

/// Why there is no GitLab token to send (exit 3, like any authentication failure).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Neither the environment variable nor a token file.
    #[error("no GitLab token: set {var} (or [gitlab] token_file)")]
    Missing {
        /// The variable looked at.
        var: String,
    },
    /// The configured token file cannot be read.
    #[error("cannot read the GitLab token from {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text, Path::new("cloudci.toml")).unwrap_err().to_string()
    }

    const GOOD: &str = r#"
[gitlab]
url = "https://gitlab.example.com"

[webhook]
tunnel = "none"
public_url = "https://ci.example.com"

[targets.stm32f4]
variables = { TARGET = "thumbv7em-none-eabihf", BOARD = "nucleo-f401re" }

[targets.rp2040]
variables = { TARGET = "thumbv6m-none-eabi" }

[projects.hal]
gitlab = "acme/hal"
targets = ["stm32f4"]

[projects.firmware]
gitlab = "acme/firmware"
targets = ["stm32f4", "rp2040"]
depends_on = ["hal"]
after_success = { merge_request = { target_branch = "main" }, auto_merge = false }

[groups]
boards = ["firmware", "hal"]
"#;

    #[test]
    fn the_reference_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cloudci.toml");
        let c = load(Some(&path)).unwrap();
        assert_eq!(c.projects.len(), 2);
        assert_eq!(c.projects["firmware"].after_success.promote.as_ref().unwrap().git_ref, "release-testing");
        assert_eq!(c.groups["boards"].len(), 2);
    }

    #[test]
    fn reads_the_design_example() {
        let c = parse(GOOD, Path::new("/etc/cloudci.toml")).unwrap();
        assert_eq!(c.projects["firmware"].targets.len(), 2);
        assert_eq!(c.projects["firmware"].after_success.merge_request.as_ref().unwrap().target_branch, "main");
        assert!(c.projects["firmware"].after_success.download_artifacts);
        assert_eq!(c.webhook.listen.port(), 8787);
        assert_eq!(c.resolve(Path::new("state")), PathBuf::from("/etc/state"));
    }

    #[test]
    fn targets_by_jobs_are_read_and_checked_with_their_place() {
        let text = "[targets.a]\nmatrix = { BOARD = \"a\" }\n[targets.b]\njobs = [\"build: [b]\"]\n[targets.c]\nvariables = { BOARD = \"c\" }\n[projects.p]\ngitlab = \"x/y\"\ntargets = [\"a\", \"b\", \"c\"]\n";
        let c = parse(text, Path::new("c.toml")).unwrap();
        assert!(c.targets["a"].selector().unwrap().matches("build: [a]"));
        assert!(c.targets["b"].selector().unwrap().matches("build: [b]"));
        assert!(c.targets["c"].selector().is_none());
        let e = parse("[targets.a]\njobs = [\"\"]\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.starts_with("c.toml:2: targets.a.jobs: a job name is empty"), "{e}");
        let e = parse("[targets.a]\n\nmatrix = { BOARD = \"\" }\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.starts_with("c.toml:3: targets.a.matrix"), "{e}");
        let e = parse("[targets.a]\nmatrx = { BOARD = \"a\" }\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.starts_with("c.toml:2:") && e.contains("matrx"), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err("[gitlab]\nurl = \"x\"\ntoken = \"glpat-x\"\n");
        assert!(e.starts_with("cloudci.toml:3:") && e.contains("unknown field `token`"), "{e}");
        let e = err(&GOOD.replace("targets = [\"stm32f4\", \"rp2040\"]", "targets = [\"stm32f4\", \"esp32\"]"));
        assert!(
            e.contains("cloudci.toml:21:") && e.contains("projects.firmware.targets") && e.contains("\"esp32\""),
            "{e}"
        );
        assert!(e.contains("known targets: rp2040, stm32f4"), "{e}");
        let e = err(&GOOD.replace("boards = [\"firmware\", \"hal\"]", "boards = [\"firmware\", \"bootloader\"]"));
        assert!(
            e.contains("groups.boards") && e.contains("bootloader") && e.contains("known projects: firmware, hal"),
            "{e}"
        );
        let cyclic =
            GOOD.replace("targets = [\"stm32f4\"]\n", "targets = [\"stm32f4\"]\ndepends_on = [\"firmware\"]\n");
        let e = err(&cyclic);
        assert!(e.contains("dependency cycle") && e.contains("firmware → hal → firmware"), "{e}");
        assert!(e.contains("cloudci.toml:23:") && e.contains("depends_on = [\"hal\"]"), "{e}");
        let e = err("[webhook]\nlisten = \"nowhere\"\n");
        assert!(e.contains("cloudci.toml:2:") && e.contains("listen = \"nowhere\""), "{e}");
        let e = err("[webhook]\ntunnel = \"none\"\n");
        assert!(e.contains("public_url is required"), "{e}");
        let e = err("[gitlab]\nurl = \"x\"\nmax_concurrent_pipelines = 0\n");
        assert!(e.starts_with("cloudci.toml:3:") && e.contains("gitlab.max_concurrent_pipelines"), "{e}");
        let e = err("[gitlab]\nmax_concurrent_pipelines = -2\n");
        assert!(e.starts_with("cloudci.toml:2:"), "{e}");
    }

    #[test]
    fn pipelines_at_once_default_and_configured() {
        let c = parse(GOOD, Path::new("cloudci.toml")).unwrap();
        assert_eq!(c.gitlab.max_concurrent_pipelines(), DEFAULT_MAX_CONCURRENT_PIPELINES);
        let c = parse("[gitlab]\nmax_concurrent_pipelines = 3\n", Path::new("cloudci.toml")).unwrap();
        assert_eq!(c.gitlab.max_concurrent_pipelines(), 3);
    }
}
