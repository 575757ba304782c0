//! Data staging: resource files downloaded into a task's working directory
//! before it runs, output files uploaded after it exits (Batch's
//! `resourceFiles` and `outputFiles`), over plain HTTP(S) and the Blob
//! service's REST API with SAS URLs.
//!
//! - `http`: one request with retries, backoff, a timeout and a stall
//!   timeout; an answer's status picks the failure's category (4xx: the
//!   task's, 5xx and network errors: the node's).
//! - `blobs`: listing a container's blobs (`storage_container_url`).
//! - `fs`: creating files in a task's directory without following a link a
//!   task planted, and reading only what the task's identity could read.
//! - `packages`, `unpack`: application packages, installed once per node.
//! - `download`, `upload`: the two directions; `pattern`: Batch's
//!   `filePattern` rules; `secrets`: the URLs' queries, kept out of the
//!   state database.
//!
//! No message here holds a URL's query: URLs are shown redacted.

mod blobs;
mod download;
mod fs;
mod http;
mod packages;
pub mod pattern;
pub mod secrets;
mod unpack;
mod upload;

pub use download::download;
pub use packages::Packages;
pub use upload::{plan, upload, Planned, UploadLog};

use crate::model::TaskKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// The `[staging]` settings.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes a task may download, all resource files together.
    pub max_task_bytes: u64,
    /// Transfers (downloads and uploads) under way on the node at once.
    pub max_concurrent_transfers: usize,
    /// One file's transfer, at most (all its attempts).
    pub timeout: Duration,
    /// A transfer that moves no byte for this long is abandoned (and retried).
    pub stall_timeout: Duration,
    /// Attempts after the first, for network errors, 5xx, 408 and 429.
    pub retries: u32,
    /// The first retry's wait; doubled each time, at most 30 s.
    pub retry_backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_task_bytes: 50 << 30,
            max_concurrent_transfers: 8,
            timeout: Duration::from_secs(3600),
            stall_timeout: Duration::from_secs(60),
            retries: 4,
            retry_backoff: Duration::from_millis(500),
        }
    }
}

/// Why staging failed: the task's fault (a 4xx, a bad URL, a blob name that
/// leaves the directory) or the node's (5xx, the network, the disk).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StagingError {
    #[error("{0}")]
    User(String),
    #[error("{0}")]
    Server(String),
}

impl StagingError {
    pub fn is_server(&self) -> bool {
        matches!(self, StagingError::Server(_))
    }
}

/// How far a task's transfers are (TaskInfo's `staging_progress`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub upload: bool,
    pub files_done: u32,
    pub files_total: u32,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// The node's transfer client: one HTTP client and the node-wide cap.
pub struct Transfers {
    /// An error on a node that cannot build a TLS client (no CA
    /// certificates): the transfers' error, not the agent's start. Built at
    /// the first transfer: an agent that stages nothing never loads the TLS
    /// stack and the root certificates (issue 23, the idle footprint).
    client: tokio::sync::OnceCell<Result<reqwest::Client, String>>,
    /// `staging.ca_files`, checked at start.
    certs: Vec<reqwest::Certificate>,
    limits: Limits,
    permits: Arc<Semaphore>,
    secrets: secrets::Secrets,
    progress: Arc<Mutex<HashMap<TaskKey, watch::Receiver<Progress>>>>,
}

/// A task's progress while its transfers run; unlisted when dropped.
pub struct Tracked {
    pub tx: ProgressTx,
    key: TaskKey,
    map: Arc<Mutex<HashMap<TaskKey, watch::Receiver<Progress>>>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.key);
    }
}

impl Transfers {
    /// `ca_pems`: PEM bundles trusted besides the system's roots (`[staging] ca_files`).
    pub fn new(limits: Limits, secrets_dir: std::path::PathBuf, ca_pems: &[Vec<u8>]) -> Result<Self, String> {
        let mut certs = Vec::new();
        for (i, pem) in ca_pems.iter().enumerate() {
            let bundle = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("staging.ca_files[{i}]: not PEM certificates: {e}"))?;
            if bundle.is_empty() {
                return Err(format!("staging.ca_files[{i}]: holds no PEM certificate"));
            }
            certs.extend(bundle);
        }
        let permits = Arc::new(Semaphore::new(limits.max_concurrent_transfers.max(1)));
        let progress = Arc::default();
        let client = tokio::sync::OnceCell::new();
        Ok(Self { client, certs, limits, permits, secrets: secrets::Secrets::new(secrets_dir), progress })
    }

    /// Starts publishing a task's progress (downloads, or uploads).
    pub fn track(&self, key: &TaskKey, upload: bool) -> Tracked {
        let (tx, rx) = watch::channel(Progress { upload, ..Progress::default() });
        self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key.clone(), rx);
        Tracked { tx, key: key.clone(), map: self.progress.clone() }
    }

    /// A task's progress, while its transfers run.
    pub fn progress(&self, key: &TaskKey) -> Option<Progress> {
        let map = self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(key).map(|rx| rx.borrow().clone())
    }

    /// The HTTP client, or why there is none. Built at the first transfer,
    /// on a blocking thread: it reads and parses the system's root
    /// certificates.
    async fn http(&self) -> Result<&reqwest::Client, StagingError> {
        self.client
            .get_or_init(|| async {
                let certs = self.certs.clone();
                let build = move || {
                    reqwest::Client::builder()
                        .tls_certs_merge(certs)
                        .connect_timeout(Duration::from_secs(30))
                        .redirect(reqwest::redirect::Policy::limited(5))
                        .build()
                        .map_err(|e| format!("cannot build the transfer client: {e}"))
                };
                let client = tokio::task::spawn_blocking(build).await.unwrap_or_else(|e| Err(e.to_string()));
                if let Err(e) = &client {
                    tracing::warn!(error = %e, "resource and output file transfers will fail");
                }
                client
            })
            .await
            .as_ref()
            .map_err(|e| StagingError::Server(e.clone()))
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Where the URLs' queries of tasks in flight are kept.
    pub fn secrets(&self) -> &secrets::Secrets {
        &self.secrets
    }
}

impl std::fmt::Debug for Transfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfers").field("limits", &self.limits).field("secrets_dir", &self.secrets.dir()).finish()
    }
}

/// Publishes progress to whoever watches (GetTask).
pub type ProgressTx = watch::Sender<Progress>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_cas_must_be_pem_certificates() {
        let d = tempfile::tempdir().unwrap();
        let e = Transfers::new(Limits::default(), d.path().join("s"), &[b"not a certificate".to_vec()]).unwrap_err();
        assert!(e.contains("staging.ca_files[0]"), "{e}");
        assert!(Transfers::new(Limits::default(), d.path().join("s"), &[]).is_ok());
    }
}
