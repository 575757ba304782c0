//! A registry in bearer-token mode, for the tests: Debian's `docker-registry`
//! (the real one) serving the plain test registry's storage read-only, with
//! `auth: token`, and a small token service here, on 127.0.0.1, that signs
//! ES256 JWTs the registry trusts (an `x5c` chain of a self-signed
//! certificate in its `rootcertbundle`), as Docker Hub's and ACR's do.
//!
//! Who gets what:
//! - anonymous: pull on the public repositories ([`PUBLIC`]), as on Docker Hub;
//! - `alice`/`wonderland` (basic) and the refresh token [`REFRESH`] (an
//!   identity token, `POST` with `grant_type=refresh_token`): pull on anything;
//! - `scoped`/`narrow`: pull on `berth-test/busybox` only;
//! - `brief`/`quick`: pull on anything, with tokens that are already expired
//!   to the client (`exp` 5 s ago; the registry allows 60 s of clock skew), so
//!   that a client that renews expired tokens asks for one per request.
//!
//! Anything else is refused (401). Each token issued is recorded.

use base64::Engine as _;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const PUBLIC: &[&str] = &["berth-test/busybox"];
/// The identity (refresh) token the service takes for `alice`.
pub const REFRESH: &str = "refresh-alice-0f3a9c";
pub const PASSWORDS: &[(&str, &str)] = &[("alice", "wonderland"), ("scoped", "narrow"), ("brief", "quick")];
const SERVICE: &str = "berth-test-registry";
const ISSUER: &str = "berth-test-tokens";

/// One answer of the token service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// `anonymous`, a user name, or `refresh:<user>`.
    pub subject: String,
    /// The repositories it grants pull on.
    pub granted: Vec<String>,
    pub method: String,
    /// The token itself (to check it appears nowhere it should not).
    pub token: String,
}

pub struct TokenRegistry {
    /// `127.0.0.1:PORT` of the registry.
    pub addr: String,
    /// `127.0.0.1:PORT` of the token service (list it as insecure: plain HTTP).
    pub realm: String,
    issued: Arc<Mutex<Vec<Issued>>>,
    /// Answers to requests the service refused (401).
    refused: Arc<Mutex<usize>>,
    child: Child,
    _dir: tempfile::TempDir,
}

struct Signer {
    key: aws_lc_rs::signature::EcdsaKeyPair,
    x5c: String,
}

impl Signer {
    fn new() -> (Signer, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "berth test token signer");
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = p.self_signed(&key).unwrap();
        let signing = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
        )
        .unwrap();
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
        (Signer { key: signing, x5c }, cert.pem())
    }

    fn jwt(&self, subject: &str, repos: &[String], exp_offset: i64) -> String {
        let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let access: Vec<serde_json::Value> =
            repos.iter().map(|r| serde_json::json!({"type": "repository", "name": r, "actions": ["pull"]})).collect();
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": subject, "aud": SERVICE, "iat": now, "nbf": now - 10,
            "exp": now + exp_offset, "jti": format!("{now}-{subject}-{}", rand_suffix()), "access": access,
        });
        let input = format!("{}.{}", b64(&header), b64(&claims));
        let sig = self.key.sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

fn rand_suffix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() as u64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `repository:NAME:pull` scopes of a query or form.
fn scopes(pairs: &[(String, String)]) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|s| s.strip_prefix("repository:").and_then(|r| r.rsplit_once(':')).map(|(name, _)| name.to_owned()))
        .collect()
}

fn pairs(text: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(text.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

impl TokenRegistry {
    /// Starts the token service (in this test's runtime) and the registry.
    pub async fn start() -> TokenRegistry {
        let dir = tempfile::tempdir().unwrap();
        let (signer, cert_pem) = Signer::new();
        std::fs::write(dir.path().join("signer.pem"), cert_pem).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let realm = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let issued: Arc<Mutex<Vec<Issued>>> = Arc::default();
        let refused: Arc<Mutex<usize>> = Arc::default();
        let signer = Arc::new(signer);
        {
            let (issued, refused, signer) = (issued.clone(), refused.clone(), signer.clone());
            // Bounded: a test makes tens of requests at most.
            tokio::spawn(async move {
                for _ in 0..2000 {
                    let Ok((conn, _)) = listener.accept().await else { return };
                    let (issued, refused, signer) = (issued.clone(), refused.clone(), signer.clone());
                    tokio::spawn(async move { serve(conn, &signer, &issued, &refused).await });
                }
            });
        }
        let port = free_port();
        let storage = std::path::Path::new(&crate::env("BERTH_TEST_DIR")).join("reg-plain");
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n    readonly:\n      enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: berth-token-test\nauth:\n  token:\n    \
             realm: http://{realm}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    \
             rootcertbundle: {bundle}\n",
            storage = storage.display(),
            bundle = dir.path().join("signer.pem").display(),
        );
        let cfg = dir.path().join("registry.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian's docker-registry package)");
        let addr = format!("127.0.0.1:{port}");
        let reg = TokenRegistry { addr, realm, issued, refused, child, _dir: dir };
        reg.wait_ready().await;
        reg
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(&self.addr).await {
                let req = format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr);
                if s.write_all(req.as_bytes()).await.is_ok() {
                    let mut head = [0u8; 12];
                    if s.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.1 401") {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the token-auth registry on {} did not come up", self.addr);
    }

    /// `ADDR/berth-test/NAME:latest`.
    pub fn image(&self, name: &str) -> String {
        format!("{}/berth-test/{name}:latest", self.addr)
    }

    /// The tokens issued so far.
    pub fn issued(&self) -> Vec<Issued> {
        self.issued.lock().unwrap().clone()
    }

    /// Requests refused so far.
    pub fn refused(&self) -> usize {
        *self.refused.lock().unwrap()
    }

    /// The registry's log (its access log: what it answered).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Who asks, from the request: basic credentials, a refresh token, or no one.
enum Who {
    Anonymous,
    User(String),
    Refresh(String),
    Refused,
}

fn who(head: &str, method: &str, form: &[(String, String)]) -> Who {
    if method == "POST" {
        let grant = form.iter().find(|(k, _)| k == "grant_type").map(|(_, v)| v.as_str());
        let token = form.iter().find(|(k, _)| k == "refresh_token").map(|(_, v)| v.as_str());
        return match (grant, token) {
            (Some("refresh_token"), Some(REFRESH)) => Who::Refresh("alice".into()),
            _ => Who::Refused,
        };
    }
    let basic = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("authorization").then(|| v.trim().strip_prefix("Basic ").map(str::to_owned))?
    });
    let Some(b64) = basic else { return Who::Anonymous };
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap_or_default();
    let text = String::from_utf8_lossy(&decoded).into_owned();
    match text.split_once(':') {
        Some((u, p)) if PASSWORDS.iter().any(|(user, pass)| *user == u && *pass == p) => Who::User(u.into()),
        _ => Who::Refused,
    }
}

async fn serve(mut conn: tokio::net::TcpStream, signer: &Signer, issued: &Mutex<Vec<Issued>>, refused: &Mutex<usize>) {
    let Some(h) = crate::http::read_head(&mut conn, 64 << 10).await else { return };
    let mut chunk = [0u8; 4096];
    let len = h.content_length.min(64 << 10);
    let mut body = h.rest.clone();
    while body.len() < len {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let head = h.text.as_str();
    let method = h.method().to_owned();
    let target = h.target();
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let form = if method == "POST" { pairs(&String::from_utf8_lossy(&body)) } else { pairs(query) };
    let asked = scopes(&form);
    let (subject, granted, exp): (String, Vec<String>, i64) = match who(head, &method, &form) {
        Who::Refused => {
            *refused.lock().unwrap() += 1;
            let reply = "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 27\r\n\
                         connection: close\r\n\r\n{\"details\":\"unauthorized\"}\n";
            let _ = conn.write_all(reply.as_bytes()).await;
            return;
        }
        Who::Anonymous => {
            ("anonymous".into(), asked.iter().filter(|r| PUBLIC.contains(&r.as_str())).cloned().collect(), 300)
        }
        Who::User(u) if u == "scoped" => {
            (u, asked.iter().filter(|r| *r == "berth-test/busybox").cloned().collect(), 300)
        }
        Who::User(u) if u == "brief" => (u, asked.clone(), -5),
        Who::User(u) => (u, asked.clone(), 300),
        Who::Refresh(u) => (format!("refresh:{u}"), asked.clone(), 300),
    };
    let token = signer.jwt(&subject, &granted, exp);
    issued.lock().unwrap().push(Issued { subject, granted, method: method.clone(), token: token.clone() });
    let json = serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
        json.len()
    );
    let _ = conn.write_all(reply.as_bytes()).await;
}
