//! Client-side connection to an agent, over a unix socket or TCP.

use tonic::transport::{Channel, Endpoint};

/// Why an agent address could not be reached.
#[derive(Debug)]
pub enum ConnectError {
    /// The address is neither `unix:///path`, `unix:/path`, a path, nor `http://host:port`.
    BadAddress(String),
    /// The transport failed to connect.
    Transport(tonic::transport::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::BadAddress(a) => {
                write!(f, "bad agent address {a:?}: expected unix:///path/to/socket or http://host:port")
            }
            ConnectError::Transport(e) => {
                write!(f, "cannot connect to the agent: {e}")?;
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// The unix socket path named by `addr`, if it names one.
fn unix_path(addr: &str) -> Option<&str> {
    if let Some(p) = addr.strip_prefix("unix://") {
        return Some(p);
    }
    if let Some(p) = addr.strip_prefix("unix:") {
        return Some(p);
    }
    addr.starts_with('/').then_some(addr)
}

/// Connects to an agent at `addr` (a unix socket, or plain `http://`).
pub async fn connect(addr: &str) -> Result<Channel, ConnectError> {
    if let Some(path) = unix_path(addr) {
        let path = path.to_owned();
        // The URI is required by the API but not used by the unix connector.
        return Endpoint::from_static("http://[::1]:50051")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(ConnectError::Transport);
    }
    connect_tls(addr, None).await
}

/// PEM material for TLS to an agent: the CA that signed its certificate and,
/// for mutual TLS, this client's certificate and key.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca: Option<Vec<u8>>,
    pub cert_and_key: Option<(Vec<u8>, Vec<u8>)>,
}

/// Connects to an agent at `addr`; `https://host:port` with `tls`.
pub async fn connect_tls(addr: &str, tls: Option<ClientTls>) -> Result<Channel, ConnectError> {
    if unix_path(addr).is_some() {
        return Box::pin(connect(addr)).await;
    }
    if addr.starts_with("http://") || addr.starts_with("https://") {
        let mut endpoint = Endpoint::from_shared(addr.to_owned()).map_err(|_| ConnectError::BadAddress(addr.into()))?;
        if let Some(tls) = tls {
            let mut cfg = tonic::transport::ClientTlsConfig::new();
            if let Some(ca) = tls.ca {
                cfg = cfg.ca_certificate(tonic::transport::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = tls.cert_and_key {
                cfg = cfg.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(cfg).map_err(ConnectError::Transport)?;
        }
        return endpoint.connect().await.map_err(ConnectError::Transport);
    }
    Err(ConnectError::BadAddress(addr.into()))
}

#[cfg(test)]
mod tests {
    use super::unix_path;

    #[test]
    fn unix_addresses() {
        assert_eq!(unix_path("unix:///run/berth/agent.sock"), Some("/run/berth/agent.sock"));
        assert_eq!(unix_path("unix:/tmp/a.sock"), Some("/tmp/a.sock"));
        assert_eq!(unix_path("/tmp/a.sock"), Some("/tmp/a.sock"));
        assert_eq!(unix_path("http://127.0.0.1:7070"), None);
    }
}
