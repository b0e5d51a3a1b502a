//! The relay's retention (`cloudci-relay`'s [`PgLog::gc`], the daemon's `[retention]` policy
//! names: `deliveries_days`, `events_days`, `interval_minutes`): every instance publishes where
//! its oldest connected subscriber stands, and the instance that leads runs the passes.

use std::sync::Arc;
use std::time::Duration;

use cloudci_relay::{HOLD_FRESH, PgLog};
use cloudci_webhook::{Hub, StorePolicy, now_ms};

/// How often an instance publishes its subscribers' hold (well within [`HOLD_FRESH`]).
pub const HOLD_EVERY: Duration = Duration::from_secs(10);

/// Publishes this instance's oldest subscriber position every [`HOLD_EVERY`], as `instance`.
pub async fn hold(log: Arc<PgLog>, hub: Hub<PgLog>, instance: String) {
    loop {
        let (log, at, name) = (log.clone(), hub.oldest_subscriber(), instance.clone());
        match tokio::task::spawn_blocking(move || log.hold(&name, at)).await {
            Ok(Ok(())) => {}
            // PostgreSQL away: the hold goes stale, and the pass (which needs PostgreSQL too)
            // waits for the next one.
            Ok(Err(e)) => tracing::debug!("relay: cannot publish the subscribers' hold: {e}"),
            Err(_) => return,
        }
        tokio::time::sleep(HOLD_EVERY).await;
    }
}

/// The leader's passes: the first once every live instance has published its hold, then every
/// `every`.
pub async fn passes(log: Arc<PgLog>, policy: StorePolicy, every: Duration) {
    tokio::time::sleep(HOLD_FRESH).await;
    loop {
        let (l, p) = (log.clone(), policy.clone());
        match tokio::task::spawn_blocking(move || l.gc(&p, now_ms(), false)).await {
            Ok(Ok(r)) => tracing::info!(
                deliveries = r.deliveries.count,
                events = r.events.count,
                pipelines = r.pipelines.count,
                removed_through = r.removed_through,
                "relay: retention pass"
            ),
            Ok(Err(e)) => tracing::warn!("relay: retention pass: {e}"),
            Err(_) => return,
        }
        tokio::time::sleep(every).await;
    }
}
