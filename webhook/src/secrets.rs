//! Secrets generated on first start and kept in the state directory, readable by the owner only:
//! the hook path secret, the hook token (and the previous one during a rotation), and the key
//! that signs local API tokens.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt;
use secrecy::SecretString;

/// Random bytes from the OS-seeded CSPRNG, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    URL_SAFE_NO_PAD.encode(buf)
}

/// A secrets file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct SecretFileError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The secrets in a state directory.
#[derive(Debug, Clone)]
pub struct SecretFiles {
    dir: PathBuf,
}

impl SecretFiles {
    /// Secrets kept under `dir` (created `0700` if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The value in `name`, if the file exists.
    pub fn read(&self, name: &str) -> Result<Option<SecretString>, SecretFileError> {
        let path = self.path(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(SecretString::from(s.trim().to_owned()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SecretFileError { path, source }),
        }
    }

    /// Writes `value` to `name` atomically with mode 0600.
    pub fn write(&self, name: &str, value: &str) -> Result<(), SecretFileError> {
        let path = self.path(name);
        let err = |source| SecretFileError { path: path.clone(), source };
        create_private_dir(&self.dir).map_err(err)?;
        let tmp = self.path(&format!(".{name}.tmp"));
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(err)?;
            f.write_all(value.as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, &path).map_err(err)
    }

    /// The value in `name`, generated with `bytes` random bytes on first use.
    pub fn get_or_create(&self, name: &str, bytes: usize) -> Result<SecretString, SecretFileError> {
        if let Some(v) = self.read(name)? {
            return Ok(v);
        }
        let value = random_token(bytes);
        self.write(name, &value)?;
        Ok(SecretString::from(value))
    }
}

/// Creates `dir` (and parents) with mode 0700 for the last component.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn generated_once_private_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let files = SecretFiles::new(dir.path().join("state"));
        let a = files.get_or_create("path-secret", 16).unwrap();
        let b = files.get_or_create("path-secret", 16).unwrap();
        assert_eq!(a.expose_secret(), b.expose_secret());
        // 16 bytes = 128 bits, base64url without padding.
        assert_eq!(a.expose_secret().len(), 22);
        assert!(a.expose_secret().chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("state/path-secret")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_ne!(random_token(16), random_token(16));
    }
}
