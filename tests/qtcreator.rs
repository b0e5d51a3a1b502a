//! The Qt Creator integration (`ide/qtcreator/`): its External Tools definitions are what Qt
//! Creator 9's reader accepts, every command they name exists, and the loop they make — build,
//! status, follow the log, retry, cancel — works against gitlab-sim with `cloudci serve`, with
//! output shaped for Qt Creator's pane (a line per status change, `path:line:` for failures).
//! Needs Python 3 (the tools' helper and the XML check are Python, standard library only).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gitlab_sim::{Sim, SimConfig};
use serde_json::Value;

const TOKEN: &str = "sim-token-for-qtcreator";

const CI: &str = r#"stages: [build, test]
build:
  stage: build
  script:
    - echo "compiling firmware for $BOARD"
    - for i in 1 2 3 4 5 6; do echo "step $i of 6"; sleep 1; done
selftest:
  stage: test
  script:
    - 'if [ "$BOARD" = broken ]; then echo "selftest.c:42: assertion failed: crc == 0x1d0f"; exit 1; fi'
    - echo "self-test passed"
"#;

/// Qt Creator 9's `ExternalTool::createFromXml`, restated: the root, the allowed elements and
/// attribute values, at most one of each `<executable>` child but `<path>`. Prints the tools.
const CHECK: &str = r#"
import glob, json, sys, xml.etree.ElementTree as ET
OUT = {"showinpane", "replaceselection", "ignore"}
tools = []
for f in sorted(glob.glob(sys.argv[1] + "/*.xml")):
    root = ET.parse(f).getroot()
    assert root.tag == "externaltool", f"{f}: root <{root.tag}>, not <externaltool>"
    assert root.get("id"), f"{f}: missing or empty id attribute"
    seen = {}
    for el in root:
        assert el.tag in ("description", "displayname", "category", "order", "executable"), f"{f}: unknown <{el.tag}>"
        seen[el.tag] = seen.get(el.tag, 0) + 1
    assert seen.get("order", 0) <= 1, f"{f}: more than one <order>"
    if "order" in seen:
        assert int(root.find("order").text) >= 0, f"{f}: <order> must be a non-negative integer"
    assert seen.get("executable") == 1, f"{f}: needs one <executable>"
    ex = root.find("executable")
    for a in ("output", "error"):
        assert ex.get(a) is None or ex.get(a) in OUT, f"{f}: {a}={ex.get(a)!r}"
    assert ex.get("modifiesdocument") in (None, "yes", "true", "no", "false"), f"{f}: modifiesdocument"
    kids = [k.tag for k in ex]
    for k in kids:
        assert k in ("path", "arguments", "input", "workingdirectory", "baseEnvironmentId", "environment"), f"{f}: <{k}> in <executable>"
        assert k == "path" or kids.count(k) == 1, f"{f}: more than one <{k}>"
    assert "path" in kids, f"{f}: no <path>"
    tools.append({"file": f, "id": root.get("id"), "name": root.findtext("displayname"),
                  "category": root.findtext("category"), "paths": [p.text for p in ex.findall("path")],
                  "arguments": ex.findtext("arguments") or "", "workingdirectory": ex.findtext("workingdirectory"),
                  "output": ex.get("output")})
ids = [t["id"] for t in tools]
assert len(ids) == len(set(ids)), f"duplicate ids: {ids}"
print(json.dumps(tools))
"#;

fn python() -> String {
    std::env::var("CLOUDCI_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ide/qtcreator")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_tool_definitions_are_what_qt_creator_9_reads_and_name_real_commands() {
    let out = Command::new(python()).arg("-c").arg(CHECK).arg(tools_dir()).output().expect("this test needs Python 3");
    assert!(out.status.success(), "{}", text(&out));
    let tools: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut commands: Vec<&str> = tools.iter().map(|t| t["arguments"].as_str().unwrap()).collect();
    commands.sort_unstable();
    assert_eq!(commands, ["build", "cancel", "log", "retry", "status"]);
    for t in &tools {
        assert_eq!(t["category"], "cloudci", "{t}");
        assert_eq!(t["paths"][0], "cloudci-qtc", "{t}");
        assert_eq!(t["workingdirectory"], "%{CurrentProject:Path}", "{t}");
        assert_eq!(t["output"], "showinpane", "{t}");
    }
    // The helper's own commands, and the cloudci commands it runs, exist.
    let help = Command::new(python()).arg(tools_dir().join("cloudci-qtc")).arg("--help").output().unwrap();
    let help = text(&help);
    for c in &commands {
        assert!(help.contains(&format!("cloudci-qtc {c}")), "cloudci-qtc --help lacks {c}:\n{help}");
    }
    let cli = text(&Command::new(env!("CARGO_BIN_EXE_cloudci")).arg("--help").output().unwrap());
    let helper = std::fs::read_to_string(tools_dir().join("cloudci-qtc")).unwrap();
    for c in ["build", "status", "logs", "cancel", "retry"] {
        assert!(cli.lines().any(|l| l.trim_start().starts_with(&format!("{c} "))), "cloudci --help lacks {c}:\n{cli}");
        assert!(helper.contains(&format!("\"{c}\"")), "cloudci-qtc does not run cloudci {c}");
    }
}

/// Runs `cloudci-qtc ARGS` in `ws` with the test's cloudci.
fn qtc(ws: &Path, sim: &str, args: &[&str]) -> Command {
    let mut c = Command::new(python());
    c.arg(tools_dir().join("cloudci-qtc")).args(args).current_dir(ws);
    c.env("CLOUDCI", env!("CARGO_BIN_EXE_cloudci")).env("GITLAB_HOST", sim).env("GITLAB_TOKEN", TOKEN);
    c.env_remove("CLOUDCI_LOG").env_remove("CLOUDCI_TOKEN").env_remove("CLOUDCI_CONFIG");
    c
}

fn statuses(ws: &Path, sim: &str) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudci"))
        .args(["status", "--json"])
        .current_dir(ws)
        .env("GITLAB_HOST", sim)
        .env("GITLAB_TOKEN", TOKEN)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn wait_running(ws: &Path, sim: &str, run: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let all = statuses(ws, sim);
        let mine: Vec<_> = all.iter().filter(|b| b["run"] == run).collect();
        if !mine.is_empty() && mine.iter().all(|b| b["jobs"]["build"]["status"] == "running") {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("run {run} never ran: {:#?}", statuses(ws, sim));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_build_follow_retry_and_cancel_against_gitlab_sim() {
    let dir = tempfile::tempdir().unwrap();
    let repo = gitlab_sim::fixtures::repo_with(dir.path(), "repo", &[(".gitlab-ci.yml", CI)]);
    let sim = Sim::start(SimConfig {
        token: TOKEN.into(),
        projects: vec![("acme/firmware".into(), repo.clone())],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let url = sim.url().to_owned();
    let ws = dir.path().join("ws");
    assert!(Command::new("git").arg("clone").arg("-q").arg(&repo).arg(&ws).status().unwrap().success());
    assert!(Command::new("git").current_dir(&ws).args(["checkout", "-q", "feature"]).status().unwrap().success());
    let (config, _, _) = write_config(
        &ws,
        "[targets.broken]\nvariables = { BOARD = \"broken\" }\n\n[projects.firmware]\ngitlab = \"acme/firmware\"\ntargets = [\"host\", \"broken\"]\n",
        5,
    );
    let _daemon = serve(&config, &url, TOKEN, &[]);

    tokio::task::spawn_blocking(move || {
        // Build: one line per status change, the failing self-test as a path:line link.
        let build = qtc(&ws, &url, &["build"]).stdout(Stdio::piped()).spawn().unwrap();
        wait_running(&ws, &url, 1);
        // Follow the log of a running job while the build goes on.
        let log = qtc(&ws, &url, &["log"]).output().unwrap();
        let log_text = text(&log);
        assert!(log_text.contains("step 1 of 6") && log_text.contains("step 6 of 6"), "{log_text}");
        let build = build.wait_with_output().unwrap();
        let out = text(&build);
        assert_eq!(build.status.code(), Some(1), "a build with a failed target fails:\n{out}");
        let has = |prefix: &str, words: &[&str]| {
            out.lines().any(|l| l.starts_with(prefix) && words.iter().all(|w| l.contains(w)))
        };
        assert!(has("[firmware/host] pipeline ", &["started: http"]), "{out}");
        assert!(has("[firmware/host] pipeline ", &[": success"]), "{out}");
        assert!(has("[firmware/broken] selftest: failed", &[]), "{out}");
        assert!(has("[firmware/broken] pipeline ", &[": failed"]), "{out}");
        assert!(!out.contains("step 3 of 6"), "job logs stay out of the build tool's pane:\n{out}");
        let link = |s: &str| {
            s.lines()
                .find(|l| l.contains("selftest.log:") && l.contains("selftest.c:42: assertion failed"))
                .map(str::to_owned)
        };
        let located = link(&out).unwrap_or_else(|| panic!("no path:line link:\n{out}"));
        let (path, rest) = located.split_once(".log:").unwrap();
        let line: usize = rest.split(':').next().unwrap().parse().unwrap();
        let log_file = std::fs::read_to_string(format!("{path}.log")).unwrap();
        assert!(log_file.lines().nth(line - 1).unwrap().contains("selftest.c:42"), "{located}");

        // Status: a line per target, the failure linked again; exit 1 while a target failed.
        let status = qtc(&ws, &url, &["status"]).output().unwrap();
        let s = text(&status);
        assert_eq!(status.status.code(), Some(1), "{s}");
        assert!(
            s.contains("firmware/host @ feature: success") && s.contains("firmware/broken @ feature: failed"),
            "{s}"
        );
        assert!(link(&s).is_some(), "{s}");

        // Retry: the failed target again (the self-test is still broken).
        let retry = qtc(&ws, &url, &["retry"]).output().unwrap();
        let r = text(&retry);
        assert!(r.contains("retry build 2 (firmware/broken)"), "{r}");
        assert_ne!(retry.status.code(), Some(0), "{r}");

        // Cancel: a running build of this branch.
        let again = qtc(&ws, &url, &["build"]).stdout(Stdio::piped()).spawn().unwrap();
        wait_running(&ws, &url, 2);
        let cancel = qtc(&ws, &url, &["cancel"]).output().unwrap();
        let c = text(&cancel);
        assert!(cancel.status.success(), "{c}");
        assert!(c.contains("cancel build 3") && c.contains("cancel build 4"), "{c}");
        let again = text(&again.wait_with_output().unwrap());
        assert!(again.contains("pipeline") && again.contains("canceled"), "{again}");
        let run2: Vec<Value> = statuses(&ws, &url).into_iter().filter(|b| b["run"] == 2).collect();
        assert!(run2.iter().all(|b| b["status"] == "canceled"), "{c}\n{run2:#?}");
    })
    .await
    .unwrap();
}
