//! `POST /v1/sessions`: a developer proves who they are with their own GitLab token
//! (`PRIVATE-TOKEN`), which the relay checks with GitLab's `GET /user` and forgets at once
//! (never stored, logged or echoed); the answer is the relay's own short-lived subscriber
//! token for that GitLab user, `{"token": ..., "expires_at": ...}`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use cloudci_gitlab::Gitlab;
use secrecy::SecretString;
use serde::Serialize;

use crate::api::auth::TokenKeys;
use crate::api::error::ApiError;

/// Issues session tokens.
#[derive(Debug, Clone)]
pub struct Sessions {
    /// GitLab's URL (the developers' tokens are checked there).
    pub gitlab_url: String,
    /// Signs the tokens.
    pub keys: TokenKeys,
    /// How long a token is valid.
    pub ttl: Duration,
}

/// The answer.
#[derive(Debug, Serialize)]
pub struct Session {
    /// `Authorization: Bearer` on `/v1/events`.
    pub token: String,
    /// When it stops being accepted (RFC 3339); open a new session before.
    pub expires_at: String,
}

/// `POST /v1/sessions`.
pub async fn create(State(s): State<Sessions>, headers: HeaderMap) -> Result<Json<Session>, ApiError> {
    let token = headers
        .get("private-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "missing PRIVATE-TOKEN: your GitLab token").field("PRIVATE-TOKEN")
        })?;
    let gitlab = Gitlab::builder(s.gitlab_url.clone())
        .private_token(SecretString::from(token.to_owned()))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| {
            tracing::error!("relay sessions: GitLab client: {e}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the relay cannot reach GitLab")
        })?;
    let user = gitlab.current_user().await.map_err(|e| match e {
        cloudci_gitlab::Error::Unauthorized { .. } => {
            ApiError::new(StatusCode::UNAUTHORIZED, "GitLab did not accept this token").field("PRIVATE-TOKEN")
        }
        cloudci_gitlab::Error::Forbidden { .. } => ApiError::new(
            StatusCode::FORBIDDEN,
            "GitLab refused GET /user for this token (it needs the read_user or api scope)",
        )
        .field("PRIVATE-TOKEN"),
        other => {
            // GitLab's errors name the endpoint and its message, never the token.
            tracing::warn!("relay sessions: GitLab could not be asked who a token belongs to: {other}");
            ApiError::new(StatusCode::BAD_GATEWAY, "GitLab could not be asked who this token belongs to")
        }
    })?;
    if user.state.as_deref().is_some_and(|st| st != "active") {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "this GitLab user is not active"));
    }
    let (jwt, claims) = s.keys.issue_session(&user.username, user.id.0, s.ttl);
    tracing::info!("relay: session for GitLab user {} ({}) until {}", user.username, user.id.0, claims.exp);
    let expires_at = chrono::DateTime::from_timestamp(claims.exp as i64, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(Json(Session { token: jwt.expose().to_owned(), expires_at }))
}
