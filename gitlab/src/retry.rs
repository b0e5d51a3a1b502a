//! When and how long to wait before trying a request again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngExt;
use reqwest::header::HeaderMap;

/// Retry policy, after python-gitlab's but safe for writes: 429 and connection failures are retried
/// for every request (GitLab did not act on them); 5xx, timeouts and dropped connections only for
/// idempotent requests (GET, PUT, DELETE). Waits grow exponentially from `base` up to `cap`, with
/// jitter so that many clients do not retry in step.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff.
    pub base: Duration,
    /// Longest backoff.
    pub cap: Duration,
    /// Longest wait a `Retry-After` or `RateLimit-Reset` may ask for; beyond it the call fails with
    /// [`crate::Error::RateLimited`] and the caller decides.
    pub max_rate_limit_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 4,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            max_rate_limit_wait: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn never() -> Self {
        Self { max_retries: 0, ..Self::default() }
    }

    /// Backoff before retry number `attempt` (0-based): a random point in the upper half of
    /// `min(cap, base * 2^attempt)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let full = self.base.saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX)).min(self.cap);
        let half = full / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(if jitter_ms == 0 { 0 } else { rand::rng().random_range(0..=jitter_ms) })
    }
}

/// How long a 429 asks to wait: `Retry-After` (seconds or an HTTP date), else `RateLimit-Reset`
/// (Unix time), else nothing.
pub(crate) fn rate_limit_wait(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = header("retry-after") {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = DateTime::parse_from_rfc2822(v) {
            return Some((at.with_timezone(&Utc) - now).to_std().unwrap_or(Duration::ZERO));
        }
    }
    let reset: i64 = header("ratelimit-reset")?.parse().ok()?;
    let at = DateTime::from_timestamp(reset, 0)?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy { base: Duration::from_millis(100), cap: Duration::from_secs(1), ..Default::default() };
        for attempt in 0..10 {
            let full = (Duration::from_millis(100) * 2u32.pow(attempt.min(20))).min(Duration::from_secs(1));
            let d = p.backoff(attempt);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert!(p.backoff(u32::MAX) <= Duration::from_secs(1));
    }

    #[test]
    fn reads_retry_after_and_ratelimit_reset() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let mut h = HeaderMap::new();
        assert_eq!(rate_limit_wait(&h, now), None);
        h.insert("ratelimit-reset", HeaderValue::from(now.timestamp() + 7));
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(7)));
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(3)));
        h.insert("retry-after", HeaderValue::from_static("Thu, 01 Jan 2026 00:00:05 GMT"));
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(5)));
    }
}
