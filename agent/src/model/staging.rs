//! A task's data staging, as the scheduler gives it: resource files to
//! download before the task runs, output files to upload after it exits
//! (Batch's `ResourceFile` and `OutputFile`).
//!
//! Their URLs may carry a SAS token in the query. A [`SecretUrl`] keeps the
//! query apart: it is shown and serialized without it, so the state
//! database, TaskInfo, logs and errors never hold it. The queries live in
//! memory and in the agent's root-only secrets directory (see
//! `staging::secrets`), and are put back with [`Staging::set_queries`].

use serde::{Deserialize, Serialize};
use std::fmt;

/// Resource files per task, at most.
pub const MAX_RESOURCE_FILES: usize = 1000;
/// Output file specifications per task, at most.
pub const MAX_OUTPUT_FILES: usize = 100;

/// An http(s) URL whose query is a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    /// Scheme, authority and path: no query, no fragment, no user info.
    base: url::Url,
    query: Option<String>,
    /// It had a query when the scheduler gave it (kept when the query is not).
    had_query: bool,
}

impl SecretUrl {
    /// Parses an http or https URL; the error never repeats the URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut url = url::Url::parse(s).map_err(|e| format!("is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("has scheme {:?}; only http and https are supported", url.scheme()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("has no host".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("carries a user name or password; use a SAS token in the query".into());
        }
        let query = url.query().filter(|q| !q.is_empty()).map(str::to_owned);
        url.set_query(None);
        url.set_fragment(None);
        Ok(Self { base: url, had_query: query.is_some(), query })
    }

    /// The URL without its query: what may be shown.
    pub fn redacted(&self) -> String {
        if self.had_query {
            format!("{}?<redacted>", self.base)
        } else {
            self.base.to_string()
        }
    }

    /// The URL to send a request to, with its query.
    pub fn full(&self) -> url::Url {
        let mut u = self.base.clone();
        u.set_query(self.query.as_deref());
        u
    }

    /// A blob's URL under this container URL (`name` is `/`-separated;
    /// each segment is percent-encoded), with the container's query.
    pub fn join_blob(&self, name: &str) -> Self {
        let mut base = self.base.clone();
        if let Ok(mut segs) = base.path_segments_mut() {
            segs.pop_if_empty();
            for s in name.split('/') {
                segs.push(s);
            }
        }
        Self { base, query: self.query.clone(), had_query: self.had_query }
    }

    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// It had a query that is not here (it was not kept across a reboot).
    pub fn lost_query(&self) -> bool {
        self.had_query && self.query.is_none()
    }

    pub fn base(&self) -> &url::Url {
        &self.base
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Serialized without the query (whether there was one is kept).
impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (plain, had_query) = match s.strip_suffix("?<redacted>") {
            Some(p) => (p, true),
            None => (s.as_str(), false),
        };
        let mut u = SecretUrl::parse(plain).map_err(serde::de::Error::custom)?;
        // The query is put back from the secrets directory, if it is there.
        u.query = None;
        u.had_query = had_query;
        Ok(u)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceSource {
    /// One file from any http(s) URL.
    Http(SecretUrl),
    /// Every blob of a container whose name starts with `prefix`.
    Container { url: SecretUrl, prefix: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceFile {
    pub source: ResourceSource,
    /// Relative to the working directory, normalised (no `.`, no `..`).
    pub file_path: String,
    /// Permission bits (Batch's default on Linux: 0644).
    pub file_mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum UploadCondition {
    #[default]
    TaskCompletion,
    TaskSuccess,
    TaskFailure,
}

impl UploadCondition {
    /// Whether a task that ended so (success: exit code 0 and no failure) uploads.
    pub fn applies(self, success: bool) -> bool {
        match self {
            UploadCondition::TaskCompletion => true,
            UploadCondition::TaskSuccess => success,
            UploadCondition::TaskFailure => !success,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub pattern: String,
    pub container_url: SecretUrl,
    /// Blob name (one file) or prefix (a pattern); empty: the file's name.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub condition: UploadCondition,
}

/// A task's resource and output files.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Staging {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_files: Vec<ResourceFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_files: Vec<OutputFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub application_packages: Vec<super::AppPackage>,
}

impl Staging {
    pub fn is_empty(&self) -> bool {
        self.resource_files.is_empty() && self.output_files.is_empty() && self.application_packages.is_empty()
    }

    fn urls(&self) -> impl Iterator<Item = &SecretUrl> {
        let res = self.resource_files.iter().map(|r| match &r.source {
            ResourceSource::Http(u) | ResourceSource::Container { url: u, .. } => u,
        });
        // Packages last: the order of records written before they existed.
        let out = res.chain(self.output_files.iter().map(|o| &o.container_url));
        out.chain(self.application_packages.iter().map(|p| &p.url))
    }

    fn urls_mut(&mut self) -> impl Iterator<Item = &mut SecretUrl> {
        let res = self.resource_files.iter_mut().map(|r| match &mut r.source {
            ResourceSource::Http(u) | ResourceSource::Container { url: u, .. } => u,
        });
        let out = res.chain(self.output_files.iter_mut().map(|o| &mut o.container_url));
        out.chain(self.application_packages.iter_mut().map(|p| &mut p.url))
    }

    /// Every URL's query, in order: what the secrets directory keeps.
    pub fn queries(&self) -> Vec<Option<String>> {
        self.urls().map(|u| u.query.clone()).collect()
    }

    /// Whether any URL has a query (then there is something to keep).
    pub fn has_queries(&self) -> bool {
        self.urls().any(|u| u.query.is_some())
    }

    /// Whether a URL's query is missing (not put back after a restart).
    pub fn lost_queries(&self) -> bool {
        self.urls().any(SecretUrl::lost_query)
    }

    /// Puts back the queries [`Staging::queries`] gave (same spec, same order).
    pub fn set_queries(&mut self, queries: Vec<Option<String>>) {
        for (u, q) in self.urls_mut().zip(queries) {
            u.query = q;
        }
    }
}

/// Normalises a resource file's `file_path`: relative, no `..`, no NUL.
pub fn relative_path(field: &str, p: &str, may_be_empty: bool) -> Result<String, String> {
    if p.contains('\0') {
        return Err(format!("{field} holds a NUL byte"));
    }
    if p.starts_with('/') {
        return Err(format!("{field} {p:?} is absolute; it must be relative to the working directory"));
    }
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    if parts.contains(&"..") {
        return Err(format!("{field} {p:?} has a `..` component"));
    }
    if parts.is_empty() && !may_be_empty {
        return Err(format!("{field} is empty; it names the file to write"));
    }
    Ok(parts.join("/"))
}

/// Parses an octal `file_mode` such as `0755`; empty is 0644.
pub fn file_mode(s: &str) -> Result<u32, String> {
    if s.is_empty() {
        return Ok(0o644);
    }
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        Ok(_) => Err(format!("file_mode {s:?} has bits beyond 0777 (setuid, setgid and sticky are refused)")),
        Err(_) => Err(format!("file_mode {s:?} is not an octal mode such as 0644")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_url_never_shows_its_query() {
        let u = SecretUrl::parse("https://acct.blob.example/c/a%20b.txt?sv=1&sig=SECRET#frag").unwrap();
        assert_eq!(u.redacted(), "https://acct.blob.example/c/a%20b.txt?<redacted>");
        assert!(!format!("{u} {u:?}").contains("SECRET"));
        let json = serde_json::to_string(&u).unwrap();
        assert!(!json.contains("SECRET"), "{json}");
        let back: SecretUrl = serde_json::from_str(&json).unwrap();
        assert_eq!(back.query(), None);
        assert_eq!(back.base(), u.base());
        assert_eq!(u.full().as_str(), "https://acct.blob.example/c/a%20b.txt?sv=1&sig=SECRET");
    }

    #[test]
    fn bad_urls_are_refused_without_being_repeated() {
        for bad in ["ftp://h/x", "not a url", "https://user:pw@h/x", "file:///etc/passwd"] {
            let e = SecretUrl::parse(bad).unwrap_err();
            assert!(!e.contains("pw@"), "{e}");
        }
        assert!(SecretUrl::parse("http://127.0.0.1:10000/acct/c").is_ok());
    }

    #[test]
    fn blob_names_are_joined_segment_by_segment() {
        let c = SecretUrl::parse("http://127.0.0.1:10000/acct/con?sig=S").unwrap();
        let b = c.join_blob("dir/a b#?.txt");
        assert_eq!(b.full().as_str(), "http://127.0.0.1:10000/acct/con/dir/a%20b%23%3F.txt?sig=S");
        let c2 = SecretUrl::parse("http://h/acct/con/").unwrap();
        assert_eq!(c2.join_blob("x").full().as_str(), "http://h/acct/con/x");
    }

    #[test]
    fn queries_round_trip_through_a_stored_spec() {
        let mut s = Staging {
            resource_files: vec![ResourceFile {
                source: ResourceSource::Http(SecretUrl::parse("http://h/a?sig=1").unwrap()),
                file_path: "a".into(),
                file_mode: 0o644,
            }],
            output_files: vec![OutputFile {
                pattern: "*.txt".into(),
                container_url: SecretUrl::parse("http://h/c?sig=2").unwrap(),
                path: String::new(),
                headers: vec![],
                condition: UploadCondition::TaskSuccess,
            }],
            application_packages: vec![super::super::AppPackage {
                id: super::super::PackageId::new("app", "1.0").unwrap(),
                url: SecretUrl::parse("http://h/app.zip?sig=3").unwrap(),
            }],
        };
        let queries = s.queries();
        let mut stored: Staging = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert!(!stored.has_queries() && stored.lost_queries());
        stored.set_queries(queries);
        assert_eq!(stored, s);
        assert!(!stored.lost_queries());
        s.set_queries(vec![None, None, None]);
        assert!(!s.has_queries() && s.lost_queries());
        let plain = SecretUrl::parse("http://h/no-query").unwrap();
        let back: SecretUrl = serde_json::from_str(&serde_json::to_string(&plain).unwrap()).unwrap();
        assert!(!back.lost_query());
    }

    #[test]
    fn paths_are_relative_and_stay_inside() {
        assert_eq!(relative_path("f", "./a//b/", false).unwrap(), "a/b");
        assert!(relative_path("f", "/etc/passwd", false).unwrap_err().contains("absolute"));
        assert!(relative_path("f", "a/../../x", false).unwrap_err().contains(".."));
        assert!(relative_path("f", "", false).is_err());
        assert_eq!(relative_path("f", "", true).unwrap(), "");
    }

    #[test]
    fn modes_are_octal_without_special_bits() {
        assert_eq!(file_mode("").unwrap(), 0o644);
        assert_eq!(file_mode("0755").unwrap(), 0o755);
        assert!(file_mode("4755").is_err());
        assert!(file_mode("rwx").is_err());
        assert!(file_mode("0989").is_err());
    }

    #[test]
    fn conditions_follow_the_result() {
        use UploadCondition::*;
        assert!(TaskCompletion.applies(true) && TaskCompletion.applies(false));
        assert!(TaskSuccess.applies(true) && !TaskSuccess.applies(false));
        assert!(!TaskFailure.applies(true) && TaskFailure.applies(false));
    }
}
