//! `cloudci demo`: the whole product on one machine, with no account, token or network. A
//! gitlab-sim serves the example firmware project; cloudci's daemon registers its webhook,
//! builds every target, follows the events, fetches the firmware and opens the merge request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use cloudci_gitlab::{Gitlab, RetryPolicy};
use gitlab_sim::{Sim, SimConfig};
use secrecy::SecretString;

use super::Failure;
use super::build::print_outcomes;
use crate::daemon::Daemon;
use crate::orchestrator::{BuildOutcome, EventFeed, Orchestrator, Quiet, Reporter, Request, StderrReporter};
use crate::output::stderr_is_terminal;

const FIRMWARE: [(&str, &str); 3] = [
    (".gitlab-ci.yml", include_str!("../../examples/firmware/.gitlab-ci.yml")),
    ("src/main.c", include_str!("../../examples/firmware/src/main.c")),
    ("README.md", include_str!("../../examples/firmware/README.md")),
];

/// Run everything locally against a simulated GitLab: build the example firmware for two targets,
/// follow it live, fetch the firmware, open the merge request.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Print `{"builds": [...]}` instead of a table.
    #[arg(long)]
    json: bool,
    /// Keep the daemon and the simulated GitLab running afterwards (until Ctrl-C).
    #[arg(long)]
    keep_serving: bool,
    /// Work in this folder (kept afterwards) instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl DemoArgs {
    /// Runs it. Exit 0 only if every build succeeded and every action happened.
    pub async fn run(self) -> Result<(), Failure> {
        let started = Instant::now();
        let temp = tempfile::Builder::new().prefix("cloudci-demo-").tempdir()?;
        let root = self.dir.clone().unwrap_or_else(|| temp.path().to_owned());
        std::fs::create_dir_all(&root)?;
        let verbose = !self.json || stderr_is_terminal();
        let show: Arc<dyn Reporter> = if verbose { Arc::new(StderrReporter) } else { Arc::new(Quiet) };
        show.line("demo", &format!("working in {}", root.display()));

        // The example firmware as a git repository, with a `feature` branch to build and merge.
        let repo = tokio::task::spawn_blocking({
            let root = root.clone();
            move || gitlab_sim::fixtures::repo_with(&root, "firmware", &FIRMWARE)
        })
        .await
        .map_err(|e| Failure::general(e.to_string()))?;
        let token = cloudci_webhook::secrets::random_token(24);
        let sim = Sim::start(SimConfig {
            token: token.clone(),
            projects: vec![("demo/firmware".into(), repo)],
            state_dir: Some(root.join("gitlab-sim")),
            runners: 2,
            ..SimConfig::default()
        })
        .await
        .map_err(|e| Failure::general(e.to_string()))?;
        show.line("demo", &format!("simulated GitLab at {}", sim.url()));

        let (hook_port, api_port) = (free_port()?, free_port()?);
        let text = format!(
            r#"
[webhook]
listen = "127.0.0.1:{hook_port}"
tunnel = "none"
public_url = "http://127.0.0.1:{hook_port}"
reconcile_after = 5
[api]
listen = "127.0.0.1:{api_port}"
[store]
path = "{state}"
[targets.host]
description = "the machine this runs on"
variables = {{ TARGET = "host", BOARD = "native" }}
[targets.cortex-m4]
description = "STM32F401 Nucleo (cross build with arm-none-eabi-gcc)"
variables = {{ TARGET = "cortex-m4", BOARD = "nucleo-f401re" }}
[projects.firmware]
gitlab = "demo/firmware"
targets = ["host", "cortex-m4"]
after_success = {{ merge_request = {{ target_branch = "main", title = "Add feature (built by cloudci demo)" }} }}
"#,
            state = root.join("state").display().to_string().replace('\\', "\\\\")
        );
        let config = crate::config::parse(&text, &root.join("cloudci.toml"))?;
        let gitlab = Gitlab::builder(sim.url())
            .private_token(SecretString::from(token))
            .retry(RetryPolicy { max_retries: 2, ..RetryPolicy::default() })
            .build()?;
        let daemon = Daemon::start_with(&config, true, Some(gitlab.clone())).await?;
        show.line("demo", &format!("webhook receiver at {}/hooks/…, hook registered", daemon.public_url));

        // The demo's builds run in this process, next to the daemon, on its hub.
        let store = crate::builds::SqliteBuilds::open(&config.state_dir().join("builds.db"))
            .map_err(|e| Failure::general(e.to_string()))?;
        let orchestrator = Orchestrator::new(
            Arc::new(config.clone()),
            gitlab,
            Arc::new(store),
            EventFeed::Hub(daemon.hub.clone()),
            config.state_dir(),
        )
        // Status and the jobs' output as they come, for whoever is watching.
        .with_reporter(show.clone(), verbose);
        let plan = orchestrator
            .plan(&Request { names: vec!["firmware".into()], git_ref: Some("feature".into()), ..Request::default() })
            .map_err(|e| Failure::general(e.to_string()))?;
        let finished = orchestrator.run(&plan, true).await?;
        let (run_dir, outcomes) = (finished.log_dir, finished.outcomes);
        for o in &outcomes {
            if let Some(dir) = &o.artifacts
                && let Ok(note) = std::fs::read_to_string(dir.join("out/SKIPPED.txt"))
            {
                show.line(&format!("{}/{}", o.project, o.target), note.trim());
            }
        }
        print_outcomes(&outcomes, self.json, Some(&run_dir))?;
        show.line("demo", &format!("done in {:.1} s", started.elapsed().as_secs_f64()));
        let ok = !outcomes.is_empty()
            && outcomes.iter().all(|o| o.succeeded() && o.artifacts.is_some() && o.merge_request.is_some());

        if self.keep_serving {
            let token = daemon.keys.issue("demo dashboard", vec![], Duration::from_secs(24 * 3600));
            crate::say!("dashboard: http://{}/?access_token={token}", daemon.api_addr);
            crate::say!("simulated GitLab: {} (Ctrl-C to stop)", sim.url());
            let _ = tokio::signal::ctrl_c().await;
        }
        daemon.stop(false).await;
        drop(sim);
        if self.dir.is_some() {
            // Keep what the user asked to keep.
            let _ = temp.keep();
        }
        if ok { Ok(()) } else { Err(Failure::general(failure_summary(&outcomes))) }
    }
}

fn failure_summary(outcomes: &[BuildOutcome]) -> String {
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| !(o.succeeded() && o.artifacts.is_some() && o.merge_request.is_some()))
        .map(|o| format!("{}/{}: {}", o.project, o.target, o.reason.clone().unwrap_or_else(|| o.status.to_string())))
        .collect();
    format!("the demo did not complete: {}", bad.join("; "))
}
