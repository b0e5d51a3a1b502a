//! A typed, async client for GitLab's REST API v4, and GitLab's webhook payload types.
//!
//! ```no_run
//! # async fn f() -> Result<(), cloudci_gitlab::Error> {
//! use cloudci_gitlab::{Gitlab, types::CreatePipeline};
//! use secrecy::SecretString;
//!
//! let gitlab = Gitlab::new("https://gitlab.com", SecretString::from(std::env::var("GITLAB_TOKEN").unwrap()))?;
//! let pipeline = gitlab.create_pipeline("acme/firmware", &CreatePipeline::new("main")).await?;
//! println!("{} is {}", pipeline.web_url, pipeline.status);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`client`](Gitlab): transport — base URL, [`Auth`], [`RetryPolicy`], redirects (the token
//!   never follows one to another host), timeouts, JSON decoding that names the failing field, and
//!   pagination as a stream that follows `Link`/`x-next-page` without needing `x-total`.
//! - `api/`: one method per endpoint, grouped by area (`api/README.md` maps paths to methods).
//! - [`types`]: the REST objects, each keeping unknown fields in `extra`.
//! - [`webhook`]: the webhook payloads and [`webhook::WebhookEvent::parse`].
//! - [`Error`]: the one error type; it never carries the token.
//!
//! # Writes are not duplicated
//! GET, PUT and DELETE are retried on 5xx, timeouts and dropped connections. A POST (create a
//! pipeline, a merge request, play a job) is retried only when GitLab certainly did not act: a 429
//! or a connection that was never established. Otherwise it fails with [`Error::MaybeApplied`].

mod api;
mod auth;
mod client;
mod error;
mod ids;
mod retry;
pub mod types;
pub mod webhook;

pub use api::{ArchiveFormat, JobFilter, MergeRequestFilter, PipelineFilter, TraceChunk};
pub use auth::Auth;
pub use client::{Gitlab, GitlabBuilder};
pub use error::Error;
pub use ids::{HookId, JobId, MergeRequestIid, PipelineId, ProjectId, ProjectRef, UserId, encode_segment};
pub use retry::RetryPolicy;

/// Makes ring the process's TLS crypto provider unless one is installed already. reqwest is built
/// here without a bundled provider (aws-lc-sys would double the cold build), so every program that
/// builds a `reqwest::Client` calls this first; [`Gitlab::builder`]'s `build` does.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
