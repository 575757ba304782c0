//! TLS of a TCP listener: the agent's certificate and key, and with a client
//! CA, mutual TLS (rustls refuses clients without a certificate that CA signed,
//! or with an expired one, at the handshake). An allow-list of client subjects
//! is checked on every call.

use crate::config::ApiTls;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// The PEM files, read now (again on every SIGHUP).
pub fn load(tls: &ApiTls) -> Result<ServerTlsConfig, String> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
    if let Some(ca) = &tls.client_ca {
        cfg = cfg.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(cfg)
}

/// The subject (`CN=scheduler, O=Acme`) and common name of a DER certificate.
fn subject_of(der: &[u8]) -> Option<(String, Option<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next().and_then(|c| c.as_str().ok()).map(str::to_owned);
    Some((subject.to_string(), cn))
}

/// Whether a client certificate chain's leaf is allowed: an entry equals its
/// whole subject, or `CN=<its common name>`.
pub fn subject_allowed(leaf: &[u8], allowed: &[String]) -> bool {
    let Some((subject, cn)) = subject_of(leaf) else { return false };
    allowed.iter().any(|a| *a == subject || cn.as_ref().is_some_and(|cn| *a == format!("CN={cn}")))
}

/// The per-call check: with an allow-list, the caller's certificate must be on it.
pub fn check_subject(allowed: &[String], req: &Request<()>) -> Result<(), Status> {
    if allowed.is_empty() {
        return Ok(());
    }
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    if subject_allowed(leaf.as_ref(), allowed) {
        Ok(())
    } else {
        let subject = subject_of(leaf.as_ref()).map(|s| s.0).unwrap_or_else(|| "(unreadable)".into());
        Err(Status::permission_denied(format!("client certificate subject {subject:?} is not in api.allowed_subjects")))
    }
}

/// [`check_subject`] as a tonic interceptor.
#[derive(Clone, Debug)]
pub struct SubjectCheck {
    allowed: std::sync::Arc<Vec<String>>,
}

impl SubjectCheck {
    pub fn new(allowed: Vec<String>) -> Self {
        Self { allowed: std::sync::Arc::new(allowed) }
    }
}

impl tonic::service::Interceptor for SubjectCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        check_subject(&self.allowed, &req).map(|()| req)
    }
}
