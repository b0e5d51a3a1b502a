//! A sim with a team: several projects in groups, users with their own tokens, and members.

use std::path::Path;
use std::time::Duration;

use gitlab_sim::{Sim, SimConfig, SimMember, SimUser};
use serde_json::Value;

use super::TOKEN;

/// A CI file whose only job waits for a person (and may not be skipped): creating a pipeline
/// sends exactly two Pipeline Hooks (`created`, then `manual`) at once, and nothing runs.
pub const MANUAL_CI: &str = "deploy:\n  when: manual\n  allow_failure: false\n  script: echo deploying\n";

/// The team: `(username, token)`.
pub const USERS: &[(&str, &str)] = &[
    ("alice", "alice-token-0001"),
    ("bob", "bob-token-0002"),
    ("carol", "carol-token-0003"),
    ("dave", "dave-token-0004"),
    ("erin", "erin-token-0005"),
    ("frank", "frank-token-0006"),
];

/// Who is what: alice Developer, bob Reporter, carol Guest of `acme/firmware`; erin Maintainer
/// and frank Owner of the group `acme`; dave nothing.
pub const MEMBERS: &[&str] = &[
    "acme/firmware=alice:developer",
    "acme/firmware=bob:reporter",
    "acme/firmware=carol:guest",
    "acme=erin:maintainer",
    "acme=frank:50",
];

/// The token of a team member.
pub fn token(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).map(|(_, t)| *t).unwrap_or(TOKEN)
}

/// Projects `acme/firmware` (1), `acme/tools/cli` (2, in a subgroup) and `beta/other` (3), each
/// its own repository with `ci`, with the team above.
pub async fn team_sim(dir: &Path, ci: &str, tweak: impl FnOnce(&mut SimConfig)) -> Sim {
    let mut projects = Vec::new();
    for (path, name) in [("acme/firmware", "fw"), ("acme/tools/cli", "cli"), ("beta/other", "other")] {
        let repo = gitlab_sim::fixtures::repo_with(dir, name, &[(".gitlab-ci.yml", ci)]);
        projects.push((path.to_owned(), repo));
    }
    let mut config = SimConfig {
        token: TOKEN.into(),
        users: USERS.iter().map(|(u, t)| format!("{u}={t}").parse::<SimUser>().unwrap()).collect(),
        members: MEMBERS.iter().map(|m| m.parse::<SimMember>().unwrap()).collect(),
        projects,
        ref_poll: Duration::from_millis(100),
        ..SimConfig::default()
    };
    tweak(&mut config);
    Sim::start(config).await.unwrap()
}

/// One API call as `user` (or root for any other name): status and JSON body (`Null` if none).
pub async fn call(sim: &Sim, user: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}/api/v4{path}", sim.url()))
        .header("PRIVATE-TOKEN", token(user));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `GET` as `user`.
pub async fn get_as(sim: &Sim, user: &str, path: &str) -> (u16, Value) {
    call(sim, user, reqwest::Method::GET, path, None).await
}
