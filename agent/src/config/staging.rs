//! `[staging]`: resource and output file transfers.

use super::{absolute, invalid, ConfigError};
use crate::model::{check_packages, AppPackage, PackageId, SecretUrl};
use crate::staging::Limits;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStaging {
    max_task_bytes: Option<u64>,
    max_concurrent_transfers: Option<usize>,
    transfer_timeout_seconds: Option<u64>,
    stall_timeout_seconds: Option<u64>,
    retries: Option<u32>,
    retry_backoff_ms: Option<u64>,
    secrets_dir: Option<PathBuf>,
    #[serde(default)]
    ca_files: Vec<PathBuf>,
    #[serde(default)]
    application_packages: Vec<RawPackage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    application_id: String,
    version: String,
    url: String,
}

/// The validated `[staging]` table.
#[derive(Debug, Clone)]
pub struct StagingConfig {
    pub limits: Limits,
    /// Where the queries (SAS tokens) of staging URLs are kept, root-only.
    pub secrets_dir: PathBuf,
    /// PEM files of CAs trusted for https transfers besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// The node's application packages (`[[staging.application_packages]]`).
    pub app_packages: Vec<AppPackage>,
}

pub(super) fn staging(r: RawStaging) -> Result<StagingConfig, ConfigError> {
    let d = Limits::default();
    let positive = |key: &'static str, v: Option<u64>, default: u64| match v {
        Some(0) => Err(invalid(key, "must be at least 1")),
        v => Ok(v.unwrap_or(default)),
    };
    let limits = Limits {
        max_task_bytes: positive("staging.max_task_bytes", r.max_task_bytes, d.max_task_bytes)?,
        max_concurrent_transfers: match r.max_concurrent_transfers {
            Some(0) => return Err(invalid("staging.max_concurrent_transfers", "must be at least 1")),
            v => v.unwrap_or(d.max_concurrent_transfers),
        },
        timeout: Duration::from_secs(positive(
            "staging.transfer_timeout_seconds",
            r.transfer_timeout_seconds,
            d.timeout.as_secs(),
        )?),
        stall_timeout: Duration::from_secs(positive(
            "staging.stall_timeout_seconds",
            r.stall_timeout_seconds,
            d.stall_timeout.as_secs(),
        )?),
        retries: r.retries.unwrap_or(d.retries),
        retry_backoff: r.retry_backoff_ms.map_or(d.retry_backoff, Duration::from_millis),
    };
    let secrets_dir = absolute("staging.secrets_dir", r.secrets_dir, "/run/berth/staging-secrets")?;
    let key = "staging.application_packages";
    let app_packages = r
        .application_packages
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let id = PackageId::new(&p.application_id, &p.version).map_err(|e| invalid(key, &format!("[{i}]: {e}")))?;
            let url = SecretUrl::parse(&p.url).map_err(|e| invalid(key, &format!("[{i}]: url {e}")))?;
            Ok(AppPackage { id, url })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    check_packages(&app_packages).map_err(|e| invalid(key, &e))?;
    for f in &r.ca_files {
        if !f.is_absolute() {
            return Err(invalid("staging.ca_files", &format!("{} is not an absolute path", f.display())));
        }
    }
    Ok(StagingConfig { limits, secrets_dir, ca_files: r.ca_files, app_packages })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn staging_keys_have_defaults_and_are_checked() {
        let c = Config::parse("", "h").unwrap();
        assert_eq!(c.staging.limits.max_concurrent_transfers, 8);
        assert_eq!(c.staging.secrets_dir, std::path::Path::new("/run/berth/staging-secrets"));
        let c = Config::parse(
            "[staging]\nmax_task_bytes = 100\nmax_concurrent_transfers = 2\ntransfer_timeout_seconds = 5\n\
             stall_timeout_seconds = 3\nretries = 0\nretry_backoff_ms = 10\nsecrets_dir = \"/tmp/s\"",
            "h",
        )
        .unwrap();
        let l = &c.staging.limits;
        assert_eq!((l.max_task_bytes, l.max_concurrent_transfers, l.retries), (100, 2, 0));
        assert_eq!((l.timeout.as_secs(), l.stall_timeout.as_secs(), l.retry_backoff.as_millis()), (5, 3, 10));
        for (text, key) in [
            ("[staging]\nmax_concurrent_transfers = 0", "staging.max_concurrent_transfers"),
            ("[staging]\nstall_timeout_seconds = 0", "staging.stall_timeout_seconds"),
            ("[staging]\nsecrets_dir = \"rel\"", "staging.secrets_dir"),
            ("[staging]\nretry = 1", "retry"),
            ("[staging]\nca_files = [\"rel.pem\"]", "staging.ca_files"),
            (
                "[[staging.application_packages]]\napplication_id = \"a/b\"\nversion = \"1\"\nurl = \"http://h/p.zip\"",
                "staging.application_packages",
            ),
            (
                "[[staging.application_packages]]\napplication_id = \"a\"\nversion = \"1\"\nurl = \"ftp://h/p?sig=S\"",
                "staging.application_packages",
            ),
        ] {
            let e = Config::parse(text, "h").unwrap_err().to_string();
            assert!(e.contains(key) && !e.contains("sig=S"), "{text}: {e}");
        }
    }

    #[test]
    fn node_packages_from_the_config_file() {
        let c = Config::parse(
            "[[staging.application_packages]]\napplication_id = \"tool\"\nversion = \"2.0\"\n\
             url = \"http://127.0.0.1:9/tool.tar.gz?sig=S\"",
            "h",
        )
        .unwrap();
        let p = &c.staging.app_packages[0];
        assert_eq!(p.id.to_string(), "tool/2.0");
        assert_eq!(p.url.query(), Some("sig=S"));
        assert!(!format!("{c:?}").contains("sig=S"));
    }
}
