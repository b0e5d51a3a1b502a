//! No token in a URL: the dashboard's login address carries a one-time code (`cloudci
//! dashboard`), which `GET /login` trades for an `HttpOnly`, `SameSite=Strict` cookie before it
//! sends the browser to `/`; the code works once; the API takes the cookie only on requests the
//! dashboard itself makes, and never takes a token from a URL. Over HTTP against a real
//! `cloudci serve` (no GitLab behind it: the answers come before any call to it).

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

const NO_GITLAB: &str = "http://127.0.0.1:9";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_trades_a_one_time_code_for_a_cookie_only_the_dashboard_can_use() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _, api_port) = write_config(dir.path(), "", 30);
    let _daemon = serve(&config, NO_GITLAB, "x", &["--no-hooks"]);
    let token = token(&config);
    let api = format!("http://127.0.0.1:{api_port}");
    let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    // The login address: this daemon's, a code and no token.
    let login = dashboard_url(&config);
    let code = login.strip_prefix(&format!("{api}/login?code=")).unwrap_or_else(|| panic!("{login}"));
    assert!(code.len() <= 64 && !code.contains(&token) && !token.contains(code), "{login}");
    // The trade: 303 to `/`, the cookie named for this port, HttpOnly, SameSite=Strict, Path=/.
    let trade = c.get(&login).send().await.unwrap();
    assert_eq!(trade.status(), StatusCode::SEE_OTHER);
    assert_eq!(trade.headers()["location"], "/");
    assert_eq!(trade.headers()["cache-control"], "no-store");
    let set = trade.headers()["set-cookie"].to_str().unwrap().to_owned();
    let name = format!("cloudci_token_{api_port}");
    assert!(set.starts_with(&format!("{name}=")), "{set}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.split(';').any(|a| a.trim() == attr), "{attr} missing: {set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    assert!(!cookie.contains(code), "the cookie holds a session token, not the code");

    // The code works once: a second use (a reload, the history, someone who saw the address)
    // is refused and sets nothing; so is a code that was never issued, and no code at all.
    for (what, url) in [
        ("a second use", login.clone()),
        ("a made-up code", format!("{api}/login?code={}{}", if code.starts_with('A') { 'B' } else { 'A' }, &code[1..])),
        ("no code", format!("{api}/login")),
    ] {
        let again = c.get(&url).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(again.headers().get("set-cookie").is_none(), "{what}");
        assert_eq!(again.headers()["cache-control"], "no-store");
        let body: Value = again.json().await.unwrap();
        assert_eq!(body["field"], "code", "{what}: {body}");
        assert!(body["error"].as_str().unwrap().contains("cloudci dashboard"), "{what}: {body}");
    }
    // A token in the old address form is not traded: the address is only cleared.
    let old = c.get(format!("{api}/?access_token={token}")).send().await.unwrap();
    assert_eq!(old.status(), StatusCode::SEE_OTHER);
    assert_eq!(old.headers()["location"], "/");
    assert!(old.headers().get("set-cookie").is_none());
    // The page itself, framed by nobody.
    let page = c.get(format!("{api}/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));

    // Reads by cookie, from the dashboard (same origin, or a browser that says nothing).
    for site in [None, Some("same-origin")] {
        let mut req = c.get(format!("{api}/v1/builds")).header("Cookie", &cookie);
        if let Some(s) = site {
            req = req.header("Sec-Fetch-Site", s);
        }
        assert_eq!(req.send().await.unwrap().status(), StatusCode::OK, "{site:?}");
    }
    // A page of another site or origin (another port of this host is `same-site`) is refused,
    // reads included.
    for site in ["same-site", "cross-site"] {
        let resp =
            c.get(format!("{api}/v1/builds")).header("Cookie", &cookie).header("Sec-Fetch-Site", site).send().await;
        let resp = resp.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{site}");
        assert_eq!(resp.json::<Value>().await.unwrap()["field"], "Cookie");
    }
    // A change by cookie needs X-Requested-With (a form or another origin cannot add it).
    let post = |csrf: bool| {
        let mut req = c.post(format!("{api}/v1/builds/999/cancel")).header("Cookie", &cookie);
        if csrf {
            req = req.header("X-Requested-With", "cloudci-dashboard");
        }
        req.send()
    };
    let refused = post(false).await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(refused.json::<Value>().await.unwrap()["field"], "X-Requested-With");
    // With it, the request is the token's: build 999 does not exist.
    assert_eq!(post(true).await.unwrap().status(), StatusCode::NOT_FOUND);
    // A bearer token needs no such header: a foreign page cannot send one.
    let bearer = c.post(format!("{api}/v1/builds/999/cancel")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(bearer.status(), StatusCode::NOT_FOUND);

    // A token in a URL is never taken, on any route.
    for path in ["/v1/builds", "/v1/events", "/v1/events/recent"] {
        let resp = c.get(format!("{api}{path}?access_token={token}")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // Another daemon's cookie (another port) is not this one's.
    let other = format!("cloudci_token_{}={token}", api_port.wrapping_add(1));
    let resp = c.get(format!("{api}/v1/builds")).header("Cookie", other).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_taken_before_a_restart_or_a_crash_stays_taken_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _, _) = write_config(dir.path(), "", 30);
    // No connection kept across the restarts: each request is the daemon of the moment's.
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let status = |url: String| {
        let c = c.clone();
        async move { c.get(url).send().await.unwrap().status() }
    };

    let daemon = serve(&config, NO_GITLAB, "x", &["--no-hooks"]);
    let (taken, unused) = (dashboard_url(&config), dashboard_url(&config));
    assert_eq!(status(taken.clone()).await, StatusCode::SEE_OTHER);
    assert_eq!(status(taken.clone()).await, StatusCode::UNAUTHORIZED);
    // A clean restart.
    assert!(daemon.terminate().success());
    let daemon = serve(&config, NO_GITLAB, "x", &["--no-hooks"]);
    assert_eq!(status(taken.clone()).await, StatusCode::UNAUTHORIZED, "replayed after a restart");
    // A code issued before the restart and never taken still works, once.
    assert_eq!(status(unused.clone()).await, StatusCode::SEE_OTHER);
    // A crash right after a take.
    let last = dashboard_url(&config);
    assert_eq!(status(last.clone()).await, StatusCode::SEE_OTHER);
    daemon.crash();
    let _daemon = serve(&config, NO_GITLAB, "x", &["--no-hooks"]);
    for (what, url) in [("taken before the crash", last), ("taken two starts ago", taken), ("taken after one", unused)]
    {
        assert_eq!(status(url).await, StatusCode::UNAUTHORIZED, "{what}");
    }
}
