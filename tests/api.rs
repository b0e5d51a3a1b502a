//! The local builds API of `cloudci serve`, over HTTP, against gitlab-sim.

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;
use gitlab_sim::{Sim, SimConfig};
use serde_json::{Value, json};

const TOKEN: &str = "sim-token-for-api";
const CI: &str = "build:\n  stage: build\n  script:\n    - mkdir -p out && echo \"firmware $BOARD\" > out/fw.bin\n  artifacts:\n    paths: [out/]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ide_plugin_flow_over_the_local_api() {
    let dir = tempfile::tempdir().unwrap();
    let repo = gitlab_sim::fixtures::repo_with(dir.path(), "repo", &[(".gitlab-ci.yml", CI)]);
    let sim = Sim::start(SimConfig {
        token: TOKEN.into(),
        projects: vec![("acme/firmware".into(), repo)],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let projects = "[projects.firmware]\ngitlab = \"acme/firmware\"\ntargets = [\"host\"]\nafter_success = { merge_request = { target_branch = \"main\" } }\n";
    let (config, _, api_port) = write_config(dir.path(), projects, 5);
    let _daemon = serve(&config, sim.url(), TOKEN, &[]);
    let api = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();
    let token = token(&config);

    // OpenAPI document.
    let doc: Value = http.get(format!("{api}/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    for path in [
        "/v1/builds",
        "/v1/builds/{id}",
        "/v1/builds/{id}/log",
        "/v1/builds/{id}/download",
        "/v1/builds/{id}/source",
        "/v1/events",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }

    // Validation: each error names the field.
    let post = |body: Value, token: &str| http.post(format!("{api}/v1/builds")).bearer_auth(token).json(&body).send();
    let cases = [
        (json!({"projects": ["nope"]}), 404, "projects"),
        (json!({"projects": []}), 422, "projects"),
        (json!({"projects": ["firmware"], "targets": ["esp32"]}), 404, "targets"),
        (json!({"projects": ["firmware"], "colour": "blue"}), 400, "colour"),
    ];
    for (body, status, field) in cases {
        let resp = post(body.clone(), &token).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["field"], field, "{err}");
    }
    assert_eq!(post(json!({"projects": ["firmware"]}), "bad").await.unwrap().status(), 401);
    let resp = http.post(format!("{api}/v1/builds")).bearer_auth(&token).body("{not json").send().await.unwrap();
    assert_eq!(resp.status(), 400);

    // Start, follow, fetch.
    let resp = post(json!({"projects": ["firmware"], "ref": "feature"}), &token).await.unwrap();
    assert_eq!(resp.status(), 202);
    let started: Value = resp.json().await.unwrap();
    let id = started["builds"][0]["id"].as_i64().unwrap();
    assert_eq!(started["builds"][0]["url"], format!("/v1/builds/{id}"));
    let build = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let b: Value = http
                .get(format!("{api}/v1/builds/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if b["status"] == "success" && b["merge_request"].is_string() {
                break b;
            }
            assert!(tokio::time::Instant::now() < deadline, "{b}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(build["ref"], "feature");
    let list: Value =
        http.get(format!("{api}/v1/builds")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(list[0]["id"], id);

    let log = http.get(format!("{api}/v1/builds/{id}/log?job=build")).bearer_auth(&token).send().await.unwrap();
    let next: u64 = log.headers()["x-next-offset"].to_str().unwrap().parse().unwrap();
    let text = log.text().await.unwrap();
    assert!(text.contains("Job succeeded") && next == text.len() as u64);
    let rest =
        http.get(format!("{api}/v1/builds/{id}/log?job=build&offset={next}")).bearer_auth(&token).send().await.unwrap();
    assert!(rest.text().await.unwrap().is_empty());
    let missing = http.get(format!("{api}/v1/builds/{id}/log?job=deploy")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    let zip = http.get(format!("{api}/v1/builds/{id}/download")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(zip.headers()["content-type"], "application/zip");
    let bytes = zip.bytes().await.unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut fw = String::new();
    archive.by_name("out/fw.bin").unwrap().read_to_string(&mut fw).unwrap();
    assert_eq!(fw, "firmware host\n");

    let src = http.get(format!("{api}/v1/builds/{id}/source")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(src.status(), 200);
    let gz = src.bytes().await.unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "a gzip stream");

    let retry = http.post(format!("{api}/v1/builds/{id}/retry")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(retry.status(), 202);
    assert_eq!(retry.json::<Value>().await.unwrap()["status"], "running");
    // The retried pipeline (nothing failed, so nothing reran) is followed back to its final state.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let b: Value =
            http.get(format!("{api}/v1/builds/{id}")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        if b["status"] == "success" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cancel = http.post(format!("{api}/v1/builds/{id}/cancel")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(cancel.status(), 202);

    // A token for another project sees nothing of this one.
    let out = cloudci(&config, sim.url(), TOKEN, &["token", "issue", "--project", "acme/nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "unknown projects are refused when issuing");
    assert!(String::from_utf8_lossy(&out.stderr).contains("configured projects: acme/firmware"));
    let keys = cloudci(&config, sim.url(), TOKEN, &["token", "issue", "--project", "acme/firmware", "--ttl", "1m"])
        .output()
        .unwrap();
    let scoped = String::from_utf8_lossy(&keys.stdout).trim().to_owned();
    let b = http.get(format!("{api}/v1/builds/{id}")).bearer_auth(&scoped).send().await.unwrap();
    assert_eq!(b.status(), 200);
    assert_eq!(http.get(format!("{api}/v1/builds/abc")).bearer_auth(&token).send().await.unwrap().status(), 400);
    assert_eq!(http.get(format!("{api}/v1/builds/9999")).bearer_auth(&token).send().await.unwrap().status(), 404);
}
