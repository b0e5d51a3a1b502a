//! The local API (loopback by default, never behind the tunnel): the event stream for IDE
//! plugins, the CLI and the dashboard.

use axum::Router;
use cloudci_webhook::sse::{self, EventsState};

/// All local routes.
pub fn router(events: EventsState) -> Router {
    Router::new().merge(sse::router(events))
}
