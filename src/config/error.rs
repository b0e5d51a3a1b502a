//! What goes wrong reading `cloudci.toml`, and where: every error names the file, line and key.

use std::path::{Path, PathBuf};

/// A configuration problem, located.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No file found.
    #[error("no configuration found; looked for {}. Write one (see config/cloudci.toml) or pass --config FILE", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound(Vec<PathBuf>),
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid, with the place.
    #[error("{}:{line}: {message}\n  {line} | {text}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// That line's text.
        text: String,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// The text a configuration came from, so each section's checks can point at a line.
pub(super) struct Source<'a> {
    /// The whole file.
    pub(super) text: &'a str,
    /// Where it came from.
    pub(super) path: &'a Path,
}

impl Source<'_> {
    /// An error at byte `offset` of the text.
    pub(super) fn at(&self, offset: usize, message: String) -> ConfigError {
        let text = self.text;
        let line = text[..offset.min(text.len())].matches('\n').count() + 1;
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            text: text.lines().nth(line - 1).unwrap_or("").trim().to_owned(),
            message,
        }
    }

    /// Where a `[section.name]` starts, for errors about a whole table (0 when not written).
    pub(super) fn table(&self, section: &str, name: &str) -> usize {
        let wanted = [format!("[{section}.{name}]"), format!("[{section}.\"{name}\"]")];
        self.text
            .lines()
            .scan(0usize, |off, l| {
                let start = *off;
                *off += l.len() + 1;
                Some((start, l.trim()))
            })
            .find(|(_, l)| wanted.iter().any(|w| l == w))
            .map(|(o, _)| o)
            .unwrap_or(0)
    }

    /// Where a `[section]` starts (0 when not written).
    pub(super) fn section(&self, section: &str) -> usize {
        let wanted = format!("[{section}]");
        let mut off = 0;
        for l in self.text.lines() {
            if l.trim() == wanted {
                return off;
            }
            off += l.len() + 1;
        }
        0
    }
}

/// Names for an error message: `a, b`, or `(none)`.
pub(super) fn list(names: &[&String]) -> String {
    if names.is_empty() { "(none)".into() } else { names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ") }
}
