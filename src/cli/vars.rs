//! `--var KEY=VALUE`: the one parser and validator for CI variables given on the command line.
//!
//! GitLab accepts a CI/CD variable key only when it is made of letters, digits and `_` (its
//! validation message: "can contain only letters, digits and '_'"), at most 255 characters. A key
//! GitLab would refuse is refused here, before anything is sent, with the reason.

/// The longest key GitLab stores.
pub const MAX_KEY_LEN: usize = 255;

/// Why a `--var` was refused; its text is what the user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VarError(String);

/// Checks a CI variable key: non-empty, at most [`MAX_KEY_LEN`] characters, only `A-Z a-z 0-9 _`.
pub fn check_key(key: &str) -> Result<(), VarError> {
    if key.is_empty() {
        return Err(VarError("the variable name is empty".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(VarError(format!("the variable name is longer than {MAX_KEY_LEN} characters")));
    }
    if let Some(bad) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
        return Err(VarError(format!(
            "{key:?} is not a valid variable name: {bad:?} is not allowed (GitLab allows only letters, digits and _)"
        )));
    }
    Ok(())
}

/// Parses `KEY=VALUE` (the value may contain `=` and be empty), checking the key with
/// [`check_key`]. Usable as a clap `value_parser`.
pub fn parse_var(raw: &str) -> Result<(String, String), VarError> {
    let (key, value) = raw.split_once('=').ok_or_else(|| VarError(format!("{raw:?} is not KEY=VALUE")))?;
    check_key(key)?;
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_gitlab_accepts_and_refuses() {
        assert_eq!(parse_var("BOARD=nucleo=f4").unwrap(), ("BOARD".into(), "nucleo=f4".into()));
        assert_eq!(parse_var("log_level_2=").unwrap(), ("log_level_2".into(), String::new()));
        assert_eq!(parse_var("1ST=x").unwrap().0, "1ST");
        assert!(parse_var("BOARD").unwrap_err().to_string().contains("is not KEY=VALUE"));
        let e = parse_var("A B=1").unwrap_err().to_string();
        assert!(e.contains("\"A B\"") && e.contains("' '") && e.contains("letters, digits and _"), "{e}");
        assert!(parse_var("=1").unwrap_err().to_string().contains("empty"));
        assert!(parse_var("A-B=1").is_err());
        assert!(parse_var("Ä=1").is_err());
        assert!(parse_var(&format!("{}=1", "K".repeat(256))).unwrap_err().to_string().contains("255"));
        assert!(parse_var(&format!("{}=1", "K".repeat(255))).is_ok());
    }
}
