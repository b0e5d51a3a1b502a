//! Several users with their own tokens, project and group members with GitLab's access levels,
//! and the answers GitLab gives to each role on the endpoints cloudci uses — over real HTTP.

mod common;

use common::team::*;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const SIMPLE_CI: &str = "build:\n  script: echo built\n";

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_authenticates_as_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let sim = team_sim(dir.path(), SIMPLE_CI, |_| {}).await;

    let (status, me) = get_as(&sim, "alice", "/user").await;
    assert_eq!(status, 200);
    assert_eq!((me["id"].as_u64(), me["username"].as_str()), (Some(2), Some("alice")));
    let gaps = missing_keys(&sample("api-user.json"), &me);
    assert!(gaps.is_empty(), "GET /user lacks {gaps:?}");
    let (_, root) = get_as(&sim, "root", "/user").await;
    assert_eq!((root["id"].as_u64(), root["username"].as_str()), (Some(1), Some("root")));
    let (_, erin) = get_as(&sim, "erin", "/user").await;
    assert_eq!(erin["username"], "erin");

    for bad in ["", "alice-token-000", "nobody"] {
        let resp = reqwest::Client::new()
            .get(format!("{}/api/v4/user", sim.url()))
            .header("PRIVATE-TOKEN", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.json::<Value>().await.unwrap(), json!({"message": "401 Unauthorized"}));
    }
    // Bearer works as well as PRIVATE-TOKEN.
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v4/user", sim.url()))
        .bearer_auth(token("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["username"], "bob");

    let (status, alice) = get_as(&sim, "dave", "/users/2").await;
    assert_eq!((status, alice["username"].as_str()), (200, Some("alice")));
    assert!(alice.get("email").is_none(), "a public profile has no email");
    let (status, body) = get_as(&sim, "dave", "/users/99").await;
    assert_eq!((status, message(&body)), (404, "404 User Not Found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_all_gives_the_effective_level_inherited_included() {
    let dir = tempfile::tempdir().unwrap();
    let sim = team_sim(dir.path(), SIMPLE_CI, |_| {}).await;
    let level = |v: &Value| v["access_level"].as_u64();

    // alice 2, bob 3, carol 4, dave 5, erin 6, frank 7.
    let (status, alice) = get_as(&sim, "root", "/projects/1/members/all/2").await;
    assert_eq!((status, level(&alice)), (200, Some(30)));
    let gaps = missing_keys(&sample("api-member.json"), &alice);
    assert_eq!(gaps, vec!["created_by".to_owned()], "declared at start, so no one added alice");
    let (_, erin) = get_as(&sim, "root", "/projects/acme%2Ffirmware/members/all/6").await;
    assert_eq!(level(&erin), Some(40), "a group Maintainer is a Maintainer of its projects");
    let (_, erin_sub) = get_as(&sim, "root", "/projects/acme%2Ftools%2Fcli/members/all/6").await;
    assert_eq!(level(&erin_sub), Some(40), "and of its subgroups' projects");
    let (_, root) = get_as(&sim, "root", "/projects/1/members/all/1").await;
    assert_eq!(level(&root), Some(50), "root owns the groups it made");

    for path in ["/projects/1/members/all/5", "/projects/1/members/6", "/projects/3/members/all/6"] {
        let (status, body) = get_as(&sim, "root", path).await;
        assert_eq!((status, body), (404, json!({"message": "404 Not found"})), "{path}");
    }
    let (status, body) = get_as(&sim, "root", "/projects/1/members/all/x").await;
    assert_eq!((status, body), (400, json!({"error": "user_id is invalid"})));

    let (_, all) = get_as(&sim, "bob", "/projects/1/members/all").await;
    let listed: Vec<(u64, u64)> =
        all.as_array().unwrap().iter().map(|m| (m["id"].as_u64().unwrap(), level(m).unwrap())).collect();
    assert_eq!(listed, vec![(1, 50), (2, 30), (3, 20), (4, 10), (6, 40), (7, 50)]);
    let (_, direct) = get_as(&sim, "bob", "/projects/1/members").await;
    assert_eq!(direct.as_array().unwrap().len(), 3, "direct members only: {direct}");
    let (_, group) = get_as(&sim, "erin", "/groups/acme/members/all").await;
    let ids: Vec<u64> = group.as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 6, 7]);
    let (_, found) = get_as(&sim, "root", "/projects/1/members/all?query=car").await;
    assert_eq!(found.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_gets_gitlabs_answer() {
    let dir = tempfile::tempdir().unwrap();
    let sim = team_sim(dir.path(), SIMPLE_CI, |_| {}).await;
    let post = |user: &'static str, path: &'static str, body: Value| call(&sim, user, Method::POST, path, Some(body));

    // Creating pipelines: Developer, and only Maintainers on the protected default branch.
    let (status, body) = post("bob", "/projects/1/pipeline", json!({"ref": "feature"})).await;
    assert_eq!((status, message(&body)), (403, "403 Forbidden"));
    let (status, body) = post("alice", "/projects/1/pipeline", json!({"ref": "main"})).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["message"]["base"][0],
        "You do not have sufficient permission to run a pipeline on 'main'. Please select a different branch or \
         contact your administrator for assistance."
    );
    let (status, on_feature) = post("alice", "/projects/1/pipeline", json!({"ref": "feature"})).await;
    assert_eq!(status, 201, "{on_feature}");
    let (status, _) = post("erin", "/projects/1/pipeline", json!({"ref": "main"})).await;
    assert_eq!(status, 201, "a Maintainer may run pipelines on main");
    let id = on_feature["id"].as_u64().unwrap();

    // Reading them: Reporter, and Guests while "public pipelines" is on (the default).
    for user in ["bob", "carol"] {
        assert_eq!(get_as(&sim, user, &format!("/projects/1/pipelines/{id}")).await.0, 200, "{user}");
        assert_eq!(get_as(&sim, user, &format!("/projects/1/pipelines/{id}/jobs")).await.0, 200, "{user}");
    }
    // Guests of a private project do not see its code; others' projects are hidden.
    assert_eq!(get_as(&sim, "carol", "/projects/1/repository/branches").await.0, 403);
    assert_eq!(get_as(&sim, "bob", "/projects/1/repository/branches").await.0, 200);
    for path in ["/projects/1", "/projects/acme%2Ffirmware/pipelines", "/projects/1/hooks"] {
        let (status, body) = get_as(&sim, "dave", path).await;
        assert_eq!((status, message(&body)), (404, "404 Project Not Found"), "{path}");
    }
    let (status, body) = get_as(&sim, "alice", "/projects/3/pipelines").await;
    assert_eq!((status, message(&body)), (404, "404 Project Not Found"));

    // Jobs, their logs and artifacts follow the pipelines; acting on them is a Developer's.
    let (_, jobs) = get_as(&sim, "bob", &format!("/projects/1/pipelines/{id}/jobs")).await;
    let job = jobs[0]["id"].as_u64().unwrap();
    for path in [format!("/projects/1/jobs/{job}"), format!("/projects/1/jobs/{job}/trace")] {
        let resp = reqwest::Client::new()
            .get(format!("{}/api/v4{path}", sim.url()))
            .header("PRIVATE-TOKEN", token("bob"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(get_as(&sim, "dave", &path).await.0, 404, "{path}");
    }
    assert_eq!(call(&sim, "bob", Method::POST, &format!("/projects/1/jobs/{job}/cancel"), None).await.0, 403);
    let lint = json!({"content": SIMPLE_CI});
    assert_eq!(post("bob", "/projects/1/ci/lint", lint.clone()).await.0, 403);
    assert_eq!(post("alice", "/projects/1/ci/lint", lint).await.0, 200);

    // Retrying: Developer on feature, Maintainer on main.
    let retry = format!("/projects/1/pipelines/{id}/retry");
    assert_eq!(call(&sim, "bob", Method::POST, &retry, None).await.0, 403);
    assert_eq!(call(&sim, "alice", Method::POST, &retry, None).await.0, 201);

    // Hooks: Maintainer. Merge requests: Developer opens; merging into main is Maintainer's (401).
    assert_eq!(get_as(&sim, "alice", "/projects/1/hooks").await.0, 403);
    assert_eq!(get_as(&sim, "erin", "/projects/1/hooks").await.0, 200);
    let mr = json!({"source_branch": "feature", "target_branch": "main", "title": "t"});
    assert_eq!(post("bob", "/projects/1/merge_requests", mr.clone()).await.0, 403);
    let (status, opened) = post("alice", "/projects/1/merge_requests", mr).await;
    assert_eq!(status, 201);
    let merge = format!("/projects/1/merge_requests/{}/merge", opened["iid"]);
    let (status, body) = call(&sim, "alice", Method::PUT, &merge, None).await;
    assert_eq!((status, body), (401, json!({"message": "401 Unauthorized"})));

    // "Public pipelines" off: Guests no longer see pipelines; Reporters still do.
    let (status, _) = call(&sim, "erin", Method::PUT, "/projects/1", Some(json!({"public_jobs": false}))).await;
    assert_eq!(status, 200);
    assert_eq!(get_as(&sim, "carol", "/projects/1/pipelines").await.0, 403);
    for path in [format!("/projects/1/jobs/{job}/trace"), format!("/projects/1/jobs/{job}/artifacts")] {
        assert_eq!(get_as(&sim, "carol", &path).await.0, 403, "{path}");
    }
    assert_eq!(get_as(&sim, "bob", "/projects/1/pipelines").await.0, 200);

    // Visibility is the Owner's; a public project's pipelines are everyone's to see, not to run.
    let public = Some(json!({"visibility": "public", "public_jobs": true}));
    assert_eq!(call(&sim, "erin", Method::PUT, "/projects/1", public.clone()).await.0, 403);
    let (status, project) = call(&sim, "frank", Method::PUT, "/projects/1", public).await;
    assert_eq!((status, project["visibility"].as_str()), (200, Some("public")));
    assert_eq!(get_as(&sim, "dave", "/projects/1/pipelines").await.0, 200);
    assert_eq!(post("dave", "/projects/1/pipeline", json!({"ref": "feature"})).await.0, 403);
    let (_, as_dave) = get_as(&sim, "dave", "/projects/1").await;
    assert_eq!(as_dave["permissions"], json!({"project_access": null, "group_access": null}));
    let (_, as_alice) = get_as(&sim, "alice", "/projects/1").await;
    assert_eq!(as_alice["permissions"]["project_access"]["access_level"], 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_change_at_run_time_through_gitlabs_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let sim = team_sim(dir.path(), SIMPLE_CI, |_| {}).await;
    let dave_pipelines = || get_as(&sim, "dave", "/projects/1/pipelines");
    assert_eq!(dave_pipelines().await.0, 404);

    let add = json!({"user_id": 5, "access_level": 20});
    let (status, body) = call(&sim, "alice", Method::POST, "/projects/1/members", Some(add.clone())).await;
    assert_eq!((status, message(&body)), (403, "403 Forbidden"), "a Developer may not add members");
    let (status, added) = call(&sim, "erin", Method::POST, "/projects/1/members", Some(add.clone())).await;
    assert_eq!(status, 201, "{added}");
    assert_eq!((added["id"].as_u64(), added["access_level"].as_u64()), (Some(5), Some(20)));
    assert_eq!(added["created_by"]["username"], "erin");
    let gaps = missing_keys(&sample("api-member.json"), &added);
    assert!(gaps.is_empty(), "a member lacks {gaps:?}");
    assert_eq!(dave_pipelines().await.0, 200);

    let (status, body) = call(&sim, "erin", Method::POST, "/projects/1/members", Some(add)).await;
    assert_eq!((status, body), (409, json!({"message": "Member already exists"})));
    let (status, body) =
        call(&sim, "erin", Method::POST, "/projects/1/members", Some(json!({"user_id": 99, "access_level": 20}))).await;
    assert_eq!((status, message(&body)), (404, "404 User Not Found"));
    let (status, _) =
        call(&sim, "erin", Method::POST, "/projects/1/members", Some(json!({"user_id": 1, "access_level": 35}))).await;
    assert_eq!(status, 400, "not a level");
    let (status, _) =
        call(&sim, "erin", Method::POST, "/projects/1/members", Some(json!({"user_id": 3, "access_level": 35}))).await;
    assert_eq!(status, 409, "bob is a member already: that is checked first");
    let (status, body) = call(&sim, "erin", Method::POST, "/projects/1/members", Some(json!({"user_id": 5}))).await;
    assert_eq!((status, body), (400, json!({"error": "access_level is missing"})));
    let (status, _) = call(&sim, "erin", Method::PUT, "/projects/1/members/5", Some(json!({"access_level": 50}))).await;
    assert_eq!(status, 403, "a Maintainer may not make Owners");

    let (status, edited) = call(&sim, "erin", Method::PUT, "/projects/1/members/5?access_level=30", None).await;
    assert_eq!((status, edited["access_level"].as_u64()), (200, Some(30)));
    let (status, _) = call(&sim, "dave", Method::POST, "/projects/1/pipeline", Some(json!({"ref": "feature"}))).await;
    assert_eq!(status, 201, "a Developer now");

    // Revoked: hidden again, and no longer a member.
    let (status, _) = call(&sim, "erin", Method::DELETE, "/projects/1/members/5", None).await;
    assert_eq!(status, 204);
    assert_eq!(dave_pipelines().await.0, 404);
    assert_eq!(get_as(&sim, "root", "/projects/1/members/all/5").await.0, 404);
    let (status, _) = call(&sim, "erin", Method::DELETE, "/projects/1/members/5", None).await;
    assert_eq!(status, 404);

    // Group memberships change the same way, and reach every project of the group.
    let (status, _) =
        call(&sim, "erin", Method::POST, "/groups/acme/members", Some(json!({"user_id": 5, "access_level": 20}))).await;
    assert_eq!(status, 403, "group members are the group Owner's");
    let (status, _) =
        call(&sim, "frank", Method::POST, "/groups/acme/members", Some(json!({"user_id": 5, "access_level": 20})))
            .await;
    assert_eq!(status, 201);
    assert_eq!(get_as(&sim, "root", "/projects/2/members/all/5").await.1["access_level"], 20);
    assert_eq!(get_as(&sim, "dave", "/projects/2/pipelines").await.0, 200);
    assert_eq!(call(&sim, "frank", Method::DELETE, "/groups/acme/members/5", None).await.0, 204);
    assert_eq!(get_as(&sim, "dave", "/projects/2/pipelines").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_token_creates_is_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let sim = team_sim(dir.path(), MANUAL_CI, |_| {}).await;
    // A hook nobody listens on: its delivery log still records each payload.
    let hook = json!({"url": "http://127.0.0.1:9/nobody", "pipeline_events": true, "push_events": false, "merge_requests_events": true});
    let (status, hook) = call(&sim, "erin", Method::POST, "/projects/1/hooks", Some(hook)).await;
    assert_eq!(status, 201);

    let (_, pipeline) =
        call(&sim, "alice", Method::POST, "/projects/1/pipeline", Some(json!({"ref": "feature"}))).await;
    assert_eq!(pipeline["user"]["username"], "alice");
    let (_, jobs) = get_as(&sim, "bob", &format!("/projects/1/pipelines/{}/jobs", pipeline["id"])).await;
    assert_eq!(jobs[0]["user"]["username"], "alice");
    let (_, mine) = get_as(&sim, "bob", "/projects/1/pipelines?username=alice").await;
    assert_eq!(mine.as_array().unwrap().len(), 1);
    let (_, roots) = get_as(&sim, "bob", "/projects/1/pipelines?username=root").await;
    assert!(roots.as_array().unwrap().is_empty());
    let mr = json!({"source_branch": "feature", "target_branch": "main", "title": "t"});
    let (_, opened) = call(&sim, "alice", Method::POST, "/projects/1/merge_requests", Some(mr)).await;
    assert_eq!(opened["author"]["username"], "alice");

    let log = eventually(std::time::Duration::from_secs(20), || async {
        let (_, log) = get_as(&sim, "erin", &format!("/projects/1/hooks/{}/events", hook["id"])).await;
        (log.as_array().unwrap().len() == 3).then_some(log)
    })
    .await;
    for entry in log.as_array().unwrap() {
        assert_eq!(entry["request_data"]["user"]["username"], "alice", "{}", entry["trigger"]);
        assert_eq!(entry["request_data"]["user"]["email"], "alice@example.com");
    }
}
