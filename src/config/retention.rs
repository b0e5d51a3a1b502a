//! `[retention]`: how long the daemon keeps what under the state directory (see
//! [`crate::retention`] for what is never removed).

use std::time::Duration;

use serde::Deserialize;

/// `[retention]`. Every limit has a default; `interval_minutes = 0` turns retention off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Raw webhook deliveries, in days (default 14: longer than GitLab's 7-day delivery log).
    pub deliveries_days: u32,
    /// Events of finished pipelines, pushes and merge requests, in days (default 30).
    pub events_days: u32,
    /// Runs whose logs are kept per project (default 20).
    pub logs_runs: u32,
    /// Artifacts, in days (default 30).
    pub artifacts_days: u32,
    /// Artifacts in all, in MiB (default 2048): the oldest go first.
    pub artifacts_max_mb: u64,
    /// Minutes between two passes of `cloudci serve` (default 10; 0: never).
    pub interval_minutes: u32,
}

impl Default for RetentionSection {
    fn default() -> Self {
        Self {
            deliveries_days: 14,
            events_days: 30,
            logs_runs: 20,
            artifacts_days: 30,
            artifacts_max_mb: 2048,
            interval_minutes: 10,
        }
    }
}

const DAY: u64 = 86_400;

impl RetentionSection {
    /// The limits as [`crate::retention::Policy`].
    pub fn policy(&self) -> crate::retention::Policy {
        crate::retention::Policy {
            store: cloudci_webhook::StorePolicy {
                deliveries: Duration::from_secs(u64::from(self.deliveries_days) * DAY),
                events: Duration::from_secs(u64::from(self.events_days) * DAY),
                ..Default::default()
            },
            logs_runs: self.logs_runs.max(1) as usize,
            artifacts_age: Duration::from_secs(u64::from(self.artifacts_days) * DAY),
            artifacts_bytes: self.artifacts_max_mb.saturating_mul(1 << 20),
        }
    }

    /// Time between two passes of the daemon; `None`: retention is off.
    pub fn interval(&self) -> Option<Duration> {
        (self.interval_minutes > 0).then(|| Duration::from_secs(u64::from(self.interval_minutes) * 60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_a_partial_section() {
        let d = RetentionSection::default();
        assert_eq!(d.policy(), crate::retention::Policy::default());
        assert_eq!(d.interval(), Some(Duration::from_secs(600)));
        let s: RetentionSection = toml::from_str("events_days = 7\ninterval_minutes = 0").unwrap();
        assert_eq!(s.policy().store.events, Duration::from_secs(7 * DAY));
        assert_eq!(s.policy().store.deliveries, Duration::from_secs(14 * DAY));
        assert_eq!(s.interval(), None);
        assert!(toml::from_str::<RetentionSection>("event_days = 7").is_err());
    }
}
