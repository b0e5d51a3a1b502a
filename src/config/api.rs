//! `[api]`: the local listener for the IDE, CLI and dashboard.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// The local listener for the IDE, CLI and dashboard (default `127.0.0.1:8788`).
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Other names the local API answers to, besides its own address (`127.0.0.1:PORT`,
    /// `localhost:PORT`, `[::1]:PORT`): `name` (on the listener's port) or `name:port`, e.g.
    /// behind a proxy. Requests for any other `Host` are refused, so a web page that rebinds its
    /// DNS name to this machine cannot use the API (default: none).
    #[serde(default, deserialize_with = "host_names")]
    pub hosts: Vec<String>,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self { listen: default_api_listen(), hosts: Vec::new() }
    }
}

/// `[api] hosts`: host names, optionally with a port; no scheme, path or spaces.
fn host_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    for n in &names {
        let valid = !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
        if !valid {
            return Err(serde::de::Error::custom(format!(
                "api.hosts: {n:?} is not a host name (write `name` or `name:port`, without a scheme or path)"
            )));
        }
    }
    Ok(names)
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8788))
}
