//! One-time login codes for the dashboard, so that no token is ever in a URL (issue 16).
//!
//! `cloudci dashboard` and `cloudci demo --keep-serving` print `http://ADDR/login?code=CODE`.
//! The code is random, valid for [`LOGIN_CODE_TTL`] and good for one use: `GET /login?code=`
//! trades it for a session token in the dashboard's `HttpOnly`, `SameSite=Strict` cookie and
//! sends the browser to `/` ([`super::session`]); a second use, or one after its minute, is
//! refused. What the address bar and the browser's history keep is a spent code.
//!
//! A code is `nonce (16 random bytes) ‖ expiry (u32, Unix seconds) ‖ HMAC-SHA256[..16]` in
//! base64url (48 characters), keyed by the state directory's token key: whatever can issue
//! tokens (the CLI as well as the daemon) can mint one, and the daemon checks it without having
//! stored it. The daemon remembers the nonces it has taken until they expire, in memory and in
//! the state directory (`login-codes-spent`, appended and synced before the cookie is answered:
//! [`super::auth::TokenKeys::with_spent_codes`]), so a code taken before a restart (or a crash) stays taken after it.
//! The file is rewritten without the expired codes at each start; between starts it grows by a
//! line per login.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// How long a login code can be used.
pub const LOGIN_CODE_TTL: Duration = Duration::from_secs(60);

/// Keeps a code's MAC apart from the JWTs signed with the same key (their signing input is
/// base64 text, never this).
const DOMAIN: &[u8] = b"cloudci dashboard login code\0";
const NONCE: usize = 16;
const TAG: usize = 16;
const LEN: usize = NONCE + 4 + TAG;

/// A login code. `Debug` does not show it; [`LoginCode::expose`] does, to print it on purpose.
pub struct LoginCode(SecretString);

impl LoginCode {
    /// The code's text, for the URL printed to the user.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for LoginCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginCode([redacted])")
    }
}

/// Why a code was refused (never says which of these).
#[derive(Debug, thiserror::Error)]
#[error(
    "this login code is not valid: it was used already, has expired (a code works once, within 60 s) or was never issued"
)]
pub struct BadCode;

/// Why a code was not taken.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// Not a code this key issued, spent, or expired.
    #[error(transparent)]
    Bad(#[from] BadCode),
    /// A good code, left unspent: it could not be recorded as spent (a full disk), and a code
    /// not recorded could be taken again after a restart.
    #[error("cannot record the login code as used ({0}); try it again once the state directory can be written")]
    Unrecorded(std::io::Error),
}

/// Mints and takes login codes.
pub(crate) struct LoginCodes {
    mac: Hmac<Sha256>,
    /// Nonces taken, with their expiry: each is taken once.
    spent: Mutex<HashMap<[u8; NONCE], u64>>,
    /// Where taken nonces are recorded, to stay taken across restarts (`None`: in memory only).
    file: Option<PathBuf>,
}

fn now() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

impl LoginCodes {
    /// Codes keyed by `key` (the token key's bytes).
    pub(crate) fn new(key: &[u8]) -> Self {
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        Self { mac, spent: Mutex::default(), file: None }
    }

    /// Codes keyed by `key` whose spent nonces are recorded in `file`: those it holds that have
    /// not expired are taken already; the file is rewritten with only them.
    pub(crate) fn persisted(key: &[u8], file: &Path) -> std::io::Result<Self> {
        let now = now();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        // A line cut short by a crash was never answered (the line is synced first): skipped.
        let spent: HashMap<[u8; NONCE], u64> = text
            .lines()
            .filter_map(|l| {
                let (expiry, nonce) = l.split_once(' ')?;
                let nonce: [u8; NONCE] = URL_SAFE_NO_PAD.decode(nonce).ok()?.try_into().ok()?;
                Some((nonce, expiry.parse::<u64>().ok()?))
            })
            .filter(|(_, expiry)| *expiry >= now)
            .collect();
        let tmp = file.with_extension("tmp");
        {
            let mut out = std::fs::File::create(&tmp)?;
            for (nonce, expiry) in &spent {
                writeln!(out, "{expiry} {}", URL_SAFE_NO_PAD.encode(nonce))?;
            }
            out.sync_all()?;
        }
        std::fs::rename(&tmp, file)?;
        let mut codes = Self::new(key);
        codes.spent = Mutex::new(spent);
        codes.file = Some(file.to_owned());
        Ok(codes)
    }

    fn tag(&self, nonce: &[u8], expiry: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(nonce);
        mac.update(expiry);
        mac
    }

    /// A new code, valid for [`LOGIN_CODE_TTL`] from now.
    pub(crate) fn issue(&self) -> LoginCode {
        let mut raw = [0u8; LEN];
        rand::rng().fill(&mut raw[..NONCE]);
        let expiry = u32::try_from(now() + LOGIN_CODE_TTL.as_secs()).unwrap_or(u32::MAX).to_be_bytes();
        raw[NONCE..NONCE + 4].copy_from_slice(&expiry);
        let tag = self.tag(&raw[..NONCE], &expiry).finalize().into_bytes();
        raw[NONCE + 4..].copy_from_slice(&tag[..TAG]);
        LoginCode(SecretString::from(URL_SAFE_NO_PAD.encode(raw)))
    }

    /// Takes `code`: `Ok` the first time a code minted with this key is given within its time
    /// (and, with a file, once it is recorded there).
    pub(crate) fn redeem(&self, code: &str) -> Result<(), RedeemError> {
        let raw = URL_SAFE_NO_PAD.decode(code.trim()).map_err(|_| BadCode)?;
        if raw.len() != LEN {
            return Err(BadCode.into());
        }
        let (nonce, rest) = raw.split_at(NONCE);
        let (expiry, tag) = rest.split_at(4);
        self.tag(nonce, expiry).verify_truncated_left(tag).map_err(|_| BadCode)?;
        let expiry = u64::from(u32::from_be_bytes(expiry.try_into().map_err(|_| BadCode)?));
        let now = now();
        // A code is short-lived whoever minted it.
        if expiry < now || expiry > now + LOGIN_CODE_TTL.as_secs() + 5 {
            return Err(BadCode.into());
        }
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        spent.retain(|_, until| *until >= now);
        let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| BadCode)?;
        if spent.contains_key(&nonce) {
            return Err(BadCode.into());
        }
        if let Some(file) = &self.file {
            // Synced before the answer: a restart right after it still knows the code is spent.
            // (Under the lock, so two takes of one code cannot both pass; logins are rare.)
            let line = format!("{expiry} {}\n", URL_SAFE_NO_PAD.encode(nonce));
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|()| f.sync_data()))
                .map_err(RedeemError::Unrecorded)?;
        }
        spent.insert(nonce, expiry);
        Ok(())
    }

    /// A code for `nonce` expiring at `expiry` (tests: codes from the past or the far future).
    #[cfg(test)]
    fn at(&self, nonce: [u8; NONCE], expiry: u32) -> String {
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&expiry.to_be_bytes());
        let tag = self.tag(&nonce, &expiry.to_be_bytes()).finalize().into_bytes();
        raw.extend_from_slice(&tag[..TAG]);
        URL_SAFE_NO_PAD.encode(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_within_its_minute_and_only_with_its_key() {
        let codes = LoginCodes::new(b"a key of at least thirty-two bytes!!");
        let code = codes.issue();
        assert_eq!(code.expose().len(), 48);
        assert_eq!(format!("{code:?}"), "LoginCode([redacted])");
        assert!(codes.redeem(code.expose()).is_ok());
        assert!(codes.redeem(code.expose()).is_err(), "a second use");
        let other = LoginCodes::new(b"another key, also thirty-two bytes!");
        assert!(other.redeem(codes.issue().expose()).is_err(), "another key's code");
        let now = now() as u32;
        assert!(codes.redeem(&codes.at([1; NONCE], now - 1)).is_err(), "expired");
        assert!(codes.redeem(&codes.at([2; NONCE], now + 3600)).is_err(), "valid for an hour");
        assert!(codes.redeem(&codes.at([3; NONCE], now + 30)).is_ok());
        // Tampered, truncated, not base64.
        let mut tampered = codes.issue().expose().to_owned();
        let last = if tampered.ends_with('A') { 'B' } else { 'A' };
        tampered.pop();
        tampered.push(last);
        assert!(codes.redeem(&tampered).is_err());
        assert!(codes.redeem(&codes.issue().expose()[..40]).is_err());
        assert!(codes.redeem("not a code!").is_err());
    }

    #[test]
    fn spent_codes_stay_spent_across_a_restart_and_expired_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("login-codes-spent");
        let key = b"a key of at least thirty-two bytes!!";
        let first = LoginCodes::persisted(key, &file).unwrap();
        let (taken, unused) = (first.issue(), first.issue());
        first.redeem(taken.expose()).unwrap();
        drop(first);
        // A code long expired, a line cut short by a crash, and garbage.
        let expired = format!("100 {}\n12 AAA\nnonsense\n", URL_SAFE_NO_PAD.encode([7u8; NONCE]));
        std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(expired.as_bytes()).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 4);
        let second = LoginCodes::persisted(key, &file).unwrap();
        assert!(matches!(second.redeem(taken.expose()), Err(RedeemError::Bad(_))), "replayed after a restart");
        assert!(second.redeem(unused.expose()).is_ok(), "a code never taken still works once");
        // Rewritten at the start without the expired code and the garbage; then the new take.
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }
}
