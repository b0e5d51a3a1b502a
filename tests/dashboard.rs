//! The dashboard in a real browser: headless Chromium (driven by playwright-core) loads
//! `cloudci demo --keep-serving`'s page, runs its script, and shows the builds and live events.
//! Needs Chromium at /usr/bin/chromium (or `$CHROMIUM`) and Node.js; `.ci/run` installs both
//! tools' packages, and this test installs playwright-core itself when missing.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

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
    let url = BufReader::new(demo.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("dashboard: ").map(str::to_owned))
        .expect("the demo printed no dashboard URL");
    let shot = dir.path().join("dashboard.png");
    let out = Command::new("node")
        .arg(scripts.join("dashboard.mjs"))
        .arg(&url)
        .arg(&shot)
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    let _ = demo.kill();
    let _ = demo.wait();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["conn"], "live");
    let builds = seen["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 2, "{seen}");
    for row in builds {
        assert_eq!(row[1], "firmware");
        assert_eq!(row[4], "success", "{row}");
    }
    let events: Vec<&str> = seen["events"].as_array().unwrap().iter().filter_map(|e| e.as_str()).collect();
    assert!(events.iter().any(|e| e.contains("demo/firmware pipeline → success")), "{events:?}");
    let links: Vec<&str> = seen["links"].as_array().unwrap().iter().filter_map(|e| e.as_str()).collect();
    assert!(links.iter().any(|l| l.ends_with("/demo/firmware/-/merge_requests/1")), "{links:?}");
    assert!(links.iter().any(|l| l.starts_with("/v1/builds/1/download")), "{links:?}");
    assert!(shot.exists());
}
