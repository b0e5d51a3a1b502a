//! The token never reaches a log line or an error text: every line the client logs at TRACE,
//! captured by the process's one subscriber, and every error's `Display` and `Debug`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use cloudci_gitlab::Gitlab;
use cloudci_gitlab::types::CreatePipeline;
use secrecy::SecretString;

mod common;
use common::{Server, TOKEN, client, json};

#[tokio::test]
async fn the_token_never_appears_in_logs_or_errors() {
    // Capture every log line the client writes, at the most verbose level.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let sink = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    // The process's only subscriber, set before any callsite is reached: tracing caches each
    // callsite's interest process-wide, and with thread-local subscribers in a binary of many
    // tests CI once saw the retry warning go unseen (hence this binary of its own).
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let server = Server::start(|req, index| match index % 4 {
        0 => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
        1 => json(StatusCode::UNAUTHORIZED, serde_json::json!({"message": "401 Unauthorized"})),
        2 => (StatusCode::FOUND, [("location", "/elsewhere")]).into_response(),
        _ => (StatusCode::OK, format!("echo {:?}", req.headers)).into_response(),
    })
    .await;
    let gitlab = client(&server.url);
    let mut texts = vec![format!("{gitlab:?}")];
    let e = gitlab.project(1u64).await.unwrap_err();
    texts.push(format!("{e} {e:?}"));
    let e = gitlab.create_pipeline(1u64, &CreatePipeline::new("main")).await.unwrap_err();
    texts.push(format!("{e} {e:?}"));
    let e = Gitlab::builder("http://127.0.0.1:1").private_token(SecretString::from(TOKEN)).build().unwrap();
    let e = e.version().await.unwrap_err();
    texts.push(format!("{e} {e:?}"));
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("retrying"), "expected retry logs, got: {logs}");
    texts.push(logs);
    for text in texts {
        assert!(!text.contains("TOPSECRET"), "token leaked: {text}");
    }
}
