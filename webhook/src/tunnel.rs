//! How GitLab reaches the public listener: through a tunnel, or through an address the user
//! provides (their own reverse proxy). The ngrok crate's API moves; it stays behind [`Tunnel`].

use std::net::SocketAddr;
use std::time::Duration;

/// A tunnel failure.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The tunnel could not be opened.
    #[error("cannot open the tunnel: {0}")]
    Open(String),
    /// The public URL never answered our probe.
    #[error("the public URL {url} does not reach this receiver: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The last probe's result.
        reason: String,
    },
}

/// What [`Tunnel::open`] returns.
pub type OpenFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Box<dyn OpenTunnel>, TunnelError>> + Send + 'a>>;

/// An open tunnel. Dropping it closes the public endpoint.
pub trait OpenTunnel: Send + Sync + std::fmt::Debug {
    /// The public base URL (`https://abc.ngrok.app`).
    fn public_url(&self) -> &str;
}

/// Something that exposes a local listener publicly.
pub trait Tunnel: Send + Sync {
    /// Opens the tunnel to `local` (the public listener's loopback address).
    fn open(&self, local: SocketAddr) -> OpenFuture<'_>;
}

/// No tunnel: the user's own public URL forwards to the listener.
#[derive(Debug, Clone)]
pub struct NoTunnel {
    /// The public base URL.
    pub public_url: String,
}

#[derive(Debug)]
struct Fixed(String);

impl OpenTunnel for Fixed {
    fn public_url(&self) -> &str {
        &self.0
    }
}

impl Tunnel for NoTunnel {
    fn open(&self, _local: SocketAddr) -> OpenFuture<'_> {
        let url = self.public_url.trim_end_matches('/').to_owned();
        Box::pin(async move { Ok(Box::new(Fixed(url)) as Box<dyn OpenTunnel>) })
    }
}

/// Probes `{public_url}/probe/{nonce}` until the receiver answers 204 through it: a fresh ngrok
/// endpoint can answer "offline" (ERR_NGROK_3200) for a moment, and a hook registered before the
/// URL works would collect failures towards GitLab's auto-disable.
pub async fn probe(public_url: &str, nonce: &str, within: Duration) -> Result<(), TunnelError> {
    cloudci_gitlab::install_tls_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| TunnelError::Open(e.to_string()))?;
    let url = format!("{}/probe/{nonce}", public_url.trim_end_matches('/'));
    let deadline = tokio::time::Instant::now() + within;
    let mut wait = Duration::from_millis(200);
    loop {
        let reason = match client.get(&url).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::NO_CONTENT => return Ok(()),
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => format!("{}", e.without_url()),
        };
        if tokio::time::Instant::now() + wait > deadline {
            return Err(TunnelError::Unreachable { url: public_url.to_owned(), reason });
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

#[cfg(feature = "ngrok")]
pub use ngrok_tunnel::NgrokTunnel;

#[cfg(feature = "ngrok")]
mod ngrok_tunnel {
    use std::net::SocketAddr;

    use ngrok::config::ForwarderBuilder;
    use ngrok::forwarder::Forwarder;
    use ngrok::tunnel::{EndpointInfo, HttpTunnel};
    use secrecy::{ExposeSecret, SecretString};

    use super::{OpenFuture, OpenTunnel, Tunnel, TunnelError};

    /// An ngrok HTTP endpoint forwarding to the local listener (token from `NGROK_AUTHTOKEN`).
    pub struct NgrokTunnel {
        /// The ngrok authtoken.
        pub authtoken: SecretString,
    }

    impl std::fmt::Debug for NgrokTunnel {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("NgrokTunnel([redacted])")
        }
    }

    struct Open {
        url: String,
        // Held to keep the endpoint up; dropping it closes the tunnel.
        _forwarder: Forwarder<HttpTunnel>,
    }

    impl std::fmt::Debug for Open {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("NgrokOpen").field("url", &self.url).finish_non_exhaustive()
        }
    }

    impl OpenTunnel for Open {
        fn public_url(&self) -> &str {
            &self.url
        }
    }

    impl Tunnel for NgrokTunnel {
        fn open(&self, local: SocketAddr) -> OpenFuture<'_> {
            Box::pin(async move {
                let session = ngrok::Session::builder()
                    .authtoken(self.authtoken.expose_secret())
                    .connect()
                    .await
                    .map_err(|e| TunnelError::Open(e.to_string()))?;
                let to = url::Url::parse(&format!("http://{local}")).map_err(|e| TunnelError::Open(e.to_string()))?;
                let forwarder = session
                    .http_endpoint()
                    .listen_and_forward(to)
                    .await
                    .map_err(|e| TunnelError::Open(e.to_string()))?;
                let url = forwarder.url().to_owned();
                Ok(Box::new(Open { url, _forwarder: forwarder }) as Box<dyn OpenTunnel>)
            })
        }
    }
}
