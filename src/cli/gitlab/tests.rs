//! Server and token choice, arguments.

use super::actions::human_bytes;
use super::connect::{Connection, same_server, server_url};
use super::*;
use crate::cli::vars::parse_var;
use crate::config::Config;
use secrecy::SecretString;

#[test]
fn variables_and_hosts() {
    assert!(parse_var("BO ARD=x").is_err());
    assert_eq!(server_url(None), "https://gitlab.com");
    assert_eq!(server_url(Some("gitlab.example.com")), "https://gitlab.example.com");
    assert_eq!(server_url(Some("http://127.0.0.1:9")), "http://127.0.0.1:9");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert!(same_server("https://gitlab.example.com/", "https://GITLAB.example.com:443/api/v4"));
    assert!(!same_server("https://gitlab.example.com", "https://gitlab.com"));
    assert!(!same_server("http://127.0.0.1:1", "http://127.0.0.1:2"));
}

#[test]
fn the_token_goes_only_with_its_server() {
    use secrecy::ExposeSecret;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "glpat-FROM-FILE\n").unwrap();
    let mut config = Config::default();
    config.gitlab.url = Some("https://gitlab.example.com".into());
    // A variable nobody sets, so the file is what the configuration yields.
    config.gitlab.token_env = Some("CLOUDCI_TEST_UNSET_TOKEN_VARIABLE".into());
    config.gitlab.token_file = Some(dir.path().join("token"));
    let env = || Some(SecretString::from("glpat-FROM-ENV"));
    let token = |c: &Connection| c.token.as_ref().map(|t| t.expose_secret().to_owned());

    let c = connection(None, None, env()).unwrap();
    assert_eq!((c.url.as_str(), c.defaulted, token(&c).as_deref()), (DEFAULT_SERVER, true, Some("glpat-FROM-ENV")));
    let c = connection(Some("  "), None, None).unwrap();
    assert!(c.defaulted && c.token.is_none());

    let c = connection(None, Some(&config), env()).unwrap();
    assert_eq!((c.url.as_str(), c.defaulted), ("https://gitlab.example.com", false));
    assert_eq!(token(&c).as_deref(), Some("glpat-FROM-FILE"));

    let c = connection(Some("gitlab.example.com"), Some(&config), env()).unwrap();
    assert_eq!(token(&c).as_deref(), Some("glpat-FROM-FILE"));

    let c = connection(Some("http://127.0.0.1:9"), Some(&config), env()).unwrap();
    assert_eq!((c.url.as_str(), token(&c).as_deref()), ("http://127.0.0.1:9", Some("glpat-FROM-ENV")));
    let c = connection(Some("http://127.0.0.1:9"), Some(&config), None).unwrap();
    assert!(c.token.is_none());

    config.gitlab.token_file = Some(dir.path().join("missing"));
    let e = connection(None, Some(&config), env()).unwrap_err();
    assert!(e.message.contains("missing") && !e.message.contains("glpat"), "{}", e.message);
}
