//! Checking that a delivery really comes from our GitLab hook: the secret in the path, the
//! `X-Gitlab-Token` (current or previous, for rotation), and GitLab 19's `webhook-signature`.
//! Every comparison of secret material is constant-time.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far a `webhook-timestamp` may be from now (the Standard Webhooks convention; GitLab gives
/// no number).
pub const SIGNATURE_TOLERANCE_SECS: i64 = 5 * 60;

/// Why a delivery was refused. The texts name what failed, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The path secret is wrong.
    #[error("unknown hook path")]
    BadPath,
    /// No `X-Gitlab-Token` header while one is required.
    #[error("missing X-Gitlab-Token")]
    MissingToken,
    /// `X-Gitlab-Token` matches neither the current nor the previous token.
    #[error("X-Gitlab-Token does not match")]
    BadToken,
    /// A signing token is configured but the delivery carries no signature.
    #[error("missing webhook-signature")]
    MissingSignature,
    /// `webhook-id` or `webhook-timestamp` is missing or malformed.
    #[error("missing or malformed {0}")]
    BadSignatureHeader(&'static str),
    /// `webhook-timestamp` is too far from now.
    #[error("webhook-timestamp is {0} s away from now (limit {SIGNATURE_TOLERANCE_SECS} s)")]
    Stale(i64),
    /// No signature in `webhook-signature` matches.
    #[error("webhook-signature does not match")]
    BadSignature,
}

/// The secrets a delivery is checked against. `Debug` shows none of them.
#[derive(Clone)]
pub struct HookSecrets {
    path_secrets: Vec<SecretString>,
    tokens: Vec<SecretString>,
    signing_key: Option<Vec<u8>>,
}

impl fmt::Debug for HookSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookSecrets")
            .field("tokens", &self.tokens.len())
            .field("signing", &self.signing_key.is_some())
            .finish_non_exhaustive()
    }
}

/// The signing token is not `whsec_` followed by base64.
#[derive(Debug, thiserror::Error)]
#[error("a signing token is `whsec_` followed by a base64 key")]
pub struct BadSigningToken;

impl HookSecrets {
    /// Secrets with the path secret and the accepted tokens (current first; an empty list accepts
    /// deliveries without a token).
    pub fn new(path_secret: SecretString, tokens: Vec<SecretString>) -> Self {
        Self { path_secrets: vec![path_secret], tokens, signing_key: None }
    }

    /// Also accepts an earlier path secret (during a rotation, until GitLab's hooks are updated).
    pub fn with_previous_path(mut self, previous: SecretString) -> Self {
        self.path_secrets.push(previous);
        self
    }

    /// Also require GitLab 19's `webhook-signature`, keyed by a `whsec_<base64>` signing token.
    pub fn with_signing_token(mut self, token: &SecretString) -> Result<Self, BadSigningToken> {
        let key = token
            .expose_secret()
            .strip_prefix("whsec_")
            .and_then(|b| STANDARD.decode(b).ok())
            .filter(|k| !k.is_empty())
            .ok_or(BadSigningToken)?;
        self.signing_key = Some(key);
        Ok(self)
    }

    /// Checks the path secret alone (done first: a wrong path is a 404, as for any unknown URL).
    pub fn check_path(&self, given: &str) -> Result<(), VerifyError> {
        let matched = self
            .path_secrets
            .iter()
            .fold(0u8, |acc, s| acc | u8::from(ct_eq(given.as_bytes(), s.expose_secret().as_bytes())));
        if matched == 1 { Ok(()) } else { Err(VerifyError::BadPath) }
    }

    /// Checks a delivery's headers and raw body. With a signing key, a valid signature is
    /// required (GitLab's advice: verify the signature when there is one); the token is checked
    /// as well whenever tokens are configured.
    pub fn check(&self, headers: &DeliveryHeaders<'_>, body: &[u8], now_unix: i64) -> Result<(), VerifyError> {
        if !self.tokens.is_empty() {
            let given = headers.token.ok_or(VerifyError::MissingToken)?;
            // Check every token, not stopping at the first match, so timing says nothing.
            let matched = self
                .tokens
                .iter()
                .fold(0u8, |acc, t| acc | u8::from(ct_eq(given.trim().as_bytes(), t.expose_secret().as_bytes())));
            if matched == 0 {
                return Err(VerifyError::BadToken);
            }
        }
        if let Some(key) = &self.signing_key {
            let signatures = headers.signature.ok_or(VerifyError::MissingSignature)?;
            let id =
                headers.webhook_id.filter(|s| !s.is_empty()).ok_or(VerifyError::BadSignatureHeader("webhook-id"))?;
            let ts_text = headers.timestamp.ok_or(VerifyError::BadSignatureHeader("webhook-timestamp"))?;
            let ts: i64 = ts_text.trim().parse().map_err(|_| VerifyError::BadSignatureHeader("webhook-timestamp"))?;
            let skew = now_unix - ts;
            if skew.abs() > SIGNATURE_TOLERANCE_SECS {
                return Err(VerifyError::Stale(skew));
            }
            let expected = signature(key, id, ts_text.trim(), body);
            let ok = signatures
                .split(' ')
                .filter_map(|s| s.strip_prefix("v1,"))
                .filter_map(|b| STANDARD.decode(b).ok())
                .fold(0u8, |acc, sig| acc | u8::from(ct_eq(&sig, &expected)));
            if ok == 0 {
                return Err(VerifyError::BadSignature);
            }
        }
        Ok(())
    }
}

/// The headers verification reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliveryHeaders<'a> {
    /// `X-Gitlab-Token`
    pub token: Option<&'a str>,
    /// `webhook-id`
    pub webhook_id: Option<&'a str>,
    /// `webhook-timestamp`
    pub timestamp: Option<&'a str>,
    /// `webhook-signature`
    pub signature: Option<&'a str>,
}

/// HMAC-SHA256 over `{id}.{timestamp}.{body}`.
fn signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// `v1,<base64>` for a `whsec_` token: what GitLab would send. For tests and the demo.
pub fn sign(signing_token: &str, id: &str, timestamp: &str, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(signing_token.strip_prefix("whsec_")?).ok()?;
    Some(format!("v1,{}", STANDARD.encode(signature(&key, id, timestamp, body))))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // Lengths are not secret (GitLab's are fixed); contents are compared in constant time.
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn secrets() -> HookSecrets {
        HookSecrets::new(SecretString::from("p4th"), vec![SecretString::from("new"), SecretString::from("old")])
    }

    #[test]
    fn tokens_current_and_previous() {
        let s = secrets();
        let h = |t| DeliveryHeaders { token: t, ..Default::default() };
        assert_eq!(s.check(&h(Some("new")), b"{}", 0), Ok(()));
        assert_eq!(s.check(&h(Some("old")), b"{}", 0), Ok(()));
        assert_eq!(s.check(&h(Some("nope")), b"{}", 0), Err(VerifyError::BadToken));
        assert_eq!(s.check(&h(None), b"{}", 0), Err(VerifyError::MissingToken));
        assert!(s.check_path("p4th").is_ok());
        assert_eq!(s.check_path("p4tH"), Err(VerifyError::BadPath));
        assert!(!format!("{s:?}").contains("p4th"));
    }

    #[test]
    fn standard_webhooks_reference_vector_and_rules() {
        let s = secrets().with_signing_token(&SecretString::from(KEY)).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let h = |sig, ts| DeliveryHeaders {
            token: Some("new"),
            webhook_id: Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
            timestamp: Some(ts),
            signature: sig,
        };
        let now = 1_614_265_330;
        assert_eq!(s.check(&h(Some(good), "1614265330"), body, now), Ok(()));
        // Any one of several space-separated signatures may match.
        let several = format!("v1,AAAA v1a,xyz {good}");
        assert_eq!(s.check(&h(Some(&several), "1614265330"), body, now), Ok(()));
        assert_eq!(s.check(&h(Some(good), "1614265330"), b"{\"test\": 1}", now), Err(VerifyError::BadSignature));
        assert_eq!(s.check(&h(None, "1614265330"), body, now), Err(VerifyError::MissingSignature));
        assert_eq!(s.check(&h(Some(good), "1614265330"), body, now + 301), Err(VerifyError::Stale(301)));
        assert_eq!(
            s.check(&h(Some(good), "soon"), body, now),
            Err(VerifyError::BadSignatureHeader("webhook-timestamp"))
        );
        assert_eq!(sign(KEY, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body).as_deref(), Some(good));
        assert!(secrets().with_signing_token(&SecretString::from("abc")).is_err());
    }
}
