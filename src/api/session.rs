//! The dashboard and its session cookie, so that no token is in a URL.
//!
//! `cloudci dashboard` (and `cloudci demo --keep-serving`) prints the dashboard's address with a
//! one-time login code ([`super::login`]): `GET /login?code=C` takes the code and answers
//! `303 See Other` to `/` with a session token in a cookie (`HttpOnly`: no script reads it;
//! `SameSite=Strict`: no request another site starts carries it; `Path=/`; a session cookie,
//! gone when the browser closes). The token itself is never in an address: the address bar and
//! the tab's history hold a spent code and `/`, and the page's script never sees the token: its
//! API calls and its `EventSource` (which sends same-origin cookies, and cannot send headers)
//! carry the cookie. `Secure` is not set: the local API is plain HTTP on loopback, and a browser
//! would never send a `Secure` cookie there. `/?access_token=` is no longer traded (it put a
//! long-lived token in the address and the history); such an address is sent to `/` as it is.
//!
//! A cookie is sent by the browser whoever asks, so a request it authenticates must show it comes
//! from the dashboard itself (checked in [`super::error::Authorized`]):
//! - a request that changes something (any method but `GET`/`HEAD`) must carry
//!   `X-Requested-With` ([`CSRF_HEADER`]). A page of another origin cannot add a header to a
//!   request without a CORS preflight, which this API never allows (it has no CORS), and a form
//!   or a link cannot add headers at all;
//! - a request whose `Sec-Fetch-Site` says a browser sent it for another site or origin
//!   (`cross-site`, `same-site`) is refused, reads included;
//! - a page of another site never gets the cookie sent (`SameSite=Strict`), and a DNS-rebinding
//!   page talks to another `Host`, which the local layers refuse (`src/layers.rs`) and for
//!   which the browser has no cookie anyway.
//!
//! Cookies are not kept apart by port: two daemons on one host would share a cookie of one name,
//! so its name carries the port ([`cookie_name`]). Another server on the same host (another port)
//! still receives the cookie when the browser visits it; that is the cookie's limit on plain-HTTP
//! loopback, and the reason the page is framed by nobody (`frame-ancestors 'none'`) and tokens
//! expire (`cloudci token issue --ttl`).

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::auth::TokenKeys;
use super::error::ApiError;

/// The header a cookie-authenticated request that changes something must carry (any value).
pub const CSRF_HEADER: HeaderName = HeaderName::from_static("x-requested-with");

/// The dashboard: one static page that reads `/v1/builds` and follows `/v1/events`. It holds
/// no data itself, so it needs no token to load; its requests carry the cookie.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The session cookie's name for a request to `Host: host`: `cloudci_token_<port>`.
pub fn cookie_name(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    // `[::1]:8788`, `127.0.0.1:8788`, `localhost` (port 80).
    let port = match host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => p,
        _ => "80",
    };
    let port: String = port.chars().filter(char::is_ascii_digit).collect();
    format!("cloudci_token_{port}")
}

/// The token in the request's session cookie, if it has one.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    let name = cookie_name(headers);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

/// Refuses a cookie-authenticated request that a page other than the dashboard could have made.
pub fn check_cookie_request(parts: &Parts) -> Result<(), ApiError> {
    let site = parts.headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s != "same-origin" && s != "none") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the dashboard's cookie is taken from the dashboard only (this request came from another site)",
        )
        .field("Cookie"));
    }
    let safe = parts.method == Method::GET || parts.method == Method::HEAD;
    if !safe && !parts.headers.contains_key(CSRF_HEADER) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a request authenticated by the dashboard's cookie that changes something must carry X-Requested-With",
        )
        .field("X-Requested-With"));
    }
    Ok(())
}

/// How long the session a login code opens lasts (the cookie itself goes when the browser
/// closes): a working day and then some; `cloudci dashboard` opens another.
pub const SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// `GET /login?code=`: a valid, unused code is traded for the session cookie and a redirect to
/// `/`, so that the code leaves the address; any other is refused with 401 (it is spent or
/// useless either way, so it may stay in the address).
pub(super) async fn login(State(keys): State<TokenKeys>, headers: HeaderMap, uri: Uri) -> Response {
    let code = uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "code").map(|(_, v)| v.into_owned())
    });
    let taken = match code {
        Some(code) => keys.redeem_login_code(&code),
        None => Err(super::login::BadCode.into()),
    };
    let mut resp = match taken {
        Ok(()) => {
            let session = keys.issue("dashboard", vec![], SESSION_TTL);
            let cookie = format!("{}={}; HttpOnly; SameSite=Strict; Path=/", cookie_name(&headers), session.expose());
            let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(e @ super::login::RedeemError::Bad(_)) => {
            ApiError::new(StatusCode::UNAUTHORIZED, format!("{e}; `cloudci dashboard` prints a new one"))
                .field("code")
                .into_response()
        }
        Err(e @ super::login::RedeemError::Unrecorded(_)) => {
            tracing::warn!("dashboard login: {e}");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).field("code").into_response()
        }
    };
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /`: the page. An address with a query (an old `?access_token=` link) is sent to `/`
/// first, so that nothing stays in the address; nothing is taken from it.
pub(super) async fn dashboard(uri: Uri) -> Response {
    if uri.query().is_some() {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/"), (header::CACHE_CONTROL, "no-store")]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        DASHBOARD,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_cookie_is_named_by_port_and_found_among_others() {
        assert_eq!(cookie_name(&headers(&[("host", "127.0.0.1:8788")])), "cloudci_token_8788");
        assert_eq!(cookie_name(&headers(&[("host", "[::1]:9000")])), "cloudci_token_9000");
        assert_eq!(cookie_name(&headers(&[("host", "localhost")])), "cloudci_token_80");
        assert_eq!(cookie_name(&headers(&[("host", "[::1]")])), "cloudci_token_80");
        let h = headers(&[("host", "127.0.0.1:8788"), ("cookie", "a=1; cloudci_token_1=x; cloudci_token_8788=tok")]);
        assert_eq!(cookie_token(&h).as_deref(), Some("tok"));
        assert_eq!(cookie_token(&headers(&[("host", "127.0.0.1:2"), ("cookie", "cloudci_token_1=x")])), None);
    }

    fn parts(method: Method, pairs: &[(&str, &str)]) -> Parts {
        let mut req = axum::http::Request::builder().method(method).uri("/v1/builds");
        for (k, v) in pairs {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn cookie_requests_from_elsewhere_or_without_the_header_are_refused() {
        assert!(check_cookie_request(&parts(Method::GET, &[("sec-fetch-site", "same-origin")])).is_ok());
        assert!(check_cookie_request(&parts(Method::GET, &[])).is_ok());
        let refused = |p: Parts| check_cookie_request(&p).unwrap_err().status;
        assert_eq!(refused(parts(Method::GET, &[("sec-fetch-site", "same-site")])), StatusCode::FORBIDDEN);
        assert_eq!(refused(parts(Method::GET, &[("sec-fetch-site", "cross-site")])), StatusCode::FORBIDDEN);
        assert_eq!(refused(parts(Method::POST, &[("sec-fetch-site", "same-origin")])), StatusCode::FORBIDDEN);
        assert!(check_cookie_request(&parts(Method::POST, &[("x-requested-with", "cloudci")])).is_ok());
    }
}
