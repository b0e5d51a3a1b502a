//! Reading a daemon's `/v1/events` as a stream of events.

use cloudci_webhook::BuildEvent;
use futures_util::{Stream, StreamExt};

/// Subscribes to `{api_url}/v1/events?{query}` with a bearer token.
pub async fn subscribe(
    api_url: &str,
    token: &str,
    query: &str,
) -> Result<impl Stream<Item = BuildEvent> + Send + use<>, String> {
    cloudci_gitlab::install_tls_provider();
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/events?{query}", api_url.trim_end_matches('/')))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !resp.status().is_success() {
        return Err(format!("{} answered {}", api_url, resp.status()));
    }
    let bytes = resp.bytes_stream();
    Ok(futures_util::stream::unfold((bytes, String::new()), |(mut bytes, mut buf)| async move {
        loop {
            if let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let data: String = frame.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
                if let Ok(e) = serde_json::from_str::<BuildEvent>(&data) {
                    return Some((e, (bytes, buf)));
                }
                continue;
            }
            match bytes.next().await {
                Some(Ok(chunk)) => buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }))
}
