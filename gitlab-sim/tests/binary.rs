//! The `gitlab-sim` binary: its first stdout line, its arguments, its errors.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

#[tokio::test]
async fn prints_its_address_first_and_serves() {
    cloudci_gitlab::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let repo = firmware_repo(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_gitlab-sim"))
        .args(["--listen", "127.0.0.1:0", "--token", TOKEN, "--seed", "3", "--faults", "drop=0.1"])
        .arg("--project")
        .arg(format!("acme/firmware={}", repo.display()))
        .arg("--state")
        .arg(dir.path().join("state"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let url = first.trim().strip_prefix("gitlab-sim listening on ").unwrap_or_else(|| panic!("{first:?}")).to_owned();
    assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"), "{url}");
    let resp = reqwest::Client::new()
        .get(format!("{url}/api/v4/projects/acme%2Ffirmware"))
        .header("PRIVATE-TOKEN", TOKEN)
        .send()
        .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let resp = resp.unwrap();
    assert_eq!(resp.status(), 200);
    let project: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(project["id"], 1);
}

#[test]
fn bad_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gitlab-sim"))
        .args(["--token", "t", "--project", &format!("acme/x={}", dir.path().display())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("project acme/x") && err.contains("git"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_gitlab-sim"))
        .args(["--token", "t", "--project", "acme/x=/tmp", "--faults", "explode=1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown fault"));
}

#[tokio::test]
async fn users_members_and_limits_come_from_flags() {
    cloudci_gitlab::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let repo = firmware_repo(dir.path());
    let users_file = dir.path().join("users");
    std::fs::write(&users_file, "# the team\n\nbob=bob-secret\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gitlab-sim"))
        .args(["--token", TOKEN, "--hook-rate-limit", "100", "--premium", "--visibility", "acme=internal"])
        .args(["--member", "acme/firmware=alice:developer", "--member", "acme=bob:reporter"])
        .arg("--project")
        .arg(format!("acme/firmware={}", repo.display()))
        .env("GITLAB_SIM_USERS", "alice=alice-secret")
        .arg("--users-file")
        .arg(&users_file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let url = first.trim().strip_prefix("gitlab-sim listening on ").unwrap_or_else(|| panic!("{first:?}")).to_owned();
    let get = |path: &str, token: &str| {
        reqwest::Client::new().get(format!("{url}/api/v4{path}")).header("PRIVATE-TOKEN", token).send()
    };
    let me = get("/user", "alice-secret").await;
    let alice = get("/projects/1/members/all/2", TOKEN).await;
    let bob = get("/projects/1/members/all/3", TOKEN).await;
    let group = get("/groups/acme", "bob-secret").await;
    let hooks = get("/groups/acme/hooks", TOKEN).await;
    let dropped = reqwest::get(format!("{url}/-/sim/hook-rate-limited")).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let json = |r: Result<reqwest::Response, reqwest::Error>| async move {
        r.unwrap().json::<serde_json::Value>().await.unwrap()
    };
    assert_eq!(json(me).await["username"], "alice");
    assert_eq!(json(alice).await["access_level"], 30);
    assert_eq!(json(bob).await["access_level"], 20, "inherited from the group");
    assert_eq!(json(group).await["visibility"], "internal");
    assert_eq!(hooks.unwrap().status(), 200, "--premium has group hooks");
    assert_eq!(json(dropped).await, serde_json::json!({}), "nothing over the limit yet");
}

#[test]
fn bad_team_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let repo = firmware_repo(dir.path());
    let project = format!("acme/firmware={}", repo.display());
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_gitlab-sim"))
            .args(["--token", "t", "--project", &project])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--member", "acme/firmware=alice:boss"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PATH=USER:ROLE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["--member", "acme/firmware=alice:developer"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user \"alice\""));
    let out = run(&["--user", "alice=t"]);
    assert_eq!(out.status.code(), Some(1), "alice's token is the administrator's");
    let out = run(&["--user", "alice=a", "--member", "nowhere=alice:guest"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a project nor a group"));
    let bad = dir.path().join("bad-users");
    std::fs::write(&bad, "alice=a\nbob\n").unwrap();
    let out = run(&["--users-file", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["--user", "alice=a", "--user", "alice=b"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("declared twice"));
}
