//! Command-line hygiene, with the real binary against gitlab-sim: which server `cloudci gitlab`
//! talks to (configuration, then the environment over it), errors that name the host, quiet
//! broken pipes, exit codes, `--var` validation, state directory errors, `gitlab mr`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gitlab_sim::{Sim, SimConfig};
use serde_json::Value;

const TOKEN: &str = "sim-token-CLI-SECRET-4711";
const CI: &str = "build:\n  stage: build\n  script:\n    - echo building\n";

/// A temporary home for one test: a repository served by gitlab-sim as `acme/fw` (branches
/// `main` and `feature`, one commit ahead), and a directory to run `cloudci` in, away from any real configuration.
struct World {
    dir: tempfile::TempDir,
    sim: Sim,
}

impl World {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = gitlab_sim::fixtures::repo_with(dir.path(), "repo", &[(".gitlab-ci.yml", CI)]);
        let sim = Sim::start(SimConfig {
            token: TOKEN.into(),
            projects: vec![("acme/fw".into(), repo)],
            ..SimConfig::default()
        })
        .await
        .unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        Self { dir, sim }
    }

    /// Where `cloudci` runs (its `./cloudci.toml` is looked for here).
    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Writes `work/<name>` with `[gitlab] url = <gitlab_url>` (none when empty) and `extra`.
    fn config(&self, name: &str, gitlab_url: &str, extra: &str) -> PathBuf {
        let gitlab = if gitlab_url.is_empty() { String::new() } else { format!("[gitlab]\nurl = \"{gitlab_url}\"\n") };
        let text = format!(
            "{gitlab}{extra}\n[webhook]\ntunnel = \"none\"\npublic_url = \"http://127.0.0.1:9\"\n\n[store]\npath = \"state\"\n\n\
             [targets.host]\nvariables = {{ BOARD = \"host\" }}\n\n[projects.fw]\ngitlab = \"acme/fw\"\ntargets = [\"host\"]\n"
        );
        let path = self.work().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `cloudci args` in `work/`, with only the environment given (no GITLAB_HOST, GITLAB_TOKEN,
    /// CLOUDCI_CONFIG or user configuration unless listed).
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cloudci"));
        c.args(args).current_dir(self.work());
        for var in ["GITLAB_HOST", "GITLAB_TOKEN", "CLOUDCI_CONFIG", "CLOUDCI_LOG", "RUST_LOG"] {
            c.env_remove(var);
        }
        c.env("XDG_CONFIG_HOME", self.dir.path().join("xdg-config"));
        c.env("XDG_STATE_HOME", self.dir.path().join("xdg-state"));
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let out = self.command(args, env).output().unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN), "the token was printed: {stdout}{stderr}");
        (out.status.code().unwrap_or(-1), stdout, stderr)
    }

    /// Runs with stdout a pipe whose reader has already gone; returns the exit code and stderr.
    fn run_into_closed_pipe(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
        let mut child = self.command(args, env).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn token() -> (&'static str, &'static str) {
    ("GITLAB_TOKEN", TOKEN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_uses_the_configured_server_and_the_environment_overrides_it() {
    let w = World::start().await;
    // Another GitLab, without acme/fw, that accepts the same token: a 404 there (rather than a 401)
    // shows the token was sent to it.
    let other = Sim::start(SimConfig { token: TOKEN.into(), ..SimConfig::default() }).await.unwrap();
    let config = w.config("cloudci.toml", w.sim.url(), "");

    // --config, no GITLAB_HOST: the configured server (gitlab-sim), not gitlab.com.
    let config_arg = config.to_str().unwrap();
    let (code, out, err) =
        w.run(&["--config", config_arg, "gitlab", "pipeline", "create", "acme/fw", "--ref", "main"], &[token()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("pipeline 1 created: "), "{out}");
    // The default lookup (./cloudci.toml) finds the same server.
    let (code, out, err) = w.run(&["gitlab", "pipelines", "acme/fw"], &[token()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().nth(1).is_some_and(|l| l.starts_with("1 ") && l.contains("main")), "{out}");
    assert!(err.is_empty(), "{err}");

    // GITLAB_HOST wins over the file.
    let (code, _, err) = w.run(&["gitlab", "pipelines", "acme/fw"], &[token(), ("GITLAB_HOST", other.url())]);
    assert_eq!(code, 4, "{err}"); // the other sim has no acme/fw
    assert!(err.contains("404"), "{err}");

    // A token the file configures is never sent to another server: with the configured server it is
    // used; with GITLAB_HOST elsewhere only GITLAB_TOKEN is.
    std::fs::write(w.work().join("token"), TOKEN).unwrap();
    let with_file =
        w.config("file-token.toml", w.sim.url(), "token_env = \"CLOUDCI_TEST_NO_SUCH_VAR\"\ntoken_file = \"token\"\n");
    let with_file = with_file.to_str().unwrap();
    let (code, _, err) = w.run(&["--config", with_file, "gitlab", "pipelines", "acme/fw"], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        w.run(&["--config", with_file, "gitlab", "pipeline", "nope/x", "1"], &[("GITLAB_HOST", other.url())]);
    assert_eq!(code, 3, "the configured token went to another server: {err}");
    assert!(err.contains("401") && err.contains("no token was sent"), "{err}");

    // A --config that does not exist is an error, not a silent fallback to gitlab.com.
    let (code, _, err) = w.run(&["--config", "missing.toml", "gitlab", "pipelines", "acme/fw"], &[token()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_names_the_host() {
    let w = World::start().await;
    let port = common::free_port();
    let host = format!("http://127.0.0.1:{port}");
    let (code, _, err) = w.run(&["gitlab", "pipelines", "acme/fw"], &[token(), ("GITLAB_HOST", &host)]);
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{err}");
    assert!(last.contains(&format!("cannot reach 127.0.0.1:{port}: connection refused")), "{err}");
    assert!(!last.contains("error sending request") && !last.contains('?'), "{err}");
    // The client's retries are the library's log: not shown unless asked for.
    assert_eq!(err.lines().count(), 1, "{err}");
    let (_, _, err) = w.run(&["-v", "gitlab", "pipelines", "acme/fw"], &[token(), ("GITLAB_HOST", &host)]);
    assert!(err.contains("WARN") && err.lines().count() > 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_into_a_closed_pipe_ends_quietly() {
    let w = World::start().await;
    w.config("cloudci.toml", w.sim.url(), "");
    let (code, _, err) = w.run(&["gitlab", "pipeline", "create", "acme/fw", "--ref", "main"], &[token()]);
    assert_eq!(code, 0, "{err}");
    for args in [
        &["completions", "bash"][..],
        &["completions", "zsh"],
        &["status"],
        &["status", "--json"],
        &["gitlab", "pipelines", "acme/fw"],
        &["gitlab", "pipelines", "acme/fw", "--json"],
        &["gitlab", "jobs", "acme/fw", "1", "--json"],
        &["gitlab", "mr", "list", "acme/fw"],
        &["token", "issue"],
        &["--help"],
    ] {
        let (code, err) = w.run_into_closed_pipe(args, &[token()]);
        assert_eq!((code, err.as_str()), (0, ""), "cloudci {}", args.join(" "));
    }
    // `| head -1`: the reader takes one line and goes.
    let mut child =
        w.command(&["completions", "bash"], &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(first.contains("_cloudci"), "{first}");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_follow_the_table() {
    let w = World::start().await;
    w.config("cloudci.toml", w.sim.url(), "");
    let good = [token()];
    let (code, _, err) = w.run(&["gitlab", "pipeline", "create", "acme/fw", "--ref", "main"], &good);
    assert_eq!(code, 0, "{err}");

    // 3: a token GitLab refuses, in every command that talks to GitLab.
    let bad = [("GITLAB_TOKEN", "glpat-WRONG-TOKEN")];
    for args in [
        &["gitlab", "pipelines", "acme/fw"][..],
        &["gitlab", "pipeline", "acme/fw", "1"],
        &["gitlab", "pipeline", "create", "acme/fw", "--ref", "main"],
        &["gitlab", "jobs", "acme/fw", "1"],
        &["gitlab", "trace", "acme/fw", "1"],
        &["gitlab", "artifacts", "acme/fw", "1", "--output", "a.zip"],
        &["gitlab", "mr", "list", "acme/fw"],
        &["gitlab", "mr", "create", "acme/fw", "-s", "feature", "-t", "main", "--title", "x"],
        &["hooks", "list"],
        &["hooks", "install", "--url", "http://127.0.0.1:9"],
        &["hooks", "remove"],
    ] {
        let (code, _, err) = w.run(args, &bad);
        assert_eq!(code, 3, "cloudci {}: {err}", args.join(" "));
        assert!(err.lines().count() == 1 && err.contains("401") && !err.contains("WRONG-TOKEN"), "{err}");
    }
    // `cloudci build` too (its builds end as `error`; the summary goes to stdout).
    let (code, out, err) = w.run(&["build", "fw", "--json"], &bad);
    assert_eq!(code, 3, "cloudci build: {err}");
    assert!(out.contains("401") && !err.contains("WRONG-TOKEN"), "{out}{err}");
    let (code, _, err) = w.run(&["build", "fw", "--var", "A B=1"], &good);
    assert_eq!(code, 2, "{err}");
    // 3: no token at all where one is needed.
    let (code, _, err) = w.run(&["hooks", "list"], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no GitLab token"), "{err}");

    // 4: what does not exist.
    for args in [
        &["gitlab", "pipeline", "acme/fw", "999"][..],
        &["gitlab", "pipeline", "nope/x", "1"],
        &["gitlab", "pipelines", "nope/x"],
        &["gitlab", "jobs", "acme/fw", "999"],
        &["gitlab", "trace", "acme/fw", "999"],
        &["gitlab", "artifacts", "acme/fw", "999", "--output", "a.zip"],
        &["gitlab", "mr", "list", "nope/x"],
        &["status", "999"],
        &["logs", "999"],
        &["artifacts", "999", "--output", "out"],
    ] {
        let (code, _, err) = w.run(args, &good);
        assert_eq!(code, 4, "cloudci {}: {err}", args.join(" "));
    }

    // 2: usage.
    for args in [
        &["frobnicate"][..],
        &["gitlab", "pipeline", "acme/fw", "x"],
        &["gitlab", "trace", "acme/fw", "1", "--json"],
        &["token", "issue", "--project", "nope/x"],
        &["gitlab", "pipeline", "create", "acme/fw", "--ref", "main", "--var", "NOEQUALS"],
    ] {
        let (code, _, err) = w.run(args, &good);
        assert_eq!(code, 2, "cloudci {}: {err}", args.join(" "));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variable_names_are_checked_before_anything_is_sent() {
    let w = World::start().await;
    w.config("cloudci.toml", w.sim.url(), "");
    for flag in ["--var", "--file-var"] {
        let (code, _, err) =
            w.run(&["gitlab", "pipeline", "create", "acme/fw", "--ref", "main", flag, "A B=1"], &[token()]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("\"A B\" is not a valid variable name") && err.contains("letters, digits and _"), "{err}");
    }
    let (code, out, err) = w.run(&["gitlab", "pipelines", "acme/fw", "--json"], &[token()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), serde_json::json!([]), "a pipeline was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_requests_open_and_list() {
    let w = World::start().await;
    w.config("cloudci.toml", w.sim.url(), "");
    let good = [token()];
    let create = ["gitlab", "mr", "create", "acme/fw", "--source-branch", "feature", "--target-branch", "main"];
    let mut args = create.to_vec();
    args.extend(["--title", "Board support", "--description", "For the nucleo", "--json"]);
    let (code, out, err) = w.run(&args, &good);
    assert_eq!(code, 0, "{err}");
    let mr: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((mr["iid"].as_u64(), mr["state"].as_str()), (Some(1), Some("opened")), "{mr}");
    assert_eq!((mr["source_branch"].as_str(), mr["target_branch"].as_str()), (Some("feature"), Some("main")));
    assert_eq!(mr["description"], "For the nucleo");

    // The same again: GitLab refuses a second open one (409), exit 1.
    let mut again = create.to_vec();
    again.extend(["--title", "Again"]);
    let (code, _, err) = w.run(&again, &good);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("409") && err.contains("already exists"), "{err}");

    let (code, out, err) = w.run(&["gitlab", "mr", "list", "acme/fw"], &good);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("IID") && lines[0].contains("TITLE"), "{out}");
    assert!(lines[1].starts_with("!1 ") && lines[1].contains("feature → main") && lines[1].contains("Board support"));
    assert_eq!(lines.len(), 2, "{out}");

    let (code, out, _) = w.run(&["gitlab", "mr", "list", "acme/fw", "--json", "--source-branch", "feature"], &good);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["title"], "Board support");
    assert_eq!(list[0]["web_url"], mr["web_url"]);
    let (_, out, _) = w.run(&["gitlab", "mr", "list", "acme/fw", "--json", "--state", "merged"], &good);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), serde_json::json!([]));
    let (code, _, err) = w.run(&["gitlab", "mr", "list", "acme/fw", "--state", "sideways"], &good);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_json_on_every_action() {
    let w = World::start().await;
    w.config("cloudci.toml", w.sim.url(), "");
    let good = [token()];
    let (code, out, err) = w.run(&["hooks", "install", "--url", "http://127.0.0.1:9", "--json"], &good);
    assert_eq!(code, 0, "{err}");
    let installed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(installed[0]["project"], "fw", "{installed}");
    assert!(installed[0]["hook"]["id"].as_u64().is_some(), "{installed}");
    let (code, out, err) = w.run(&["hooks", "remove", "--json"], &good);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), serde_json::json!([{"project": "fw", "removed": 1}]));
    let (code, out, err) = w.run(&["hooks", "rotate", "--json"], &good);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), serde_json::json!([]));
}

/// Whether this process may read a directory it has no permission for (root may).
fn permissions_bypassed(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_directory_errors_name_the_path_and_the_cause() {
    let w = World::start().await;
    std::fs::write(w.work().join("plain-file"), "").unwrap();
    let through_file = w.config("file.toml", w.sim.url(), "");
    let text =
        std::fs::read_to_string(&through_file).unwrap().replace("path = \"state\"", "path = \"plain-file/state\"");
    std::fs::write(&through_file, text).unwrap();
    for args in [&["status"][..], &["token", "issue"], &["logs", "1"], &["hooks", "list"]] {
        let mut all = vec!["--config", through_file.to_str().unwrap()];
        all.extend_from_slice(args);
        let (code, _, err) = w.run(&all, &[token()]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("plain-file/state") && err.contains("plain-file is a file, not a directory"), "{err}");
    }

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let locked = w.work().join("locked");
        std::fs::create_dir_all(locked.join("state")).unwrap();
        std::fs::set_permissions(locked.join("state"), std::fs::Permissions::from_mode(0o000)).unwrap();
        if permissions_bypassed(&locked.join("state")) {
            eprintln!("skipping the unreadable-directory case: this user bypasses permissions (root)");
        } else {
            let config = w.config("locked.toml", w.sim.url(), "");
            let text = std::fs::read_to_string(&config).unwrap().replace("path = \"state\"", "path = \"locked/state\"");
            std::fs::write(&config, text).unwrap();
            let (code, _, err) = w.run(&["--config", config.to_str().unwrap(), "status"], &[]);
            assert_eq!(code, 1, "{err}");
            assert!(err.contains("locked/state") && err.contains("Permission denied"), "{err}");
        }
        std::fs::set_permissions(locked.join("state"), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}
