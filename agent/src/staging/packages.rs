//! Application packages on the node: each downloaded and unpacked once into
//! `applications/<id>/<version>/`, whoever asks first; a second task that
//! references one waits for the first's download instead of starting its
//! own. A package is complete when its directory exists: it is unpacked
//! into `applications/.partial-…` and renamed into place, so an agent killed
//! midway leaves only a partial directory, removed at the next start.

use super::http::{get, retrying, stream_body};
use super::unpack::{unpack, UnpackError};
use super::{StagingError, Transfers};
use crate::model::{AppPackage, PackageId};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const PARTIAL: &str = ".partial-";

pub struct Packages {
    dir: PathBuf,
    /// One lock per package being installed or removed.
    locks: Mutex<HashMap<PackageId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Packages {
    /// The packages under `dir` (the node's `applications/`).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, locks: Mutex::default() }
    }

    /// Where a package is unpacked.
    pub fn path(&self, id: &PackageId) -> PathBuf {
        self.dir.join(id.rel_dir())
    }

    /// The package's lock: held while it is installed or removed.
    pub fn lock(&self, id: &PackageId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(id.clone()).or_default().clone()
    }

    fn installed_at(&self, id: &PackageId) -> bool {
        std::fs::symlink_metadata(self.path(id)).is_ok_and(|m| m.is_dir())
    }

    /// Every package unpacked on the node.
    pub fn installed(&self) -> Vec<PackageId> {
        let mut out = Vec::new();
        let Ok(apps) = std::fs::read_dir(&self.dir) else { return out };
        for app in apps.flatten() {
            let name = app.file_name().to_string_lossy().into_owned();
            if name.starts_with(PARTIAL) || !app.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(versions) = std::fs::read_dir(app.path()) else { continue };
            for v in versions.flatten() {
                if let Ok(id) = PackageId::new(&name, &v.file_name().to_string_lossy()) {
                    if v.file_type().is_ok_and(|t| t.is_dir()) {
                        out.push(id);
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Removes what an agent killed mid-install left (at start-up).
    pub fn remove_partials(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(PARTIAL) {
                let p = e.path();
                let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if let Err(err) = r {
                    tracing::warn!(path = %p.display(), error = %err, "cannot remove a partial application package");
                }
            }
        }
    }

    /// Installs a package unless it is there; true if it was downloaded now.
    pub async fn ensure(&self, t: &Transfers, p: &AppPackage) -> Result<bool, StagingError> {
        let lock = self.lock(&p.id);
        let _held = lock.lock().await;
        if self.installed_at(&p.id) {
            return Ok(false);
        }
        if p.url.lost_query() {
            return Err(StagingError::Server(format!(
                "application package {} is not on the node and its URL's SAS token was not kept across a reboot",
                p.id
            )));
        }
        let tag = format!("{PARTIAL}{}-{}-{}", p.id.application_id, p.id.version, std::process::id());
        let archive = self.dir.join(format!("{tag}.archive"));
        let staged = self.dir.join(&tag);
        let r = self.install(t, p, &archive, &staged).await;
        let _ = std::fs::remove_file(&archive);
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&staged);
        }
        r.map(|()| true)
    }

    async fn install(&self, t: &Transfers, p: &AppPackage, archive: &Path, staged: &Path) -> Result<(), StagingError> {
        let server = |what: &str, e: std::io::Error| StagingError::Server(format!("{what}: {e}"));
        // What an install of this agent that was cancelled (its task stopped) left.
        let _ = std::fs::remove_dir_all(staged);
        let _ = std::fs::remove_file(archive);
        std::fs::create_dir_all(&self.dir).map_err(|e| server("cannot create applications/", e))?;
        let what = format!("downloading application package {} from {}", p.id, p.url);
        let cap = t.limits.max_task_bytes;
        let bytes = {
            let _permit =
                t.permits.acquire().await.map_err(|_| StagingError::Server("the agent is stopping".into()))?;
            let what = &what;
            retrying(t, what, || async move {
                let mut resp = get(t, what, p.url.full()).await?;
                let f = std::fs::File::create(archive)
                    .map_err(|e| super::http::Attempt::Fatal(server("cannot write the archive", e)))?;
                let mut f = std::io::BufWriter::with_capacity(super::download::WRITE_BUFFER, f);
                let too_big =
                    || StagingError::User(format!("{what}: the archive passes {cap} bytes ([staging] max_task_bytes)"));
                let n = stream_body(t, what, &mut resp, cap, too_big, |c| f.write_all(c), |_| {}).await?;
                f.flush().map_err(|e| super::http::Attempt::Fatal(server("cannot write the archive", e)))?;
                Ok(n)
            })
            .await?
        };
        let (archive2, staged2) = (archive.to_owned(), staged.to_owned());
        let unpacked = tokio::task::spawn_blocking(move || {
            std::fs::create_dir(&staged2).map_err(|e| UnpackError::Io(e.to_string()))?;
            std::fs::set_permissions(&staged2, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| UnpackError::Io(e.to_string()))?;
            unpack(&archive2, &staged2, cap)
        })
        .await
        .map_err(|e| StagingError::Server(format!("unpacking application package {}: {e}", p.id)))?;
        let unpacked = unpacked.map_err(|e| match e {
            UnpackError::Bad(m) => StagingError::User(format!("application package {}: {m}", p.id)),
            UnpackError::Io(m) => StagingError::Server(format!("application package {}: {m}", p.id)),
        })?;
        let app_dir = self.dir.join(&p.id.application_id);
        std::fs::create_dir_all(&app_dir).map_err(|e| server("cannot create the application's directory", e))?;
        std::fs::set_permissions(&app_dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| server("cannot set the application directory's mode", e))?;
        std::fs::rename(staged, self.path(&p.id))
            .map_err(|e| server("cannot move the unpacked package into place", e))?;
        tracing::info!(package = %p.id, url = %p.url, archive_bytes = bytes, unpacked_bytes = unpacked,
            "application package installed");
        Ok(())
    }

    /// Removes an installed package (the caller holds its lock and knows
    /// that nothing references it).
    pub fn remove(&self, id: &PackageId) -> std::io::Result<()> {
        let path = self.path(id);
        if path.exists() {
            // Out of the way first, so a half-removed package is never taken for one.
            let gone = self.dir.join(format!("{PARTIAL}removed-{}-{}", id.application_id, id.version));
            std::fs::rename(&path, &gone)?;
            std::fs::remove_dir_all(&gone)?;
            tracing::info!(package = %id, "application package removed");
        }
        let _ = std::fs::remove_dir(self.dir.join(&id.application_id));
        Ok(())
    }
}

impl std::fmt::Debug for Packages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packages").field("dir", &self.dir).finish()
    }
}
