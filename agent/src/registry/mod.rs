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

mod identity;

pub use crate::model::Credentials;

/// What `oci-client` is given: basic credentials (it exchanges them at the
/// token service itself), or the bearer token an identity token was
/// exchanged for (`identity`).
async fn auth_for(
    registry: &Registry,
    reference: &Reference,
    creds: Option<&Credentials>,
    scrub: &Scrub,
) -> Result<RegistryAuth, RegistryError> {
    Ok(match creds {
        None => RegistryAuth::Anonymous,
        Some(Credentials::Basic { username, password }) => RegistryAuth::Basic(username.clone(), password.clone()),
        Some(Credentials::Token(t)) => RegistryAuth::Bearer(registry.access_token(reference, t, scrub).await?),
    })
}

/// The names Docker Hub goes by in registry settings (`docker login` writes
/// `https://index.docker.io/v1/`, Batch users write `hub.docker.com`).
const DOCKER_HUB: [&str; 5] =
    ["docker.io", "index.docker.io", "registry-1.docker.io", "hub.docker.com", "registry.hub.docker.com"];

/// A registry `server` as users write it, normalised to `host[:port]`: a
/// scheme (`https://`, `http://`) and a trailing `/`, `/v1/` or `/v2/` go,
/// `:443` is the default port, hosts are case-insensitive, and every name of
/// Docker Hub is `docker.io`. Any other path is refused with the reason.
pub fn normalize_server(server: &str) -> Result<String, String> {
    let s = server.trim();
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
    if rest.contains("://") {
        return Err(format!("{server:?}: only https:// or http:// may come before host[:port]"));
    }
    let (host_port, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let path = path.trim_end_matches('/');
    if !(path.is_empty() || path == "v1" || path == "v2") {
        return Err(format!("{server:?}: a registry server is host[:port]; the path /{path} is not part of it"));
    }
    let host_port = host_port.to_ascii_lowercase();
    let host_port = host_port.strip_suffix(":443").unwrap_or(&host_port);
    if host_port.is_empty() || host_port.contains(['@', '?', '#', ' ']) {
        return Err(format!("{server:?} is not host[:port]"));
    }
    if DOCKER_HUB.contains(&host_port) {
        return Ok("docker.io".into());
    }
    Ok(host_port.to_owned())
}

/// Media types a pull accepts for the top-level reference.
pub const ACCEPTED_MANIFESTS: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// `host:port` of registries reached over plain HTTP.
    pub insecure: Vec<String>,
    /// PEM CA certificates trusted besides the system roots.
    pub ca_pems: Vec<Vec<u8>>,
    /// Credentials by registry host (`host[:port]`).
    pub credentials: Vec<(String, Credentials)>,
    /// Largest manifest or index read (`[registries] max_manifest_bytes`).
    pub max_manifest_bytes: u64,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self { insecure: vec![], ca_pems: vec![], credentials: vec![], max_manifest_bytes: 4 << 20 }
    }
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
    #[error("registry {registry}: {what} is larger than {limit} bytes ([registries] max_manifest_bytes)")]
    TooLarge { registry: String, what: String, limit: u64 },
    /// Basic credentials would go to a token service over plain HTTP.
    #[error(
        "registry {registry} sends clients for a token to {realm} over plain HTTP; the credentials were not sent \
         (list that host in [registries] insecure to allow it)"
    )]
    InsecureRealm { registry: String, realm: String },
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

/// The registries' HTTP client (tokens, manifests), trusting the system's
/// roots and `ca_pems`. A node without CA certificates (no ca-certificates,
/// no ca_files) cannot build one: that is an error of the pulls that need it,
/// not of the agent's start.
fn http_client(ca_pems: &[Vec<u8>]) -> Result<reqwest::Client, String> {
    let certs: Vec<reqwest::Certificate> =
        ca_pems.iter().filter_map(|p| reqwest::Certificate::from_pem(p).ok()).collect();
    reqwest::Client::builder()
        .tls_certs_merge(certs)
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .map_err(|e| describe(&e, &Scrub::new(None)))
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
    /// For what `oci-client` does not bound: the token challenge is looked
    /// at before credentials go anywhere, and manifests are read with a cap.
    /// Built at the first pull: an agent that pulls nothing never loads
    /// the TLS stack and the root certificates (issue 23, the idle footprint).
    http: tokio::sync::OnceCell<Result<reqwest::Client, String>>,
    /// Registries whose token service was found safe for basic credentials.
    checked_realms: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Access tokens identity tokens were exchanged for, until they expire.
    exchanged: identity::Exchanged,
}

/// What must never appear in a message: the secret, and the forms it takes
/// on the wire (`user:password` in base64, as a Basic header carries it).
pub(crate) struct Scrub {
    secrets: Vec<String>,
}

impl Scrub {
    pub(crate) fn new(creds: Option<&Credentials>) -> Self {
        use base64::Engine;
        let mut secrets = Vec::new();
        match creds {
            Some(Credentials::Basic { username, password }) => {
                secrets.push(password.clone());
                secrets.push(base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")));
            }
            Some(Credentials::Token(t)) => secrets.push(t.clone()),
            None => {}
        }
        secrets.retain(|s| !s.is_empty());
        Self { secrets }
    }

    pub(crate) fn clean(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |t, s| t.replace(s.as_str(), "<redacted>"))
    }
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

/// Renders an error and its sources on one line, with the secrets removed.
fn describe(e: &(dyn std::error::Error + 'static), scrub: &Scrub) -> String {
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
    scrub.clean(&s)
}

impl Registry {
    pub fn new(settings: RegistrySettings) -> Self {
        let config = ClientConfigParts { insecure: settings.insecure.clone(), ca_pems: settings.ca_pems.clone() };
        Self {
            config,
            clients: Default::default(),
            settings,
            api_credentials: Default::default(),
            http: tokio::sync::OnceCell::new(),
            checked_realms: Default::default(),
            exchanged: Default::default(),
        }
    }

    fn scheme(&self, registry: &str) -> &'static str {
        if self.settings.insecure.iter().any(|h| h == registry) {
            "http"
        } else {
            "https"
        }
    }

    /// The HTTP client, built at the first request on a blocking thread (it
    /// reads and parses the system's root certificates).
    async fn http(&self, registry: &str) -> Result<&reqwest::Client, RegistryError> {
        self.http
            .get_or_init(|| async {
                let pems = self.settings.ca_pems.clone();
                tokio::task::spawn_blocking(move || http_client(&pems)).await.unwrap_or_else(|e| Err(e.to_string()))
            })
            .await
            .as_ref()
            .map_err(|reason| RegistryError::Tls { registry: registry.to_owned(), reason: reason.clone() })
    }

    /// Before basic credentials are used with a registry: if it sends
    /// clients to a token service (`WWW-Authenticate: Bearer realm=...`),
    /// that service must be reached over HTTPS (or be listed as insecure).
    async fn check_realm(&self, registry: &str, scrub: &Scrub) -> Result<(), RegistryError> {
        if self.checked_realms.lock().unwrap_or_else(|p| p.into_inner()).contains(registry) {
            return Ok(());
        }
        let url = format!("{}://{registry}/v2/", self.scheme(registry));
        let res =
            self.http(registry).await?.get(&url).send().await.map_err(|e| self.request_error(registry, &e, scrub))?;
        let challenge = res.headers().get(reqwest::header::WWW_AUTHENTICATE).and_then(|h| h.to_str().ok());
        if let Some(realm) = challenge.and_then(bearer_realm) {
            self.safe_realm(registry, &realm)?;
        }
        self.checked_realms.lock().unwrap_or_else(|p| p.into_inner()).insert(registry.to_owned());
        Ok(())
    }

    /// A token service that secrets may be sent to: HTTPS, or a host listed as insecure.
    fn safe_realm(&self, registry: &str, realm: &str) -> Result<(), RegistryError> {
        let realm = realm.to_ascii_lowercase();
        if let Some(rest) = realm.strip_prefix("http://") {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if !self.settings.insecure.iter().any(|h| h == host) {
                return Err(RegistryError::InsecureRealm {
                    registry: registry.to_owned(),
                    realm: format!("http://{host}"),
                });
            }
        }
        Ok(())
    }

    fn request_error(&self, registry: &str, e: &reqwest::Error, scrub: &Scrub) -> RegistryError {
        let reason = describe(e, scrub);
        let lower = reason.to_lowercase();
        let registry = registry.to_owned();
        if lower.contains("certificate") || lower.contains("tls") {
            RegistryError::Tls { registry, reason }
        } else if e.is_builder() {
            RegistryError::Other { registry, reason }
        } else {
            RegistryError::Unreachable { registry, reason }
        }
    }

    /// The client for a set of credentials (clients are cheap to clone).
    fn client(&self, creds: Option<&Credentials>) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.entry(client_key(creds)).or_insert_with(|| self.config.build()).clone()
    }

    /// Configured credentials for a registry host, if any.
    /// Configured credentials for a registry host, if any. Both sides are
    /// compared normalised ([`normalize_server`]): `index.docker.io`, the
    /// host an image of Docker Hub resolves to, finds `hub.docker.com`'s.
    pub fn configured(&self, registry: &str) -> Option<Credentials> {
        let want = normalize_server(registry).ok()?;
        let api = self.api_credentials.read().unwrap_or_else(|p| p.into_inner());
        api.iter()
            .chain(self.settings.credentials.iter())
            .find(|(server, _)| normalize_server(server).is_ok_and(|s| s == want))
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
        let scrub = Scrub::new(creds);
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
                    RegistryError::Server { registry, status: *code, reason: scrub.clean(message) }
                }
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                use oci_client::errors::OciErrorCode as C;
                let codes: Vec<&C> = envelope.errors.iter().map(|e| &e.code).collect();
                let reason =
                    scrub.clean(&envelope.errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; "));
                if codes.iter().any(|c| matches!(c, C::Toomanyrequests)) {
                    RegistryError::Server { registry, status: 429, reason }
                } else if codes.iter().any(|c| matches!(c, C::Unauthorized | C::Denied)) {
                    RegistryError::Unauthorized { registry, hint: "" }
                } else if codes.iter().any(|c| matches!(c, C::ManifestUnknown | C::BlobUnknown | C::NameUnknown)) {
                    RegistryError::NotFound { registry, what: format!("{what} ({reason})") }
                } else {
                    RegistryError::Other { registry, reason }
                }
            }
            OciDistributionError::RequestError(re) => {
                let reason = describe(re, &scrub);
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
            _ => RegistryError::Other { registry, reason: describe(&e, &scrub) },
        }
    }

    /// Fetches a manifest or index: its bytes, media type and digest. Read
    /// here rather than by `oci-client`, which reads a body of any size: at
    /// most `max_manifest_bytes`, and its digest checked against a pinned one.
    pub async fn manifest(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
    ) -> Result<(Bytes, String, String), RegistryError> {
        use futures_util::StreamExt;
        use sha2::{Digest, Sha256};
        let registry = reference.resolve_registry().to_owned();
        let scrub = Scrub::new(creds);
        let what = format!("manifest {reference}");
        if matches!(creds, Some(Credentials::Basic { .. })) {
            self.check_realm(&registry, &scrub).await?;
        }
        // The token (the challenge, the token service) as oci-client gets it
        // for the blobs that follow.
        let auth = auth_for(self, reference, creds, &scrub).await?;
        let client = self.client(creds);
        client.store_auth_if_needed(&registry, &auth).await;
        let token = client
            .auth(reference, &auth, oci_client::RegistryOperation::Pull)
            .await
            .map_err(|e| self.map_err(reference, &what, e, creds))?;
        let target = reference.digest().or(reference.tag()).unwrap_or("latest");
        let url = format!("{}://{registry}/v2/{}/manifests/{target}", self.scheme(&registry), reference.repository());
        let mut req =
            self.http(&registry).await?.get(&url).header(reqwest::header::ACCEPT, ACCEPTED_MANIFESTS.join(", "));
        req = match (&token, creds) {
            (Some(t), _) => req.bearer_auth(t),
            (None, Some(Credentials::Basic { username, password })) => req.basic_auth(username, Some(password)),
            _ => req,
        };
        let res = req.send().await.map_err(|e| self.request_error(&registry, &e, &scrub))?;
        let status = res.status().as_u16();
        let limit = self.settings.max_manifest_bytes;
        if !(200..300).contains(&status) {
            let mut body = Vec::new();
            let mut stream = res.bytes_stream();
            while let Some(Ok(chunk)) = stream.next().await {
                body.extend_from_slice(&chunk);
                if body.len() > 16 << 10 {
                    break;
                }
            }
            let reason = scrub.clean(&String::from_utf8_lossy(&body[..body.len().min(16 << 10)]));
            return Err(match status {
                401 | 403 => RegistryError::Unauthorized {
                    registry,
                    hint: if creds.is_some() { "" } else { "; no credentials were given for it" },
                },
                404 => RegistryError::NotFound { registry, what },
                _ => RegistryError::Server { registry, status, reason: reason.trim().to_owned() },
            });
        }
        let too_large = || RegistryError::TooLarge { registry: registry.clone(), what: what.clone(), limit };
        if res.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut stream = res.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.request_error(&registry, &e, &scrub))?;
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        // The digest by the algorithm a pinned reference names (sha256 else).
        let digest = match reference.digest() {
            Some(d) if d.starts_with("sha512:") => format!("sha512:{}", hex::encode(sha2::Sha512::digest(&body))),
            _ => format!("sha256:{}", hex::encode(Sha256::digest(&body))),
        };
        if let Some(pinned) = reference.digest() {
            if pinned != digest {
                return Err(RegistryError::Other {
                    registry,
                    reason: format!("{what}: the registry served content whose digest is {digest}"),
                });
            }
        }
        let media_type = media_type_of(&body);
        Ok((Bytes::from(body), media_type, digest))
    }

    /// Streams a blob (the client verifies its digest as it streams).
    pub async fn blob(
        &self,
        reference: &Reference,
        digest: &str,
        creds: Option<&Credentials>,
    ) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, RegistryError> {
        // Blob pulls reuse the token the manifest pull obtained for this
        // repository (oci-client asks for a new one once it has expired).
        let scrub = Scrub::new(creds);
        let auth = auth_for(self, reference, creds, &scrub).await?;
        let client = self.client(creds);
        client.store_auth_if_needed(reference.resolve_registry(), &auth).await;
        if let RegistryAuth::Bearer(_) = &auth {
            // The exchanged token for this repository, as the cache's entry
            // (the client's stored auth is the first one it was given).
            client
                .auth(reference, &auth, oci_client::RegistryOperation::Pull)
                .await
                .map_err(|e| self.map_err(reference, "blob", e, creds))?;
        }
        let what = format!("blob {digest}");
        let sized =
            client.pull_blob_stream(reference, digest).await.map_err(|e| self.map_err(reference, &what, e, creds))?;
        Ok(sized.stream)
    }
}

/// The realm of a `Bearer` challenge (`Bearer realm="https://auth/token",service=...`).
fn bearer_realm(challenge: &str) -> Option<String> {
    bearer_param(challenge, "realm")
}

/// A parameter of a `Bearer` challenge.
fn bearer_param(challenge: &str, name: &str) -> Option<String> {
    let rest = challenge.trim_start();
    let (scheme, params) = rest.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    params.split(',').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().trim_matches('"').to_owned())
    })
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
        let creds = Credentials::Basic { username: "user".into(), password: "hunter2".into() };
        let scrub = Scrub::new(Some(&creds));
        let e = std::io::Error::other("bad auth for user:hunter2");
        assert_eq!(describe(&e, &scrub), "bad auth for user:<redacted>");
        // A registry (or a proxy) that echoes the request's Authorization header in its error body.
        let echoed = "denied: Authorization: Basic dXNlcjpodW50ZXIy (password hunter2)";
        assert_eq!(scrub.clean(echoed), "denied: Authorization: Basic <redacted> (password <redacted>)");
        let r = Registry::new(RegistrySettings::default());
        let reference: Reference = "127.0.0.1:5000/x/y:1".parse().unwrap();
        let errors = [
            OciDistributionError::ServerError { code: 500, url: "u".into(), message: echoed.into() },
            OciDistributionError::RegistryError {
                envelope: oci_client::errors::OciEnvelope {
                    errors: vec![oci_client::errors::OciError {
                        code: oci_client::errors::OciErrorCode::Unsupported,
                        message: echoed.into(),
                        detail: serde_json::Value::Null,
                    }],
                },
                url: "u".into(),
            },
        ];
        for e in errors {
            let msg = r.map_err(&reference, "manifest", e, Some(&creds)).to_string();
            assert!(!msg.contains("hunter2") && !msg.contains("dXNlcjpodW50ZXIy"), "{msg}");
        }
    }

    #[test]
    fn server_names_as_users_write_them() {
        for hub in [
            "https://hub.docker.com",
            "hub.docker.com",
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "https://index.docker.io/v1/",
            "Docker.IO",
        ] {
            assert_eq!(normalize_server(hub).as_deref(), Ok("docker.io"), "{hub}");
        }
        assert_eq!(normalize_server("https://myreg.example:443").as_deref(), Ok("myreg.example"));
        assert_eq!(normalize_server("myreg.example").as_deref(), Ok("myreg.example"));
        assert_eq!(normalize_server("http://127.0.0.1:5000/v2/").as_deref(), Ok("127.0.0.1:5000"));
        assert_eq!(normalize_server("myreg.example:5000").as_deref(), Ok("myreg.example:5000"));
        for bad in ["myreg.example/team", "ftp://x", "", "user@host", "https://"] {
            assert!(normalize_server(bad).is_err(), "{bad}");
        }
        assert!(normalize_server("myreg.example/team").unwrap_err().contains("the path /team"));
        let r = Registry::new(RegistrySettings {
            credentials: vec![(
                "https://hub.docker.com".into(),
                Credentials::Basic { username: "u".into(), password: "p".into() },
            )],
            ..RegistrySettings::default()
        });
        // busybox resolves to index.docker.io.
        let busybox: Reference = "busybox".parse().unwrap();
        assert!(r.configured(busybox.resolve_registry()).is_some());
        assert!(r.configured(busybox.registry()).is_some());
        assert!(r.configured("other.example").is_none());
    }

    #[test]
    fn bearer_realms() {
        assert_eq!(
            bearer_realm(r#"Bearer realm="https://auth.example/token",service="registry""#).as_deref(),
            Some("https://auth.example/token")
        );
        assert_eq!(bearer_realm(r#"Basic realm="berth-test""#), None);
        assert_eq!(bearer_realm("bearer service=x, realm=\"http://10.0.0.1/t\"").as_deref(), Some("http://10.0.0.1/t"));
        let c = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#;
        assert_eq!(bearer_param(c, "service").as_deref(), Some("registry.example"));
        assert_eq!(bearer_param(c, "error"), None);
    }
}
