//! The subscriber: `GET /v1/events` with a Bearer token, as an IDE plugin would follow it. When
//! the connection drops (serve killed) it reconnects every 200 ms and resumes with
//! `Last-Event-ID` = the id of the last event it got. Every event is recorded with the time it
//! arrived.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

/// One event as the subscriber received it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Received {
    pub(crate) seq: u64,
    pub(crate) kind: String,
    pub(crate) project_id: Option<u64>,
    pub(crate) pipeline_id: Option<u64>,
    pub(crate) job_id: Option<u64>,
    pub(crate) job_name: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) retry: bool,
    /// `webhook` or `poll`.
    pub(crate) source: Option<String>,
    pub(crate) received: DateTime<Utc>,
    /// When cloudci (the relay) accepted what the event says (its `received_at`).
    pub(crate) accepted: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct Shared {
    events: Vec<Received>,
    last_event: Option<Instant>,
    connects: u32,
}

/// What the subscriber counted besides the events.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) connects: u32,
}

/// A running subscriber.
#[derive(Debug)]
pub(crate) struct Subscriber {
    shared: Arc<Mutex<Shared>>,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Subscriber {
    pub(crate) fn start(url: String, token: String) -> Self {
        Self::start_with(url, token, Duration::from_millis(200))
    }

    /// Like [`Subscriber::start`], backing off from 200 ms to `max_wait` while connections fail
    /// (many subscribers of a relay whose database is away should not hammer it).
    pub(crate) fn start_with(url: String, token: String, max_wait: Duration) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = tokio::spawn(follow(url, token, shared.clone(), max_wait));
        Self { shared, started: Instant::now(), task }
    }

    /// Every event so far, in arrival order.
    pub(crate) fn snapshot(&self) -> Vec<Received> {
        lock(&self.shared).events.clone()
    }

    /// `f` of every event so far, without copying them (many subscribers, many events).
    pub(crate) fn with_events<T>(&self, f: impl FnOnce(&[Received]) -> T) -> T {
        f(&lock(&self.shared).events)
    }

    /// Times it connected so far.
    pub(crate) fn connects(&self) -> u32 {
        lock(&self.shared).connects
    }

    /// Time since the last event (or since the start, before any).
    pub(crate) fn quiet_for(&self) -> Duration {
        lock(&self.shared).last_event.unwrap_or(self.started).elapsed()
    }

    /// Stops following.
    pub(crate) fn stop(self) -> Stats {
        self.task.abort();
        Stats { connects: lock(&self.shared).connects }
    }
}

async fn follow(url: String, token: String, shared: Arc<Mutex<Shared>>, max_wait: Duration) {
    let http = match reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chaos: subscriber: {e}");
            return;
        }
    };
    let mut last_id: Option<String> = None;
    let mut wait = Duration::from_millis(200);
    loop {
        let mut req = http.get(&url).bearer_auth(&token).header("Accept", "text/event-stream");
        if let Some(id) = &last_id {
            req = req.header("Last-Event-ID", id);
        }
        if let Ok(resp) = req.send().await
            && resp.status() == reqwest::StatusCode::OK
        {
            lock(&shared).connects += 1;
            wait = Duration::from_millis(200);
            let mut stream = resp.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            while let Some(Ok(chunk)) = stream.next().await {
                // Arrival is when the chunk came off the socket, not when its frame was parsed.
                let arrived = Utc::now();
                buf.extend_from_slice(&chunk);
                // Frames are cut from an offset and the rest moved once per chunk: cutting each
                // frame off the front moved (and searched) the whole buffer per frame, which on a
                // replay of thousands of events was quadratic and made the harness the laggard.
                let mut start = 0;
                while let Some(len) = find_frame_end(&buf[start..]) {
                    let frame = &buf[start..start + len];
                    start += len;
                    if let Some((id, e)) = parse_frame(&String::from_utf8_lossy(frame), arrived) {
                        if let Some(id) = id {
                            last_id = Some(id);
                        }
                        if let Some(e) = e {
                            let mut s = lock(&shared);
                            s.events.push(e);
                            s.last_event = Some(Instant::now());
                        }
                    }
                }
                buf.drain(..start);
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(max_wait.max(Duration::from_millis(200)));
    }
}

/// The end of the first complete frame (after its blank line), if there is one; it reads no
/// further than that frame.
fn find_frame_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        let rest = &buf[i..];
        if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else {
            None
        }
    })
}

/// A frame's `id:` and, when it carries `data:`, the event. Comments (heartbeats) give nothing.
fn parse_frame(frame: &str, arrived: DateTime<Utc>) -> Option<(Option<String>, Option<Received>)> {
    let mut id = None;
    let mut data = String::new();
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if id.is_none() && data.is_empty() {
        return None;
    }
    let event = (!data.is_empty()).then(|| serde_json::from_str::<Value>(&data).ok()).flatten().map(|v| Received {
        seq: v["seq"].as_u64().or_else(|| id.as_deref().and_then(|i| i.parse().ok())).unwrap_or(0),
        kind: v["kind"].as_str().unwrap_or("").to_owned(),
        project_id: v["project_id"].as_u64(),
        pipeline_id: v["pipeline_id"].as_u64(),
        job_id: v["job_id"].as_u64(),
        job_name: v["job_name"].as_str().map(str::to_owned),
        status: v["status"].as_str().map(str::to_owned),
        retry: v["retry"].as_bool().unwrap_or(false),
        source: v["source"].as_str().map(str::to_owned),
        received: arrived,
        accepted: v["received_at"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.to_utc()),
    });
    Some((id, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_and_parsed() {
        let raw = b": heartbeat\n\nid: 7\nevent: job\ndata: {\"seq\":7,\"kind\":\"job\",\"job_id\":3,\"status\":\"running\",\"retry\":false}\n\nid: 8";
        let end = find_frame_end(raw).unwrap();
        assert!(parse_frame(std::str::from_utf8(&raw[..end]).unwrap(), Utc::now()).is_none());
        let rest = &raw[end..];
        let end2 = find_frame_end(rest).unwrap();
        let (id, e) = parse_frame(std::str::from_utf8(&rest[..end2]).unwrap(), Utc::now()).unwrap();
        assert_eq!(id.as_deref(), Some("7"));
        let e = e.unwrap();
        assert_eq!((e.seq, e.job_id, e.status.as_deref()), (7, Some(3), Some("running")));
        assert!(find_frame_end(&rest[end2..]).is_none());
    }
}
