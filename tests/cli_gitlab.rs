//! `cloudci gitlab ...` run as a real process against a loopback server: output, exit codes,
//! and no token on stderr.

use std::process::Command;

use axum::Router;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;

const TOKEN: &str = "glpat-CLI-SECRET-987";

async fn server() -> String {
    let app = Router::new().fallback(|uri: Uri, headers: axum::http::HeaderMap| async move {
        let authed = headers.get("private-token").and_then(|v| v.to_str().ok()) == Some(TOKEN);
        let path = uri.path();
        if !authed {
            return (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({"message": "401 Unauthorized"})))
                .into_response();
        }
        if path == "/api/v4/projects/acme%2Ffw/pipelines" {
            let list = serde_json::json!([
                {"id": 48, "iid": 2, "project_id": 1, "status": "running", "source": "api", "ref": "main",
                 "sha": "eb94b618fb5865b26e80fdd8ae531b7a63ad851a", "name": null,
                 "web_url": "http://x/acme/fw/-/pipelines/48", "created_at": "2016-08-12T10:06:04.561Z",
                 "updated_at": "2016-08-12T10:09:56.223Z"},
                {"id": 47, "iid": 1, "project_id": 1, "status": "success", "source": "push", "ref": "main",
                 "sha": "a91957a858320c0e17f3a0eca7cfacbff50ea29a", "name": null,
                 "web_url": "http://x/acme/fw/-/pipelines/47", "created_at": "2016-08-11T11:28:34.085Z",
                 "updated_at": "2016-08-11T11:32:35.169Z"}
            ]);
            return axum::Json(list).into_response();
        }
        (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({"message": "404 Project Not Found"}))).into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn cloudci(url: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudci"))
        .args(args)
        .env("GITLAB_HOST", url)
        .env("GITLAB_TOKEN", token)
        .env_remove("CLOUDCI_LOG")
        // No configuration anywhere: GITLAB_HOST alone names the server.
        .env_remove("CLOUDCI_CONFIG")
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelines_as_table_and_json_with_exit_codes() {
    let url = server().await;

    let (code, out, err) = cloudci(&url, TOKEN, &["gitlab", "pipelines", "acme/fw", "--limit", "5"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("STATUS"), "{out}");
    assert!(lines[1].starts_with("48") && lines[1].contains("running"), "{out}");
    assert_eq!(lines.len(), 3);

    let (code, out, _) = cloudci(&url, TOKEN, &["gitlab", "pipelines", "acme/fw", "--json", "--limit", "1"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], 48);
    assert_eq!(list[0]["ref"], "main");

    let (code, out, err) = cloudci(&url, "glpat-WRONG-TOKEN", &["gitlab", "pipelines", "acme/fw"]);
    assert_eq!(code, 3, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains("401"), "{err}");
    assert!(!err.contains("WRONG-TOKEN"));

    let (code, _, err) = cloudci(&url, TOKEN, &["gitlab", "pipeline", "nope/x", "5"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("404 Project Not Found") && !err.contains("CLI-SECRET"), "{err}");

    let (code, _, err) = cloudci(&url, TOKEN, &["gitlab", "pipeline", "create", "acme/fw", "--var", "NOEQUALS"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) =
        cloudci(&url, TOKEN, &["gitlab", "pipeline", "create", "acme/fw", "--ref", "main", "--var", "A B=1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a valid variable name"), "{err}");

    // Nothing listens on port 9 of loopback: a connection failure is exit 1, naming the host.
    let (code, _, err) = cloudci("http://127.0.0.1:9", TOKEN, &["gitlab", "pipelines", "acme/fw"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach 127.0.0.1:9: connection refused"), "{err}");
    assert!(!err.contains("CLI-SECRET"));
}

#[test]
fn completions_and_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudci")).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("_cloudci()") && script.contains("demo") && script.contains("serve"));
    let out = Command::new(env!("CARGO_BIN_EXE_cloudci")).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // `--json` is offered only where it does something.
    let out = Command::new(env!("CARGO_BIN_EXE_cloudci")).args(["gitlab", "trace", "--help"]).output().unwrap();
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("--json"));
    let out = Command::new(env!("CARGO_BIN_EXE_cloudci")).args(["gitlab", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("GITLAB_HOST") && help.contains("[gitlab] url") && help.contains("gitlab.com"), "{help}");
}
