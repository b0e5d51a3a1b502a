//! SSE fan-out bench: N subscribers on `/v1/events`, then D deliveries of GitLab's sample pipeline
//! (each a new pipeline: 6 events) sent at R per second (a fixed rate, over S connections).
//! Reports
//! - memory per idle subscriber: the daemon's RSS with N idle subscribers minus without, / N;
//! - fan-out latency: for every event at every subscriber, the time from the 2xx of the delivery
//!   it came from to its arrival (0 when it arrived first), p50 / p99 / max;
//! - CPU per event per subscriber: the daemon's user+system CPU over the run / (events × N);
//! - that every subscriber got every event once, in order (consecutive seqs);
//! - ingest latency: for every delivery, from when the schedule said to send it to its 2xx, so a
//!   slow answer also counts against the deliveries queued behind it (as wrk2 does), p50 / p99.
//!
//! `--api` may list several addresses (comma-separated; the relay's instances): subscribers are
//! spread over them in turn. `--pid 0` skips the CPU and memory figures (several processes).
//!
//! Loopback only; bounded: it stops after the last event or 30 s after the last delivery.
//! Usage: fleet --pid PID --api 127.0.0.1:P --token JWT --hook 127.0.0.1:P --hook-path /hooks/S
//!        --hook-token T --body FILE [--subs N] [--deliveries D] [--rate R] [--senders S]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const EVENTS_PER_DELIVERY: usize = 6;

fn args() -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        out.insert(k.trim_start_matches('-').to_owned(), v);
    }
    out
}

/// (user + system) CPU of a process, in seconds.
fn cpu(pid: u32) -> f64 {
    if pid == 0 {
        return 0.0;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the daemon's /proc/PID/stat");
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime are fields 14 and 15 (1-based, counting pid and comm), in clock ticks.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn rss_kb(pid: u32) -> u64 {
    if pid == 0 {
        return 0;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap()
}

/// Decodes `Transfer-Encoding: chunked` incrementally.
#[derive(Default)]
struct Chunked {
    /// Bytes left in the current chunk's data; `None` while reading a size line.
    left: Option<usize>,
    line: Vec<u8>,
    /// CRLF after a chunk's data still to skip.
    skip: usize,
}

impl Chunked {
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(input.len());
                self.skip -= n;
                input = &input[n..];
                continue;
            }
            match self.left {
                Some(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if n == left {
                        self.left = None;
                        self.skip = 2;
                    } else {
                        self.left = Some(left - n);
                    }
                }
                None => {
                    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        return;
                    };
                    self.line.extend_from_slice(&input[..nl]);
                    input = &input[nl + 1..];
                    let text = String::from_utf8_lossy(&self.line).trim().to_owned();
                    self.line.clear();
                    let size = usize::from_str_radix(text.split(';').next().unwrap_or("0"), 16).unwrap_or(0);
                    self.left = Some(size);
                    if size == 0 {
                        self.left = None;
                    }
                }
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn number_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(hay, key)? + key.len();
    let digits: Vec<u8> = hay[at..].iter().skip_while(|b| **b == b' ').take_while(|b| b.is_ascii_digit()).copied().collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

struct Received {
    /// (delivery index, arrival in ns since the start)
    arrivals: Vec<(u32, u64)>,
    in_order: bool,
}

async fn subscriber(
    api: SocketAddr,
    token: Arc<str>,
    base: u64,
    expect: usize,
    start: Instant,
    ready: Arc<AtomicUsize>,
) -> Received {
    let mut s = TcpStream::connect(api).await.expect("connect to the local API");
    s.set_nodelay(true).unwrap();
    let req = format!("GET /v1/events HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::new();
    let mut body = Vec::new();
    let mut chunked = Chunked::default();
    loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the daemon closed a subscriber");
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&head, b"\r\n\r\n") {
            assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
            chunked.feed(&head[end + 4..], &mut body);
            break;
        }
    }
    ready.fetch_add(1, Ordering::SeqCst);
    let mut got = Received { arrivals: Vec::with_capacity(expect), in_order: true };
    let mut last_seq = None::<u64>;
    let mut frames_at = 0;
    while got.arrivals.len() < expect {
        while let Some(end) = find(&body[frames_at..], b"\n\n") {
            let frame = &body[frames_at..frames_at + end];
            frames_at += end + 2;
            if frame.starts_with(b":") {
                continue;
            }
            let at = start.elapsed().as_nanos() as u64;
            let seq = number_after(frame, b"id: ").expect("an id");
            if last_seq.is_some_and(|l| seq != l + 1) {
                got.in_order = false;
            }
            last_seq = Some(seq);
            let pipeline = number_after(frame, b"\"pipeline_id\":").expect("a pipeline id");
            got.arrivals.push(((pipeline - base) as u32, at));
        }
        if frames_at > 0 {
            body.drain(..frames_at);
            frames_at = 0;
        }
        if got.arrivals.len() >= expect {
            break;
        }
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        chunked.feed(&buf[..n], &mut body);
    }
    got
}

async fn sender(
    hook: SocketAddr,
    requests: Vec<(usize, Vec<u8>)>,
    rate: f64,
    start: Instant,
    origin: Instant,
    acks: Arc<Vec<AtomicU64>>,
    answered: Arc<Vec<AtomicU64>>,
) {
    let mut s = TcpStream::connect(hook).await.expect("connect to the receiver");
    s.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    for (k, req) in requests {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        s.write_all(&req).await.unwrap();
        let mut resp = Vec::new();
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the receiver closed the connection");
            resp.extend_from_slice(&buf[..n]);
            if let Some(end) = find(&resp, b"\r\n\r\n") {
                let len = number_after(&resp.to_ascii_lowercase(), b"content-length:").unwrap_or(0) as usize;
                if resp.len() >= end + 4 + len {
                    break;
                }
            }
        }
        // On the subscribers' clock (`origin`), not the schedule's.
        acks[k].store(origin.elapsed().as_nanos() as u64, Ordering::SeqCst);
        answered[k].store(due.elapsed().as_nanos() as u64, Ordering::SeqCst);
        assert!(resp.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&resp));
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1e6
}

#[tokio::main]
async fn main() {
    let a = args();
    let get = |k: &str| a.get(k).cloned().unwrap_or_else(|| panic!("--{k} is required"));
    let pid: u32 = get("pid").parse().unwrap();
    let apis: Vec<SocketAddr> = get("api").split(',').map(|a| a.parse().unwrap()).collect();
    let hook: SocketAddr = get("hook").parse().unwrap();
    let token: Arc<str> = get("token").into();
    let subs: usize = a.get("subs").map_or(1000, |v| v.parse().unwrap());
    let deliveries: usize = a.get("deliveries").map_or(200, |v| v.parse().unwrap());
    let rate: f64 = a.get("rate").map_or(20.0, |v| v.parse().unwrap());
    let senders: usize = a.get("senders").map_or(4, |v| v.parse().unwrap());
    let sample: serde_json::Value = serde_json::from_slice(&std::fs::read(get("body")).unwrap()).unwrap();
    // Distinct pipelines and job ids per run, so each delivery is news to the state machine.
    let base = 1_000_000 + (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 100_000) * 1000;
    let mut per_sender: Vec<Vec<(usize, Vec<u8>)>> = vec![Vec::new(); senders];
    for k in 0..deliveries {
        let mut v = sample.clone();
        v["object_attributes"]["id"] = (base + k as u64).into();
        for (j, b) in v["builds"].as_array_mut().unwrap().iter_mut().enumerate() {
            b["id"] = ((base + k as u64) * 10 + j as u64).into();
        }
        let body = serde_json::to_vec(&v).unwrap();
        let mut req = format!(
            "POST {} HTTP/1.1\r\nHost: {hook}\r\nContent-Type: application/json\r\nX-Gitlab-Event: Pipeline Hook\r\nX-Gitlab-Token: {}\r\nIdempotency-Key: fleet-{base}-{k}\r\nContent-Length: {}\r\n\r\n",
            get("hook-path"),
            get("hook-token"),
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        per_sender[k % senders].push((k, req));
    }

    let rss_idle = rss_kb(pid);
    let start = Instant::now();
    let ready = Arc::new(AtomicUsize::new(0));
    let expect = deliveries * EVENTS_PER_DELIVERY;
    let mut fleet = Vec::with_capacity(subs);
    for i in 0..subs {
        fleet.push(tokio::spawn(subscriber(apis[i % apis.len()], token.clone(), base, expect, start, ready.clone())));
        // Connect in waves, so the accept queue never overflows.
        if i % 100 == 99 {
            while ready.load(Ordering::SeqCst) <= i - 50 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::SeqCst) < subs {
        assert!(Instant::now() < deadline, "only {} subscribers connected", ready.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if subs > 0 {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let rss_subs = rss_kb(pid);

    let cpu0 = cpu(pid);
    let t0 = Instant::now();
    let acks: Arc<Vec<AtomicU64>> = Arc::new((0..deliveries).map(|_| AtomicU64::new(0)).collect());
    let answered: Arc<Vec<AtomicU64>> = Arc::new((0..deliveries).map(|_| AtomicU64::new(0)).collect());
    let run_start = start + start.elapsed() + Duration::from_millis(50);
    let mut sends = Vec::new();
    for reqs in per_sender {
        sends.push(tokio::spawn(sender(hook, reqs, rate, run_start, start, acks.clone(), answered.clone())));
    }
    for s in sends {
        s.await.unwrap();
    }
    let sent = t0.elapsed();
    let mut all = Vec::with_capacity(subs * expect);
    let mut incomplete = 0;
    let mut out_of_order = 0;
    let wait = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(wait);
    for f in fleet {
        tokio::select! {
            r = f => {
                let r = r.unwrap();
                if r.arrivals.len() != expect { incomplete += 1; }
                if !r.in_order { out_of_order += 1; }
                for (k, at) in r.arrivals {
                    all.push(at.saturating_sub(acks[k as usize].load(Ordering::SeqCst)));
                }
            }
            _ = &mut wait => { incomplete += 1; }
        }
    }
    let cpu_s = cpu(pid) - cpu0;
    let took = t0.elapsed();
    all.sort_unstable();
    let mut ingest: Vec<u64> = answered.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    ingest.sort_unstable();
    let per = cpu_s * 1e6 / (expect as f64 * subs as f64);
    println!(
        "subscribers={subs} deliveries={deliveries} rate={rate}/s events={expect} sent_in={:.2}s done_in={:.2}s \
         ingest_ms p50={:.2} p99={:.2} max={:.2} latency_ms p50={:.2} p99={:.2} max={:.2} cpu_s={cpu_s:.2} cpu_us_per_event_per_sub={per:.3} \
         rss_idle_kb={rss_idle} rss_subs_kb={rss_subs} kb_per_idle_sub={:.1} incomplete={incomplete} out_of_order={out_of_order}",
        sent.as_secs_f64(),
        took.as_secs_f64(),
        pct(&ingest, 0.5),
        pct(&ingest, 0.99),
        pct(&ingest, 1.0),
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&all, 1.0),
        (rss_subs as f64 - rss_idle as f64) / subs as f64,
    );
    std::process::exit(if incomplete == 0 && out_of_order == 0 { 0 } else { 1 });
}
