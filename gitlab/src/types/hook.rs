use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use super::{Extra, Timestamp};
use crate::{HookId, ProjectId};

/// A project webhook (`GET /projects/:id/hooks/:hook_id`). GitLab never returns the tokens, only
/// whether they are set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectHook {
    /// Hook id.
    pub id: HookId,
    /// Where deliveries go.
    pub url: String,
    /// Name (GitLab 17.1+); cloudci recognises its own hooks by it.
    #[serde(default)]
    pub name: Option<String>,
    /// Description (GitLab 17.1+).
    #[serde(default)]
    pub description: Option<String>,
    /// The project.
    pub project_id: ProjectId,
    /// Push events.
    #[serde(default)]
    pub push_events: bool,
    /// Pipeline events.
    #[serde(default)]
    pub pipeline_events: bool,
    /// Job events.
    #[serde(default)]
    pub job_events: bool,
    /// Merge request events.
    #[serde(default)]
    pub merge_requests_events: bool,
    /// Whether TLS certificates are checked.
    #[serde(default)]
    pub enable_ssl_verification: bool,
    /// `executable`, `temporarily_disabled` or `disabled` (auto-disabling after failures).
    #[serde(default)]
    pub alert_status: Option<String>,
    /// End of a temporary disablement.
    #[serde(default)]
    pub disabled_until: Option<Timestamp>,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    /// Whether a secret token is set (GitLab 19.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_present: Option<bool>,
    /// Whether a signing token is set (GitLab 19.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_token_present: Option<bool>,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ProjectHook {
    /// True when GitLab has stopped delivering to this hook for now or for good.
    pub fn is_disabled(&self) -> bool {
        matches!(self.alert_status.as_deref(), Some("temporarily_disabled" | "disabled"))
    }
}

/// Which events a hook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HookEvents {
    /// Push events.
    pub push: bool,
    /// Pipeline events.
    pub pipeline: bool,
    /// Job events.
    pub job: bool,
    /// Merge request events.
    pub merge_requests: bool,
}

impl HookEvents {
    /// Everything cloudci follows: pipelines, jobs, merge requests and pushes.
    pub const ALL: Self = Self { push: true, pipeline: true, job: true, merge_requests: true };
}

/// The body of `POST /projects/:id/hooks` and `PUT /projects/:id/hooks/:hook_id`.
#[derive(Clone, Serialize)]
pub struct HookParams {
    /// Where deliveries go (required on create and on edit).
    pub url: String,
    /// Name, shown in GitLab's UI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Sent back as `X-Gitlab-Token` on every delivery.
    #[serde(serialize_with = "expose_opt", skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretString>,
    /// `whsec_<base64>` key for GitLab 19's `webhook-signature`.
    #[serde(serialize_with = "expose_opt", skip_serializing_if = "Option::is_none")]
    pub signing_token: Option<SecretString>,
    /// Push events.
    pub push_events: bool,
    /// Tag push events (off: cloudci does not follow tags).
    pub tag_push_events: bool,
    /// Pipeline events.
    pub pipeline_events: bool,
    /// Job events.
    pub job_events: bool,
    /// Merge request events.
    pub merge_requests_events: bool,
    /// Check TLS certificates.
    pub enable_ssl_verification: bool,
}

impl HookParams {
    /// A hook to `url` with the given events, TLS verification on, and no tokens.
    pub fn new(url: impl Into<String>, events: HookEvents) -> Self {
        Self {
            url: url.into(),
            name: None,
            description: None,
            token: None,
            signing_token: None,
            push_events: events.push,
            tag_push_events: false,
            pipeline_events: events.pipeline,
            job_events: events.job,
            merge_requests_events: events.merge_requests,
            enable_ssl_verification: true,
        }
    }
}

impl fmt::Debug for HookParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookParams")
            .field("url", &self.url)
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("signing_token", &self.signing_token.as_ref().map(|_| "[redacted]"))
            .field("push_events", &self.push_events)
            .field("pipeline_events", &self.pipeline_events)
            .field("job_events", &self.job_events)
            .field("merge_requests_events", &self.merge_requests_events)
            .finish_non_exhaustive()
    }
}

// The one place a hook token leaves its `SecretString`: the request body sent to GitLab.
fn expose_opt<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(secret) => s.serialize_str(secret.expose_secret()),
        None => s.serialize_none(),
    }
}

/// One logged delivery of a hook (`GET /projects/:id/hooks/:hook_id/events`, GitLab 17.3+).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookDelivery {
    /// Log entry id (used to resend).
    pub id: u64,
    /// The URL it was sent to.
    pub url: String,
    /// What triggered it, e.g. `push_hooks`.
    pub trigger: String,
    /// HTTP status, or a text such as `internal error` when no response came.
    pub response_status: serde_json::Value,
    /// The payload sent.
    #[serde(default)]
    pub request_data: serde_json::Value,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `response_status` of a logged delivery. GitLab stores it in a string column, so the events API
/// sends `"200"`; a delivery that got no answer (timeout, connection failure, body over 25 MB) is
/// `"internal error"`. A number is accepted too (older versions, other servers) and kept as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HookResponseStatus {
    /// Sent as a JSON number.
    Number(u16),
    /// Sent as text: a code (`"200"`) or `"internal error"`.
    Text(String),
}

impl HookResponseStatus {
    /// GitLab's text for a delivery that got no HTTP answer.
    pub const INTERNAL_ERROR: &'static str = "internal error";

    /// The HTTP status, when an answer came.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Number(n) => Some(*n),
            Self::Text(t) => t.trim().parse().ok(),
        }
    }

    /// True when the receiver answered 2xx or 3xx: GitLab counts those as delivered and resets
    /// the hook's failure count.
    pub fn delivered(&self) -> bool {
        self.code().is_some_and(|c| (200..400).contains(&c))
    }

    /// True when no HTTP answer came (`internal error`).
    pub fn is_internal_error(&self) -> bool {
        matches!(self, Self::Text(t) if t == Self::INTERNAL_ERROR)
    }
}

impl fmt::Display for HookResponseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Text(t) => f.write_str(t),
        }
    }
}

/// One entry of a hook's delivery log (`GET /projects/:id/hooks/:hook_id/events`, GitLab 17.3+),
/// the typed form of [`HookDelivery`]. GitLab lists the past 7 days, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookEvent {
    /// Log entry id (what [`crate::Gitlab::resend_hook_event`] takes).
    pub id: u64,
    /// The URL it was sent to (credentials masked).
    pub url: String,
    /// What triggered it, e.g. `pipeline_hooks`, `job_hooks`, `push_hooks`.
    pub trigger: String,
    /// Headers sent; `X-Gitlab-Token` and custom header values show as `[REDACTED]`.
    #[serde(default)]
    pub request_headers: std::collections::BTreeMap<String, String>,
    /// The payload sent (`{"oversize": true}` when it was too big to keep).
    #[serde(default)]
    pub request_data: serde_json::Value,
    /// The receiver's status, or `internal error`.
    pub response_status: HookResponseStatus,
    /// The receiver's body (GitLab keeps up to 8 KB).
    #[serde(default)]
    pub response_body: Option<String>,
    /// Seconds the delivery took.
    #[serde(default)]
    pub execution_duration: Option<f64>,
    /// Everything else GitLab sent (`response_headers`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl HookEvent {
    /// A request header's value, looked up case-insensitively.
    pub fn request_header(&self, name: &str) -> Option<&str> {
        self.request_headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The delivery's `Idempotency-Key` (= `webhook-id`; GitLab 17.4+), the same on every resend:
    /// what a receiver de-duplicates on.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.request_header("Idempotency-Key").or_else(|| self.request_header("webhook-id"))
    }

    /// The event name (`X-Gitlab-Event`), e.g. `Pipeline Hook`.
    pub fn event_name(&self) -> Option<&str> {
        self.request_header("X-Gitlab-Event")
    }
}

/// A `status` filter value of the delivery log, as `lib/api/hooks/events.rb` accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookEventStatus {
    /// `successful`: 200-299.
    Successful,
    /// `client_failure`: 400-499.
    ClientFailure,
    /// `server_failure`: 500-599 and `internal error` (no answer at all).
    ServerFailure,
    /// One HTTP status code (GitLab accepts the codes Rack knows).
    Code(u16),
}

impl HookEventStatus {
    /// The query value.
    pub fn as_query(&self) -> String {
        match self {
            Self::Successful => "successful".into(),
            Self::ClientFailure => "client_failure".into(),
            Self::ServerFailure => "server_failure".into(),
            Self::Code(c) => c.to_string(),
        }
    }
}

/// Filters for `GET /projects/:id/hooks/:hook_id/events`. Unset fields are not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookEventFilter {
    /// Only entries with this status or status category.
    pub status: Option<HookEventStatus>,
}

/// The answer to `POST /projects/:id/hooks/:hook_id/events/:hook_event_id/resend` (201): the
/// receiver's status for the resent delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookEventResend {
    /// The receiver's HTTP status (a number here, unlike the log's text).
    pub response_status: HookResponseStatus,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}
