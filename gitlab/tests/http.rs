//! The client against a local HTTP server on loopback: pagination, retries, rate limits,
//! redirects, errors, timeouts, logs and downloads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cloudci_gitlab::types::{CreatePipeline, PipelineBasic};
use cloudci_gitlab::{Error, Gitlab, JobId, PipelineFilter, PipelineId, RetryPolicy};
use futures_util::TryStreamExt;
use secrecy::SecretString;

mod common;
use common::{Server, TOKEN, client, json, pipeline_json};

#[tokio::test]
async fn pages_are_followed_without_totals_by_link_and_by_next_page_header() {
    // Pages 1 and 2 carry a Link header; page 3 only x-next-page; page 4 is the last. No x-total.
    let server = Server::start(|req, _| {
        let page: u64 = req
            .uri
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("page="))
            .map(|p| p.parse().unwrap())
            .unwrap_or(1);
        let items: Vec<_> = (0..3).map(|i| pipeline_json(page * 10 + i)).collect();
        let mut resp = json(StatusCode::OK, serde_json::Value::Array(items));
        let h = resp.headers_mut();
        h.insert("x-page", page.to_string().parse().unwrap());
        h.insert("x-per-page", "3".parse().unwrap());
        if page < 3 {
            let host = req.headers["host"].to_str().unwrap();
            let link = format!(
                "<http://{host}/api/v4/projects/acme%2Ffw/pipelines?page={}&per_page=3&ref=main>; rel=\"next\", <http://{host}/api/v4/projects/acme%2Ffw/pipelines?page=1&per_page=3&ref=main>; rel=\"first\"",
                page + 1
            );
            h.insert("link", link.parse().unwrap());
        }
        h.insert("x-next-page", if page < 4 { (page + 1).to_string() } else { String::new() }.parse().unwrap());
        resp
    })
    .await;
    let gitlab = client(&server.url);
    let filter = PipelineFilter { git_ref: Some("main".into()), per_page: Some(3), ..Default::default() };
    let all: Vec<PipelineBasic> = gitlab.pipelines("acme/fw", &filter).try_collect().await.unwrap();
    let ids: Vec<u64> = all.iter().map(|p| p.id.0).collect();
    assert_eq!(ids, vec![10, 11, 12, 20, 21, 22, 30, 31, 32, 40, 41, 42]);
    let seen = server.seen();
    assert_eq!(seen.len(), 4);
    assert!(seen[0].uri.starts_with("/api/v4/projects/acme%2Ffw/pipelines?"), "{}", seen[0].uri);
    assert!(seen[0].uri.contains("ref=main") && seen[0].uri.contains("per_page=3"));
    assert!(seen[3].uri.contains("page=4"), "{}", seen[3].uri);

    // A consumer that stops early costs no further requests.
    let first_two: Vec<_> = gitlab.pipelines("acme/fw", &filter).take(2).try_collect::<Vec<_>>().await.unwrap();
    assert_eq!(first_two.len(), 2);
    assert_eq!(server.seen().len(), 5);
}

use futures_util::StreamExt;

#[tokio::test]
async fn a_next_link_to_another_host_is_not_followed() {
    let server = Server::start(|_, index| {
        let mut resp = json(StatusCode::OK, serde_json::json!([pipeline_json(index as u64)]));
        if index == 0 {
            resp.headers_mut().insert("link", "<http://evil.invalid/api/v4/x?page=2>; rel=\"next\"".parse().unwrap());
        }
        resp
    })
    .await;
    let all: Vec<PipelineBasic> =
        client(&server.url).pipelines(1u64, &PipelineFilter::default()).try_collect().await.unwrap();
    assert_eq!(all.len(), 1);
}

#[tokio::test]
async fn rate_limit_429_waits_for_retry_after_then_succeeds() {
    let server = Server::start(|_, index| {
        if index == 0 {
            // GitLab's throttle answers in plain text.
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1"), ("content-type", "text/plain")], "Retry later\n")
                .into_response()
        } else {
            json(StatusCode::OK, pipeline_json(7))
        }
    })
    .await;
    let started = Instant::now();
    let p = client(&server.url).pipeline("acme/fw", PipelineId(7)).await.unwrap();
    assert_eq!(p.id.0, 7);
    assert!(started.elapsed() >= Duration::from_millis(950), "did not honour Retry-After: {:?}", started.elapsed());
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn rate_limit_beyond_the_allowed_wait_is_reported_with_the_wait() {
    let server =
        Server::start(|_, _| (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "3600")], "Retry later").into_response())
            .await;
    let err = client(&server.url).pipeline(1u64, PipelineId(1)).await.unwrap_err();
    assert!(matches!(err, Error::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3600)), "{err}");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn a_502_then_success_is_retried_for_reads() {
    let server = Server::start(|_, index| {
        if index == 0 {
            (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response()
        } else {
            json(StatusCode::OK, pipeline_json(9))
        }
    })
    .await;
    let p = client(&server.url).pipeline(1u64, PipelineId(9)).await.unwrap();
    assert_eq!(p.id.0, 9);
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn a_pipeline_create_is_never_silently_sent_twice() {
    // A 502 after the POST may hide a pipeline that was created: report, do not retry.
    let server = Server::start(|_, _| (StatusCode::BAD_GATEWAY, "bad gateway").into_response()).await;
    let err = client(&server.url).create_pipeline("acme/fw", &CreatePipeline::new("main")).await.unwrap_err();
    assert!(matches!(err, Error::MaybeApplied { .. }), "{err}");
    assert!(err.to_string().contains("not retried"), "{err}");
    assert_eq!(server.seen().len(), 1, "the POST was repeated");

    // A 429 means GitLab did not act: that one is retried, once per 429.
    let server = Server::start(|_, index| {
        if index == 0 {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "0")], "Retry later").into_response()
        } else {
            json(StatusCode::CREATED, pipeline_json(11))
        }
    })
    .await;
    let params = CreatePipeline::new("main").variable("BOARD", "nucleo");
    let p = client(&server.url).create_pipeline("acme/fw", &params).await.unwrap();
    assert_eq!(p.id.0, 11);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].method, Method::POST);
    assert_eq!(seen[1].uri, "/api/v4/projects/acme%2Ffw/pipeline");
    let body: serde_json::Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"ref":"main","variables":[{"key":"BOARD","value":"nucleo","variable_type":"env_var"}]})
    );
}

#[tokio::test]
async fn a_connection_that_never_opened_is_retried_even_for_writes() {
    // Bind, learn the port, close: connections are refused until the server comes up on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}");
    let gitlab = Gitlab::builder(&url)
        .private_token(SecretString::from(TOKEN))
        .retry(RetryPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_millis(400),
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    let call = tokio::spawn(async move { gitlab.create_pipeline(1u64, &CreatePipeline::new("main")).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let count = Arc::new(Mutex::new(0));
    let c = count.clone();
    let app = Router::new().fallback(move || {
        *c.lock().unwrap() += 1;
        async { json(StatusCode::CREATED, pipeline_json(5)) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let p = call.await.unwrap().unwrap();
    assert_eq!(p.id.0, 5);
    assert_eq!(*count.lock().unwrap(), 1);
}

#[tokio::test]
async fn artifacts_follow_a_redirect_to_another_host_without_the_token() {
    // The "CDN": another origin (another port). Serves 1 MiB in chunks.
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let cdn_payload = payload.clone();
    let cdn = Server::start(move |_, _| {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            cdn_payload.chunks(64 * 1024).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Response::builder()
            .header("content-type", "application/zip")
            .header("content-length", cdn_payload.len())
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .unwrap()
    })
    .await;
    let cdn_url = cdn.url.clone();
    let gitlab = Server::start(move |req, _| {
        assert_eq!(req.uri, "/api/v4/projects/acme%2Ffw/jobs/42/artifacts");
        (StatusCode::FOUND, [("location", format!("{cdn_url}/blob/artifacts.zip?sig=abc"))]).into_response()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out/artifacts.zip");
    let mut reports = 0;
    let size = client(&gitlab.url)
        .download_artifacts_with_progress("acme/fw", JobId(42), &dest, |_, total| {
            reports += 1;
            assert_eq!(total, Some(1024 * 1024));
        })
        .await
        .unwrap();
    assert_eq!(size, payload.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
    assert!(reports > 1, "progress was reported {reports} times");
    assert!(!dir.path().join("out/artifacts.zip.part").exists());
    assert_eq!(gitlab.seen()[0].headers.get("private-token").unwrap(), TOKEN);
    let at_cdn = cdn.seen();
    assert_eq!(at_cdn.len(), 1);
    assert_eq!(at_cdn[0].uri, "/blob/artifacts.zip?sig=abc");
    assert!(at_cdn[0].headers.get("private-token").is_none(), "the token went to the CDN");
    assert!(at_cdn[0].headers.get("authorization").is_none());
}

#[tokio::test]
async fn auth_and_not_found_errors_carry_gitlabs_message_and_map_to_kinds() {
    let server = Server::start(|req, _| {
        if req.uri.contains("/projects/1") {
            json(StatusCode::UNAUTHORIZED, serde_json::json!({"message": "401 Unauthorized"}))
        } else if req.uri.contains("/projects/2") {
            json(
                StatusCode::FORBIDDEN,
                serde_json::json!({"error": "insufficient_scope", "error_description": "The request requires higher privileges than provided by the access token.", "scope": "api"}),
            )
        } else if req.uri.contains("/projects/3") {
            json(StatusCode::NOT_FOUND, serde_json::json!({"message": "404 Project Not Found"}))
        } else {
            json(StatusCode::BAD_REQUEST, serde_json::json!({"message": {"ref": ["is missing"], "base": ["Reference not found"]}}))
        }
    })
    .await;
    let gitlab = client(&server.url);
    let e = gitlab.project(1u64).await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }) && e.is_auth(), "{e}");
    assert!(e.to_string().contains("401 Unauthorized"));
    let e = gitlab.project(2u64).await.unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }), "{e}");
    assert!(e.to_string().contains("insufficient_scope"), "{e}");
    let e = gitlab.project(3u64).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains("GET /projects/3") && e.to_string().contains("Project Not Found"), "{e}");
    let e = gitlab.create_pipeline(4u64, &CreatePipeline::new("nope")).await.unwrap_err();
    assert!(matches!(e, Error::Api { status: 400, .. }), "{e}");
    assert!(e.to_string().contains("ref is missing"), "{e}");
    // No retries for client errors.
    assert_eq!(server.seen().len(), 4);
}

#[tokio::test]
async fn a_slow_server_hits_the_timeout() {
    let server = Server::start(|_, _| json(StatusCode::OK, pipeline_json(1))).await;
    // A second server that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            held.push(sock);
        }
    });
    drop(server);
    let gitlab = Gitlab::builder(format!("http://{addr}"))
        .private_token(SecretString::from(TOKEN))
        .timeout(Duration::from_millis(300))
        .retry(RetryPolicy { max_retries: 1, base: Duration::from_millis(10), ..RetryPolicy::default() })
        .build()
        .unwrap();
    let started = Instant::now();
    let err = gitlab.pipeline(1u64, PipelineId(1)).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600) && took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn decode_errors_name_the_field() {
    let server = Server::start(|_, _| {
        let mut p = pipeline_json(1);
        p["status"] = serde_json::json!(17);
        json(StatusCode::OK, serde_json::json!([pipeline_json(0), p]))
    })
    .await;
    let err =
        client(&server.url).pipelines(1u64, &PipelineFilter::default()).try_collect::<Vec<_>>().await.unwrap_err();
    assert!(matches!(err, Error::Decode { ref path, .. } if path == "[1].status"), "{err}");
}

#[tokio::test]
async fn job_log_is_read_incrementally_from_whole_answers_asking_for_gzip() {
    // GitLab answers the trace endpoint with the whole log whatever `Range` says.
    let log = Arc::new(Mutex::new(b"line 1\nline 2\n".to_vec()));
    let served = log.clone();
    let server = Server::start(move |_, _| {
        (StatusCode::OK, [("content-type", "text/plain")], served.lock().unwrap().clone()).into_response()
    })
    .await;
    let gitlab = client(&server.url);
    let first = gitlab.job_trace_from("g/p", JobId(3), 0).await.unwrap();
    assert_eq!(&first.data[..], b"line 1\nline 2\n");
    let none = gitlab.job_trace_from("g/p", JobId(3), first.next_offset).await.unwrap();
    assert!(none.data.is_empty() && !none.reset);
    log.lock().unwrap().extend_from_slice(b"line 3\n");
    let more = gitlab.job_trace_from("g/p", JobId(3), none.next_offset).await.unwrap();
    assert_eq!(&more.data[..], b"line 3\n");
    assert_eq!(more.next_offset, 21);
    // A retried job starts a shorter log: the reader is told and gets it from the start, read
    // again (the first read keeps no prefix: that is what bounds memory on a 100 MB log).
    *log.lock().unwrap() = b"new\n".to_vec();
    let reset = gitlab.job_trace_from("g/p", JobId(3), more.next_offset).await.unwrap();
    assert!(reset.reset);
    assert_eq!(&reset.data[..], b"new\n");
    assert_eq!(reset.next_offset, 4);
    let seen = server.seen();
    assert_eq!(seen.len(), 5, "one read each, two for the reset");
    for req in &seen {
        // No `Range` (GitLab ignores it, and reqwest stops asking for gzip when one is set).
        assert!(req.headers.get("range").is_none());
        assert!(req.headers["accept-encoding"].to_str().unwrap().contains("gzip"));
    }
}
