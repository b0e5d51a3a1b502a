//! The state directory: the event database, generated secrets, and what the running daemon
//! publishes for other commands (`hook.json`: the public URL; no secrets).

use std::path::{Path, PathBuf};

use cloudci_webhook::{HookSecrets, SecretFileError, SecretFiles, create_private_dir, random_token};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Secret file names.
const PATH_SECRET: &str = "path-secret";
const HOOK_TOKEN: &str = "hook-token";
const SIGNING_TOKEN: &str = "signing-token";
const JWT_KEY: &str = "jwt-key";
const INSTANCE: &str = "instance-id";
const CLI_TOKEN: &str = "cli-token";

/// What the daemon publishes about its hook endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookInfo {
    /// The public base URL GitLab reaches.
    pub public_url: String,
    /// GitLab confirmed the signing token, so signatures are required.
    pub signing_confirmed: bool,
    /// The local API's address.
    pub api_url: String,
    /// The team relay the daemon takes its events from (`serve --relay`): then it has no hook
    /// and no public URL of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
}

/// Why the webhook secrets could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HookSecretsError {
    /// A secret file.
    #[error(transparent)]
    File(#[from] SecretFileError),
    /// The signing token file does not hold a `whsec_` token.
    #[error(transparent)]
    Signing(#[from] cloudci_webhook::BadSigningToken),
}

/// Held while a daemon uses the state directory; released when dropped or when the process ends.
#[derive(Debug)]
pub struct DaemonLock {
    _file: std::fs::File,
}

/// Why the state directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another daemon holds it.
    #[error(
        "another cloudci serve{} is already using the state directory {}; stop it, or give this one its own [store] path",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        dir.display()
    )]
    Held {
        /// The state directory.
        dir: PathBuf,
        /// The other daemon's process id, as it wrote it.
        pid: Option<u32>,
    },
    /// The lock file could not be opened or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    secrets: SecretFiles,
}

impl StateDir {
    /// The state directory at `root` (created 0700 on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self { secrets: SecretFiles::new(root.join("secrets")), root }
    }

    /// Creates it if needed.
    pub fn create(&self) -> std::io::Result<()> {
        create_private_dir(&self.root)
    }

    /// Its path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite event store.
    pub fn database(&self) -> PathBuf {
        self.root.join("events.db")
    }

    /// This installation's id (names its hooks on GitLab).
    pub fn instance_id(&self) -> Result<String, SecretFileError> {
        self.secrets.get_or_create(INSTANCE, 12).map(|s| s.expose_secret().to_owned())
    }

    /// The hook path secret (128 bits).
    pub fn path_secret(&self) -> Result<SecretString, SecretFileError> {
        self.secrets.get_or_create(PATH_SECRET, 16)
    }

    /// The `X-Gitlab-Token` value.
    pub fn hook_token(&self) -> Result<SecretString, SecretFileError> {
        self.secrets.get_or_create(HOOK_TOKEN, 32)
    }

    /// The GitLab 19 signing token, `whsec_` + base64 of 32 random bytes.
    pub fn signing_token(&self) -> Result<SecretString, SecretFileError> {
        if let Some(t) = self.secrets.read(SIGNING_TOKEN)? {
            return Ok(t);
        }
        use base64::Engine;
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        let token = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key));
        self.secrets.write(SIGNING_TOKEN, &token)?;
        Ok(SecretString::from(token))
    }

    /// The key local API tokens are signed with (256 bits).
    pub fn jwt_key(&self) -> Result<SecretString, SecretFileError> {
        self.secrets.get_or_create(JWT_KEY, 32)
    }

    /// Saves the local API token the daemon issues at start for `cloudci build` on this machine
    /// (mode 0600, like every secret here), so the CLI never needs the signing key.
    pub fn write_cli_token(&self, token: &crate::api::auth::Jwt) -> Result<(), SecretFileError> {
        self.secrets.write(CLI_TOKEN, token.expose())
    }

    /// The token the running daemon issued for the CLI, if it wrote one.
    pub fn cli_token(&self) -> Result<Option<SecretString>, SecretFileError> {
        self.secrets.read(CLI_TOKEN)
    }

    /// The path secrets the receiver accepts: current, then the one before a rotation.
    pub fn path_secrets(&self) -> Result<Vec<SecretString>, SecretFileError> {
        let mut list = vec![self.path_secret()?];
        list.extend(self.secrets.read(&format!("{PATH_SECRET}.previous"))?);
        Ok(list)
    }

    /// What the receiver checks deliveries against. Signatures are required only when GitLab
    /// confirmed the signing token (older GitLab sends none).
    pub fn hook_secrets(&self, require_signature: bool) -> Result<HookSecrets, HookSecretsError> {
        let mut paths = self.path_secrets()?.into_iter();
        let current = paths.next().expect("the current path secret");
        let mut tokens = vec![self.hook_token()?];
        tokens.extend(self.secrets.read(&format!("{HOOK_TOKEN}.previous"))?);
        let mut secrets = HookSecrets::new(current, tokens);
        for previous in paths {
            secrets = secrets.with_previous_path(previous);
        }
        if require_signature {
            let signing = self.signing_token()?;
            secrets = secrets.with_signing_token(&signing)?;
        }
        Ok(secrets)
    }

    /// New path secret and token; the current ones stay accepted as "previous" until the next
    /// rotation, so deliveries already on their way are not refused.
    pub fn rotate(&self) -> Result<(), SecretFileError> {
        for name in [PATH_SECRET, HOOK_TOKEN] {
            if let Some(current) = self.secrets.read(name)? {
                self.secrets.write(&format!("{name}.previous"), current.expose_secret())?;
            }
        }
        self.secrets.write(PATH_SECRET, &random_token(16))?;
        self.secrets.write(HOOK_TOKEN, &random_token(32))?;
        Ok(())
    }

    /// A fingerprint of the secrets files, to notice a rotation by another command.
    pub fn secrets_version(&self) -> String {
        [PATH_SECRET, HOOK_TOKEN]
            .iter()
            .filter_map(|n| std::fs::metadata(self.root.join("secrets").join(n)).ok()?.modified().ok())
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join("|")
    }

    /// The daemon's published hook info, if it ran.
    pub fn hook_info(&self) -> Option<HookInfo> {
        serde_json::from_slice(&std::fs::read(self.root.join("hook.json")).ok()?).ok()
    }

    /// Publishes hook info.
    pub fn write_hook_info(&self, info: &HookInfo) -> std::io::Result<()> {
        let tmp = self.root.join(".hook.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(info).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, self.root.join("hook.json"))
    }

    /// Takes the state directory for this daemon: one `cloudci serve` per state directory, so two
    /// never fight over its hooks, `hook.json` or databases. The lock is the kernel's (`flock`), so
    /// it goes away with the process, however it ends (a `kill -9` leaves no stale lock).
    pub fn lock_daemon(&self) -> Result<DaemonLock, LockError> {
        let path = self.root.join("serve.lock");
        let io = |source| LockError::Io { path: path.clone(), source };
        let mut file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default().trim().to_owned();
                return Err(LockError::Held { dir: self.root.clone(), pid: holder.parse().ok() });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        use std::io::{Seek, Write};
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DaemonLock { _file: file })
    }

    /// The full hook URL for a public base URL.
    pub fn hook_url(&self, public_url: &str) -> Result<String, SecretFileError> {
        Ok(format!("{}/hooks/{}", public_url.trim_end_matches('/'), self.path_secret()?.expose_secret()))
    }

    /// Creates the directory if needed and checks that this user may list and write it, so that a
    /// bad state path fails at once with the path and the cause (`state directory
    /// /x/state: cannot write in it: Permission denied`, `... /x is a file, not a directory`)
    /// instead of SQLite's `unable to open database file` or a bare `Not a directory`. The
    /// error keeps the cause's kind.
    pub fn ensure_usable(&self) -> std::io::Result<()> {
        let root = &self.root;
        let fail = |what: &str, e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("state directory {}: {what}: {e}", root.display()))
        };
        if let Some(file) = root.ancestors().find(|a| !a.as_os_str().is_empty() && a.exists() && !a.is_dir()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("state directory {}: {} is a file, not a directory", root.display(), file.display()),
            ));
        }
        create_private_dir(root).map_err(|e| fail("cannot create it", e))?;
        std::fs::read_dir(root).map_err(|e| fail("cannot read it", e))?;
        let probe = root.join(format!(".write-check-{}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)
            .map_err(|e| fail("cannot write in it", e))?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    }
}
