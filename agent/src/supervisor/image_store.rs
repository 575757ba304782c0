//! The node's images as the supervisor sees them: the prefetch list (pulled in
//! the background, reported by `GetNode`), listing and removing images (never
//! one a task still needs), and image garbage collection: when the image file
//! system passes its high-water mark, least-recently-used images that no task
//! needs and that are not prefetched are removed until it is below the low-water
//! mark.

use super::{Error, Supervisor};
use crate::images;
use crate::model::{Credentials, TaskState};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Image garbage collection.
#[derive(Debug, Clone)]
pub struct ImageGc {
    /// Collect when the file system holding containerd's images is fuller than this (percent).
    pub high_percent: u8,
    /// ... until it is at most this full.
    pub low_percent: u8,
    pub interval: Duration,
    /// A path on the file system holding containerd's content and snapshots.
    pub filesystem: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefetchState {
    Pending,
    Ready,
    Failed(String),
}

impl PrefetchState {
    pub fn name(&self) -> &'static str {
        match self {
            PrefetchState::Pending => "PENDING",
            PrefetchState::Ready => "READY",
            PrefetchState::Failed(_) => "FAILED",
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct ImagesState {
    prefetch: Vec<String>,
    status: HashMap<String, PrefetchState>,
    last_used: HashMap<String, SystemTime>,
}

/// One image of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub name: String,
    pub digest: String,
    pub in_use: bool,
    pub prefetched: bool,
}

/// Percent of the file system holding `path` that is used.
fn used_percent(path: &std::path::Path) -> Option<f64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let total = st.blocks() as f64;
    if total == 0.0 {
        return None;
    }
    Some(100.0 * (total - st.blocks_free() as f64) / total)
}

impl Supervisor {
    fn images_state(&self) -> std::sync::MutexGuard<'_, ImagesState> {
        self.shared.images.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that a task used `name` now (for least-recently-used collection).
    pub(super) fn touch_image(&self, name: &str) {
        self.images_state().last_used.insert(name.to_owned(), SystemTime::now());
    }

    /// Replaces the prefetch list and registries, then pulls the list in the background.
    pub async fn configure_containers(
        &self,
        prefetch: Vec<String>,
        registries: Vec<(String, Credentials)>,
    ) -> Result<(), Error> {
        let names = prefetch.iter().map(|r| images::normalize(r)).collect::<Result<Vec<_>, _>>()?;
        for (server, _) in &registries {
            crate::registry::normalize_server(server)
                .map_err(|reason| Error::Invalid { field: "registries.server", reason })?;
        }
        self.shared.puller.set_credentials(registries);
        self.set_prefetch(names);
        Ok(())
    }

    /// Sets the prefetch list (already normalised) and starts pulling what is not ready.
    pub fn set_prefetch(&self, names: Vec<String>) {
        let todo: Vec<String> = {
            let mut st = self.images_state();
            st.prefetch = names.clone();
            st.status.retain(|n, _| names.contains(n));
            let todo: Vec<String> =
                names.into_iter().filter(|n| st.status.get(n) != Some(&PrefetchState::Ready)).collect();
            for n in &todo {
                st.status.insert(n.clone(), PrefetchState::Pending);
            }
            todo
        };
        for name in todo {
            let this = self.clone();
            tokio::spawn(async move {
                let creds = this.shared.puller.configured_credentials(&name);
                let state = match this.shared.puller.pull(&name, creds.as_ref()).await {
                    Ok(_) => {
                        this.touch_image(&name);
                        PrefetchState::Ready
                    }
                    Err(e) => {
                        tracing::warn!(image = %name, error = %e, "prefetch failed");
                        PrefetchState::Failed(e.to_string())
                    }
                };
                let mut st = this.images_state();
                if st.prefetch.contains(&name) {
                    st.status.insert(name, state);
                }
            });
        }
    }

    pub fn prefetch_status(&self) -> Vec<(String, PrefetchState)> {
        let st = self.images_state();
        st.prefetch.iter().map(|n| (n.clone(), st.status.get(n).cloned().unwrap_or(PrefetchState::Pending))).collect()
    }

    /// Normalised images of the tasks that are not completed.
    async fn images_in_use(&self) -> Result<HashSet<String>, Error> {
        let tasks = self.shared.store.list(None, None).await?;
        Ok(tasks
            .iter()
            .filter(|t| t.state != TaskState::Completed)
            .filter_map(|t| t.spec.container.as_ref())
            .filter_map(|c| images::normalize(&c.image).ok())
            .collect())
    }

    pub async fn list_images(&self) -> Result<Vec<ImageEntry>, Error> {
        let in_use = self.images_in_use().await?;
        let prefetch = self.images_state().prefetch.clone();
        let mut out: Vec<ImageEntry> = self
            .shared
            .runtime
            .list_images()
            .await?
            .into_iter()
            .map(|(name, digest)| ImageEntry {
                in_use: in_use.contains(&name),
                prefetched: prefetch.contains(&name),
                name,
                digest,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes an image; refused while a task that is not completed uses it.
    pub async fn remove_image(&self, reference: &str) -> Result<(), Error> {
        let name = images::normalize(reference)?;
        if self.images_in_use().await?.contains(&name) {
            return Err(Error::ImageInUse { image: name });
        }
        self.shared.runtime.delete_image(&name).await?;
        tracing::info!(image = %name, "image removed");
        Ok(())
    }

    /// One collection pass; returns the images removed.
    pub async fn collect_images(&self, gc: &ImageGc) -> Result<Vec<String>, Error> {
        let mut removed = Vec::new();
        let over = |limit: u8| used_percent(&gc.filesystem).is_some_and(|p| p > f64::from(limit));
        if !over(gc.high_percent) {
            return Ok(removed);
        }
        let in_use = self.images_in_use().await?;
        let (prefetch, last_used) = {
            let st = self.images_state();
            (st.prefetch.clone(), st.last_used.clone())
        };
        let mut candidates: Vec<(SystemTime, String)> = self
            .shared
            .runtime
            .list_images()
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .filter(|n| !in_use.contains(n) && !prefetch.contains(n))
            .map(|n| (last_used.get(&n).copied().unwrap_or(SystemTime::UNIX_EPOCH), n))
            .collect();
        candidates.sort();
        for (_, name) in candidates {
            if !over(gc.low_percent) {
                break;
            }
            // Checked again: a task may have been accepted for it meanwhile.
            if self.images_in_use().await?.contains(&name) {
                continue;
            }
            match self.shared.runtime.delete_image(&name).await {
                Ok(()) => {
                    tracing::info!(image = %name, "image garbage-collected");
                    removed.push(name);
                }
                Err(e) => tracing::warn!(image = %name, error = %e, "cannot remove image"),
            }
        }
        Ok(removed)
    }

    /// Collects images every `gc.interval`.
    pub async fn gc_images(&self, gc: ImageGc) {
        let mut tick = tokio::time::interval(gc.interval);
        loop {
            tick.tick().await;
            if let Err(e) = self.collect_images(&gc).await {
                tracing::warn!(error = %e, "image garbage collection failed");
            }
        }
    }
}
