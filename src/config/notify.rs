//! `[notify]`: what happens when a build reaches a final state.

use serde::Deserialize;

/// `[notify]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    /// Desktop notifications on final states (needs the `desktop` feature).
    #[serde(default)]
    pub desktop: bool,
    /// A command run on final states, with the event as JSON on stdin.
    pub command: Option<String>,
}
