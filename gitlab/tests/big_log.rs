//! A 100 MB job log (GitLab's default `max_job_log_size` is unlimited; 100 MB is a verbose build)
//! followed in bounded memory: the trace endpoint answers with the whole log every time, and the
//! client keeps only what is past the offset, never the prefix. Alone in its test binary, so the
//! process's peak RSS (`VmHWM`) is this test's.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::IntoResponse;
use cloudci_gitlab::{Gitlab, JobId};
use secrecy::SecretString;

const MIB: usize = 1024 * 1024;
const LOG: usize = 100 * MIB;

/// Peak resident memory of this process, KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap()
}

#[tokio::test]
async fn a_100_mb_log_is_followed_without_holding_it() {
    // One 1 MiB line block, sent 100 times: the server holds 1 MiB, not the log.
    let line = "build output line, long enough to look like a compiler's\n";
    let block = Bytes::from(line.repeat(MIB / line.len() + 1));
    let block = block.slice(..MIB);
    let app = Router::new().fallback(move || {
        let block = block.clone();
        async move {
            let chunks =
                futures_util::stream::iter((0..LOG / MIB).map(move |_| Ok::<_, std::io::Error>(block.clone())));
            ([("content-type", "text/plain")], Body::from_stream(chunks)).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let gitlab =
        Gitlab::builder(&url).private_token(SecretString::from("t")).timeout(Duration::from_secs(60)).build().unwrap();

    let before = peak_rss_kib();
    // A follower that has seen all but the last 100 bytes.
    let tail = gitlab.job_trace_from("g/p", JobId(1), (LOG - 100) as u64).await.unwrap();
    assert_eq!((tail.data.len(), tail.next_offset, tail.reset), (100, LOG as u64, false));
    // Nothing new: nothing kept.
    let none = gitlab.job_trace_from("g/p", JobId(1), LOG as u64).await.unwrap();
    assert!(none.data.is_empty() && !none.reset);
    let grew_mib = peak_rss_kib().saturating_sub(before) / 1024;
    eprintln!("peak RSS +{grew_mib} MiB");
    // Holding the log once would be 100 MiB; the old reader held it and a copy of its tail.
    assert!(grew_mib < 40, "peak RSS grew by {grew_mib} MiB reading a 100 MiB log twice");
}
