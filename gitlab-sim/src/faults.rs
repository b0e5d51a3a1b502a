//! Seeded, reproducible fault injection: dropped, lost, repeated, late and reordered webhook deliveries;
//! throttled and failing API calls; gitlab.com's per-minute pipeline creation limit.
//!
//! A spec is a comma-separated list, e.g.
//! `drop=0.1,lost=0.05,duplicate=0.2,delay=50..400,reorder=0.3,api_429=0.05,api_5xx=0.05,pipeline_limit=25`:
//! - `drop=P`: a delivery is never sent and never logged, as when GitLab's per-namespace webhook
//!   rate limit refuses to enqueue it (FACTS §1.5: "dropped silently", nothing in the delivery log,
//!   no failure counted). Only catching up through the API finds what it carried. (The limit
//!   itself, counted per top-level namespace, is `SimConfig::hook_rate_limit`.)
//! - `lost=P`: a delivery GitLab sends that never reaches the receiver (connection reset, timeout):
//!   the receiver sees nothing, GitLab logs it as a failure with `response_status: "internal
//!   error"` (as it logs timeouts) and counts it toward auto-disabling. The delivery log shows it,
//!   and it can be resent.
//! - `duplicate=P`: a delivery is sent twice with the same `Idempotency-Key` (a Sidekiq retry).
//! - `delay=A..B`: every delivery waits A to B milliseconds.
//! - `reorder=P`: a delivery is held back up to 1 s more, so later events overtake it.
//! - `api_429=P`: an API call is answered 429 `Retry later` with `Retry-After: 1`.
//! - `api_5xx=P`: an API call is answered 502 before it is carried out.
//! - `api_5xx_after=P`: a POST is carried out, then answered 502 (a proxy that timed out): the
//!   client cannot tell whether it happened.
//! - `pipeline_limit=N`: at most N pipelines per project per minute, then 429.
//! - `no_auto_disable`: hooks are never auto-disabled after failures.
//! - `disable_backoff_ms=N`: the first auto-disable lasts N ms instead of GitLab's minute.

use std::ops::Range;
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A parsed fault spec.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultSpec {
    /// Probability a delivery is dropped.
    pub drop: f64,
    /// Probability a delivery is sent but never arrives (logged as `internal error`).
    pub lost: f64,
    /// Probability a delivery is sent twice.
    pub duplicate: f64,
    /// Delay range for every delivery, in ms.
    pub delay_ms: Option<Range<u64>>,
    /// Probability a delivery is held back to be overtaken.
    pub reorder: f64,
    /// Probability an API call gets 429.
    pub api_429: f64,
    /// Probability an API call gets 502.
    pub api_5xx: f64,
    /// Probability a POST gets 502 after it was carried out.
    pub api_5xx_after: f64,
    /// Pipelines per project per minute.
    pub pipeline_limit: Option<u32>,
    /// Never auto-disable hooks.
    pub no_auto_disable: bool,
    /// First auto-disable period in ms (GitLab: 60,000).
    pub disable_backoff_ms: Option<u64>,
}

impl std::str::FromStr for FaultSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut f = FaultSpec::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let prob = || -> Result<f64, String> {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or(format!("fault {key}: {value:?} is not a probability between 0 and 1"))
            };
            let int = || value.parse::<u64>().map_err(|_| format!("fault {key}: {value:?} is not a whole number"));
            match key {
                "drop" => f.drop = prob()?,
                "lost" => f.lost = prob()?,
                "duplicate" => f.duplicate = prob()?,
                "reorder" => f.reorder = prob()?,
                "api_429" => f.api_429 = prob()?,
                "api_5xx" => f.api_5xx = prob()?,
                "api_5xx_after" => f.api_5xx_after = prob()?,
                "delay" => {
                    let (a, b) = value.split_once("..").unwrap_or((value, value));
                    let (a, b) = (a.parse::<u64>(), b.parse::<u64>());
                    match (a, b) {
                        (Ok(a), Ok(b)) if a <= b => f.delay_ms = Some(a..b + 1),
                        _ => return Err(format!("fault delay: {value:?} is not MIN..MAX milliseconds")),
                    }
                }
                "pipeline_limit" => f.pipeline_limit = Some(u32::try_from(int()?).map_err(|e| e.to_string())?),
                "no_auto_disable" => f.no_auto_disable = true,
                "disable_backoff_ms" => f.disable_backoff_ms = Some(int()?),
                other => {
                    return Err(format!(
                        "unknown fault {other:?} (known: drop, lost, duplicate, delay, reorder, api_429, api_5xx, api_5xx_after, pipeline_limit, no_auto_disable, disable_backoff_ms)"
                    ));
                }
            }
        }
        Ok(f)
    }
}

/// The faults in force with their random source. One seeded generator serves every decision, so
/// a run with the same seed and the same sequence of events makes the same choices.
#[derive(Debug)]
pub struct Faults {
    /// The spec.
    pub spec: FaultSpec,
    rng: Mutex<StdRng>,
}

impl Faults {
    /// Faults from `spec`, seeded with `seed`.
    pub fn new(spec: FaultSpec, seed: u64) -> Self {
        Self { spec, rng: Mutex::new(StdRng::seed_from_u64(seed)) }
    }

    /// True with probability `p`.
    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap_or_else(|e| e.into_inner()).random::<f64>() < p
    }

    /// A number in `range`.
    pub fn pick(&self, range: Range<u64>) -> u64 {
        if range.is_empty() {
            return range.start;
        }
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).random_range(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let f: FaultSpec =
            "drop=0.1, lost=0.25, duplicate=0.5,delay=10..20,pipeline_limit=25,no_auto_disable".parse().unwrap();
        assert_eq!(f.drop, 0.1);
        assert_eq!(f.lost, 0.25);
        assert!("lost=1.5".parse::<FaultSpec>().unwrap_err().contains("lost"));
        assert!("lost".parse::<FaultSpec>().is_err(), "lost needs a probability");
        assert_eq!(f.delay_ms, Some(10..21));
        assert_eq!(f.pipeline_limit, Some(25));
        assert!(f.no_auto_disable);
        assert!("drop=2".parse::<FaultSpec>().is_err());
        assert!("explode=1".parse::<FaultSpec>().unwrap_err().contains("unknown fault"));
        assert_eq!("".parse::<FaultSpec>().unwrap(), FaultSpec::default());
    }

    #[test]
    fn same_seed_same_choices() {
        let spec = FaultSpec::default();
        let a = Faults::new(spec.clone(), 7);
        let b = Faults::new(spec, 7);
        let xs: Vec<bool> = (0..50).map(|_| a.chance(0.5)).collect();
        let ys: Vec<bool> = (0..50).map(|_| b.chance(0.5)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().any(|x| *x) && xs.iter().any(|x| !*x));
    }
}
