//! `cloudci demo`: the whole product on one machine, with no account, token or network. A
//! gitlab-sim serves the example firmware project; cloudci's daemon registers its webhook,
//! builds every target (the host, and two boards cross-compiled and booted in QEMU), follows the
//! events, fetches the firmware and opens the merge request. Everything is kept in a folder the
//! demo names, for `cloudci status` and `cloudci artifacts` afterwards.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use cloudci_gitlab::{Gitlab, RetryPolicy};
use gitlab_sim::{Sim, SimConfig};
use secrecy::SecretString;

use super::Failure;
use super::build::print_outcomes;
use crate::daemon::Daemon;
use crate::orchestrator::{
    BuildOutcome, BuildStatus, EventFeed, Orchestrator, Quiet, Reporter, Request, StderrReporter,
};
use crate::output::stderr_is_terminal;

/// `examples/firmware`, file by file (a test checks that none is missing).
const FIRMWARE: &[(&str, &str)] = &[
    (".gitignore", include_str!("../../examples/firmware/.gitignore")),
    (".gitlab-ci.yml", include_str!("../../examples/firmware/.gitlab-ci.yml")),
    ("Makefile", include_str!("../../examples/firmware/Makefile")),
    ("README.md", include_str!("../../examples/firmware/README.md")),
    ("boards/host/board.mk", include_str!("../../examples/firmware/boards/host/board.mk")),
    ("boards/microbit/board.mk", include_str!("../../examples/firmware/boards/microbit/board.mk")),
    ("boards/microbit/linker.ld", include_str!("../../examples/firmware/boards/microbit/linker.ld")),
    ("boards/mps2-an386/board.mk", include_str!("../../examples/firmware/boards/mps2-an386/board.mk")),
    ("boards/mps2-an386/linker.ld", include_str!("../../examples/firmware/boards/mps2-an386/linker.ld")),
    ("ci/boards.yml", include_str!("../../examples/firmware/ci/boards.yml")),
    ("ci/templates.yml", include_str!("../../examples/firmware/ci/templates.yml")),
    ("scripts/skip-unless-installed", include_str!("../../examples/firmware/scripts/skip-unless-installed")),
    ("src/blink.c", include_str!("../../examples/firmware/src/blink.c")),
    ("src/blink.h", include_str!("../../examples/firmware/src/blink.h")),
    ("src/console.c", include_str!("../../examples/firmware/src/console.c")),
    ("src/console.h", include_str!("../../examples/firmware/src/console.h")),
    ("src/console_host.c", include_str!("../../examples/firmware/src/console_host.c")),
    ("src/cortex-m.ld", include_str!("../../examples/firmware/src/cortex-m.ld")),
    ("src/main.c", include_str!("../../examples/firmware/src/main.c")),
    ("src/selftest.c", include_str!("../../examples/firmware/src/selftest.c")),
    ("src/selftest.h", include_str!("../../examples/firmware/src/selftest.h")),
    ("src/semihosting.c", include_str!("../../examples/firmware/src/semihosting.c")),
    ("src/startup.c", include_str!("../../examples/firmware/src/startup.c")),
];

/// The demo's targets: name, description, board (the pipeline's `BOARD`).
const TARGETS: [(&str, &str, &str); 3] = [
    ("host", "the machine this runs on", "host"),
    ("mps2-an386", "Arm MPS2+ AN386, Cortex-M4F (cross build, self-test booted in QEMU)", "mps2-an386"),
    ("microbit", "BBC micro:bit v1, nRF51822 Cortex-M0 (cross build, self-test booted in QEMU)", "microbit"),
];

/// Run everything locally against a simulated GitLab: build the example firmware for the host
/// and two boards, boot the boards' self-tests in QEMU, follow it live, fetch the firmware, open
/// the merge request. What it built is kept (see `--dir`).
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Print `{"builds": [...]}` instead of a table.
    #[arg(long)]
    json: bool,
    /// Keep the daemon and the simulated GitLab running afterwards (until Ctrl-C).
    #[arg(long)]
    keep_serving: bool,
    /// Work in this folder (default: a new one under `$XDG_STATE_HOME/cloudci/demo/`); it is kept.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Build with a self-test that fails (`BREAK_SELFTEST=1`), to see a red pipeline.
    #[arg(long = "break")]
    break_selftest: bool,
    /// Build every board in one pipeline (the CI file's board matrix: `firmware: [<board>]`,
    /// `selftest: [<board>]`), each target following its own jobs; default: one pipeline per
    /// board, told apart by variables.
    #[arg(long)]
    matrix: bool,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl DemoArgs {
    /// Runs it. Exit 0 when every build succeeded (or was skipped, saying why) and every action
    /// happened.
    pub async fn run(self) -> Result<(), Failure> {
        let started = Instant::now();
        let root = match &self.dir {
            Some(dir) => dir.clone(),
            None => new_demo_dir()?,
        };
        std::fs::create_dir_all(&root)?;
        let root = std::fs::canonicalize(&root)?;
        let verbose = !self.json || stderr_is_terminal();
        let show: Arc<dyn Reporter> = if verbose { Arc::new(StderrReporter) } else { Arc::new(Quiet) };
        show.line("demo", &format!("working in {} (kept afterwards)", root.display()));

        // The example firmware as a git repository, with a `feature` branch to build and merge.
        let repo = tokio::task::spawn_blocking({
            let root = root.clone();
            move || gitlab_sim::fixtures::repo_with(&root, "firmware", FIRMWARE)
        })
        .await
        .map_err(|e| Failure::general(e.to_string()))?;
        let token = cloudci_webhook::random_token(24);
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

        let config_path = root.join("cloudci.toml");
        let text = config_text(&root.join("state"), free_port()?, free_port()?, self.matrix);
        std::fs::write(&config_path, &text)?;
        let config = crate::config::parse(&text, &config_path)?;
        let gitlab = Gitlab::builder(sim.url())
            .private_token(SecretString::from(token.clone()))
            .retry(RetryPolicy { max_retries: 2, ..RetryPolicy::default() })
            .build()?;
        let daemon = Daemon::start_with(&config, true, Some(gitlab.clone())).await?;
        show.line(
            "demo",
            &format!(
                "webhook receiver at {}/hooks/…, hook registered",
                daemon.public_url.as_deref().unwrap_or_default()
            ),
        );

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
        let mut request =
            Request { names: vec!["firmware".into()], git_ref: Some("feature".into()), ..Request::default() };
        if self.break_selftest {
            request.variables.insert("BREAK_SELFTEST".into(), "1".into());
        }
        let plan = orchestrator.plan(&request).map_err(|e| Failure::general(e.to_string()))?;
        let finished = orchestrator.run(&plan, true).await?;
        let (run_dir, outcomes) = (finished.log_dir, finished.outcomes);
        print_outcomes(&outcomes, self.json, Some(&run_dir))?;
        for o in outcomes.iter().filter(|o| o.status == BuildStatus::Skipped) {
            let why = o.reason.as_deref().unwrap_or("no reason given");
            show.line(&format!("{}/{}", o.project, o.target), &format!("skipped: {why}"));
        }
        show_first_failure(show.as_ref(), &run_dir);
        show.line("demo", &format!("done in {:.1} s", started.elapsed().as_secs_f64()));
        let ok = !outcomes.is_empty() && outcomes.iter().all(completed);
        let config_arg = format!("--config {}", config_path.display());
        show.line("demo", &format!("kept in {} (`rm -r` it when done); to look at it:", root.display()));
        show.line("demo", &format!("  cloudci {config_arg} status"));
        if let Some(o) = outcomes.iter().find(|o| o.artifacts.is_some()) {
            show.line("demo", &format!("  cloudci {config_arg} artifacts {} --output firmware-{}", o.id, o.target));
        }
        show.line("demo", &format!("  firmware in {}", config.state_dir().join("artifacts").display()));
        show.line("demo", &format!("  logs in {}", run_dir.display()));

        if self.keep_serving {
            // A one-time login code, printed on purpose for the user's browser; no token is
            // printed (the CLI finds the daemon's in the state directory).
            let code = daemon.keys.login_code();
            crate::say!("dashboard: http://{}/login?code={}", daemon.api_addr, code.expose());
            crate::say!(
                "  (the code works once, within {} s; `cloudci {config_arg} dashboard` prints a new one)",
                crate::api::login::LOGIN_CODE_TTL.as_secs()
            );
            crate::say!(
                "local API: http://{} (Authorization: Bearer <token>, from `cloudci {config_arg} token issue`)",
                daemon.api_addr
            );
            crate::say!("for the CLI, in another terminal:");
            crate::say!("  export GITLAB_HOST={} GITLAB_TOKEN={token}", sim.url());
            crate::say!("  cloudci {config_arg} status");
            crate::say!("  cloudci {config_arg} build firmware --ref feature --watch");
            crate::say!("simulated GitLab: {} (Ctrl-C to stop)", sim.url());
            let _ = tokio::signal::ctrl_c().await;
        } else {
            show.line("demo", "`cloudci demo --keep-serving` keeps the dashboard and the simulated GitLab running");
        }
        daemon.stop(false).await;
        drop(sim);
        if ok { Ok(()) } else { Err(Failure::general(failure_summary(&outcomes))) }
    }
}

/// A new folder for this run of the demo: `<state dir>/demo/<local time>`.
fn new_demo_dir() -> Result<PathBuf, Failure> {
    let base = crate::config::parse("", Path::new("cloudci.toml"))?.state_dir().join("demo");
    std::fs::create_dir_all(&base)?;
    let stamp = chrono::Local::now().format("%Y-%m-%d_%H%M%S").to_string();
    for n in 0..1000 {
        let dir = if n == 0 { base.join(&stamp) } else { base.join(format!("{stamp}_{n}")) };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(Failure::general(format!("no free folder name under {}", base.display())))
}

/// The demo's `cloudci.toml`: loopback listeners, the state under `state`, one target per board:
/// a pipeline per board told apart by `BOARD` (the CI file's one-board shape), or with `matrix`,
/// each board's jobs of one pipeline (its board matrix).
fn config_text(state: &Path, hook_port: u16, api_port: u16, matrix: bool) -> String {
    let state = state.display().to_string().replace('\\', "\\\\");
    let mut text = format!(
        r#"# Written by `cloudci demo`: use it with `cloudci --config <this file> status`.
[webhook]
listen = "127.0.0.1:{hook_port}"
tunnel = "none"
public_url = "http://127.0.0.1:{hook_port}"
reconcile_after = 5
[api]
listen = "127.0.0.1:{api_port}"
[store]
path = "{state}"
"#
    );
    for (name, description, board) in TARGETS {
        let select = if matrix {
            format!("matrix = {{ BOARD = \"{board}\" }}")
        } else {
            format!("variables = {{ TARGET = \"{name}\", BOARD = \"{board}\", CLOUDCI_MODE = \"board\" }}")
        };
        text.push_str(&format!("[targets.{name}]\ndescription = \"{description}\"\n{select}\n"));
    }
    let names: Vec<String> = TARGETS.iter().map(|(name, _, _)| format!("\"{name}\"")).collect();
    text.push_str(&format!(
        r#"[projects.firmware]
gitlab = "demo/firmware"
targets = [{}]
after_success = {{ merge_request = {{ target_branch = "main", title = "Add feature (built by cloudci demo)" }} }}
"#,
        names.join(", ")
    ));
    text
}

/// A build the demo counts as done: it succeeded with its firmware fetched, or its runner could
/// not build it (skipped, saying why, by a pipeline that passed); the merge request opened.
fn completed(o: &BuildOutcome) -> bool {
    let done = match o.status {
        BuildStatus::Success => o.artifacts.is_some(),
        BuildStatus::Skipped => o.pipeline_url.is_some(),
        _ => false,
    };
    done && o.merge_request.is_some()
}

/// The end of the first failed job's log (`error.log`), where the reason usually is.
fn show_first_failure(show: &dyn Reporter, run_dir: &Path) {
    let path = run_dir.join("error.log");
    let Ok(text) = std::fs::read_to_string(&path) else { return };
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(8);
    show.line("demo", &format!("the first failure, from {}:", path.display()));
    for line in &lines[from..] {
        show.line("demo", &format!("  {line}"));
    }
}

fn failure_summary(outcomes: &[BuildOutcome]) -> String {
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| !completed(o))
        .map(|o| format!("{}/{}: {}", o.project, o.target, o.reason.clone().unwrap_or_else(|| o.status.to_string())))
        .collect();
    format!("the demo did not complete: {}", bad.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of `examples/firmware` (but what a build writes) is in the binary.
    #[test]
    fn the_embedded_firmware_is_the_whole_example() {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
                if rel == "out" {
                    continue;
                }
                if path.is_dir() { walk(&path, root, out) } else { out.push(rel) }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/firmware");
        let mut on_disk = Vec::new();
        walk(&root, &root, &mut on_disk);
        on_disk.sort();
        let embedded: Vec<String> = FIRMWARE.iter().map(|(name, _)| (*name).to_owned()).collect();
        assert_eq!(embedded, on_disk);
    }

    #[test]
    fn the_config_names_every_board() {
        let text = config_text(Path::new("/tmp/state"), 1, 2, false);
        let config = crate::config::parse(&text, Path::new("/tmp/cloudci.toml")).unwrap();
        let targets: Vec<&str> = config.projects["firmware"].targets.iter().map(|t| t.get_ref().as_str()).collect();
        assert_eq!(targets, ["host", "mps2-an386", "microbit"]);
        assert_eq!(config.targets["microbit"].variables["BOARD"], "microbit");
        assert!(config.targets["microbit"].selector().is_none());
        assert_eq!(config.state_dir(), Path::new("/tmp/state"));
        let text = config_text(Path::new("/tmp/state"), 1, 2, true);
        let config = crate::config::parse(&text, Path::new("/tmp/cloudci.toml")).unwrap();
        let microbit = config.targets["microbit"].selector().unwrap();
        assert!(microbit.matches("firmware: [microbit]") && microbit.matches("selftest: [microbit]"));
        assert!(!microbit.matches("firmware: [host]") && !microbit.matches("build"));
    }
}
