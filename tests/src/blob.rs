//! The staging tests' blob store: the Azurite instance `scripts/test`
//! started on 127.0.0.1 (its own account and random key), reached over its
//! REST API with account SAS tokens this module signs; and a tiny HTTP
//! server of the test's own on 127.0.0.1 for answers Azurite does not give
//! (5xx, a request that hangs). Every server loop is bounded.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use crate::v1 as pb;

/// The Azurite account of the test environment.
pub struct BlobStore {
    endpoint: String,
    account: String,
    key: Vec<u8>,
    http: reqwest::Client,
}

/// Far enough ahead for any test run.
pub const LATER: &str = "2099-01-01T00:00:00Z";
/// Already past: an expired SAS.
pub const EARLIER: &str = "2020-01-01T00:00:00Z";

impl BlobStore {
    pub fn from_env() -> Self {
        let key = std::fs::read_to_string(crate::env("BERTH_TEST_BLOB_KEY_FILE")).expect("Azurite key");
        Self {
            endpoint: crate::env("BERTH_TEST_BLOB_ENDPOINT"),
            account: crate::env("BERTH_TEST_BLOB_ACCOUNT"),
            key: base64::engine::general_purpose::STANDARD.decode(key.trim()).expect("base64 key"),
            http: reqwest::Client::new(),
        }
    }

    /// An account SAS query (blob service; services, containers, objects)
    /// with permissions `perms` (`rwdlac`), valid until `expiry`.
    pub fn sas(&self, perms: &str, expiry: &str) -> String {
        let version = "2019-12-12";
        let to_sign = format!("{}\n{perms}\nb\nsco\n\n{expiry}\n\n\n{version}\n", self.account);
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("hmac key");
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let sig: String = url_encode(&sig);
        format!("sv={version}&ss=b&srt=sco&sp={perms}&se={}&sig={sig}", url_encode(expiry))
    }

    /// A service SAS for one container (`sr=c`) with permissions `perms`
    /// (in the order `racwdl`), valid until `expiry`: what Batch hands out
    /// for a job's container.
    pub fn container_sas(&self, container: &str, perms: &str, expiry: &str) -> String {
        let version = "2019-12-12";
        let resource = format!("/blob/{}/{container}", self.account);
        let to_sign = format!("{perms}\n\n{expiry}\n{resource}\n\n\n\n{version}\nc\n\n\n\n\n\n");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("hmac key");
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        format!("sv={version}&sr=c&sp={perms}&se={}&sig={}", url_encode(expiry), url_encode(&sig))
    }

    /// A full-rights SAS, valid for the run.
    pub fn admin_sas(&self) -> String {
        self.sas("rwdlac", LATER)
    }

    /// A container URL with a query.
    pub fn container_url(&self, container: &str, sas: &str) -> String {
        format!("{}/{container}?{sas}", self.endpoint)
    }

    /// A blob URL with a query.
    pub fn blob_url(&self, container: &str, blob: &str, sas: &str) -> String {
        format!("{}/{container}/{blob}?{sas}", self.endpoint)
    }

    /// Creates a container named for the test (3–63 lowercase letters, digits, hyphens).
    pub async fn create_container(&self, name: &str) {
        let url = format!("{}/{name}?restype=container&{}", self.endpoint, self.admin_sas());
        let r = self.http.put(url).header("x-ms-version", "2019-12-12").send().await.expect("create container");
        assert!(r.status().is_success(), "create container {name}: {}", r.status());
    }

    pub async fn put(&self, container: &str, blob: &str, data: &[u8]) {
        let r = self
            .http
            .put(self.blob_url(container, blob, &self.admin_sas()))
            .header("x-ms-blob-type", "BlockBlob")
            .header("x-ms-version", "2019-12-12")
            .body(data.to_vec())
            .send()
            .await
            .expect("put blob");
        assert!(r.status().is_success(), "put {container}/{blob}: {}", r.status());
    }

    /// A blob's bytes and content type; None if there is no such blob.
    pub async fn get(&self, container: &str, blob: &str) -> Option<(Vec<u8>, String)> {
        let r = self.http.get(self.blob_url(container, blob, &self.admin_sas())).send().await.expect("get blob");
        if r.status().as_u16() == 404 {
            return None;
        }
        assert!(r.status().is_success(), "get {container}/{blob}: {}", r.status());
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        Some((r.bytes().await.expect("blob body").to_vec(), ct))
    }

    /// The names of a container's blobs, sorted.
    pub async fn list(&self, container: &str) -> Vec<String> {
        let url = format!("{}/{container}?restype=container&comp=list&{}", self.endpoint, self.admin_sas());
        let body = self.http.get(url).send().await.expect("list").text().await.expect("list body");
        let mut names: Vec<String> = body
            .split("<Name>")
            .skip(1)
            .filter_map(|s| s.split("</Name>").next())
            .map(|s| s.replace("&amp;", "&"))
            .collect();
        names.sort();
        names
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A unique container name for a test.
pub fn container_name(test: &str) -> String {
    let n: String =
        test.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{}-{nanos:x}", &n[..n.len().min(40)])
}

/// What a [`Sink`] path does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200 with the stored body (GET) or 201 (PUT).
    Serve,
    /// Never answers (the connection stays open).
    Hang,
    /// 503.
    Unavailable,
    /// 500.
    InternalError,
    /// 200 with the head and the first half of the stored body, then
    /// nothing (the connection stays open).
    Truncated,
    /// A PUT whose body is read up to its half, then no more (the
    /// connection stays open, the sender blocks).
    StallBody,
}

/// A bounded HTTP/1.1 server on 127.0.0.1: per path, a list of answers (the
/// last repeats), the requests it saw, and the bodies it was sent.
#[derive(Clone, Default)]
pub struct Sink {
    state: Arc<Mutex<SinkState>>,
    pub port: u16,
    scheme: &'static str,
}

#[derive(Default)]
struct SinkState {
    plans: HashMap<String, Vec<Answer>>,
    seen: Vec<(String, String)>,
    bodies: HashMap<String, Vec<u8>>,
    /// Bytes of the PUT bodies stalled half-way, per path.
    stalled: HashMap<String, usize>,
}

impl Sink {
    /// Starts serving at most `max_requests` connections.
    pub async fn start(max_requests: usize) -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let port = listener.local_addr().unwrap().port();
        let sink = Sink { state: Arc::default(), port, scheme: "http" };
        let s = sink.clone();
        tokio::spawn(async move {
            for _ in 0..max_requests {
                let Ok((conn, _)) = listener.accept().await else { return };
                let s = s.clone();
                tokio::spawn(async move { s.serve(conn).await });
            }
        });
        sink
    }

    /// The same server over TLS, with this certificate chain and key (PEM).
    pub async fn start_tls(max_requests: usize, cert_pem: &str, key_pem: &str) -> Sink {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).map(|c| c.unwrap()).collect();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let port = listener.local_addr().unwrap().port();
        let sink = Sink { state: Arc::default(), port, scheme: "https" };
        let s = sink.clone();
        tokio::spawn(async move {
            for _ in 0..max_requests {
                let Ok((conn, _)) = listener.accept().await else { return };
                let (s, acceptor) = (s.clone(), acceptor.clone());
                tokio::spawn(async move {
                    // A client that does not trust the certificate ends here.
                    if let Ok(tls) = acceptor.accept(conn).await {
                        s.serve(tls).await
                    }
                });
            }
        });
        sink
    }

    /// Answers for `path`, in order (the last one repeats).
    pub fn plan(&self, path: &str, answers: &[Answer]) {
        self.state.lock().unwrap().plans.insert(path.into(), answers.to_vec());
    }

    /// Stores a body for GETs of `path`.
    pub fn file(&self, path: &str, body: &[u8]) {
        self.state.lock().unwrap().bodies.insert(path.into(), body.to_vec());
    }

    /// How many requests of `method` reached `path`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.state.lock().unwrap().seen.iter().filter(|(m, p)| m == method && p == path).count()
    }

    /// Whether a PUT to `path` was stalled half-way, its first half received.
    pub fn stalled(&self, path: &str) -> bool {
        self.state.lock().unwrap().stalled.contains_key(path)
    }

    /// The body last PUT to `path`.
    pub fn body(&self, path: &str) -> Option<Vec<u8>> {
        self.state.lock().unwrap().bodies.get(path).cloned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}?sig=SINKSECRET", self.scheme, self.port)
    }

    async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(&self, mut conn: S) {
        let Some(h) = crate::http::read_head(&mut conn, 1 << 20).await else { return };
        let mut chunk = [0u8; 8192];
        let method = h.method().to_owned();
        let path = h.target().split('?').next().unwrap_or("").to_owned();
        let len = h.content_length;
        let mut body = h.rest;
        let stall = method == "PUT" && {
            let st = self.state.lock().unwrap();
            let n = st.seen.iter().filter(|(_, p)| *p == path).count();
            st.plans.get(&path).is_some_and(|plan| plan[n.min(plan.len() - 1)] == Answer::StallBody)
        };
        if stall {
            while body.len() < len / 2 {
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                }
            }
            {
                let mut st = self.state.lock().unwrap();
                st.seen.push((method.clone(), path.clone()));
                st.stalled.insert(path.clone(), body.len());
            }
            // Held (reading nothing) until the sender goes away, at most a minute.
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            return;
        }
        while body.len() < len.min(64 << 20) {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        let answer = {
            let mut st = self.state.lock().unwrap();
            let n = st.seen.iter().filter(|(_, p)| *p == path).count();
            st.seen.push((method.clone(), path.clone()));
            let plan = st.plans.get(&path).cloned().unwrap_or_else(|| vec![Answer::Serve]);
            let a = plan[n.min(plan.len() - 1)];
            if a == Answer::Serve && method == "PUT" {
                st.bodies.insert(path.clone(), body);
            }
            a
        };
        let reply = match answer {
            Answer::Hang => {
                // Held open until the client goes away (bounded by the test's life).
                let _ = conn.read(&mut chunk).await;
                return;
            }
            Answer::StallBody => {
                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
            }
            Answer::Truncated => {
                let data = self.state.lock().unwrap().bodies.get(&path).cloned().unwrap_or_default();
                let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", data.len()).into_bytes();
                r.extend_from_slice(&data[..data.len() / 2]);
                let _ = conn.write_all(&r).await;
                let _ = conn.read(&mut chunk).await;
                return;
            }
            Answer::InternalError => {
                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
            }
            Answer::Unavailable => {
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
            }
            Answer::Serve if method == "PUT" => {
                "HTTP/1.1 201 Created\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
            }
            Answer::Serve => {
                let data = self.state.lock().unwrap().bodies.get(&path).cloned();
                match data {
                    Some(d) => {
                        let mut r =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", d.len())
                                .into_bytes();
                        r.extend_from_slice(&d);
                        let _ = conn.write_all(&r).await;
                        return;
                    }
                    None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
                }
            }
        };
        let _ = conn.write_all(reply.as_bytes()).await;
    }
}

/// A resource file from a URL.
pub fn http_file(url: &str, path: &str, mode: &str) -> pb::ResourceFile {
    pb::ResourceFile { http_url: url.into(), file_path: path.into(), file_mode: mode.into(), ..Default::default() }
}

/// An output file to a container URL.
pub fn output(
    pattern: &str,
    container_url: &str,
    path: &str,
    condition: pb::OutputFileUploadCondition,
) -> pb::OutputFile {
    pb::OutputFile {
        file_pattern: pattern.into(),
        destination: Some(pb::OutputFileDestination {
            container: Some(pb::OutputFileBlobContainerDestination {
                container_url: container_url.into(),
                path: path.into(),
                upload_headers: vec![],
            }),
        }),
        upload_options: Some(pb::OutputFileUploadOptions { upload_condition: condition as i32 }),
    }
}

/// Nothing the agent wrote holds a SAS signature: its log, its state
/// database (with its WAL), and what the API shows.
pub fn assert_no_secret(agent: &crate::Agent, shown: &str, secrets: &[&str]) {
    let mut files = vec![agent.log()];
    for e in std::fs::read_dir(agent.state_dir()).unwrap().flatten() {
        if e.path().is_file() {
            files.push(String::from_utf8_lossy(&std::fs::read(e.path()).unwrap_or_default()).into_owned());
        }
    }
    files.push(shown.to_owned());
    for s in secrets {
        for f in &files {
            assert!(!f.contains(s), "a secret ({s}) leaked into the agent's log, database or TaskInfo");
        }
    }
}

/// A test CA and a server certificate for 127.0.0.1 it signed: PEM of the
/// CA, of the certificate and of its key.
pub fn test_tls() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "berth staging test CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca = p.self_signed(&ca_key).unwrap();
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}
