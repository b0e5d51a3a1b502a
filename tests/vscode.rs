//! The VS Code extension in a real VS Code: gitlab-sim and `cloudci serve` run here, code-server
//! (VS Code for the browser, from npm) opens a clone of the project with the packaged `.vsix`
//! installed, and headless Chromium (Debian's, through playwright-core) drives the workbench:
//! build from the command palette, the status bar through the live statuses, the log tab while
//! the job runs, one notification, the tree, cancel and retry, a failing self-test.
//!
//! Needs code-server in `tests/vscode/node_modules` (`tests/vscode/install.sh`; `.ci/run` runs
//! it) and Chromium. Without them the test is skipped with the reason printed — unless `CI=true`
//! or `CLOUDCI_VSCODE_E2E` is set, when it installs code-server itself and fails if it cannot.
//! Screenshots land in `target/tmp/vscode-e2e/`; their paths are printed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use common::*;
use gitlab_sim::{Sim, SimConfig};
use serde_json::Value;

const TOKEN: &str = "sim-token-for-vscode";

/// Two jobs: `build` prints its progress for eight seconds (the log tab follows it), `selftest`
/// fails for the `broken` board with a `file:line` message.
const CI: &str = r#"stages: [build, test]
build:
  stage: build
  script:
    - echo "compiling firmware for $BOARD"
    - for i in 1 2 3 4 5 6 7 8; do echo "step $i of 8"; sleep 1; done
    - mkdir -p out && echo "firmware $BOARD" > out/fw.bin
  artifacts:
    paths: [out/]
selftest:
  stage: test
  script:
    - echo "self-test on $BOARD"
    - 'if [ "$BOARD" = broken ]; then echo "selftest.c:42: assertion failed: crc == 0x1d0f"; exit 1; fi'
    - echo "self-test passed"
"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var_os("CLOUDCI_VSCODE_E2E").is_some()
}

/// Runs `cmd`, panicking with its output when it fails.
fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// code-server's launcher, or why the test cannot run here.
fn code_server() -> Result<PathBuf, String> {
    let dir = root().join("tests/vscode");
    let bin = dir.join("node_modules/.bin/code-server");
    let installed = || bin.exists() && dir.join("node_modules/playwright-core").is_dir();
    if !installed() {
        if !required() {
            return Err("code-server is not installed: run tests/vscode/install.sh (needs libkrb5-dev pkg-config \
                 ripgrep; .ci/run does it), or set CLOUDCI_VSCODE_E2E=1 to install it here and fail if it cannot"
                .into());
        }
        run(Command::new("bash").arg(dir.join("install.sh")), "tests/vscode/install.sh");
    }
    Ok(bin)
}

fn newest(dir: &Path) -> SystemTime {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() { newest(&e.path()) } else { m.modified().unwrap() }
        })
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The packaged extension, rebuilt when its sources are newer than the `.vsix`.
fn vsix() -> PathBuf {
    let dir = root().join("ide/vscode");
    let vsix = dir.join("cloudci.vsix");
    if !dir.join("node_modules/.bin/vsce").exists() {
        run(
            Command::new("npm").args(["install", "--no-audit", "--no-fund", "--silent"]).current_dir(&dir),
            "npm install",
        );
    }
    let sources =
        newest(&dir.join("src")).max(std::fs::metadata(dir.join("package.json")).unwrap().modified().unwrap());
    let built = std::fs::metadata(&vsix).and_then(|m| m.modified()).ok();
    if built.is_none_or(|b| b < sources) {
        run(Command::new("npm").args(["run", "--silent", "package"]).current_dir(&dir), "packaging the extension");
    }
    vsix
}

fn config(ws: &Path, hook_port: u16, api_port: u16) -> PathBuf {
    let text = format!(
        r#"[webhook]
listen = "127.0.0.1:{hook_port}"
tunnel = "none"
public_url = "http://127.0.0.1:{hook_port}"
reconcile_after = 5

[api]
listen = "127.0.0.1:{api_port}"

[store]
path = "../state"

[targets.host]
variables = {{ BOARD = "host" }}

[targets.broken]
variables = {{ BOARD = "broken" }}

[projects.firmware]
gitlab = "acme/firmware"
targets = ["host", "broken"]
after_success = {{ merge_request = {{ target_branch = "main" }} }}
"#
    );
    let path = ws.join("cloudci.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extension_builds_follows_cancels_and_retries_in_vs_code() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let code_server = match code_server() {
        Ok(c) if Path::new(&chromium).exists() => c,
        Ok(_) if required() => panic!("this test needs Chromium at {chromium}: apt-get install chromium"),
        Ok(_) => return println!("skipped: no Chromium at {chromium} (apt-get install chromium)"),
        Err(why) => return println!("skipped: {why}"),
    };
    let vsix = vsix();
    cloudci_gitlab::install_tls_provider();

    let dir = tempfile::tempdir().unwrap();
    let repo = gitlab_sim::fixtures::repo_with(dir.path(), "repo", &[(".gitlab-ci.yml", CI)]);
    let sim = Sim::start(SimConfig {
        token: TOKEN.into(),
        projects: vec![("acme/firmware".into(), repo.clone())],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    // The workspace: a clone on the branch to build, with the project's cloudci.toml.
    let ws = dir.path().join("ws");
    run(Command::new("git").arg("clone").arg("-q").arg(&repo).arg(&ws), "git clone");
    run(Command::new("git").current_dir(&ws).args(["checkout", "-q", "feature"]), "git checkout");
    let (hook_port, api_port) = (free_port(), free_port());
    let config = config(&ws, hook_port, api_port);
    let daemon = serve(&config, sim.url(), TOKEN, &[]);

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vscode-e2e");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut node = tokio::process::Command::new("node");
    node.arg(root().join("tests/vscode/e2e.mjs"))
        .env("CODE_SERVER", &code_server)
        .env("VSIX", &vsix)
        .env("WORKSPACE", &ws)
        .env("SCRATCH", dir.path().join("vscode"))
        .env("SHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_STATE_HOME", home.join(".local/state"))
        .env_remove("CLOUDCI_TOKEN")
        .env_remove("CLOUDCI_URL")
        .env_remove("CLOUDCI_CONFIG")
        .env_remove("GITLAB_TOKEN")
        .kill_on_drop(true);
    let out = node.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for shot in std::fs::read_dir(&shots).unwrap().filter_map(Result::ok) {
        println!("screenshot: {}", shot.path().display());
    }
    drop(daemon);
    assert!(out.status.success(), "the VS Code script failed:\n{stderr}\n{stdout}");
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no summary from the script ({e}):\n{stdout}\n{stderr}"));
    println!("{seen:#}");

    // The status bar went through the live statuses, in order, to success.
    let texts: Vec<&str> = seen["statusbar"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let at = |needle: &str| texts.iter().position(|t| t.contains(needle));
    let (running, success) = (at("feature: running host › build"), at("feature: success"));
    assert!(running.is_some() && success.is_some() && running < success, "{texts:?}");
    assert_eq!(seen["success_notifications"], 1, "{seen}");
    assert!(seen["log_while_running"].as_str().unwrap().contains("step 1 of 8"), "{seen}");
    assert!(seen["log_final"].as_str().unwrap().contains("── build: success ──"), "{seen}");
    let tree = seen["tree"].as_array().unwrap().iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n");
    for want in ["firmware @ feature", "host", "build", "selftest"] {
        assert!(tree.contains(want), "the tree lacks {want:?}:\n{tree}");
    }
    assert!(at("feature: canceled").is_some(), "{texts:?}");
    // The merge request opened in a browser tab: code-server routes localhost links through its
    // /proxy/PORT/ path, so the tab shows the sim's port; the extension's output shows the link.
    let port = sim.url().rsplit(':').next().unwrap().trim_end_matches('/').to_owned();
    let opened = seen["merge_request"].as_str().unwrap();
    assert!(opened.starts_with(sim.url()) || opened.contains(&format!("/proxy/{port}/")), "{seen}");
    let logged = seen["merge_request_logged"].as_str().unwrap();
    assert!(
        logged.contains(&format!("{}/acme/firmware/-/merge_requests/", sim.url().trim_end_matches('/'))),
        "{logged}"
    );
    let tree_final = seen["tree_final"].as_array().unwrap();
    assert!(
        tree_final
            .iter()
            .any(|r| r.as_str().unwrap().starts_with("broken") && r.as_str().unwrap().contains("failed · build 3")),
        "{tree_final:?}"
    );
    assert!(seen["failure_notification"].as_str().unwrap().contains("selftest.c:42: assertion failed"), "{seen}");
}
