//! Tokens for the local API: HS256 JWTs signed with a key generated into the state directory,
//! with an expiry and an optional list of projects they are limited to.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::login::{LoginCode, LoginCodes, RedeemError};

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who it was issued to (free text, e.g. `ide`).
    pub sub: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Projects it may see; every project when empty.
    #[serde(default)]
    pub projects: Vec<String>,
    /// The GitLab user a relay session was opened for (`POST /v1/sessions` on `cloudci
    /// relay`): the relay shows it only the events of projects that user may read. Absent on
    /// the daemon's tokens and on the relay's operator tokens (`cloudci relay token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitlab_user: Option<u64>,
}

impl Claims {
    /// Whether the token may see `project` (a path or an id).
    pub fn allows(&self, project: &str) -> bool {
        self.projects.is_empty() || self.projects.iter().any(|p| p == project)
    }
}

/// Why a token was refused (never says more than this).
#[derive(Debug, thiserror::Error)]
#[error("invalid or expired token")]
pub struct BadToken;

/// An issued local API token. `Debug` shows `Jwt([redacted])`; the text comes out only through
/// [`Jwt::expose`], where it is sent (a request, the CLI's token file) or printed on purpose
/// (`cloudci token issue`, `cloudci demo --keep-serving`).
#[derive(Clone)]
pub struct Jwt(SecretString);

impl Jwt {
    /// The token's text, to send or to print on purpose.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Jwt([redacted])")
    }
}

/// Signs and checks local API tokens, and the dashboard's one-time login codes
/// ([`super::login`]). `Debug` does not show the key.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Shared by every clone: a code taken through one is taken for all.
    codes: std::sync::Arc<LoginCodes>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys([redacted])")
    }
}

impl TokenKeys {
    /// Keys from a secret (at least 32 random bytes, base64url, from the state directory).
    pub fn new(secret: &SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            codes: std::sync::Arc::new(LoginCodes::new(bytes)),
        }
    }

    /// A one-time login code for the dashboard (`/login?code=`), valid for
    /// [`super::login::LOGIN_CODE_TTL`].
    pub fn login_code(&self) -> LoginCode {
        self.codes.issue()
    }

    /// These keys, with the login codes taken recorded in `file` so that they stay taken across
    /// restarts (the daemon's: [`super::login`]).
    pub fn with_spent_codes(secret: &SecretString, file: &std::path::Path) -> std::io::Result<Self> {
        let keys = Self::new(secret);
        let codes = LoginCodes::persisted(secret.expose_secret().as_bytes(), file)?;
        Ok(Self { codes: std::sync::Arc::new(codes), ..keys })
    }

    /// Takes a login code: `Ok` once per code, within its time.
    pub fn redeem_login_code(&self, code: &str) -> Result<(), RedeemError> {
        self.codes.redeem(code)
    }

    /// Issues a token for `sub`, valid for `ttl`, limited to `projects` (all when empty).
    pub fn issue(&self, sub: &str, projects: Vec<String>, ttl: Duration) -> Jwt {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        self.sign(&Claims { sub: sub.to_owned(), iat: now, exp: now + ttl.as_secs(), projects, gitlab_user: None })
    }

    /// Issues a relay session's token for GitLab user `user` (named `sub`), valid for `ttl`,
    /// with its claims (the expiry is `exp`).
    pub fn issue_session(&self, sub: &str, user: u64, ttl: Duration) -> (Jwt, Claims) {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims {
            sub: sub.to_owned(),
            iat: now,
            exp: now + ttl.as_secs(),
            projects: Vec::new(),
            gitlab_user: Some(user),
        };
        (self.sign(&claims), claims)
    }

    fn sign(&self, claims: &Claims) -> Jwt {
        let text = jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail");
        Jwt(SecretString::from(text))
    }

    /// Checks a token's signature, algorithm and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, BadToken> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map(|d| d.claims).map_err(|_| BadToken)
    }
}

/// A duration that is not `90s`, `15m`, `12h` or `30d`; its text is what the user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadDuration(String);

impl BadDuration {
    /// A duration refused for `why`.
    pub fn new(why: impl Into<String>) -> Self {
        Self(why.into())
    }
}

/// Parses `90s`, `15m`, `12h`, `30d` (or plain seconds).
pub fn parse_duration(raw: &str) -> Result<Duration, BadDuration> {
    let raw = raw.trim();
    let (num, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 =
        num.parse().map_err(|_| BadDuration(format!("{raw:?} is not a duration like 90s, 15m, 12h or 30d")))?;
    let per = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(BadDuration(format!("{raw:?}: unknown unit {unit:?} (use s, m, h or d)"))),
    };
    // Found by fuzzing: `33333333333333390d` overflowed (a panic in debug builds).
    let secs = n.checked_mul(per).ok_or_else(|| BadDuration(format!("{raw:?} is too long a duration")))?;
    if secs == 0 {
        return Err(BadDuration("a duration must be more than 0".into()));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_expire_and_scope() {
        let keys = TokenKeys::new(&SecretString::from("sekrit".repeat(8)));
        let jwt = keys.issue("ide", vec!["acme/fw".into()], Duration::from_secs(60));
        let t = jwt.expose();
        assert_eq!(format!("{jwt:?}"), "Jwt([redacted])");
        let c = keys.verify(t).unwrap();
        assert!(c.allows("acme/fw") && !c.allows("acme/other"));
        assert!(keys.verify(&format!("{t}x")).is_err());
        let other = TokenKeys::new(&SecretString::from("z".repeat(43)));
        assert!(other.verify(t).is_err());
        // Expired (past the 5 s leeway).
        let now = chrono::Utc::now().timestamp() as u64;
        let old = Claims { sub: "x".into(), iat: now - 100, exp: now - 60, projects: vec![], gitlab_user: None };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &old, &keys.encoding).unwrap();
        assert!(keys.verify(&expired).is_err());
        assert!(!format!("{keys:?}").contains("sekrit"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("15m").unwrap().as_secs(), 900);
        assert_eq!(parse_duration("2d").unwrap().as_secs(), 172_800);
        assert!(parse_duration("1w").is_err() && parse_duration("0").is_err() && parse_duration("x").is_err());
        assert!(parse_duration("33333333333333390d").is_err());
    }
}
