//! GitLab's side of the relay run: the answers in the sim's delivery logs, and for every 5xx
//! outside PostgreSQL's downtime, its cause as far as the run can tell: the reason in the
//! answer's body, and the lines of the relay logs written around it (which instance, and what it
//! could not do).
//!
//! Behind this TCP proxy a request in flight when its instance is killed gets no answer (the
//! connection closes), which the sim logs as `internal error`; behind nginx it would be a 502
//! of the proxy's. Either way GitLab counts a failure and retries; the relay never sent it, so
//! it is counted as `no_answer`, never as the relay's 5xx. Every 5xx here is an instance's own
//! answer (this proxy makes none).

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The receiver's answers as GitLab logged them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Answers {
    /// Delivery attempts logged (resends and test deliveries included).
    pub attempts: usize,
    /// Answered 2xx.
    pub ok: usize,
    /// Answered 4xx (every delivery is validly signed: must be 0).
    pub client_errors: usize,
    /// Answered 5xx.
    pub server_errors: usize,
    /// ... of those, outside the windows when PostgreSQL was down (must be 0).
    pub server_errors_outside_outages: usize,
    /// No answer (an instance killed mid-request, GitLab's timeout, the `lost` fault).
    pub no_answer: usize,
    /// The 5xx outside the outages, with what the run knows of each (the first 100).
    pub outside: Vec<Outside>,
}

/// One 5xx outside PostgreSQL's downtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outside {
    /// When GitLab sent the attempt.
    pub at: DateTime<Utc>,
    /// The status.
    pub status: String,
    /// The answer's body (the relay's reason), cut to 200 bytes.
    pub body: String,
    /// Relay log lines at warning level or above within 2 s of it: `relay-<instance>-<start>: line`.
    pub relay_log: Vec<String>,
}

/// Counts the sim's delivery log (when each attempt was sent, its status and body) up to `until`
/// (when the harness began stopping the relays, whose last answers then say they are
/// stopping); `down` are the windows when PostgreSQL was unreachable; `dir` holds the relays'
/// logs.
pub(crate) fn answers(
    log: &[(DateTime<Utc>, String, String)],
    down: &[(DateTime<Utc>, DateTime<Utc>)],
    until: DateTime<Utc>,
    dir: &Path,
) -> Answers {
    let log: Vec<_> = log.iter().filter(|(at, _, _)| *at <= until).collect();
    let mut a = Answers { attempts: log.len(), ..Default::default() };
    let relay_lines = relay_log_lines(dir);
    for (at, status, body) in log {
        match status.parse::<u16>() {
            Ok(s) if (200..300).contains(&s) => a.ok += 1,
            Ok(s) if (400..500).contains(&s) => a.client_errors += 1,
            Ok(s) if s >= 500 => {
                a.server_errors += 1;
                if !down.iter().any(|(from, to)| at >= from && at <= to) {
                    a.server_errors_outside_outages += 1;
                    if a.outside.len() < 100 {
                        let near = chrono::Duration::seconds(2);
                        a.outside.push(Outside {
                            at: *at,
                            status: status.clone(),
                            body: body.chars().take(200).collect(),
                            relay_log: relay_lines
                                .iter()
                                .filter(|(t, _)| *t >= *at - near && *t <= *at + near)
                                .map(|(_, l)| l.clone())
                                .take(10)
                                .collect(),
                        });
                    }
                }
            }
            Ok(_) => a.ok += 1,
            Err(_) => a.no_answer += 1,
        }
    }
    a
}

/// Every `WARN` or `ERROR` line of the relays' logs (`relay-*.err`), with its time.
fn relay_log_lines(dir: &Path) -> Vec<(DateTime<Utc>, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(instance) = name.strip_suffix(".err").filter(|n| n.starts_with("relay-")) else { continue };
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        for line in text.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")) {
            let at = line.split_whitespace().next().and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            if let Some(at) = at {
                out.push((at.to_utc(), format!("{instance}: {line}")));
            }
        }
    }
    out
}
