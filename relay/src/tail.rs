//! Each instance's tail of the shared log into its own fan-out ([`Hub`]).
//!
//! Whichever instance committed an event, every instance's subscribers must see it. The tail
//! holds a session of its own that `LISTEN`s on [`CHANNEL`]; a commit that logged events
//! notifies it, and it publishes everything after what it published last, in seq order. A
//! notification is only a wake-up: one sent while the tail was disconnected is lost, so it also
//! reads the log every [`POLL`] whatever it heard (the backstop). A subscriber that sees a gap or
//! a repeat sorts it out itself (the hub reads the log by seq), so publishing twice what the
//! instance's own group commit already published costs an encoding, never a duplicate.
//!
//! This is the `EventBus` seam: the hub does not care where batches come from. A NATS JetStream
//! backend would replace this thread and nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cloudci_webhook::{EventFilter, EventLog, Hub};
use postgres::fallible_iterator::FallibleIterator;

use crate::pg::{CHANNEL, PgLog};

/// The backstop: how often the tail reads the log when no notification came.
pub const POLL: Duration = Duration::from_secs(1);
/// Events published per read.
const BATCH: usize = 500;

/// The running tail; it stops when this is dropped (within [`POLL`]).
#[derive(Debug)]
pub struct Tail {
    stop: Arc<AtomicBool>,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Tail {
    /// Starts tailing `log` (the one `hub` is over) into `hub` from the log's current end (subscribers read what came before from
    /// the log themselves).
    pub fn start(hub: Hub<PgLog>, log: Arc<PgLog>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::Builder::new()
            .name("cloudci-relay-tail".into())
            .spawn(move || run(hub, log, s))
            .expect("cannot start the relay's tail thread");
        Self { stop }
    }
}

fn run(hub: Hub<PgLog>, log: Arc<PgLog>, stop: Arc<AtomicBool>) {
    let mut published = None;
    let mut listener: Option<postgres::Client> = None;
    while !stop.load(Ordering::Acquire) {
        if listener.as_ref().is_none_or(|c| c.is_closed()) {
            listener = match log.config().connect(postgres::NoTls) {
                Ok(mut c) => match c.batch_execute(&format!("LISTEN {CHANNEL}")) {
                    Ok(()) => Some(c),
                    Err(e) => {
                        tracing::warn!("relay tail: cannot listen: {e}");
                        None
                    }
                },
                Err(e) => {
                    tracing::debug!("relay tail: cannot connect: {e}");
                    None
                }
            };
        }
        // Wait for a notification, or the backstop.
        match listener.as_mut() {
            Some(c) => {
                let mut n = c.notifications();
                let _ = n.timeout_iter(POLL).next();
                // Several notifications are one wake-up.
                while let Ok(Some(_)) = n.iter().next() {}
            }
            None => std::thread::sleep(POLL),
        }
        if let Err(e) = publish_new(&hub, &log, &mut published) {
            tracing::debug!("relay tail: cannot read the log: {e}");
        }
    }
}

/// Publishes every event after `published` (the log's end at the first call).
fn publish_new(hub: &Hub<PgLog>, log: &PgLog, published: &mut Option<u64>) -> Result<(), cloudci_webhook::StoreError> {
    let mut from = match *published {
        Some(p) => p,
        None => {
            let now = log.last_seq()?;
            *published = Some(now);
            now
        }
    };
    loop {
        let (events, last) = log.events_after(from, None, &EventFilter::default(), BATCH)?;
        if last == from {
            return Ok(());
        }
        hub.publish(events);
        from = last;
        *published = Some(last);
    }
}
