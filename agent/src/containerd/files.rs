//! Reading small files of an image's root filesystem (`/etc/passwd`,
//! `/etc/group`) without creating a container: a read-only view snapshot of the
//! image's layers, under a lease, removed again at once. The layer directories
//! the snapshotter names are read directly (bind and overlay mounts), never
//! following a symlink, so an image cannot point the agent at a host file.

use super::{Containerd, ImageStore, RuntimeError};
use containerd_client::services::v1::snapshots::{RemoveSnapshotRequest, ViewSnapshotRequest};
use containerd_client::types::Mount;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest file read (an `/etc/group` of an image is a few KiB).
const MAX_FILE: u64 = 1 << 20;

impl Containerd {
    pub(super) async fn read_image_files(
        &self,
        node_id: &str,
        chain_id: &str,
        paths: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, RuntimeError> {
        let lease = self.create_lease(node_id).await?;
        let key = format!("berth-view-{lease}");
        let view = ViewSnapshotRequest {
            snapshotter: self.snapshotter().to_owned(),
            key: key.clone(),
            parent: chain_id.to_owned(),
            labels: Default::default(),
        };
        let result = match self.snapshots().view(self.leased(view, &lease)).await {
            Ok(r) => {
                let dirs = layer_dirs(&r.into_inner().mounts);
                let paths: Vec<String> = paths.iter().map(|p| p.trim_start_matches('/').to_owned()).collect();
                tokio::task::spawn_blocking(move || paths.iter().map(|p| read_in_layers(&dirs, p)).collect())
                    .await
                    .map_err(|e| RuntimeError::Failed { op: "read image files", message: e.to_string() })
            }
            Err(s) => Err(self.status_error("view snapshot", &format!("snapshot {chain_id}"), s)),
        };
        let remove = RemoveSnapshotRequest { snapshotter: self.snapshotter().to_owned(), key };
        let _ = self.snapshots().remove(self.request(remove)).await;
        self.delete_lease(&lease).await;
        result
    }
}

/// Creates the mount points of `spec`'s mounts in a fresh container snapshot
/// whose rootfs mounts are `mounts`, as the agent (host root). A task in a user
/// namespace cannot create them itself: the image's directories belong to host
/// root, which its namespace does not map.
pub(super) fn create_mount_points(mounts: &[Mount], spec: &oci_spec::runtime::Spec) -> std::io::Result<()> {
    // The writable layer: overlay's upperdir, or the directory a bind snapshot is.
    let top = mounts.iter().find_map(|m| match m.r#type.as_str() {
        "overlay" => m.options.iter().find_map(|o| o.strip_prefix("upperdir=")).map(PathBuf::from),
        "bind" | "rbind" => Some(PathBuf::from(&m.source)),
        _ => None,
    });
    let Some(top) = top else { return Ok(()) };
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination();
        let kernel = ["/proc", "/sys", "/dev"].iter().any(|k| dest.starts_with(k));
        let Ok(rel) = dest.strip_prefix("/") else { continue };
        if kernel || rel.as_os_str().is_empty() || rel.components().any(|c| c == std::path::Component::ParentDir) {
            continue;
        }
        let path = top.join(rel);
        let source_is_file = m.typ().as_deref() == Some("bind") && m.source().as_ref().is_some_and(|s| s.is_file());
        if source_is_file {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        } else {
            std::fs::create_dir_all(&path)?;
        }
    }
    Ok(())
}

/// The directories of a snapshot's mounts, topmost layer first.
fn layer_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for m in mounts {
        match m.r#type.as_str() {
            "bind" | "rbind" => dirs.push(PathBuf::from(&m.source)),
            "overlay" => {
                for o in &m.options {
                    if let Some(upper) = o.strip_prefix("upperdir=") {
                        dirs.insert(0, PathBuf::from(upper));
                    }
                    if let Some(lower) = o.strip_prefix("lowerdir=") {
                        dirs.extend(lower.split(':').map(PathBuf::from));
                    }
                }
            }
            _ => {}
        }
    }
    dirs
}

/// The file at `rel` as the merged layers show it: the topmost layer that has
/// it wins; a whiteout there (a 0/0 character device) means it was deleted.
/// A symlink or anything but a regular file reads as absent.
fn read_in_layers(dirs: &[PathBuf], rel: &str) -> Option<Vec<u8>> {
    for dir in dirs {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV);
        let root = match std::fs::File::open(dir) {
            Ok(f) => f,
            Err(_) => continue,
        };
        match openat2(&root, Path::new(rel), how) {
            Ok(fd) => {
                let file = std::fs::File::from(fd);
                let meta = file.metadata().ok()?;
                if !meta.is_file() {
                    return None;
                }
                let mut data = Vec::new();
                file.take(MAX_FILE).read_to_end(&mut data).ok()?;
                return Some(data);
            }
            Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => {
                // An opaque or whiteout entry on the way stops the search; a plain absence does not.
                if whiteout(dir, rel) {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
    None
}

/// Whether `rel` or a parent of it is a whiteout (0/0 char device) in `dir`.
fn whiteout(dir: &Path, rel: &str) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut p = dir.to_path_buf();
    for part in rel.split('/') {
        p.push(part);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_char_device() && m.rdev() == 0 => return true,
            Ok(m) if m.is_dir() => continue,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_layer_wins_and_symlinks_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (top, bottom) = (tmp.path().join("top"), tmp.path().join("bottom"));
        for d in [&top, &bottom] {
            std::fs::create_dir_all(d.join("etc")).unwrap();
        }
        std::fs::write(bottom.join("etc/passwd"), "old").unwrap();
        std::fs::write(bottom.join("etc/group"), "g").unwrap();
        std::fs::write(top.join("etc/passwd"), "new").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", top.join("etc/hostname")).unwrap();
        let dirs = vec![top.clone(), bottom.clone()];
        assert_eq!(read_in_layers(&dirs, "etc/passwd").as_deref(), Some(&b"new"[..]));
        assert_eq!(read_in_layers(&dirs, "etc/group").as_deref(), Some(&b"g"[..]));
        assert_eq!(read_in_layers(&dirs, "etc/hostname"), None, "a symlink is not followed to the host");
        assert_eq!(read_in_layers(&dirs, "etc/shadow"), None);
        let m = |t: &str, source: &str, options: &[&str]| Mount {
            r#type: t.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(layer_dirs(&[m("bind", "/a", &["ro", "rbind"])]), [PathBuf::from("/a")]);
        assert_eq!(
            layer_dirs(&[m("overlay", "overlay", &["index=off", "lowerdir=/l1:/l2"])]),
            [PathBuf::from("/l1"), PathBuf::from("/l2")]
        );
    }
}
