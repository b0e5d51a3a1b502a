//! The dashboard in a real browser: headless Chromium (driven by playwright-core) loads
//! `cloudci demo --keep-serving`'s page, runs its script, and shows the builds and live events;
//! the token it was opened with leaves the address and stays out of the page's reach.
//! Needs Chromium at /usr/bin/chromium (or `$CHROMIUM`) and Node.js; `.ci/run` installs both
//! tools' packages, and this test installs playwright-core itself when missing.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

fn browser_tests() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir.join("node_modules/playwright-core").is_dir() {
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .output()
            .expect("this test needs Node.js and npm");
        assert!(out.status.success(), "npm install failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    dir
}

/// The status line of `GET url` (plain HTTP on loopback), with a blocking socket.
fn get_status(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or_default().to_owned()
}

/// The port of a `http://127.0.0.1:PORT/...` address.
fn url_port(url: &str) -> &str {
    url.trim_start_matches("http://").split(['/', '?']).next().unwrap().rsplit(':').next().unwrap()
}

#[test]
fn the_dashboard_shows_builds_and_live_events_in_a_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "this test needs Chromium at {chromium}: apt-get install chromium (.ci/run installs it)"
    );
    let scripts = browser_tests();
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_cloudci"))
        .args(["demo", "--keep-serving", "--dir"])
        .arg(dir.path().join("demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Everything the demo prints, up to its last line before it waits for Ctrl-C.
    let mut printed = Vec::new();
    for line in BufReader::new(demo.stdout.take().unwrap()).lines().map_while(Result::ok) {
        let last = line.starts_with("simulated GitLab: ");
        printed.push(line);
        if last {
            break;
        }
    }
    let url = printed
        .iter()
        .find_map(|l| l.strip_prefix("dashboard: ").map(str::to_owned))
        .unwrap_or_else(|| panic!("the demo printed no dashboard URL:\n{}", printed.join("\n")));
    // A one-time login code, and no token anywhere (a JWT's header starts `eyJ`).
    assert!(url.contains("/login?code="), "{url}");
    assert!(!printed.iter().any(|l| l.contains("eyJ") || l.contains("access_token")), "{}", printed.join("\n"));
    // Kept after the test (in target/tmp), for a person to look at.
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let (shot, build_shot) = (shots.join("dashboard.png"), shots.join("dashboard-build.png"));
    let out = Command::new("node")
        .arg(scripts.join("dashboard.mjs"))
        .arg(&url)
        .arg(&shot)
        .arg(&build_shot)
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    // The browser used the code: a second use is refused.
    let second_use = get_status(&url);
    let _ = demo.kill();
    let _ = demo.wait();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["conn"], "live");
    let builds = seen["builds"].as_array().unwrap();
    // The demo's three targets: the host build, and two boards that are skipped (not passed)
    // where the cross toolchain or QEMU is missing.
    assert_eq!(builds.len(), 3, "{seen}");
    let installed = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
    let boards_build = installed("arm-none-eabi-gcc") && installed("qemu-system-arm");
    for row in builds {
        assert_eq!(row[1], "firmware");
        let built = row[2] == "host" || boards_build;
        assert_eq!(row[4], if built { "success" } else { "skipped" }, "{row}");
    }
    let events: Vec<&str> = seen["events"].as_array().unwrap().iter().filter_map(|e| e.as_str()).collect();
    assert!(events.iter().any(|e| e.contains("demo/firmware pipeline → success")), "{events:?}");
    let links: Vec<&str> = seen["links"].as_array().unwrap().iter().filter_map(|e| e.as_str()).collect();
    assert!(links.iter().any(|l| l.ends_with("/demo/firmware/-/merge_requests/1")), "{links:?}");
    assert!(links.iter().any(|l| l.starts_with("/v1/builds/1/download")), "{links:?}");
    assert!(shot.exists());
    // The login traded its code for a cookie and left `/` in the address (and history); the
    // code is spent.
    assert!(!seen["address"].as_str().unwrap().contains("code="), "{seen}");
    assert!(second_use.starts_with("HTTP/1.1 401"), "the login code's second use: {second_use}");
    let token_seen = &seen["token"];
    assert!(seen["address"].as_str().unwrap().ends_with(&format!(":{}/", url_port(&url))), "{seen}");
    assert!(!token_seen["address"].as_str().unwrap().contains("access_token"), "{seen}");
    // The page's script never holds the token: the cookie is HttpOnly, and nothing is stored.
    assert_eq!(token_seen["cookie"], "", "{seen}");
    assert_eq!(token_seen["storage"], 0, "{seen}");
    // The cookie alone does not act: the page's changes carry X-Requested-With.
    assert_eq!(token_seen["bareRetry"], 403, "{seen}");
    // A page of another origin on this host: its read is refused and unreadable, its blind POST
    // refused.
    assert_eq!(seen["foreignAnswers"], serde_json::json!([403, 403]), "{seen}");
    assert!(seen["foreign"][0].as_str().is_some_and(|s| s.starts_with("blocked")), "{seen}");

    // Build 1's page: jobs by stage with their status, the selected job's log, links, actions.
    let build = &seen["build"];
    assert!(build["address"].as_str().unwrap().ends_with("#/builds/1"), "{build}");
    assert!(build["title"].as_str().unwrap().starts_with("#1 firmware / "), "{build}");
    assert_eq!(build["status"], "success", "{build}");
    let stages = build["stages"].as_array().unwrap();
    assert!(!stages.is_empty(), "{build}");
    let jobs: Vec<&Value> = stages.iter().flat_map(|s| s["jobs"].as_array().unwrap()).collect();
    assert!(jobs.iter().any(|j| j[1] == "success"), "{build}");
    assert!(stages.iter().all(|s| s["stage"].is_string()), "{build}");
    let selected = build["selected"].as_str().unwrap();
    assert_eq!(build["logJob"], format!("Log · {selected}"));
    assert!(build["log"].as_str().unwrap().contains("Job succeeded"), "{build}");
    let links: Vec<&str> = build["links"].as_array().unwrap().iter().filter_map(|e| e.as_str()).collect();
    assert!(links.iter().any(|l| l.ends_with("/demo/firmware/-/merge_requests/1")), "{links:?}");
    assert!(links.contains(&"/v1/builds/1/download"), "{links:?}");
    assert_eq!(build["cancel"], serde_json::json!({"present": true, "disabled": true}), "a finished build");
    assert_eq!(build["retry"], serde_json::json!({"present": true, "disabled": true}), "a successful build");
    if let Some(clicked) = build.get("clicked") {
        assert_ne!(clicked["job"], build["selected"]);
    }
    assert!(build_shot.exists());
    println!("screenshots: {} and {}", shot.display(), build_shot.display());
}
