//! TLS of a TCP listener: the agent's certificate and key, and with a client
//! CA, mutual TLS (rustls refuses clients without a certificate that CA signed,
//! or with an expired one, at the handshake). An allow-list of client subjects
//! is checked on every call.

use crate::config::ApiTls;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// The PEM files, read now (again on every SIGHUP).
pub(super) fn load(tls: &ApiTls) -> Result<ServerTlsConfig, String> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
    if let Some(ca) = &tls.client_ca {
        cfg = cfg.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(cfg)
}

/// A distinguished name as (attribute type, value) pairs, types upper-case.
type Dn = Vec<(String, String)>;

/// Short names of the attribute types subjects use (RFC 4514, 3).
fn attr_name(oid: &str) -> String {
    match oid {
        "2.5.4.3" => "CN",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.5" => "SERIALNUMBER",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "EMAILADDRESS",
        other => return other.to_owned(),
    }
    .to_owned()
}

/// The subject of a DER certificate, attribute by attribute, and its text for messages.
fn subject_of(der: &[u8]) -> Option<(Dn, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let mut attrs = Vec::new();
    for rdn in subject.iter() {
        for a in rdn.iter() {
            attrs.push((attr_name(&a.attr_type().to_id_string()), a.as_str().ok()?.to_owned()));
        }
    }
    Some((attrs, subject.to_string()))
}

/// Parses an `allowed_subjects` entry (RFC 4514: `CN=scheduler, O=Acme`,
/// with `\,` and `\XX` escapes); None when it is not a distinguished name.
pub(super) fn parse_dn(text: &str) -> Option<Dn> {
    let mut out = Vec::new();
    // Bytes: a `\XX` escape is one byte of a UTF-8 value.
    let mut cur: Vec<u8> = Vec::new();
    let mut chars = text.chars().peekable();
    let mut parts = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let n = chars.next()?;
                if n.is_ascii_hexdigit() {
                    let m = chars.next()?;
                    cur.push(u8::from_str_radix(&format!("{n}{m}"), 16).ok()?);
                } else {
                    cur.extend_from_slice(n.encode_utf8(&mut [0; 4]).as_bytes());
                }
            }
            ',' | '+' => parts.push(String::from_utf8(std::mem::take(&mut cur)).ok()?),
            c => cur.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    parts.push(String::from_utf8(cur).ok()?);
    for p in parts {
        let (k, v) = p.split_once('=')?;
        let k = k.trim().to_ascii_uppercase();
        if k.is_empty() {
            return None;
        }
        out.push((k, v.trim().to_owned()));
    }
    Some(out)
}

fn sorted(mut dn: Dn) -> Dn {
    dn.sort();
    dn
}

/// Whether a client certificate chain's leaf is allowed: an entry equals its
/// whole subject, attribute by attribute (order aside), or is `CN=<name>`
/// and its common name is that name. Compared parsed, never as text: a
/// common name `scheduler, O=Acme` is not `CN=scheduler, O=Acme`.
pub(super) fn subject_allowed(leaf: &[u8], allowed: &[String]) -> bool {
    let Some((subject, _)) = subject_of(leaf) else { return false };
    let subject = sorted(subject);
    allowed.iter().filter_map(|a| parse_dn(a)).any(|want| match want.as_slice() {
        [(k, name)] if k == "CN" => subject.iter().any(|(k, v)| k == "CN" && v == name),
        _ => sorted(want) == subject,
    })
}

/// The per-call check: with an allow-list, the caller's certificate must be on it.
pub(super) fn check_subject(allowed: &[String], req: &Request<()>) -> Result<(), Status> {
    if allowed.is_empty() {
        return Ok(());
    }
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    if subject_allowed(leaf.as_ref(), allowed) {
        Ok(())
    } else {
        let subject = subject_of(leaf.as_ref()).map(|s| s.1).unwrap_or_else(|| "(unreadable)".into());
        Err(Status::permission_denied(format!("client certificate subject {subject:?} is not in api.allowed_subjects")))
    }
}

/// [`check_subject`] as a tonic interceptor.
#[derive(Clone, Debug)]
pub(super) struct SubjectCheck {
    allowed: std::sync::Arc<Vec<String>>,
}

impl SubjectCheck {
    pub(super) fn new(allowed: Vec<String>) -> Self {
        Self { allowed: std::sync::Arc::new(allowed) }
    }
}

impl tonic::service::Interceptor for SubjectCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        check_subject(&self.allowed, &req).map(|()| req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(attrs: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        for (t, v) in attrs {
            dn.push(t.clone(), *v);
        }
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subjects_are_compared_attribute_by_attribute() {
        use rcgen::DnType::{CommonName, OrganizationName};
        let real = cert(&[(CommonName, "scheduler"), (OrganizationName, "Acme")]);
        let forged = cert(&[(CommonName, "scheduler, O=Acme")]);
        let allowed = ["CN=scheduler, O=Acme".to_string()];
        assert!(subject_allowed(&real, &allowed));
        assert!(!subject_allowed(&forged, &allowed), "a CN holding a comma is not two attributes");
        assert!(subject_allowed(&real, &["O=Acme,CN=scheduler".to_string()]), "order aside");
        assert!(subject_allowed(&real, &["CN=scheduler".to_string()]), "CN=<name> alone");
        assert!(!subject_allowed(&forged, &["CN=scheduler".to_string()]));
        assert!(subject_allowed(&forged, &["CN=scheduler\\, O=Acme".to_string()]), "an escaped comma is the CN's");
        assert!(!subject_allowed(&real, &["CN=scheduler, O=Other".to_string(), "nonsense".to_string()]));
        assert_eq!(parse_dn("cn=a\\2Cb"), Some(vec![("CN".into(), "a,b".into())]));
        assert_eq!(parse_dn("no equals"), None);
        assert_eq!(parse_dn("CN=caf\\C3\\A9"), Some(vec![("CN".into(), "café".into())]), "UTF-8 escapes");
    }
}
