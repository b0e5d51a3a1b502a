//! What every local API route shares: the JSON error envelope and the bearer-token extractor.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::auth::{Claims, TokenKeys};
use super::session;

/// An error answer: `{"error": "...", "field": "..."}` with a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What is wrong, for people.
    pub error: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
    /// `Retry-After` in seconds, for a 503 that will pass (a full disk, no descriptors).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self { status, error: error.into(), field: None, retry_after: None }
    }

    /// 503 with `Retry-After`: the daemon ran out of `problem`'s resource; the message says which.
    pub fn unavailable(problem: cloudci_webhook::Problem) -> Self {
        Self {
            retry_after: Some(cloudci_webhook::RETRY_AFTER_SECS),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, problem.explain())
        }
    }

    /// Names the field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": self.error});
        if let Some(f) = self.field {
            body["field"] = serde_json::json!(f);
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A request with a valid token: `Authorization: Bearer <JWT>`, or the dashboard's session
/// cookie on a request the dashboard itself made (see [`session`]); rejected with 401 (no or a
/// bad token) or 403 (a cookie on a request from elsewhere). A token in the URL is never taken:
/// URLs land in histories and logs.
#[derive(Debug, Clone)]
pub struct Authorized(pub Claims);

impl<S> FromRequestParts<S> for Authorized
where
    TokenKeys: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let keys = TokenKeys::from_ref(state);
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let token = match bearer {
            Some(t) => t,
            None => {
                let t = session::cookie_token(&parts.headers)
                    .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer token"))?;
                session::check_cookie_request(parts)?;
                t
            }
        };
        keys.verify(token.trim()).map(Authorized).map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))
    }
}
