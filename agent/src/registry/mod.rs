//! The registry side of a pull (OCI distribution spec), over `oci-client`:
//! anonymous, basic and bearer-token auth, TLS verified against the system roots
//! plus configured CA files, plain HTTP only for registries listed as insecure.
//!
//! Credentials live in [`Credentials`], whose `Debug` never shows the secret;
//! errors say what went wrong (unauthorized, not found, TLS, unreachable) in
//! words a user can act on, never with the secret in them.

use bytes::Bytes;
use futures_util::stream::BoxStream;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::time::Duration;

pub use crate::model::Credentials;

fn auth(c: &Credentials) -> RegistryAuth {
    match c {
        Credentials::Basic { username, password } => RegistryAuth::Basic(username.clone(), password.clone()),
        Credentials::Token(t) => RegistryAuth::Bearer(t.clone()),
    }
}

/// Media types a pull accepts for the top-level reference.
pub const ACCEPTED_MANIFESTS: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// `host:port` of registries reached over plain HTTP.
    pub insecure: Vec<String>,
    /// PEM CA certificates trusted besides the system roots.
    pub ca_pems: Vec<Vec<u8>>,
    /// Credentials by registry host (`host[:port]`).
    pub credentials: Vec<(String, Credentials)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry} refused the credentials (unauthorized){hint}")]
    Unauthorized { registry: String, hint: &'static str },
    #[error("{what} not found in registry {registry}")]
    NotFound { registry: String, what: String },
    #[error("cannot reach registry {registry}: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("cannot reach registry {registry}: TLS: {reason}")]
    Tls { registry: String, reason: String },
    #[error("registry {registry} answered {status}: {reason}")]
    Server { registry: String, status: u16, reason: String },
    #[error("registry {registry}: {reason}")]
    Other { registry: String, reason: String },
}

impl RegistryError {
    /// Worth retrying: connection failures, 5xx, 429.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Server { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Clients for every registry, with the node's settings. `oci-client` keeps the
/// first credentials (and tokens) it sees per registry, so each set of
/// credentials gets a client of its own: a task's wrong password cannot stick
/// to the registry for the next task.
pub struct Registry {
    config: ClientConfigParts,
    clients: std::sync::Mutex<std::collections::HashMap<String, Client>>,
    settings: RegistrySettings,
    /// Credentials set through the API (`ConfigureContainers`); they win over the config file's.
    api_credentials: std::sync::RwLock<Vec<(String, Credentials)>>,
}

#[derive(Clone)]
struct ClientConfigParts {
    insecure: Vec<String>,
    ca_pems: Vec<Vec<u8>>,
}

impl ClientConfigParts {
    fn build(&self) -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            extra_root_certificates: self
                .ca_pems
                .iter()
                .map(|pem| Certificate { encoding: CertificateEncoding::Pem, data: pem.clone() })
                .collect(),
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        })
    }
}

/// Which client serves `creds` (the secret enters only as a hash).
pub(crate) fn client_key(creds: Option<&Credentials>) -> String {
    use sha2::{Digest, Sha256};
    match creds {
        None => String::new(),
        Some(c) => {
            let user = match c {
                Credentials::Basic { username, .. } => username.as_str(),
                Credentials::Token(_) => "<token>",
            };
            format!("{user}\u{0}{}", hex::encode(Sha256::digest(c.secret().as_bytes())))
        }
    }
}

/// Renders an error and its sources on one line, with `secret` (if any) removed.
fn describe(e: &(dyn std::error::Error + 'static), secret: Option<&str>) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    match secret {
        Some(secret) if !secret.is_empty() => s.replace(secret, "<redacted>"),
        _ => s,
    }
}

impl Registry {
    pub fn new(settings: RegistrySettings) -> Self {
        let config = ClientConfigParts { insecure: settings.insecure.clone(), ca_pems: settings.ca_pems.clone() };
        Self { config, clients: Default::default(), settings, api_credentials: Default::default() }
    }

    /// The client for a set of credentials (clients are cheap to clone).
    fn client(&self, creds: Option<&Credentials>) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.entry(client_key(creds)).or_insert_with(|| self.config.build()).clone()
    }

    /// Configured credentials for a registry host, if any.
    pub fn configured(&self, registry: &str) -> Option<Credentials> {
        let api = self.api_credentials.read().unwrap_or_else(|p| p.into_inner());
        api.iter()
            .chain(self.settings.credentials.iter())
            .find(|(server, _)| server == registry)
            .map(|(_, c)| c.clone())
    }

    /// Replaces the credentials set through the API.
    pub fn set_api_credentials(&self, creds: Vec<(String, Credentials)>) {
        *self.api_credentials.write().unwrap_or_else(|p| p.into_inner()) = creds;
    }

    fn map_err(
        &self,
        reference: &Reference,
        what: &str,
        e: OciDistributionError,
        creds: Option<&Credentials>,
    ) -> RegistryError {
        let registry = reference.resolve_registry().to_owned();
        let secret = creds.map(Credentials::secret);
        match &e {
            OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
                RegistryError::Unauthorized {
                    registry,
                    hint: if creds.is_some() { "" } else { "; no credentials were given for it" },
                }
            }
            OciDistributionError::ImageManifestNotFoundError(_) => {
                RegistryError::NotFound { registry, what: what.into() }
            }
            OciDistributionError::ServerError { code, message, .. } => {
                if *code == 401 || *code == 403 {
                    RegistryError::Unauthorized { registry, hint: "" }
                } else if *code == 404 {
                    RegistryError::NotFound { registry, what: what.into() }
                } else {
                    RegistryError::Server { registry, status: *code, reason: message.clone() }
                }
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                use oci_client::errors::OciErrorCode as C;
                let codes: Vec<&C> = envelope.errors.iter().map(|e| &e.code).collect();
                let reason = envelope.errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; ");
                if codes.iter().any(|c| matches!(c, C::Toomanyrequests)) {
                    RegistryError::Server { registry, status: 429, reason }
                } else if codes.iter().any(|c| matches!(c, C::Unauthorized | C::Denied)) {
                    RegistryError::Unauthorized { registry, hint: "" }
                } else if codes.iter().any(|c| matches!(c, C::ManifestUnknown | C::BlobUnknown | C::NameUnknown)) {
                    RegistryError::NotFound { registry, what: format!("{what} ({reason})") }
                } else {
                    RegistryError::Other { registry, reason: reason.replace(secret.unwrap_or("\u{0}"), "<redacted>") }
                }
            }
            OciDistributionError::RequestError(re) => {
                let reason = describe(re, secret);
                let lower = reason.to_lowercase();
                // A certificate problem will not go away by trying again.
                if lower.contains("certificate") || lower.contains("tls") {
                    RegistryError::Tls { registry, reason }
                } else if re.is_builder() {
                    RegistryError::Other { registry, reason }
                } else {
                    RegistryError::Unreachable { registry, reason }
                }
            }
            _ => RegistryError::Other { registry, reason: describe(&e, secret) },
        }
    }

    /// Fetches a manifest or index: its bytes, media type and digest.
    pub async fn manifest(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
    ) -> Result<(Bytes, String, String), RegistryError> {
        let auth = creds.map(auth).unwrap_or(RegistryAuth::Anonymous);
        let what = format!("manifest {reference}");
        let (bytes, digest) = self
            .client(creds)
            .pull_manifest_raw(reference, &auth, &ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| self.map_err(reference, &what, e, creds))?;
        let media_type = media_type_of(&bytes);
        Ok((bytes, media_type, digest))
    }

    /// Streams a blob (the client verifies its digest as it streams).
    pub async fn blob(
        &self,
        reference: &Reference,
        digest: &str,
        creds: Option<&Credentials>,
    ) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, RegistryError> {
        // Blob pulls reuse the token the manifest pull obtained for this repository.
        let auth = creds.map(auth).unwrap_or(RegistryAuth::Anonymous);
        let client = self.client(creds);
        client.store_auth_if_needed(reference.resolve_registry(), &auth).await;
        let what = format!("blob {digest}");
        let sized =
            client.pull_blob_stream(reference, digest).await.map_err(|e| self.map_err(reference, &what, e, creds))?;
        Ok(sized.stream)
    }
}

/// The media type a manifest declares (OCI and Docker schema 2 both carry it);
/// schema 1 manifests are recognised so they can be refused by name.
pub fn media_type_of(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe { media_type: Some(m), .. }) => m,
        Ok(Probe { schema_version: Some(1), .. }) => "application/vnd.docker.distribution.manifest.v1+json".into(),
        // OCI allows the media type to be left out; an index has "manifests".
        Ok(Probe { manifests: Some(_), .. }) => "application/vnd.oci.image.index.v1+json".into(),
        _ => "application/vnd.oci.image.manifest.v1+json".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert_eq!(media_type_of(br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#), "application/vnd.docker.distribution.manifest.list.v2+json");
        assert_eq!(media_type_of(br#"{"schemaVersion":2,"manifests":[]}"#), "application/vnd.oci.image.index.v1+json");
        assert_eq!(
            media_type_of(br#"{"schemaVersion":1,"name":"x"}"#),
            "application/vnd.docker.distribution.manifest.v1+json"
        );
        assert_eq!(media_type_of(br#"{"schemaVersion":2,"config":{}}"#), "application/vnd.oci.image.manifest.v1+json");
    }

    #[test]
    fn secrets_are_scrubbed_from_messages() {
        let e = std::io::Error::other("bad auth for user:hunter2");
        assert_eq!(describe(&e, Some("hunter2")), "bad auth for user:<redacted>");
    }
}
