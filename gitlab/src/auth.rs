//! How requests authenticate.

use std::fmt;

use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use crate::Error;

/// A GitLab credential. `Debug` never shows it.
#[derive(Clone)]
pub enum Auth {
    /// A personal, project or group access token, sent as `PRIVATE-TOKEN`.
    PrivateToken(SecretString),
    /// An OAuth 2 access token, sent as `Authorization: Bearer`.
    OAuth(SecretString),
    /// No credential (public projects only).
    None,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PrivateToken(_) => "PrivateToken([redacted])",
            Self::OAuth(_) => "OAuth([redacted])",
            Self::None => "None",
        })
    }
}

impl Auth {
    /// The header that carries the credential, marked sensitive so that no HTTP-layer logging
    /// prints it. This is the only place the token is exposed.
    pub(crate) fn header(&self) -> Result<Option<(HeaderName, HeaderValue)>, Error> {
        let (name, value) = match self {
            Self::PrivateToken(t) => (HeaderName::from_static("private-token"), t.expose_secret().to_owned()),
            Self::OAuth(t) => (AUTHORIZATION, format!("Bearer {}", t.expose_secret())),
            Self::None => return Ok(None),
        };
        let mut value = HeaderValue::from_str(value.trim())
            .map_err(|_| Error::Config("the GitLab token contains characters not allowed in an HTTP header".into()))?;
        value.set_sensitive(true);
        Ok(Some((name, value)))
    }
}
