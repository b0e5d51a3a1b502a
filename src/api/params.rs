//! What a request carries, read strictly: a query, a build id in the path and a JSON body that do
//! not fit are answered 400 with the JSON error body naming the field at fault, never axum's
//! plain-text rejection; integers outside the bounds the OpenAPI document gives are refused the
//! same way, so the server accepts exactly what the document allows.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The largest id the API takes (a build's, a project's, a pipeline's) and the largest offset:
/// SQLite's and GitLab's ids are signed 64-bit integers.
pub const MAX_ID: u64 = i64::MAX as u64;

/// A query string deserialized into `T`; a field that does not parse is a 400 naming it.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|e| {
            let field = e.path().to_string();
            let err = ApiError::new(StatusCode::BAD_REQUEST, format!("invalid query parameter {field}: {}", e.inner()));
            if field == "." { err } else { err.field(field) }
        })
    }
}

/// The `{id}` of `/v1/builds/{id}/...`: an integer from 1 to [`MAX_ID`]. Anything else that is
/// not an integer is a 400; an integer no build has is the handler's 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildId(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for BuildId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let bad = || ApiError::new(StatusCode::BAD_REQUEST, "a build id is an integer from 1").field("id");
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await.map_err(|_| bad())?;
        match raw.parse::<i64>() {
            Ok(id) if id >= 1 => Ok(BuildId(id)),
            _ => Err(bad()),
        }
    }
}

/// `value` (or `default` when absent) when it lies in `min..=max`; a 400 naming `field` otherwise.
pub fn bounded(value: Option<u64>, field: &str, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
    let v = value.unwrap_or(default);
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::new(StatusCode::BAD_REQUEST, format!("{field} must be from {min} to {max}")).field(field))
    }
}

/// A JSON request body deserialized into `T`; one that does not fit is a 400 naming the field.
pub fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| body_error(&e))?;
    // Trailing data after the document (`{} x`) is malformed too.
    de.end().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid request body: {e}")))?;
    Ok(value)
}

fn body_error(e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = e.inner().to_string();
    let path = e.path().to_string();
    // The path names the field at fault (an unknown one too); a missing field is named only in
    // serde's message, at its parent's path.
    let named = inner.split('`').nth(1).filter(|_| inner.starts_with("missing field"));
    let field = match (path.as_str(), named) {
        (".", Some(name)) => Some(name.to_owned()),
        (".", None) => None,
        (p, Some(name)) => Some(format!("{p}.{name}")),
        (p, None) => Some(p.to_owned()),
    };
    let err = ApiError::new(StatusCode::BAD_REQUEST, format!("invalid request body: {inner}"));
    match field {
        Some(f) => err.field(f),
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        projects: Vec<String>,
        n: Option<u64>,
    }

    #[test]
    fn body_errors_name_their_field() {
        let field = |b: &str| json_body::<Body>(b.as_bytes()).unwrap_err().field;
        assert_eq!(field(r#"{"projects": [], "colour": 1}"#).as_deref(), Some("colour"));
        assert_eq!(field(r#"{}"#).as_deref(), Some("projects"));
        assert_eq!(field(r#"{"projects": [1]}"#).as_deref(), Some("projects[0]"));
        assert_eq!(field(r#"{"projects": [], "n": -1}"#).as_deref(), Some("n"));
        assert_eq!(field(r#"{"projects": []} x"#), None);
        assert_eq!(field(""), None);
        assert!(json_body::<Body>(br#"{"projects": ["a"], "n": 3}"#).is_ok());
    }

    #[test]
    fn bounds() {
        assert_eq!(bounded(None, "limit", 50, 1, 1000).unwrap(), 50);
        assert_eq!(bounded(Some(1000), "limit", 50, 1, 1000).unwrap(), 1000);
        let e = bounded(Some(0), "limit", 50, 1, 1000).unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (StatusCode::BAD_REQUEST, Some("limit")));
    }
}
